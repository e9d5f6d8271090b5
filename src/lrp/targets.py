"""What to explain: turning a ``target`` argument into the relevance put on the model output."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import TargetError

__all__ = ["TargetSpec", "is_multi_class", "output_relevance"]

TargetSpec = int | Sequence[int] | Tensor | None


def is_multi_class(target: TargetSpec) -> bool:
    """True for a 2-D integer target (N, K): K classes explained for each of N inputs."""
    return isinstance(target, Tensor) and not target.is_floating_point() and target.dim() == 2


def output_relevance(output: Tensor, target: TargetSpec) -> tuple[Tensor, Tensor]:
    """The relevance to start from, shaped like ``output`` (N, C), and the explained classes (N,).

    target: None (arg-max per sample), an int, a sequence / LongTensor with one class per sample,
    or a float tensor shaped like ``output`` used directly as the output relevance. For classes the
    relevance is the output value of that class and zero elsewhere, so under conservation the input
    relevance sums to the explained logit.
    """
    batch = output.shape[0]
    if isinstance(target, Tensor) and target.is_floating_point():
        if target.shape != output.shape:
            raise TargetError(f"a relevance target must have the output's shape {tuple(output.shape)}, "
                              f"got {tuple(target.shape)}")
        relevance = target.detach().to(output.dtype)
        return relevance, relevance.reshape(batch, -1).abs().argmax(1)
    if output.dim() != 2:
        raise TargetError(f"class targets need an output of shape (batch, classes), the model returned "
                          f"{tuple(output.shape)}; pass the output relevance as a float tensor instead")
    classes = output.shape[1]
    if target is None:
        index = output.argmax(1)
    elif isinstance(target, bool):
        raise TargetError(f"target must be a class index, not the bool {target}")
    elif isinstance(target, int):
        index = torch.full((batch,), target, dtype=torch.long, device=output.device)
    else:
        try:
            index = torch.as_tensor(target, dtype=torch.long, device=output.device).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TargetError(f"target must be None, an int, one class per sample or a relevance tensor, "
                              f"got {target!r}") from None
        if index.numel() != batch:
            raise TargetError(f"target has {index.numel()} classes for a batch of {batch}; give one class "
                              f"per sample, or a 2-D (batch, k) tensor to explain k classes per sample")
    if bool(((index < 0) | (index >= classes)).any()):
        raise TargetError(f"target {index.tolist()} out of range for an output with {classes} classes")
    relevance = torch.zeros_like(output)
    relevance.scatter_(1, index[:, None], output.detach().gather(1, index[:, None]))
    return relevance, index
