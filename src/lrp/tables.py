"""Checks on the pandas tables passed between the analysis modules (region statistics, groups, rankings)."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .errors import DataError

__all__ = ["require_columns"]


def require_columns(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """TypeError unless ``table`` is a DataFrame; DataError naming ``name`` and the missing columns unless it
    has every one of ``columns``."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(f"{name} lacks column(s) {missing}; it has {list(table.columns)}")
