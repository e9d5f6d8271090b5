"""What the metrics explain: explainer callables, class targets and the relevance they return."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import NonFiniteError, TargetError
from ..explanation import Explanation
from ..restore import borrowed
from ..targets import TargetSpec, output_relevance

__all__ = ["Explainer", "as_relevance", "check_batch", "class_targets", "explain_with"]

Explainer = Callable[[nn.Module, Tensor, Tensor], "Explanation | Tensor"]
"""Any ``(model, x, target) -> Explanation | Tensor`` whose relevance is shaped like ``x`` (N, C, *S),
e.g. ``functools.partial(lrp.explain, composite="epsilon")`` or a method of ``lrp.methods``."""


def check_batch(x: Tensor, spatial: bool = True) -> None:
    """Raise unless ``x`` is a finite floating-point batch (N, C, *S) with 1 to 3 spatial axes
    (``spatial=False``: any batch-first shape (N, ...))."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if spatial and not 3 <= x.dim() <= 5:
        raise ValueError(f"x must be shaped (N, C, L), (N, C, H, W) or (N, C, D, H, W), got {tuple(x.shape)}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"x holds {int((~torch.isfinite(x)).sum())} NaN or infinite values")


def class_targets(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Tensor:
    """The explained class of every sample, LongTensor (N,): the model's arg-max on ``x`` (N, ...)
    for ``target=None``, else ``target`` (an int or one class per sample) checked against the output."""
    if isinstance(target, Tensor) and (target.is_floating_point() or target.dim() > 1):
        raise TargetError(f"the metrics need one class per sample, got a {target.dtype} target of shape "
                          f"{tuple(target.shape)}")
    with borrowed(model), torch.no_grad():
        output = model(x)
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != x.shape[0]:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise TargetError(f"the metrics need a model output of shape (N, classes) = ({x.shape[0]}, classes), "
                          f"got {shape}")
    return output_relevance(output, target)[1]


def as_relevance(result: Explanation | Tensor, shape: torch.Size, source: str = "relevance") -> Tensor:
    """The relevance tensor of an explainer's ``result``, detached, checked to have ``shape`` and to be finite."""
    relevance = result.relevance if isinstance(result, Explanation) else result
    if not isinstance(relevance, Tensor):
        raise TypeError(f"{source} must be a tensor or an lrp.Explanation, got {type(result).__name__}")
    if relevance.shape != shape:
        raise ValueError(f"{source} has shape {tuple(relevance.shape)}, expected the input's shape {tuple(shape)}")
    if not bool(torch.isfinite(relevance).all()):
        raise NonFiniteError(f"{source} holds {int((~torch.isfinite(relevance)).sum())} NaN or infinite values")
    return relevance.detach()


def explain_with(explainer: Explainer, model: nn.Module, x: Tensor, target: Tensor, name: str = "explainer") -> Tensor:
    """Run ``explainer(model, x, target)`` and return its relevance, shaped like ``x`` (N, ...)."""
    return as_relevance(explainer(model, x, target), x.shape, f"the relevance of {name}")
