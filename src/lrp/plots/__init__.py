"""Figures: relevance heatmaps of images, brain slices with region outlines, region statistics.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` made without pyplot (no
window opens) and, given ``path``, saves it atomically as PNG or PDF (by the suffix).
"""
from .brain import plot_group_maps, plot_mosaic, plot_slices
from .colors import centered_colormap, heatmap_to_rgb, heatmap_to_rgba, symmetric_limits
from .figures import save_figure
from .images import grid, image_to_rgb, overlay
from .regions import plot_covariate, plot_gain, plot_top_regions

__all__ = [
    "centered_colormap",
    "grid",
    "heatmap_to_rgb",
    "heatmap_to_rgba",
    "image_to_rgb",
    "overlay",
    "plot_covariate",
    "plot_gain",
    "plot_group_maps",
    "plot_mosaic",
    "plot_slices",
    "plot_top_regions",
    "save_figure",
    "symmetric_limits",
]
