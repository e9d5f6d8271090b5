"""``lrp explain``: explain a whole data set, streaming and resumable, in one process or many under
torchrun (see :mod:`lrp.streaming`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import comma_list

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["register"]

BUILTIN_MODELS = {"demo": {"name": "DemoCNN3d"}, "paper": {"factory": "lrp.models:PaperCNN3d.for_grid"}}
"""``--model`` names of the reference models of :mod:`lrp.models`, built for the data's grid."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="explain every subject of a data set: maps, predictions, regions, group means "
                        "(streaming, resumable, several processes with torchrun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Explain every volume of a data set with one or more methods, in one pass.

Inputs: --data, a folder of NIfTI files, a CSV manifest (columns path, and optionally label, subject,
patient and covariates) or an HDF5 file (X, y; give --reference for its grid); --model, the model.json
written by lrp train / lrp demo (architecture, classes, preprocessing; weights beside it), or a
built-in model (demo = DemoCNN3d, paper = PaperCNN3d, built for the data's grid) or a factory
package.module:function, with --weights W.pt: a state dict, loaded with torch.load(weights_only=True);
a file holding pickled Python objects is refused. Preprocessing as in the paper: min-max scaling per
volume, optional brain mask (--mask), resampling to the model's grid (--grid).

Outputs in --out (each file written under a temporary name, then renamed):
  maps/<method>/<subject>.nii.gz        float32 relevance on the model's grid, in the input's space
  predictions.csv                       subject, patient, label, prediction, prob_<class>..., group_true,
                                        group_pred, outcome (TP, TN, FP, FN)
  regions.csv (with --atlas)            subject, region_id, region, voxels, volume_mm3, sum, density,
                                        positive, negative, share, method
  errors.csv                            subject, method ('' = input unreadable), error
  group_means/<method>_<group>.nii.gz   mean map per true class, per outcome (TP, TN, FP, FN) and per
                                        predicted class of unlabelled subjects (running sums)
  explain.json, .explain/               the settings and per-subject records used to resume
The layout is that of lrp study, so lrp regions and lrp study can use these outputs.

Resuming: run the same command again; subjects whose maps and records are complete and valid are
skipped, the tables and group means come out as from an uninterrupted run. Unreadable inputs are
listed in errors.csv and skipped. Several processes: torchrun --nproc_per_node N --no-python lrp
explain ... shards the subjects by rank (gloo on CPU, nccl on GPU: one GPU per process) and rank 0
merges the tables and group means. The last line reads: done N, skipped M, failed K.""")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--data", required=True, help="NIfTI folder, CSV manifest or HDF5 file")
    inputs.add_argument("--model", required=True,
                        help="model.json (or its folder), demo, paper, or package.module:function")
    inputs.add_argument("--weights", help="state dict (.pt) for a built-in or factory model (replaces the weights "
                                          "of a model.json)")
    inputs.add_argument("--model-args", type=_json_object, default={},
                        help="JSON keyword arguments for a built-in or factory model, e.g. '{\"channels\": [4, 8]}'")
    inputs.add_argument("--class-names", type=comma_list,
                        help="names of the model's outputs 0, 1, ... (default: model.json's, else HC,AD)")
    inputs.add_argument("--reference", help="NIfTI on the grid of HDF5 volumes (gives their affine)")
    preprocessing = parser.add_argument_group("preprocessing (default: model.json's; for other models min-max)")
    preprocessing.add_argument("--minmax", action=argparse.BooleanOptionalAction, default=None,
                               help="scale each volume to [0, 1] by its minimum and maximum")
    preprocessing.add_argument("--mask", help="brain mask NIfTI on the model's grid; voxels outside are set to 0")
    preprocessing.add_argument("--grid", type=_grid, help="resample volumes to this grid, D,H,W (e.g. 64,76,64)")
    methods = parser.add_argument_group("methods")
    methods.add_argument("--method", default="lrp", help="lrp, gradient, gradient_x_input, guided_backprop, "
                                                         "deconvnet, integrated_gradients, smoothgrad, occlusion")
    methods.add_argument("--composite", help="LRP composite (default: alpha1-beta0), e.g. epsilon, alpha2-beta1")
    methods.add_argument("--methods", type=comma_list,
                         help="several method specs in one pass, e.g. lrp:alpha1-beta0,lrp:epsilon,guided_backprop "
                              "(replaces --method and --composite)")
    methods.add_argument("--start", choices=("probability", "logit"), default="probability",
                         help="what LRP distributes: the class's softmax probability (default, as lrp study and the "
                              "paper) or its logit")
    methods.add_argument("--target", type=_target, default=1,
                         help="explained class index, or 'predicted' for each subject's prediction (default: 1, the "
                              "disease, as in the paper)")
    atlas = parser.add_argument_group("regions and groups")
    atlas.add_argument("--atlas", help="aal, harvard-oxford, brodmann, or a label NIfTI: writes regions.csv "
                                       "(default: none)")
    atlas.add_argument("--atlas-labels", help="label table of a custom atlas: AAL-style text, TSV/CSV, FSL XML")
    atlas.add_argument("--merge-hemispheres", action="store_true", help="merge left and right labels into one area")
    atlas.add_argument("--positive", default="AD", help="disease class name, for TP/FN (default: AD)")
    atlas.add_argument("--negative", default="HC", help="control class name, for TN/FP (default: HC)")
    running = parser.add_argument_group("running")
    running.add_argument("--out", required=True, help="output folder (a rerun resumes there)")
    running.add_argument("--device", default="cpu", help="cpu, cuda (one GPU per process under torchrun) or auto "
                                                         "(default: cpu)")
    running.add_argument("--workers", type=_count, default=2, help="DataLoader processes reading ahead (default: 2)")
    running.add_argument("--batch-size", type=_positive, default=1,
                         help="subjects per pass (default: 1, which keeps every map independent of the others)")
    running.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    from ..data import Preprocess, open_source
    from ..distributed import world
    from ..errors import DataError
    from ..neuro.atlas import load_atlas
    from ..streaming import explain_dataset
    from ..study import study_grid
    from ..train import load_model

    with world(options.device) as processes:
        device = processes.device(options.device)
        model, info = (load_model(options.model, device=str(device)) if _is_model_file(options.model)
                       else (None, {}))
        class_names = options.class_names or info.get("class_names") or ["HC", "AD"]
        preprocess = Preprocess.from_dict(_preprocessing(info, options))
        data = open_source(options.data, transform=preprocess, classes=class_names)
        shape, affine = study_grid(data, preprocess, options.reference)
        if model is None:
            if not options.weights:
                raise DataError(f"--model {options.model}: give its trained weights with --weights W.pt (a state dict)")
            model = _built_model(options.model, options.model_args, shape, len(class_names))
        if options.weights:
            _load_weights(model, options.weights)
        atlas = None
        if options.atlas:
            atlas = load_atlas(options.atlas, options.atlas_labels)
            atlas = (atlas.merge_hemispheres() if options.merge_hemispheres else atlas).resample_to((shape, affine))
        result = explain_dataset(
            model.to(device).eval(), data, _method_specs(options), options.out, grid=(shape, affine),
            target=options.target, atlas=atlas, class_names=class_names, positive=options.positive,
            negative=options.negative, batch_size=options.batch_size, num_workers=options.workers,
            progress=not options.quiet, world=processes, start=options.start)
        if processes.is_main:
            print(f"outputs in {result.out}")
            print(result.summary())
    return 0


def _is_model_file(spec: str) -> bool:
    path = Path(spec)
    return path.suffix.lower() == ".json" or (path.is_dir() and (path / "model.json").is_file())


def _preprocessing(info: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """The model's preprocessing (model.json's, else min-max as in the paper) with the flags given applied."""
    saved = info.get("preprocessing") or ({"minmax": True} if not info else {"minmax": False})
    chosen = {"minmax": saved.get("minmax", False), "mask": saved.get("mask"), "grid": saved.get("grid")}
    given = {"minmax": options.minmax, "mask": options.mask, "grid": options.grid}
    return chosen | {key: value for key, value in given.items() if value is not None}


def _built_model(spec: str, model_args: dict[str, Any], shape: tuple[int, ...], classes: int) -> nn.Module:
    """A built-in model for ``shape`` with ``classes`` outputs, or the model of a factory."""
    from ..errors import DataError
    from ..train import build_model

    if spec in BUILTIN_MODELS:
        architecture = {**BUILTIN_MODELS[spec], "kwargs": {"input_shape": list(shape), "num_classes": classes,
                                                           **model_args}}
    elif ":" in spec:
        architecture = {"factory": spec, "kwargs": model_args}
    else:
        raise DataError(f"--model {spec!r}: not a model.json (or a folder with one), a built-in model "
                        f"({', '.join(BUILTIN_MODELS)}) or a factory package.module:function")
    return build_model(architecture, where=f"--model {spec}")


def _load_weights(model: nn.Module, path: str) -> None:
    """Load the state dict at ``path`` into ``model`` with ``torch.load(weights_only=True)`` only: a file
    holding pickled Python objects is refused (DataError), as is one that does not fit the model."""
    import pickle
    import re

    import torch

    from ..errors import DataError

    if not Path(path).is_file():
        raise DataError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise DataError(f"--weights {path}: refused: the file holds a pickled Python object ({found.group(1)}), "
                            f"which could run arbitrary code when loaded. lrp loads weights with torch.load("
                            f"weights_only=True) only; save a state dict instead: torch.save(model.state_dict(), "
                            f"path)") from None
        raise DataError(f"--weights {path}: not a weights file torch.load(weights_only=True) can read") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise DataError(f"--weights {path}: not a readable weights file ({error})") from None
    state = _state_dict(state)
    if state is None:
        raise DataError(f"--weights {path}: holds no state dict (a mapping of parameter names to tensors)")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(f"--weights {path}: the weights do not fit the model ({error})") from None


def _state_dict(loaded: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in what ``torch.load`` returned: itself, or a checkpoint's "model" / "state_dict" entry."""
    import torch

    for candidate in (loaded, *(loaded.get(key) for key in ("state_dict", "model") if isinstance(loaded, dict))):
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            return candidate
    return None


def _method_specs(options: argparse.Namespace) -> list[str]:
    if options.methods:
        return options.methods
    if options.method == "lrp":
        return [f"lrp:{options.composite or 'alpha1-beta0'}"]
    if options.composite:
        raise SystemExit(f"lrp explain: --composite applies to --method lrp, not {options.method}")
    return [options.method]


def _target(text: str) -> int | None:
    if text.strip().lower() == "predicted":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index or 'predicted', got {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"channels\": [4, 8]}}', got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _grid(text: str) -> list[int]:
    try:
        shape = [int(item) for item in comma_list(text)]
    except ValueError:
        shape = []
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers D,H,W, got {text!r}")
    return shape
