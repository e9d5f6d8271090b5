"""The linear maps LRP rules act on: dense, convolution (any dimension, transposed or not) and
parameter-free linear ops such as average pooling.

A rule sees one call of such a map as a :class:`LayerCall`: the input ``x``, the output ``z``
(bias and any folded BatchNorm included), the effective weight and bias, and the map itself, which
can be applied to other inputs and weights (``forward``) or transposed (``transpose``):

    z = forward(x, weight) + bias_view(bias)          # x: (N, C_in, *S_in), z: (N, C_out, *S_out)
    transpose(s, weight, x) = (d forward(x, weight) / d x)ᵀ s   # s like z, result like x
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .workspace import Workspace

__all__ = [
    "KEPT_RELU_OUTPUT",
    "Activation",
    "ChannelAffine",
    "Convolution",
    "Dense",
    "LayerCall",
    "LinearMap",
    "ParameterFree",
    "all_zero",
    "divide",
    "divide_",
    "divide_rectified",
    "divide_scaled",
    "safe_divide",
    "stabilize",
    "sum_taking",
    "times_relu",
    "where_negative",
    "where_positive",
]


CHUNK_BYTES = 256 * 2**20
"""Bound on the unfolded buffer of one CPU transposed convolution run by a rule (see ``Convolution``)."""

BLOCK_WEIGHT_BYTES = 8 * 2**20
"""On the CPU, calls of dense layers whose weight is larger than this are explained in blocks of output rows
of about half of it (see :meth:`LayerCall.row_blocks`): a block of the weight and its modified copy (``W⁺``)
then stay in the last-level cache together between the block's forward and transposed products. VGG-16's
classifier alone (three dense layers, α1β0, 2 threads, 15 rounds): 8 MiB against 32 MiB, 134 against 168 ms
at batch 1 and 1.60 against 1.77 times the gradient at batch 8; 4 MiB no better, 2 MiB worse (more calls)."""

BLOCK_WEIGHT_BYTES_ON_GPU = 32 * 2**20
"""The same bound on other devices, where fewer blocks mean fewer kernel launches; not tuned there."""


SAMPLE_SPLIT_BYTES = 32 * 2**20
"""On the CPU, a convolution whose input or output is larger than this is explained in blocks of samples of at
most ``SAMPLE_BLOCK_BYTES`` each (at least one sample; see :meth:`LayerCall.sample_blocks`). It is glibc's
largest mmap threshold: malloc hands every freed block above it back to the system, so that each of a rule's
temporaries that large (its own forward, its quotients, each transposed layer's result) arrives as fresh pages,
one page fault per 4 KiB, where a block's temporaries are reused from malloc's heap and stay in the cache."""

SAMPLE_BLOCK_BYTES = 8 * 2**20
"""The bound on the input and the output of a block of samples (see ``SAMPLE_SPLIT_BYTES``). VGG-16 at batch 8,
whose four convolutions at 224×224 and 112×112 then run sample by sample, 2 threads, 11 rounds, blocks ÷ one
call per round (the same relevance, bit for bit): ``epsilon`` 0.963, ``epsilon-plus`` 0.965, ``alpha1-beta0``
0.954, ``epsilon-alpha2-beta1`` 0.926, ``epsilon-gamma-box`` 1.005; live peaks equal or lower. Blocks of 4, 16
or 32 MiB (5 rounds each, on a noisier day) gave ``epsilon-alpha2-beta1`` 1.080, 0.977 and 0.926, 8 MiB 0.863
to 0.944 in three such runs."""

HEAD_ELEMENTS = 1 << 14
"""Elements that :func:`all_zero` reads first in a large CPU tensor (64 KiB of float32)."""

DIVIDE_CHUNK = 1 << 20
"""Elements per chunk of the in-place stabilised division (:func:`divide_`) of CPU tensors of more than
eight chunks, so that its ε·sign temporary stays chunk-sized instead of as large as the tensor. Measured
with 2 threads: a 265 M-element 3D CNN activation takes 102 ms in chunks of 2^20 against 382 ms whole
(238 ms with the earlier 2^18) and a 6.4 M-element one (ResNet-50, batch 8) 1.9 ms whole against 2.9 ms
in chunks, since each chunk pays for waking the threads."""


HALF_PRECISION = (torch.float16, torch.bfloat16)


def widened(t: Tensor | None) -> Tensor | None:
    """A float16 / bfloat16 tensor as a float32 copy; others (and None) as they are. Rules compute in float32
    for 16-bit layers: a quotient ``R / stab(z)`` overflows float16 where z is near 0 although every share
    ``x·w·R / z`` is finite, and ε-α2β1's ``(P + ε) − z`` loses bfloat16's eight bits to cancellation."""
    return t.float() if t is not None and t.dtype in HALF_PRECISION else t


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with sign(0) = +1, as a new tensor. (A negative zero, -0.0, takes −ε; it
    only arises where every contribution is zero, so it changes no relevance.)"""
    return torch.copysign(_shift(epsilon, z), z).add_(z)


def divide(relevance: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """``relevance / stabilize(denominator, ε)`` as a new tensor (the stabilised one, when shapes match)."""
    stabilized = stabilize(denominator, epsilon)
    if stabilized.shape == relevance.shape and stabilized.dtype == relevance.dtype:
        return torch.div(relevance, stabilized, out=stabilized)
    return relevance / stabilized


def divide_rectified(relevance: Tensor, rectified: Tensor, epsilon: float) -> Tensor:
    """``relevance / stabilize(z, ε)`` (ε > 0) from ``rectified = relu(z)`` where the relevance is zero wherever
    ``rectified`` is: ``z + ε`` where z > 0, and 0 / ε = 0 elsewhere, as a new tensor. One pass for the
    denominator instead of two, and z itself need not be kept (see ``Trace.rectify``)."""
    denominator = torch.add(rectified, _shift(epsilon, rectified))  # ε in z's dtype, as stabilize adds it
    return torch.div(relevance, denominator, out=denominator)


def divide_scaled(relevance: Tensor, denominator: Tensor, factor: float) -> Tensor:
    """``factor · relevance / denominator`` written into ``denominator``, in one pass: α-β's ``α·R / (P + ε)``
    without a second pass to scale the quotient. The factor 1 is a plain division."""
    if factor == 1.0:
        return torch.div(relevance, denominator, out=denominator)
    zero = _constant(0.0, denominator.dtype, denominator.device)
    return torch.addcdiv(zero, relevance, denominator, value=factor, out=denominator)


def divide_(relevance: Tensor, denominator: Tensor, epsilon: float, sign: int = 0) -> Tensor:
    """:func:`divide` written into ``denominator``, a temporary of the caller shaped like
    ``relevance`` (the first layers of a 3D CNN hold hundreds of MB per tensor). ``sign`` +1 (−1) says that
    the denominator is a sum of non-negative (non-positive) terms: ε is then added with that sign without
    looking (one pass less). The two differ only where the denominator is a zero of the other sign, where
    every contribution is zero, so the relevance is the same."""
    shift = _shift(sign * epsilon if sign else epsilon, denominator)
    for r, d in _chunks(relevance, denominator):
        torch.div(r, d.add_(shift if sign else torch.copysign(shift, d)), out=d)
    return denominator


def _shift(epsilon: float, like: Tensor) -> Tensor:
    """ε as a 0-dim tensor of ``like``'s dtype and device."""
    return _constant(epsilon, like.dtype, like.device)


@cache
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Made once per process: ``torch.tensor`` on a GPU is a copy from the host each time (ResNet-50 with ε
    made 71 per call)."""
    return torch.tensor(value, dtype=dtype, device=device)


def _chunks(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """The tensors (one shape) themselves, or for contiguous CPU tensors of more than eight chunks aligned
    flat chunks of ``DIVIDE_CHUNK`` elements."""
    first = tensors[0]
    if (first.device.type != "cpu" or first.numel() <= 8 * DIVIDE_CHUNK
            or not all(t.is_contiguous() and t.shape == first.shape for t in tensors)):
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for start in range(0, first.numel(), DIVIDE_CHUNK):
        yield tuple(t[start:start + DIVIDE_CHUNK] for t in flat)


def where_positive(values: Tensor, sign_source: Tensor, out: Tensor | None = None) -> Tensor:
    """``values`` where ``sign_source > 0``, else 0, as a new tensor or into ``out`` (``values`` itself
    included): ReLU's own backward kernel, one fused pass (multiplying by a boolean mask is over ten times
    slower on the CPU)."""
    if out is None:
        return torch.ops.aten.threshold_backward(values, sign_source, 0)
    return torch.ops.aten.threshold_backward.grad_input(values, sign_source, 0, grad_input=out)


def where_negative(values: Tensor, sign_source: Tensor, out: Tensor | None = None) -> Tensor:
    """``values`` where ``sign_source < 0``, else 0, as a new tensor or into ``out``, in one fused pass:
    hardtanh's backward kernel, which passes values strictly between its bounds (−inf, 0)."""
    if out is None:
        return torch.ops.aten.hardtanh_backward(values, sign_source, -math.inf, 0.0)
    return torch.ops.aten.hardtanh_backward.grad_input(values, sign_source, -math.inf, 0.0, grad_input=out)


def all_zero(t: Tensor) -> bool:
    """Whether every entry of ``t`` is 0 (not for a NaN), from one reduction that finds both extremes: on the
    CPU about four times faster than ``t.any()`` or ``torch.equal`` (6.4 M float32 values, 2 threads: 1.9
    against 8.5 and 5.2 ms). A large contiguous CPU tensor is first looked at in its first ``HEAD_ELEMENTS``:
    where anything is non-zero (γ's relevance at the negative outputs of ResNet-50's residual branches, every
    time), that answers without reading the rest: 0.11 against 1.6 ms for 6.4 M values (batch 8's first stage),
    0.08 against 0.17 ms for 0.8 M (batch 1's)."""
    if t.numel() == 0:
        return True
    if t.device.type == "cpu" and t.numel() > 8 * HEAD_ELEMENTS and t.is_contiguous() and \
            not _extremes_zero(t.view(-1)[:HEAD_ELEMENTS]):
        return False
    return _extremes_zero(t)


def _extremes_zero(t: Tensor) -> bool:
    """Whether the smallest and the largest entry of ``t`` (not empty) are both 0."""
    low, high = torch.aminmax(t)
    return bool((low == 0) & (high == 0))


def times_relu(t: Tensor, source: Tensor) -> Tensor:
    """``t ⊙ relu(source)`` written into ``t`` without making ``relu(source)``: zeroed where ``source ≤ 0`` by
    ReLU's own backward kernel, then multiplied by ``source``. The same numbers as ``t.mul_(torch.relu(source))``
    up to the sign of zeros, in as many passes, without a temporary the size of ``t`` (ResNet-50, batch 8: each
    one 25 MB)."""
    return where_positive(t, source, t).mul_(source)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 wherever the denominator is exactly 0."""
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(numerator), numerator / torch.where(zero, 1, denominator))


def sum_taking(items: list[tuple], apply: Callable[..., Tensor]) -> Tensor:
    """``Σ apply(*item)`` over the list, popping each item before ``apply`` runs on it (the list is left
    empty), so that a tensor the list held the last reference to is freed before the next one allocates."""
    result = None
    while items:
        part = apply(*items.pop(0))
        result = part if result is None else result.add_(part)
    return result


class LinearMap(ABC):
    """A linear map without its bias, applicable to any input and weight of the right shape."""

    @abstractmethod
    def forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None = None) -> Tensor:
        """The map applied to ``x`` with ``weight``, plus ``bias`` (C_out,) if given (fused into the
        layer where it can be)."""

    @abstractmethod
    def transpose(self, s: Tensor, weight: Tensor | None, x: Tensor) -> Tensor:
        """The transposed map applied to ``s`` (shaped like the output); ``x`` gives the input shape.
        Returns a new tensor that the caller may modify in place."""

    def transpose_sum(self, pairs: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
        """``Σ transpose(s, weight)`` over the (s, weight) pairs, taken from the list one at a time (it is
        left empty): when the list holds the only references, each ``s`` is freed as soon as its
        transposed layer has run. A convolution run in slabs stacks the pairs slab by slab into one
        transposed layer instead."""
        return sum_taking(pairs, lambda s, weight: self.transpose(s, weight, x))

    def forward_pair(self, a: Tensor, weight_a: Tensor, b: Tensor, weight_b: Tensor) -> Tensor:
        """``forward(a, weight_a) + forward(b, weight_b)``; maps that can run it as one layer with
        inputs and weights stacked along the input channels override this."""
        return self.forward(a, weight_a).add_(self.forward(b, weight_b))

    def transpose_pair(self, s: Tensor, weight_a: Tensor, weight_b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(transpose(s, weight_a), transpose(s, weight_b))``, possibly from one transposed layer."""
        return self.transpose(s, weight_a, x), self.transpose(s, weight_b, x)

    def constant_response(self, pairs: Sequence[tuple[Tensor, Tensor]], x: Tensor) -> Tensor | None:
        """``Σ map(c, weight)`` over ``pairs`` of (values, weight), each ``c`` an input shaped like ``x`` (channels
        in dimension 1) that holds ``values`` (C_in,) in each channel at every position, without bias: a new
        tensor broadcastable to the output, with size 1 in every dimension where the output is the same; None
        where the map cannot tell it without a layer call."""
        return None

    def bias_view(self, bias: Tensor) -> Tensor:
        """The bias (C_out,) reshaped to broadcast against the output."""
        raise NotImplementedError(f"{type(self).__name__} has no bias")

    def scale_output(self, weight: Tensor, scale: Tensor) -> Tensor:
        """The weight with each output channel multiplied by ``scale`` (C_out,): BatchNorm folding."""
        raise NotImplementedError(f"{type(self).__name__} has no weight")

    def channel_dim(self, z: Tensor) -> int | None:
        """The output's channel dimension, where a following BatchNorm could fold in; None if none."""
        return None

    def block_rows(self, weight: Tensor) -> int | None:
        """Output rows per block when a call with ``weight`` should be explained block by block (see
        :meth:`LayerCall.row_blocks`); None to explain it whole."""
        return None


class Dense(LinearMap):
    """``z = x @ Wᵀ`` for x (..., C_in), W (C_out, C_in)."""

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x, weight, bias)

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        return s @ weight

    def forward_pair(self, a: Tensor, weight_a: Tensor, b: Tensor, weight_b: Tensor) -> Tensor:
        return F.linear(torch.cat([a, b], dim=-1), torch.cat([weight_a, weight_b], dim=1))

    def transpose_pair(self, s: Tensor, weight_a: Tensor, weight_b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return (s @ torch.cat([weight_a, weight_b], dim=1)).split(weight_a.shape[1], dim=-1)

    def constant_response(self, pairs: Sequence[tuple[Tensor, Tensor]], x: Tensor) -> Tensor | None:
        if x.dim() != 2:  # (N, ..., C_in) has its features last
            return None
        return sum_taking(list(pairs), lambda values, weight: weight @ values)

    def block_rows(self, weight: Tensor) -> int | None:
        row_bytes = weight.shape[1] * weight.element_size()
        bound = BLOCK_WEIGHT_BYTES if weight.device.type == "cpu" else BLOCK_WEIGHT_BYTES_ON_GPU
        if weight.dim() != 2 or weight.shape[0] * row_bytes <= bound:
            return None
        return max(1, bound // 2 // row_bytes)

    def bias_view(self, bias: Tensor) -> Tensor:
        return bias

    def scale_output(self, weight: Tensor, scale: Tensor) -> Tensor:
        return weight * scale[:, None]

    def channel_dim(self, z: Tensor) -> int | None:
        return 1 if z.dim() == 2 else None


@dataclass
class Convolution(LinearMap):
    """A 1D/2D/3D convolution or transposed convolution with explicit integer padding.

    Weights are (C_out, C_in/groups, *K), or (C_in, C_out/groups, *K) when transposed.
    ``extra_padding`` pads each spatial dimension by that much more on the high side (zeros), as
    PyTorch does for ``padding='same'`` with an even kernel.
    """

    stride: Sequence[int]
    padding: Sequence[int]
    dilation: Sequence[int]
    groups: int
    transposed: bool = False
    output_padding: Sequence[int] = ()
    extra_padding: Sequence[int] = ()

    def __post_init__(self) -> None:
        if not self.output_padding:
            self.output_padding = (0,) * len(self.stride)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.is_matrix_product(x, weight):
            return self.products(x, weight, bias)
        if any(self.extra_padding):
            x = F.pad(x, [p for extra in reversed(self.extra_padding) for p in (0, extra)])
        return self._convolution(x, weight, self.padding, bias)

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        return self.transpose_sum([(s, weight)], x)

    def transpose_sum(self, pairs: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
        if self.is_matrix_product(x, pairs[0][1]):
            return self._transpose_products(pairs, x)
        if self._reads_grid(x, pairs[0][1]):
            return self._transpose_on_grid(pairs, x)
        shape = x.shape
        padded = (*shape[:2], *(n + extra for n, extra in zip(shape[2:], self.extra_padding or [0] * len(shape[2:]))))
        one_channel = self._one_channel_on_cpu(x, pairs[0][1])
        if one_channel:
            pairs[:] = [(s, _channels_last_copy(weight)) for s, weight in pairs]
        rows = None if one_channel else self._rows_per_chunk(x, pairs[0][1], pairs[0][0].shape[2])
        if rows is None:
            if any(self.extra_padding):  # the transposed layer sees the padded input; crop it after
                x = torch.empty(padded, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
            result = sum_taking(pairs, lambda s, weight: self._convolution_backward(s, weight, x, self.padding))
        else:  # slabs of output rows, each adding into a canvas padded in the first spatial dimension;
            # several pairs are stacked along the output channels slab by slab (one call, little memory)
            s, weight = pairs[0]
            stacked = torch.cat([w for _, w in pairs]) if len(pairs) > 1 and self.groups == 1 else None
            pad = self.padding[0]
            span = self.dilation[0] * (weight.shape[2] - 1) + 1
            result = torch.empty((padded[0], padded[1], padded[2] + 2 * pad, *padded[3:]), dtype=s.dtype,
                                 device=s.device, memory_format=_memory_format(x)).zero_()
            for start in range(0, s.shape[2], rows):
                stop = min(start + rows, s.shape[2])
                length = (stop - start - 1) * self.stride[0] + span
                stand_in = _stand_in((padded[0], padded[1], length, *padded[3:]), x)
                canvas = result.narrow(2, start * self.stride[0], length)
                slabs = [(t.narrow(2, start, stop - start), w) for t, w in pairs]
                if stacked is not None:
                    slabs = [(torch.cat([t for t, _ in slabs], dim=1), stacked)]
                for slab, w in slabs:
                    canvas.add_(self._convolution_backward(slab, w, stand_in, (0, *self.padding[1:])))
            pairs.clear()
            result = result.narrow(2, pad, padded[2])
        if result.shape != shape:  # padded for 'same' with an even kernel: cropped to x's shape
            for dim, n in enumerate(shape[2:], start=2):
                result = result.narrow(dim, 0, n)
        return result

    def _convolution(self, x: Tensor, weight: Tensor, padding: Sequence[int], bias: Tensor | None = None) -> Tensor:
        return torch.ops.aten.convolution(
            x, weight, bias, list(self.stride), list(padding), list(self.dilation),
            self.transposed, list(self.output_padding), self.groups,
        )

    def _convolution_backward(self, s: Tensor, weight: Tensor, x: Tensor, padding: Sequence[int],
                              stride: Sequence[int] | None = None) -> Tensor:
        """The input gradient of the convolution (with ``stride``, else the layer's) for output gradient ``s``;
        only ``x``'s shape is read."""
        return torch.ops.aten.convolution_backward(
            s.contiguous(memory_format=_memory_format(x)), x, weight, None, list(stride or self.stride),
            list(padding), list(self.dilation), self.transposed, list(self.output_padding),
            self.groups, [True, False, False],
        )[0]

    def _is_pointwise(self, weight: Tensor) -> bool:
        """Whether this is a convolution (not transposed) with kernel 1 in every spatial dimension and no padding:
        each output reads the input channels at one position."""
        return (not self.transposed and all(k == 1 for k in weight.shape[2:]) and not any(self.padding)
                and not any(self.extra_padding))

    def is_matrix_product(self, x: Tensor, weight: Tensor) -> bool:
        """Whether this is a pointwise convolution without stride or groups whose forward and transpose on ``x``
        run as matrix products (see :func:`_products_pay`)."""
        return (self._is_pointwise(weight) and self.groups == 1 and all(step == 1 for step in self.stride)
                and _products_pay(x, weight))

    @staticmethod
    def products(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The forward of a pointwise layer (see :meth:`is_matrix_product`) as one matrix product per sample,
        ``(C_out, C_in) @ (C_in, S)``: x (N, C_in, *S) -> (N, C_out, *S), contiguous."""
        result = torch.bmm(_channel_matrix(weight).expand(x.shape[0], -1, -1), x.view(*x.shape[:2], -1))
        if bias is not None:
            result.add_(bias.view(1, -1, 1))
        return result.view(x.shape[0], weight.shape[0], *x.shape[2:])

    def _transpose_products(self, pairs: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
        """:meth:`transpose_sum` of a pointwise layer (see :meth:`is_matrix_product`): ``Σ Wᵀ s`` per sample, the
        second and later products added by the product itself; the list is emptied, each pair freed once used."""
        result = None
        while pairs:
            s, weight = pairs.pop(0)
            transposed = _channel_matrix(weight).t().expand(x.shape[0], -1, -1)
            s = s.reshape(*s.shape[:2], -1)
            result = torch.bmm(transposed, s) if result is None else result.baddbmm_(transposed, s)
        return result.view(x.shape)

    def _reads_grid(self, x: Tensor, weight: Tensor) -> bool:
        """Whether this is a pointwise convolution (kernel 1 in every spatial dimension, no padding) with a
        stride, on the CPU: each output reads one input position, and the inputs it reads form a grid of every
        ``stride``-th position. (ResNet's downsampling shortcuts.)"""
        return x.device.type == "cpu" and any(step > 1 for step in self.stride) and self._is_pointwise(weight)

    def _transpose_on_grid(self, pairs: list[tuple[Tensor, Tensor]], x: Tensor) -> Tensor:
        """:meth:`transpose_sum` of a pointwise convolution with a stride (see :meth:`_reads_grid`): the sum of the
        unstrided transposed layers on the grid of inputs it reads, written into zeros at those positions (the
        other inputs get no relevance). PyTorch's CPU transposed layer with the stride took 1.3–1.6× as long on
        ResNet-50's shortcuts (2 threads; batch 8, 8×512×28×28 to 8×256×56×56: 39–50 against 22–32 ms; batch 1,
        to 1×256×56×56: 5.4 against 3.3 ms), a third of it in a copy of its result."""
        grid_shape = pairs[0][0].shape[2:]
        grid = (slice(None), slice(None), *(slice(0, (n - 1) * step + 1, step) for n, step in zip(grid_shape, self.stride)))
        stand_in = _stand_in((*x.shape[:2], *grid_shape), x)
        unit = [1] * len(self.stride)
        if self.groups == 1 and _products_pay(stand_in, pairs[0][1]):
            on_grid = self._transpose_products(pairs, stand_in)
        else:
            on_grid = sum_taking(pairs, lambda s, weight: self._convolution_backward(s, weight, stand_in, self.padding,
                                                                                     unit))
        result = torch.empty(x.shape, dtype=on_grid.dtype, device=x.device, memory_format=_memory_format(x)).zero_()
        result[grid] = on_grid
        return result

    def _one_channel_on_cpu(self, x: Tensor, weight: Tensor) -> bool:
        """Whether this is a convolution of a 2D or 3D input with one channel (an MRI volume, a grey-scale
        image) that PyTorch runs with oneDNN (see :meth:`_selects_onednn`; on the CPU, float32), whose transpose
        then runs with a channels-last weight (see :func:`_channels_last_copy`). Where PyTorch does not pick
        oneDNN (one small sample with a kernel of at most 3×3, float64), it would unfold the output in one
        piece, and the ordinary path bounds that by running in slabs."""
        return (not self.transposed and self.groups == 1 and x.shape[1] == 1 and x.dim() in (4, 5)
                and self._selects_onednn(x, weight))

    def _rows_per_chunk(self, x: Tensor, weight: Tensor, output_rows: int) -> int | None:
        """Output rows per slab so that the unfolded buffer of a CPU transposed convolution stays
        under ``CHUNK_BYTES`` (PyTorch's own CPU 3D convolution backward unfolds the whole output: ~1 GB
        for the first layer of the paper's model, and slabs are no slower there); None when one call
        is small enough or chunking does not apply. A one-channel input needs no slabs (see
        :meth:`_one_channel_on_cpu`), nor does a call that PyTorch runs with oneDNN (see :meth:`_runs_on_onednn`)."""
        if self.transposed or x.device.type != "cpu" or output_rows < 2:
            return None
        out_shape = [(n + 2 * p - d * (k - 1) - 1) // st + 1 for n, p, d, k, st in
                     zip(x.shape[3:], self.padding[1:], self.dilation[1:], weight.shape[3:], self.stride[1:])]
        row_bytes = x.shape[0] * x.shape[1] * math.prod(weight.shape[2:]) * math.prod(out_shape) * x.element_size()
        if row_bytes * output_rows <= CHUNK_BYTES or self._runs_on_onednn(x, weight):
            return None
        return max(1, CHUNK_BYTES // row_bytes)

    def _runs_on_onednn(self, x: Tensor, weight: Tensor) -> bool:
        """Whether PyTorch runs this convolution of ``x`` with oneDNN (see :meth:`_selects_onednn`) and ``x`` has
        more than one channel. oneDNN's transposed layer then unfolds nothing: it holds at most a copy of ``s``
        and of the result in its blocked layout, whole or in slabs alike, and slabs cost a zeroed canvas, a copy
        of each slab and their sum. Measured with 2 threads, slabs and one call in turn: VGG-16's second layer
        at batch 8 (8×64×224×224, four slabs) 572 against 438 ms, peak live memory 186 against 196 MiB; its
        fourth (8×128×112×112, two slabs) 408 against 352 ms, 137 against 99 MiB. Only a one-channel input made
        oneDNN unfold, unless its weight is channels-last (see :meth:`_one_channel_on_cpu`)."""
        return x.shape[1] != 1 and self._selects_onednn(x, weight)

    def _selects_onednn(self, x: Tensor, weight: Tensor) -> bool:
        """Whether PyTorch runs this convolution of ``x`` on the CPU with oneDNN, as PyTorch itself reports
        (``torch._C._select_conv_backend``, which also follows ``torch.backends.mkldnn.enabled``; False where
        it is missing or refuses the arguments)."""
        select = getattr(torch._C, "_select_conv_backend", None)
        if select is None:
            return False
        try:
            backend = select(x, weight, None, list(self.stride), list(self.padding), list(self.dilation),
                             self.transposed, list(self.output_padding), self.groups, None)
        except (RuntimeError, TypeError):
            return False
        return backend == torch._C._ConvBackend.Mkldnn

    def forward_pair(self, a: Tensor, weight_a: Tensor, b: Tensor, weight_b: Tensor) -> Tensor:
        if self.transposed or self.groups != 1:
            return super().forward_pair(a, weight_a, b, weight_b)
        return self.forward(torch.cat([a, b], dim=1), torch.cat([weight_a, weight_b], dim=1))

    def transpose_pair(self, s: Tensor, weight_a: Tensor, weight_b: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        one_channel = self._one_channel_on_cpu(x, weight_a) and not any(self.extra_padding)
        if not one_channel and (self.transposed or self.groups != 1):
            return super().transpose_pair(s, weight_a, weight_b, x)
        # one transposed layer with the weights stacked along the input channels, on a stand-in of which only
        # shape and layout are read; a one-channel input runs it with the channels-last kernel in one call, the
        # halves strided views (paper's first layer: 270 ms against 2 × 256 ms)
        layout = _channels_last(x) if one_channel else _memory_format(x)
        stand_in = torch.empty((x.shape[0], 2 * x.shape[1], *x.shape[2:]), dtype=x.dtype, device=x.device,
                               memory_format=layout)
        weight = torch.cat([weight_a, weight_b], dim=1)
        if one_channel:
            both = self._convolution_backward(s, _channels_last_copy(weight), stand_in, self.padding)
        else:
            both = self.transpose(s, weight, stand_in)
        return both.split(x.shape[1], dim=1)

    def constant_response(self, pairs: Sequence[tuple[Tensor, Tensor]], x: Tensor) -> Tensor | None:
        """Each output sees the part of its kernel window that lies inside the input: each weight times its input
        channels' values (in groups), summed over the channels and the pairs (a kernel (C_out, *K)) and over that
        part of the window. Without padding that is the whole window at every output: (1, C_out, 1, ...). With
        padding the part inside is, in each spatial dimension, a 0/1 mask (S_out, K), and the response
        (1, C_out, *S_out) is the kernel contracted with the masks, one dimension after the other: no layer call
        over constant inputs (ZBox's two bounds at batch 1, 2 threads, three runs: VGG-16's first layer 12.7–14.9 →
        1.3–1.6 ms, ResNet-50's 7×7 stem 2.9–3.9 → 0.7–0.9 ms). None when transposed."""
        if self.transposed:
            return None
        kernel = sum_taking(list(pairs), self._channel_sum)  # (C_out, *K)
        dims = len(self.stride)
        if not any(self.padding) and not any(self.extra_padding):
            return kernel.sum(dim=tuple(range(1, dims + 1))).view(1, -1, *([1] * dims))
        response = kernel
        for dim in range(dims):  # (C_out, K_dim, ..., S_0, ..., S_dim-1) -> (C_out, K_dim+1, ..., S_0, ..., S_dim)
            mask = self._inside(x.shape[2 + dim], kernel.shape[1 + dim], dim, kernel)
            response = torch.tensordot(response, mask, dims=([1], [1]))
        return response.unsqueeze(0)

    def _channel_sum(self, values: Tensor, weight: Tensor) -> Tensor:
        """``Σ_c values[c] · weight[:, c]`` over each output channel's input channels (in groups): (C_out, *K)."""
        c_out, spatial = weight.shape[0], [1] * (weight.dim() - 2)
        inputs = values.view(self.groups, 1, -1).expand(-1, c_out // self.groups, -1).reshape(weight.shape[:2])
        return (weight * inputs.view(*inputs.shape, *spatial)).sum(dim=1)

    def _inside(self, size: int, taps: int, dim: int, like: Tensor) -> Tensor:
        """In spatial dimension ``dim`` of an input of ``size``, whether each output's kernel tap reads inside the
        input (1) or padding (0): (S_out, taps), in ``like``'s dtype."""
        padded = size + 2 * self.padding[dim] + (self.extra_padding[dim] if self.extra_padding else 0)
        span = self.dilation[dim] * (taps - 1) + 1
        starts = torch.arange(0, padded - span + 1, self.stride[dim], device=like.device) - self.padding[dim]
        read = starts[:, None] + self.dilation[dim] * torch.arange(taps, device=like.device)
        return ((read >= 0) & (read < size)).to(like.dtype)

    def bias_view(self, bias: Tensor) -> Tensor:
        return bias.view(1, -1, *([1] * len(self.stride)))

    def scale_output(self, weight: Tensor, scale: Tensor) -> Tensor:
        spatial = [1] * len(self.stride)
        if not self.transposed:
            return weight * scale.view(-1, 1, *spatial)
        c_in, c_out_per_group = weight.shape[:2]
        grouped = weight.view(self.groups, c_in // self.groups, c_out_per_group, *weight.shape[2:])
        grouped = grouped * scale.view(self.groups, 1, c_out_per_group, *spatial)
        return grouped.reshape(weight.shape)

    def channel_dim(self, z: Tensor) -> int | None:
        return 1


def _products_pay(x: Tensor, weight: Tensor) -> bool:
    """Whether a pointwise convolution without stride of ``x`` (N, C_in, *S) with ``weight`` (C_out, C_in, 1, ...),
    forward or transposed, runs as one matrix product per sample, (C_out, C_in) @ (C_in, S), with ``torch.bmm``
    (the weight broadcast over the batch) instead of oneDNN: for contiguous float32 / float64 CPU tensors, where
    reading the weight once per sample costs less than oneDNN's reorders of the weight and the activations into
    its blocked layouts (which took longer than its kernels on ResNet-50 at batch 1, py-spy): always at batch 1;
    at batch 8 not for ResNet-50's last stage, 2048×512 weights on 7×7 positions (1.02–1.50× as long as oneDNN
    there). Two transposes summed (α-β, γ) add the second in its product (``baddbmm``), without a pass of their
    own. ResNet-50's 33 pointwise layers without stride, two runs, 9 rounds each, 2 threads, oneDNN → products:
    ``W⁺x`` 46–52 → 39–50 ms at batch 1 and 412–461 → 227–339 ms at batch 8 (28 layers as products), two
    transposes summed 98–131 → 86–100 ms and 934–1122 → 515–695 ms."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()):
        return False
    # memory moved: the products read the weight once per sample, x and the output once; oneDNN reads the weight
    # three times (its reorder reads and writes it, the kernel reads it) and x and the output three (the same)
    activations = x.numel() * (1 + weight.shape[0] / weight.shape[1])
    return x.shape[0] * weight.numel() + activations < 3 * (weight.numel() + activations)


def _channel_matrix(weight: Tensor) -> Tensor:
    """A pointwise convolution's weight (C_out, C_in, 1, ...) as the matrix (C_out, C_in), a view."""
    return weight.reshape(weight.shape[:2])


def _channels_last(t: Tensor) -> torch.memory_format:
    """The channels-last memory format of a 4-D or 5-D tensor."""
    return torch.channels_last if t.dim() == 4 else torch.channels_last_3d


def _channels_last_copy(weight: Tensor) -> Tensor:
    """A copy of ``weight`` with channels-last strides (with one input channel, the same values in the same
    order). PyTorch then runs the CPU transposed convolution of a one-channel input with oneDNN's channels-last
    kernel instead of unfolding the output: on the paper's first layer (1×193×229×193 input, 8 channels of 3³),
    701 → 264 ms and 1026 → 285 MiB of extra peak memory, in one call without slabs."""
    return torch.empty_like(weight, memory_format=_channels_last(weight)).copy_(weight)


def _stand_in(shape: Sequence[int], x: Tensor) -> Tensor:
    """A tensor of ``shape`` in ``x``'s memory format as the input argument of a transposed layer, which
    reads only its shape and layout (the result is linear in ``s`` alone, and comes in that layout): a view
    of ``x``'s memory where ``x`` is contiguous and large enough, so that a slab costs no allocation, else
    new uninitialised memory."""
    n = math.prod(shape)
    if x.is_contiguous() and x.numel() >= n:
        return x.reshape(-1)[:n].view(shape)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))


def _memory_format(x: Tensor) -> torch.memory_format:
    """``x``'s channels-last memory format where it is in one (and not also contiguous), else the contiguous."""
    if x.dim() in (4, 5) and x.is_contiguous(memory_format=_channels_last(x)) and not x.is_contiguous():
        return _channels_last(x)
    return torch.contiguous_format


class ChannelAffine(LinearMap):
    """A per-channel scaling ``z = x * w`` (w: (C,)) on x (N, C, *S): an unfolded BatchNorm."""

    def __init__(self, dims: int):
        self.dims = dims

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if bias is None:
            return x * self.bias_view(weight)
        return torch.addcmul(self.bias_view(bias), x, self.bias_view(weight))

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        return s * self.bias_view(weight)

    def bias_view(self, bias: Tensor) -> Tensor:
        return bias.view(1, -1, *([1] * (self.dims - 2)))


class ParameterFree(LinearMap):
    """A linear op without weights (average pooling, mean, sum), given as ``op(x)``.

    Its transpose is taken with autograd, which for these ops is as cheap as the op itself.
    """

    def __init__(self, op: Callable[[Tensor], Tensor]):
        self.op = op

    def forward(self, x: Tensor, weight: None = None, bias: None = None) -> Tensor:
        if bias is not None:
            raise ValueError(f"{type(self).__name__} has no bias")
        return self.op(x)

    def transpose(self, s: Tensor, weight: None, x: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.op(leaf), leaf, s)
        return grad.contiguous(memory_format=_memory_format(x))  # sum / mean give an expanded view of s


class Activation(NamedTuple):
    """The element-wise activation that made a layer's input ``x = recompute(source)`` from the tensor kept in
    its place (see :class:`~lrp.nodes.Recomputable`)."""

    recompute: Callable[[Tensor], Tensor]
    non_negative: bool  # never outputs a negative number (ReLU)
    times: Callable[[Tensor, Tensor], Tensor] | None = None  # (t, source) ↦ t ⊙ x into t, without making x


def _itself(t: Tensor) -> Tensor:
    return t


KEPT_RELU_OUTPUT = Activation(_itself, non_negative=True)
"""A ReLU's output kept as the layer's input itself (see ``Trace.rectify``): nothing to recompute, and never
negative."""


@dataclass
class LayerCall:
    """One call of a linear map, as a rule sees it.

    source: the input x (N, C_in, *S_in), or with ``activation`` the tensor that x is made from (same
    shape, dtype and layout), made when ``x`` is first read; z: output incl. bias (N, C_out, *S_out);
    raw_weight / raw_bias: the layer's own parameters (bias may be None); folded: (scale, shift) (C_out,)
    of a BatchNorm folded into the call; z_rectified: z holds ``relu(z)``, and the relevance of the output
    is zero wherever it is (see :func:`divide_rectified`); z_rounded: z is a 16-bit layer's output widened to
    float32 (:meth:`in_float32`), so a small difference of z and another sum has lost its digits;
    input_negative: whether x has a negative entry, where known (:meth:`input_has_negative`). ``weight``
    and ``bias`` are the effective parameters, folded on first use. Modified weights are written into
    ``workspace`` when there is one: the trace's, shared by the layer calls of one explanation, which the
    backward runs one at a time; the blocks of :meth:`row_blocks` share one of their own.
    """

    linear_map: LinearMap
    source: Tensor
    z: Tensor
    raw_weight: Tensor | None
    raw_bias: Tensor | None
    folded: tuple[Tensor, Tensor] | None = None
    activation: Activation | None = None
    workspace: Workspace | None = None
    z_rectified: bool = False
    z_rounded: bool = False
    scale_positive: bool | None = None
    input_negative: bool | None = None
    _modified_count: int = field(default=0, init=False, repr=False)

    def in_float32(self) -> LayerCall:
        """This call with its tensors in float32 (see :func:`widened`); before any rule has read it. (A row
        block's copy holds its block of the weight only.)"""
        folded = None if self.folded is None else (widened(self.folded[0]), widened(self.folded[1]))
        return LayerCall(self.linear_map, widened(self.source), widened(self.z), widened(self.raw_weight),
                         widened(self.raw_bias), folded, self.activation, self.workspace, self.z_rectified,
                         z_rounded=self.z.dtype in HALF_PRECISION, scale_positive=self.scale_positive,
                         input_negative=self.input_negative)

    @cached_property
    def x(self) -> Tensor:
        """The input (N, C_in, *S_in)."""
        return self.source if self.activation is None else self.activation.recompute(self.source)

    def times_input(self, t: Tensor) -> Tensor:
        """``t ⊙ x`` written into ``t`` (shaped like x); after a ReLU, without making x where no rule has yet
        (see :func:`times_relu`)."""
        if self.activation is not None and self.activation.times is not None and "x" not in self.__dict__:
            return self.activation.times(t, self.source)
        return t.mul_(self.x)

    @cached_property
    def weight(self) -> Tensor | None:
        if self.folded is None:
            return self.raw_weight
        return self.linear_map.scale_output(self.raw_weight, self.folded[0])

    @cached_property
    def bias(self) -> Tensor | None:
        if self.folded is None:
            return self.raw_bias
        scale, shift = self.folded
        return shift if self.raw_bias is None else scale * self.raw_bias + shift

    def input_has_negative(self) -> bool:
        """Whether x has a negative entry (else every ``x⁻`` term of a rule is exactly 0); False without
        looking when x is a ReLU's output. Looked at once per call: its row blocks are told."""
        if self.input_negative is None:
            self.input_negative = not (self.activation is not None and self.activation.non_negative) and \
                bool(torch.amin(self.x) < 0)
        return self.input_negative

    def release(self, *names: str) -> None:
        """Let go of the output ``"z"`` (it reads None afterwards) or of the folded copy of ``"weight"``
        (made again if used again) once the rule is done with it. The record let go of both before
        calling the rule, so a large activation or weight copy is freed in the middle of the rule
        instead of at its end."""
        for name in names:
            if name == "z":
                self.z = None
            elif name == "weight":
                self.__dict__.pop("weight", None)  # the cached_property's value
            else:
                raise ValueError(f"a layer call can release 'z' or 'weight', not {name!r}")

    def modified(self, modify: Callable[[Tensor, Tensor | None], Tensor], scaled: bool = True) -> Tensor:
        """``modify(weight, out)``, an element-wise function of the weight (e.g. its positive part) written
        into ``out``: a workspace buffer of its own, valid while this call is explained, or None (a new
        tensor). ``scaled=False`` modifies the layer's own weight, before a folded BatchNorm's scale (see
        :meth:`inverse_scale`)."""
        weight = self.weight if scaled else self.raw_weight
        out = None if self.workspace is None else self.workspace.take(f"weight{self._modified_count}", weight)
        self._modified_count += 1
        return modify(weight, out)

    def row_blocks(self) -> list[tuple[slice, LayerCall]] | None:
        """The call split into blocks of output rows, each a call of its own, when its weight is a large
        dense one (VGG-16's 400 MB classifier layer); else None. Rules treat output neurons independently,
        so the input relevance is the sum over the blocks. A rule's modified weights (``W⁺``, ...) then exist
        one block at a time, written into buffers that the blocks share (a :class:`Workspace`): still in
        cache when the block's forward and transpose read them, and no fresh pages per block (VGG-16's first
        dense layer at batch 1, α1β0: 49 → 26 ms). Rules that read the weight once and as it is (ε) take the
        call whole instead (see ``Rule.reads_weight_once``)."""
        rows = None if self.raw_weight is None else self.linear_map.block_rows(self.raw_weight)
        if rows is None:
            return None
        blocks, workspace, negative = [], Workspace(), self.input_has_negative()
        for start in range(0, self.raw_weight.shape[0], rows):
            part = slice(start, start + rows)
            folded = None if self.folded is None else (self.folded[0][part], self.folded[1][part])
            bias = None if self.raw_bias is None else self.raw_bias[part]
            blocks.append((part, replace(self, z=self.z[..., part], raw_weight=self.raw_weight[part], raw_bias=bias,
                                         folded=folded, workspace=workspace, input_negative=negative)))
        return blocks

    def sample_blocks(self) -> list[tuple[slice, LayerCall]] | None:
        """The call split into blocks of samples, each a call of its own, when it is a CPU convolution whose input
        or output is larger than ``SAMPLE_SPLIT_BYTES``: blocks of the most samples whose input and output each
        stay within ``SAMPLE_BLOCK_BYTES`` (at least one); else None. Every rule explains each sample on its own,
        so the input relevance is the blocks' results side by side. A block looks at its own input for negative
        entries where that is not known: a block without any takes the branches that skip the ``x⁻`` terms,
        which are zero there."""
        if not isinstance(self.linear_map, Convolution) or self.source.device.type != "cpu":
            return None
        batch = self.source.shape[0]
        if batch < 2:
            return None
        per_sample = [t.numel() // batch * t.element_size() for t in (self.source, self.z) if t is not None]
        if max(per_sample) * batch <= SAMPLE_SPLIT_BYTES:
            return None
        per_block = max(1, SAMPLE_BLOCK_BYTES // max(per_sample))
        blocks = []
        for start in range(0, batch, per_block):
            part = slice(start, start + per_block)
            blocks.append((part, replace(self, source=self.source[part], z=None if self.z is None else self.z[part])))
        return blocks

    def inverse_scale(self) -> Tensor | None:
        """``1 / s`` (C_out,) for the scale ``s`` of a folded BatchNorm when every entry is positive, else
        None. Then ``W = s·V`` (per output channel) with V the layer's own weight, and ``(s·V)⁺ = s·V⁺``:
        a rule's denominator ``d`` and its modified weight ``s·V'`` can both be taken before the scale,
        ``(s·V')ᵀ (R / d) = V'ᵀ (R / (d / s))``, which saves the pass over the weight that folds it. (None
        too for a denormal s, whose 1/s may overflow, and a NaN.) ``scale_positive`` decides where known (the
        trace finds it for every BatchNorm with running statistics after the forward pass, with one wait for
        the device in all); else one reduction: on a GPU each op of a check and its wait for the device cost
        the host time (ResNet-50: ~10 ms a call when the check was seven ops)."""
        if self.folded is None:
            return None
        scale = self.folded[0]
        positive = self.scale_positive
        if positive is None:
            positive = bool(scale.amin() >= torch.finfo(scale.dtype).tiny)
        return scale.reciprocal() if positive else None

    def transpose_effective(self, s: Tensor) -> Tensor:
        """``transpose(s, weight)``; with a folded BatchNorm, scales ``s`` (a temporary of the caller, in
        place) instead of the weight when ``s`` is the smaller tensor (late layers: one weight copy per
        call saved)."""
        if self.folded is not None and s.numel() < self.raw_weight.numel():
            return self.transpose(s.mul_(self.linear_map.bias_view(self.folded[0])), self.raw_weight)
        return self.transpose(s, self.weight)

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        return self.linear_map.forward(x, weight, bias)

    def transpose(self, s: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.linear_map.transpose(s, weight, self.source)

    def transpose_sum(self, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
        """``Σ transpose(s, weight)``; the list is emptied (see :meth:`LinearMap.transpose_sum`)."""
        return self.linear_map.transpose_sum(pairs, self.source)

    def forward_pair(self, a: Tensor, weight_a: Tensor, b: Tensor, weight_b: Tensor) -> Tensor:
        return self.linear_map.forward_pair(a, weight_a, b, weight_b)

    def transpose_pair(self, s: Tensor, weight_a: Tensor, weight_b: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear_map.transpose_pair(s, weight_a, weight_b, self.source)

    def bias_term(self, modify: Callable[[Tensor], Tensor] | None = None) -> Tensor | float:
        """The (modified) bias broadcastable to ``z``, or 0.0 without bias."""
        if self.bias is None:
            return 0.0
        bias = self.bias if modify is None else modify(self.bias)
        return self.linear_map.bias_view(bias)
