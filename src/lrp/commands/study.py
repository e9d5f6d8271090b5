"""``lrp study``: the paper's evaluation on a hold-out set (see :mod:`lrp.study`)."""
from __future__ import annotations

import argparse

from .options import add_analysis_options, add_atlas_options, analysis_overrides, comma_list, float_list

__all__ = ["register"]


def _target(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="explain a hold-out set region by region: maps, tables, group means, figures, report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""The paper's evaluation in one command: predictions and groups (AD/HC/TP/TN/FP/FN), a
relevance map per subject and method, relevance per atlas region, group mean maps, gain, rankings, top-k
overlap between methods (the beta sweep), correlation with a covariate, figures and report.html.

Inputs: --data (an .h5 file with X and y, a folder of NIfTI files, or a CSV manifest with path, label,
subject, covariates), --model (model.json written by lrp train / lrp demo, weights beside it), or a
study file (--config study.toml, top-level keys = the long option names with _ for -).

Outputs in --out: predictions.csv (subject, patient, label, prediction, prob_<class>, group_true,
group_pred, outcome), maps/<method>/<subject>.nii.gz, regions.csv (subject, region_id, region, voxels,
volume_mm3, sum, density, positive, negative, share, method), summary.csv (method x region: group means
sum_<group>, density_<group>, gain, rank_sum, rank_density, rank_gain), overlap.csv (run_a, run_b, k,
intersection, jaccard, shared, by), correlation.csv, group_means/<method>_<group>.nii.gz, errors.csv,
figures/, report.html. A rerun reuses complete maps.""")
    parser.add_argument("--config", help="study file (TOML); flags override its values")
    parser.add_argument("--data", help="hold-out data: .h5 / NIfTI folder / manifest CSV")
    parser.add_argument("--model", help="model.json (or its folder)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--methods", type=comma_list,
                        help="comma-separated method specs, e.g. lrp:alpha1-beta0,lrp:epsilon,guided_backprop,"
                             "gradient (default: lrp:alpha1-beta0,guided_backprop)")
    parser.add_argument("--betas", type=float_list, help="add LRP alpha-beta for these betas (alpha = 1 + beta), "
                                                         "e.g. the paper's 0,0.25,0.5,0.75,1")
    parser.add_argument("--target", type=_target,
                        help="explained class: an index, a class name, or 'predicted' (default: the --positive "
                             "class, AD, as in the paper)")
    parser.add_argument("--start", choices=("probability", "logit"),
                        help="what LRP distributes: the class's softmax probability (default, as the paper) or logit")
    parser.add_argument("--reference", help="NIfTI on the grid of HDF5 volumes (gives their affine)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--batch-size", type=int, help="volumes per forward pass when predicting (default: 4)")
    add_atlas_options(parser)
    add_analysis_options(parser)
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from ..study import StudyConfig, run_study
    from ..study_report import study_figures, study_report
    from .console import print_top_regions

    overrides = {"data": options.data, "model": options.model, "out": options.out, "methods": options.methods,
                 "betas": options.betas, "target": options.target, "start": options.start, "reference": options.reference,
                 "device": options.device, "batch_size": options.batch_size, **analysis_overrides(options)}
    if options.config:
        config = StudyConfig.from_toml(options.config, **overrides)
    else:
        missing = [f"--{name}" for name in ("data", "model", "out") if overrides[name] is None]
        if missing:
            raise SystemExit(f"lrp study: give {', '.join(missing)} (or a study file with --config)")
        config = StudyConfig(**{key: value for key, value in overrides.items() if value is not None})
    if config.target == "predicted":
        config.target = None
    result = run_study(config)
    if config.figures:
        study_report(result, config, study_figures(result, config, result.mean_input), title="LRP study")
    print_top_regions(result)
    return 0
