"""Operator-level interception: every torch call on the path from input to output becomes one
autograd node whose backward is that op's LRP rule.

While a model runs inside :class:`Trace`, a ``TorchFunctionMode`` sees each torch function call
(module forwards, ``F.*`` calls, tensor methods, ``x + y``). Calls that touch no tensor depending on
the input run untouched. The others are dispatched by kind:

- weighted linear ops (dense, convolution, matmul with a constant) and parameter-free linear ops
  (average pooling, mean, sum): a :class:`_LinearFunction` whose backward applies the rule chosen
  by the composite for the innermost module of the model that is running;
- BatchNorm: folded into the producing linear op when that op's output feeds only the BatchNorm,
  otherwise explained as a per-channel affine layer;
- sums of several input-dependent tensors: split in proportion to each term (:class:`_SumFunction`);
- element-wise activations, scaling by constants, constant shifts: relevance passes unchanged;
- shape, indexing, concatenation, max pooling, padding, upsampling, dropout: the gradient is the
  correct redistribution (copying, routing, winner-takes-all), so autograd handles them as usual;
- softmax / log-softmax at the output: the logits are explained.

Anything else on the path raises :class:`~lrp.errors.UnsupportedOperationError` (``strict=True``) or
falls back to the gradient with a warning. In-place ops run out of place, so the model's own
tensors are never modified.
"""
from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.overrides import TorchFunctionMode, resolve_name

from . import composites as families
from .canonizers import batch_norm_affine, fold
from .composites import Composite, Family
from .errors import UnsupportedOperationError
from .layers import ChannelAffine, Convolution, Dense, LayerCall, LinearMap, ParameterFree
from .rules import Rule

__all__ = ["Trace", "ConservationRow"]


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


class _Recomputable(NamedTuple):
    """An element-wise activation's output, recomputable from its input: a linear op that consumes
    it keeps the (anyway kept) pre-activation instead, so the activation's output can be freed."""

    ref: weakref.ref
    source: Tensor
    recompute: Callable[[Tensor], Tensor]


@dataclass(eq=False)
class _LinearRecord:
    """One call of a linear op: what its backward needs. Tensors are detached aliases (no copies)."""

    trace: "Trace"
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
    x_source: _Recomputable | None = None  # x is an activation's output: recomputed, not kept

    def layer_call(self) -> LayerCall:
        weight, bias = self.weight, self.bias
        if self.folded is not None:
            weight, bias = fold(weight, bias, *self.folded, self.linear_map.scale_output)
        x = self.x if self.x_source is None else self.x_source.recompute(self.x_source.source)
        return LayerCall(self.linear_map, x, self.z, weight, bias)

    def backward(self, relevance: Tensor) -> Tensor:
        result = self.rule.relevance(self.layer_call(), relevance)
        self.trace.log(self, relevance, result)
        self.x = self.z = self.x_source = None
        return result


@dataclass(eq=False)
class _BatchNormRecord:
    """One BatchNorm call: folded into ``producer`` or explained as a per-channel affine layer."""

    trace: "Trace"
    index: int
    name: str
    rule: Rule  # used when not folded (also when a later second use of x unfolds it)
    scale: Tensor
    shift: Tensor
    producer: _LinearRecord | None = None  # set while folded
    x: Tensor | None = None
    y: Tensor | None = None

    def backward(self, relevance: Tensor) -> Tensor:
        if self.producer is not None:
            return relevance
        layer = LayerCall(ChannelAffine(self.x.dim()), self.x, self.y, self.scale, self.shift)
        result = self.rule.relevance(layer, relevance)
        self.trace.log(self, relevance, result)
        self.x = self.y = None
        return result


@dataclass(eq=False)
class _Foldable:
    """A linear op's output that a BatchNorm may fold into, with its consumers so far."""

    ref: weakref.ref
    producer: _LinearRecord
    consumers: int = 0
    batch_norm: _BatchNormRecord | None = None


