"""The relevance graph's nodes: one autograd Function per kind of op, whose backward is the rule.

A node keeps what its rule needs as detached aliases (no copies) in a record, and frees them once
its backward has run. Records also feed the conservation table (:class:`ConservationRow`).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import torch
from torch import Tensor
from torch.autograd import Function

from .layers import HALF_PRECISION, Activation, ChannelAffine, LayerCall, LinearMap, sum_taking, widened
from .rules import Rule

if TYPE_CHECKING:
    from .interception import Trace

__all__ = [
    "BatchNormRecord",
    "ConservationRow",
    "Foldable",
    "LinearRecord",
    "MaxPoolFunction",
    "Normalized",
    "PassFunction",
    "Produced",
    "ReLUInPlaceFunction",
    "Recomputable",
    "RecordFunction",
    "Rectifiable",
    "SumFunction",
    "SumRecord",
    "entry_of",
    "pass_through",
    "per_sample",
    "unfold",
]


@dataclass
class ConservationRow:
    """Relevance entering and leaving one explained op, per sample (shape (N,))."""

    index: int
    layer: str
    op: str
    rule: str
    relevance_out: Tensor
    relevance_in: Tensor

    @property
    def absorbed(self) -> Tensor:
        """Relevance absorbed by the bias and the stabiliser (out − in), per sample."""
        return self.relevance_out - self.relevance_in

    def __str__(self) -> str:
        out, into = self.relevance_out.sum().item(), self.relevance_in.sum().item()
        return f"{self.layer:<24} {self.op:<20} {self.rule:<48} out {out: .6g}  in {into: .6g}  absorbed {out - into: .3g}"


class Recomputable(NamedTuple):
    """An element-wise activation's output, recomputable from its input: a linear op that consumes
    it keeps the pre-activation (a detached alias; usually kept anyway by the op that produced it)
    instead, so the activation's output can be freed."""

    ref: weakref.ref
    source: Tensor
    activation: Activation


Entry = TypeVar("Entry")


def entry_of(table: dict[int, Entry], tensor: Tensor) -> Entry | None:
    """``table``'s entry for ``tensor``, or None. The trace's tables are keyed by ``id``, which a new tensor may
    take over once this one is freed, so an entry counts only while its weak reference ``ref`` still points
    at ``tensor``."""
    entry = table.get(id(tensor))
    return entry if entry is not None and entry.ref() is tensor else None


def _apply_rule(rule: Rule, layer: LayerCall, relevance: Tensor) -> Tensor:
    """``rule.relevance(layer, relevance)``; in float32 for a float16 / bfloat16 call (see :func:`layers.widened`),
    whose result the caller hands on in the relevance's dtype. (A row block widens its own rows only.)"""
    if relevance.dtype in HALF_PRECISION:
        return rule.relevance(layer.in_float32(), relevance.float())
    return rule.relevance(layer, relevance)


