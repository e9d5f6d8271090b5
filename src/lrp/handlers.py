"""Op handlers: what each torch function on the input→output path becomes in the relevance graph.

- weighted linear ops (dense, convolution, matmul with a constant) and parameter-free linear ops
  (average pooling, mean, sum): a :class:`~lrp.nodes.RecordFunction` whose backward applies the
  rule the composite chose for the innermost module of the model that is running;
- BatchNorm: folded into the producing linear op when that op's output feeds only the BatchNorm,
  otherwise explained as a per-channel affine layer;
- sums of several input-dependent tensors: split in proportion to each term;
- element-wise activations, scaling by constants, constant shifts: relevance passes unchanged;
- shape, indexing, concatenation, max pooling, padding, upsampling, dropout: the gradient is the
  correct redistribution (copying, routing, winner-takes-all), so autograd handles them as usual;
- softmax / log-softmax at the output: the logits are explained.

In-place ops run out of place, so the model's own tensors are never modified.
"""
from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import resolve_name

from . import composites as families
from .canonizers import RunningStatistics, batch_norm_affine
from .composites import Family
from .layers import Activation, Convolution, Dense, LinearMap, ParameterFree, times_relu
from .nodes import (
    BatchNormRecord,
    Foldable,
    LinearRecord,
    MaxPoolFunction,
    Produced,
    Recomputable,
    RecordFunction,
    SumFunction,
    SumRecord,
    entry_of,
    pass_through,
)

if TYPE_CHECKING:
    from .interception import Trace

__all__ = ["HANDLERS", "is_in_place", "op_name", "path_tensors", "short_name"]


def path_tensors(args: tuple, kwargs: dict) -> list[Tensor]:
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


def op_name(func: Callable) -> str:
    name = _OP_NAMES.get(func)
    if name is None:
        name = resolve_name(func) or getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        _OP_NAMES[func] = name
    return name


@cache
def short_name(op: str) -> str:
    """The op's name without its namespace (``torch.Tensor.relu_`` -> ``relu_``)."""
    return op.rsplit(".", 1)[-1]


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _input_first(trace: Trace, op: str, args: tuple, kwargs: dict, what: str) -> Tensor | None:
    """The op's first argument when it is the only input-dependent one; otherwise None after
    reporting the op (an error in strict mode; the caller then falls back to the gradient)."""
    x = args[0] if args else None
    if isinstance(x, Tensor) and x.requires_grad and not path_tensors(args[1:], kwargs):
        return x
    trace.unsupported(f"{op} with an input-dependent {what} (as in attention)")
    return None


def _weighted(trace: Trace, func, op: str, args: tuple, kwargs: dict, linear_map: LinearMap, family: type[Family],
              weight: Tensor, bias: Tensor | None) -> Tensor:
    """``func(*args, **kwargs)``, a linear op of its first argument x, explained with the composite's rule."""
    x, rest = args[0], args[1:]
    record = LinearRecord(trace, trace.next_index(), trace.name, op, trace.rule(family, op), linear_map,
                           weight.detach(), None if bias is None else bias.detach(), x_source=trace.source_of(x))
    trace.taken_by(x, record, record.rule)
    z = RecordFunction.apply(x, record, lambda: func(*args, **kwargs))
    if linear_map.channel_dim(z) == 1:
        trace.foldable[id(z)] = Foldable(weakref.ref(z), record)
    trace.produce(z, record, remake=lambda t: func(t, *rest, **kwargs))  # (holds no tensor of the forward's)
    return z


def _linear(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "weight")
    if x is None:
        return func(*args, **kwargs)
    weight, bias = _argument(args, kwargs, 1, "weight"), _argument(args, kwargs, 2, "bias")
    return _weighted(trace, func, op, args, kwargs, Dense(), families.Dense, weight, bias)


def _matmul(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "right-hand matrix")
    if x is None:
        return func(*args, **kwargs)
    other = args[1]
    if other.dim() != 2:
        trace.unsupported(f"{op} with a {other.dim()}-D right-hand operand")
        return func(*args, **kwargs)
    return _weighted(trace, func, op, args, kwargs, Dense(), families.Dense, other.t(), None)


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
        if _runs_as_products(linear_map, x, weight, bias):
            func = _products_of(weight, bias)
        return _weighted(trace, func, op, args, kwargs, linear_map, families.Convolution, weight, bias)
    return handler


