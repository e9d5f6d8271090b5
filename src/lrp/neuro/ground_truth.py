"""The ground-truth check of ``lrp demo``: did the model use the planted atrophy, and did each method find it?

On a synthetic cohort (:mod:`lrp.neuro.synthetic`) we know each subject's undiseased twin (the same
anatomy, bias field and noise without atrophy), so:

- :func:`replacement_flips`: put the twin's voxels into the planted regions (dilated by one voxel, to
  cover the shrunken border and the enlarged CSF beside it) of the test AD subjects and count how
  many predictions flip — the evidence that the model relies on those regions;
- :func:`oracle_maps`: ``|subject − twin|``, the true change, an explanation that must find the regions;
- :func:`ground_truth_table`: per method and planted region, its rank by gain and by density among all
  regions, and the share of absolute relevance inside it over its share of the brain's volume
  (enrichment: 1 = chance), on true-positive subjects.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from ..errors import DataError
from .atlas import Atlas
from .synthetic import CohortSpec, CohortTemplate, synthesize_subject

__all__ = [
    "GROUND_TRUTH_COLUMNS",
    "ground_truth_table",
    "oracle_maps",
    "replacement_flips",
    "subject_index",
    "verdict",
]

GROUND_TRUTH_COLUMNS: tuple[str, ...] = ("method", "region", "rank_gain", "rank_density", "mass_inside",
                                         "mass_inside_dilated", "volume_share", "enrichment",
                                         "enrichment_dilated")
"""Columns of ``ground_truth.csv``; a row ``region = "all planted"`` sums over the planted regions."""

ALL_PLANTED = "all planted"


def subject_index(subject: str) -> int:
    """The cohort index of a synthetic subject name (``sub-0012`` -> 12)."""
    prefix, _, number = str(subject).partition("-")
    if prefix != "sub" or not number.isdigit():
        raise DataError(f"{subject!r} is not a synthetic subject name like 'sub-0012'")
    return int(number)


def _twins(template: CohortTemplate, spec: CohortSpec, subject: str):
    index = subject_index(subject)
    return (synthesize_subject(template, spec, index), synthesize_subject(template, spec, index, atrophy=False))


def oracle_maps(template: CohortTemplate, spec: CohortSpec, subjects: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(subject, |image − undiseased image|)`` (X, Y, Z) float32 for each subject, one at a time."""
    for subject in subjects:
        diseased, healthy = _twins(template, spec, subject)
        yield subject, np.abs(diseased.image - healthy.image).astype(np.float32)


def replacement_flips(model: torch.nn.Module, template: CohortTemplate, spec: CohortSpec, subjects: Sequence[str],
                      preprocess: Callable[[np.ndarray], np.ndarray], positive: int = 1) -> pd.DataFrame:
    """Predictions of the AD ``subjects`` before and after their planted regions (dilated by one voxel)
    are replaced by their undiseased twin's voxels; both go through ``preprocess`` (the model's, e.g.
    :class:`lrp.data.Preprocess`: (D, H, W) -> (D, H, W)) as every input.

    Returns subject, prediction, prediction_replaced, prob_before, prob_after (of class ``positive``), flipped
    (predicted ``positive`` before and not after).
    """
    planted = [template.atlas.region_id(name) for name in spec.atrophy_regions]
    device = next(iter(model.parameters())).device
    rows = []
    with torch.no_grad():
        for subject in subjects:
            diseased, healthy = _twins(template, spec, subject)
            mask = np.isin(diseased.labels, planted) | np.isin(healthy.labels, planted)
            mask = ndimage.binary_dilation(mask)
            replaced = np.where(mask, healthy.image, diseased.image)
            batch = torch.from_numpy(np.stack([preprocess(diseased.image), preprocess(replaced)]))[:, None].to(device)
            probabilities = torch.softmax(model(batch), dim=1)[:, positive].cpu().numpy()
            before, after = (int(p > 0.5) for p in probabilities)
            rows.append({"subject": subject, "prediction": before, "prediction_replaced": after,
                         "prob_before": float(probabilities[0]), "prob_after": float(probabilities[1]),
                         "flipped": bool(before == positive and after != positive)})
    return pd.DataFrame(rows)


