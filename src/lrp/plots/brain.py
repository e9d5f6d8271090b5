"""Brain figures: relevance over an MRI in orthogonal slices, slice mosaics and group comparisons.

Conventions (as in nilearn): cut coordinates are world millimetres ``x`` (left → right), ``y``
(back → front), ``z`` (down → up); axial slices are drawn with the front at the top, coronal and
sagittal slices upright, sagittal slices with the front to the right. Left-right follows
``convention``: ``"neurological"`` (default, as nilearn: the subject's left on the left of the
panel) or ``"radiological"`` (the subject's left on the right); the panels are marked L and R.

Relevance is drawn with a colour map over the grey MRI, transparent near zero (see
:func:`lrp.plots.colors.heatmap_to_rgba`); atlas regions are outlined with matplotlib contours and
named in a legend. All volumes are checked and reoriented by :mod:`lrp.plots.volumes`.
"""
from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import DataError
from .colors import centered_colormap, heatmap_to_rgba, symmetric_limits
from .figures import finish, new_figure
from .volumes import VIEWS, Scene, load_volume, make_scene

__all__ = ["REGION_COLOURS", "plot_group_maps", "plot_mosaic", "plot_slices"]

Cuts = Literal["auto"] | Mapping[str, float] | Sequence[float]
Convention = Literal["neurological", "radiological"]

REGION_COLOURS: tuple[str, ...] = ("#00d000", "#00e5ff", "#ff00ff", "#ffd500", "#ff8c00", "#8a2be2",
                                   "#7fff00", "#ff69b4", "#a0522d", "#808000")
"""Outline colours of the regions named in ``regions``, in order (cycled); drawn with a dark halo
so that they stay visible over grey anatomy and over any heatmap colour."""
_HALO = (patheffects.Stroke(linewidth=2.6, foreground="black"), patheffects.Normal())
_ALL_REGIONS_COLOUR = "#40e0d0"
_PANEL_INCHES = 2.6
_OPACITY_RAMP = 0.3
_DEFAULT_CMAP = {False: "bwr", True: "autumn"}


@dataclass(frozen=True)
class _Colouring:
    """How relevance values become colours: a colour map, its scale and the transparency rule."""

    cmap: Colormap
    vmax: float
    threshold: float
    positive_only: bool

    def rgba(self, section: np.ndarray) -> np.ndarray:
        return heatmap_to_rgba(section, cmap=self.cmap, vmax=self.vmax, threshold=self.threshold,
                               opaque_at=min(1.0, self.threshold + _OPACITY_RAMP), positive_only=self.positive_only)

    def mappable(self) -> ScalarMappable:
        low = 0.0 if self.positive_only else -self.vmax
        return ScalarMappable(Normalize(low, self.vmax), self.cmap)


@dataclass(frozen=True)
class _Outline:
    """One atlas region to outline: its id, legend label and colour."""

    region_id: int
    label: str
    colour: str


