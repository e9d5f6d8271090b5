"""Self-contained HTML reports: headings, text, tables and figures embedded as base64 PNG, one file.

    report = HtmlReport("LRP study")
    report.heading("Accuracy")
    report.table(predictions_summary, caption="Test set")
    report.figure(fig, caption="Group mean maps")
    report.write("out/report.html")
"""
from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .files import write_text

__all__ = ["HtmlReport"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
.note { color: #555; } .ok { color: #1a7f37; font-weight: bold; } .fail { color: #b42318; font-weight: bold; }
nav ul { columns: 2; }
"""


class HtmlReport:
    """An HTML document assembled in order; figures are embedded, so the file stands alone."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []
        self._toc: list[tuple[str, str]] = []

    def heading(self, text: str) -> None:
        """A section heading (listed in the table of contents)."""
        anchor = f"s{len(self._toc) + 1}"
        self._toc.append((anchor, text))
        self._parts.append(f'<h2 id="{anchor}">{html.escape(text)}</h2>')

    def text(self, text: str, *, css_class: str | None = None) -> None:
        """A paragraph of plain text (escaped)."""
        attribute = f' class="{css_class}"' if css_class else ""
        self._parts.append(f"<p{attribute}>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, *, caption: str | None = None, index: bool = False,
              float_format: str = "{:.4g}") -> None:
        """A pandas table; floats formatted with ``float_format``."""
        body = frame.to_html(index=index, border=0, float_format=float_format.format, escape=True)
        if caption:
            self._parts.append(f'<p class="note">{html.escape(caption)}</p>')
        self._parts.append(body)

    def figure(self, figure, *, caption: str | None = None, dpi: int = 110) -> None:
        """A matplotlib Figure, or a path to a PNG file, embedded as base64 PNG."""
        if isinstance(figure, (str, Path)):
            png = Path(figure).read_bytes()
        else:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
            png = buffer.getvalue()
        encoded = base64.b64encode(png).decode("ascii")
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img alt="{html.escape(caption or "figure")}" '
                           f'src="data:image/png;base64,{encoded}">{caption_html}</figure>')

    def render(self) -> str:
        """The whole document as a string."""
        created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        toc = "".join(f'<li><a href="#{anchor}">{html.escape(text)}</a></li>' for anchor, text in self._toc)
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1><p class=\"note\">Created {created} by pytorch-lrp.</p>"
                f"<nav><ul>{toc}</ul></nav>{''.join(self._parts)}</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write the report atomically to ``path``."""
        return write_text(path, self.render())
