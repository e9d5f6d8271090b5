"""Creating figures without pyplot and saving them atomically.

Figures are made with :class:`matplotlib.figure.Figure` and an Agg canvas, never through pyplot: no
window ever opens, nothing piles up in pyplot's global figure list, and the figures still display in
notebooks. Saving writes to a temporary file in the target folder, then renames it into place.
"""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_path

__all__ = ["SAVE_FORMATS", "new_figure", "save_figure"]

SAVE_FORMATS: dict[str, str] = {".png": "png", ".pdf": "pdf"}
"""File suffix -> matplotlib format of the files figures can be saved as."""


def new_figure(width: float, height: float, layout: str = "constrained") -> Figure:
    """An empty figure of ``width`` × ``height`` inches with an Agg canvas; ``layout`` is matplotlib's
    (``"compressed"`` packs grids of images with a fixed aspect ratio)."""
    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``figure`` to ``path`` (PNG or PDF, chosen by the suffix) atomically.

    The figure is cropped to its content (as notebooks show it) and rendered into a temporary file
    in the same folder, which then replaces ``path`` in one step; on any error the temporary file is
    removed and an existing ``path`` is untouched.
    Returns the path written. Raises ValueError for other suffixes, FileNotFoundError when the
    folder does not exist.
    """
    path = Path(path)
    file_format = SAVE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(f"cannot save a figure as {path.name!r}: the suffix must be one of {sorted(SAVE_FORMATS)}")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save {path}: folder {folder} does not exist")
    with atomic_path(path) as temporary, temporary.open("wb") as stream:
        figure.savefig(stream, format=file_format, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return path


def finish(figure: Figure, path: str | os.PathLike | None) -> Figure:
    """Save ``figure`` to ``path`` when one is given; return the figure."""
    if path is not None:
        save_figure(figure, path)
    return figure
