"""Cohort analysis of per-subject relevance: diagnostic groups and outcomes, group mean maps,
region means per group, gain, region rankings and their overlap between runs, and CSV tables.

Column names (all tables are tidy pandas DataFrames):

- subjects (input of :func:`assign_groups`): ``subject``, ``label`` (true class), ``prediction``;
  classes as names (``"AD"``) or indices into ``class_names``.
- groups (its output): the input columns plus ``group_true`` and ``group_pred`` (class names) and
  ``outcome`` (``"TP"``, ``"TN"``, ``"FP"``, ``"FN"``; the positive class is the disease).
- region statistics (``lrp.neuro.regions.region_stats``): one row per (subject, region), columns
  ``subject, region_id, region, voxels, volume_mm3, sum, density, positive, negative, share`` and
  optionally ``method``.

A *group* is a true class (e.g. ``"AD"``, ``"HC"``) or an outcome; every subject is in two groups.
Subjects are matched between tables and maps by the string form of their identifiers.
"""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, NonFiniteError
from ..files import atomic_path
from ..tables import require_columns
from .io import save_image

__all__ = ["OUTCOMES", "RANKING_KEYS", "REGION_KEYS", "GroupMeans", "assign_groups", "gain", "group_mean_maps",
           "overlap_matrix", "rank_regions", "region_group_means", "save_group_maps", "topk_overlap", "write_tables"]

OUTCOMES = ("TP", "TN", "FP", "FN")
"""Outcome names: true/false positive/negative, the positive class being the disease."""
RANKING_KEYS = ("run", "method", "subject", "group", "value")
"""Columns that, where present, separate rankings: :func:`rank_regions` ranks regions within each
combination of their values."""
REGION_KEYS = ("method", "region_id", "region")
"""Columns that, where present, identify a region (per explanation method) in region tables."""


