"""Reading and writing NIfTI volumes, with checks whose errors name the file and the problem.

Axis convention: a volume is an array (X, Y, Z) indexed by the NIfTI voxel axes (i, j, k), and the
image affine maps voxel (i, j, k, 1) to millimetres (scanner or MNI space). Our 3D models take
tensors (N, C, D, H, W) whose spatial axes (D, H, W) *are* these voxel axes (i, j, k), unchanged: no
transposition or flip anywhere, so a relevance map (1, 1, D, H, W) saved with its input's affine
lies exactly on that input.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.spatialimages import SpatialImage
from numpy.typing import ArrayLike, DTypeLike

from ..errors import DataError
from ..files import atomic_path

__all__ = [
    "NIFTI_SUFFIXES",
    "Grid",
    "ImageSource",
    "MissingFileError",
    "describe",
    "grid_of",
    "is_nifti",
    "load_image",
    "load_volume",
    "nifti_stem",
    "save_image",
]

ImageSource = str | os.PathLike | SpatialImage
"""A path to an image file nibabel reads (.nii, .nii.gz, ...) or a nibabel image object."""
Grid = tuple[tuple[int, int, int], np.ndarray]
"""A voxel grid: its shape (X, Y, Z) and its 4x4 voxel-to-mm affine."""

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""The file name endings of NIfTI images we write, longest first."""


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether the file name ends in .nii or .nii.gz (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without .nii.gz / .nii (``sub-01.nii.gz`` -> ``sub-01``), else without its last suffix."""
    path = Path(path)
    for suffix in NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


class MissingFileError(DataError, FileNotFoundError):
    """A file we need (an image, a label table, a template) does not exist; the message says where we
    looked and, for templates, how to install them."""


def describe(source: ImageSource) -> str:
    """How error messages name ``source``: its path, or "in-memory image"."""
    if isinstance(source, SpatialImage):
        filename = source.get_filename()
        return str(filename) if filename else "in-memory image"
    return str(source)


def load_image(source: ImageSource, *, ndim: int | tuple[int, ...] = 3) -> nib.Nifti1Image:
    """Read ``source`` (a path or a nibabel image) into an in-memory ``Nifti1Image``, checked.

    ndim: the accepted numbers of dimensions, e.g. 3 or (3, 4). Trailing singleton axes beyond the
    third are dropped first, so a volume stored as (X, Y, Z, 1) counts as 3D.
    The voxel data are read once (an unreadable or truncated file fails here, not later); the header
    (qform/sform codes, units) is kept. An image object is wrapped, not copied.

    Raises MissingFileError when the file does not exist, and DataError naming the file when it cannot
    be read, has the wrong number of dimensions, or has no valid 4x4 affine.
    """
    allowed = _allowed_ndim(ndim)
    name = describe(source)
    image = _open(source)
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # truncated or corrupt files fail with zlib, EOF, OS or value errors
        raise DataError(f"{name}: cannot read the voxel data ({type(error).__name__}: {error})") from error
    data = _drop_trailing_singletons(data)
    if data.ndim not in allowed:
        expected = " or ".join(f"{n}D" for n in allowed)
        raise DataError(f"{name}: the image is {data.ndim}D (shape {data.shape}); expected {expected}")
    if data.size == 0:
        raise DataError(f"{name}: the image has no voxels (shape {data.shape})")
    affine = check_affine(image.affine, name)
    result = nib.Nifti1Image(data, affine, header=image.header)
    if result.get_data_dtype() != data.dtype:  # scaled integers were read as floats
        result.set_data_dtype(data.dtype)
    return result


def load_volume(source: ImageSource, *, ndim: int | tuple[int, ...] = 3, dtype: DTypeLike | None = np.float32,
                finite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read ``source`` with :func:`load_image`; return ``(data, affine)``.

    data: (X, Y, Z) (or (X, Y, Z, T) where ``ndim`` allows 4), cast to ``dtype`` (None keeps the stored
    type); affine: (4, 4) float64. With ``finite=True``, NaN or infinite voxels raise DataError naming
    the file and their count.
    """
    image = load_image(source, ndim=ndim)
    data = np.asanyarray(image.dataobj)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if finite:
        count = count_nonfinite(data)
        if count:
            raise DataError(f"{describe(source)}: {count} of {data.size} voxels are NaN or infinite")
    return data, image.affine


def save_image(data: np.ndarray | torch.Tensor, affine_or_like: ArrayLike | SpatialImage, path: str | os.PathLike,
               *, dtype: DTypeLike | None = np.float32) -> Path:
    """Write the volume ``data`` to ``path`` (.nii or .nii.gz) atomically; return the path.

    data: (X, Y, Z), or a model-layout tensor (1, X, Y, Z) / (1, 1, X, Y, Z) (N = C = 1): the spatial
    axes are the NIfTI voxel axes (i, j, k) unchanged (see the module docstring).
    affine_or_like: a (4, 4) voxel-to-mm affine, or a reference image whose affine and header
    (qform/sform codes, units) are kept; its grid must have the shape of ``data``.
    dtype: the stored type (None keeps ``data``'s); an integer type must hold the values exactly.

    The image goes to a temporary file in the same folder first, then replaces ``path`` in one step
    (``lrp.files.atomic_path``; missing parent folders are created): an error leaves neither a partial
    file nor a temporary one, and an existing file at ``path`` unchanged. NaN or infinite data and shape
    mismatches with the reference raise DataError before anything is written. The affine is stored in
    float32, as NIfTI requires.
    """
    path = Path(path)
    _check_nifti_name(path)
    volume = as_volume(data, f"data for {path}")
    affine, header = _reference(affine_or_like, volume.shape, path)
    count = count_nonfinite(volume)
    if count:
        raise DataError(f"not writing {path}: {count} of {volume.size} voxels are NaN or infinite")
    stored = _cast(volume, dtype, path)
    image = nib.Nifti1Image(stored, affine, header=header, dtype=stored.dtype)
    if header is None:
        image.header.set_xyzt_units("mm")
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path


def grid_of(target: ImageSource | tuple[Sequence[int], ArrayLike]) -> Grid:
    """The voxel grid ``(shape, affine)`` of ``target``: an image, a path (only its header is read) or a
    ``(shape, affine)`` pair. A 4D image gives its spatial grid. Raises DataError when it is malformed."""
    if isinstance(target, (tuple, list)):
        if len(target) != 2:
            raise DataError(f"a target grid is (shape, affine); got a sequence of {len(target)} items")
        shape, affine = target
        try:
            dims = tuple(int(n) for n in shape)
        except (TypeError, ValueError) as error:
            raise DataError(f"target grid shape {shape!r} is not a sequence of integers") from error
        if len(dims) != 3 or min(dims) < 1:
            raise DataError(f"target grid shape {dims} must be three positive integers (X, Y, Z)")
        return dims, check_affine(affine, "target grid affine")
    name = describe(target)
    image = _open(target)
    if len(image.shape) < 3:
        raise DataError(f"{name}: a target grid must be 3D; the image has shape {image.shape}")
    return tuple(int(n) for n in image.shape[:3]), check_affine(image.affine, name)


def check_affine(affine: ArrayLike | None, name: str) -> np.ndarray:
    """``affine`` as a (4, 4) float64 array; DataError naming ``name`` unless it is a finite, invertible
    voxel-to-mm matrix with last row (0, 0, 0, 1)."""
    if affine is None:
        raise DataError(f"{name}: the image has no affine")
    try:
        matrix = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: the affine is not a numeric 4x4 matrix ({error})") from error
    if matrix.shape != (4, 4):
        raise DataError(f"{name}: the affine must be 4x4, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise DataError(f"{name}: the affine holds NaN or infinite values")
    if not np.allclose(matrix[3], (0, 0, 0, 1)):
        raise DataError(f"{name}: the affine's last row is {matrix[3].tolist()}, expected [0, 0, 0, 1]")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise DataError(f"{name}: the affine is singular (a zero voxel size or collapsed axes)")
    return matrix


def as_volume(data: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """``data`` as a numpy volume (X, Y, Z): accepts (X, Y, Z), (1, X, Y, Z) and (1, 1, X, Y, Z) arrays or
    tensors (detached, moved to the CPU; bfloat16 becomes float32). DataError naming ``what`` otherwise."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        array = (data.float() if data.dtype == torch.bfloat16 else data).numpy()
    else:
        array = np.asarray(data)
    shape = array.shape
    if array.ndim == 5 and shape[:2] == (1, 1):
        array = array[0, 0]
    elif array.ndim == 4 and shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise DataError(f"{what}: expected a volume shaped (X, Y, Z), (1, X, Y, Z) or (1, 1, X, Y, Z), got {shape}")
    return array


def count_nonfinite(array: np.ndarray) -> int:
    """Number of NaN or infinite entries of ``array`` (0 for integer and boolean arrays)."""
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def _open(source: ImageSource) -> SpatialImage:
    """The nibabel image for ``source`` (data not read yet for files)."""
    if isinstance(source, SpatialImage):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a nibabel image, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    try:
        return nib.load(path)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise DataError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


def _allowed_ndim(ndim: int | tuple[int, ...]) -> tuple[int, ...]:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if not allowed or any(not isinstance(n, int) or n < 3 for n in allowed):
        raise ValueError(f"ndim must be an integer >= 3 or a tuple of them, got {ndim!r}")
    return allowed


def _drop_trailing_singletons(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 1, ...) -> (X, Y, Z); other shapes unchanged."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _check_nifti_name(path: Path) -> None:
    name = path.name.lower()
    if any(name.endswith(suffix) and len(name) > len(suffix) for suffix in NIFTI_SUFFIXES):
        return
    raise DataError(f"cannot write {path}: the file name must end in .nii or .nii.gz")


def _reference(affine_or_like: ArrayLike | SpatialImage, shape: tuple[int, ...],
               path: Path) -> tuple[np.ndarray, nib.Nifti1Header | None]:
    """(affine, header to keep) for ``save_image``; checks the reference grid has ``shape``."""
    if not isinstance(affine_or_like, SpatialImage):
        return check_affine(affine_or_like, f"affine for {path}"), None
    name = describe(affine_or_like)
    reference_shape = tuple(affine_or_like.shape)
    while len(reference_shape) > 3 and reference_shape[-1] == 1:
        reference_shape = reference_shape[:-1]
    if reference_shape != tuple(shape):
        raise DataError(f"not writing {path}: the data have shape {tuple(shape)} but the reference image {name} "
                        f"has shape {reference_shape}")
    return check_affine(affine_or_like.affine, name), affine_or_like.header


def _cast(volume: np.ndarray, dtype: DTypeLike | None, path: Path) -> np.ndarray:
    """``volume`` as ``dtype`` (booleans as uint8 when None); DataError if an integer type changes values."""
    if dtype is None:
        return volume.astype(np.uint8) if volume.dtype == bool else volume
    stored = volume.astype(dtype)
    if np.issubdtype(stored.dtype, np.integer) and not np.array_equal(stored, volume):
        raise DataError(f"not writing {path}: the data do not fit {np.dtype(dtype).name} exactly "
                        f"(non-integer or out-of-range values)")
    return stored
