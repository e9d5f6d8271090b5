"""What the analysis commands print when they finish: one screen of top regions per method."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..study import StudyResult

__all__ = ["print_top_regions"]


def print_top_regions(result: StudyResult, k: int = 5) -> None:
    """Per method, the ``k`` top regions by sum, density and gain, side by side, and where the files are."""
    summary = result.summary
    for method in result.methods:
        part = summary[summary["method"] == method]
        print(f"\n{method}")
        columns = []
        for by in ("sum", "density", "gain"):
            ranked = part.dropna(subset=[f"rank_{by}"]).sort_values([f"rank_{by}", "region"])["region"].head(k)
            columns.append([f"by {by}"] + ranked.tolist())
        height = max(len(column) for column in columns)
        width = max(len(cell) for column in columns for cell in column) + 2
        for line in range(height):
            cells = [column[line] if line < len(column) else "" for column in columns]
            print("  " + "".join(f"{cell:<{width}}" for cell in cells))
    print(f"\ntables, maps and figures in {result.out}")
