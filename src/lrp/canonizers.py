"""Canonization: BatchNorm as a per-channel affine map, to be folded into the preceding linear layer.

Folding happens per call, while explaining, and never touches the model: a convolution (or dense
layer) whose output feeds only a BatchNorm is explained with the folded parameters

    W' = W · a,   b' = a · b + c,   a = γ / sqrt(var + eps),   c = β − a · mean

(per output channel), which are the parameters zennit's ``SequentialMergeBatchNorm`` writes into the
layer (``LayerCall.weight`` / ``.bias`` apply them; the ε-rule scales its relevance instead of the
weight when that is cheaper). A BatchNorm that cannot be folded (its input is not a linear layer's
output, or that output is used elsewhere too) is explained as its own per-channel affine layer.

With running statistics (eval mode) the maps of all BatchNorms of a forward pass are made together
after it (:func:`running_affines`), in a few multi-tensor ops instead of four ops each: on a GPU
every op is a kernel launch of ~10 µs of host time, and ResNet-50 has 53 BatchNorms.
"""
from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RunningStatistics", "batch_norm_affine", "positive_everywhere", "running_affines"]


class RunningStatistics(NamedTuple):
    """What the affine map of an eval-mode BatchNorm is made from (detached tensors, all (C,)); ``dtype``:
    that of the BatchNorm's input, which the map takes."""

    mean: Tensor
    var: Tensor
    weight: Tensor | None
    bias: Tensor | None
    eps: float
    dtype: torch.dtype


def batch_norm_affine(
    z: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Scale ``a`` and shift ``c`` (both (C,)) with ``batch_norm(z) = a · z + c`` per channel.

    z: (N, C, *S). Batch statistics are used when ``training`` or when no running statistics exist,
    as ``F.batch_norm`` does.
    """
    if training or running_mean is None or running_var is None:
        dims = [d for d in range(z.dim()) if d != 1]
        mean = z.mean(dim=dims)
        var = z.var(dim=dims, unbiased=False)
    else:
        mean, var = running_mean, running_var
    scale = torch.add(var.to(z.dtype), eps).rsqrt_()
    if weight is not None:
        scale.mul_(weight)
    mean = mean.to(z.dtype)
    shift = torch.mul(mean, scale).neg_() if bias is None else torch.addcmul(bias, mean, scale, value=-1)
    return scale, shift


def running_affines(layers: Sequence[RunningStatistics]) -> list[tuple[Tensor, Tensor]]:
    """:func:`batch_norm_affine` from running statistics for many BatchNorms at once: the scale ``a`` and
    shift ``c`` (both (C,)) of each, by the same arithmetic, in multi-tensor (``torch._foreach_*``) ops."""
    if not layers:
        return []
    with torch.no_grad():
        scales = torch._foreach_add([layer.var.to(layer.dtype) for layer in layers], [layer.eps for layer in layers])
        torch._foreach_rsqrt_(scales)
        weighted = [(scale, layer.weight) for scale, layer in zip(scales, layers) if layer.weight is not None]
        if weighted:
            torch._foreach_mul_(*map(list, zip(*weighted)))
        means = [layer.mean.to(layer.dtype) for layer in layers]
        shifts: list[Tensor | None] = [None] * len(layers)
        biased = [i for i, layer in enumerate(layers) if layer.bias is not None]
        unbiased = [i for i, layer in enumerate(layers) if layer.bias is None]
        if biased:  # c = b − mean · a, as torch.addcmul rounds it
            made = torch._foreach_addcmul([layers[i].bias for i in biased], [means[i] for i in biased],
                                          [scales[i] for i in biased], value=-1)
            for i, shift in zip(biased, made):
                shifts[i] = shift
        if unbiased:  # c = −(mean · a)
            made = torch._foreach_mul([means[i] for i in unbiased], [scales[i] for i in unbiased])
            torch._foreach_neg_(made)
            for i, shift in zip(unbiased, made):
                shifts[i] = shift
    return list(zip(scales, shifts))


def positive_everywhere(tensors: Sequence[Tensor]) -> list[bool]:
    """Per tensor, whether every entry is at least its dtype's smallest normal number (so that ``1 / t`` is
    finite; False for a NaN too), with one wait for the device per dtype and device instead of one per tensor."""
    flags = [True] * len(tensors)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.dtype, t.device)].append(i)
    for (dtype, _), members in groups.items():
        joined = torch.cat([tensors[i].reshape(-1) for i in members])
        ends = list(itertools.accumulate(tensors[i].numel() for i in members))
        for position in joined.ge(torch.finfo(dtype).tiny).logical_not_().nonzero().flatten().tolist():
            flags[members[bisect.bisect_right(ends, position)]] = False
    return flags
