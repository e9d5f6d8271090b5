"""Brain volumes for plotting: loading, checking that they share one grid, RAS orientation, slicing.

Every volume is a 3-D voxel array (i, j, k) with an affine to world millimetres (a nibabel image, a
path to one, or an array plus ``affine``). All volumes of a figure must share one grid. They are
reoriented to the closest RAS+ orientation (nibabel's ``io_orientation``), so that voxel axis 0
runs to the right (x), 1 to the front (y), 2 up (z); a volume stored with flipped or permuted axes
(e.g. Harvard-Oxford, whose x axis runs right-to-left) is drawn the same way. Oblique affines are
drawn along their closest canonical axes. Without any affine the identity is used: millimetres are
voxel indices and the arrays are taken to be RAS already.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from ..errors import DataError
from .arrays import as_array

__all__ = ["VIEWS", "Scene", "load_labels", "load_volume", "make_scene"]

VIEWS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
"""View name -> the world axis (0 = x, 1 = y, 2 = z) normal to its slices."""
_AXIS_LETTERS = "xyz"
_AFFINE_TOLERANCE = 1e-3  # mm


def load_volume(volume: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``volume`` (array/tensor, nibabel image or path) as float (X, Y, Z) and its affine (or None).

    Leading and trailing axes of length 1 are dropped, so (1, 1, X, Y, Z) relevance tensors and
    (X, Y, Z, 1) images work. NaN values become 0 (the usual "outside the mask" of statistical
    maps); infinite values raise DataError.
    """
    affine = None
    if isinstance(volume, (str, os.PathLike)):
        try:
            volume = nib.load(os.fspath(volume))
        except (OSError, nib.filebasedimages.ImageFileError) as error:
            raise DataError(f"cannot read {name} from {os.fspath(volume)!r}: {error}") from error
    if hasattr(volume, "affine") and hasattr(volume, "get_fdata"):
        affine = np.asarray(volume.affine, dtype=np.float64)
        volume = volume.get_fdata(dtype=np.float32)
    data = as_array(volume, name)
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{name} must be a 3-D volume (X, Y, Z), got shape {data.shape}")
    if np.isinf(data).any():
        raise DataError(f"{name} holds infinite values")
    return np.nan_to_num(data, nan=0.0), affine


def load_labels(labels: Any, name: str = "atlas_labels") -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
    """An atlas as integer labels (X, Y, Z), its affine (or None) and region names {id: name}.

    ``labels`` is a label array, a label image or path, or an atlas object with ``.image`` and
    ``.labels`` (such as ``lrp.neuro.load_atlas``'s), which also supplies the names.
    """
    names: dict[int, str] = {}
    if hasattr(labels, "image") and hasattr(labels, "labels"):
        names = {int(key): str(value) for key, value in dict(labels.labels).items()}
        labels = labels.image
    data, affine = load_volume(labels, name)
    if not np.array_equal(data, np.round(data)):
        raise DataError(f"{name} must hold integer region ids, found fractional values")
    return data.astype(np.int64), affine, names


