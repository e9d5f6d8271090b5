"""Relevance per atlas region: sums, densities and shares of relevance maps, one row per (subject, region)."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from nibabel.processing import resample_from_to
from nibabel.spatialimages import SpatialImage
from numpy.typing import ArrayLike

from ..errors import DataError
from .atlas import Atlas
from .io import Grid, ImageSource, as_volume, count_nonfinite, describe, grid_of, load_image

__all__ = ["STATS_COLUMNS", "MapSource", "RegionTable", "region_stats", "resample_map"]

STATS_COLUMNS = ("subject", "region_id", "region", "voxels", "volume_mm3", "sum", "density", "positive", "negative",
                 "share")
"""The columns of :func:`region_stats` (followed by ``method`` when one is given)."""

MapSource = np.ndarray | torch.Tensor | SpatialImage | str | os.PathLike
"""One subject's map: an array or tensor on the atlas grid ((X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z)), an
image or a NIfTI path."""

AFFINE_TOLERANCE_MM = 1e-3
_DTYPES = (np.int64, object, np.int64) + (np.float64,) * 6  # of STATS_COLUMNS[1:]


def region_stats(maps: Mapping[Any, MapSource] | np.ndarray | torch.Tensor, atlas: Atlas, *,
                 subjects: Sequence[Any] | None = None, method: str | None = None) -> pd.DataFrame:
    """Relevance of every atlas region in every map, as a tidy table.

    maps: {subject: map} (arrays, tensors, images or paths, read one at a time), or a stack (N, X, Y, Z) /
          (N, 1, X, Y, Z) named by ``subjects`` (default 0..N-1); a single (X, Y, Z) map is one subject.
          Maps must lie on the atlas grid: same shape, and for images the same affine (bring them there
          with :func:`resample_map` or ``atlas.resample_to``).
    method: when given, added as a last column ``method``.

    Returns one row per (subject, region), regions in id order, with columns :data:`STATS_COLUMNS`:
    ``voxels`` and ``volume_mm3`` of the region, ``sum`` of the relevance in it, ``density`` = sum / voxels
    (the paper's relevance density, the region mean; NaN for an empty region), ``positive`` / ``negative``
    the sums of the positive / negative parts, ``share`` = sum / the total relevance of the whole map
    (background included; NaN when that total is 0).

    Raises DataError naming the subject for a map off the atlas grid (with both shapes or affines) or with
    NaN/inf values. Cost: three ``np.bincount`` passes over the labelled voxels of each map, whatever the
    number of regions.
    """
    table = RegionTable(atlas)
    for subject, source in _subject_maps(maps, subjects, atlas.shape):
        table.add(subject, source, method)
    return table.frame()


class RegionTable:
    """The rows of :func:`region_stats` for maps added one at a time (a study adds thousands).

    Per map only its region sums (sum, positive part, negative part) and its total are kept, in blocks of
    :attr:`BLOCK` maps (few, large allocations: thousands of small long-lived arrays between the
    temporaries of the explanations would fragment the heap); :meth:`frame` builds the table once.
    """

    BLOCK = 256

    def __init__(self, atlas: Atlas) -> None:
        self.atlas = atlas
        self._labels = _LabelIndex(atlas)
        self._keys: list[tuple[Any, str | None]] = []
        self._blocks: list[np.ndarray] = []  # (BLOCK, 4, regions): sum, positive, negative, map total

    def add(self, subject: Any, relevance: MapSource, method: str | None = None) -> None:
        """Add the rows of one map (checked like :func:`region_stats`' maps) of ``subject`` and ``method``."""
        sums = self._labels.sums(_on_atlas_grid(relevance, subject, self.atlas))
        row = len(self._keys) % self.BLOCK
        if row == 0:
            self._blocks.append(np.empty((self.BLOCK, *sums.shape)))
        self._blocks[-1][row] = sums
        self._keys.append((subject, method))

    def frame(self) -> pd.DataFrame:
        """The table of every map added: :data:`STATS_COLUMNS`, plus ``method`` when any map has one."""
        labels, maps = self._labels, len(self._keys)
        regions = len(labels.ids)
        sums = np.concatenate(self._blocks)[:maps] if self._blocks else np.empty((0, 4, regions))
        region_sum, positive, negative, total = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
        share = np.where(total != 0, region_sum / np.where(total != 0, total, 1), np.nan)
        density = np.where(labels.voxels > 0, region_sum / np.maximum(labels.voxels, 1), np.nan)
        columns = {"region_id": labels.ids, "region": labels.names, "voxels": labels.voxels,
                   "volume_mm3": labels.volume_mm3}
        table = pd.DataFrame(
            {"subject": pd.Series([subject for subject, _ in self._keys for _ in range(regions)], dtype=object)}
            | {name: np.tile(values, maps).astype(dtype, copy=False)
               for (name, values), dtype in zip(columns.items(), _DTYPES)}
            | {name: values.ravel() for name, values in
               (("sum", region_sum), ("density", density), ("positive", positive), ("negative", negative),
                ("share", share))})
        if any(method is not None for _, method in self._keys):
            table["method"] = [method for _, method in self._keys for _ in range(regions)]
        return table


class _LabelIndex:
    """The atlas labels prepared for per-region sums by ``np.bincount`` over the labelled voxels only."""

    def __init__(self, atlas: Atlas) -> None:
        flat = atlas.data.ravel()
        self.inside = np.flatnonzero(flat)  # background voxels need no bincount
        self.labels = flat[self.inside].astype(np.intp)
        self.ids = np.asarray(atlas.ids, dtype=np.int64)
        self.names = np.asarray(atlas.names, dtype=object)
        self.bins = int(self.ids.max(initial=0)) + 1
        counts = atlas.voxel_counts()
        self.voxels = np.array([counts[label] for label in atlas.ids], dtype=np.int64)
        self.volume_mm3 = self.voxels * atlas.voxel_volume_mm3

    def region_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum of ``values`` (labelled voxels, flat) per region, in id order."""
        return np.bincount(self.labels, weights=values, minlength=self.bins)[self.ids]

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(4, regions) for one map (flat float64 over the whole grid): per region the sum, the sums of the
        positive and of the negative parts, and (in every column) the total of the whole map."""
        inside = values[self.inside]
        return np.stack([self.region_sums(inside), self.region_sums(np.maximum(inside, 0.0)),
                         self.region_sums(np.minimum(inside, 0.0)), np.full(len(self.ids), values.sum())])


def resample_map(map_img: ImageSource, target: ImageSource | Grid | Atlas | tuple[Sequence[int], ArrayLike], *,
                 order: int = 1) -> nib.Nifti1Image:
    """``map_img`` (an image or path) resampled onto the grid of ``target`` (an image, a path, an Atlas or
    ``(shape, affine)``), affine-aware, with spline ``order`` (1 = trilinear, 0 = nearest); float32, 0 outside.

    Interpolation keeps values, hence densities (region means); region *sums* scale with the voxel count,
    so compare sums only between maps on one grid.
    """
    if not isinstance(order, int) or not 0 <= order <= 5:
        raise ValueError(f"order must be an integer spline order 0..5, got {order!r}")
    image = load_image(map_img, ndim=3)
    grid = grid_of(target.image if isinstance(target, Atlas) else target)
    source = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine, header=image.header,
                             dtype=np.float32)
    return resample_from_to(source, grid, order=order, mode="constant", cval=0.0)


def _subject_maps(maps: Mapping[Any, MapSource] | np.ndarray | torch.Tensor, subjects: Sequence[Any] | None,
                  grid_shape: tuple[int, ...]) -> Iterator[tuple[Any, MapSource]]:
    """(subject, map) pairs from a mapping or a stack of maps."""
    if isinstance(maps, Mapping):
        if subjects is not None:
            raise ValueError("subjects= names the maps of a stack; a mapping names them by its keys")
        yield from maps.items()
        return
    if not isinstance(maps, (np.ndarray, torch.Tensor)):
        raise TypeError(f"maps must be a mapping {{subject: map}} or an array (N, X, Y, Z), got {type(maps).__name__}")
    shape = tuple(maps.shape)
    if shape == tuple(grid_shape):
        maps = maps[None]
    elif len(shape) == 5 and shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 4:
        raise DataError(f"maps: expected a stack (N, X, Y, Z) or (N, 1, X, Y, Z) on the atlas grid {grid_shape}, "
                        f"got shape {shape}")
    subjects = list(range(len(maps))) if subjects is None else list(subjects)
    if len(subjects) != len(maps):
        raise DataError(f"subjects: {len(subjects)} names for {len(maps)} maps")
    yield from zip(subjects, maps)


def _on_atlas_grid(source: MapSource, subject: Any, atlas: Atlas) -> np.ndarray:
    """The map of ``subject`` as flat float64 values (X*Y*Z,), checked to lie on the atlas grid and be finite."""
    what = f"map of subject {subject!r}"
    if isinstance(source, (SpatialImage, str, os.PathLike)):
        what += f" ({describe(source)})"
        image = load_image(source, ndim=3)
        if image.shape == atlas.shape and not np.allclose(image.affine, atlas.affine, atol=AFFINE_TOLERANCE_MM):
            raise DataError(f"{what} is not on the atlas grid: its affine\n{image.affine}\ndiffers from the atlas "
                            f"affine\n{atlas.affine}\n(resample it with lrp.neuro.resample_map(map, atlas))")
        source = np.asanyarray(image.dataobj)
    volume = as_volume(source, what)
    if volume.shape != atlas.shape:
        raise DataError(f"{what} has shape {volume.shape} but the atlas grid is {atlas.shape} (bring them to one "
                        "grid with lrp.neuro.resample_map(map, atlas) or atlas.resample_to(map))")
    count = count_nonfinite(volume)
    if count:
        raise DataError(f"{what} has {count} NaN or infinite voxels")
    return volume.astype(np.float64, copy=False).ravel()
