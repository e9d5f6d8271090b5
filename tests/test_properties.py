"""Property tests on random small architectures built from the supported layers.

Hypothesis draws a network (convolutions 1D/2D with random stride / padding / dilation, BatchNorm,
ReLU / LeakyReLU / Tanh, max and average pooling, flatten, dense layers, residual blocks and
concatenated branches; no biases) and checks

- conservation: under LRP-0 the input relevance of a bias-free net sums to the explained logit;
- restoration: the model is bitwise and flag-for-flag as before every call, also a failing one;
- strictness: an unsupported op inserted anywhere raises, naming the op and its module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from conftest import never_rectified
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor

import lrp
from lrp.composites import Normalization, Pooling, Sum, Weighted
from lrp.errors import UnsupportedOperationError
from lrp.rules import Zero

DT = torch.float64
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# LRP-0 everywhere (sums, pooling and unfolded BatchNorm included): exactly conservative without biases
ALL_ZERO = lrp.Composite(by_type={Weighted: Zero(), Pooling: Zero(), Sum: Zero(), Normalization: Zero()})


# ----------------------------------------------------------------------------------------------
# random architectures


class Residual(nn.Module):
    """x + branch(x)."""

    def __init__(self, branch: nn.Sequential):
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class Concat(nn.Module):
    """cat([left(x), right(x)], dim=1)."""

    def __init__(self, left: nn.Sequential, right: nn.Sequential):
        super().__init__()
        self.left = left
        self.right = right

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class Unsupported(nn.Module):
    """An op without an LRP rule: ``sin`` or the product of two input-dependent tensors."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x) if self.kind == "sin" else torch.mul(x, x.relu())


@dataclass
class Shape:
    """The running feature shape: channels, spatial size (conv part) and dimensionality (0 = dense)."""

    channels: int
    size: int
    dims: int


def _conv(dims: int, c_in: int, c_out: int, **kwargs) -> nn.Module:
    return (nn.Conv1d, nn.Conv2d)[dims - 1](c_in, c_out, bias=False, **kwargs)


def _activation(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "tanh": nn.Tanh()}[kind]


