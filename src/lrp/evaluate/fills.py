"""What replaces a removed unit: a constant, the per-channel mean, or a blurred copy of the input."""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FILLS", "fill_values", "gaussian_blur"]

FILLS = ("constant", "mean", "blur")
"""The fills of :func:`fill_values`."""


def fill_values(x: Tensor, fill: str = "constant", value: float = 0.0, sigma: float | Sequence[float] = 2.0) -> Tensor:
    """The values that replace removed voxels of ``x`` (N, C, *S), shaped like ``x``.

    fill: ``"constant"`` (``value`` everywhere), ``"mean"`` (each sample's per-channel mean over the
        grid) or ``"blur"`` (``x`` blurred over the grid, see :func:`gaussian_blur`, with ``sigma``).
    """
    if fill == "constant":
        return torch.full_like(x, value)
    if fill == "mean":
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).clone()
    if fill == "blur":
        return gaussian_blur(x, sigma)
    raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")


def gaussian_blur(x: Tensor, sigma: float | Sequence[float], truncate: float = 4.0) -> Tensor:
    """``x`` (N, C, *S) blurred by a Gaussian of standard deviation ``sigma`` voxels (one value, or one
    per spatial axis; 0 leaves an axis alone) over the spatial axes, each channel on its own.

    Same conventions as ``scipy.ndimage.gaussian_filter`` (kernel radius ``int(truncate * sigma + 0.5)``,
    normalised to sum 1; mode ``"reflect"``: the border is mirrored with its edge voxel repeated), as
    separable 1-D convolutions in torch, so it runs on the input's device and dtype.
    """
    axes = x.dim() - 2
    sigmas = (float(sigma),) * axes if isinstance(sigma, Real) else tuple(float(s) for s in sigma)
    if len(sigmas) != axes or any(s < 0 for s in sigmas):
        raise ValueError(f"sigma must be a non-negative number or {axes} of them (one per spatial axis), "
                         f"got {sigma!r}")
    for axis, s in enumerate(sigmas, start=2):
        if s > 0:
            x = _blur_axis(x, axis, s, truncate)
    return x


def _blur_axis(x: Tensor, axis: int, sigma: float, truncate: float) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    n = x.shape[axis]
    positions = torch.arange(-radius, n + radius, device=x.device) % (2 * n)
    reflected = torch.where(positions < n, positions, 2 * n - 1 - positions)
    padded = x.index_select(axis, reflected).movedim(axis, -1)
    rows = padded.reshape(-1, 1, n + 2 * radius)
    blurred = F.conv1d(rows, kernel.reshape(1, 1, -1)).reshape(*padded.shape[:-1], n)
    return blurred.movedim(-1, axis)
