"""Random smooth spatial fields and transforms for synthetic subjects: elastic displacement fields,
multiplicative bias fields, affine jitter and the pull-back sampling that applies them.

Every field lives on an axis-aligned grid given by its world coordinates along each axis (mm), so a
field is a separable sum of Gaussian bumps and costs three small matrix products to evaluate, at any
resolution. Transforms are *pull-backs*: for every output voxel they give the position (mm or voxel
index) in the source volume whose value it takes, as ``scipy.ndimage.map_coordinates`` expects.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = ["grid_axes", "pull_back_positions", "random_affine", "sample", "smooth_random_field"]


def grid_axes(shape: Sequence[int], affine: np.ndarray) -> list[np.ndarray]:
    """World coordinates (mm) of the voxel centres along each axis of an axis-aligned grid.

    shape: (X, Y, Z); affine: 4×4 voxel-to-world matrix with a diagonal 3×3 part.
    Returns three 1-D arrays of lengths X, Y, Z. Raises ValueError for a rotated or sheared grid.
    """
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))):
        raise ValueError(f"grid affine must be axis-aligned (diagonal 3×3 part), got\n{affine}")
    return [affine[axis, 3] + affine[axis, axis] * np.arange(size) for axis, size in enumerate(shape)]


def _bump_matrix(axis_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """(len(axis_mm), K) Gaussian bumps of width ``sigma_mm`` centred every ``sigma_mm`` over the axis
    (two widths beyond each end), each row scaled to unit Euclidean norm."""
    start, stop = axis_mm.min() - 2 * sigma_mm, axis_mm.max() + 2 * sigma_mm
    centres = np.arange(start, stop + sigma_mm, sigma_mm)
    bumps = np.exp(-0.5 * ((axis_mm[:, None] - centres[None, :]) / sigma_mm) ** 2)
    return bumps / np.linalg.norm(bumps, axis=1, keepdims=True)


def smooth_random_field(rng: np.random.Generator, axes_mm: Sequence[np.ndarray], *, sigma_mm: float,
                        amplitude: float, components: int = 1) -> np.ndarray:
    """A smooth Gaussian random field: i.i.d. normal coefficients on a coarse control grid (spacing
    ``sigma_mm``) convolved with a Gaussian of width ``sigma_mm`` and evaluated at the grid points.

    The bump weights are normalised per point, so every component is N(0, amplitude²) at every
    voxel, whatever ``sigma_mm`` and the grid spacing. The coefficients depend only on the grid's
    extent, so a finer grid over the same extent samples the same continuous field.

    axes_mm: world coordinates along each axis (see ``grid_axes``).
    Returns float32 (components, X, Y, Z).
    """
    if sigma_mm <= 0:
        raise ValueError(f"sigma_mm must be positive, got {sigma_mm}")
    matrices = [_bump_matrix(np.asarray(axis, dtype=float), sigma_mm) for axis in axes_mm]
    coefficients = rng.standard_normal((components, *(m.shape[1] for m in matrices))) * amplitude
    field = np.einsum("ia,cabk->cibk", matrices[0], coefficients)
    field = matrices[1] @ field  # (Y, B) @ (C, X, B, K) -> (C, X, Y, K)
    return (field @ matrices[2].T).astype(np.float32)  # -> (C, X, Y, Z)


def random_affine(rng: np.random.Generator, centre_mm: Sequence[float], *, max_rotation_deg: float,
                  max_translation_mm: float, max_scale: float) -> np.ndarray:
    """A random 4×4 world-to-world affine about ``centre_mm``: rotation by three Euler angles, per-axis
    scaling and a translation, each drawn uniformly within ``±max_rotation_deg``,
    ``1 ± max_scale`` and ``±max_translation_mm``."""
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    scales = rng.uniform(1 - max_scale, 1 + max_scale, 3)
    translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    linear = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(scales)
    centre = np.asarray(centre_mm, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + translation
    return matrix


def pull_back_positions(axes_mm: Sequence[np.ndarray], affine_mm: np.ndarray,
                        displacement_mm: np.ndarray | None = None) -> np.ndarray:
    """World positions (mm) that the output grid pulls its values from: ``affine_mm @ y + u(y)``.

    axes_mm: world coordinates of the output grid along each axis (X, Y, Z points).
    affine_mm: 4×4 world-to-world matrix; displacement_mm: optional (3, X, Y, Z) field added after it.
    Returns float64 (3, X, Y, Z).
    """
    shape = tuple(len(axis) for axis in axes_mm)
    along = [np.asarray(axis, dtype=float).reshape([-1 if a == b else 1 for b in range(3)])
             for a, axis in enumerate(axes_mm)]
    positions = np.empty((3, *shape)) if displacement_mm is None else displacement_mm.astype(float)
    for row in range(3):
        linear = affine_mm[row, 3] + sum(affine_mm[row, column] * along[column] for column in range(3))
        positions[row] = linear if displacement_mm is None else positions[row] + linear
    return positions


def sample(volume: np.ndarray, voxel_positions: np.ndarray, *, order: int) -> np.ndarray:
    """Values of ``volume`` (X, Y, Z) at fractional voxel positions (3, ...), zero outside it.

    order 0 (nearest neighbour, for labels keeps the dtype) or 1 (trilinear). Returns shape (...).
    """
    return ndimage.map_coordinates(volume, voxel_positions, order=order, mode="constant", cval=0.0,
                                   prefilter=False)