# -- groups ----------------------------------------------------------------------------------------
def assign_groups(subjects: pd.DataFrame, *, positive: str = "AD", negative: str = "HC",
                  class_names: Sequence[str] = ("HC", "AD")) -> pd.DataFrame:
    """Diagnostic group and outcome of every subject.

    subjects:    columns ``subject`` (unique), ``label`` and ``prediction``; each label/prediction
                 is a class name from ``class_names`` or an integer index into it (0 -> ``"HC"``).
    positive:    the disease class (a true positive is a correctly predicted ``positive``).
    negative:    the control class.
    Returns a copy of ``subjects`` with columns ``group_true``, ``group_pred`` (class names) and
    ``outcome`` (TP: positive predicted positive, TN: negative predicted negative, FP: negative
    predicted positive, FN: positive predicted negative).

    Raises ValueError for inconsistent ``positive``/``negative``/``class_names``; DataError for a
    missing column, duplicated or missing subject, or a label/prediction that is not a known class
    or is neither ``positive`` nor ``negative``.
    """
    class_names = tuple(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be unique, got {class_names}")
    if positive == negative or positive not in class_names or negative not in class_names:
        raise ValueError(f"positive {positive!r} and negative {negative!r} must be two different entries of "
                         f"class_names {class_names}")
    require_columns(subjects, ("subject", "label", "prediction"), "subjects")
    keys = _subject_keys(subjects["subject"], "subjects")
    named = {column: [_class_name(value, class_names) for value in subjects[column]]
             for column in ("label", "prediction")}
    for column, names in named.items():
        unknown = [(key, value) for key, value, name in zip(keys, subjects[column], names)
                   if name not in (positive, negative)]
        if unknown:
            raise DataError(f"subjects.{column} must be {positive!r} or {negative!r} (names or indices into "
                            f"class_names {class_names}); got {sorted({repr(v) for _, v in unknown})} for subject(s) "
                            f"{[key for key, _ in unknown][:10]}")
    truth = np.array(named["label"]) == positive
    predicted = np.array(named["prediction"]) == positive
    outcome = np.select([truth & predicted, ~truth & ~predicted, ~truth & predicted], ["TP", "TN", "FP"], "FN")
    return subjects.assign(group_true=named["label"], group_pred=named["prediction"], outcome=outcome)


def _class_name(value: object, class_names: tuple[str, ...]) -> str | None:
    """The class ``value`` names: itself if it is in ``class_names``, ``class_names[value]`` for an
    integral index in range, else None."""
    if isinstance(value, str):
        return value if value in class_names else None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        index = int(value)
        return class_names[index] if 0 <= index < len(class_names) else None
    return None


def _resolve_groups(groups: pd.DataFrame, which: Sequence[str] | None) -> tuple[str, ...]:
    """The requested group names, checked against ``groups``; None gives (positive, negative, *OUTCOMES)."""
    require_columns(groups, ("subject", "group_true", "outcome"), "groups")
    bad_outcomes = sorted(set(map(str, groups["outcome"])) - set(OUTCOMES))
    if bad_outcomes:
        raise DataError(f"groups.outcome must be one of {OUTCOMES}, got {bad_outcomes} (use assign_groups)")
    classes = list(dict.fromkeys(groups["group_true"]))
    if which is None:
        positive = set(groups.loc[groups["outcome"].isin(("TP", "FN")), "group_true"])
        return tuple(sorted(classes, key=lambda name: name not in positive)) + OUTCOMES
    which = tuple(which)
    unknown = [name for name in which if name not in OUTCOMES and name not in classes]
    if unknown or len(set(which)) != len(which):
        raise ValueError(f"which must name distinct groups among {OUTCOMES} and groups.group_true values "
                         f"{classes}; got {list(which)}")
    return which


# -- group mean maps -------------------------------------------------------------------------------
class GroupMeans:
    """Running per-group sums of subject maps, one map in memory at a time.

    Sums are kept per (true class, outcome) cell in float64 (at most four arrays whatever the
    number of subjects or groups); a group's mean is the sum of its cells over its count.

    groups: table from :func:`assign_groups` (columns ``subject``, ``group_true``, ``outcome``).
    which:  groups to average; None: positive and negative class, then TP, TN, FP, FN.
    """

    def __init__(self, groups: pd.DataFrame, which: Sequence[str] | None = None) -> None:
        self.which = _resolve_groups(groups, which)
        keys = _subject_keys(groups["subject"], "groups")
        self._cell_of = dict(zip(keys, zip(groups["group_true"], groups["outcome"])))
        self._needed = {cell for cell in self._cell_of.values() if any(name in cell for name in self.which)}
        self._sums: dict[tuple[str, str], np.ndarray] = {}
        self._cell_counts: dict[tuple[str, str], int] = {}
        self._seen: set[str] = set()
        self.shape: tuple[int, ...] | None = None

    def add(self, subject: object, relevance: np.ndarray) -> None:
        """Add one subject's map (any shape, the same for all subjects; any real dtype).

        Raises DataError for a subject not in ``groups``, added twice, or a map of another shape;
        NonFiniteError for NaN/inf values. Nothing is added then."""
        key = str(subject)
        if key not in self._cell_of:
            raise DataError(f"subject {key!r} of the maps is not in groups")
        if key in self._seen:
            raise DataError(f"subject {key!r} was given twice")
        relevance = np.asarray(relevance)
        if not np.issubdtype(relevance.dtype, np.number) or np.iscomplexobj(relevance):
            raise DataError(f"the map of subject {key!r} has dtype {relevance.dtype}, not a real number type")
        if self.shape is not None and relevance.shape != self.shape:
            raise DataError(f"the map of subject {key!r} has shape {relevance.shape}, the others {self.shape}")
        if not np.isfinite(relevance).all():
            raise NonFiniteError(f"the map of subject {key!r} holds NaN or infinite values")
        self.shape = relevance.shape
        cell = self._cell_of[key]
        if cell in self._needed:
            total = self._sums.setdefault(cell, np.zeros(relevance.shape, dtype=np.float64))
            np.add(total, relevance, out=total)
            self._cell_counts[cell] = self._cell_counts.get(cell, 0) + 1
        self._seen.add(key)

    def update(self, maps: Iterable[tuple[object, np.ndarray]] | Mapping[object, np.ndarray]) -> GroupMeans:
        """Add every (subject, map) of ``maps`` (an iterable of pairs, e.g. a generator, or a mapping);
        returns self."""
        for subject, relevance in (maps.items() if isinstance(maps, Mapping) else maps):
            self.add(subject, relevance)
        return self

    @property
    def counts(self) -> dict[str, int]:
        """Number of subjects added per requested group (0 for an empty group)."""
        return {name: sum(count for cell, count in self._cell_counts.items() if name in cell) for name in self.which}

    @property
    def empty(self) -> tuple[str, ...]:
        """The requested groups without subjects."""
        return tuple(name for name, count in self.counts.items() if count == 0)

    def mean(self, name: str) -> np.ndarray:
        """Mean map of group ``name`` (float64, the maps' shape); DataError if it has no subjects."""
        count = self.counts[name]
        if not count:
            raise DataError(f"group {name!r} has no subjects, so no mean map")
        mean = np.zeros(self.shape, dtype=np.float64)
        for cell, total in self._sums.items():
            if name in cell:
                mean += total
        mean /= count
        return mean

    def means(self) -> dict[str, np.ndarray]:
        """Mean map of every non-empty requested group, in ``which`` order (see :meth:`mean`)."""
        return {name: self.mean(name) for name, count in self.counts.items() if count}


def group_mean_maps(maps: Iterable[tuple[object, np.ndarray]] | Mapping[object, np.ndarray], groups: pd.DataFrame,
                    *, which: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Mean relevance map per group, accumulated one map at a time (see :class:`GroupMeans`).

    maps:   (subject, map) pairs, e.g. a generator that loads one NIfTI at a time, or a mapping.
    groups: table from :func:`assign_groups`.
    which:  groups to average; None: positive and negative class, then TP, TN, FP, FN (for AD vs HC:
            ``("AD", "HC", "TP", "TN", "FP", "FN")``).
    Returns {group: mean map (float64, the maps' shape)}; groups without subjects are left out (use
    :class:`GroupMeans` for the counts).
    """
    return GroupMeans(groups, which).update(maps).means()


def save_group_maps(means: GroupMeans | Mapping[str, np.ndarray | None], affine_or_like: object,
                    out_dir: str | Path, prefix: str = "") -> dict[str, Path]:
    """Write every group mean map as NIfTI ``<out_dir>/<prefix>mean_<group>.nii.gz`` (float32).

    means:          a :class:`GroupMeans` or {group: map}; empty groups (no subjects, or None) are
                    skipped with a warning.
    affine_or_like: (4, 4) affine or an image giving the space (see ``lrp.neuro.io.save_image``).
    Either every file is written or, on an error, none is (also no temporary file).
    Returns {group: path} of the files written.
    """
    if isinstance(means, GroupMeans):  # one mean in memory at a time
        empty = list(means.empty)
        names = [name for name in means.which if name not in empty]
        mean_of = means.mean
    else:
        empty = [name for name, mean in means.items() if mean is None]
        names = [name for name in means if name not in empty]
        mean_of = means.__getitem__
    if empty:
        warnings.warn(f"no subjects in group(s) {', '.join(empty)}: no mean map written for them", stacklevel=2)
    paths = {name: _output_path(out_dir, f"{prefix}mean_{name}", ".nii.gz") for name in names}
    with ExitStack() as stack:
        for name in names:
            save_image(mean_of(name), affine_or_like, stack.enter_context(atomic_path(paths[name])))
    return paths


# -- region tables ---------------------------------------------------------------------------------
def region_group_means(stats: pd.DataFrame, groups: pd.DataFrame, *, value: str = "sum",
                       which: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and count of a region statistic per group.

    stats:  region table with columns ``subject``, ``region``, ``value`` (optionally ``method``,
            ``region_id``); every subject must be in ``groups``.
    groups: table from :func:`assign_groups`.
    value:  the statistic to average (``"sum"``, ``"density"``, ``"positive"``, ...).
    which:  groups (None: positive and negative class, then TP, TN, FP, FN).
    Returns one row per ([method,] region, group), regions in order of appearance, with columns
    ``[method, region_id,] region, group, value, n, mean, std``: ``n`` counts subjects with a
    non-NaN value (NaN values are skipped), ``std`` is the sample standard deviation (ddof=1, NaN
    for n < 2), an empty group has n = 0 and mean NaN.
    """
    which = _resolve_groups(groups, which)
    long = _stats_by_group(stats, groups, value)
    keys = [column for column in REGION_KEYS if column in stats.columns]
    summary = (long.groupby(keys + ["group"], sort=False, dropna=False)[value]
               .agg(n="count", mean="mean", std="std").reset_index())
    grid = stats[keys].drop_duplicates().merge(pd.DataFrame({"group": list(which)}), how="cross")
    table = grid.merge(summary, on=keys + ["group"], how="left")
    table["n"] = table["n"].fillna(0).astype(int)
    table.insert(len(keys) + 1, "value", value)
    return table


def gain(stats: pd.DataFrame, groups: pd.DataFrame, *, value: str = "sum", group: str = "TP",
         reference: str = "HC") -> pd.DataFrame:
    """Relevance gain per region: mean ``value`` over ``group`` / mean over ``reference`` (the paper's
    gain = mean TP relevance / mean HC relevance).

    Rule: the gain is NaN where the reference mean is not positive (zero or negative relevance is
    no baseline to scale against; never ±inf) or either group has no subject with a value.
    Returns one row per ([method,] region) with columns ``[method, region_id,] region, value, group,
    reference, n_group, mean_group, n_reference, mean_reference, gain``.
    """
    which = (group,) if group == reference else (group, reference)
    means = region_group_means(stats, groups, value=value, which=which)
    keys = [column for column in REGION_KEYS if column in means.columns]
    columns = {"n": "n_", "mean": "mean_"}
    chosen = means[means["group"] == group][keys + ["value", "n", "mean"]].rename(
        columns={name: f"{prefix}group" for name, prefix in columns.items()})
    baseline = means[means["group"] == reference][keys + ["n", "mean"]].rename(
        columns={name: f"{prefix}reference" for name, prefix in columns.items()})
    table = chosen.merge(baseline, on=keys, how="left")
    table.insert(len(keys) + 1, "group", group)
    table.insert(len(keys) + 2, "reference", reference)
    positive = table["mean_reference"] > 0
    table["gain"] = (table["mean_group"] / table["mean_reference"].where(positive)).astype(float)
    return table.reset_index(drop=True)


def rank_regions(table: pd.DataFrame, by: str = "sum", top: int | None = None) -> pd.DataFrame:
    """Rank regions by column ``by`` (``"sum"``, ``"density"``, ``"gain"``, ``"mean"``, ...), 1 = highest.

    Regions are ranked separately within each combination of the columns of ``RANKING_KEYS``
    present (``run``, ``method``, ``subject``, ``group``, ``value``). Ties share the best rank
    (competition ranking "1224"); NaN values get no rank (``<NA>``) and come last. Rows are sorted
    by ranking, rank, then region name (which also breaks ties for ``top``).
    top: keep the first ``top`` ranked rows of each ranking (exactly ``top`` unless fewer are ranked).
    Returns a copy of ``table`` with an Int64 column ``rank``.
    """
    require_columns(table, ("region", by), "table")
    if not pd.api.types.is_numeric_dtype(table[by]):
        raise DataError(f"table.{by} must be numeric to rank regions, it has dtype {table[by].dtype}")
    if top is not None and (int(top) != top or top < 1):
        raise ValueError(f"top must be a positive integer or None, got {top!r}")
    keys = [column for column in RANKING_KEYS if column in table.columns]
    scores = table[by].astype(float)
    if keys:
        ranks = scores.groupby([table[column] for column in keys], sort=False, dropna=False).rank(
            method="min", ascending=False)
    else:
        ranks = scores.rank(method="min", ascending=False)
    ranked = table.assign(rank=ranks.astype("Int64"))
    ranked = ranked.sort_values(keys + ["rank", "region"], na_position="last", kind="stable")
    if top is not None:
        ranked = ranked[ranked["rank"].notna()]
        ranked = (ranked.groupby(keys, sort=False, dropna=False).head(int(top)) if keys else ranked.head(int(top)))
    return ranked.reset_index(drop=True)


def topk_overlap(rankings: Mapping[str, Sequence[str]] | pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """Overlap of the top-``k`` regions between every pair of runs (e.g. the paper's β sweep).

    rankings: {run: region names, best first}, or a DataFrame with columns ``run``, ``region`` and
              ``rank`` (e.g. :func:`rank_regions` output with a ``run`` column; rows without a rank are
              ignored, equal ranks keep their row order).
    Returns one row per pair (run_a before run_b in the given order) with columns ``run_a, run_b,
    k, intersection`` (number of shared regions), ``jaccard`` (intersection / union) and ``shared``
    (the shared regions in run_a's order, joined by ``"; "``).
    Raises DataError for a run with fewer than ``k`` regions or a region listed twice in a run.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    lists = _ranking_lists(rankings)
    tops = {}
    for run, regions in lists.items():
        if len(set(regions)) != len(regions):
            raise DataError(f"run {run!r} lists region(s) more than once: "
                            f"{sorted({r for r in regions if regions.count(r) > 1})}")
        if len(regions) < k:
            raise DataError(f"run {run!r} ranks {len(regions)} regions, fewer than k={k}")
        tops[run] = list(regions[:k])
    rows = []
    for run_a, run_b in combinations(tops, 2):
        shared = [region for region in tops[run_a] if region in set(tops[run_b])]
        union = len(set(tops[run_a]) | set(tops[run_b]))
        rows.append({"run_a": run_a, "run_b": run_b, "k": int(k), "intersection": len(shared),
                     "jaccard": len(shared) / union, "shared": "; ".join(map(str, shared))})
    return pd.DataFrame(rows, columns=["run_a", "run_b", "k", "intersection", "jaccard", "shared"])


def overlap_matrix(overlap: pd.DataFrame, value: str = "jaccard") -> pd.DataFrame:
    """Square run × run matrix of ``value`` (``"jaccard"`` or ``"intersection"``) from :func:`topk_overlap`.

    Symmetric; the diagonal is 1 (jaccard) or k (intersection). Index and columns are named ``run``.
    """
    if value not in ("jaccard", "intersection"):
        raise ValueError(f"value must be 'jaccard' or 'intersection', got {value!r}")
    require_columns(overlap, ("run_a", "run_b", "k", value), "overlap")
    runs = list(dict.fromkeys([*overlap["run_a"], *overlap["run_b"]]))
    diagonal = 1.0 if value == "jaccard" else overlap["k"].iloc[0] if len(overlap) else np.nan
    matrix = pd.DataFrame(np.nan, index=pd.Index(runs, name="run"), columns=pd.Index(runs, name="run"))
    for run in runs:
        matrix.loc[run, run] = diagonal
    for run_a, run_b, entry in zip(overlap["run_a"], overlap["run_b"], overlap[value]):
        matrix.loc[run_a, run_b] = matrix.loc[run_b, run_a] = entry
    return matrix


# -- files -----------------------------------------------------------------------------------------
def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | Path) -> dict[str, Path]:
    """Write each table as CSV ``<out_dir>/<name>.csv`` (the index too when it is named, e.g. from
    :func:`overlap_matrix`). Either every file is written or, on an error, none is (also no
    temporary file). Returns {name: path}."""
    for name, table in tables.items():
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"table {name!r} must be a pandas DataFrame, got {type(table).__name__}")
    paths = {name: _output_path(out_dir, name.removesuffix(".csv"), ".csv") for name in tables}
    with ExitStack() as stack:
        for name, table in tables.items():
            named_index = any(level is not None for level in table.index.names)
            table.to_csv(stack.enter_context(atomic_path(paths[name])), index=named_index)
    return paths


def _output_path(out_dir: str | Path, stem: str, suffix: str) -> Path:
    """``out_dir/stem+suffix``; ``stem`` must be a plain file name."""
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"{stem!r} is not a plain file name for an output in {out_dir}")
    return Path(out_dir) / f"{stem}{suffix}"


# -- checks ----------------------------------------------------------------------------------------
def _subject_keys(subjects: pd.Series, name: str, unique: bool = True) -> list[str]:
    """Subject identifiers as strings; DataError for a missing one or (if ``unique``) a duplicate."""
    if subjects.isna().any():
        raise DataError(f"{name}.subject has missing values in row(s) {list(subjects.index[subjects.isna()])[:10]}")
    keys = subjects.astype(str)
    if unique and keys.duplicated().any():
        raise DataError(f"{name}.subject holds duplicated subject(s) {sorted(set(keys[keys.duplicated()]))[:10]}")
    return keys.tolist()


def _stats_by_group(stats: pd.DataFrame, groups: pd.DataFrame, value: str) -> pd.DataFrame:
    """``stats`` rows repeated for both groups of their subject, with a ``group`` column."""
    require_columns(stats, ("subject", "region", value), "stats")
    if not pd.api.types.is_numeric_dtype(stats[value]):
        raise DataError(f"stats.{value} must be numeric, it has dtype {stats[value].dtype}")
    membership = pd.DataFrame({"_key": _subject_keys(groups["subject"], "groups"),
                               "group_true": groups["group_true"].to_numpy(), "outcome": groups["outcome"].to_numpy()})
    keyed = stats.assign(_key=_subject_keys(stats["subject"], "stats", unique=False))
    unknown = sorted(set(keyed["_key"]) - set(membership["_key"]))
    if unknown:
        raise DataError(f"stats has subject(s) not in groups: {unknown[:10]}")
    repeated = keyed.duplicated(subset=[column for column in REGION_KEYS if column in stats.columns] + ["_key"])
    if repeated.any():
        raise DataError(f"stats has several rows for one subject and region, e.g. subject "
                        f"{keyed.loc[repeated, '_key'].iloc[0]!r}, region {keyed.loc[repeated, 'region'].iloc[0]!r}")
    membership = membership.melt(id_vars="_key", value_vars=["group_true", "outcome"], value_name="group")
    return keyed.merge(membership[["_key", "group"]], on="_key")


def _ranking_lists(rankings: Mapping[str, Sequence[str]] | pd.DataFrame) -> dict[str, list[str]]:
    """{run: region names, best first} from a mapping or a (run, region, rank) table."""
    if not isinstance(rankings, pd.DataFrame):
        return {run: list(regions) for run, regions in rankings.items()}
    require_columns(rankings, ("run", "region", "rank"), "rankings")
    ranked = rankings[rankings["rank"].notna()].sort_values("rank", kind="stable")
    return {run: list(ranked.loc[ranked["run"] == run, "region"]) for run in dict.fromkeys(rankings["run"])}
