"""The paper's evaluation on a hold-out set in one call: ``lrp study`` (and the second half of ``lrp demo``).

hold-out volumes → predictions and groups (AD/HC/TP/TN/FP/FN) → a relevance map per subject and
method (NIfTI) → relevance per atlas region → group mean maps, gain, rankings, top-k overlap
between methods (e.g. the beta sweep), correlation with a covariate → tables, figures, report.

Outputs in ``config.out`` (each written atomically; a rerun reuses complete maps):

- ``predictions.csv``: subject, patient, label, prediction, prob_<class>..., group_true, group_pred, outcome
- ``maps/<method>/<subject>.nii.gz``: float32 relevance in the input's space
- ``regions.csv``: one row per subject × region × method (:data:`lrp.neuro.regions.STATS_COLUMNS` + method)
- ``summary.csv``: one row per method × region (see :func:`summarise`)
- ``overlap.csv``: top-k overlap of the region rankings of every pair of methods, by sum / density / gain
- ``correlation.csv``: correlation of a region's relevance with a covariate, with a permutation test
- ``group_means/<method>_<group>.nii.gz``, ``errors.csv`` (subjects that could not be explained),
  ``figures/``, ``report.html``
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomllib
import torch
from tqdm.auto import tqdm

from .catalog import MethodSpec, parse_method
from .data import Preprocess, VolumeDataset, open_source
from .errors import DataError, LRPError
from .files import write_text
from .neuro.atlas import Atlas, load_atlas, load_template
from .neuro.cohort import (
    OUTCOMES,
    GroupMeans,
    assign_groups,
    gain,
    rank_regions,
    region_group_means,
    topk_overlap,
    write_tables,
)
from .neuro.io import is_nifti, load_image, load_volume, nifti_stem, save_image
from .neuro.regions import RegionTable, resample_map
from .neuro.statistics import region_covariate_correlations
from .train import load_model, predict

__all__ = ["PAPER_BETAS", "StudyConfig", "StudyResult", "analyse", "analyse_maps", "load_study", "read_maps_table", "resolve_target", "run_study", "study_grid", "summarise"]

PAPER_BETAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The beta sweep of the paper (alpha = 1 + beta)."""

RANKED_BY: tuple[str, ...] = ("sum", "density", "gain")

SETTINGS = "study.json"
"""The study's settings (StudyConfig fields and the model's class names), written with its tables."""
ANATOMY = "anatomy.nii.gz"
"""The mean explained volume, the anatomy under the group figures."""