def plot_slices(relevance: Any, background: Any = None, affine: Any = None, *, cuts: Cuts = "auto",
                views: Sequence[str] = ("axial", "coronal", "sagittal"), percentile: float = 99.5,
                vmax: float | None = None, reference: Any = None, cmap: str | Colormap | None = None,
                positive_only: bool = False, threshold: float = 0.1, atlas_labels: Any = None,
                regions: Sequence[int | str] | None = None, names: Mapping[int, str] | None = None,
                convention: Convention = "neurological", title: str | None = None,
                path: str | os.PathLike | None = None) -> Figure:
    """Relevance over the MRI in orthogonal slices (one panel per view), with region outlines.

    Args:
        relevance: (X, Y, Z) array/tensor (extra axes of length 1 are dropped), nibabel image or path.
        background: the anatomy (e.g. a T1) on the same grid, or None.
        affine: (4, 4) voxel -> mm of arrays without their own (images bring theirs; they must agree);
            None everywhere means voxel coordinates.
        cuts: ``"auto"`` (the peak of the smoothed |relevance|), ``{"x": mm, "y": mm, "z": mm}``
            (view names work as keys too; missing ones come from the peak) or ``(x, y, z)`` in mm.
        views: any of ``"axial"``, ``"coronal"``, ``"sagittal"``, in panel order.
        percentile, vmax, reference: the colour scale: ``vmax`` if given, else the ``percentile`` of
            |reference| (any map, e.g. a group mean, so that several figures share one scale), else of
            |relevance| (see :func:`lrp.plots.colors.symmetric_limits`).
        cmap: colour map; default ``"bwr"`` (symmetric around zero), ``"autumn"`` (red to yellow) with
            ``positive_only``.
        positive_only: draw only positive relevance on the scale [0, vmax].
        threshold: in [0, 1): values below ``threshold * vmax`` in magnitude are transparent; the
            opacity rises linearly to full at ``(threshold + 0.3) * vmax``.
        atlas_labels: integer label volume on the same grid (array, image, path or atlas object).
        regions: region ids or names to outline, each in its own colour and named in the legend;
            None outlines every region of ``atlas_labels`` in one colour without a legend.
        names: region id -> name for the legend (overrides an atlas object's names).
        convention: ``"neurological"`` (left on the left) or ``"radiological"``.
        title, path: figure title; save to ``path`` (PNG or PDF by suffix, atomically).
    Raises:
        DataError: volumes that are not 3-D, on different grids, cuts outside the volume, unknown regions.
    """
    views = _checked_views(views, convention)
    scene, atlas_names = make_scene({"relevance": relevance}, background, affine, atlas_labels)
    overlay = scene.overlays["relevance"]
    colouring = _colouring([overlay], cmap, percentile, vmax, reference, threshold, positive_only)
    outlines = _outlines(scene, regions, {**atlas_names, **dict(names or {})})
    cut = _cut_indices(scene, cuts, overlay)
    ratios = [_aspect(scene, view) for view in views]
    figure = new_figure(_PANEL_INCHES * sum(ratios) + 1.2, _PANEL_INCHES + 0.4 + _legend_inches(outlines))
    axes = figure.subplots(1, len(views), squeeze=False, gridspec_kw={"width_ratios": ratios})[0]
    for ax, view in zip(axes, views):
        _draw_panel(ax, scene, view, cut[VIEWS[view]], overlay, colouring, outlines, convention)
        ax.set_title(_cut_label(scene, view, cut[VIEWS[view]]), fontsize="small")
    return _finish(figure, axes, colouring, outlines, title, path)


def plot_mosaic(relevance: Any, background: Any = None, affine: Any = None, *, view: str = "axial",
                n_slices: int = 12, coords: Sequence[float] | None = None, columns: int | None = None,
                percentile: float = 99.5, vmax: float | None = None, reference: Any = None,
                cmap: str | Colormap | None = None, positive_only: bool = False, threshold: float = 0.1,
                atlas_labels: Any = None, regions: Sequence[int | str] | None = None,
                names: Mapping[int, str] | None = None, convention: Convention = "neurological",
                title: str | None = None, path: str | os.PathLike | None = None) -> Figure:
    """Many parallel slices of one ``view``: ``n_slices`` evenly spaced through the head (the
    background's non-zero extent) or at ``coords`` (mm), ``columns`` per row (default about square).

    The other arguments are those of :func:`plot_slices`.
    """
    (view,) = _checked_views([view], convention)
    scene, atlas_names = make_scene({"relevance": relevance}, background, affine, atlas_labels)
    overlay = scene.overlays["relevance"]
    colouring = _colouring([overlay], cmap, percentile, vmax, reference, threshold, positive_only)
    outlines = _outlines(scene, regions, {**atlas_names, **dict(names or {})})
    axis = VIEWS[view]
    if coords is None:
        if n_slices < 1:
            raise ValueError(f"n_slices must be at least 1, got {n_slices}")
        low, high = scene.content_bounds(axis, margin=0.0)
        coords = np.linspace(low, high, n_slices + 2)[1:-1]
    indices = [scene.index(axis, float(mm)) for mm in coords]
    if not indices:
        raise ValueError("coords must name at least one slice")
    columns = columns or min(len(indices), max(1, round(math.sqrt(1.5 * len(indices)))))
    rows = math.ceil(len(indices) / columns)
    ratio = _aspect(scene, view)
    figure = new_figure(_PANEL_INCHES * 0.75 * ratio * columns + 1.0,
                        _PANEL_INCHES * 0.75 * rows + 0.3 + _legend_inches(outlines))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, index in zip(axes, indices):
        _draw_panel(ax, scene, view, index, overlay, colouring, outlines, convention)
        ax.set_title(_cut_label(scene, view, index), fontsize="small")
    for ax in axes[len(indices):]:
        ax.set_visible(False)
    return _finish(figure, axes[:len(indices)], colouring, outlines, title, path)


