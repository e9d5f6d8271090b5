"""Correlation of per-subject relevance with a covariate (e.g. hippocampal relevance vs hippocampal
volume, as in Böhle et al. 2019), with a seeded permutation test.

Subjects are matched by the string form of their identifiers (``"7"`` and ``7`` are one subject).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats

from ..errors import DataError
from ..tables import require_columns
from .cohort import _subject_keys

__all__ = ["CorrelationResult", "covariate_correlation", "region_covariate_correlations"]

Method = Literal["pearson", "spearman"]
Alternative = Literal["two-sided", "greater", "less"]
_PERMUTATION_BATCH = 100
"""Permutations evaluated per vectorised call: memory O(batch × n subjects)."""


@dataclass(frozen=True)
class CorrelationResult:
    """One correlation between a per-subject value and a covariate.

    r:             Pearson's r or Spearman's rho.
    p_permutation: p-value of the permutation test (covariate re-paired with the values at random);
                   ``'two-sided'`` is twice the smaller one-sided p-value (at most 1), as in
                   ``scipy.stats.permutation_test``. Exact (all n! pairings) when
                   ``permutations >= n!``; otherwise ``(hits + 1) / (permutations + 1)``, counting
                   the observed pairing as one of the permutations, so never 0.
    p_parametric:  p-value of ``scipy.stats.pearsonr`` / ``spearmanr`` for the same alternative.
    n:             number of subjects.
    permutations:  number of pairings evaluated (n! for an exact test).
    exact:         whether every pairing was enumerated.
    """

    r: float
    p_permutation: float
    p_parametric: float
    n: int
    method: str
    alternative: str
    permutations: int
    exact: bool


def covariate_correlation(values: Sequence[float] | pd.Series | np.ndarray,
                          covariate: Sequence[float] | pd.Series | np.ndarray, *, method: Method = "pearson",
                          permutations: int = 10000, seed: int = 0,
                          alternative: Alternative = "two-sided") -> CorrelationResult:
    """Correlation of ``values`` (one per subject, shape (n,)) with ``covariate`` (shape (n,)).

    Two pandas Series are paired by their index (subject); otherwise by position. The permutation
    test draws from ``numpy.random.default_rng(seed)``, so a seed gives the same p-value every time.
    Spearman's rho is Pearson's r of the ranks (average ranks for ties).

    Raises DataError for unequal lengths or indices, non-finite entries, fewer than 3 subjects or a
    constant input; ValueError for an unknown ``method`` / ``alternative`` or ``permutations < 1``.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    if int(permutations) != permutations or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    x, y = _paired_arrays(values, covariate)
    if method == "spearman":
        x, y = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    reference = scipy.stats.pearsonr(x, y, alternative=alternative)
    # permuting one of two standardised vectors keeps its mean and norm, so r is a dot product
    x_unit, y_unit = _standardised(x), _standardised(y)
    test = scipy.stats.permutation_test(
        (x_unit,), lambda x_perm, axis=-1: np.sum(x_perm * y_unit, axis=axis), permutation_type="pairings",
        vectorized=True, n_resamples=int(permutations), batch=_PERMUTATION_BATCH, alternative=alternative,
        rng=np.random.default_rng(seed))
    n = len(x)
    return CorrelationResult(r=float(reference.statistic), p_permutation=float(test.pvalue),
                             p_parametric=float(reference.pvalue), n=n, method=method, alternative=alternative,
                             permutations=len(test.null_distribution), exact=math.factorial(n) <= permutations)