def ground_truth_table(summary: pd.DataFrame, maps: Mapping[str, Mapping[str, np.ndarray]] | None,
                       regions: pd.DataFrame, atlas: Atlas, planted: Sequence[str],
                       true_positives: Sequence[str]) -> pd.DataFrame:
    """Per method and planted region: ``rank_gain``, ``rank_density`` (from ``summary``), and on the
    true-positive subjects the share of absolute relevance inside the region (``mass_inside``, from the
    region table: positive − negative sums; ``mass_inside_dilated`` with the region dilated by one voxel,
    from ``maps``: {method: {subject: map}} or None to skip), ``volume_share`` (region voxels / all
    labelled voxels) and ``enrichment`` = mass / volume share. A last row per method, ``all planted``,
    pools the regions (its ranks are the worst rank among them). Without true positives the masses are NaN.
    """
    missing = sorted(set(planted) - set(atlas.names))
    if missing:
        raise DataError(f"planted regions {missing} are not regions of the study atlas (too small or unknown)")
    counts = atlas.voxel_counts()
    brain_voxels = sum(counts.values())
    labelled = atlas.data > 0
    tp = regions[regions["subject"].isin(list(true_positives))].copy()
    tp["mass"] = tp["positive"] - tp["negative"]
    rows = []
    for method in summary["method"].unique():
        part = tp[tp["method"] == method]
        total = part["mass"].sum()
        ranks = summary[summary["method"] == method].set_index("region")
        method_maps = (maps or {}).get(method, {})
        for name in [*planted, ALL_PLANTED]:
            names = list(planted) if name == ALL_PLANTED else [name]
            ids = [atlas.region_id(n) for n in names]
            volume_share = sum(counts[i] for i in ids) / brain_voxels
            mass = part[part["region"].isin(names)]["mass"].sum() / total if total > 0 else np.nan
            dilated = _dilated_mass(method_maps, true_positives, np.isin(atlas.data, ids), labelled)
            worst = ranks.loc[names, ["rank_gain", "rank_density"]].max() if name == ALL_PLANTED else ranks.loc[name]
            rows.append({"method": method, "region": name, "rank_gain": worst["rank_gain"],
                         "rank_density": worst["rank_density"], "mass_inside": mass, "mass_inside_dilated": dilated,
                         "volume_share": volume_share, "enrichment": mass / volume_share,
                         "enrichment_dilated": dilated / float(np.mean(ndimage.binary_dilation(
                             np.isin(atlas.data, ids))[labelled]))})
    table = pd.DataFrame(rows, columns=list(GROUND_TRUTH_COLUMNS))
    return table.astype({"rank_gain": "Int64", "rank_density": "Int64"})


def _dilated_mass(maps: Mapping[str, np.ndarray], subjects: Sequence[str], mask: np.ndarray,
                  labelled: np.ndarray) -> float:
    """Share of absolute relevance of ``subjects``' maps inside ``mask`` dilated by one voxel, among the
    labelled voxels (NaN without maps or subjects)."""
    dilated = ndimage.binary_dilation(mask) & labelled
    inside = total = 0.0
    for subject in subjects:
        if subject in maps:
            magnitude = np.abs(maps[subject])
            inside += float(magnitude[dilated].sum())
            total += float(magnitude[labelled].sum())
    return inside / total if total > 0 else float("nan")


def verdict(table: pd.DataFrame, planted: Sequence[str]) -> pd.DataFrame:
    """Per method, in words: ``found`` when every planted region ranks within the top N+2 (the oracle's
    bar) by gain or by density, ``partly`` when at least half do by one of them, else ``not found``; with
    both counts and the pooled enrichment."""
    limit = len(planted) + 2
    rows = []
    for method, part in table.groupby("method", sort=False):
        regions = part[part["region"] != ALL_PLANTED]
        within = {by: int((regions[f"rank_{by}"].fillna(10**9) <= limit).sum()) for by in ("gain", "density")}
        best = max(within.values())
        pooled = part[part["region"] == ALL_PLANTED].iloc[0]
        word = "found" if best == len(planted) else "partly" if 2 * best >= len(planted) else "not found"
        rows.append({"method": method, "verdict": word, f"top_{limit}_by_gain": within["gain"],
                     f"top_{limit}_by_density": within["density"], "planted": len(planted),
                     "enrichment": pooled["enrichment"], "enrichment_dilated": pooled["enrichment_dilated"]})
    return pd.DataFrame(rows)
