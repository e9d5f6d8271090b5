"""Canonization: BatchNorm as a per-channel affine map, to be folded into the preceding linear layer.

Folding happens per call, while explaining, and never touches the model: a convolution (or dense
layer) whose output feeds only a BatchNorm is explained with the folded parameters

    W' = W · a,   b' = a · b + c,   a = γ / sqrt(var + eps),   c = β − a · mean

(per output channel), which are the parameters zennit's ``SequentialMergeBatchNorm`` writes into the
layer (``LayerCall.weight`` / ``.bias`` apply them; the ε-rule scales its relevance instead of the
weight when that is cheaper). A BatchNorm that cannot be folded (its input is not a linear layer's
output, or that output is used elsewhere too) is explained as its own per-channel affine layer.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_norm_affine"]


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
