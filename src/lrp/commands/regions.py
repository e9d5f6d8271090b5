"""``lrp regions``: relevance per atlas region, group statistics and figures from existing maps."""
from __future__ import annotations

import argparse

from .options import add_analysis_options, add_atlas_options, analysis_overrides, comma_list

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "regions", help="per-region relevance, group means, gain and figures from relevance NIfTI files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Analyse per-subject relevance maps by atlas region.

Inputs: --maps, a folder of <subject>.nii.gz maps, a folder of per-method folders (the maps/ folder of
lrp study), or a CSV with columns path, subject and optionally method, label, prediction; --subjects, a
CSV with columns subject, label, prediction (class names or indices into --class-names) and any
covariates (not needed when the maps CSV has label and prediction); --atlas. The atlas is resampled
(nearest neighbour, affine-aware) to the maps' grid; every map must be on one grid and finite.

Outputs in --out: regions.csv (subject, region_id, region, voxels, volume_mm3, sum, density, positive,
negative, share, method), summary.csv (method x region: group means sum_<group>, density_<group>, gain,
rank_sum, rank_density, rank_gain), overlap.csv (with several methods), correlation.csv (with
--covariate), group_means/<method>_<group>.nii.gz, figures/, report.html; the top regions on screen.""")
    parser.add_argument("--maps", required=True, help="maps folder or CSV")
    parser.add_argument("--subjects", help="CSV with subject, label, prediction (+ covariates)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--class-names", type=comma_list, default=["HC", "AD"],
                        help="class names of label indices 0, 1, ... (default: HC,AD)")
    parser.add_argument("--background", help="anatomy under the figures, on the maps' grid (default: Colin27)")
    add_atlas_options(parser)
    add_analysis_options(parser)
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import DataError
    from ..study import StudyConfig, analyse_maps, read_maps_table
    from ..study_report import study_figures, study_report
    from .console import print_top_regions

    maps = read_maps_table(options.maps)
    if options.subjects:
        subjects = pd.read_csv(options.subjects, dtype={"subject": str})
    elif {"label", "prediction"} <= set(maps.columns):
        subjects = maps.drop(columns=["path", "method"]).drop_duplicates("subject")
    else:
        raise DataError(f"{options.maps}: the maps carry no label and prediction; give --subjects")
    overrides = {key: value for key, value in analysis_overrides(options).items() if value is not None}
    config = StudyConfig(data=options.maps, model=None, out=options.out, **overrides)
    result = analyse_maps(maps, subjects, config, class_names=options.class_names, background=options.background)
    if config.figures:
        study_report(result, config, study_figures(result, config, result.mean_input), title="LRP regions")
    print_top_regions(result)
    return 0
