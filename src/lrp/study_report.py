"""Figures and the HTML report of a study (``lrp study``, ``lrp demo``).

Figures (``out/figures/``): ``subject_<method>_<subject>.png`` (relevance over the subject's volume
with the top regions outlined), ``group_means_<method>.png`` (AD vs HC and TP/FN/TN/FP side by side,
one colour scale), ``top_regions_<method>_<by>.png`` (by sum, density, gain; per-subject points),
``gain.png`` (all methods), ``covariate_<method>.png`` (region relevance against the covariate).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .neuro.io import load_volume
from .plots import plot_covariate, plot_gain, plot_group_maps, plot_slices, plot_top_regions
from .report import HtmlReport
from .study import StudyConfig, StudyResult, resolve_target

__all__ = ["confusion_matrix", "study_figures", "study_report", "top_regions_table"]

SUBJECTS_SHOWN = 2
"""Individual subjects drawn per method: the first true positive and the first true negative."""


def confusion_matrix(predictions: pd.DataFrame) -> pd.DataFrame:
    """Counts of true (rows) against predicted (columns) class names."""
    return pd.crosstab(predictions["group_true"].rename("true"), predictions["group_pred"].rename("predicted"))


def top_regions_table(summary: pd.DataFrame, method: str, by: str, k: int = 10) -> pd.DataFrame:
    """The ``k`` best-ranked regions of ``method`` by ``by`` (sum, density or gain) with their numbers."""
    part = summary[summary["method"] == method].dropna(subset=[f"rank_{by}"])
    columns = ["region", f"rank_{by}", "voxels"] + [c for c in part.columns if c.startswith(("sum_", "density_"))]
    return part.sort_values([f"rank_{by}", "region"]).head(k)[columns + ["gain"]]


def study_figures(result: StudyResult, config: StudyConfig, background: np.ndarray,
                  outlined: list[str] | None = None) -> dict[str, Path]:
    """Draw the study's figures into ``out/figures``; ``background`` (D, H, W) is the anatomy under
    group maps (e.g. the mean input), ``outlined`` the regions to outline (default: each method's
    top 5 by gain, else by sum). Returns figure name -> path."""
    folder = result.out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def draw(name: str, plot: Callable[..., object], *args, **kwargs) -> None:
        paths[name] = folder / f"{name}.png"
        plot(*args, **kwargs, path=paths[name])

    regions = result.regions.merge(result.predictions[["subject", "group_true", "outcome"]], on="subject")
    for label in result.methods:
        top = outlined or _top(result.summary, label, "gain", 5) or _top(result.summary, label, "sum", 5)
        for subject in _shown_subjects(result.predictions):
            relevance, _ = load_volume(_map_path(result, label, subject))
            draw(f"subject_{label}_{subject}", plot_slices, relevance, _subject_volume(result, subject, background),
                 result.affine, atlas_labels=result.atlas, regions=top,
                 title=f"{label}: subject {subject} ({_outcome(result, subject)})")
        means = {group: load_volume(path)[0] for group, path in result.group_means.get(label, {}).items()}
        if means:
            draw(f"group_means_{label}", plot_group_maps, means, background, result.affine,
                 atlas_labels=result.atlas, regions=top, title=f"{label}: group mean maps (one colour scale)")
        method_regions = regions[regions["method"] == label]
        for by in ("sum", "density", "gain"):
            draw(f"top_regions_{label}_{by}", plot_top_regions, method_regions, by=by, k=config.top_k,
                 groups="outcome" if by != "gain" else "group_true",
                 baseline=config.reference_group if by == "gain" else None, title=f"{label}: top regions by {by}")
    gains = result.summary.dropna(subset=["gain"])
    if not gains.empty:
        draw("gain", plot_gain, gains[["method", "region", "gain"]], k=config.top_k,
             title=f"relevance gain ({config.gain_group} / {config.reference_group})")
    if result.correlation is not None:
        covariates = result.manifest.set_index("subject")
        groups = result.predictions.set_index("subject")["group_true"]
        for row in result.correlation.itertuples():
            method = getattr(row, "method", "")
            part = result.regions[(result.regions["region"] == row.region) & (result.regions["method"] == method)]
            values = part.set_index("subject")["sum"]
            draw(f"covariate_{method}", plot_covariate, covariates.loc[values.index, config.covariate].to_numpy(float),
                 values.to_numpy(float), xlabel=config.covariate, ylabel=f"relevance in {row.region} ({method})",
                 p_value=float(row.p_permutation), groups=groups.loc[values.index].tolist())
    return paths


def study_report(result: StudyResult, config: StudyConfig, figures: dict[str, Path], *, title: str = "LRP study",
                 introduction: Callable[[HtmlReport], None] | None = None,
                 conclusion: Callable[[HtmlReport], None] | None = None) -> Path:
    """Write ``out/report.html``: cohort, accuracy, subjects, group maps, top regions, overlap,
    correlation, errors; ``introduction`` / ``conclusion`` add sections before / after."""
    report = HtmlReport(title)
    if introduction:
        introduction(report)
    predictions = result.predictions
    report.heading("Cohort and accuracy")
    accuracy = float((predictions["label"] == predictions["prediction"]).mean())
    report.text(f"{len(predictions)} hold-out subjects from {config.data}; model {config.model}. "
                f"Accuracy {accuracy:.1%}. Explained class: "
                f"{_target_name(result, config)}.")
    report.table(confusion_matrix(predictions).reset_index(), caption="Confusion matrix (rows: true class)")
    report.table(predictions["outcome"].value_counts().rename_axis("group").reset_index(), caption="Outcomes")
    report.heading("Individual subjects")
    for name, path in figures.items():
        if name.startswith("subject_"):
            report.figure(path, caption=name.removeprefix("subject_"))
    report.heading("Group mean maps")
    for name, path in figures.items():
        if name.startswith("group_means_"):
            report.figure(path, caption=f"{name.removeprefix('group_means_')}: mean relevance per group")
    report.heading("Top regions")
    for label in result.methods:
        for by in ("sum", "density", "gain"):
            report.table(top_regions_table(result.summary, label, by, config.top_k),
                         caption=f"{label}: top {config.top_k} regions by {by}")
            if f"top_regions_{label}_{by}" in figures:
                report.figure(figures[f"top_regions_{label}_{by}"], caption=f"{label} by {by}")
    if "gain" in figures:
        report.figure(figures["gain"], caption="Relevance gain of the top regions, all methods")
    if not result.overlap.empty:
        report.heading(f"Top-{config.top_k} overlap between methods")
        report.table(result.overlap.drop(columns=["shared"], errors="ignore"))
    if result.correlation is not None:
        report.heading("Correlation with the covariate")
        report.table(result.correlation)
        for name, path in figures.items():
            if name.startswith("covariate_"):
                report.figure(path, caption=name)
    if conclusion:
        conclusion(report)
    if not result.errors.empty:
        report.heading("Errors")
        report.table(result.errors)
    return report.write(result.out / "report.html")


def _target_name(result: StudyResult, config: StudyConfig) -> str:
    target = resolve_target(config.target, result.class_names, config.positive)
    return "each subject's predicted class" if target is None else result.class_names[target]


def _shown_subjects(predictions: pd.DataFrame) -> list[str]:
    shown = []
    for outcome in ("TP", "TN"):
        rows = predictions[predictions["outcome"] == outcome]
        if len(rows):
            shown.append(str(rows["subject"].iloc[0]))
    return shown[:SUBJECTS_SHOWN]


def _map_path(result: StudyResult, method: str, subject: str) -> str:
    maps = result.maps
    return maps[(maps["method"] == method) & (maps["subject"] == subject)]["path"].iloc[0]


def _top(summary: pd.DataFrame, method: str, by: str, k: int) -> list[str]:
    part = summary[(summary["method"] == method)].dropna(subset=[f"rank_{by}"])
    return part.sort_values([f"rank_{by}", "region"])["region"].head(k).tolist()


def _outcome(result: StudyResult, subject: str) -> str:
    row = result.predictions[result.predictions["subject"] == subject]
    return str(row["outcome"].iloc[0]) if len(row) else "?"


def _subject_volume(result: StudyResult, subject: str, fallback: np.ndarray) -> np.ndarray:
    """The subject's own volume when it is a file on the study grid, else ``fallback``."""
    if "path" not in result.manifest.columns:
        return fallback
    volume = load_volume(result.manifest.set_index("subject").loc[subject, "path"])[0]
    return volume if volume.shape == fallback.shape else fallback
