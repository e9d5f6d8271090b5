"""The units that region perturbation removes: patches / cubes of the grid, or atlas regions."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["Units", "atlas_units", "patch_units", "unit_sums"]


@dataclass(frozen=True)
class Units:
    """A partition of a spatial grid S (1 to 3 axes) into U units.

    index:  LongTensor S, the unit (0 .. U-1) of every voxel; -1 marks voxels in no unit (atlas background).
    voxels: LongTensor (U,), the number of voxels of each unit.
    ids:    LongTensor (U,), each unit's patch number (row-major over the patch grid) or atlas label.
    """

    index: Tensor
    voxels: Tensor
    ids: Tensor

    @property
    def count(self) -> int:
        """U, the number of units."""
        return int(self.ids.numel())


def patch_units(spatial_shape: Sequence[int], patch_size: int | Sequence[int]) -> Units:
    """Non-overlapping patches (2D) or cubes (3D) of ``patch_size`` voxels per axis tiling a grid of
    ``spatial_shape``, from the first voxel on; the last patch along an axis may be partial.

    Raises ValueError for a size that is not positive or larger than the grid along some axis.
    """
    shape = tuple(int(n) for n in spatial_shape)
    sizes = _per_axis(patch_size, len(shape))
    for axis, (n, size) in enumerate(zip(shape, sizes)):
        if size > n:
            raise ValueError(f"patch_size {sizes} is larger than the input grid {shape} along spatial axis {axis}")
    counts = [math.ceil(n / size) for n, size in zip(shape, sizes)]
    index = torch.zeros(shape, dtype=torch.long)
    for axis, (n, size, count) in enumerate(zip(shape, sizes, counts)):
        view = [1] * len(shape)
        view[axis] = n
        stride = math.prod(counts[axis + 1:])
        index = index + (torch.arange(n) // size * stride).reshape(view)
    total = math.prod(counts)
    return Units(index, torch.bincount(index.reshape(-1), minlength=total), torch.arange(total))


def atlas_units(labels: np.ndarray | Tensor, spatial_shape: Sequence[int]) -> Units:
    """The regions of an atlas label volume ``labels`` (shaped ``spatial_shape``, e.g. D×H×W; integer
    labels, 0 = background, which belongs to no unit) as units, in increasing label order.

    Raises DataError when the volume does not match the grid, holds non-integer or negative labels, or
    has no region.
    """
    shape = tuple(int(n) for n in spatial_shape)
    volume = labels.detach().cpu() if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if tuple(volume.shape) != shape:
        raise DataError(f"the label volume has shape {tuple(volume.shape)}, the input grid is {shape}")
    if volume.is_floating_point():
        if not bool((volume == volume.round()).all()):
            raise DataError("the label volume holds non-integer values; pass integer region labels")
    elif volume.dtype == torch.bool or volume.is_complex():
        raise DataError(f"the label volume must hold integer region labels, got {volume.dtype}")
    volume = volume.long()
    if bool((volume < 0).any()):
        raise DataError(f"the label volume holds negative labels (min {int(volume.min())}); 0 is background")
    ids, inverse = torch.unique(volume, return_inverse=True)
    has_background = bool(ids[0] == 0)
    ids = ids[int(has_background):]
    if ids.numel() == 0:
        raise DataError("the label volume has no region: every voxel is background (0)")
    index = inverse - int(has_background)
    return Units(index, torch.bincount(index[index >= 0], minlength=ids.numel()), ids)


def unit_sums(units: Units, relevance: Tensor) -> Tensor:
    """Relevance (N, C, *S) summed over channels and over each unit's voxels: (N, U)."""
    per_voxel = relevance.sum(1).reshape(relevance.shape[0], -1)
    index = units.index.reshape(-1).to(relevance.device)
    inside = index >= 0
    sums = per_voxel.new_zeros(relevance.shape[0], units.count)
    return sums.index_add_(1, index[inside], per_voxel[:, inside])


def _per_axis(size: int | Sequence[int], axes: int) -> tuple[int, ...]:
    sizes = (size,) * axes if _is_int(size) else tuple(size) if isinstance(size, Sequence) else ()
    if len(sizes) != axes or not all(_is_int(s) and s > 0 for s in sizes):
        raise ValueError(f"patch_size must be a positive int or {axes} positive ints (one per spatial axis), "
                         f"got {size!r}")
    return tuple(int(s) for s in sizes)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