@dataclass(frozen=True)
class Scene:
    """Volumes on one grid, in RAS orientation: named overlays, an optional background and labels.

    ``affine`` is the RAS affine of the reoriented grid; world coordinate ``a`` of voxel index ``i``
    along axis ``a`` is ``affine[a, a] * i + affine[a, 3]``.
    """

    overlays: dict[str, np.ndarray]
    background: np.ndarray | None
    labels: np.ndarray | None
    affine: np.ndarray

    @cached_property
    def grey_limits(self) -> tuple[float, float]:
        """Grey scale limits of the background: 1st and 99.5th percentile of its non-zero voxels."""
        values = self.background[self.background != 0] if self.background is not None else np.zeros(0)
        if values.size == 0:
            return 0.0, 1.0
        low, high = (float(v) for v in np.percentile(values, [1.0, 99.5]))
        return (low, high) if high > low else (low, low + 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.overlays.values())).shape

    def millimetres(self, axis: int, index: float) -> float:
        """World coordinate (mm) of voxel ``index`` along ``axis``."""
        return float(self.affine[axis, axis] * index + self.affine[axis, 3])

    def index(self, axis: int, millimetres: float) -> int:
        """The voxel index along ``axis`` nearest to ``millimetres``; DataError when outside the grid."""
        index = int(np.rint((millimetres - self.affine[axis, 3]) / self.affine[axis, axis]))
        if not 0 <= index < self.shape[axis]:
            low, high = sorted((self.millimetres(axis, 0), self.millimetres(axis, self.shape[axis] - 1)))
            raise DataError(f"cut {_AXIS_LETTERS[axis]} = {millimetres:g} mm lies outside the volume "
                            f"({low:g} to {high:g} mm)")
        return index

    def in_plane_axes(self, view: str) -> tuple[int, int]:
        """World axes shown (horizontally, vertically) in ``view``: axial (x, y), coronal (x, z),
        sagittal (y, z)."""
        horizontal, vertical = (axis for axis in range(3) if axis != VIEWS[view])
        return horizontal, vertical

    def section(self, volume: np.ndarray, view: str, index: int) -> np.ndarray:
        """The slice of ``volume`` at ``index`` in ``view``, as (vertical, horizontal) for
        ``imshow(..., origin="lower", extent=self.extent(view))``."""
        return np.take(volume, index, axis=VIEWS[view]).T

    def centres(self, axis: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along ``axis``."""
        return self.affine[axis, axis] * np.arange(self.shape[axis]) + self.affine[axis, 3]

    def extent(self, view: str) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in mm of the voxel edges of a ``view`` slice."""
        horizontal, vertical = self.in_plane_axes(view)
        return (*self._edges(horizontal), *self._edges(vertical))

    def _edges(self, axis: int) -> tuple[float, float]:
        half = self.affine[axis, axis] / 2
        return self.millimetres(axis, 0) - half, self.millimetres(axis, self.shape[axis] - 1) + half

    def content_bounds(self, axis: int, margin: float = 3.0) -> tuple[float, float]:
        """(low, high) mm along ``axis`` of the background's non-zero voxels (the head), or of the
        overlays' non-zero voxels without background, widened by ``margin`` mm; the whole grid when empty."""
        content = self.background if self.background is not None else sum(np.abs(v) for v in self.overlays.values())
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(content != 0, axis=other))
        if present.size == 0:
            return self._edges(axis)
        low, high = sorted((self.millimetres(axis, present[0]), self.millimetres(axis, present[-1])))
        edge_low, edge_high = sorted(self._edges(axis))
        return max(low - margin, edge_low), min(high + margin, edge_high)

    def peak(self, volume: np.ndarray, sigma_mm: float = 3.0) -> tuple[int, int, int]:
        """Voxel index of the largest ``|volume|`` after Gaussian smoothing (``sigma_mm``), which a
        single outlying voxel cannot capture; the grid centre for a volume that is zero everywhere."""
        magnitude = np.abs(volume).astype(np.float32)
        if not magnitude.any():
            return tuple(size // 2 for size in magnitude.shape)
        sigma = [sigma_mm / abs(self.affine[axis, axis]) for axis in range(3)]
        smooth = ndimage.gaussian_filter(magnitude, sigma=sigma, mode="constant")
        return tuple(int(i) for i in np.unravel_index(np.argmax(smooth), smooth.shape))


def make_scene(overlays: Mapping[str, Any], background: Any = None, affine: Any = None,
               atlas_labels: Any = None) -> tuple[Scene, dict[int, str]]:
    """Load and check the volumes of one figure; returns the RAS :class:`Scene` and the atlas's names.

    All volumes must have the same shape, and all affines (of images, and ``affine`` if given) must
    agree; an array without an affine takes the common one. Raises DataError naming the mismatch.
    """
    volumes: dict[str, np.ndarray] = {}
    affines: dict[str, np.ndarray] = {}
    if affine is not None:
        affines["affine"] = _checked_affine(affine)
    for name, volume in overlays.items():
        volumes[name], affines[name] = load_volume(volume, name)
    if background is not None:
        volumes["background"], affines["background"] = load_volume(background, "background")
    names: dict[int, str] = {}
    if atlas_labels is not None:
        volumes["atlas_labels"], affines["atlas_labels"], names = load_labels(atlas_labels)
    _require_one_grid(volumes, {key: value for key, value in affines.items() if value is not None})
    known = [value for value in affines.values() if value is not None]
    grid_affine = known[0] if known else np.eye(4)
    ornt = orientations.io_orientation(grid_affine)
    shape = next(iter(volumes.values())).shape
    ras_affine = grid_affine @ orientations.inv_ornt_aff(ornt, shape)
    ras = {name: orientations.apply_orientation(volume, ornt) for name, volume in volumes.items()}
    scene = Scene(overlays={name: ras[name] for name in overlays}, background=ras.get("background"),
                  labels=ras.get("atlas_labels"), affine=ras_affine)
    return scene, names


def _checked_affine(affine: Any) -> np.ndarray:
    matrix = as_array(affine, "affine")
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise DataError(f"affine must be a finite, invertible (4, 4) matrix, got shape {matrix.shape}")
    return matrix


def _require_one_grid(volumes: dict[str, np.ndarray], affines: dict[str, np.ndarray]) -> None:
    shapes = {name: volume.shape for name, volume in volumes.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise DataError(f"volumes must share one grid, got shapes {listed}; resample them first "
                        "(e.g. nilearn.image.resample_to_img)")
    items = list(affines.items())
    for name, matrix in items[1:]:
        if not np.allclose(matrix, items[0][1], atol=_AFFINE_TOLERANCE):
            raise DataError(f"the affine of {name} differs from that of {items[0][0]}:\n{matrix}\nvs\n{items[0][1]}")
