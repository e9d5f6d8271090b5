"""``lrp split``: a patient-wise, stratified, seeded train / validation / test split."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "split", help="split a data set by patient into train.csv, val.csv and test.csv",
        description="Split --data (an .h5 file, a NIfTI folder or a manifest CSV) by patient: all scans of a "
                    "patient go to one side, each class is split alike (stratified), the same seed gives the "
                    "same split. Outputs in --out: train.csv, val.csv, test.csv (the manifest's rows: subject, "
                    "patient, label, covariates, path for NIfTI data), each usable as --data or as a selection.")
    parser.add_argument("--data", required=True, help="data source: .h5 / NIfTI folder / manifest CSV")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--test-per-class", type=int, help="test patients per class (as the paper did)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="test share per class (default: 0.2)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="validation share per class (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from ..data import open_source, split_patients, write_split

    data = open_source(options.data)
    split = split_patients(data.manifest, test_per_class=options.test_per_class, val_fraction=options.val_fraction,
                           test_fraction=options.test_fraction, seed=options.seed)
    paths = write_split(split, options.out)
    counts = split.groupby(["split", "label"]).size().unstack(fill_value=0)
    print(counts.to_string())
    print("written: " + ", ".join(str(path) for path in paths.values()))
    return 0