@dataclass
class StudyConfig:
    """Everything a study needs; every field is also a key of the study file (TOML) and a flag of ``lrp study``.

    data: hold-out source (HDF5 file, NIfTI folder or CSV manifest); model: ``model.json`` or its folder;
    out: output folder. atlas: built-in name (``aal``, ``harvard-oxford``, ``brodmann``) or a label
    NIfTI, with ``atlas_labels`` its label table; ``merge_hemispheres`` and ``area_mapping`` (a CSV/JSON
    mapping of labels to areas) group labels into areas. reference: a NIfTI giving the grid and affine
    of HDF5 volumes (NIfTI sources use their own). methods: method specs (:mod:`lrp.catalog`); betas:
    adds ``lrp:alpha-beta:beta=<b>`` for each. target: the explained class, by index or class name;
    ``"positive"`` (default) is the disease class ``positive`` (the paper explained AD for every subject),
    None each subject's prediction; start: LRP distributes that class's
    softmax ``"probability"`` (the paper's choice, the default) or its ``"logit"``. positive / negative: class names
    of disease and controls; gain_group / reference_group: the gain's numerator and denominator;
    gain_value: the region statistic it compares, by default ``positive``, the relevance for the explained
    class (for the paper's alpha1-beta0 maps, which are non-negative, the same as ``sum``; for signed maps
    it stays defined where the controls' sum is negative).
    min_region_voxels: smaller regions are left out (their density and gain are noise).
    covariate / covariate_region: correlate that region's relevance with that manifest column.
    """

    data: str
    model: str | None
    out: str
    atlas: str = "aal"
    atlas_labels: str | None = None
    merge_hemispheres: bool = False
    area_mapping: str | None = None
    reference: str | None = None
    methods: list[str] = field(default_factory=lambda: ["lrp:alpha1-beta0", "guided_backprop"])
    betas: list[float] = field(default_factory=list)
    target: int | str | None = "positive"
    start: str = "probability"
    positive: str = "AD"
    negative: str = "HC"
    gain_group: str = "TP"
    gain_value: str = "positive"
    reference_group: str = "HC"
    min_region_voxels: int = 0
    top_k: int = 10
    covariate: str | None = None
    covariate_region: str | None = None
    permutations: int = 10000
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 4
    figures: bool = True

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> StudyConfig:
        """Read a study file (top-level keys = field names; paths relative to the file), then apply
        ``overrides`` that are not None. DataError for unknown keys or an unreadable file."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise DataError(f"{path}: not a readable study file ({error})") from error
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("data", "model", "out", "atlas", "atlas_labels", "area_mapping", "reference"):
            if isinstance(values.get(key), str) and _looks_like_path(values[key]):
                values[key] = str((path.parent / values[key]).resolve())
        values.update({key: value for key, value in overrides.items() if value is not None})
        missing = [name for name in ("data", "model", "out") if name not in values]
        if missing:
            raise DataError(f"{path}: the study needs {missing} (in the file or as flags)")
        return cls(**values)

    def method_specs(self) -> list[MethodSpec]:
        """The methods to run: ``methods`` then one LRP alpha-beta per beta, without repeats."""
        specs = [parse_method(text) for text in self.methods]
        specs += [parse_method(f"lrp:alpha-beta:beta={beta:g}") for beta in self.betas]
        unique: dict[str, MethodSpec] = {}
        for spec in specs:
            unique.setdefault(spec.label, spec)
        return list(unique.values())


@dataclass
class StudyResult:
    """What a study wrote and the main tables (also on disk). ``maps``: subject, method, path of every
    map; ``mean_input``: the mean explained volume (D, H, W), the anatomy under group figures."""

    out: Path
    predictions: pd.DataFrame
    regions: pd.DataFrame
    summary: pd.DataFrame
    overlap: pd.DataFrame
    correlation: pd.DataFrame | None
    errors: pd.DataFrame
    group_means: dict[str, dict[str, Path]]
    maps: pd.DataFrame
    atlas: Atlas
    affine: np.ndarray
    manifest: pd.DataFrame
    mean_input: np.ndarray
    class_names: list[str]
    methods: list[str]


def study_grid(data: VolumeDataset, preprocess: Preprocess | None, reference: str | None) -> tuple[tuple[int, ...],
                                                                                                  np.ndarray]:
    """Shape (D, H, W) and 4×4 affine of the volumes the model sees: the reference image's, or the first
    NIfTI subject's; when preprocessing resamples to another grid, the affine is scaled to it (corners
    kept, as ``scipy.ndimage.zoom`` does)."""
    if reference is not None:
        image = load_image(reference)
    elif "path" in data.manifest.columns:
        image = load_image(data.manifest["path"].iloc[0])
    else:
        raise DataError(f"{data.source}: an HDF5 source has no affine; give a reference NIfTI on its grid "
                        f"(--reference)")
    shape, affine = tuple(int(d) for d in image.shape[:3]), image.affine.copy()
    grid = None if preprocess is None else preprocess.grid
    if grid is not None and tuple(grid) != shape:
        steps = [(old - 1) / max(new - 1, 1) for old, new in zip(shape, grid)]
        affine = affine @ np.diag([*steps, 1.0])
        shape = tuple(grid)
    return shape, affine


def run_study(config: StudyConfig, *, progress: bool = True) -> StudyResult:
    """Run the study described by ``config``; see the module docstring for the outputs."""
    out = Path(config.out)
    specs = config.method_specs()
    model, info = load_model(config.model, device=config.device)
    class_names = [str(name) for name in info.get("class_names") or (config.negative, config.positive)]
    preprocess = Preprocess.from_dict(info["preprocessing"]) if info.get("preprocessing") else None
    data = open_source(config.data, transform=preprocess, classes=class_names)
    shape, affine = study_grid(data, preprocess, config.reference)
    atlas = _study_atlas(config, shape, affine)
    target = resolve_target(config.target, class_names, config.positive)
    predictions = predict(model, data, batch_size=config.batch_size, device=config.device, progress=progress,
                          class_names=class_names)
    predictions = assign_groups(predictions, positive=config.positive, negative=config.negative,
                                class_names=class_names)
    regions, errors, means, mean_input = _explain_subjects(model, data, specs, atlas, affine, predictions, config,
                                                           target, progress)
    maps = pd.DataFrame([{"subject": subject, "method": spec.label,
                          "path": str(out / "maps" / spec.label / f"{subject}.nii.gz")}
                         for spec in specs for subject in data.subjects])
    return analyse(regions, errors, means, predictions, data.manifest, maps, atlas, affine, mean_input, class_names,
                   config)


def analyse(regions: pd.DataFrame, errors: pd.DataFrame, means: dict[str, GroupMeans], predictions: pd.DataFrame,
            manifest: pd.DataFrame, maps: pd.DataFrame, atlas: Atlas, affine: np.ndarray, mean_input: np.ndarray,
            class_names: list[str], config: StudyConfig) -> StudyResult:
    """From region rows, group sums and groups of every method to the study's tables and group mean maps
    on disk (``summary``, ``overlap``, ``correlation``, ``regions``, ``errors``; ``group_means/``)."""
    out = Path(config.out)
    summary = summarise(regions, predictions, config)
    k = min(config.top_k, len(atlas.ids))
    overlap = pd.concat([topk_overlap(_rankings(summary, by), k=k).assign(by=by) for by in RANKED_BY],
                        ignore_index=True) if len(means) > 1 else pd.DataFrame()
    correlation = _correlation(regions, manifest, config)
    group_paths = {label: _save_group_means(mean, affine, out / "group_means", label) for label, mean in means.items()}
    tables = {"predictions": predictions, "subjects": manifest, "maps": maps, "regions": regions,
              "summary": summary, "overlap": overlap, "errors": errors}
    if correlation is not None:
        tables["correlation"] = correlation
    write_tables(tables, out)
    save_image(mean_input, affine, out / ANATOMY)
    write_text(out / SETTINGS, json.dumps({**dataclasses.asdict(config), "class_names": list(class_names)},
                                          indent=2) + "\n")
    return StudyResult(out, predictions, regions, summary, overlap, correlation, errors, group_paths, maps, atlas,
                       affine, manifest, mean_input, class_names, list(means))


def load_study(out: str | Path) -> tuple[StudyResult, StudyConfig]:
    """A finished study (``lrp study``, ``lrp regions``, ``lrp demo``) read back from its folder, e.g. to
    draw its figures and report again (``lrp report``). DataError when the folder holds no study."""
    out = Path(out)
    if not (out / SETTINGS).is_file():
        raise DataError(f"{out}: no {SETTINGS}; not the output folder of lrp study, regions or demo")
    settings = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
    class_names = settings.pop("class_names")
    config = StudyConfig(**{**settings, "out": str(out)})

    def table(name: str) -> pd.DataFrame | None:
        path = out / f"{name}.csv"
        return pd.read_csv(path, dtype={"subject": str}) if path.is_file() and path.stat().st_size else None

    anatomy, affine = load_volume(out / ANATOMY)
    atlas = _study_atlas(config, anatomy.shape, affine)
    summary = table("summary")
    methods = list(dict.fromkeys(summary["method"]))
    groups = (config.positive, config.negative, *OUTCOMES)
    group_means = {method: {group: out / "group_means" / f"{method}_{group}.nii.gz" for group in groups
                            if (out / "group_means" / f"{method}_{group}.nii.gz").is_file()}
                   for method in methods}
    overlap, errors = table("overlap"), table("errors")
    result = StudyResult(out, table("predictions"), table("regions"), summary,
                         pd.DataFrame() if overlap is None else overlap, table("correlation"),
                         pd.DataFrame(columns=["subject", "method", "error"]) if errors is None else errors,
                         group_means, table("maps"), atlas, affine, table("subjects"), anatomy, class_names, methods)
    return result, config


def resolve_target(target: int | str | None, class_names: Sequence[str], positive: str) -> int | None:
    """The explained class index: an index as it is, a class name (``"positive"`` = the disease class
    ``positive``) looked up in ``class_names``, None for each subject's prediction. DataError naming the
    classes for an unknown name or an index out of range."""
    if target is None:
        return None
    if isinstance(target, str):
        name = positive if target == "positive" else target
        if name not in class_names:
            raise DataError(f"target class {name!r} is not one of the model's classes {list(class_names)}")
        return list(class_names).index(name)
    if not 0 <= int(target) < len(class_names):
        raise DataError(f"target {target} is out of range for the model's classes {list(class_names)}")
    return int(target)


def read_maps_table(source: str | Path) -> pd.DataFrame:
    """The relevance maps to analyse, as a table with columns subject, method, path (+ any others of a CSV).

    source: a CSV with columns ``path`` (relative to the CSV or absolute), ``subject`` (default: the file
    name) and optionally ``method``, ``label``, ``prediction``; or a folder of ``<subject>.nii[.gz]``
    files (method = the folder's name); or a folder of such folders, one per method (the ``maps/``
    folder written by ``lrp study``). DataError when no map is found.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        table = pd.read_csv(source, dtype={"subject": str})
        if "path" not in table.columns:
            raise DataError(f"{source}: a maps table needs a 'path' column (columns: {list(table.columns)})")
        table["path"] = [str(p if Path(p).is_absolute() else (source.parent / p)) for p in table["path"]]
        if "subject" not in table.columns:
            table["subject"] = [nifti_stem(p) for p in table["path"]]
        if "method" not in table.columns:
            table["method"] = source.stem
    elif source.is_dir():
        folders = sorted(p for p in source.iterdir() if p.is_dir()) or [source]
        table = pd.DataFrame([{"subject": nifti_stem(path), "method": folder.name, "path": str(path)}
                              for folder in folders for path in sorted(folder.iterdir())
                              if path.is_file() and is_nifti(path)])
    else:
        raise DataError(f"{source}: give a folder of NIfTI maps (or of per-method folders) or a CSV with a "
                        f"'path' column")
    if table.empty:
        raise DataError(f"{source}: no NIfTI maps (.nii, .nii.gz) found")
    duplicated = table[table.duplicated(["subject", "method"])]
    if len(duplicated):
        raise DataError(f"{source}: several maps for subject {duplicated['subject'].iloc[0]!r} and method "
                        f"{duplicated['method'].iloc[0]!r}")
    missing = [p for p in table["path"] if not Path(p).is_file()]
    if missing:
        raise DataError(f"{source}: {len(missing)} map file(s) missing, e.g. {missing[0]}")
    return table


