"""Model-parameter randomisation test: does the explanation change when the model's weights do?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity checks for saliency maps", NeurIPS 2018.
The layers with parameters are re-initialised one after another from the top (output) layer down,
on a deep copy of the model, and each randomised model is explained again; an explanation that
stays rank-correlated with the original (Spearman) does not depend on what the model learned.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import ConstantInputWarning, spearmanr
from torch import Tensor, nn

from ..restore import borrowed
from ..targets import TargetSpec
from .explainers import Explainer, check_batch, class_targets, explain_with

__all__ = ["LAYER_ORDERS", "model_randomisation", "parameter_layers", "randomised_correlation", "rank_correlation"]

LAYER_ORDERS = ("execution", "modules")
"""How layers are ordered before reversing: by first call in a forward pass, or by ``named_modules``."""


def model_randomisation(model: nn.Module, x: Tensor, explainer: Explainer, target: TargetSpec = None, *,
                        layers: Sequence[str] | None = None, order: str = "execution", cascading: bool = True,
                        absolute: bool = False, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation between the explanation of ``model`` and those of randomised copies.

    Args:
        model: classifier returning (N, classes); never modified (all work happens on a deep copy).
        x: input (N, ...), passed to ``explainer(model, x, target)``; its relevance must be shaped like ``x``.
        target: the explained class (None = the arg-max of the intact model, kept for all steps).
        layers: module names to randomise, top first; default: every module with parameters of its own,
            in reverse ``order``.
        order: ``"execution"`` (reverse order of first call in a forward pass on ``x``) or ``"modules"``
            (reverse ``named_modules`` order).
        cascading: True re-initialises the layers cumulatively (step k: the top k layers random); False
            re-initialises one layer at a time (independent randomisation).
        absolute: correlate absolute relevance values.
        seed: layer k (0 = top) is re-initialised from seed + k, so results are reproducible and the
            last cascading step equals :func:`randomised_correlation` with the same seed.

    Re-initialising a layer calls its ``reset_parameters()`` (the layer's own initialiser, which also
    resets e.g. BatchNorm running statistics) on the CPU with a seeded generator; a layer without one
    gets normal values with its parameters' mean and standard deviation.

    Returns:
        one row per step: ``step`` (1 .. L), ``layer`` (the module re-initialised at that step),
        ``correlation`` (mean over samples, ignoring NaN), ``sample_0`` .. ``sample_{N-1}`` (per sample;
        NaN where a map is constant).
    """
    check_batch(x, spatial=False)
    working = copy.deepcopy(model)
    names = _chosen_layers(working, x, layers, order)
    classes = class_targets(working, x, target)
    original = explain_with(explainer, working, x, classes)
    intact = copy.deepcopy(working) if not cascading else None
    rows = []
    for step, name in enumerate(names):
        randomised = working if cascading else copy.deepcopy(intact)
        _reinitialise(randomised.get_submodule(name), seed + step)
        per_sample = rank_correlation(original, explain_with(explainer, randomised, x, classes), absolute)
        rows.append({"step": step + 1, "layer": name, "correlation": pd.Series(per_sample).mean(),
                     **{f"sample_{i}": value for i, value in enumerate(per_sample)}})
    return pd.DataFrame(rows)


def randomised_correlation(model: nn.Module, x: Tensor, explainer: Explainer, target: TargetSpec = None, *,
                           order: str = "execution", absolute: bool = False, seed: int = 0) -> np.ndarray:
    """Per-sample Spearman correlation (N,) between the explanation of ``model`` and that of a deep copy
    with every parameter layer re-initialised: the last step of a cascading :func:`model_randomisation`
    with the same arguments, for the cost of two explanations."""
    check_batch(x, spatial=False)
    working = copy.deepcopy(model)
    names = _chosen_layers(working, x, None, order)
    classes = class_targets(working, x, target)
    original = explain_with(explainer, working, x, classes)
    for step, name in enumerate(names):
        _reinitialise(working.get_submodule(name), seed + step)
    return rank_correlation(original, explain_with(explainer, working, x, classes), absolute)


def parameter_layers(model: nn.Module, x: Tensor | None = None, order: str = "execution") -> list[str]:
    """Names of the modules with parameters of their own, top (output) layer first.

    order: ``"execution"`` reverses the order of first call in one forward pass on ``x`` (N, ...), run on
        a deep copy (modules never called are left out); ``"modules"`` reverses ``named_modules()``.
    """
    if order not in LAYER_ORDERS:
        raise ValueError(f"unknown layer order {order!r}; choose one of {LAYER_ORDERS}")
    if order == "execution" and x is None:
        raise ValueError("order='execution' needs an input x to run the model on")
    return _top_down_layers(copy.deepcopy(model) if order == "execution" else model, x, order)


def _top_down_layers(model: nn.Module, x: Tensor | None, order: str) -> list[str]:
    """:func:`parameter_layers`, running ``model`` itself (with temporary hooks) for ``"execution"``."""
    weighted = {name: module for name, module in model.named_modules()
                if next(module.parameters(recurse=False), None) is not None}
    if order == "modules":
        return list(reversed(weighted))
    names = {id(module): name for name, module in weighted.items()}
    called: list[str] = []

    def record(module: nn.Module, args) -> None:
        if names[id(module)] not in called:
            called.append(names[id(module)])

    handles = [module.register_forward_pre_hook(record) for module in weighted.values()]
    try:
        with borrowed(model), torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(reversed(called))


def rank_correlation(first: Tensor, second: Tensor, absolute: bool = False) -> np.ndarray:
    """Spearman rank correlation per sample of two maps (N, ...), (N,); NaN where a map is constant."""
    a = first.detach().reshape(first.shape[0], -1).double().cpu().numpy()
    b = second.detach().reshape(second.shape[0], -1).double().cpu().numpy()
    if absolute:
        a, b = np.abs(a), np.abs(b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return np.array([spearmanr(row_a, row_b).statistic for row_a, row_b in zip(a, b)], dtype=float)


def _chosen_layers(model: nn.Module, x: Tensor, layers: Sequence[str] | None, order: str) -> list[str]:
    """The layers to randomise, top first; ``model`` is the working copy (it is run with temporary hooks)."""
    if order not in LAYER_ORDERS:
        raise ValueError(f"unknown layer order {order!r}; choose one of {LAYER_ORDERS}")
    if layers is None:
        names = _top_down_layers(model, x, order)
    else:
        names = list(layers)
        known = {name for name, module in model.named_modules() if next(module.parameters(), None) is not None}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"layers {unknown} are not modules with parameters of the model; known: {sorted(known)}")
    if not names:
        raise ValueError("the model has no layer with parameters to randomise")
    return names


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule of ``module`` that has parameters of its own, in place, from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in module.modules():
            if next(part.parameters(recurse=False), None) is None:
                continue
            fresh = copy.deepcopy(part).cpu()
            with torch.no_grad():
                if callable(getattr(fresh, "reset_parameters", None)):
                    fresh.reset_parameters()
                else:
                    for param in fresh.parameters(recurse=False):
                        param.normal_(float(param.mean()), float(param.std(unbiased=False)))
                for name, value in [*fresh.named_parameters(recurse=False), *fresh.named_buffers(recurse=False)]:
                    getattr(part, name).copy_(value)

