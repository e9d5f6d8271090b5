"""Region figures: the top regions by relevance per group, relevance gain, and covariate scatter plots.

The input of :func:`plot_top_regions` is the tidy table of ``lrp.neuro.region_stats`` (one row per
subject × region; columns ``subject, region_id, region, voxels, volume_mm3, sum, density,
positive, negative, share``, optionally ``method``), with the subjects' groups either merged in as
a column (e.g. ``group_true`` AD/HC or ``outcome`` TP/TN/FP/FN) or passed as a mapping.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..errors import DataError
from ..tables import require_columns
from .arrays import as_array
from .figures import finish, new_figure

__all__ = ["plot_covariate", "plot_gain", "plot_top_regions"]

GROUP_COLOURS: tuple[str, ...] = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                                  "#7f7f7f")
"""Colours of the groups, in group order (cycled)."""
_VALUE_LABELS = {
    "sum": "relevance in region (sum)",
    "density": "relevance density (sum / voxels)",
    "gain": "relevance gain (sum / mean of {baseline})",
}
_STRIP_JITTER = 0.3


def plot_top_regions(stats: pd.DataFrame, *, by: Literal["sum", "density", "gain"] = "sum", k: int = 10,
                     groups: str | Mapping[Any, Any] | pd.Series | None = None, order: Sequence[Any] | None = None,
                     baseline: Any | Sequence[Any] | None = None, rank_by: Any | Sequence[Any] | None = None,
                     distribution: Literal["strip", "violin"] = "strip", title: str | None = None,
                     path: str | os.PathLike | None = None) -> Figure:
    """Horizontal bars of the group means of the ``k`` top regions, over the per-subject values.

    Args:
        stats: tidy region table (see the module docstring); one method only (filter ``method`` first).
        by: ``"sum"`` or ``"density"`` (those columns), or ``"gain"``: each subject's sum divided by the
            mean sum of the ``baseline`` subjects in the same region (so the baseline averages 1;
            regions whose baseline mean is not positive are left out, as in ``lrp.neuro.cohort.gain``).
        k: number of regions, ranked by the mean over the subjects of ``rank_by`` (a group or list of
            groups; default all subjects, or all but the baseline for ``"gain"``), largest on top.
        groups: a column of ``stats`` naming each subject's group, or a mapping / Series subject ->
            group; None puts all subjects in one group.
        order: the groups in drawing order (default: sorted).
        baseline: group(s) whose mean is the denominator of ``"gain"``.
        distribution: per-subject values as jittered points (``"strip"``) or violins (``"violin"``).
        title, path: figure title; save to ``path`` (PNG or PDF by suffix, atomically).
    Raises:
        DataError: missing columns, several methods, duplicate subject × region rows, subjects without
            a group, a baseline group that does not occur.
    """
    if by not in _VALUE_LABELS:
        raise ValueError(f"by must be one of {list(_VALUE_LABELS)}, got {by!r}")
    if distribution not in ("strip", "violin"):
        raise ValueError(f"distribution must be 'strip' or 'violin', got {distribution!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    column = "sum" if by == "gain" else by
    require_columns(stats, ["subject", "region", column], "stats")
    _require_one_method(stats)
    values = _subject_by_region(stats, column)
    membership = _subject_groups(stats, groups, values.index)
    group_order = _group_order(membership, order)
    xlabel, ranking_groups = _VALUE_LABELS[by], group_order
    if by == "gain":
        baseline_groups = _as_list(baseline)
        if baseline is None or not set(baseline_groups) <= set(group_order):
            raise DataError(f"by='gain' needs baseline = some of the groups {group_order}, got {baseline!r}")
        reference = values[membership.isin(baseline_groups)].mean()
        values = values.div(reference.where(reference > 0))
        xlabel = xlabel.format(baseline="/".join(str(group) for group in baseline_groups))
        ranking_groups = [group for group in group_order if group not in baseline_groups] or baseline_groups
    if rank_by is not None:
        ranking_groups = _as_list(rank_by)
    ranked = values[membership.isin(ranking_groups)].mean().dropna()
    if ranked.empty:
        raise DataError(f"no subject of the groups {ranking_groups} to rank the regions by")
    top = list(ranked.sort_values(ascending=False, kind="stable").index[:k])

    figure = new_figure(7.0, 1.2 + 0.35 * len(top) * max(1.0, 0.6 * len(group_order)))
    ax = figure.subplots()
    _draw_group_bars(ax, values[top], membership, group_order, distribution)
    ax.axvline(1.0 if by == "gain" else 0.0, color="0.4", linewidth=0.8, linestyle="--" if by == "gain" else "-")
    ax.set_xlabel(xlabel)
    figure.legend(loc="outside lower center", ncols=min(4, len(group_order)), fontsize="small", frameon=False)
    ax.set_title(title or f"top {len(top)} regions by mean {by}")
    return finish(figure, path)


def _draw_group_bars(ax: Axes, values: pd.DataFrame, membership: pd.Series, group_order: list[Any],
                     distribution: str) -> None:
    """Per region (columns of ``values``, subjects × regions, first on top) one bar per group with its
    mean, over the group's per-subject values as jittered points or violin outlines."""
    band = 0.8 / len(group_order)
    rows = np.arange(values.shape[1])[::-1]
    generator = np.random.default_rng(0)
    for position, group in enumerate(group_order):
        colour = GROUP_COLOURS[position % len(GROUP_COLOURS)]
        members = values[membership == group]
        centres = rows + 0.4 - band * (position + 0.5)
        ax.barh(centres, members.mean(), height=0.9 * band, color=colour, alpha=0.35, edgecolor=colour,
                label=f"{group} (n = {len(members)})")
        for centre, region in zip(centres, values.columns):
            subject_values = members[region].dropna().to_numpy()
            if distribution == "violin" and np.unique(subject_values).size > 1:
                body = ax.violinplot([subject_values], positions=[centre], orientation="horizontal",
                                     widths=0.9 * band, showextrema=False)["bodies"][0]
                body.set(facecolor="none", edgecolor=colour, linewidth=1.0, alpha=1.0)
            else:
                jitter = generator.uniform(-_STRIP_JITTER, _STRIP_JITTER, subject_values.size) * band
                ax.scatter(subject_values, centre + jitter, s=8, color=colour, alpha=0.8, linewidths=0, zorder=3)
    ax.set_yticks(rows, [str(region) for region in values.columns])
    ax.set_ylim(-0.6, len(rows) - 0.4)