class _Normalized(NamedTuple):
    """A softmax / log-softmax / sigmoid output and the logits it was computed from."""

    ref: weakref.ref
    logits: Tensor
    op: str
    where: str
    allowed_inside: bool  # sigmoid is also an activation; softmax inside the network has no rule


class _LinearFunction(Function):
    @staticmethod
    def forward(ctx, x: Tensor, record: _LinearRecord, compute: Callable[[], Tensor]) -> Tensor:
        z = compute()
        record.z = z.detach()
        if record.x_source is None:
            record.x = x.detach()
        ctx.record = record
        return z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return ctx.record.backward(relevance), None, None


class _BatchNormFunction(Function):
    @staticmethod
    def forward(ctx, x: Tensor, record: _BatchNormRecord, compute: Callable[[], Tensor]) -> Tensor:
        y = compute()
        record.y = y.detach()
        if record.producer is not None:
            record.producer.z = record.y
        else:
            record.x = x.detach()
        ctx.record = record
        return y

    @staticmethod
    def backward(ctx, relevance: Tensor):
        return ctx.record.backward(relevance), None, None


@dataclass(eq=False)
class _SumRecord:
    trace: "Trace"
    index: int
    name: str
    op: str
    rule: Rule
    terms: list[Tensor] = field(default_factory=list)
    z: Tensor | None = None


class _SumFunction(Function):
    """z = Σ cᵢ·tᵢ over input-dependent tensors; relevance split in proportion to each term."""

    @staticmethod
    def forward(ctx, record: _SumRecord, coefficients: tuple[float, ...], *tensors: Tensor) -> Tensor:
        terms = [t.detach() * c if c != 1 else t.detach() for t, c in zip(tensors, coefficients)]
        z = terms[0]
        for term in terms[1:]:
            z = z + term
        record.terms, record.z = terms, z.detach()  # detached: the record must not hold its own output
        ctx.record, ctx.shapes = record, [t.shape for t in tensors]
        return z

    @staticmethod
    def backward(ctx, relevance: Tensor):
        record = ctx.record
        s = record.rule.divide(relevance, record.z)
        shares = [(term * s).sum_to_size(shape) for term, shape in zip(record.terms, ctx.shapes)]
        record.trace.log(record, relevance, shares)
        record.terms, record.z = [], None
        return (None, None, *shares)


class _PassFunction(Function):
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


def _pass(x: Tensor, compute: Callable[[], Tensor], mask: Tensor | None = None) -> Tensor:
    return _PassFunction.apply(x, compute, mask)


# ----------------------------------------------------------------------------------------------
# the trace of one forward pass


