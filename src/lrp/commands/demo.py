"""``lrp demo``: a synthetic Alzheimer's cohort from a real brain, trained, explained and reported."""
from __future__ import annotations

import argparse

from .options import comma_list

__all__ = ["register"]


def _severity(text: str) -> tuple[float, float]:
    values = [float(item) for item in comma_list(text)]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0 <= values[0] <= values[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 <= LOW <= HIGH <= 1, got {text!r}")
    return values[0], values[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import DemoConfig

    defaults = DemoConfig()
    severity = ",".join(f"{value:g}" for value in defaults.severity)
    parser = subparsers.add_parser(
        "demo", help="the whole study on a synthetic AD cohort built from Colin27 + AAL, with a known answer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""Generate a synthetic Alzheimer's cohort from the Colin27 brain and the AAL atlas (Debian's
mricron-data), with atrophy planted in chosen regions of the AD subjects; split it by subject; train the demo
CNN; explain every test subject with LRP (the paper's alpha1-beta0 and the recommended composite), guided
backprop and the gradient; analyse the relevance by region; check it against the planted truth; write figures
and report.html. Default: {defaults.subjects} subjects at {defaults.resolution:g} mm, about 5 minutes on 2 cores.

Outputs in --out: cohort/ (subjects as NIfTI + manifest.csv), split/, model.pt + model.json,
maps/<method>/<subject>.nii.gz, predictions.csv, regions.csv (subject x region x method), summary.csv
(method x region: group means, density, gain, ranks), overlap.csv, correlation.csv (relevance of the first
planted region vs its volume, permutation test), ground_truth.csv (method, region, rank_gain, rank_density,
mass_inside, volume_share, enrichment, ...; methods include oracle), flips.csv, group_means/<method>_<group>.nii.gz,
metrics.json (test_accuracy, confusion matrix, flips under region replacement), figures/, report.html.""")
    parser.add_argument("--out", default=defaults.out, help=f"output folder (default: {defaults.out})")
    parser.add_argument("--subjects", type=int, default=defaults.subjects,
                        help=f"cohort size, half AD (default: {defaults.subjects})")
    parser.add_argument("--resolution", type=float, default=defaults.resolution,
                        help=f"voxel size in mm, 1 to 4 (default: {defaults.resolution:g})")
    parser.add_argument("--atrophy", type=comma_list, default=defaults.atrophy,
                        help="planted regions: AAL names (Hippocampus_L) or merged names (Hippocampus) "
                             f"(default: {','.join(defaults.atrophy)})")
    parser.add_argument("--severity", type=_severity, default=defaults.severity,
                        help=f"LOW,HIGH fraction of tissue lost in AD (default: {severity})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of cohort, split and training")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs (default: "
                                                                            f"{defaults.epochs})")
    parser.add_argument("--methods", type=comma_list, default=defaults.methods,
                        help=f"method specs (see lrp study --help) (default: {','.join(defaults.methods)})")
    parser.add_argument("--t1-contrast", dest="invert", action="store_false",
                        help="train on the T1 contrast as it is (default: inverted, CSF bright; see the report)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    config = DemoConfig(out=options.out, subjects=options.subjects, resolution=options.resolution,
                        atrophy=options.atrophy, severity=options.severity, seed=options.seed, epochs=options.epochs,
                        methods=options.methods, invert=options.invert, progress=not options.quiet)
    result = run_demo(config)
    metrics = result.metrics
    print(f"\ntest accuracy {metrics['test_accuracy']:.1%} on {metrics['test_subjects']} subjects; replacing the "
          f"planted regions flips {metrics['flips']['flipped']} of {metrics['flips']['predicted_ad']} AD predictions")
    print(result.verdicts.to_string(index=False, float_format="{:.2f}".format))
    print(f"report: {result.study.out / 'report.html'}")
    return 0