def region_covariate_correlations(stats: pd.DataFrame, covariates: pd.DataFrame, *, region: str | Sequence[str],
                                  covariate: str | Mapping[str, str], value: str = "sum",
                                  method: Method = "pearson", permutations: int = 10000, seed: int = 0,
                                  alternative: Alternative = "two-sided") -> pd.DataFrame:
    """Correlate a region statistic with a per-subject covariate, for one or many regions.

    stats:      tidy region table (``region_stats``): columns ``subject``, ``region``, ``value``
                and optionally ``method`` (one correlation per explanation method then).
    covariates: one row per subject: column ``subject`` and the covariate column(s).
    region:     region name(s), matched against ``stats.region``.
    covariate:  the covariate column, or a mapping region -> its column (e.g.
                ``{"Hippocampus": "hippocampus_volume"}``).
    Every region uses the same ``seed``.

    Returns one row per ([method,] region), in the order given, with columns ``[method,] region,
    value, covariate, correlation, alternative, n, r, p_permutation, p_parametric, permutations,
    exact`` (see :class:`CorrelationResult`).

    Raises DataError for missing columns or regions, duplicated (subject, region[, method]) rows or
    covariate subjects, subjects of ``stats`` without a covariate row, and non-finite values.
    """
    regions = [region] if isinstance(region, str) else list(region)
    covariate_of = {name: covariate for name in regions} if isinstance(covariate, str) else dict(covariate)
    missing_mapping = [name for name in regions if name not in covariate_of]
    if missing_mapping:
        raise ValueError(f"covariate names no column for region(s) {missing_mapping}")
    require_columns(stats, ("subject", "region", value), "stats")
    by_method = "method" in stats.columns
    require_columns(covariates, ("subject", *sorted({covariate_of[name] for name in regions})), "covariates")
    unknown = [name for name in regions if name not in set(stats["region"])]
    if unknown:
        raise DataError(f"stats has no region(s) {unknown}; it has {sorted(map(str, stats['region'].unique()))}")

    table = stats.assign(_key=_subject_keys(stats["subject"], "stats", unique=False))
    covariate_rows = covariates.assign(_key=_subject_keys(covariates["subject"], "covariates")).set_index("_key")
    rows = []
    for (method_name, region_name), part in _region_parts(table, regions, by_method):
        duplicated = part["_key"][part["_key"].duplicated()].unique()
        if len(duplicated):
            raise DataError(f"stats has several rows for subject(s) {list(duplicated)} in region {region_name!r}")
        absent = sorted(set(part["_key"]) - set(covariate_rows.index))
        if absent:
            raise DataError(f"covariates has no row for subject(s) {absent} of stats")
        column = covariate_of[region_name]
        values = pd.Series(part[value].to_numpy(dtype=float), index=part["_key"])
        result = covariate_correlation(values, covariate_rows.loc[part["_key"], column], method=method,
                                       permutations=permutations, seed=seed, alternative=alternative)
        fields = asdict(result)
        correlation = fields.pop("method")
        row = {"method": method_name} if by_method else {}
        rows.append({**row, "region": region_name, "value": value, "covariate": column, "correlation": correlation,
                     **fields})
    order = (["method"] if by_method else []) + ["region", "value", "covariate", "correlation", "alternative", "n",
                                                  "r", "p_permutation", "p_parametric", "permutations", "exact"]
    return pd.DataFrame(rows, columns=order)


def _region_parts(table: pd.DataFrame, regions: list[str],
                  by_method: bool) -> Iterator[tuple[tuple[object, str], pd.DataFrame]]:
    """Yield ((method or None, region), rows) for every requested region (and method, if any)."""
    methods = list(table["method"].unique()) if by_method else [None]
    for method_name in methods:
        rows = table[table["method"] == method_name] if by_method else table
        for region_name in regions:
            yield (method_name, region_name), rows[rows["region"] == region_name]


def _paired_arrays(values, covariate) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 (n,) arrays, paired by index for two Series, else by position."""
    if isinstance(values, pd.Series) and isinstance(covariate, pd.Series):
        if values.index.has_duplicates or covariate.index.has_duplicates:
            raise DataError("values and covariate are paired by index, which must not hold duplicates")
        if set(values.index) != set(covariate.index):
            only = sorted(map(str, set(values.index) ^ set(covariate.index)))
            raise DataError(f"values and covariate index different subjects: {only[:10]}")
        covariate = covariate.reindex(values.index)
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(covariate, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise DataError(f"values {x.shape} and covariate {y.shape} must be 1-D with one entry per subject")
    if len(x) < 3:
        raise DataError(f"a correlation needs at least 3 subjects, got {len(x)}")
    for name, array in (("values", x), ("covariate", y)):
        if not np.isfinite(array).all():
            raise DataError(f"{name} holds {int((~np.isfinite(array)).sum())} NaN or infinite entries")
        if np.ptp(array) == 0:
            raise DataError(f"{name} is constant: its correlation is undefined")
    return x, y


def _standardised(array: np.ndarray) -> np.ndarray:
    """``array`` (n,) centred and scaled to unit Euclidean norm."""
    centred = array - array.mean()
    return centred / np.linalg.norm(centred)