class Trace(TorchFunctionMode):
    """Intercepts one forward pass of ``model`` and builds the relevance graph.

    Use as a context manager around the forward call; the backward (``torch.autograd.grad`` of the
    explained output) may run after it has exited.
    """

    def __init__(self, model: nn.Module, composite: Composite, strict: bool = True, keep_layers: bool = False):
        super().__init__()
        self.model = model
        self.composite = composite
        self.strict = strict
        self.keep_layers = keep_layers
        self.names = {id(module): name for name, module in model.named_modules()}
        self.stack: list[nn.Module] = [model]
        self.first_pending = bool(composite.first)
        self.counter = 0
        self.rows: list[ConservationRow] = []
        self.layers: OrderedDict[str, Tensor | None] = OrderedDict()
        self.fallbacks: list[str] = []
        self.normalized: dict[int, _Normalized] = {}
        self.pending_keep: tuple[nn.Module, str] | None = None  # leaf module called with keyword inputs
        self.foldable: dict[int, _Foldable] = {}
        self.superseded: dict[int, weakref.ref] = {}  # inputs of in-place ops, now stale
        self.recomputable: dict[int, _Recomputable] = {}
        self._handles: list[Any] = []

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "Trace":
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            nn.modules.module.register_module_forward_hook(self._leave_module),
        ]
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []

    def _enter_module(self, module: nn.Module, inputs: tuple) -> None:
        if id(module) not in self.names:
            return
        self.stack.append(module)
        if self.keep_layers and not any(True for _ in module.children()):
            tensor = next((t for t in inputs if isinstance(t, Tensor) and t.requires_grad), None)
            if tensor is not None:
                self._keep(self.names[id(module)], tensor)
            else:  # inputs given by keyword: keep what the module's first op on the path receives
                self.pending_keep = (module, self.names[id(module)])

    def _leave_module(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if self.stack[-1] is module and len(self.stack) > 1:
            self.stack.pop()
        if self.pending_keep is not None and self.pending_keep[0] is module:
            self.pending_keep = None

    def _keep(self, name: str, tensor: Tensor) -> None:
        key, n = name, 1
        while key in self.layers:
            n += 1
            key = f"{name}#{n}"
        self.layers[key] = None

        def store(grad: Tensor) -> None:
            self.layers[key] = grad.detach()
        tensor.register_hook(store)

    # -- bookkeeping -----------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        return self.stack[-1]

    @property
    def name(self) -> str:
        return self.names[id(self.module)]

    def describe(self, name: str | None = None) -> str:
        name = self.name if name is None else name
        module = self.module if name == self.name else None
        kind = f" ({type(module).__name__})" if module is not None else ""
        return f"module '{name}'{kind}" if name else f"the model's own forward ({type(self.model).__name__})"

    def next_index(self) -> int:
        self.counter += 1
        return self.counter

    def rule(self, family: type[Family], op: str) -> Rule:
        rule, is_first = self.composite.rule_for(self.module, self.name, family, self.first_pending)
        if rule is None:
            raise UnsupportedOperationError(
                f"no rule for {op} in {self.describe()}: the composite maps nothing to this "
                f"{family.__name__} layer. Add it to by_type or by_name, or give the Composite a default."
            )
        if is_first:
            self.first_pending = False
        return rule

    def log(self, record, relevance_out: Tensor, relevance_in: Tensor | list[Tensor]) -> None:
        inputs = relevance_in if isinstance(relevance_in, list) else [relevance_in]
        total_in = sum(_per_sample(r) for r in inputs)
        op = getattr(record, "op", "batch_norm").rsplit(".", 1)[-1]
        self.rows.append(ConservationRow(record.index, record.name or "<model>", op, repr(record.rule),
                                         _per_sample(relevance_out), total_in))

    def check_consumers(self, tensors: list[Tensor], op: str) -> None:
        """Count uses of foldable outputs (unfolding a BatchNorm whose input is used twice) and
        refuse normalised outputs (softmax) used inside the network."""
        for tensor in tensors:
            key = id(tensor)
            entry = self.foldable.get(key)
            if entry is not None and entry.ref() is tensor:
                entry.consumers += 1
                if entry.batch_norm is not None and entry.batch_norm.producer is not None:
                    _unfold(entry, tensor)
            superseded = self.superseded.get(key)
            if superseded is not None and superseded() is tensor:
                raise UnsupportedOperationError(
                    f"{op} in {self.describe()} uses a tensor after an in-place op changed it. While "
                    f"explaining, in-place ops run out of place (the model's tensors are never modified), "
                    f"so use the in-place op's result (y = F.relu(x, inplace=True); x += y) instead of "
                    f"relying on its side effect"
                )
            normalized = self.normalized.get(key)
            if normalized is not None and normalized.ref() is tensor and not normalized.allowed_inside:
                raise UnsupportedOperationError(
                    f"{normalized.op} in {normalized.where} is used inside the network (by {op} in "
                    f"{self.describe()}): LRP has no rule for a softmax that is not the model's last op"
                )

    def source_of(self, x: Tensor) -> _Recomputable | None:
        """How to recompute ``x`` when it is an activation's output (see :class:`_Recomputable`)."""
        entry = self.recomputable.get(id(x))
        return entry if entry is not None and entry.ref() is x else None

    def normalize(self, output: Tensor, logits: Tensor, op: str, allowed_inside: bool) -> None:
        """Record a softmax-like op: explained through its logits when it is the model's last op."""
        self.normalized[id(output)] = _Normalized(weakref.ref(output), logits, op, self.describe(), allowed_inside)

    def output_logits(self, output: Tensor) -> Tensor:
        """The tensor to explain: the logits when ``output`` is a final softmax / log-softmax / sigmoid."""
        normalized = self.normalized.get(id(output))
        if normalized is not None and normalized.ref() is output:
            return normalized.logits
        return output

    def unsupported(self, op: str) -> None:
        where = self.describe()
        if self.strict:
            raise UnsupportedOperationError(
                f"no LRP rule for {op} in {where}, which lies on the path from input to output. "
                f"Supported: dense / convolution / transposed convolution, BatchNorm, average and max "
                f"pooling, element-wise activations, sums, scaling by constants, reshaping, indexing, "
                f"concatenation, padding, upsampling, dropout and a final softmax. Pass strict=False to "
                f"let relevance flow through {op} as the gradient (with a warning)."
            )
        self.fallbacks.append(f"{op} in {where}")

    # -- dispatch ------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        path = _path_tensors(args, kwargs)
        if not path:
            return func(*args, **kwargs)
        op = _op_name(func)
        handler = _HANDLERS.get(func)
        if handler is not None:
            self.check_consumers(path, op)
            if self.pending_keep is not None and self.pending_keep[0] is self.module:
                self._keep(self.pending_keep[1], path[0])
                self.pending_keep = None
            result = handler(self, func, op, args, kwargs)
            if result is not args[0] and isinstance(args[0], Tensor) and _is_in_place(func, op, args, kwargs):
                self.superseded[id(args[0])] = weakref.ref(args[0])
            return result
        result = func(*args, **kwargs)
        if _path_tensors((result,), {}):  # metadata (x.shape, x.dim()) and comparisons pass untouched
            self.check_consumers(path, op)
            self.unsupported(op)
        return result


def _unfold(entry: _Foldable, tensor: Tensor) -> None:
    """The pre-BatchNorm tensor has a second consumer: explain both layers separately."""
    batch_norm, producer = entry.batch_norm, entry.producer
    batch_norm.producer = None
    batch_norm.x = tensor.detach()
    producer.folded = None
    producer.z = tensor.detach()


def _per_sample(t: Tensor) -> Tensor:
    """Sum over all but the batch dimension, (N,), without copying non-contiguous tensors."""
    t = t.detach()
    if t.dim() <= 1:
        return t.reshape(-1)
    return t.sum(dim=tuple(range(1, t.dim())))


def _path_tensors(args: tuple, kwargs: dict) -> list[Tensor]:
    """The tensors among the arguments (one level of lists included) that depend on the input."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            if value.requires_grad:
                found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, Tensor) and v.requires_grad)
    return found


_OP_NAMES: dict[Callable, str] = {}


def _op_name(func: Callable) -> str:
    name = _OP_NAMES.get(func)
    if name is None:
        name = resolve_name(func) or getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        _OP_NAMES[func] = name
    return name


# ----------------------------------------------------------------------------------------------
# handlers


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _input_first(trace: Trace, op: str, args: tuple, kwargs: dict, what: str) -> Tensor | None:
    """The op's first argument when it is the only input-dependent one; otherwise None after
    reporting the op (an error in strict mode; the caller then falls back to the gradient)."""
    x = args[0] if args else None
    if isinstance(x, Tensor) and x.requires_grad and not _path_tensors(args[1:], kwargs):
        return x
    trace.unsupported(f"{op} with an input-dependent {what} (as in attention)")
    return None


def _weighted(trace: Trace, op: str, x: Tensor, linear_map: LinearMap, family: type[Family],
              weight: Tensor, bias: Tensor | None, compute: Callable[[], Tensor]) -> Tensor:
    record = _LinearRecord(trace, trace.next_index(), trace.name, op, trace.rule(family, op), linear_map,
                           weight.detach(), None if bias is None else bias.detach(), x_source=trace.source_of(x))
    z = _LinearFunction.apply(x, record, compute)
    if linear_map.channel_dim(z) == 1:
        trace.foldable[id(z)] = _Foldable(weakref.ref(z), record)
    return z


def _linear(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "weight")
    if x is None:
        return func(*args, **kwargs)
    weight, bias = _argument(args, kwargs, 1, "weight"), _argument(args, kwargs, 2, "bias")
    return _weighted(trace, op, x, Dense(), families.Dense, weight, bias, lambda: func(*args, **kwargs))


def _matmul(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "right-hand matrix")
    if x is None:
        return func(*args, **kwargs)
    other = args[1]
    if other.dim() != 2:
        trace.unsupported(f"{op} with a {other.dim()}-D right-hand operand")
        return func(*args, **kwargs)
    return _weighted(trace, op, x, Dense(), families.Dense, other.t(), None, lambda: func(*args, **kwargs))


def _convolution(transposed: bool):
    def handler(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
        x = _input_first(trace, op, args, kwargs, "weight")
        if x is None:
            return func(*args, **kwargs)
        weight, bias = _argument(args, kwargs, 1, "weight"), _argument(args, kwargs, 2, "bias")
        dims = weight.dim() - 2
        stride = _tuple(_argument(args, kwargs, 3, "stride", 1), dims)
        padding = _argument(args, kwargs, 4, "padding", 0)
        if transposed:
            output_padding = _tuple(_argument(args, kwargs, 5, "output_padding", 0), dims)
            groups = _argument(args, kwargs, 6, "groups", 1)
            dilation = _tuple(_argument(args, kwargs, 7, "dilation", 1), dims)
        else:
            output_padding = (0,) * dims
            dilation = _tuple(_argument(args, kwargs, 5, "dilation", 1), dims)
            groups = _argument(args, kwargs, 6, "groups", 1)
        extra = ()
        if isinstance(padding, str):
            padding, extra = _explicit_padding(padding, weight.shape[2:], dilation)
        linear_map = Convolution(stride, _tuple(padding, dims), dilation, groups, transposed, output_padding, extra)
        return _weighted(trace, op, x, linear_map, families.Convolution, weight, bias, lambda: func(*args, **kwargs))
    return handler


def _tuple(value: int | tuple, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _explicit_padding(mode: str, kernel: tuple, dilation: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """padding='valid' / 'same' as integers: (padding on both sides, extra padding on the high
    side), the extra being 1 where 'same' needs an odd total, as in PyTorch."""
    if mode == "valid":
        return (0,) * len(kernel), ()
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple(t // 2 for t in totals), tuple(t % 2 for t in totals)


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def _batch_norm(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    x = _input_first(trace, op, args, kwargs, "BatchNorm parameter")
    if x is None:
        return func(*args, **kwargs)
    scale, shift = batch_norm_affine(x.detach(), a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                     a["training"], a["eps"])
    record = _BatchNormRecord(trace, trace.next_index(), trace.name, trace.rule(families.Normalization, op),
                              scale.detach(), shift.detach())
    entry = trace.foldable.get(id(x))
    if entry is not None and entry.ref() is x and entry.consumers == 1:  # x feeds only this BatchNorm so far
        record.producer = entry.producer
        entry.batch_norm = record
        entry.producer.folded = (record.scale, record.shift)
    return _BatchNormFunction.apply(x, record, lambda: func(*args, **kwargs))


def _parameter_free(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "second operand")
    if x is None:
        return func(*args, **kwargs)
    rest = args[1:]
    linear_map = ParameterFree(lambda t: func(t, *rest, **kwargs))
    record = _LinearRecord(trace, trace.next_index(), trace.name, op, trace.rule(families.Pooling, op),
                           linear_map, None, None, x_source=trace.source_of(x))
    return _LinearFunction.apply(x, record, lambda: func(*args, **kwargs))


_SUBTRACT = {"sub", "subtract", "__sub__", "__isub__", "sub_"}


def _sum(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", 1)
    short = op.rsplit(".", 1)[-1]
    if short == "__rsub__":  # b - a
        terms, coefficients = (a, b), (-1.0, 1.0)
    else:
        terms, coefficients = (a, b), (1.0, -alpha if short in _SUBTRACT else alpha)
    on_path = [isinstance(t, Tensor) and t.requires_grad for t in terms]
    if all(on_path):
        record = _SumRecord(trace, trace.next_index(), trace.name, op, trace.rule(families.Sum, op))
        return _SumFunction.apply(record, coefficients, *terms)
    x = terms[on_path.index(True)]
    constant = terms[on_path.index(False)]
    coefficient_x = coefficients[on_path.index(True)]
    coefficient_c = coefficients[on_path.index(False)]
    return _pass(x, lambda: x * coefficient_x + constant * coefficient_c
                 if coefficient_x != 1 or coefficient_c != 1 else x + constant)


_DIVIDE = {"div", "divide", "true_divide", "__truediv__", "__itruediv__", "div_"}


def _scale(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    short = op.rsplit(".", 1)[-1]
    if short in ("neg", "negative", "__neg__"):
        x = args[0]
        return _pass(x, lambda: -x)
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
    on_path = [isinstance(t, Tensor) and t.requires_grad for t in (a, b)]
    if all(on_path) or (short in _DIVIDE and on_path[1]):
        trace.unsupported(f"{op} of two input-dependent tensors")
        return func(*args, **kwargs)
    if kwargs.get("rounding_mode") is not None:
        trace.unsupported(f"{op} with rounding_mode")
        return func(*args, **kwargs)
    x, factor = (a, b) if on_path[0] else (b, a)
    if short in _DIVIDE:
        return _pass(x, lambda: x / factor)
    mask = (factor != 0) if isinstance(factor, Tensor) else (None if factor != 0 else torch.zeros((), dtype=x.dtype))
    mask = mask.to(x.dtype) if isinstance(mask, Tensor) else mask
    return _pass(x, lambda: x * factor, mask)


def _out_of_place(func, op: str) -> Callable:
    """The out-of-place version of an in-place op (``relu_`` -> ``relu``; ``inplace=True`` -> False)."""
    short = op.rsplit(".", 1)[-1]
    if short.endswith("_") and not short.endswith("__"):
        owner = torch.Tensor if op.startswith("torch.Tensor.") else torch
        plain = getattr(owner, short[:-1], None)
        if plain is not None:
            return plain
    return func


_INPLACE_SIGNATURES: dict[Callable, inspect.Signature] = {}
_AUGMENTED = {"__iadd__", "__isub__", "__imul__", "__itruediv__"}


def _is_in_place(func, op: str, args: tuple, kwargs: dict) -> bool:
    """Whether the call modifies its first argument (``relu_``, ``x += y``, ``inplace=True``)."""
    short = op.rsplit(".", 1)[-1]
    if short in _AUGMENTED or (short.endswith("_") and not short.endswith("__")):
        return True
    signature = _INPLACE_SIGNATURES.get(func)
    if signature is None or (len(args) <= 1 and not kwargs.get("inplace", False)):
        return False
    return bool(signature.bind(*args, **kwargs).arguments.get("inplace", False))


def _call_out_of_place(func, op: str, args: tuple, kwargs: dict):
    func = _out_of_place(func, op)
    signature = _INPLACE_SIGNATURES.get(func)
    if signature is not None:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["inplace"] = False
        return func(*bound.args, **bound.kwargs)
    return func(*args, **kwargs)


def _activation(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    if not (isinstance(x, Tensor) and x.requires_grad) or len(_path_tensors(args, kwargs)) > 1:
        trace.unsupported(f"{op} with an input-dependent parameter")
        return func(*args, **kwargs)
    y = _pass(x, lambda: _call_out_of_place(func, op, args, kwargs))
    if "sigmoid" in op:  # explained as the logit when it is the model's last op
        trace.normalize(y, x, op, allowed_inside=True)
    if args and args[0] is x:
        rest = args[1:]
        trace.recomputable[id(y)] = _Recomputable(
            weakref.ref(y), x.detach(), lambda t: _call_out_of_place(func, op, (t, *rest), kwargs))
    return y


def _normalizer(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    y = _pass(x, lambda: func(*args, **kwargs))
    trace.normalize(y, x, op, allowed_inside=False)
    return y


def _gradient(trace: Trace, func, op: str, args: tuple, kwargs: dict):
    return _call_out_of_place(func, op, args, kwargs)


def _functions(names: str, *owners) -> list[Callable]:
    found = []
    for owner in owners:
        for name in names.split():
            function = getattr(owner, name, None)
            if function is not None and function not in found:
                found.append(function)
    return found


_NAMESPACES = (torch, torch.Tensor, F, torch._C._nn)

_TABLE: list[tuple[str, Callable]] = [
    ("linear", _linear),
    ("matmul mm __matmul__", _matmul),
    ("conv1d conv2d conv3d", _convolution(False)),
    ("conv_transpose1d conv_transpose2d conv_transpose3d", _convolution(True)),
    ("batch_norm", _batch_norm),
    ("avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d mean sum",
     _parameter_free),
    ("add __add__ __radd__ __iadd__ add_ sub subtract __sub__ __rsub__ __isub__ sub_", _sum),
    ("mul multiply __mul__ __rmul__ __imul__ mul_ div divide true_divide __truediv__ __itruediv__ div_ neg "
     "negative __neg__", _scale),
    ("relu relu_ relu6 leaky_relu leaky_relu_ elu elu_ selu selu_ celu celu_ gelu silu mish sigmoid sigmoid_ "
     "tanh tanh_ softplus hardtanh hardtanh_ hardswish hardsigmoid logsigmoid softsign tanhshrink threshold "
     "threshold_ prelu rrelu rrelu_ clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_ "
     "hardshrink softshrink", _activation),
    ("softmax log_softmax", _normalizer),
    ("view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes swapdims movedim "
     "squeeze unsqueeze contiguous clone cat concat concatenate stack hstack vstack split split_with_sizes "
     "tensor_split chunk unbind narrow select index_select __getitem__ expand expand_as repeat tile flip roll "
     "to type float double half bfloat16 cpu cuda max_pool1d max_pool2d max_pool3d max_pool1d_with_indices "
     "max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d "
     "adaptive_max_pool3d adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices "
     "adaptive_max_pool3d_with_indices pad constant_pad_nd interpolate upsample upsample_nearest "
     "upsample_bilinear pixel_shuffle pixel_unshuffle dropout dropout1d dropout2d dropout3d alpha_dropout "
     "feature_alpha_dropout amax max maximum", _gradient),
]

_HANDLERS: dict[Callable, Callable] = {
    function: handler for names, handler in _TABLE for function in _functions(names, *_NAMESPACES)
}
_HANDLERS.update({getattr(torch.Tensor, name).__get__: _gradient for name in ("T", "mT", "H", "mH")})

for _function in _HANDLERS:
    try:
        _signature = inspect.signature(_function)
    except (TypeError, ValueError):
        continue
    if "inplace" in _signature.parameters:
        _INPLACE_SIGNATURES[_function] = _signature