def plot_group_maps(maps: Mapping[str, Any], background: Any = None, affine: Any = None, *, cuts: Cuts = "auto",
                    views: Sequence[str] = ("axial", "coronal", "sagittal"), percentile: float = 99.5,
                    vmax: float | None = None, reference: Any = None, cmap: str | Colormap | None = None,
                    positive_only: bool = False, threshold: float = 0.1, atlas_labels: Any = None,
                    regions: Sequence[int | str] | None = None, names: Mapping[int, str] | None = None,
                    convention: Convention = "neurological", title: str | None = None,
                    path: str | os.PathLike | None = None) -> Figure:
    """Group maps side by side (one row per group, e.g. AD / HC or TP / FP / TN / FN; one column per
    view), on one colour scale and at the same cuts, so that the rows compare directly.

    ``maps``: group name -> volume, all on one grid. The shared scale is ``vmax``, else the
    ``percentile`` of |reference|, else of all groups' values together; ``cuts="auto"`` takes the
    peak of the summed |maps|. The other arguments are those of :func:`plot_slices`.
    """
    if not maps:
        raise ValueError("plot_group_maps needs at least one group map")
    views = _checked_views(views, convention)
    scene, atlas_names = make_scene(dict(maps), background, affine, atlas_labels)
    volumes = list(scene.overlays.values())
    colouring = _colouring(volumes, cmap, percentile, vmax, reference, threshold, positive_only)
    outlines = _outlines(scene, regions, {**atlas_names, **dict(names or {})})
    cut = _cut_indices(scene, cuts, sum(np.abs(volume) for volume in volumes))
    ratios = [_aspect(scene, view) for view in views]
    rows = len(volumes)
    figure = new_figure(_PANEL_INCHES * 0.8 * sum(ratios) + 1.5,
                        _PANEL_INCHES * 0.8 * rows + 0.5 + _legend_inches(outlines))
    axes = figure.subplots(rows, len(views), squeeze=False, gridspec_kw={"width_ratios": ratios})
    for row, (group, volume) in enumerate(scene.overlays.items()):
        for ax, view in zip(axes[row], views):
            _draw_panel(ax, scene, view, cut[VIEWS[view]], volume, colouring, outlines, convention)
        axes[row, 0].text(-0.04, 0.5, group, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize="large")
    for ax, view in zip(axes[0], views):
        ax.set_title(_cut_label(scene, view, cut[VIEWS[view]]), fontsize="small")
    return _finish(figure, list(axes.flat), colouring, outlines, title, path)


def _checked_views(views: Sequence[str], convention: Convention) -> list[str]:
    """``views`` as a list (one name alone works too), after checking them and ``convention``."""
    if convention not in ("neurological", "radiological"):
        raise ValueError(f"convention must be 'neurological' or 'radiological', got {convention!r}")
    views = [views] if isinstance(views, str) else list(views)
    unknown = [view for view in views if view not in VIEWS]
    if unknown or not views:
        raise ValueError(f"views must be some of {list(VIEWS)}, got {views}")
    return views


def _colouring(volumes: list[np.ndarray], cmap: str | Colormap | None, percentile: float, vmax: float | None,
               reference: Any, threshold: float, positive_only: bool) -> _Colouring:
    """The colour scale shared by ``volumes``: ``vmax``, else from ``reference``, else from the volumes."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if vmax is None:
        sources = [load_volume(reference, "reference")[0]] if reference is not None else volumes
        if positive_only:
            sources = [np.maximum(source, 0.0) for source in sources]
        vmax = symmetric_limits(sources, percentile)[1]
    elif not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a positive finite number, got {vmax}")
    colormap = centered_colormap(cmap if cmap is not None else _DEFAULT_CMAP[positive_only])
    return _Colouring(colormap, float(vmax), threshold, positive_only)


def _cut_indices(scene: Scene, cuts: Cuts, source: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the cut along each world axis (x, y, z); see ``cuts`` in :func:`plot_slices`."""
    if isinstance(cuts, str):
        if cuts != "auto":
            raise ValueError(f"cuts must be 'auto', a dict of mm coordinates or (x, y, z), got {cuts!r}")
        return scene.peak(source)
    if isinstance(cuts, Mapping):
        keys = {"x": 0, "y": 1, "z": 2, **VIEWS}
        unknown = sorted(set(cuts) - set(keys))
        if unknown:
            raise ValueError(f"unknown cut keys {unknown}; use x, y, z or {list(VIEWS)}")
        given = {keys[key]: float(value) for key, value in cuts.items()}
        peak = scene.peak(source) if len(given) < 3 else (0, 0, 0)
        return tuple(scene.index(axis, given[axis]) if axis in given else peak[axis] for axis in range(3))
    coordinates = [float(value) for value in cuts]
    if len(coordinates) != 3:
        raise ValueError(f"cuts as a sequence must be (x, y, z) in mm, got {len(coordinates)} values")
    return tuple(scene.index(axis, mm) for axis, mm in enumerate(coordinates))


