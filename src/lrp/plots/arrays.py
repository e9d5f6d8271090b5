"""Turning the arrays and tensors handed to the plotting functions into checked float numpy arrays."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError, NonFiniteError

__all__ = ["as_array", "require_finite"]


def as_array(values: Any, name: str) -> np.ndarray:
    """``values`` (numpy array, torch tensor, nested sequence) as a float64 numpy array of the same
    shape; a tensor is detached and copied to the CPU first. Raises DataError for non-numeric data."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number) and np.isrealobj(array)):
        raise DataError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def require_finite(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` itself; raises NonFiniteError naming ``name`` when it holds NaN or infinite values."""
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise NonFiniteError(f"{name} holds {bad} NaN or infinite value(s) of {np.size(array)}")
    return array
