"""Relevance → colour: symmetric scaling around zero and a colour lookup that is exact at zero.

A relevance value ``r`` is scaled to ``t = clip(r / vmax, -1, 1)`` and looked up in the colour map
resampled to :data:`LUT_SIZE` (odd) entries: ``t = 0`` lands exactly on the middle entry, which is
the colour map's value at 0.5 (white for ``"bwr"``), and ``r`` and ``-r`` land on entries mirrored
around it. matplotlib's own lookup (256 entries) would put zero one entry off the centre.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Colormap

from .arrays import as_array, require_finite

__all__ = ["LUT_SIZE", "centered_colormap", "heatmap_to_rgb", "heatmap_to_rgba", "symmetric_limits"]

LUT_SIZE = 513
"""Entries of the colour lookup table; odd, so that entry ``LUT_SIZE // 2`` is the centre (value 0.5)."""
_CENTRE = LUT_SIZE // 2


def centered_colormap(cmap: str | Colormap = "bwr") -> Colormap:
    """``cmap`` (a name or a matplotlib colour map) resampled to :data:`LUT_SIZE` entries; use it for
    colour bars so that they match :func:`heatmap_to_rgb`."""
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    if not isinstance(colormap, Colormap):
        raise TypeError(f"cmap must be a colour map name or a matplotlib Colormap, got {type(cmap).__name__}")
    return colormap.resampled(LUT_SIZE)


def symmetric_limits(maps: Any | Sequence[Any], percentile: float = 99.5) -> tuple[float, float]:
    """Colour limits ``(-vmax, vmax)`` shared by ``maps`` (one array/tensor of any shape, or a list of them).

    ``vmax`` is the ``percentile`` (0 < percentile <= 100) of ``|R|`` over all values of all maps,
    so the top (100 - percentile)% saturate. When that is zero (a map with fewer non-zero values than
    that) it is the largest ``|R|``, and 1.0 for maps that are zero everywhere, so every map can be
    drawn without dividing by zero. Raises NonFiniteError for NaN or infinite values.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if isinstance(maps, (list, tuple)):
        parts = [as_array(m, "maps").ravel() for m in maps]
        values = np.concatenate(parts) if parts else np.zeros(0)
    else:
        values = as_array(maps, "maps").ravel()
    if values.size == 0:
        raise ValueError("symmetric_limits needs at least one value")
    magnitude = np.abs(require_finite(values, "maps"))
    vmax = float(np.percentile(magnitude, percentile))
    if vmax == 0.0:
        vmax = float(magnitude.max()) or 1.0
    return -vmax, vmax


def heatmap_to_rgb(relevance: Any, *, cmap: str | Colormap = "bwr", percentile: float = 99.5,
                   vmax: float | None = None) -> np.ndarray:
    """Colour a relevance map (..., H, W) (array or tensor) with a diverging colour map centred at zero.

    The scale is symmetric: ``vmax`` (by default ``symmetric_limits(relevance, percentile)``, i.e. over
    all maps of a batch together) maps to the last colour, ``-vmax`` to the first, values beyond
    saturate, and zero maps exactly to the colour map's centre. Returns float RGB (..., H, W, 3) in [0, 1].
    """
    scaled = _scaled(relevance, percentile, vmax)
    return _lookup(scaled, cmap, signed=True)[..., :3]


def heatmap_to_rgba(relevance: Any, *, cmap: str | Colormap = "bwr", percentile: float = 99.5,
                    vmax: float | None = None, threshold: float = 0.1, opaque_at: float = 0.4,
                    positive_only: bool = False) -> np.ndarray:
    """Colour a relevance map (...) as RGBA (..., 4) for drawing over an image, transparent near zero.

    Colours as in :func:`heatmap_to_rgb`. The opacity is 0 where ``|R| <= threshold * vmax`` and
    rises linearly to 1 at ``|R| = opaque_at * vmax``. With ``positive_only`` the scale is
    ``[0, vmax]`` over the whole colour map (meant for sequential maps such as ``"autumn"`` or ``"hot"``), negative
    values are transparent, and the default ``vmax`` is the percentile of the positive part.
    """
    if not 0 <= threshold < opaque_at <= 1:
        raise ValueError(f"need 0 <= threshold < opaque_at <= 1, got threshold={threshold}, opaque_at={opaque_at}")
    values = require_finite(as_array(relevance, "relevance"), "relevance")
    if positive_only:
        values = np.maximum(values, 0.0)
    scaled = _scaled(values, percentile, vmax)
    rgba = _lookup(scaled, cmap, signed=not positive_only)
    rgba[..., 3] = np.clip((np.abs(scaled) - threshold) / (opaque_at - threshold), 0.0, 1.0)
    return rgba


def _scaled(relevance: Any, percentile: float, vmax: float | None) -> np.ndarray:
    """``clip(R / vmax, -1, 1)`` with ``vmax`` checked, or taken from :func:`symmetric_limits`."""
    values = require_finite(as_array(relevance, "relevance"), "relevance")
    if vmax is None:
        vmax = symmetric_limits(values, percentile)[1]
    elif not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a positive finite number, got {vmax}")
    return np.clip(values / vmax, -1.0, 1.0)


def _lookup(scaled: np.ndarray, cmap: str | Colormap, *, signed: bool) -> np.ndarray:
    """RGBA (..., 4) of ``scaled`` in [-1, 1] (``signed``: -1 first entry, 0 centre, 1 last entry) or
    in [0, 1] (first to last entry). ``np.rint`` rounds halves to even, so ±t get mirrored entries."""
    table = centered_colormap(cmap)(np.arange(LUT_SIZE))
    if signed:
        index = _CENTRE + np.rint(scaled * _CENTRE).astype(np.intp)
    else:
        index = np.rint(scaled * (LUT_SIZE - 1)).astype(np.intp)
    return table[index]