def _outlines(scene: Scene, regions: Sequence[int | str] | None, names: Mapping[int, str]) -> list[_Outline]:
    """The regions to outline; without ``regions`` every label present, all in one colour, unnamed."""
    if scene.labels is None:
        if regions is not None:
            raise ValueError("regions need atlas_labels to outline")
        return []
    present = {int(value) for value in np.unique(scene.labels)} - {0}
    if regions is None:
        return [_Outline(region, "", _ALL_REGIONS_COLOUR) for region in sorted(present)]
    ids_by_name = {name: region for region, name in names.items()}
    outlines = []
    for position, region in enumerate(regions):
        if isinstance(region, str):
            if region not in ids_by_name:
                close = difflib.get_close_matches(region, list(ids_by_name), n=3)
                hint = f"; did you mean {close}?" if close else ""
                if not ids_by_name:
                    hint = "; pass names={id: name} (or an atlas object) to name regions"
                raise DataError(f"region {region!r} is not among the atlas names{hint}")
            region = ids_by_name[region]
        if int(region) not in present:
            raise DataError(f"region {region} does not occur in atlas_labels")
        label = names.get(int(region), f"region {int(region)}")
        outlines.append(_Outline(int(region), label, REGION_COLOURS[position % len(REGION_COLOURS)]))
    return outlines


def _aspect(scene: Scene, view: str) -> float:
    """Width / height of the cropped panel of ``view`` in mm."""
    horizontal, vertical = scene.in_plane_axes(view)
    (left, right), (bottom, top) = scene.content_bounds(horizontal), scene.content_bounds(vertical)
    return (right - left) / (top - bottom)


def _cut_label(scene: Scene, view: str, index: int) -> str:
    axis = VIEWS[view]
    return f"{view} {'xyz'[axis]} = {scene.millimetres(axis, index):.0f} mm"


def _draw_panel(ax: Axes, scene: Scene, view: str, index: int, overlay: np.ndarray, colouring: _Colouring,
                outlines: list[_Outline], convention: Convention) -> None:
    """One slice: grey anatomy (zeros transparent), coloured relevance, region contours, L/R marks."""
    extent = scene.extent(view)
    if scene.background is not None:
        low, high = scene.grey_limits
        anatomy = np.ma.masked_equal(scene.section(scene.background, view, index), 0)
        ax.imshow(anatomy, cmap="gray", vmin=low, vmax=high, origin="lower", extent=extent, interpolation="nearest")
    ax.imshow(colouring.rgba(scene.section(overlay, view, index)), origin="lower", extent=extent,
              interpolation="nearest")
    horizontal, vertical = scene.in_plane_axes(view)
    if outlines:
        labels = scene.section(scene.labels, view, index)
        for outline in outlines:
            mask = labels == outline.region_id
            if mask.any():
                contour = ax.contour(scene.centres(horizontal), scene.centres(vertical), mask.astype(np.float32),
                                     levels=[0.5], colors=[outline.colour], linewidths=1.2 if outline.label else 0.5)
                if outline.label:
                    contour.set_path_effects(_HALO)
    ax.set_xlim(*scene.content_bounds(horizontal))
    ax.set_ylim(*scene.content_bounds(vertical))
    ax.set_aspect("equal")
    ax.set_axis_off()
    if view != "sagittal":
        left, right = ("L", "R") if convention == "neurological" else ("R", "L")
        if convention == "radiological":
            ax.invert_xaxis()
        for x, letter, align in ((0.01, left, "left"), (0.99, right, "right")):
            ax.text(x, 0.99, letter, transform=ax.transAxes, ha=align, va="top", fontsize="small", color="0.3")


def _legend_inches(outlines: list[_Outline]) -> float:
    named = sum(1 for outline in outlines if outline.label)
    return 0.25 * math.ceil(named / 3) if named else 0.0


def _finish(figure: Figure, axes: Sequence[Axes], colouring: _Colouring, outlines: list[_Outline],
            title: str | None, path: str | os.PathLike | None) -> Figure:
    """Colour bar, region legend and title; save when ``path`` is given."""
    figure.colorbar(colouring.mappable(), ax=list(axes), location="right", shrink=0.8, label="relevance")
    named = [outline for outline in outlines if outline.label]
    if named:
        handles = [Line2D([], [], color=outline.colour, linewidth=1.6, path_effects=_HALO) for outline in named]
        figure.legend(handles, [outline.label for outline in named], loc="outside lower center",
                      ncols=min(3, len(named)), frameon=False, fontsize="small")
    if title:
        figure.suptitle(title)
    return finish(figure, path)
