"""``lrp demo``: the whole study on a synthetic Alzheimer's cohort built from a real brain, with a known answer.

generate (Colin27 + AAL, atrophy planted in chosen regions of the AD subjects; :mod:`lrp.neuro.synthetic`)
→ split by subject → train the demo CNN (:class:`lrp.models.DemoCNN3d`) → :func:`lrp.study.run_study` on
the test subjects (no second pipeline) → the ground-truth check (:mod:`lrp.neuro.ground_truth`) →
figures and ``report.html``.

Outputs in ``out`` besides those of the study: ``cohort/`` (subjects as NIfTI, ``manifest.csv``),
``split/`` (train/val/test.csv), ``model.pt`` + ``model.json`` (+ ``checkpoint.pt``),
``ground_truth.csv`` (:data:`lrp.neuro.ground_truth.GROUND_TRUTH_COLUMNS`, methods include ``oracle``),
``flips.csv`` and ``metrics.json`` (test_accuracy, confusion matrix, flips under region replacement).
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import Preprocess, open_source, split_patients, write_split
from .errors import DataError
from .files import write_text
from .models import DemoCNN3d
from .neuro.atlas import Atlas, load_atlas
from .neuro.cohort import write_tables
from .neuro.ground_truth import ground_truth_table, oracle_maps, replacement_flips, verdict
from .neuro.regions import region_stats
from .neuro.synthetic import CohortSpec, generate_cohort, prepare_template
from .report import HtmlReport
from .study import StudyConfig, StudyResult, run_study, summarise
from .study_report import confusion_matrix, study_figures, study_report
from .train import TrainConfig, train

__all__ = ["MIN_SUBJECTS", "RECOMMENDED", "DemoConfig", "DemoResult", "resolve_regions", "run_demo"]

RECOMMENDED = "lrp:epsilon-gamma-box"
"""The composite ``lrp demo`` recommends (see the report's ground-truth section for why)."""

FINDING = (
    "Atrophy darkens T1 images: it is an absence of signal. LRP's rules share out each layer's output as "
    "contributions x·w measured from a zero reference, so a voxel that went dark has little to give, and on "
    "the T1 contrast much of the relevance lands on the bright tissue around the atrophied regions (default "
    "cohort, seed 0, --t1-contrast: alpha1-beta0 put 2.7 times the planted regions' volume share of its "
    "relevance into them and ranked 3 of 6 in the top 8 by gain; epsilon-gamma-box 5.9 times, 2 of 6 by gain). "
    "A model trained on the inverted contrast (1 - x inside the brain: CSF bright, atrophy = more signal), "
    "equally accurate, is explained where the disease is: over seeds 0-2, alpha1-beta0 ranked five or six of "
    "the six planted regions in the top 8 by gain with an enrichment of 3.6-4.7, and epsilon-gamma-box (z^B "
    "with the input's true bounds [0, 1] on the first layer, gamma on the other convolutions, epsilon on the "
    "dense layer) put 6.9-10.7 times their volume share of relevance into them, five or six in the top 8 by "
    "density. The demo "
    "therefore trains on inverted inputs (--t1-contrast turns this off) and recommends epsilon-gamma-box. "
    "LRP distributes the explained class's softmax probability (the paper's choice), so every subject's map "
    "has the sign of the evidence, and gains compare the positive relevance (for alpha1-beta0, its whole map). "
    "Which regions can be found at all is decided by the model: replacing the planted regions by the "
    "undiseased twin's voxels shows how much it relies on them.")
"""The finding behind the demo's defaults, for the report (numbers measured on the default cohort)."""

MIN_SUBJECTS = 20
"""Fewest subjects that leave every class some training, validation and test subjects."""

MIN_REGION_MM3 = 1000.0
"""Regions smaller than this (in the study grid's voxels) are left out: their density and gain are noise."""


@dataclass
class DemoConfig:
    """Options of ``lrp demo`` (each is a flag)."""

    out: str = "lrp-demo"
    subjects: int = 400
    resolution: float = 3.0
    atrophy: list[str] = field(default_factory=lambda: ["Hippocampus", "Amygdala", "ParaHippocampal"])
    severity: tuple[float, float] = (0.3, 0.7)
    seed: int = 0
    epochs: int = 10
    methods: list[str] = field(default_factory=lambda: ["lrp:alpha1-beta0", RECOMMENDED, "guided_backprop",
                                                         "gradient"])
    invert: bool = True
    progress: bool = True


@dataclass
class DemoResult:
    """The study's result plus the ground truth: ``ground_truth`` (per method and planted region),
    ``verdicts`` (per method, in words), ``flips`` (per test AD subject) and ``metrics``."""

    study: StudyResult
    ground_truth: pd.DataFrame
    verdicts: pd.DataFrame
    flips: pd.DataFrame
    metrics: dict


def resolve_regions(names: list[str], atlas: Atlas) -> list[str]:
    """AAL names, or merged names (``Hippocampus`` -> ``Hippocampus_L``, ``Hippocampus_R``), as atlas names.
    DataError listing close matches for an unknown name."""
    resolved: list[str] = []
    for name in names:
        matches = [name] if name in atlas.names else [f"{name}_L", f"{name}_R"]
        if not all(match in atlas.names for match in matches):
            merged = sorted({n.removesuffix("_L").removesuffix("_R") for n in atlas.names})
            close = difflib.get_close_matches(name, [*atlas.names, *merged], n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise DataError(f"unknown atrophy region {name!r}{hint} (AAL names such as Hippocampus_L, or merged "
                            f"names such as Hippocampus)")
        resolved += [match for match in matches if match not in resolved]
    return resolved


def run_demo(config: DemoConfig) -> DemoResult:
    """Generate, train, study and check; see the module docstring for the outputs."""
    if config.subjects < MIN_SUBJECTS:
        raise DataError(f"--subjects {config.subjects}: the demo needs at least {MIN_SUBJECTS} subjects, so that "
                        f"both classes have training, validation and test subjects")
    out = Path(config.out)
    planted = resolve_regions(config.atrophy, load_atlas("aal"))
    spec = CohortSpec(n_subjects=config.subjects, resolution_mm=config.resolution, atrophy_regions=tuple(planted),
                      ad_severity=tuple(config.severity), seed=config.seed)
    _stage(config, f"1/5 generating {config.subjects} subjects at {config.resolution:g} mm")
    generate_cohort(spec, out / "cohort", progress=config.progress)

    _stage(config, "2/5 training the demo CNN")
    data = open_source(out / "cohort" / "manifest.csv", transform=Preprocess(minmax=True, invert=config.invert),
                       classes=["HC", "AD"])
    split = write_split(split_patients(data.manifest, val_fraction=0.1, test_fraction=0.2, seed=config.seed),
                        out / "split")
    train_data, val_data = data.select(split["train"]), data.select(split["val"])
    torch.manual_seed(config.seed)
    model = DemoCNN3d(tuple(train_data[0]["x"].shape[1:]))
    train(model, train_data, val_data, TrainConfig(epochs=config.epochs, lr=1e-3, batch_size=8, seed=config.seed,
                                                   patience=config.epochs, device="cpu"),
          out_dir=out, progress=config.progress)

    _stage(config, "3/5 explaining the test subjects")
    study_config = StudyConfig(
        data=str(split["test"]), model=str(out / "model.json"), out=str(out), methods=list(config.methods),
        min_region_voxels=math.ceil(MIN_REGION_MM3 / config.resolution**3),
        covariate=f"volume_mm3_{planted[0]}", covariate_region=planted[0], permutations=10000, seed=config.seed)
    study = run_study(study_config, progress=config.progress)

    _stage(config, "4/5 checking against the planted truth")
    ground_truth, verdicts, flips = _ground_truth(study, study_config, model, spec, planted, config.invert)
    accuracy = float((study.predictions["label"] == study.predictions["prediction"]).mean())
    metrics = {"test_accuracy": accuracy, "test_subjects": len(study.predictions),
               "confusion_matrix": confusion_matrix(study.predictions).to_dict(),
               "flips": {"ad_subjects": len(flips), "predicted_ad": int((flips["prediction"] == 1).sum()),
                         "flipped": int(flips["flipped"].sum())},
               "planted_regions": planted, "verdicts": verdicts.set_index("method")["verdict"].to_dict(),
               "config": asdict(config)}
    write_tables({"ground_truth": ground_truth, "flips": flips}, out)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")

    _stage(config, "5/5 figures and report")
    figures = study_figures(study, study_config, study.mean_input, outlined=planted)
    study_report(study, study_config, figures, title="lrp demo: a synthetic Alzheimer's cohort",
                 introduction=lambda report: _introduction(report, config, spec, study),
                 conclusion=lambda report: _conclusion(report, ground_truth, verdicts, flips, planted))
    return DemoResult(study, ground_truth, verdicts, flips, metrics)


def _ground_truth(study: StudyResult, config: StudyConfig, model, spec: CohortSpec, planted: list[str],
                  invert: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Flips under region replacement, the oracle's region statistics, and the ground-truth table."""
    template = prepare_template(spec)
    predictions = study.predictions
    ad = predictions[predictions["label"] == 1]["subject"].tolist()
    flips = replacement_flips(model, template, spec, ad, Preprocess(minmax=True, invert=invert))
    subjects = predictions["subject"].tolist()
    true_positives = predictions[predictions["outcome"] == "TP"]["subject"].tolist()
    oracle: dict[str, np.ndarray] = {}
    rows = []
    for subject, difference in oracle_maps(template, spec, subjects):
        rows.append(region_stats({subject: difference}, study.atlas, method="oracle"))
        if subject in true_positives:
            oracle[subject] = difference
    regions = pd.concat([study.regions, *rows], ignore_index=True)
    summary = pd.concat([study.summary, summarise(pd.concat(rows), predictions, config)], ignore_index=True)
    maps = {"oracle": oracle}
    for method in study.methods:
        paths = study.maps[(study.maps["method"] == method) & study.maps["subject"].isin(true_positives)]
        maps[method] = {row.subject: _load(row.path) for row in paths.itertuples()}
    table = ground_truth_table(summary, maps, regions, study.atlas, planted, true_positives)
    return table, verdict(table, planted), flips


def _load(path: str) -> np.ndarray:
    from .neuro.io import load_volume

    return load_volume(path)[0]


def _introduction(report: HtmlReport, config: DemoConfig, spec: CohortSpec, study: StudyResult) -> None:
    report.heading("The synthetic cohort")
    report.text(f"{config.subjects} subjects generated from the Colin27 T1 template (skull-stripped) at "
                f"{config.resolution:g} mm (grid {' × '.join(map(str, study.atlas.shape))}), seed {config.seed}: "
                f"random elastic deformation and affine jitter, bias field and Rician noise for everyone; the AD "
                f"half carries atrophy (tissue loss toward CSF intensity, shrinkage, enlarged CSF nearby) of "
                f"severity {spec.ad_severity[0]:g}–{spec.ad_severity[1]:g} in {', '.join(spec.atrophy_regions)}; "
                f"controls up to {spec.control_severity[1]:g}. Whole-brain intensity histograms are matched to "
                f"each subject's undiseased twin, so only the regions tell the groups apart. Split by subject "
                f"70/10/20 into training, validation and test; the demo CNN was trained for {config.epochs} "
                f"epochs; everything below is on the {len(study.predictions)} test subjects.")


def _conclusion(report: HtmlReport, table: pd.DataFrame, verdicts: pd.DataFrame, flips: pd.DataFrame,
                planted: list[str]) -> None:
    report.heading("Ground truth: does the model use the planted regions, and which method finds them?")
    predicted_ad = int((flips["prediction"] == 1).sum())
    report.text(f"Replacing the planted regions (dilated by one voxel) of the {len(flips)} test AD subjects by "
                f"their undiseased twin's voxels flips {int(flips['flipped'].sum())} of the {predicted_ad} AD "
                f"predictions to HC: the model relies on those regions.")
    limit = len(planted) + 2
    report.table(verdicts, caption=f"Per method: planted regions ranked within the top {limit} by gain (TP / HC) "
                                   f"and by density, and the enrichment of absolute relevance in them (1 = chance; "
                                   f"true-positive subjects). The oracle is |subject − undiseased twin|.")
    for row in verdicts.to_dict("records"):
        report.text(f"{row['method']}: {row['verdict']} — of {row['planted']} planted regions, "
                    f"{row[f'top_{limit}_by_gain']} in the top {limit} by gain and {row[f'top_{limit}_by_density']} "
                    f"by density; enrichment {row['enrichment']:.2f} ({row['enrichment_dilated']:.2f} with the "
                    f"regions dilated by one voxel).")
    report.table(table, caption="Per method and planted region: ranks among all regions, relevance mass inside, "
                                "volume share, enrichment")
    report.heading("What makes the explanations localise")
    report.text(FINDING)


def ground_truth_section(out: str | Path) -> Callable[[HtmlReport], None] | None:
    """The report's ground-truth sections for a demo output folder (from ground_truth.csv, flips.csv and
    metrics.json), or None when ``out`` is not one (``lrp report`` draws them again)."""
    out = Path(out)
    if not all((out / name).is_file() for name in ("ground_truth.csv", "flips.csv", "metrics.json")):
        return None
    planted = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["planted_regions"]
    table = pd.read_csv(out / "ground_truth.csv").astype({"rank_gain": "Int64", "rank_density": "Int64"})
    flips = pd.read_csv(out / "flips.csv", dtype={"subject": str})
    return lambda report: _conclusion(report, table, verdict(table, planted), flips, planted)


def _stage(config: DemoConfig, text: str) -> None:
    if config.progress:
        print(f"[lrp demo] {text}", flush=True)
