"""Training volume classifiers, saving them with their metadata, and predicting.

    result = train(PaperCNN3d.for_grid(shape), train_data, val_data, TrainConfig(epochs=30), out_dir="run/")
    model, info = load_model("run/")                 # run/model.json + run/model.pt
    table = predict(model, test_data)                # subject, label, prediction, prob_<class>...

``train`` writes ``checkpoint.pt`` after every epoch; running it again with the same ``out_dir``
resumes where it stopped and ends with the weights an uninterrupted run would have had. At the end
it writes ``model.pt`` (the best model's state dict, loadable with ``torch.load(weights_only=True)``)
and ``model.json`` (architecture, input shape, class names, preprocessing, training config and
metrics). Datasets yield dicts with ``x`` (C, *S) and ``y`` (see :mod:`lrp.data`) or (x, y) pairs.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .errors import DataError, NonFiniteError
from .files import atomic_path, write_text
from .models import DemoCNN3d, PaperCNN3d, SmallCNN2d
from .restore import borrowed

__all__ = ["ARCHITECTURES", "TrainConfig", "TrainResult", "build_model", "describe_architecture", "load_model",
           "predict", "save_model", "train"]

ARCHITECTURES: dict[str, type[nn.Module]] = {"PaperCNN3d": PaperCNN3d, "DemoCNN3d": DemoCNN3d, "SmallCNN2d": SmallCNN2d}
"""Built-in architectures that ``model.json`` can name (``{"name": ..., "kwargs": {...}}``)."""

CHECKPOINT, WEIGHTS, MODEL_INFO = "checkpoint.pt", "model.pt", "model.json"
_FORMAT_VERSION = 1
# config fields that change the course of training: a checkpoint resumes only under the same values
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "monitor", "class_balanced", "seed", "augment")


@dataclass
class TrainConfig:
    """How to train (Adam on cross-entropy).

    epochs: the most epochs to run. batch_size, lr, weight_decay: Adam's batches and settings.
    patience: stop after this many epochs without improvement of ``monitor`` on the validation data
        and keep the best epoch's weights; None = run all epochs (still keeping the best).
    monitor: "val_loss" (lower is better) or "val_acc" (higher is better, ties go to lower loss).
    class_balanced: weight the loss of class k by N / (K · N_k), so rare classes count as much as
        common ones; the validation loss uses the same weights.
    seed: seeds torch (initial RNG state for dropout), the shuffling and the augmentation.
    num_workers: DataLoader worker processes. device: "auto" (CUDA if available, else CPU), "cpu", "cuda:0", ...
    augment: flip each training volume along its first spatial axis (left-right in RAS/LAS voxel
        order) with probability 1/2. Off by default: left-right flips mix the hemispheres and so
        erase hemisphere-specific atrophy (Alzheimer's disease is often asymmetric, e.g. in the
        left hippocampus), which the model, and its LRP maps, should be able to show.
    """

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    patience: int | None = 10
    monitor: str = "val_loss"
    class_balanced: bool = False
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    augment: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 or None, got {self.patience}")
        if self.monitor not in ("val_loss", "val_acc"):
            raise ValueError(f"TrainConfig.monitor must be 'val_loss' or 'val_acc', got {self.monitor!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.num_workers < 0:
            raise ValueError(f"TrainConfig needs lr > 0, weight_decay >= 0 and num_workers >= 0, got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, num_workers={self.num_workers}")


@dataclass
class TrainResult:
    """What :func:`train` did.

    history: one row per epoch run (also the resumed ones): epoch, train_loss, train_acc, val_loss,
        val_acc (NaN without validation data), seconds.
    best_epoch: the epoch whose weights the model holds now (the last one without validation data).
    best_val_acc, best_val_loss: validation metrics of that epoch (NaN without validation data).
    stopped_early: True when patience ran out before ``epochs``.
    resumed_from: epochs already done in the checkpoint this run resumed from (0 for a fresh run).
    model_info: path of model.json, when ``out_dir`` was given.
    """

    history: pd.DataFrame
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    stopped_early: bool
    resumed_from: int
    model_info: Path | None


@dataclass
class _Progress:
    """The state a checkpoint carries between epochs (besides model, optimizer and RNGs)."""

    epoch: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_state: dict[str, Tensor] | None = None
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_acc: float = -math.inf
    stopped: bool = False


def train(model: nn.Module, train_data: Dataset, val_data: Dataset | None = None, config: TrainConfig | None = None,
          *, out_dir: str | Path | None = None, progress: bool = True, resume: bool = True,
          architecture: dict[str, Any] | None = None, class_names: Sequence[str] | None = None,
          preprocessing: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place with Adam and cross-entropy; at return it holds the best epoch's weights.

    model: maps x (B, C, *S) to logits (B, K). train_data, val_data: datasets of dicts with ``x``
    (C, *S) and ``y`` (int >= 0), or of (x, y) pairs.
    out_dir: where ``checkpoint.pt`` (every epoch), ``model.pt`` and ``model.json`` go; with
    ``resume`` an existing checkpoint there is continued (its config must match in the fields that
    change the course of training). architecture, class_names, preprocessing: for model.json;
    defaults: :func:`describe_architecture` (built-in models), the dataset's ``class_names`` (else
    "0", "1", ...), ``train_data.transform.to_dict()`` when it has one.
    The model's device and ``training`` flags are as before on return, also after an exception.
    """
    config = config or TrainConfig()
    device = _device(config.device)
    out_dir = None if out_dir is None else Path(out_dir)
    if out_dir is not None and architecture is None:
        architecture = describe_architecture(model)
    labels = _labels_of(train_data)
    if val_data is not None and len(val_data) == 0:
        raise DataError("the validation data are empty; pass val_data=None to train without validation")
    if len(labels) == 0 or (labels < 0).any():
        raise DataError(f"training data need a label >= 0 for every sample; {int((labels < 0).sum())} of "
                        f"{len(labels)} have none")
    sample = _unpack(train_data[0])[0]
    original_device = _device_of(model)
    training_flags = [(module, module.training) for module in model.modules()]
    try:
        model.to(device)
        classes = _probe_classes(model, sample, device)
        if labels.max() >= classes:
            raise DataError(f"training label {labels.max()} is out of range for a model with {classes} outputs")
        names = _class_names(class_names, train_data, classes)
        class_weights = _class_weights(labels, classes, device) if config.class_balanced else None
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        shuffle_generator = torch.Generator().manual_seed(config.seed)
        augment_generator = torch.Generator().manual_seed(config.seed + 1)
        checkpoint = None if out_dir is None else out_dir / CHECKPOINT
        if resume and checkpoint is not None and checkpoint.is_file():
            state = _resume(checkpoint, model, optimizer, config, shuffle_generator, augment_generator)
        else:
            torch.manual_seed(config.seed)
            state = _Progress()
        resumed_from = state.epoch
        train_loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, generator=shuffle_generator,
                                  num_workers=config.num_workers, pin_memory=device.type == "cuda")
        val_loader = None if val_data is None else DataLoader(
            val_data, batch_size=config.batch_size, num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda")
        with tqdm(total=config.epochs, initial=min(state.epoch, config.epochs), desc="training", unit="epoch",
                  disable=not progress) as bar:
            while state.epoch < config.epochs and not state.stopped:
                started = time.perf_counter()
                epoch = state.epoch + 1
                train_loss, train_acc = _fit_epoch(model, train_loader, optimizer, class_weights, device,
                                                   augment_generator if config.augment else None, epoch, progress)
                val_loss, val_acc = (math.nan, math.nan) if val_loader is None else _evaluate(
                    model, val_loader, class_weights, device)
                row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
                       "val_acc": val_acc, "seconds": time.perf_counter() - started}
                _record_epoch(state, row, model, config, has_validation=val_loader is not None)
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, model, optimizer, state, config, shuffle_generator,
                                     augment_generator)
                bar.set_postfix(train_loss=f"{train_loss:.4f}", train_acc=f"{train_acc:.3f}",
                                val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
                bar.update(1)
        if state.best_state is not None:
            model.load_state_dict(state.best_state)
        result = _result(state, config, resumed_from)
        if out_dir is not None:
            best = state.history[state.best_epoch - 1] if state.best_epoch else {}
            metrics = {"best_epoch": state.best_epoch, "epochs_run": state.epoch, "stopped_early": result.stopped_early,
                       **{key: best.get(key, math.nan) for key in ("train_loss", "train_acc", "val_loss", "val_acc")}}
            if preprocessing is None and hasattr(getattr(train_data, "transform", None), "to_dict"):
                preprocessing = train_data.transform.to_dict()
            result.model_info = save_model(model, out_dir, architecture=architecture, preprocessing=preprocessing,
                                           class_names=names, metrics=metrics, training=dataclasses.asdict(config),
                                           input_shape=tuple(sample.shape))
        return result
    finally:
        model.to(original_device)
        for module, flag in training_flags:
            module.training = flag


def predict(model: nn.Module, data: Dataset, *, batch_size: int = 8, device: str = "auto", progress: bool = True,
            num_workers: int = 0, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Class probabilities (softmax of the logits) for every sample of ``data``.

    Returns a table with one row per sample, in dataset order: subject (the data's names, or the
    sample's position for (x, y) datasets), patient (when the data give it), label (-1 = unknown),
    prediction (arg-max class), then ``prob_<class name>`` for each class (names: ``class_names``,
    else the data's, else 0, 1, ...).
    The model is left as it was (device, training flags, requires_grad).
    """
    if len(data) == 0:
        raise DataError("no samples to predict")
    target = _device(device)
    original_device = _device_of(model)
    loader = DataLoader(data, batch_size=batch_size, num_workers=num_workers)
    parts: list[pd.DataFrame] = []
    names: list[str] | None = None
    with borrowed(model), torch.no_grad():
        try:
            model.to(target)
            for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
                x, y = _unpack(batch)
                probabilities = F.softmax(model(x.to(target)), dim=1).cpu().numpy()
                names = names or _class_names(class_names, data, probabilities.shape[1])
                start = sum(len(part) for part in parts)
                part = pd.DataFrame({"subject": batch["subject"] if isinstance(batch, dict)
                                     else [str(i) for i in range(start, start + len(y))]})
                if isinstance(batch, dict) and "patient" in batch:
                    part["patient"] = batch["patient"]
                part["label"] = y.numpy()
                part["prediction"] = probabilities.argmax(1)
                for k, name in enumerate(names):
                    part[f"prob_{name}"] = probabilities[:, k]
                parts.append(part)
        finally:
            model.to(original_device)
    return pd.concat(parts, ignore_index=True)


# -- model files -----------------------------------------------------------------------------------
def save_model(model: nn.Module, out_dir: str | Path, *, architecture: dict[str, Any],
               preprocessing: dict[str, Any] | None, class_names: Sequence[str], metrics: dict[str, Any] | None,
               training: dict[str, Any] | None = None, input_shape: Sequence[int] | None = None) -> Path:
    """Write ``model.pt`` (state dict on CPU) and ``model.json`` into ``out_dir``, each atomically.

    architecture: ``{"name": "PaperCNN3d" | "DemoCNN3d" | "SmallCNN2d", "kwargs": {...}}`` or ``{"factory":
    "package.module:function", "kwargs": {...}}`` (a callable returning the model; dotted
    attributes work, e.g. ``"lrp.models:PaperCNN3d.for_grid"``); it must rebuild a model with this
    model's parameter names and shapes (checked on the meta device). input_shape: one sample's
    shape (C, *S); for built-in models it defaults to their grid. Returns the path of model.json.
    """
    spec = _checked_architecture(architecture)
    with torch.device("meta"):
        rebuilt = build_model(spec)
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in rebuilt.state_dict().items()}
    if expected != found:
        differing = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(f"architecture {spec} does not rebuild this model: parameters differ in {differing[:4]}")
    if input_shape is None and type(model) in _DESCRIBERS:
        input_shape = (model.features[0].in_channels, *model.input_shape)
    info = {"format": "pytorch-lrp model", "version": _FORMAT_VERSION, "architecture": spec, "weights": WEIGHTS,
            "input_shape": None if input_shape is None else [int(d) for d in input_shape],
            "class_names": [str(name) for name in class_names], "preprocessing": preprocessing,
            "training": training, "metrics": metrics}
    text = json.dumps(_jsonable(info), indent=2, allow_nan=False) + "\n"
    out_dir = Path(out_dir)
    with atomic_path(out_dir / WEIGHTS) as temporary:
        torch.save({name: value.detach().cpu() for name, value in model.state_dict().items()}, temporary)
    return write_text(out_dir / MODEL_INFO, text)


def load_model(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model saved by :func:`save_model` / :func:`train` (``path``: model.json or its folder), in
    eval mode on ``device``, and the contents of model.json.

    Weights are read with ``torch.load(weights_only=True)``. A ``factory`` architecture imports and
    calls the named function: load only model files you trust.
    """
    path = Path(path)
    info_path = path / MODEL_INFO if path.is_dir() else path
    if not info_path.is_file():
        raise DataError(f"{info_path}: no such file")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{info_path}: not a readable JSON file ({error})") from error
    if not isinstance(info, dict) or "architecture" not in info:
        raise DataError(f"{info_path}: not a model description (no 'architecture')")
    model = build_model(info["architecture"], where=str(info_path))
    weights_path = info_path.parent / info.get("weights", WEIGHTS)
    if not weights_path.is_file():
        raise DataError(f"{weights_path}: no such file (the weights named by {info_path})")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as error:
        raise DataError(f"{weights_path}: cannot load weights that fit the architecture of {info_path} ({error})") from error
    return model.to(_device(device)).eval(), info


def build_model(architecture: dict[str, Any], *, where: str = "architecture") -> nn.Module:
    """A fresh model from an architecture description (see :func:`save_model`); DataError naming
    ``where`` when it cannot be imported or built."""
    spec = _checked_architecture(architecture, where)
    factory = ARCHITECTURES[spec["name"]] if "name" in spec else _import_factory(spec["factory"], where)
    try:
        model = factory(**spec["kwargs"])
    except (TypeError, ValueError) as error:
        raise DataError(f"{where}: cannot build {spec} ({error})") from error
    if not isinstance(model, nn.Module):
        raise DataError(f"{where}: {spec} gave a {type(model).__name__}, not an nn.Module")
    return model


def _import_factory(name: str, where: str) -> Any:
    """The object named "package.module:attribute[.attribute...]"."""
    module_name, _, attribute = name.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as error:
        raise DataError(f"{where}: cannot import factory {name!r} ({error})") from error
    return factory


def describe_architecture(model: nn.Module) -> dict[str, Any]:
    """``{"name": ..., "kwargs": ...}`` rebuilding a built-in model (see ``ARCHITECTURES``) exactly;
    ValueError for other models, which need an explicit ``{"factory": "package.module:function", ...}``."""
    describe = _DESCRIBERS.get(type(model))
    if describe is None:
        raise ValueError(f"cannot describe a {type(model).__name__} by name; pass architecture={{'factory': "
                         f"'package.module:function', 'kwargs': {{...}}}} that rebuilds it")
    return {"name": type(model).__name__, "kwargs": describe(model)}


def _conv_kwargs(model: nn.Module) -> dict[str, Any]:
    """input_shape, channels, in_channels, num_classes of a built-in model (convs in ``features``)."""
    convs = [m for m in model.features if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return {"input_shape": list(model.input_shape), "channels": [conv.out_channels for conv in convs],
            "in_channels": convs[0].in_channels, "num_classes": model.classifier[-1].out_features}


_DESCRIBERS: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    PaperCNN3d: lambda model: {**_conv_kwargs(model), "hidden": model.classifier[1].out_features,
                               "dropout": model.classifier[0].p,
                               "pools": [int(m.kernel_size) for m in model.features if isinstance(m, nn.MaxPool3d)]},
    DemoCNN3d: lambda model: {**_conv_kwargs(model), "dropout": model.classifier[0].p},
    SmallCNN2d: lambda model: {**_conv_kwargs(model), "hidden": model.classifier[0].out_features},
}


def _checked_architecture(architecture: Any, where: str = "architecture") -> dict[str, Any]:
    if not isinstance(architecture, dict) or ("name" in architecture) == ("factory" in architecture):
        raise DataError(f"{where}: needs exactly one of 'name' (one of {sorted(ARCHITECTURES)}) or 'factory' "
                        f"('package.module:function'), got {architecture!r}")
    kwargs = architecture.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise DataError(f"{where}: 'kwargs' must be a mapping, got {kwargs!r}")
    if "name" in architecture:
        if architecture["name"] not in ARCHITECTURES:
            raise DataError(f"{where}: unknown architecture {architecture['name']!r}; built-in: {sorted(ARCHITECTURES)}")
        return {"name": architecture["name"], "kwargs": kwargs}
    if ":" not in str(architecture["factory"]):
        raise DataError(f"{where}: factory must read 'package.module:function', got {architecture['factory']!r}")
    return {"factory": str(architecture["factory"]), "kwargs": kwargs}


def _jsonable(value: Any) -> Any:
    """JSON-ready copy: tuples -> lists, numpy scalars -> Python, NaN / inf -> None, paths -> str."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# -- one epoch -------------------------------------------------------------------------------------
def _fit_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, class_weights: Tensor | None,
               device: torch.device, augment_generator: torch.Generator | None, epoch: int,
               progress: bool) -> tuple[float, float]:
    """One pass of Adam over ``loader``; returns the epoch's (weighted mean loss, accuracy)."""
    model.train()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, weight sum, correct, count
    with tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress) as batches:
        for batch in batches:
            x, y = _unpack(batch)
            if augment_generator is not None:
                x = _flip_first_axis(x, augment_generator)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            losses, weights = _weighted_losses(logits, y, class_weights)
            loss = losses.sum() / weights.sum()
            if not torch.isfinite(loss):
                raise NonFiniteError(f"training diverged: the loss is {loss.item()} in epoch {epoch}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals += _batch_totals(logits, y, losses, weights)
            batches.set_postfix(loss=f"{totals[0] / totals[1]:.4f}", acc=f"{totals[2] / totals[3]:.3f}")
    return float(totals[0] / totals[1]), float(totals[2] / totals[3])


def _evaluate(model: nn.Module, loader: DataLoader, class_weights: Tensor | None,
              device: torch.device) -> tuple[float, float]:
    """(weighted mean loss, accuracy) of ``model`` in eval mode over ``loader``."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            x, y = _unpack(batch)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            losses, weights = _weighted_losses(logits, y, class_weights)
            totals += _batch_totals(logits, y, losses, weights)
    return float(totals[0] / totals[1]), float(totals[2] / totals[3])


def _weighted_losses(logits: Tensor, y: Tensor, class_weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropy times its class weight (B,), and the weights (B,)."""
    weights = torch.ones_like(y, dtype=logits.dtype) if class_weights is None else class_weights[y]
    return F.cross_entropy(logits, y, reduction="none") * weights, weights


def _batch_totals(logits: Tensor, y: Tensor, losses: Tensor, weights: Tensor) -> Tensor:
    return torch.tensor([losses.detach().sum().item(), weights.sum().item(),
                         (logits.detach().argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)


def _flip_first_axis(x: Tensor, generator: torch.Generator) -> Tensor:
    """x (B, C, *S) with each sample flipped along its first spatial axis with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(2)
    return x


def _record_epoch(state: _Progress, row: dict[str, float], model: nn.Module, config: TrainConfig,
                  has_validation: bool) -> None:
    """Append ``row`` to the history, keep the weights if they are the best so far, decide on stopping."""
    state.history.append(row)
    state.epoch = int(row["epoch"])
    if config.monitor == "val_loss":
        improved = row["val_loss"] < state.best_val_loss
    else:
        improved = row["val_acc"] > state.best_val_acc or (row["val_acc"] == state.best_val_acc
                                                           and row["val_loss"] < state.best_val_loss)
    if improved or not has_validation:
        state.best_state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        state.best_epoch, state.best_val_loss, state.best_val_acc = state.epoch, row["val_loss"], row["val_acc"]
    if has_validation and config.patience is not None and state.epoch - state.best_epoch >= config.patience:
        state.stopped = True


def _result(state: _Progress, config: TrainConfig, resumed_from: int) -> TrainResult:
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    return TrainResult(
        history=pd.DataFrame(state.history, columns=["epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                                     "seconds"]),
        best_epoch=state.best_epoch, best_val_acc=float(best.get("val_acc", math.nan)),
        best_val_loss=float(best.get("val_loss", math.nan)),
        stopped_early=state.stopped and state.epoch < config.epochs, resumed_from=resumed_from, model_info=None)


# -- checkpoints -----------------------------------------------------------------------------------
def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: _Progress,
                     config: TrainConfig, shuffle_generator: torch.Generator,
                     augment_generator: torch.Generator) -> None:
    payload = {
        "format": "pytorch-lrp checkpoint", "version": _FORMAT_VERSION, "config": dataclasses.asdict(config),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": dict(vars(state)),
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle_generator.get_state(),
                "augment": augment_generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []},
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
            shuffle_generator: torch.Generator, augment_generator: torch.Generator) -> _Progress:
    """Load a checkpoint into model, optimizer and RNGs; returns the training progress it holds."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved = payload["config"]
        different = [f"{name}: {saved.get(name)!r} there, {getattr(config, name)!r} now"
                     for name in _TRAJECTORY_FIELDS if saved.get(name) != getattr(config, name)]
        if different:
            raise DataError(f"{path}: written with another training config ({'; '.join(different)}); delete it, "
                            f"use another output folder or resume=False")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        shuffle_generator.set_state(rng["shuffle"])
        augment_generator.set_state(rng["augment"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return _Progress(**payload["progress"])
    except DataError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise DataError(f"{path}: cannot resume from this checkpoint ({type(error).__name__}: {error}); delete it "
                        f"or pass resume=False") from error


# -- small helpers ---------------------------------------------------------------------------------
def _unpack(sample: Any) -> tuple[Tensor, Tensor]:
    """(x, y) from a dict with ``x`` and ``y`` or from an (x, y) pair (single samples or batches)."""
    if isinstance(sample, dict):
        x, y = sample["x"], sample["y"]
    elif isinstance(sample, (tuple, list)) and len(sample) >= 2:
        x, y = sample[0], sample[1]
    else:
        raise TypeError(f"datasets must yield dicts with 'x' and 'y' or (x, y) pairs, got {type(sample).__name__}")
    return torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)


def _labels_of(data: Dataset) -> np.ndarray:
    """The labels (N,): ``data.labels`` when the dataset has them, else read sample by sample."""
    labels = getattr(data, "labels", None)
    if labels is None:
        labels = [int(_unpack(data[i])[1]) for i in range(len(data))]
    return np.asarray(labels, dtype=np.int64)


def _probe_classes(model: nn.Module, sample: Tensor, device: torch.device) -> int:
    """Number of model outputs, from one forward pass in eval mode (also checks the input shape)."""
    with borrowed(model), torch.no_grad():
        try:
            output = model(sample[None].to(device))
        except RuntimeError as error:
            raise DataError(f"the model does not accept a training sample of shape {tuple(sample.shape)}: "
                            f"{error}") from error
    if output.dim() != 2:
        raise DataError(f"the model must return logits (B, K) for classification, got shape {tuple(output.shape)}")
    return int(output.shape[1])


def _class_names(given: Sequence[str] | None, data: Dataset, classes: int) -> list[str]:
    names = given if given is not None else getattr(data, "class_names", None)
    if names is None:
        return [str(k) for k in range(classes)]
    if len(names) != classes:
        raise DataError(f"{len(names)} class names {list(names)} for a model with {classes} outputs")
    return [str(name) for name in names]


def _class_weights(labels: np.ndarray, classes: int, device: torch.device) -> Tensor:
    """N / (K · N_k) for each class k (K = number of model outputs)."""
    counts = np.bincount(labels, minlength=classes)
    if (counts == 0).any():
        raise DataError(f"class_balanced needs every class in the training data; counts per class: {counts.tolist()}")
    return torch.as_tensor(len(labels) / (classes * counts), dtype=torch.float32, device=device)


def _device(name: str | torch.device) -> torch.device:
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device
