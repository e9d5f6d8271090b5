"""2D figures: an input image with its heatmap blended in, and a grid of inputs × methods."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from ..errors import DataError
from .arrays import as_array, require_finite
from .colors import centered_colormap, heatmap_to_rgb, symmetric_limits
from .figures import finish, new_figure

__all__ = ["grid", "image_to_rgb", "overlay"]

_PANEL_INCHES = 1.6


def image_to_rgb(image: Any) -> np.ndarray:
    """An input image as float RGB (H, W, 3) in [0, 1], min-max scaled over all channels.

    Accepts (H, W) grey, channels-last (H, W, 1|3|4) and channels-first (1|3, H, W) arrays or tensors
    (an alpha channel is dropped). A constant image becomes black.
    """
    array = require_finite(as_array(image, "image"), "image")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    elif array.ndim != 2:
        raise DataError(f"image must be (H, W), (H, W, 1|3|4) or (1|3, H, W), got shape {array.shape}")
    if array.ndim == 2 or array.shape[-1] == 1:
        array = np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=-1)
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def overlay(image: Any, relevance: Any, *, alpha: float = 0.8, cmap: str | Colormap = "bwr",
            percentile: float = 99.5, vmax: float | None = None) -> np.ndarray:
    """Blend a relevance map (H, W) into ``image`` (see :func:`image_to_rgb`); returns RGB (H, W, 3).

    Each pixel mixes the grey/colour image with the heatmap colour (:func:`heatmap_to_rgb`) by the
    weight ``alpha * min(|R| / vmax, 1)``: pixels without relevance show the image unchanged, pixels
    at or beyond ``vmax`` show ``alpha`` of the heatmap colour.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    background = image_to_rgb(image)
    values = require_finite(as_array(relevance, "relevance"), "relevance")
    if values.shape != background.shape[:2]:
        raise DataError(f"relevance {values.shape} must be (H, W) like the image {background.shape[:2]} "
                        "(sum channel relevance first, e.g. relevance.sum(0))")
    if vmax is None:
        vmax = symmetric_limits(values, percentile)[1]
    colours = heatmap_to_rgb(values, cmap=cmap, vmax=vmax)
    weight = alpha * np.minimum(np.abs(values) / vmax, 1.0)[..., None]
    return (1.0 - weight) * background + weight * colours


def grid(images: Any, heatmaps: Mapping[str, Any], *, titles: Sequence[str] | None = None,
         cmap: str | Colormap = "bwr", percentile: float = 99.5, path: str | os.PathLike | None = None) -> Figure:
    """A grid of samples (rows) × [input, one column per method].

    Args:
        images: N inputs: an array/tensor (N, ...) or a list, each as accepted by :func:`image_to_rgb`.
        heatmaps: method name -> relevance (N, H, W), or (N, C, H, W) which is summed over channels.
        titles: one label per sample (row), e.g. ``"label 3, predicted 3"``.
        cmap, percentile: colours of the heatmaps; each method column gets its own symmetric scale
            (:func:`symmetric_limits` over all its samples), shown by a colour bar under the column.
        path: save the figure there (PNG or PDF by suffix, atomically).
    """
    inputs = [image_to_rgb(image) for image in images]
    if not inputs:
        raise DataError("grid needs at least one image")
    if not heatmaps:
        raise ValueError("grid needs at least one method in heatmaps")
    columns = {name: _method_maps(name, maps, inputs) for name, maps in heatmaps.items()}
    if titles is not None and len(titles) != len(inputs):
        raise DataError(f"titles has {len(titles)} entries for {len(inputs)} images")

    rows = len(inputs)
    figure = new_figure(_PANEL_INCHES * (len(columns) + 1) + 0.3, _PANEL_INCHES * rows + 0.6, layout="compressed")
    axes = figure.subplots(rows, len(columns) + 1, squeeze=False)
    colormap = centered_colormap(cmap)
    for row, image in enumerate(inputs):
        axes[row, 0].imshow(image, interpolation="nearest")
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row])
    axes[0, 0].set_title("input")
    for column, (name, maps) in enumerate(columns.items(), start=1):
        vmax = symmetric_limits(maps, percentile)[1]
        for row in range(rows):
            axes[row, column].imshow(heatmap_to_rgb(maps[row], cmap=colormap, vmax=vmax), interpolation="nearest")
        axes[0, column].set_title(name)
        colour_bar = figure.colorbar(ScalarMappable(Normalize(-vmax, vmax), colormap), ax=axes[:, column],
                                     location="bottom", shrink=0.9, aspect=12, pad=0.1 / rows)
        colour_bar.set_ticks([-vmax, 0.0, vmax], labels=[f"{-vmax:.2g}", "0", f"{vmax:.2g}"])
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return finish(figure, path)


def _method_maps(name: str, maps: Any, inputs: list[np.ndarray]) -> np.ndarray:
    """Relevance of method ``name`` as (N, H, W), checked against the inputs (N images (H, W, 3))."""
    values = require_finite(as_array(maps, f"heatmaps[{name!r}]"), f"heatmaps[{name!r}]")
    if values.ndim == 4:
        values = values.sum(axis=1)
    if values.ndim != 3 or values.shape[0] != len(inputs):
        raise DataError(f"heatmaps[{name!r}] must be (N, H, W) or (N, C, H, W) with N = {len(inputs)} images, "
                        f"got shape {values.shape}")
    for index, (heatmap, image) in enumerate(zip(values, inputs)):
        if heatmap.shape != image.shape[:2]:
            raise DataError(f"heatmaps[{name!r}][{index}] is {heatmap.shape} but image {index} is {image.shape[:2]}")
    return values