@dataclass(eq=False)
class LinearRecord:
    """One call of a linear op: what its backward needs. Tensors are detached aliases (no copies)."""

    trace: Trace
    index: int
    name: str
    op: str
    rule: Rule
    linear_map: LinearMap
    weight: Tensor | None
    bias: Tensor | None
    x: Tensor | None = None
    z: Tensor | None = None
    folded: tuple[Tensor, Tensor] | None = None  # (scale, shift) of a BatchNorm folded into this op
    scale_positive: bool | None = None  # whether the folded scale is positive everywhere, where known
    x_source: Recomputable | None = None  # x = activation(source), made again when needed, not kept
    z_rectified: bool = False  # z holds relu(z) (see Trace.rectify)
    remake: Callable[[Tensor], Tensor] | None = None  # z = remake(x): z's values were overwritten (see Trace._rectify)

    def keep(self, x: Tensor, z: Tensor) -> None:
        self.z = z.detach()
        if self.x_source is None:
            self.x = x.detach()

    def layer_call(self) -> LayerCall:
        source, activation = (self.x, None) if self.x_source is None else (self.x_source.source,
                                                                            self.x_source.activation)
        layer = LayerCall(self.linear_map, source, self.z, self.weight, self.bias, self.folded, activation,
                          self.trace.workspace, z_rectified=self.z_rectified, scale_positive=self.scale_positive)
        if self.remake is not None:  # the same op (and folded BatchNorm) on the same input: the same numbers
            layer.z = self.remake(layer.x)
        return layer

    def backward(self, relevance: Tensor) -> Tensor:
        layer = self.layer_call()
        self.x = self.z = self.x_source = self.remake = None  # the rule may release them early (LayerCall.release)
        # in one piece when the rule reads the weight once, unless a 16-bit call would widen all of it to float32
        whole = self.rule.reads_weight_once() and relevance.dtype not in HALF_PRECISION
        blocks = None if whole else layer.row_blocks()
        samples = layer.sample_blocks() if blocks is None else None
        if samples is not None:
            source = layer.source  # x's shape and layout, for the assembled relevance
            del layer  # each block holds what it needs
            result = None
            for part, block in samples:
                share = _apply_rule(self.rule, block, relevance[part])
                if result is None:
                    result = torch.empty_like(source, dtype=share.dtype)
                result[part] = share
        elif blocks is None:
            result = _apply_rule(self.rule, layer, relevance)
        else:
            del layer  # each block holds what it needs
            result = sum_taking(blocks, lambda rows, block: _apply_rule(self.rule, block, relevance[..., rows]))
        self.trace.log(self, relevance, result)
        return _in_dtype(result, relevance.dtype)


@dataclass(eq=False)
class BatchNormRecord:
    """One BatchNorm call: folded into ``producer`` or explained as a per-channel affine layer. Its map
    ``y = scale · x + shift`` (both (C,)) is set during the forward pass or, from running statistics, with
    the others after it (:meth:`Trace.defer_affine`)."""

    trace: Trace
    index: int
    name: str
    rule: Rule  # used when not folded (also when a later second use of x unfolds it)
    scale: Tensor | None = None
    shift: Tensor | None = None
    producer: LinearRecord | None = None  # set while folded
    x: Tensor | None = None
    y: Tensor | None = None

    def set_affine(self, scale: Tensor, shift: Tensor, positive: bool | None = None) -> None:
        """The map, and whether ``scale`` is positive everywhere where that is known (``positive``)."""
        self.scale, self.shift = scale, shift
        if self.producer is not None:
            self.producer.folded, self.producer.scale_positive = (scale, shift), positive

    def fold_into(self, producer: LinearRecord) -> None:
        self.producer = producer
        if self.scale is not None:
            producer.folded = (self.scale, self.shift)

    def keep(self, x: Tensor, y: Tensor) -> None:
        self.y = y.detach()
        if self.producer is not None:
            self.producer.z = self.y  # folded: the producer's rule divides by the BatchNorm's output
        else:
            self.x = x.detach()

    def backward(self, relevance: Tensor) -> Tensor:
        if self.producer is not None:
            self.y = None  # the producer's z, which its rule releases when done with it
            return relevance
        layer = LayerCall(ChannelAffine(self.x.dim()), self.x, self.y, self.scale, self.shift)
        result = _apply_rule(self.rule, layer, relevance)
        self.trace.log(self, relevance, result)
        self.x = self.y = None
        return _in_dtype(result, relevance.dtype)


@dataclass(eq=False)
class Foldable:
    """A linear op's output that a BatchNorm may fold into, with its consumers so far."""

    ref: weakref.ref
    producer: LinearRecord
    consumers: int = 0
    batch_norm: BatchNormRecord | None = None


@dataclass(eq=False)
class Produced:
    """An output ``z`` of a linear op or sum whose rule can take ``relu(z)`` in its place or never reads z (see
    :func:`~lrp.rules.takes_rectified_output`, :func:`~lrp.rules.ignores_output`), with its consumers so far;
    ``batch_norm``: the BatchNorm folded into ``record`` whose output z is."""

    ref: weakref.ref
    record: LinearRecord | SumRecord
    batch_norm: BatchNormRecord | None = None
    batch_norm_input: weakref.ref | None = None  # the folded BatchNorm's input, which a later use would unfold
    remake: Callable[[Tensor], Tensor] | None = None  # z from the linear op's input, where that is exact
    consumers: int = 0