def plot_gain(gain_table: pd.DataFrame | pd.Series, *, k: int = 10, value: str = "gain", title: str | None = None,
              path: str | os.PathLike | None = None) -> Figure:
    """Horizontal bars of the ``k`` regions with the largest relevance gain (e.g. mean TP / mean HC).

    ``gain_table``: a Series region -> gain, or a DataFrame with the column ``value`` and a ``region``
    column (or region index), optionally a ``method`` column, which gives one bar per method
    (regions ranked by the mean over methods). A dashed line marks gain 1 (no difference).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(gain_table, pd.Series):
        gain_table = gain_table.rename(value).rename_axis("region").reset_index()
    if "region" not in gain_table.columns:
        gain_table = gain_table.rename_axis("region").reset_index()
    require_columns(gain_table, ["region", value], "gain_table")
    if "method" not in gain_table.columns:
        gain_table = gain_table.assign(method=value)
    if gain_table.duplicated(["region", "method"]).any():
        raise DataError("gain_table holds several rows for one region (and method)")
    wide = gain_table.pivot(index="region", columns="method", values=value)
    top = wide.mean(axis=1).dropna().sort_values(ascending=False, kind="stable").index[:k]
    methods = list(pd.unique(gain_table["method"]))
    wide = wide.loc[top, methods]

    figure = new_figure(7.0, 1.2 + 0.35 * len(top) * max(1.0, 0.6 * len(methods)))
    ax = figure.subplots()
    band = 0.8 / len(methods)
    rows = np.arange(len(top))[::-1]
    for position, method in enumerate(methods):
        centres = rows + 0.4 - band * (position + 0.5)
        bars = ax.barh(centres, wide[method], height=0.9 * band, color=GROUP_COLOURS[position % len(GROUP_COLOURS)],
                       label=None if len(methods) == 1 else str(method))
        ax.bar_label(bars, labels=[f"{gain:.2f}" if np.isfinite(gain) else "" for gain in wide[method]], padding=2,
                     fontsize="x-small")
    ax.axvline(1.0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_yticks(rows, [str(region) for region in top])
    ax.set_ylim(-0.6, len(top) - 0.4)
    ax.set_xlabel(value)
    ax.margins(x=0.12)
    if len(methods) > 1:
        figure.legend(loc="outside lower center", ncols=min(4, len(methods)), fontsize="small", frameon=False)
    ax.set_title(title or f"top {len(top)} regions by {value}")
    return finish(figure, path)


def plot_covariate(x: Any, y: Any, *, xlabel: str, ylabel: str, p_value: float | None = None,
                   groups: Sequence[Any] | None = None, title: str | None = None,
                   path: str | os.PathLike | None = None) -> Figure:
    """Scatter of ``y`` against ``x`` (1-D, same length) with the least-squares line; the legend gives
    Pearson's r, ``p_value`` (e.g. from a permutation test) when passed, and n.

    Pairs with NaN in ``x`` or ``y`` are left out (n counts the rest); ``groups`` (one label per
    point) colours the points. Raises DataError for fewer than 3 pairs or a constant ``x`` or ``y``.
    """
    xs, ys = as_array(x, "x"), as_array(y, "y")
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise DataError(f"x and y must be 1-D of one length, got shapes {xs.shape} and {ys.shape}")
    labels = None if groups is None else np.asarray(groups, dtype=object)
    if labels is not None and labels.shape != xs.shape:
        raise DataError(f"groups has {labels.size} labels for {xs.size} points")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        raise DataError(f"a fitted line and Pearson's r need at least 3 pairs and non-constant x and y, "
                        f"got {xs.size} finite pairs")
    slope, intercept = np.polyfit(xs, ys, 1)
    r = float(np.corrcoef(xs, ys)[0, 1])

    figure = new_figure(5.0, 4.0)
    ax = figure.subplots()
    if labels is None:
        ax.scatter(xs, ys, s=18, color=GROUP_COLOURS[1], alpha=0.8, linewidths=0)
    else:
        labels = labels[keep]
        for position, group in enumerate(pd.unique(labels)):
            chosen = labels == group
            ax.scatter(xs[chosen], ys[chosen], s=18, color=GROUP_COLOURS[position % len(GROUP_COLOURS)], alpha=0.8,
                       linewidths=0, label=str(group))
    ends = np.array([xs.min(), xs.max()])
    fit = f"least squares: r = {r:.2f}" + ("" if p_value is None else f", p = {p_value:.3g}") + f", n = {xs.size}"
    ax.plot(ends, intercept + slope * ends, color="0.2", linewidth=1.5, label=fit)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    entries = len(ax.get_legend_handles_labels()[0])
    figure.legend(loc="outside lower center", ncols=1 if entries > 3 else entries, fontsize="small", frameon=False)
    if title:
        ax.set_title(title)
    return finish(figure, path)


def _require_one_method(stats: pd.DataFrame) -> None:
    if "method" in stats.columns and stats["method"].nunique() > 1:
        methods = sorted(map(str, stats["method"].unique()))
        raise DataError(f"stats holds several methods {methods}; select one, e.g. stats[stats.method == "
                        f"{methods[0]!r}]")


def _subject_by_region(stats: pd.DataFrame, column: str) -> pd.DataFrame:
    """(subjects × regions) table of ``column``."""
    if stats.duplicated(["subject", "region"]).any():
        raise DataError("stats holds several rows for one subject and region (filter by method or merge regions)")
    return stats.pivot(index="subject", columns="region", values=column)


def _subject_groups(stats: pd.DataFrame, groups: str | Mapping[Any, Any] | pd.Series | None,
                    subjects: pd.Index) -> pd.Series:
    """Each subject's group, indexed like ``subjects``."""
    if groups is None:
        return pd.Series("all", index=subjects)
    if isinstance(groups, str):
        require_columns(stats, [groups], "stats")
        per_subject = stats.groupby("subject")[groups].nunique(dropna=False)
        if (per_subject > 1).any():
            raise DataError(f"column {groups!r} gives some subjects several groups: {list(per_subject.index[per_subject > 1][:5])}")
        membership = stats.drop_duplicates("subject").set_index("subject")[groups].reindex(subjects)
    else:
        membership = pd.Series(subjects.map(pd.Series(groups) if isinstance(groups, Mapping) else groups),
                               index=subjects)
    missing = list(membership.index[membership.isna()])
    if missing:
        raise DataError(f"no group for the subject(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return membership


def _group_order(membership: pd.Series, order: Sequence[Any] | None) -> list[Any]:
    present = list(pd.unique(membership))
    if order is None:
        return sorted(present, key=str)
    unknown = [group for group in present if group not in list(order)]
    if unknown:
        raise DataError(f"order {list(order)} lacks the group(s) {unknown}")
    return [group for group in order if group in present]


def _as_list(groups: Any | Sequence[Any]) -> list[Any]:
    return list(groups) if isinstance(groups, (list, tuple, set)) else [groups]