def analyse_maps(maps: pd.DataFrame, subjects: pd.DataFrame, config: StudyConfig, *, class_names: Sequence[str],
                 background: str | Path | None = None, progress: bool = True) -> StudyResult:
    """``lrp regions``: the study's analysis of existing maps.

    maps: from :func:`read_maps_table` (subject, method, path); subjects: subject, label, prediction
    (class names or indices into ``class_names``) and any covariates. The atlas is resampled to the
    first map's grid; every map must lie on that grid and be finite (DataError naming the file,
    raised before any table is written). background: the anatomy under the figures, on the maps'
    grid (default: the Colin27 template resampled to it).
    """
    groups = assign_groups(subjects, positive=config.positive, negative=config.negative, class_names=class_names)
    unknown = sorted(set(maps["subject"]) - set(groups["subject"]))
    if unknown:
        raise DataError(f"{len(unknown)} subject(s) of the maps have no label and prediction, e.g. {unknown[:3]}")
    reference = load_image(maps["path"].iloc[0])
    shape, affine = tuple(int(d) for d in reference.shape[:3]), reference.affine
    atlas = _study_atlas(config, shape, affine)
    means = {method: GroupMeans(groups) for method in maps["method"].unique()}
    rows = RegionTable(atlas)
    for row in tqdm(maps.itertuples(), total=len(maps), desc="regions", unit="map", disable=not progress):
        relevance, map_affine = load_volume(row.path, finite=True)
        if relevance.shape != shape or not np.allclose(map_affine, affine, atol=1e-3):
            raise DataError(f"{row.path}: grid {relevance.shape} with affine\n{map_affine}\ndiffers from the first "
                            f"map's {shape} with affine\n{affine}")
        rows.add(row.subject, relevance, row.method)
        means[row.method].add(row.subject, relevance)
    anatomy = load_volume(background)[0] if background else np.asarray(
        resample_map(load_template("ch2bet"), (shape, affine)).dataobj)
    errors = pd.DataFrame(columns=["subject", "method", "error"])
    explained = groups[groups["subject"].isin(maps["subject"])]
    return analyse(rows.frame(), errors, means, explained, subjects, maps, atlas, affine,
                   anatomy, list(class_names), config)