@dataclass(eq=False)
class Rectifiable:
    """A ReLU's output ``x = relu(z)`` with ``z`` from ``produced``, and the ops that took x so far: how many,
    how many of them give relevance in proportion to x, and the linear ops among them (which keep z to
    make x again), see ``Trace.rectify``. ``kept`` (a detached alias of x) keeps x's memory until that is
    decided; ``ref`` is a weak reference to x itself, which reports when the model lets go of x.

    ``in_place``: the ReLU ran in place over z (``Trace.relu_in_place``), so x is z's tensor, decided on after
    the forward (x's memory is the producer's z: ``kept`` is None). ``relays``: the outputs of ops that took x
    and pass on its elements (max pooling, reshaping, see ``Trace.relay``), each an entry of its own with its
    consumers and ``root``, the entry of x (``produced``, ``takers`` and ``in_place`` unused there); they count
    as proportional where every op that took them is. ``pending``: how many of x and the relays' outputs the model
    still holds (a ReLU out of place is decided on when none)."""

    ref: weakref.ref
    kept: Tensor | None
    produced: Produced
    consumers: int = 0
    proportional: int = 0
    takers: list[LinearRecord] = field(default_factory=list)
    in_place: bool = False
    relays: list[Rectifiable] = field(default_factory=list)
    root: Rectifiable | None = None
    pending: int = 1


class Normalized(NamedTuple):
    """A softmax / log-softmax / sigmoid output and the logits it was computed from."""

    ref: weakref.ref
    logits: Tensor
    op: str
    where: str
    allowed_inside: bool  # sigmoid is also an activation; softmax inside the network has no rule


class RecordFunction(Function):
    """The node of a linear op or BatchNorm: ``record.keep`` stores what the rule will need from the
    forward, ``record.backward`` applies the rule."""

    @staticmethod
    def forward(ctx, x: Tensor, record: LinearRecord | BatchNormRecord, compute: Callable[[], Tensor]) -> Tensor:
        output = compute()
        record.keep(x, output)
        ctx.record = record
        return output

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return ctx.record.backward(relevance), None, None


@dataclass(eq=False)
class SumRecord:
    trace: Trace
    index: int
    name: str
    op: str
    rule: Rule
    terms: list[Tensor] = field(default_factory=list)
    z: Tensor | None = None
    z_rectified: bool = False  # z holds relu(z) (see Trace.rectify)


class SumFunction(Function):
    """z = Σ cᵢ·tᵢ over input-dependent tensors; relevance split in proportion to each term."""

    @staticmethod
    def forward(ctx, record: SumRecord, coefficients: tuple[float, ...], *tensors: Tensor) -> Tensor:
        terms = [t.detach() * c if c != 1 else t.detach() for t, c in zip(tensors, coefficients)]
        z = _summed(terms)
        record.terms, record.z = terms, z.detach()  # detached: the record must not hold its own output
        ctx.record, ctx.shapes = record, [t.shape for t in tensors]
        return z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        record = ctx.record
        dtypes = [term.dtype for term in record.terms]
        # z is None where a ReLU ran in place over it and the rule needs its negative values: made again from the
        # terms, the same numbers (see Trace._rectify)
        z = _summed(record.terms) if record.z is None else record.z
        relevance, z = widened(relevance), widened(z)  # float32 for 16-bit sums (see layers.widened)
        s = record.rule.divide_output(relevance, z, record.z_rectified)
        *others, last = [widened(term) for term in record.terms]
        shares = [(term * s).sum_to_size(shape) for term, shape in zip(others, ctx.shapes)]
        if (last.shape, last.stride(), last.dtype) == (s.shape, s.stride(), s.dtype):
            shares.append(torch.mul(last, s, out=s))  # s is this call's own: the last share takes its place
        else:
            shares.append((last * s).sum_to_size(ctx.shapes[-1]))
        record.trace.log(record, relevance, shares)
        record.terms, record.z = [], None
        return (None, None, *(_in_dtype(share, dtype) for share, dtype in zip(shares, dtypes)))