def _batch_norm(dims: int, channels: int) -> nn.Module:
    """A BatchNorm with zero running mean and zero shift, so it adds no bias (random scale)."""
    bn = (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d)[dims](channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


@st.composite
def conv_block(draw, shape: Shape) -> nn.Module:
    """One block of the convolutional part; updates ``shape``."""
    kinds = ["conv", "bn", "act", "residual", "cat"] + (["maxpool", "avgpool"] if shape.size >= 2 else [])
    kind = draw(st.sampled_from(kinds))
    dims, c = shape.dims, shape.channels
    if kind == "conv":
        out = draw(st.integers(1, 4))
        kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        dilation, padding = draw(st.integers(1, 2)), draw(st.integers(0, 2))
        size = (shape.size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        if size < 1:
            kernel = stride = dilation = 1
            padding, size = 0, shape.size
        shape.channels, shape.size = out, size
        return _conv(dims, c, out, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    if kind == "bn":
        return _batch_norm(dims, c)
    if kind == "act":
        return _activation(draw(st.sampled_from(["relu", "leaky", "tanh"])))
    if kind == "maxpool":
        shape.size //= 2
        return (nn.MaxPool1d, nn.MaxPool2d)[dims - 1](2)
    if kind == "avgpool":
        shape.size //= 2
        return (nn.AvgPool1d, nn.AvgPool2d)[dims - 1](2)
    if kind == "residual":
        act = draw(st.sampled_from(["relu", "leaky", "tanh"]))
        return Residual(nn.Sequential(_conv(dims, c, c, kernel_size=3, padding=1), _activation(act),
                                      _conv(dims, c, c, kernel_size=3, padding=1)))
    left, right = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape.channels = left + right
    return Concat(nn.Sequential(_conv(dims, c, left, kernel_size=1)),
                  nn.Sequential(_conv(dims, c, right, kernel_size=3, padding=1), nn.ReLU()))


@st.composite
def dense_block(draw, shape: Shape) -> nn.Module:
    """One block of the dense part; updates ``shape.channels``."""
    kind = draw(st.sampled_from(["linear", "bn", "act", "residual", "cat"]))
    c = shape.channels
    if kind == "linear":
        shape.channels = draw(st.integers(2, 8))
        return nn.Linear(c, shape.channels, bias=False)
    if kind == "bn":
        return _batch_norm(0, c)
    if kind == "act":
        return _activation(draw(st.sampled_from(["relu", "leaky", "tanh"])))
    if kind == "residual":
        return Residual(nn.Sequential(nn.Linear(c, c, bias=False), nn.ReLU(), nn.Linear(c, c, bias=False)))
    left, right = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    shape.channels = left + right
    return Concat(nn.Sequential(nn.Linear(c, left, bias=False)),
                  nn.Sequential(nn.Linear(c, right, bias=False), nn.Tanh()))


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


@st.composite
def networks(draw) -> tuple[Net, Tensor]:
    """A random bias-free network in float64 (BatchNorm in training mode) and an input batch."""
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    dims = draw(st.integers(0, 2))
    shape = Shape(draw(st.integers(1, 3) if dims else st.integers(2, 6)), draw(st.integers(4, 8)), dims)
    x_shape = (draw(st.integers(1, 3)), shape.channels) + (shape.size,) * dims
    blocks: list[nn.Module] = []
    if dims:
        blocks += [draw(conv_block(shape)) for _ in range(draw(st.integers(1, 4)))]
        blocks.append(nn.Flatten())
        shape.channels *= shape.size ** dims
    blocks += [draw(dense_block(shape)) for _ in range(draw(st.integers(0, 3)))]
    blocks.append(nn.Linear(shape.channels, draw(st.integers(2, 4)), bias=False))
    return Net(blocks).to(DT).train(), torch.randn(*x_shape, dtype=DT)


# ----------------------------------------------------------------------------------------------
# model state


def _bits(t: Tensor) -> Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


def model_state(model: nn.Module) -> dict:
    """Weights and buffers bitwise, training flags, requires_grad, grads, module and global hooks."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    module = nn.modules.module
    return {
        "state": [(k, v.dtype, v.shape, _bits(v).tolist()) for k, v in model.state_dict().items()],
        "params": [(name, p.requires_grad, p.grad) for name, p in model.named_parameters()],
        "training": [(name, m.training) for name, m in model.named_modules()],
        "hooks": [(name, h, list(getattr(m, h).items())) for name, m in model.named_modules() for h in hooks],
        "global hooks": [list(module._global_forward_hooks.items()), list(module._global_forward_pre_hooks.items()),
                         list(module._global_backward_hooks.items())],
        "function modes": torch._C._len_torch_function_stack(),
    }


def _mark_user_state(model: Net, flags: list[bool]) -> None:
    """Mixed training flags and requires_grad, as a user might leave them."""
    for module, flag in zip(model.modules(), flags * len(list(model.modules()))):
        module.train(flag)
    for param, flag in zip(model.parameters(), flags[::-1] * len(list(model.parameters()))):
        param.requires_grad_(flag)


# ----------------------------------------------------------------------------------------------
# properties


@SETTINGS
@given(networks())
def test_lrp0_conserves_the_logit(net: tuple[Net, Tensor]) -> None:
    model, x = net
    expl = lrp.explain(model, x, composite=ALL_ZERO)
    logit = expl.prediction.gather(1, expl.target[:, None])[:, 0]
    magnitude = expl.relevance.reshape(len(x), -1).abs().sum(1)
    assume(bool((logit.abs() > 1e-9 * magnitude).all()))  # not a cancellation to ~0
    total = expl.relevance.reshape(len(x), -1).sum(1)
    torch.testing.assert_close(total, logit, rtol=1e-6, atol=1e-300)


@SETTINGS
@given(networks(), st.sampled_from(["zero", "epsilon"]))
def test_absorbed_relevance_accounts_for_every_loss(net: tuple[Net, Tensor], composite: str) -> None:
    # relevance is lost only where a stabiliser divides (bias-free): Σ absorbed == logit − Σ R_in,
    # and every LRP-0 row absorbs nothing
    model, x = net
    expl = lrp.explain(model, x, composite=composite, conservation=True)
    logit = expl.prediction.gather(1, expl.target[:, None])[:, 0]
    lost = logit - expl.relevance.reshape(len(x), -1).sum(1)
    rows = expl.conservation()
    absorbed = sum((row.absorbed for row in rows), torch.zeros_like(lost))
    scale = 1e-12 * (1 + logit.abs() + expl.relevance.reshape(len(x), -1).abs().sum(1))
    torch.testing.assert_close(absorbed, lost, rtol=1e-9, atol=float(scale.max()))
    for row in rows:
        if row.rule.startswith("Zero"):
            assert float(row.absorbed.abs().max()) <= 1e-9 * (1 + float(row.relevance_out.abs().max())), row


@SETTINGS
@given(networks(), st.sampled_from(["epsilon", "alpha1-beta0", "epsilon-plus-flat", "epsilon-alpha2-beta1", "gamma",
                                    "alpha2-beta1"]))
def test_rectification_changes_no_number(net: tuple[Net, Tensor], composite: str) -> None:
    # a ReLU's output in place of its input (Trace.rectify) gives the same relevance, bit for bit; for γ up to
    # rounding, since its rectified branch divides by a layer call with leaky_relu(W, 1/(1 + γ)) instead
    model, x = net
    rectified = lrp.explain(model, x, composite=composite).relevance
    expected = never_rectified(model, x, composite=composite)
    exact = composite != "gamma"
    torch.testing.assert_close(rectified, expected, rtol=0 if exact else 1e-12,
                               atol=0 if exact else 1e-12 * float(expected.abs().max()))


@SETTINGS
@given(networks(), st.sampled_from(["epsilon", "zero", "alpha2-beta1", "gamma", "epsilon-plus-flat"]),
       st.lists(st.booleans(), min_size=1, max_size=3), st.booleans())
def test_model_is_restored_after_every_call(net: tuple[Net, Tensor], composite: str, flags: list[bool],
                                            keep_layers: bool) -> None:
    model, x = net
    _mark_user_state(model, flags)
    before = model_state(model)
    x_bits = _bits(x)
    lrp.explain(model, x, composite=composite, keep_layers=keep_layers)
    assert model_state(model) == before
    with lrp.LRP(model, composite=composite) as explainer:
        explainer(x, target=0)
        assert model_state(model) == before
    assert model_state(model) == before
    assert torch.equal(_bits(x), x_bits)


@SETTINGS
@given(networks(), st.sampled_from(["sin", "mul"]), st.data())
def test_unsupported_op_anywhere_raises_and_restores(net: tuple[Net, Tensor], kind: str, data) -> None:
    model, x = net
    containers = [m for m in model.modules() if isinstance(m, nn.Sequential)]
    container = data.draw(st.sampled_from(containers), label="container")
    index = data.draw(st.integers(0, len(container)), label="index")
    blocks = list(container)
    blocks.insert(index, Unsupported(kind))
    for i, block in enumerate(blocks):  # rebuild in place so every name stays valid
        container.add_module(str(i), block)
    name = next(n for n, m in model.named_modules() if isinstance(m, Unsupported))
    model.train()
    before = model_state(model)
    try:
        lrp.explain(model, x)
    except UnsupportedOperationError as error:
        message = str(error)
    else:
        raise AssertionError(f"no error for {kind} at {name}")
    assert ("torch.sin" if kind == "sin" else "torch.mul") in message
    assert f"module '{name}' (Unsupported)" in message
    assert model_state(model) == before
