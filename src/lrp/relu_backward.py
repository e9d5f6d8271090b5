"""Modified ReLU gradients for guided backpropagation and deconvnet, without module hooks.

While a model runs inside :class:`ModifiedReLUBackward`, a ``TorchFunctionMode`` catches every ReLU
call whose input depends on the explained input, wherever it comes from: ``nn.ReLU`` modules (they
call ``F.relu``), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place forms ``relu_``,
``F.relu(inplace=True)`` and ``nn.ReLU(inplace=True)``. Each becomes one autograd node whose forward
is the ordinary ReLU (in place where the model asked for it) and whose backward, for the gradient
``g`` arriving at the ReLU's output and its input ``x``, is

- ``"guided"`` (guided backpropagation, Springenberg et al. 2015): ``g · [x > 0] · [g > 0]``;
- ``"deconvnet"`` (Zeiler & Fergus 2014): ``g · [g > 0]`` (the forward mask is ignored).

Nothing is attached to the model; leaving the ``with`` block (also by an exception) ends it.
Other activations (``relu6``, ``leaky_relu``, ``clamp(min=0)``) keep their ordinary gradient.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx
from torch.overrides import TorchFunctionMode

from .layers import where_positive

__all__ = ["RELU_RULES", "ModifiedReLUBackward", "ReLURule"]

ReLURule = Literal["guided", "deconvnet"]
RELU_RULES: tuple[str, ...] = get_args(ReLURule)

_IN_PLACE: dict[object, bool] = {
    F.relu: False,  # in place when called with inplace=True (nn.ReLU passes its own flag)
    torch.relu: False,
    Tensor.relu: False,
    torch.relu_: True,  # also F.relu_
    Tensor.relu_: True,
}
"""The ReLU entry points a model can call, and whether each modifies its argument."""


class _ModifiedReLU(torch.autograd.Function):
    """ReLU forward (optionally in place) with the guided or deconvnet backward."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, guided: bool, in_place: bool) -> Tensor:
        if in_place:
            ctx.mark_dirty(x)
            output = x.relu_()
        else:
            output = x.relu()
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(output)  # output > 0 exactly where x > 0, also after an in-place op
        return output

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        positive = grad.clamp_min(0)
        if ctx.guided:
            (output,) = ctx.saved_tensors
            positive = where_positive(positive, output)
        return positive, None, None


class ModifiedReLUBackward(TorchFunctionMode):
    """Context manager: ReLUs called inside it get the ``rule``'s backward (see the module docstring).

    Only calls on tensors that require grad are rerouted; the forward values are unchanged.
    """

    def __init__(self, rule: ReLURule):
        if rule not in RELU_RULES:
            raise ValueError(f"unknown ReLU rule {rule!r}; choose one of {RELU_RULES}")
        super().__init__()
        self.guided = rule == "guided"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_place = _IN_PLACE.get(func)
        x = args[0] if args else kwargs.get("input")
        if in_place is None or not isinstance(x, Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        if func is F.relu:
            in_place = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        return _ModifiedReLU.apply(x, self.guided, in_place)