def _summed(terms: list[Tensor]) -> Tensor:
    """``terms[0] + terms[1] + …``, always in this order (a sum made again equals the forward's bit for bit)."""
    z = terms[0]
    for term in terms[1:]:
        z = z + term
    return z


class PassFunction(Function):
    """Relevance passes unchanged (summed over broadcast copies), optionally masked."""

    @staticmethod
    def forward(ctx, x: Tensor, compute: Callable[[], Tensor], mask: Tensor | None) -> Tensor:
        ctx.shape, ctx.mask = x.shape, mask
        return compute()

    @staticmethod
    def backward(ctx, relevance: Tensor):
        if ctx.mask is not None:
            relevance = relevance * ctx.mask
        if relevance.shape != ctx.shape:
            relevance = relevance.sum_to_size(ctx.shape)
        return relevance, None, None


class MaxPoolFunction(Function):
    """Max pooling, winner takes all: the gradient, but keeping only the indices, not the input
    that autograd's own max pooling keeps (with in-place ReLUs, the only copy of that activation)."""

    @staticmethod
    def forward(ctx, x: Tensor, dims: int, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                ceil_mode: bool):
        pool = torch.ops.aten.max_pool2d_with_indices if dims == 2 else torch.ops.aten.max_pool3d_with_indices
        out, indices = pool(x, kernel, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(indices)
        ctx.pool = (dims, kernel, stride, padding, dilation, ceil_mode)
        ctx.input = (x.shape, x.stride(), x.is_contiguous(), x.dtype, x.device)
        return out, indices

    @staticmethod
    def backward(ctx, relevance: Tensor, _):
        (indices,) = ctx.saved_tensors
        dims, kernel, stride, padding, dilation, ceil_mode = ctx.pool
        shape, strides, contiguous, dtype, device = ctx.input
        # The CPU kernels read only the stand-in's shape and layout: a contiguous one is one element broadcast,
        # allocating nothing (the paper's model, epsilon-gamma-box: a live peak of 889 instead of 914 MiB). CUDA's
        # copy a broadcast one (an H100, 8×64×112×112: a peak of 49.0 instead of 24.5 MiB), so they get a strided
        # one.
        if contiguous and device.type == "cpu":
            stand_in = torch.empty((), dtype=dtype, device=device).expand(shape)
        else:
            stand_in = torch.empty_strided(shape, strides, dtype=dtype, device=device)
        backward = torch.ops.aten.max_pool2d_with_indices_backward if dims == 2 else \
            torch.ops.aten.max_pool3d_with_indices_backward
        return (backward(relevance, stand_in, kernel, stride, padding, dilation, ceil_mode, indices),
                None, None, None, None, None, None)


def _in_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``: a 16-bit layer's float32 result (see :func:`layers.widened`) converted back, others as
    they are (without the call of a no-op ``t.to``)."""
    return t if t.dtype == dtype else t.to(dtype)


class ReLUInPlaceFunction(Function):
    """``relu_`` of a tensor whose old values nothing reads any more, or that can be made again (see
    ``Trace.relu_in_place``): run in place, as the model asked; relevance passes unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.mark_dirty(x)
        return x.relu_()

    @staticmethod
    def backward(ctx, relevance: Tensor) -> Tensor:
        return relevance


def pass_through(x: Tensor, compute: Callable[[], Tensor], mask: Tensor | None = None) -> Tensor:
    return PassFunction.apply(x, compute, mask)



def unfold(entry: Foldable, tensor: Tensor) -> None:
    """The pre-BatchNorm tensor has a second consumer: explain both layers separately."""
    batch_norm, producer = entry.batch_norm, entry.producer
    batch_norm.producer = None
    batch_norm.x = tensor.detach()
    producer.folded = None
    producer.z = tensor.detach()


def per_sample(t: Tensor) -> Tensor:
    """Sum over all but the batch dimension, (N,), without copying non-contiguous tensors."""
    t = t.detach()
    if t.dim() <= 1:
        return t.reshape(-1)
    return t.sum(dim=tuple(range(1, t.dim())))