def summarise(regions: pd.DataFrame, groups: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """One row per method × region: ``method, region_id, region, voxels``, the group means
    ``sum_<group>`` and ``density_<group>`` for every group, ``gain`` (mean ``gain_value`` over ``gain_group`` /
    over ``reference_group``), and ranks ``rank_sum`` / ``rank_density`` (by the means over the
    ``positive`` class, e.g. all AD subjects) and ``rank_gain`` (1 = highest; NaN values unranked)."""
    keys = ["method", "region_id", "region"]
    table = regions.groupby(keys, sort=False)["voxels"].first().reset_index()
    for value in ("sum", "density"):
        means = region_group_means(regions, groups, value=value)
        wide = means.pivot_table(index=keys, columns="group", values="mean", sort=False, dropna=False)
        wide.columns = [f"{value}_{group}" for group in wide.columns]
        table = table.merge(wide.reset_index(), on=keys, how="left")
    gains = gain(regions, groups, value=config.gain_value, group=config.gain_group, reference=config.reference_group)
    table = table.merge(gains[keys + ["gain"]], on=keys, how="left")
    for by, column in (("sum", f"sum_{config.positive}"), ("density", f"density_{config.positive}"),
                       ("gain", "gain")):
        if column not in table.columns:
            table[f"rank_{by}"] = pd.array([pd.NA] * len(table), dtype="Int64")
            continue
        ranked = rank_regions(table[keys + [column]], by=column)
        table = table.merge(ranked[keys + ["rank"]].rename(columns={"rank": f"rank_{by}"}), on=keys, how="left")
    return table


def _explain_subjects(model: torch.nn.Module, data: VolumeDataset, specs: Sequence[MethodSpec], atlas: Atlas,
                      affine: np.ndarray, groups: pd.DataFrame, config: StudyConfig, target: int | None,
                      progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, GroupMeans], np.ndarray]:
    """Explain every subject with every method, one subject in memory at a time: maps written (or
    reused when complete), region rows collected, group sums and the mean input (D, H, W) accumulated."""
    out = Path(config.out)
    explainers = {spec.label: spec.explainer(config.start) for spec in specs}
    means = {spec.label: GroupMeans(groups) for spec in specs}
    rows = RegionTable(atlas)
    errors: list[dict[str, str]] = []
    device = next(iter(model.parameters())).device
    input_sum, explained = np.zeros(atlas.shape), 0
    subjects = data.subjects
    for position in tqdm(range(len(data)), desc="explaining", unit="subject", disable=not progress):
        subject = subjects[position]
        try:
            sample = data[position]
        except (LRPError, OSError) as error:
            errors.append({"subject": subject, "method": "", "error": str(error)})
            continue
        x = sample["x"][None].to(device)
        input_sum += sample["x"][0].numpy()
        explained += 1
        for label, explainer in explainers.items():
            path = out / "maps" / label / f"{subject}.nii.gz"
            try:
                relevance = _reuse(path, atlas.shape)
                if relevance is None:
                    relevance = explainer(model, x, target)[0, 0].detach().cpu().numpy()
                    save_image(relevance, affine, path)
            except LRPError as error:
                errors.append({"subject": subject, "method": label, "error": str(error)})
                continue
            rows.add(subject, relevance, label)
            means[label].add(subject, relevance)
    regions = rows.frame()
    return regions, pd.DataFrame(errors, columns=["subject", "method", "error"]), means, input_sum / max(explained, 1)


