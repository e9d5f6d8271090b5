"""``lrp report``: draw the figures and write report.html of a finished study again."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="redraw the figures and report.html of an lrp study / regions / demo output folder",
        description="Read a finished study back from its folder (study.json, predictions.csv, subjects.csv, "
                    "maps.csv, regions.csv, summary.csv, overlap.csv, correlation.csv, errors.csv, "
                    "group_means/, anatomy.nii.gz; for lrp demo also ground_truth.csv, flips.csv, metrics.json) "
                    "and write its figures/ and report.html again, e.g. after the maps were produced elsewhere or "
                    "with --no-figures. Outputs in the folder: figures/*.png, report.html.")
    parser.add_argument("folder", help="output folder of lrp study, lrp regions or lrp demo")
    parser.add_argument("--title", default="LRP study", help="report title (default: LRP study)")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from ..demo import ground_truth_section
    from ..study import load_study
    from ..study_report import study_figures, study_report

    result, config = load_study(options.folder)
    figures = study_figures(result, config, result.mean_input)
    path = study_report(result, config, figures, title=options.title,
                        conclusion=ground_truth_section(options.folder))
    print(f"report: {path}")
    return 0
