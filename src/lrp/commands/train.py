"""``lrp train``: train a built-in model or your own factory on volumes, with checkpoints."""
from __future__ import annotations

import argparse

from .options import comma_list

__all__ = ["MODELS", "register"]

MODELS = {"demo": "DemoCNN3d", "paper": "PaperCNN3d"}
"""Built-in model names of ``--model`` and their classes in :mod:`lrp.models`."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a 3D CNN on a split; writes model.pt + model.json",
        description="Train on --train (validation on --val), or on the train.csv / val.csv of --split, read "
                    "from --data. --model: demo (4 conv blocks with padding + linear head, for 2-4 mm grids), "
                    "paper (the 3D CNN of Boehle et al. 2019, sized to the grid) or package.module:function "
                    "(called with input_shape=(D, H, W)). Volumes are min-max normalised per volume (as the "
                    "paper did). Outputs in --out: checkpoint.pt (each epoch; a rerun resumes from it), "
                    "model.pt (state dict of the best epoch), model.json (architecture, preprocessing, "
                    "class names, training settings, metrics).")
    parser.add_argument("--data", help="data source the split refers to (.h5 / NIfTI folder / manifest CSV)")
    parser.add_argument("--split", help="folder with train.csv and val.csv from lrp split")
    parser.add_argument("--train", help="training data (instead of --data/--split)")
    parser.add_argument("--val", help="validation data (instead of --data/--split)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", default="demo", help="demo, paper or package.module:function (default: demo)")
    parser.add_argument("--class-names", type=comma_list, help="names of labels 0, 1, ... (default: from the data)")
    parser.add_argument("--mask", help="brain mask NIfTI on the volumes' grid, applied after min-max")
    parser.add_argument("--invert", action="store_true",
                        help="invert the contrast inside the brain (CSF bright), so that LRP can credit atrophy")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--patience", type=int, default=10, help="epochs without improvement before stopping")
    parser.add_argument("--class-balanced", action="store_true", help="weight the loss by inverse class frequency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--device", default="auto", help="cpu, cuda, auto (default)")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..data import Preprocess, open_source
    from ..errors import DataError
    from ..train import TrainConfig, build_model, train

    preprocess = Preprocess(minmax=True, mask=options.mask, invert=options.invert)
    if options.split:
        if not options.data:
            raise DataError("--split needs --data, the source its CSV files select from")
        data = open_source(options.data, transform=preprocess, classes=options.class_names)
        train_data = data.select(Path(options.split) / "train.csv")
        val_data = data.select(Path(options.split) / "val.csv")
    elif options.train:
        train_data = open_source(options.train, transform=preprocess, classes=options.class_names)
        val_data = open_source(options.val, transform=preprocess, classes=options.class_names) if options.val else None
    else:
        raise DataError("give --data with --split, or --train (and --val)")
    shape = [int(d) for d in train_data[0]["x"].shape[1:]]
    architecture = ({"name": MODELS[options.model], "kwargs": {"input_shape": shape}} if options.model in MODELS
                    else {"factory": options.model, "kwargs": {"input_shape": shape}})
    torch.manual_seed(options.seed)
    model = build_model(architecture)
    config = TrainConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                         weight_decay=options.weight_decay, patience=options.patience,
                         class_balanced=options.class_balanced, seed=options.seed, num_workers=options.workers,
                         device=options.device)
    result = train(model, train_data, val_data, config, out_dir=options.out, architecture=architecture,
                   class_names=options.class_names)
    print(result.history.to_string(index=False))
    print(f"best epoch {result.best_epoch}: validation accuracy {result.best_val_acc:.3f}; model in {options.out}")
    return 0
