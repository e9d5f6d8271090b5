"""Explaining a model: the :class:`LRP` explainer and the one-shot :func:`explain`."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .composites import Composite, resolve_composite
from .errors import NonFiniteError, TargetError, UnsupportedOperationError
from .explanation import Explanation
from .interception import Trace
from .restore import borrowed
from .rules import Rule
from .targets import TargetSpec, is_multi_class, output_relevance

__all__ = ["LRP", "explain"]


class LRP:
    """A reusable LRP explainer for ``model``.

    Args:
        model: any ``nn.Module``; it is never modified (see :func:`lrp.restore.borrowed`).
        composite: a composite name (see ``lrp.composites.COMPOSITES``), a :class:`Composite`, or
            one rule for every weighted layer.
        strict: raise on ops without a rule (default); with False they pass the gradient and a
            warning lists them.
        **params: parameters of a named composite (``epsilon=``, ``gamma=``, ``low=``, ``high=`` ...).

    Use as a context manager or call directly; each call runs the model once in eval mode.
    """

    def __init__(self, model: nn.Module, composite: str | Composite | Rule = "epsilon", *, strict: bool = True,
                 **params):
        if not isinstance(model, nn.Module):
            raise TypeError(f"LRP explains an nn.Module, got {type(model).__name__}")
        self.model = model
        self.composite = resolve_composite(composite, **params)
        self.strict = strict

    def __enter__(self) -> LRP:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, x: Tensor, target: TargetSpec = None, *, keep_layers: bool = False,
                 conservation: bool = False) -> Explanation:
        """Explain ``x`` (N, *S) for ``target`` (see :func:`lrp.targets.output_relevance`; a 2-D
        integer tensor (N, K) explains K classes per input in one pass). ``keep_layers=True`` keeps the
        relevance entering every leaf module (``Explanation.layers``); ``conservation=True`` records the
        conservation table (:meth:`Explanation.conservation`), one sum over every explained op's
        relevance: ResNet-50 at 224×224, about 4.5 % of the call's time."""
        _check_input(x)
        classes_per_input = target.shape[1] if is_multi_class(target) else 0
        if classes_per_input:
            if target.shape[0] != x.shape[0]:
                raise TargetError(f"a (batch, k) target needs one row per input for a batch of {x.shape[0]}, "
                                  f"got shape {tuple(target.shape)}")
            x = x.repeat_interleave(classes_per_input, dim=0)
            target = target.reshape(-1)
        trace = Trace(self.model, self.composite, strict=self.strict, keep_layers=keep_layers,
                      conservation=conservation)
        with torch.inference_mode(False), torch.enable_grad():
            with borrowed(self.model):
                leaf = (x.clone() if x.is_inference() else x).detach().requires_grad_(True)
                with trace:
                    output = self.model(leaf)
                logits = _explained_output(trace, output)
            if trace.fallbacks:
                warnings.warn("LRP fell back to the gradient for: " + "; ".join(trace.fallbacks), stacklevel=2)
            start, index = output_relevance(logits.detach(), target)
            (relevance,) = torch.autograd.grad(logits, leaf, start)
        _check_finite(relevance, trace)
        explanation = Explanation(relevance.detach(), logits.detach(), index, trace.layers, trace.rows)
        if classes_per_input:
            explanation = _split_classes(explanation, classes_per_input)
        return explanation


def explain(model: nn.Module, x: Tensor, target: TargetSpec = None, composite: str | Composite | Rule = "epsilon",
            *, keep_layers: bool = False, conservation: bool = False, strict: bool = True, **params) -> Explanation:
    """Explain ``model`` on ``x`` in one call; see :class:`LRP` for the arguments."""
    return LRP(model, composite, strict=strict, **params)(x, target, keep_layers=keep_layers,
                                                          conservation=conservation)


def all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite. A sum is finite only if every term is, so one reduction
    (no temporary) decides, and the element-wise test runs only when the sum is not finite: a NaN or
    infinity, or finite entries whose sum overflows. (ResNet-50's input at batch 8, 1.2 M values, 2 CPU
    threads: 0.08 against 1.07 ms for the element-wise test alone.)"""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"input must be batch-first with at least 2 dimensions (N, features...), got shape "
                         f"{tuple(x.shape)}")
    if not all_finite(x):
        raise NonFiniteError(f"input holds {int((~torch.isfinite(x)).sum())} NaN or infinite values")


def _explained_output(trace: Trace, output) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; LRP explains a model that returns one tensor")
    logits = trace.output_logits(output)
    if not logits.requires_grad:
        raise UnsupportedOperationError("the model output does not depend on its input (was it detached, or "
                                        "computed under torch.no_grad inside the model?)")
    return logits


def _check_finite(relevance: Tensor, trace: Trace) -> None:
    """Raise :class:`NonFiniteError` when ``relevance`` has a NaN or infinity, naming the first op (in the order
    of the backward) that returned one where the conservation table was recorded, else saying how to find it."""
    if all_finite(relevance):
        return
    if trace.rows is None:
        where = " (explain with conservation=True to find the first op that made it)"
    else:
        culprit = next((row for row in sorted(trace.rows, key=lambda r: -r.index)
                        if not all_finite(row.relevance_in)), None)
        where = f" (first at {culprit.layer}: {culprit.op} with {culprit.rule})" if culprit else ""
    raise NonFiniteError(f"relevance became NaN or infinite{where}; a larger epsilon / stabilizer may help")


def _split_classes(explanation: Explanation, k: int) -> Explanation:
    def split(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0] // k, k, *t.shape[1:])
    explanation.relevance = split(explanation.relevance)
    explanation.prediction = split(explanation.prediction)
    explanation.target = split(explanation.target)
    for name, value in explanation.layers.items():
        if value is not None:
            explanation.layers[name] = split(value)
    return explanation