def _reuse(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The map at ``path`` when it exists, is readable and has ``shape``; else None (to recompute)."""
    if not path.is_file():
        return None
    try:
        data, _ = load_volume(path)
    except (LRPError, OSError, EOFError):
        return None
    return data if data.shape == tuple(shape) else None


def _study_atlas(config: StudyConfig, shape: tuple[int, ...], affine: np.ndarray) -> Atlas:
    atlas = load_atlas(config.atlas, config.atlas_labels)
    if config.merge_hemispheres:
        atlas = atlas.merge_hemispheres()
    if config.area_mapping:
        atlas = atlas.from_mapping_file(config.area_mapping)
    atlas = atlas.resample_to((shape, affine))
    if config.min_region_voxels:
        counts = atlas.voxel_counts()
        kept = [atlas.labels[i] for i in atlas.ids if counts.get(i, 0) >= config.min_region_voxels]
        atlas = atlas.merge({name: [name] for name in kept})
    return atlas


def _save_group_means(means: GroupMeans, affine: np.ndarray, folder: Path, label: str) -> dict[str, Path]:
    return {group: save_image(mean, affine, folder / f"{label}_{group}.nii.gz")
            for group, mean in means.means().items()}


def _rankings(summary: pd.DataFrame, by: str) -> dict[str, list[str]]:
    column = f"rank_{by}"
    ranked = summary.dropna(subset=[column]).sort_values(["method", column, "region"])
    return {method: part["region"].tolist() for method, part in ranked.groupby("method", sort=False)}


def _correlation(regions: pd.DataFrame, manifest: pd.DataFrame, config: StudyConfig) -> pd.DataFrame | None:
    if not config.covariate:
        return None
    if config.covariate not in manifest.columns:
        raise DataError(f"covariate {config.covariate!r} is not a column of the data's manifest "
                        f"(columns: {list(manifest.columns)})")
    if not config.covariate_region:
        raise DataError(f"covariate {config.covariate!r} needs covariate_region, the region to correlate")
    explained = manifest[manifest["subject"].isin(regions["subject"].unique())]
    return region_covariate_correlations(regions, explained[["subject", config.covariate]],
                                         region=config.covariate_region, covariate=config.covariate,
                                         permutations=config.permutations, seed=config.seed)


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".nii", ".nii.gz", ".csv", ".json", ".h5", ".hdf5", ".txt", ".tsv"))