def _runs_as_products(linear_map: Convolution, x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether the model's own call of a pointwise layer runs as matrix products too, as the rules' layer calls
    do (:meth:`Convolution.is_matrix_product`): the same layer up to rounding, and faster than oneDNN's. ResNet-50's
    32 pointwise layers without stride at batch 1, each timed alone with 2 threads: 28 against 46 ms; its whole
    traced forward 121 against 129 ms. Not under autocast, which would run the two in different precisions, nor
    where the weight or the bias differs from the input in dtype or device (the model's own layer then raises its
    own error)."""
    if not linear_map.is_matrix_product(x, weight):  # first: it turns away every other convolution at once
        return False
    same = all(t is None or (t.dtype == x.dtype and t.device == x.device) for t in (weight, bias))
    return same and not _autocast_on_cpu()


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled()


def _products_of(weight: Tensor, bias: Tensor | None) -> Callable[..., Tensor]:
    """The model's pointwise layer as a function of its input, with the call's other arguments ignored."""
    return lambda x, *_, **__: Convolution.products(x, weight, bias)


def _tuple(value: int | tuple, dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _explicit_padding(mode: str, kernel: tuple, dilation: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """padding='valid' / 'same' as integers: (padding on both sides, extra padding on the high
    side), the extra being 1 where 'same' needs an odd total, as in PyTorch."""
    if mode == "valid":
        return (0,) * len(kernel), ()
    totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple(t // 2 for t in totals), tuple(t % 2 for t in totals)


_BATCH_NORM_PARAMETERS = {  # positions 1-4 of F.batch_norm and of the aten-level torch.batch_norm
    F.batch_norm: ("running_mean", "running_var", "weight", "bias"),
    torch.batch_norm: ("weight", "bias", "running_mean", "running_var"),
}


def _batch_norm(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "BatchNorm parameter")
    if x is None:
        return func(*args, **kwargs)
    a = {name: _argument(args, kwargs, position, name)
         for position, name in enumerate(_BATCH_NORM_PARAMETERS[func], start=1)}
    training, eps = _argument(args, kwargs, 5, "training", False), _argument(args, kwargs, 7, "eps", 1e-5)
    record = BatchNormRecord(trace, trace.next_index(), trace.name, trace.rule(families.Normalization, op))
    if training or a["running_mean"] is None or a["running_var"] is None:  # batch statistics, from this input
        record.set_affine(*(t.detach() for t in batch_norm_affine(
            x.detach(), a["running_mean"], a["running_var"], a["weight"], a["bias"], training, eps)))
    else:  # made with the others after the forward pass (see canonizers.running_affines)
        detached = [None if a[k] is None else a[k].detach() for k in ("running_mean", "running_var", "weight", "bias")]
        trace.defer_affine(record, RunningStatistics(*detached, eps, x.dtype))
    entry = entry_of(trace.foldable, x)
    folded = entry is not None and entry.consumers == 1  # x feeds only this BatchNorm so far
    if folded:
        record.fold_into(entry.producer)
        entry.batch_norm = record
    y = RecordFunction.apply(x, record, lambda: func(*args, **kwargs))
    if folded:
        remake = _remake_with_batch_norm(trace.produced_by(x), func, args, kwargs, training)
        trace.produce(y, entry.producer, record, entry.ref, remake)
    return y


def _remake_with_batch_norm(produced: Produced | None, func, args: tuple, kwargs: dict,
                            training: bool) -> Callable[[Tensor], Tensor] | None:
    """``z ↦ func(z, *args[1:], **kwargs)`` after the op that made ``produced``: how to make a BatchNorm's output
    again from the input of the op folded into it; None where that op cannot, or with batch statistics (the
    BatchNorm would update its running statistics again)."""
    if training or produced is None or produced.remake is None:
        return None
    remake, rest = produced.remake, args[1:]
    return lambda t: func(remake(t), *rest, **kwargs)


def _parameter_free(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = _input_first(trace, op, args, kwargs, "second operand")
    if x is None:
        return func(*args, **kwargs)
    rest = args[1:]
    linear_map = ParameterFree(lambda t: func(t, *rest, **kwargs))
    record = LinearRecord(trace, trace.next_index(), trace.name, op, trace.rule(families.Pooling, op),
                           linear_map, None, None, x_source=trace.source_of(x))
    trace.taken_by(x, record, record.rule)
    return RecordFunction.apply(x, record, lambda: func(*args, **kwargs))


def _max_pool(dims: int):
    def handler(trace: Trace, func, op: str, args: tuple, kwargs: dict):
        x = _input_first(trace, op, args, kwargs, "pooling parameter")
        if x is None:
            return func(*args, **kwargs)
        kernel = _tuple(_argument(args, kwargs, 1, "kernel_size"), dims)
        stride = _argument(args, kwargs, 2, "stride", None)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _tuple(stride, dims)
        padding = _tuple(_argument(args, kwargs, 3, "padding", 0), dims)
        dilation = _tuple(_argument(args, kwargs, 4, "dilation", 1), dims)
        ceil_mode = bool(_argument(args, kwargs, 5, "ceil_mode", False))
        return_indices = op.endswith("_with_indices") or bool(_argument(args, kwargs, 6, "return_indices", False))
        out, indices = MaxPoolFunction.apply(x, dims, kernel, stride, padding, dilation, ceil_mode)
        trace.relay(x, out)
        return (out, indices) if return_indices else out
    return handler


_SUBTRACT = {"sub", "subtract", "__sub__", "__isub__", "sub_"}


def _sum(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", 1)
    short = short_name(op)
    if short == "__rsub__":  # b - a
        terms, coefficients = (a, b), (-1.0, 1.0)
    else:
        terms, coefficients = (a, b), (1.0, -alpha if short in _SUBTRACT else alpha)
    on_path = [isinstance(t, Tensor) and t.requires_grad for t in terms]
    if all(on_path):
        record = SumRecord(trace, trace.next_index(), trace.name, op, trace.rule(families.Sum, op))
        for term in terms:
            trace.taken_by(term, None, record.rule)  # its share is the term times R / stab(z)
        z = SumFunction.apply(record, coefficients, *terms)
        trace.produce(z, record)
        return z
    x = terms[on_path.index(True)]
    constant = terms[on_path.index(False)]
    coefficient_x = coefficients[on_path.index(True)]
    coefficient_c = coefficients[on_path.index(False)]
    return pass_through(x, lambda: x * coefficient_x + constant * coefficient_c
                 if coefficient_x != 1 or coefficient_c != 1 else x + constant)


_DIVIDE = {"div", "divide", "true_divide", "__truediv__", "__itruediv__", "div_"}


def _scale(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    short = short_name(op)
    if short in ("neg", "negative", "__neg__"):
        x = args[0]
        return pass_through(x, lambda: -x)
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
        return pass_through(x, lambda: x / factor)
    mask = (factor != 0) if isinstance(factor, Tensor) else (None if factor != 0 else torch.zeros((), dtype=x.dtype))
    mask = mask.to(x.dtype) if isinstance(mask, Tensor) else mask
    return pass_through(x, lambda: x * factor, mask)


@cache
def _out_of_place(func, op: str) -> Callable:
    """The out-of-place version of an in-place op (``relu_`` -> ``relu``; ``inplace=True`` -> False)."""
    short = short_name(op)
    if short.endswith("_") and not short.endswith("__"):
        owner = torch.Tensor if op.startswith("torch.Tensor.") else torch
        plain = getattr(owner, short[:-1], None)
        if plain is not None:
            return plain
    return func


_INPLACE_POSITION: dict[Callable, int] = {}  # functions with an ``inplace`` parameter: its position
_AUGMENTED = {"__iadd__", "__isub__", "__imul__", "__itruediv__"}
_NON_NEGATIVE = {"relu", "relu_", "relu6", "sigmoid", "sigmoid_", "hardsigmoid"}  # not softplus: beta < 0 flips it
"""Activations whose output is never negative: rules need not look for negative inputs after them."""


def is_in_place(func, op: str, args: tuple, kwargs: dict) -> bool:
    """Whether the call modifies its first argument (``relu_``, ``x += y``, ``inplace=True``)."""
    short = short_name(op)
    if short in _AUGMENTED or (short.endswith("_") and not short.endswith("__")):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    position = _INPLACE_POSITION.get(func)
    return position is not None and len(args) > position and bool(args[position])


def _call_out_of_place(func, op: str, args: tuple, kwargs: dict):
    func = _out_of_place(func, op)
    position = _INPLACE_POSITION.get(func)
    if position is not None:
        if "inplace" in kwargs:
            kwargs = {**kwargs, "inplace": False}
        elif len(args) > position:
            args = (*args[:position], False, *args[position + 1:])
    return func(*args, **kwargs)


def _activation(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    if not (isinstance(x, Tensor) and x.requires_grad) or len(path_tensors(args, kwargs)) > 1:
        trace.unsupported(f"{op} with an input-dependent parameter")
        return func(*args, **kwargs)
    short = short_name(op)
    relu = short in ("relu", "relu_")
    if relu and is_in_place(func, op, args, kwargs):
        y = trace.relu_in_place(x)
        if y is not None:
            return y
    y = pass_through(x, lambda: _call_out_of_place(func, op, args, kwargs))
    if "sigmoid" in op:  # explained as the logit when it is the model's last op
        trace.normalize(y, x, op, allowed_inside=True)
    if args and args[0] is x:
        rest = args[1:]
        activation = Activation(lambda t: _call_out_of_place(func, op, (t, *rest), kwargs), short in _NON_NEGATIVE,
                                times_relu if relu else None)
        trace.recomputable[id(y)] = Recomputable(weakref.ref(y), x.detach(), activation)
        if relu:
            trace.watch_relu(y, x)
    return y


def _normalizer(trace: Trace, func, op: str, args: tuple, kwargs: dict) -> Tensor:
    x = args[0] if args else kwargs.get("input")
    y = pass_through(x, lambda: func(*args, **kwargs))
    trace.normalize(y, x, op, allowed_inside=False)
    return y


_RELAYS = set("view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes swapdims movedim squeeze "
              "unsqueeze contiguous clone narrow select index_select __getitem__ expand expand_as repeat tile flip "
              "roll to type float double half bfloat16 cpu cuda max_pool1d adaptive_max_pool1d adaptive_max_pool2d "
              "adaptive_max_pool3d dropout dropout1d dropout2d dropout3d".split())
"""Ops of one input whose output elements are its elements (or multiples of them, dropout): where every op that
takes the output gives relevance in proportion to it, none reaches the input's zeros (see ``Trace.relay``)."""


def _gradient(trace: Trace, func, op: str, args: tuple, kwargs: dict):
    result = _call_out_of_place(func, op, args, kwargs)
    if short_name(op) in _RELAYS and isinstance(result, Tensor) and args and isinstance(args[0], Tensor):
        trace.relay(args[0], result)
    return result


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
    ("max_pool2d max_pool2d_with_indices", _max_pool(2)),
    ("max_pool3d max_pool3d_with_indices", _max_pool(3)),
    ("view view_as reshape reshape_as flatten unflatten permute transpose t swapaxes swapdims movedim "
     "squeeze unsqueeze contiguous clone cat concat concatenate stack hstack vstack split split_with_sizes "
     "tensor_split chunk unbind narrow select index_select __getitem__ expand expand_as repeat tile flip roll "
     "to type float double half bfloat16 cpu cuda max_pool1d max_pool1d_with_indices adaptive_max_pool1d adaptive_max_pool2d "
     "adaptive_max_pool3d adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices "
     "adaptive_max_pool3d_with_indices pad constant_pad_nd interpolate upsample upsample_nearest "
     "upsample_bilinear pixel_shuffle pixel_unshuffle dropout dropout1d dropout2d dropout3d alpha_dropout "
     "feature_alpha_dropout amax max maximum", _gradient),
]

HANDLERS: dict[Callable, Callable] = {
    function: handler for names, handler in _TABLE for function in _functions(names, *_NAMESPACES)
}
HANDLERS.update({getattr(torch.Tensor, name).__get__: _gradient for name in ("T", "mT", "H", "mH")})

for _function in HANDLERS:
    try:
        _signature = inspect.signature(_function)
    except (TypeError, ValueError):
        continue
    if "inplace" in _signature.parameters:
        _INPLACE_POSITION[_function] = list(_signature.parameters).index("inplace")
