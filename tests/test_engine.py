"""Behaviour of the engine (``lrp.explain`` / ``lrp.LRP``) on graph models, targets, layer records,
errors, restoration of the model, dtypes and devices.

Every expected value comes from an independent source: hand-computed numbers, conservation
(the input relevance of a bias-free net under LRP-0 sums to the explained logit), or the slow
float64 reference below, which applies the rules one step at a time with plain autograd.
"""
from __future__ import annotations

import copy
import gc
import re
import warnings
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import lrp
from lrp import interception
from lrp.canonizers import RunningStatistics, batch_norm_affine, positive_everywhere, running_affines
from lrp.composites import Normalization, Pooling, Sum, Weighted
from lrp.engine import all_finite
from lrp.errors import NonFiniteError, TargetError, UnsupportedOperationError
from lrp.layers import LayerCall
from lrp.rules import Epsilon, Rule, Zero

DT = torch.float64
EPS = 1e-6  # the "epsilon" composite's epsilon, also the stabiliser of sums, pooling and BatchNorm
# LRP-0 everywhere, sums and pooling included: exactly conservative on bias-free nets
ALL_ZERO = lrp.Composite(by_type={Weighted: Zero(), Pooling: Zero(), Sum: Zero(), Normalization: Zero()})


# ----------------------------------------------------------------------------------------------
# slow float64 reference


def _divide(relevance: Tensor, z: Tensor, eps: float) -> Tensor:
    """R / (z + eps·sign(z)) with sign(0) = +1; for eps = 0, 0 where z = 0."""
    if eps == 0:
        return torch.where(z == 0, torch.zeros_like(z), relevance / torch.where(z == 0, torch.ones_like(z), z))
    return relevance / (z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


def rule_step(f: Callable[[Tensor], Tensor], x: Tensor, relevance: Tensor, eps: float = EPS) -> Tensor:
    """The epsilon rule for an affine map ``f`` (bias included): ``x ⊙ Jᵀ (R / stab(f(x)))``."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = f(leaf)
        (c,) = torch.autograd.grad(z, leaf, _divide(relevance, z.detach(), eps))
    return x.detach() * c


def grad_step(f: Callable[[Tensor], Tensor], x: Tensor, relevance: Tensor) -> Tensor:
    """Relevance routed by the gradient: ``Jᵀ R`` (max pooling, reshapes, upsampling, dropout)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (c,) = torch.autograd.grad(f(leaf), leaf, relevance)
    return c


def sum_split(terms: list[Tensor], relevance: Tensor, eps: float = EPS) -> list[Tensor]:
    """Relevance of ``z = Σ terms`` split in proportion to each term."""
    s = _divide(relevance, sum(terms), eps)
    return [t * s for t in terms]


def start(logits: Tensor, target: Tensor) -> Tensor:
    """Output relevance: the target logit, zero elsewhere. logits (N, C), target (N,)."""
    r = torch.zeros_like(logits)
    return r.scatter(1, target[:, None], logits.gather(1, target[:, None]))


RULE, PASS, GRAD = "rule", "pass", "grad"
_RULE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PASS_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Tanh)


def steps_of(model: nn.Sequential) -> list[tuple[str, Callable]]:
    """(kind, function) per layer of a plain chain."""
    return [(RULE if isinstance(m, _RULE_TYPES) else PASS if isinstance(m, _PASS_TYPES) else GRAD, m)
            for m in model]


@torch.no_grad()
def reference(steps: list[tuple[str, Callable]], x: Tensor, target: Tensor | None = None,
              eps: float = EPS, relevance: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
    """Slow LRP of a chain: (input relevance, relevance entering every step, logits)."""
    acts = [x]
    for _, f in steps:
        acts.append(f(acts[-1]))
    logits = acts[-1]
    if relevance is None:
        relevance = start(logits, logits.argmax(1) if target is None else target)
    entering = []
    for (kind, f), a in zip(reversed(steps), reversed(acts[:-1])):
        if kind == RULE:
            relevance = rule_step(f, a, relevance, eps)
        elif kind == GRAD:
            relevance = grad_step(f, a, relevance)
        entering.append(relevance)
    return relevance, entering[::-1], logits


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def assert_conserved(expl: lrp.Explanation, rtol: float = 1e-6) -> None:
    """Σ input relevance == explained logit, per sample."""
    logit = expl.prediction.gather(1, expl.target[:, None])[:, 0]
    total = expl.relevance.reshape(len(logit), -1).sum(1)
    close(total, logit, rtol=rtol, atol=0.0)


# ----------------------------------------------------------------------------------------------
# 1. graph models


class Residual(nn.Module):
    """out = b(a(x) ⊕ x) where ⊕ is written as ``x + y``, ``torch.add`` or ``out += identity``."""

    def __init__(self, mode: str):
        super().__init__()
        self.a = nn.Linear(2, 2, bias=False)
        self.b = nn.Linear(2, 1, bias=False)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        out = self.a(x)
        if self.mode == "plus":
            out = out + x
        elif self.mode == "torch.add":
            out = torch.add(out, x)
        elif self.mode == "radd":
            out = x + out
        else:
            identity = x
            out += identity
        return self.b(out)


@pytest.mark.parametrize("mode", ["plus", "torch.add", "radd", "iadd"])
def test_residual_sum_splits_in_proportion_hand_computed(mode: str) -> None:
    # a = diag(1, 2), b = [1, 1], x = [1, 1]: a(x) = [1, 2], sum = [2, 3], output 5.
    # R at the sum is [2, 3]; the branch a(x) = [1, 2] gets [1, 2] (then x gets [1, 2] through a),
    # the skip x = [1, 1] gets [1, 1]: total [2, 3]. A duplicating gradient would give [4, 6].
    model = Residual(mode).to(DT)
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model.b.weight.fill_(1.0)
    expl = lrp.explain(model, torch.ones(1, 2, dtype=DT), composite="zero")
    close(expl.prediction, torch.tensor([[5.0]], dtype=DT))
    close(expl.relevance, torch.tensor([[2.0, 3.0]], dtype=DT), rtol=1e-5, atol=1e-5)


def test_residual_subtraction_splits_with_signs() -> None:
    # z = a(x) - x with a = 3·I, x = [1, 2]: z = [2, 4]; R(z) = z (b = ones). The term a(x) = [3, 6]
    # gets 3/2 of R = [3, 6], the term −x gets −1/2 of R = [−1, −2]: total [2, 4] = z.
    class Sub(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2, bias=False)
            self.b = nn.Linear(2, 1, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x) - x)

    model = Sub().to(DT)
    with torch.no_grad():
        model.a.weight.copy_(3 * torch.eye(2))
        model.b.weight.fill_(1.0)
    expl = lrp.explain(model, torch.tensor([[1.0, 2.0]], dtype=DT), composite=ALL_ZERO)
    close(expl.relevance, torch.tensor([[2.0, 4.0]], dtype=DT))


class SumForms(nn.Module):
    """Sums of input-dependent tensors in other spellings."""

    def __init__(self, form: str):
        super().__init__()
        self.a = nn.Linear(3, 3, bias=False)
        self.b = nn.Linear(3, 3, bias=False)
        self.out = nn.Linear(3, 2, bias=False)
        self.form = form

    def forward(self, x: Tensor) -> Tensor:
        h, g = self.a(x), self.b(x)
        if self.form == "h + h":
            y = h + h
        elif self.form == "builtin sum":
            y = sum([h, g, x])
        elif self.form == "alpha":
            y = torch.add(h, g, alpha=-2.5)
        elif self.form == "sub":
            y = torch.sub(h, x) - g
        else:
            y = torch.stack([h, g, x]).sum(0)
        return self.out(y)


@pytest.mark.parametrize("form", ["h + h", "builtin sum", "alpha", "sub", "stack-sum"])
def test_sum_forms_conserve(form: str) -> None:
    torch.manual_seed(0)
    assert_conserved(lrp.explain(SumForms(form).to(DT), torch.randn(4, 3, dtype=DT), composite=ALL_ZERO))


class ResBlockNet(nn.Module):
    """conv → ReLU(inplace) → conv, residual with the input, ReLU, flatten, linear."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=bias)
        self.fc = nn.Linear(2 * 4 * 4, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv2(self.relu(self.conv1(x)))
        out += identity
        return self.fc(torch.flatten(F.relu(out), 1))


def test_residual_block_against_reference() -> None:
    torch.manual_seed(0)
    model = ResBlockNet().to(DT)
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    expl = lrp.explain(model, x)
    with torch.no_grad():
        h1 = model.conv1(x)
        a1 = h1.relu()
        h2 = model.conv2(a1)
        y = (h2 + x).relu().flatten(1)
        logits = model.fc(y)
    r = rule_step(model.fc, y, start(logits, logits.argmax(1))).view_as(h2)
    r_h2, r_skip = sum_split([h2, x], r)
    r_x = rule_step(model.conv1, x, rule_step(model.conv2, a1, r_h2)) + r_skip
    close(expl.relevance, r_x)


def test_residual_block_conserves_without_bias() -> None:
    torch.manual_seed(1)
    model = ResBlockNet(bias=False).to(DT)
    assert_conserved(lrp.explain(model, torch.randn(3, 2, 4, 4, dtype=DT), composite=ALL_ZERO))


class CatNet(nn.Module):
    """Two branches concatenated along channels: equal to one conv with stacked weights."""

    def __init__(self):
        super().__init__()
        self.left = nn.Conv1d(2, 2, 3)
        self.right = nn.Conv1d(2, 3, 3)
        self.fc = nn.Linear(5 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.cat([self.left(x), self.right(x)], dim=1).relu().flatten(1))


def test_cat_branches_equal_stacked_chain() -> None:
    torch.manual_seed(0)
    model = CatNet().to(DT)
    stacked = nn.Conv1d(2, 5, 3).to(DT)
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([model.left.weight, model.right.weight]))
        stacked.bias.copy_(torch.cat([model.left.bias, model.right.bias]))
    x = torch.randn(3, 2, 6, dtype=DT)
    expected, _, logits = reference(steps_of(nn.Sequential(stacked, nn.ReLU(), nn.Flatten(), model.fc)), x)
    expl = lrp.explain(model, x)
    close(expl.prediction, logits)
    close(expl.relevance, expected)


class SplitNet(nn.Module):
    """Linear → split / chunk → a head per part → cat → linear: equal to a block-diagonal chain."""

    def __init__(self, how: str):
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.head_a = nn.Linear(3, 2)
        self.head_b = nn.Linear(3, 2)
        self.out = nn.Linear(4, 3)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        if self.how == "split":
            a, b = torch.split(h, 3, dim=1)
        elif self.how == "chunk":
            a, b = h.chunk(2, dim=1)
        else:
            a, b = h[:, :3], h[:, 3:]
        return self.out(torch.cat([self.head_a(a).relu(), self.head_b(b).relu()], 1))


@pytest.mark.parametrize("how", ["split", "chunk", "index"])
def test_split_branches_equal_block_diagonal_chain(how: str) -> None:
    torch.manual_seed(0)
    model = SplitNet(how).to(DT)
    block = nn.Linear(6, 4).to(DT)
    with torch.no_grad():
        block.weight.zero_()
        block.weight[:2, :3] = model.head_a.weight
        block.weight[2:, 3:] = model.head_b.weight
        block.bias.copy_(torch.cat([model.head_a.bias, model.head_b.bias]))
    chain = nn.Sequential(model.stem, nn.ReLU(), block, nn.ReLU(), model.out)
    x = torch.randn(4, 4, dtype=DT)
    expected, _, _ = reference(steps_of(chain), x)
    close(lrp.explain(model, x).relevance, expected)


class SharedNet(nn.Module):
    """The same Linear called twice."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.shared = nn.Linear(4, 4, bias=bias)
        self.act = nn.ReLU()
        self.out = nn.Linear(4, 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.shared(self.act(self.shared(x)))))


def test_module_used_twice_equals_unrolled_chain() -> None:
    torch.manual_seed(0)
    model = SharedNet().to(DT)
    chain = nn.Sequential(model.shared, nn.ReLU(), model.shared, nn.ReLU(), model.out)
    x = torch.randn(3, 4, dtype=DT)
    expected, _, _ = reference(steps_of(chain), x)
    close(lrp.explain(model, x).relevance, expected)
    assert_conserved(lrp.explain(SharedNet(bias=False).to(DT), x, composite="zero"))


class FunctionalNet(nn.Module):
    """A CNN written with functional calls and its own parameters."""

    def __init__(self, reshape: str):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(3, 2, 3, 3))
        self.b1 = nn.Parameter(torch.randn(3))
        self.w2 = nn.Parameter(torch.randn(4, 12))
        self.b2 = nn.Parameter(torch.randn(4))
        self.reshape = reshape

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(F.conv2d(x, self.w1, self.b1, padding=1)), 2)
        h = torch.flatten(h, 1) if self.reshape == "flatten" else h.view(h.shape[0], -1)
        return F.linear(h, self.w2, self.b2)


@pytest.mark.parametrize("reshape", ["flatten", "view"])
def test_functional_calls_equal_module_chain(reshape: str) -> None:
    torch.manual_seed(0)
    model = FunctionalNet(reshape).to(DT)
    conv, fc = nn.Conv2d(2, 3, 3, padding=1).to(DT), nn.Linear(12, 4).to(DT)
    with torch.no_grad():
        conv.weight.copy_(model.w1), conv.bias.copy_(model.b1)
        fc.weight.copy_(model.w2), fc.bias.copy_(model.b2)
    chain = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), fc)
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    expected, _, logits = reference(steps_of(chain), x)
    expl = lrp.explain(model, x)
    close(expl.prediction, logits)
    close(expl.relevance, expected)


def test_inplace_relu_equals_reference_and_leaves_input_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 5), nn.ReLU(inplace=True),
                          nn.Linear(5, 3)).to(DT)
    x = torch.randn(3, 4, dtype=DT)
    x_before = x.clone()
    expected, _, logits = reference(steps_of(model), x)
    expl = lrp.explain(model, x)
    close(expl.relevance, expected)
    close(expl.prediction, logits)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_routes_by_gradient_and_conserves(mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Upsample(scale_factor=2, mode=mode),
                          nn.Conv2d(2, 2, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False)
                          ).to(DT)
    x = torch.randn(2, 1, 3, 3, dtype=DT)
    expected, _, _ = reference(steps_of(model), x)
    close(lrp.explain(model, x).relevance, expected)
    assert_conserved(lrp.explain(model, x, composite="zero"))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_transposed_convolution(dims: int) -> None:
    torch.manual_seed(0)
    conv_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
    size = 3 if dims < 3 else 2
    up = conv_t(2, 3, 3, stride=2, padding=1, output_padding=1, bias=True)
    out_size = 2 * size
    model = nn.Sequential(up, nn.ReLU(), nn.Flatten(), nn.Linear(3 * out_size ** dims, 2)).to(DT)
    x = torch.randn(2, 2, *([size] * dims), dtype=DT)
    expected, _, _ = reference(steps_of(model), x)
    close(lrp.explain(model, x).relevance, expected)
    no_bias = nn.Sequential(conv_t(2, 3, 3, stride=2, bias=False), nn.ReLU(), nn.Flatten(),
                            nn.LazyLinear(2, bias=False)).to(DT)
    no_bias(x)  # materialise the lazy layer
    assert_conserved(lrp.explain(no_bias, x, composite="zero"))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dims,kernel,dilation", [(1, 4, 1), (2, 3, 1), (2, 4, 2), (2, (2, 3), 1), (3, 2, 1)])
def test_conv_padding_same(dims: int, kernel, dilation: int) -> None:
    torch.manual_seed(0)
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](2, 2, kernel, padding="same", dilation=dilation)
    size = 5 if dims < 3 else 3
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * size ** dims, 2)).to(DT)
    x = torch.randn(2, 2, *([size] * dims), dtype=DT)
    expected, _, _ = reference(steps_of(model), x)
    close(lrp.explain(model, x).relevance, expected)


def _max_pool_model(pool: nn.Module, features: int) -> nn.Sequential:
    fc = nn.Linear(features, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.arange(1.0, features + 1.0))
    return nn.Sequential(pool, nn.Flatten(), fc).to(DT)


@pytest.mark.parametrize("pool,shape,features", [
    (nn.MaxPool1d(2), (1, 2, 4), 4),
    (nn.MaxPool2d(2), (1, 1, 4, 4), 4),
    (nn.MaxPool3d(2), (1, 1, 2, 4, 4), 4),
    (nn.AdaptiveMaxPool2d((1, 2)), (1, 2, 3, 4), 4),
    (nn.AdaptiveMaxPool1d(1), (1, 3, 5), 3),
])
def test_max_pooling_winner_takes_all(pool: nn.Module, shape: tuple, features: int) -> None:
    # output = Σ_k w_k · max_k with w = 1, 2, ...: LRP-0 gives max_k the relevance w_k · max_k,
    # which goes entirely to the position of the maximum of window k; all other inputs get 0.
    torch.manual_seed(0)
    x = torch.randperm(int(torch.tensor(shape).prod())).to(DT).reshape(shape) + 1.0  # distinct, positive
    model = _max_pool_model(pool, features)
    expl = lrp.explain(model, x, composite=ALL_ZERO)
    pooled, indices = _pool_with_indices(pool, x)
    winner_relevance = model[2].weight.detach().view_as(pooled) * pooled
    expected = torch.zeros_like(x).flatten(2).scatter_add(2, indices.flatten(2), winner_relevance.flatten(2))
    close(expl.relevance, expected.view_as(x))
    assert int((expl.relevance != 0).sum()) == features


def _pool_with_indices(pool: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    functions = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}
    if isinstance(pool, tuple(functions)):
        return functions[type(pool)](x, pool.kernel_size, return_indices=True)
    adaptive = {nn.AdaptiveMaxPool1d: F.adaptive_max_pool1d, nn.AdaptiveMaxPool2d: F.adaptive_max_pool2d}
    return adaptive[type(pool)](x, pool.output_size, return_indices=True)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AdaptiveAvgPool2d((2, 2))])
def test_average_pooling_is_proportional(pool: nn.Module) -> None:
    # output = Σ_k w_k · mean(window k): R(window k) = w_k · mean_k, split over the window in
    # proportion to the inputs: R_i = x_i / (4 · mean_k) · w_k · mean_k = w_k · x_i / 4.
    # (The gradient would give every input the same share.)
    x = torch.rand(1, 1, 4, 4, dtype=DT) + 0.5
    model = _max_pool_model(pool, 4)
    expl = lrp.explain(model, x, composite=ALL_ZERO)
    w = model[2].weight.view(1, 1, 2, 2)
    expected = x * w.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
    close(expl.relevance, expected)
    close(lrp.explain(model, x).relevance, expected, rtol=1e-5)


def test_dropout_in_training_mode_is_explained_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).to(DT).train()
    x = torch.randn(4, 6, dtype=DT)
    expected, _, logits = reference(steps_of(model.eval()), x)
    model.train()
    for _ in range(2):  # deterministic: no dropout mask
        expl = lrp.explain(model, x)
        close(expl.prediction, logits)
        close(expl.relevance, expected)
    assert all(m.training for m in model.modules())


def _randomize_batch_norm(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """BatchNorm in eval mode as an explicit per-channel affine map a·x + c."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    c = bn.bias - a * bn.running_mean
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * a.view(shape) + c.view(shape)


@pytest.mark.parametrize("layers,shape", [
    (lambda: (nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)), (3, 2, 4, 4)),
    (lambda: (nn.Conv1d(4, 6, 3, groups=2), nn.BatchNorm1d(6)), (3, 4, 5)),
    (lambda: (nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3)), (2, 2, 3, 3, 3)),
    (lambda: (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)), (2, 4, 3, 3)),
    (lambda: (nn.Linear(4, 6), nn.BatchNorm1d(6)), (3, 4)),
], ids=["conv2d", "grouped-conv1d", "conv3d", "grouped-conv-transpose2d", "linear"])
def test_batch_norm_folded_into_linear_layer(layers: Callable, shape: tuple) -> None:
    torch.manual_seed(0)
    producer, bn = layers()
    _randomize_batch_norm(bn)
    x = torch.randn(*shape, dtype=DT)
    head = nn.LazyLinear(2)
    model = nn.Sequential(producer, bn, nn.ReLU(), nn.Flatten(), head).to(DT).eval()
    model(x)  # materialise the lazy layer
    model.train()
    # folded: one epsilon step on x -> bn(producer(x)), an affine map with weight a·W, bias a·b + c
    steps = [(RULE, lambda t: _bn_affine(bn, producer(t))), (PASS, nn.ReLU()), (GRAD, nn.Flatten()), (RULE, head)]
    expected, _, _ = reference(steps, x)
    expl = lrp.explain(model, x, conservation=True)
    close(expl.relevance, expected)
    assert len(expl.conservation()) == 2  # no separate BatchNorm row


def _merged(producer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``producer`` with the eval-mode BatchNorm after it merged into its weight and bias."""
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    c = (bn.bias - a * bn.running_mean).detach()
    merged = copy.deepcopy(producer)
    with torch.no_grad():
        weight = merged.weight
        if isinstance(merged, nn.modules.conv._ConvTransposeNd):  # (C_in, C_out / groups, *K)
            grouped = weight.view(merged.groups, -1, weight.shape[1], *weight.shape[2:])
            grouped.mul_(a.view(merged.groups, 1, weight.shape[1], *([1] * (weight.dim() - 2))))
        else:
            weight.mul_(a.view(-1, *([1] * (weight.dim() - 1))))
        merged.bias.mul_(a).add_(c)
    return merged


@pytest.mark.parametrize("odd_scale", [None, -1.0, 1e-310], ids=["positive-scales", "a-negative-scale",
                                                                   "a-denormal-scale"])
@pytest.mark.parametrize("composite", ["alpha2-beta1", "z-plus", "gamma"])
@pytest.mark.parametrize("layers,shape", [
    (lambda: (nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)), (3, 2, 4, 4)),
    (lambda: (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)), (2, 4, 3, 3)),
    (lambda: (nn.Linear(4, 6), nn.BatchNorm1d(6)), (3, 4)),
], ids=["conv2d", "grouped-conv-transpose2d", "linear"])
def test_folded_batch_norm_equals_merged_weights_for_sign_splitting_rules(
        layers: Callable, shape: tuple, composite: str, odd_scale: float | None) -> None:
    """On non-negative inputs αβ, z⁺ and γ take a folded BatchNorm of positive scale before the scale
    (``LayerCall.inverse_scale``) and fold one with a negative channel, or a scale whose inverse
    overflows, into the weight; all equal the same model with the BatchNorm merged into the layer by hand."""
    torch.manual_seed(0)
    producer, bn = layers()
    _randomize_batch_norm(bn)
    if odd_scale is not None:
        with torch.no_grad():
            bn.weight[1], bn.bias[1] = odd_scale, 0.5  # channel 1 positive: relevance reaches it
    x = torch.rand(*shape, dtype=DT)
    with_norm = nn.Sequential(producer, bn, nn.ReLU(), nn.Flatten()).to(DT).eval()
    head = nn.Linear(with_norm(x).shape[1], 2).to(DT)
    with_norm.append(head)
    merged = nn.Sequential(_merged(producer, bn), nn.ReLU(), nn.Flatten(), head).eval()
    close(lrp.explain(with_norm, x, composite=composite).relevance,
          lrp.explain(merged, x, composite=composite).relevance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_norm_maps_made_together_equal_those_made_one_by_one(dtype: torch.dtype) -> None:
    """canonizers.running_affines (multi-tensor ops over all BatchNorms of a forward) gives the same bits as
    batch_norm_affine per BatchNorm, with and without weight and bias, for float32 statistics too."""
    torch.manual_seed(0)
    layers = [RunningStatistics(torch.randn(c), torch.rand(c) + 0.1, torch.randn(c) if w else None,
                                torch.randn(c) if b else None, eps, dtype)
              for c, w, b, eps in [(300, True, True, 1e-5), (5, False, True, 1e-3), (64, True, False, 1e-5),
                                   (2, False, False, 0.1)]]
    for layer, (scale, shift) in zip(layers, running_affines(layers), strict=True):
        expected = batch_norm_affine(torch.zeros(1, len(layer.mean), dtype=dtype), layer.mean, layer.var,
                                     layer.weight, layer.bias, False, layer.eps)
        assert scale.dtype == shift.dtype == dtype
        assert torch.equal(scale, expected[0]) and torch.equal(shift, expected[1])
    assert running_affines([]) == []


def test_positive_everywhere_flags_each_tensor_with_a_non_positive_denormal_or_nan_entry() -> None:
    tensors = [torch.tensor([1.0, 2.0]), torch.tensor([1.0, -1.0]), torch.tensor([3.0], dtype=DT),
               torch.tensor([0.5, float("nan")]), torch.tensor([1e-310, 1.0], dtype=DT), torch.tensor([0.0]),
               torch.tensor([1e-30])]
    assert positive_everywhere(tensors) == [True, False, True, False, False, False, True]
    assert positive_everywhere([]) == []


def test_folded_scales_are_checked_for_positivity_once_per_forward(monkeypatch) -> None:
    """The trace finds which folded BatchNorm scales are positive everywhere for all BatchNorms at once, after
    the forward (one wait for a GPU), and the rules' LayerCall.inverse_scale takes that answer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                          nn.ReLU(), nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2)).to(DT).eval()
    for bn in (model[1], model[4], model[7]):
        _randomize_batch_norm(bn)
    with torch.no_grad():
        model[4].weight[2] = -0.5
    checks, seen = [], []
    counted = interception.positive_everywhere

    def positive_everywhere_counted(tensors):
        checks.append(len(tensors))
        return counted(tensors)
    monkeypatch.setattr(interception, "positive_everywhere", positive_everywhere_counted)
    inverse_scale = LayerCall.inverse_scale

    def inverse_scale_seen(self):
        result = inverse_scale(self)
        seen.append((self.scale_positive, result is None))
        return result
    monkeypatch.setattr(LayerCall, "inverse_scale", inverse_scale_seen)
    x = torch.rand(2, 2, 6, 6, dtype=DT)
    lrp.explain(model, x, composite="alpha2-beta1")
    assert checks == [3]
    # backward order: the dense layer (nothing folded), then the convolutions from the last
    assert seen == [(None, True), (True, False), (False, True), (True, False)]
    expected = lrp.explain(model, x, composite="alpha2-beta1").relevance
    seen.clear()  # told that no scale is positive, the rules fold every scale into the weight: same relevance
    monkeypatch.setattr(interception, "positive_everywhere", lambda tensors: [False] * len(tensors))
    close(lrp.explain(model, x, composite="alpha2-beta1").relevance, expected)
    assert seen == [(None, True), (False, True), (False, True), (False, True)]


def test_batch_norm_after_relu_is_its_own_affine_layer() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)
    _randomize_batch_norm(bn)
    model = nn.Sequential(conv, nn.ReLU(), bn, nn.Flatten(), nn.Linear(12, 2)).to(DT)
    x = torch.randn(3, 2, 4, 4, dtype=DT)
    steps = [(RULE, conv), (PASS, nn.ReLU()), (RULE, lambda t: _bn_affine(bn, t)), (GRAD, nn.Flatten()),
             (RULE, model[4])]
    expected, _, _ = reference(steps, x)
    expl = lrp.explain(model, x, conservation=True)
    close(expl.relevance, expected)
    assert [row.op for row in expl.conservation()] == ["conv2d", "batch_norm", "linear"]


class DirectBatchNorm(nn.Module):
    """conv -> torch.batch_norm (the aten-level function: weight and bias before the statistics) -> relu."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        h = torch.batch_norm(self.conv(x), bn.weight, bn.bias, bn.running_mean, bn.running_var, False, 0.1, bn.eps,
                             False)
        return self.fc(h.relu().flatten(1))


def test_aten_level_batch_norm_is_folded_like_the_module() -> None:
    torch.manual_seed(0)
    model = DirectBatchNorm().to(DT).eval()
    _randomize_batch_norm(model.bn)
    x = torch.randn(3, 2, 4, 4, dtype=DT)
    module_chain = nn.Sequential(model.conv, model.bn, nn.ReLU(), nn.Flatten(), model.fc).eval()
    expl = lrp.explain(model, x, composite="epsilon-plus", conservation=True)
    close(expl.relevance, lrp.explain(module_chain, x, composite="epsilon-plus").relevance)
    assert [row.op for row in expl.conservation()] == ["conv2d", "linear"]


class SharedInputBN(nn.Module):
    """conv output used by the BatchNorm and by a skip connection: BN cannot be folded."""

    def __init__(self, skip_first: bool):
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm1d(2)
        self.fc = nn.Linear(2 * 5, 2)
        self.skip_first = skip_first

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.skip_first:
            skip = h.relu()
            y = self.bn(h) + skip
        else:
            y = self.bn(h) + h.relu()
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("skip_first", [False, True])
def test_batch_norm_whose_input_is_used_twice(skip_first: bool) -> None:
    torch.manual_seed(0)
    model = SharedInputBN(skip_first).to(DT)
    _randomize_batch_norm(model.bn)
    x = torch.randn(3, 2, 5, dtype=DT)
    with torch.no_grad():
        h = model.conv(x)
        b = _bn_affine(model.bn, h)
        y = (b + h.relu()).flatten(1)
        logits = model.fc(y)
    r = rule_step(model.fc, y, start(logits, logits.argmax(1))).view_as(h)
    r_bn, r_skip = sum_split([b, h.relu()], r)
    r_h = rule_step(lambda t: _bn_affine(model.bn, t), h, r_bn) + r_skip
    expected = rule_step(model.conv, x, r_h)
    close(lrp.explain(model, x).relevance, expected)


class MatmulNet(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 3))
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "@":
            return x @ self.w
        return torch.matmul(x, self.w) if self.how == "matmul" else torch.mm(x, self.w)


@pytest.mark.parametrize("how", ["@", "matmul", "mm"])
def test_matmul_with_constant_equals_linear_without_bias(how: str) -> None:
    torch.manual_seed(0)
    model = MatmulNet(how).to(DT)
    linear = nn.Linear(5, 3, bias=False).to(DT)
    with torch.no_grad():
        linear.weight.copy_(model.w.t())
    x = torch.randn(4, 5, dtype=DT)
    expected, _, _ = reference([(RULE, linear)], x)
    expl = lrp.explain(model, x)
    close(expl.relevance, expected)
    assert_conserved(lrp.explain(model, x, composite="zero"))


@pytest.mark.parametrize("last", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1), nn.Sigmoid()])
def test_final_normalisation_explains_the_logits(last: nn.Module) -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT)
    x = torch.randn(3, 4, dtype=DT)
    logits = body(x).detach()
    for target in (None, 2):
        expl = lrp.explain(nn.Sequential(body, last), x, target=target)
        close(expl.prediction, logits)
        t = logits.argmax(1) if target is None else torch.full((3,), target)
        close(expl.relevance, reference(steps_of(body), x, t)[0])


class GlobalPool(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.fc = nn.Linear(3, 2, bias=False)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).relu()
        h = h.mean(dim=(2, 3)) if self.how == "mean" else torch.sum(h, dim=(-2, -1))
        return self.fc(h)


@pytest.mark.parametrize("how", ["mean", "sum"])
def test_mean_and_sum_reductions_as_global_pooling(how: str) -> None:
    torch.manual_seed(0)
    model = GlobalPool(how).to(DT)
    x = torch.randn(3, 2, 5, 5, dtype=DT)
    pool = (lambda t: t.mean(dim=(2, 3))) if how == "mean" else (lambda t: t.sum(dim=(2, 3)))
    steps = [(RULE, model.conv), (PASS, nn.ReLU()), (RULE, pool), (RULE, model.fc)]
    expected, _, _ = reference(steps, x)
    close(lrp.explain(model, x).relevance, expected)
    assert_conserved(lrp.explain(model, x, composite=ALL_ZERO))


# ----------------------------------------------------------------------------------------------
# 2. targets


def _mlp(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.ReLU(), nn.Linear(7, 4, bias=bias)).to(DT)


def test_target_none_is_argmax() -> None:
    model, x = _mlp(), torch.randn(6, 5, dtype=DT)
    expected, _, logits = reference(steps_of(model), x)
    expl = lrp.explain(model, x)
    assert torch.equal(expl.target, logits.argmax(1))
    assert expl.target.dtype == torch.long
    close(expl.relevance, expected)


@pytest.mark.parametrize("kind", ["int", "list", "tuple", "LongTensor", "IntTensor"])
def test_class_targets(kind: str) -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    classes = [2, 0, 3] if kind != "int" else [1, 1, 1]
    target = {"int": 1, "list": classes, "tuple": tuple(classes), "LongTensor": torch.tensor(classes),
              "IntTensor": torch.tensor(classes, dtype=torch.int32)}[kind]
    expected, _, _ = reference(steps_of(model), x, torch.tensor(classes))
    expl = lrp.explain(model, x, target=target)
    assert expl.target.tolist() == classes
    close(expl.relevance, expected)


def test_float_target_is_the_output_relevance() -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    start_relevance = torch.randn(3, 4, dtype=DT)
    expected, _, _ = reference(steps_of(model), x, relevance=start_relevance)
    close(lrp.explain(model, x, target=start_relevance).relevance, expected)


def test_two_dimensional_target_explains_k_classes_per_input() -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    target = torch.tensor([[0, 3], [1, 1], [2, 0]])
    expl = lrp.explain(model, x, target=target)
    assert expl.relevance.shape == (3, 2, 5)
    assert torch.equal(expl.target, target)
    for k in range(2):
        expected, _, _ = reference(steps_of(model), x, target[:, k])
        close(expl.relevance[:, k], expected)
        close(expl.relevance[:, k], lrp.explain(model, x, target=target[:, k]).relevance)


def test_two_dimensional_target_with_kept_layers() -> None:
    model, x = _mlp(), torch.randn(2, 5, dtype=DT)
    expl = lrp.explain(model, x, target=torch.tensor([[0, 1], [2, 3]]), keep_layers=True)
    assert expl.layers["2"].shape == (2, 2, 7)
    close(expl.layers["0"], expl.relevance)


@pytest.mark.parametrize("target,words", [
    (4, ["4", "out of range", "4 classes"]),
    (-1, ["-1", "out of range"]),
    ([0, 1], ["2 classes", "batch of 3"]),
    ([0, 1, 9], ["9", "out of range"]),
    (torch.ones(3, 5, dtype=DT), ["(3, 4)", "(3, 5)"]),
    ("cat", ["'cat'"]),
])
def test_bad_targets_raise_target_error(target, words: list[str]) -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    with pytest.raises(TargetError) as error:
        lrp.explain(model, x, target=target)
    for word in words:
        assert word in str(error.value)


def test_two_dimensional_target_out_of_range_raises_target_error() -> None:
    model, x = _mlp(), torch.randn(2, 5, dtype=DT)
    with pytest.raises(TargetError, match="out of range"):
        lrp.explain(model, x, target=torch.tensor([[0, 7], [1, 1]]))


def test_two_dimensional_target_of_wrong_length_raises_target_error() -> None:
    model, x = _mlp(), torch.randn(2, 5, dtype=DT)
    with pytest.raises(TargetError, match="batch of 2"):
        lrp.explain(model, x, target=torch.tensor([[0, 1]]))


@pytest.mark.parametrize("composite,params", [("epsilon", {}), ("alpha2-beta1", {}), ("gamma", {}),
                                              ("epsilon-plus-flat", {}),
                                              ("epsilon-gamma-box", {"low": -3.0, "high": 3.0})])
def test_batch_independence(composite: str, params: dict) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(12, 3)).to(DT).train()  # BatchNorm must use running stats
    _randomize_batch_norm(model[1])
    x = torch.randn(4, 2, 6, 6, dtype=DT)
    target = torch.tensor([0, 2, 1, 2])
    batch = lrp.explain(model, x, target=target, composite=composite, **params).relevance
    for i in range(4):
        alone = lrp.explain(model, x[i:i + 1], target=int(target[i]), composite=composite, **params).relevance
        close(batch[i:i + 1], alone, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# 3. layer records and the conservation table


class ReorderedNet(nn.Module):
    """Registered in a different order than executed."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2 * 2 * 2, 3)
        self.flatten = nn.Flatten()
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.act(self.conv(x)))))


def test_keep_layers_in_execution_order_and_equal_reference() -> None:
    torch.manual_seed(0)
    model = ReorderedNet().to(DT)
    x = torch.randn(2, 1, 4, 4, dtype=DT)
    chain = nn.Sequential(model.conv, model.act, model.pool, model.flatten, model.fc)
    expected, entering, _ = reference(steps_of(chain), x)
    expl = lrp.explain(model, x, keep_layers=True)
    assert list(expl.layers) == ["conv", "act", "pool", "flatten", "fc"]
    close(expl.layers["conv"], expl.relevance)
    for name, relevance in zip(expl.layers, entering):
        close(expl.layers[name], relevance)
    assert lrp.explain(model, x).layers == {}


def test_first_layer_rule_goes_to_the_first_layer_executed() -> None:
    # epsilon-plus-flat: Flat on the first weighted layer executed (conv, registered after fc)
    torch.manual_seed(0)
    model = ReorderedNet().to(DT)
    x = torch.randn(2, 1, 4, 4, dtype=DT)
    flat_conv = nn.Conv2d(1, 2, 3, padding=1, bias=False).to(DT)
    nn.init.ones_(flat_conv.weight)
    with torch.no_grad():
        h = model.conv(x).relu()
        y = model.flatten(model.pool(h))
        logits = model.fc(y)
    r = grad_step(model.pool, h, rule_step(model.fc, y, start(logits, logits.argmax(1))).view(2, 2, 2, 2))
    expected = rule_step(flat_conv, torch.ones_like(x), r)  # uniform over the receptive field
    close(lrp.explain(model, x, composite="epsilon-plus-flat").relevance, expected)


def test_keep_layers_names_a_second_call() -> None:
    torch.manual_seed(0)
    model = SharedNet().to(DT)
    x = torch.randn(2, 4, dtype=DT)
    chain = nn.Sequential(model.shared, model.act, model.shared, model.act, model.out)
    _, entering, _ = reference(steps_of(chain), x)
    expl = lrp.explain(model, x, keep_layers=True)
    assert list(expl.layers) == ["shared", "act", "shared#2", "act#2", "out"]
    for name, relevance in zip(expl.layers, entering):
        close(expl.layers[name], relevance)


def test_keep_layers_with_a_keyword_input() -> None:
    model = _mlp()
    x = torch.randn(2, 5, dtype=DT)
    keyword = Block(lambda t: model[2](input=model[1](model[0](t))))
    keyword.body = model
    expl = lrp.explain(keyword, x, keep_layers=True)
    assert list(expl.layers) == ["body.0", "body.1", "body.2"]


def test_conservation_table() -> None:
    torch.manual_seed(0)
    model = ResBlockNet().to(DT)
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    expl = lrp.explain(model, x, conservation=True)
    rows = expl.conservation()
    assert [(row.layer, row.op) for row in rows] == [
        ("conv1", "conv2d"), ("conv2", "conv2d"), ("<model>", "add_"), ("fc", "linear")]
    assert [row.index for row in rows] == sorted(row.index for row in rows)
    logit = expl.prediction.gather(1, expl.target[:, None])[:, 0]
    close(rows[-1].relevance_out, logit)
    close(rows[0].relevance_in + _skip_share(model, x, expl), expl.relevance.sum((1, 2, 3)))
    # conv2 receives the sum's share of its branch (the sum of that share is handed on, not taken again)
    close(rows[1].relevance_out + _skip_share(model, x, expl), rows[2].relevance_in)
    for row in rows:
        assert row.relevance_out.shape == row.relevance_in.shape == (2,)
        close(row.absorbed, row.relevance_out - row.relevance_in)
    # the sum loses only its stabiliser's share; the layers with a bias absorb the bias share
    close(rows[2].absorbed, torch.zeros(2, dtype=DT), atol=1e-5, rtol=0)
    assert all(bool((row.absorbed.abs() > 1e-8).all()) for row in (rows[0], rows[1], rows[3]))


def test_conservation_table_is_recorded_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = ResBlockNet().to(DT)
    x = torch.randn(2, 2, 4, 4, dtype=DT)
    recorded = lrp.explain(model, x, composite="epsilon-plus", conservation=True)

    def no_sums(t: Tensor) -> Tensor:
        raise AssertionError("summed relevance for a table nobody asked for")
    monkeypatch.setattr(interception, "per_sample", no_sums)
    expl = lrp.explain(model, x, composite="epsilon-plus")
    assert torch.equal(expl.relevance, recorded.relevance)
    assert expl.rows is None
    with pytest.raises(ValueError, match=r"no conservation table.*conservation=True"):
        expl.conservation()
    with pytest.raises(ValueError, match="no conservation table"):  # the gradient methods record none
        lrp.methods.gradient(model, x).conservation()


class _NaNEpsilon(Epsilon):
    """ε whose relevance is NaN: a rule gone wrong, for the non-finite error."""

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        return super().relevance(layer, relevance) * float("nan")


def test_non_finite_relevance_names_the_op_that_made_it_when_the_table_is_recorded() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).to(DT)
    composite = lrp.Composite(by_type={nn.Linear: Epsilon()}, by_name={"2": _NaNEpsilon()})
    x = torch.randn(3, 5, dtype=DT)
    with pytest.raises(NonFiniteError, match=r"first at 2: linear with _NaNEpsilon"):
        lrp.explain(model, x, composite=composite, conservation=True)
    with pytest.raises(NonFiniteError, match=r"explain with conservation=True to find the first op"):
        lrp.explain(model, x, composite=composite)


def _skip_share(model: ResBlockNet, x: Tensor, expl: lrp.Explanation) -> Tensor:
    """Per-sample relevance the residual sum gives to the skip connection (reference)."""
    with torch.no_grad():
        h2 = model.conv2(model.conv1(x).relu())
        y = (h2 + x).relu().flatten(1)
        logits = model.fc(y)
    r = rule_step(model.fc, y, start(logits, expl.target)).view_as(h2)
    return sum_split([h2, x], r)[1].sum((1, 2, 3))


def test_conservation_rows_without_bias_absorb_nothing() -> None:
    model, x = _mlp(bias=False), torch.randn(3, 5, dtype=DT)
    expl = lrp.explain(model, x, composite="zero", conservation=True)
    rows = expl.conservation()
    assert [(row.layer, row.op) for row in rows] == [("0", "linear"), ("2", "linear")]
    close(rows[0].relevance_out, rows[1].relevance_in)
    for row in rows:
        close(row.absorbed, torch.zeros(3, dtype=DT), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------
# 4. errors


class Block(nn.Module):
    """Applies ``f`` to its input."""

    def __init__(self, f: Callable[[Tensor], Tensor]):
        super().__init__()
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        return self.f(x)


def _deep(f: Callable[[Tensor], Tensor]) -> nn.Module:
    """A model with ``f`` at module path '1.1.1'."""
    torch.manual_seed(0)
    inner = nn.Sequential(nn.ReLU(), Block(f))
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), inner), nn.Linear(4, 2)).to(DT)


UNSUPPORTED = {
    "sin": (torch.sin, "torch.sin"),
    "sin method": (lambda h: h.sin(), "sin"),
    "torch.mul of two path tensors": (lambda h: torch.mul(h, h + 1), "mul"),
    "torch.div by a path tensor": (lambda h: torch.div(h, h.relu() + 1), "div"),
    "layer norm": (nn.LayerNorm(4).to(DT), "layer_norm"),
    "input-dependent weight": (lambda h: F.linear(h, h.relu()), "linear"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_op_names_op_and_module(case: str) -> None:
    f, op = UNSUPPORTED[case]
    model = _deep(f)
    with pytest.raises(UnsupportedOperationError) as error:
        lrp.explain(model, torch.randn(2, 4, dtype=DT))
    message = str(error.value)
    assert op in message
    assert re.search(r"module '1\.1\.1(\.f)?'", message), message


def test_softmax_inside_the_network() -> None:
    model = _deep(lambda h: F.softmax(h, dim=1))
    with pytest.raises(UnsupportedOperationError) as error:
        lrp.explain(model, torch.randn(2, 4, dtype=DT))
    # names the softmax and the module that uses its output
    assert "softmax" in str(error.value) and "module '2'" in str(error.value)


@pytest.mark.parametrize("case", ["x * y", "x / y"])
def test_unsupported_python_operator_names_op_and_module(case: str) -> None:
    f = (lambda h: h * (h + 1)) if case == "x * y" else (lambda h: h / (h.relu() + 1))
    with pytest.raises(UnsupportedOperationError, match="'1.1.1'"):
        lrp.explain(_deep(f), torch.randn(2, 4, dtype=DT))


@pytest.mark.parametrize("case", [c for c in UNSUPPORTED if c != "input-dependent weight"])
def test_non_strict_warns_and_falls_back_to_gradient(case: str) -> None:
    f, op = UNSUPPORTED[case]
    model = _deep(f)
    x = torch.randn(2, 4, dtype=DT)
    with pytest.warns(UserWarning, match="fell back to the gradient") as record:
        expl = lrp.explain(model, x, strict=False)
    assert op in str(record[0].message)
    assert re.search(r"module '1\.1\.1(\.f)?'", str(record[0].message))
    assert expl.relevance.shape == x.shape and bool(torch.isfinite(expl.relevance).all())


def test_non_strict_fallback_result_and_every_fallback_listed() -> None:
    # two unsupported ops; the result equals the reference with the gradient through them
    torch.manual_seed(0)
    lin1, lin2, lin3 = nn.Linear(3, 4).to(DT), nn.Linear(4, 4).to(DT), nn.Linear(4, 2).to(DT)
    model = nn.Sequential(lin1, Block(torch.sin), lin2, Block(lambda h: torch.exp(h / 4)), lin3)
    x = torch.randn(2, 3, dtype=DT)
    with pytest.warns(UserWarning) as record:
        expl = lrp.explain(model, x, strict=False)
    messages = [str(w.message) for w in record if "fell back" in str(w.message)]
    assert len(messages) == 1
    assert "torch.sin in module '1'" in messages[0] and "exp in module '3'" in messages[0]
    # scaling by a constant passes relevance unchanged (h / 4); sin and exp pass the gradient
    steps = [(RULE, lin1), (GRAD, torch.sin), (RULE, lin2), (PASS, lambda h: h / 4), (GRAD, torch.exp), (RULE, lin3)]
    close(expl.relevance, reference(steps, x)[0])


def test_non_strict_matmul_of_two_path_tensors_falls_back() -> None:
    model = _deep(lambda h: torch.matmul(h[:, :, None], h[:, None, :]).sum(2))
    with pytest.warns(UserWarning, match="matmul"):
        lrp.explain(model, torch.randn(2, 4, dtype=DT), strict=False)


def test_transpose_property_is_a_reshape() -> None:
    model = _deep(lambda h: h.T.T)
    x = torch.randn(2, 4, dtype=DT)
    steps = [(RULE, model[0]), (RULE, model[1][0]), (PASS, nn.ReLU()), (RULE, model[2])]
    close(lrp.explain(model, x).relevance, reference(steps, x)[0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input(value: float) -> None:
    x = torch.randn(2, 5, dtype=DT)
    x[1, 3] = value
    with pytest.raises(NonFiniteError, match="input holds 1 NaN or infinite"):
        lrp.explain(_mlp(), x)


@pytest.mark.parametrize(("values", "finite"), [
    ([3e38, 3e38, 1.0], True),          # the sum overflows: decided by the element-wise test
    ([-3e38, -3e38], True),
    ([1.0, float("nan")], False),
    ([float("inf"), float("-inf")], False),  # the sum is NaN
    ([3e38, float("inf")], False),
    ([], True),
])
def test_all_finite_is_exact_when_the_sum_overflows(values: list[float], finite: bool) -> None:
    assert all_finite(torch.tensor(values, dtype=torch.float32)) is finite


def test_large_finite_input_is_accepted() -> None:
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    x = torch.tensor([[3e38, 3e38, -1.0]])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e-38, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    expl = lrp.explain(model, x, target=0)
    assert bool(torch.isfinite(expl.relevance).all())


def test_unknown_composite_lists_close_matches() -> None:
    with pytest.raises(ValueError) as error:
        lrp.explain(_mlp(), torch.randn(2, 5, dtype=DT), composite="epsilon-plus-flaat")
    message = str(error.value)
    assert "epsilon-plus-flaat" in message and "'epsilon-plus-flat'" in message
    with pytest.raises(ValueError, match="'alpha1-beta0'"):
        lrp.LRP(_mlp(), composite="alpha1beta0")


def test_names_with_underscores_and_case_are_accepted() -> None:
    model, x = _mlp(), torch.randn(2, 5, dtype=DT)
    close(lrp.explain(model, x, composite="Alpha1_Beta0").relevance,
          lrp.explain(model, x, composite="alpha1-beta0").relevance, rtol=0, atol=0)


def test_missing_composite_parameters_are_named() -> None:
    with pytest.raises(TypeError) as error:
        lrp.explain(_mlp(), torch.randn(2, 5, dtype=DT), composite="epsilon-gamma-box")
    message = str(error.value)
    assert "epsilon-gamma-box" in message and "low" in message and "high" in message
    with pytest.raises(TypeError, match="gamma"):
        lrp.explain(_mlp(), torch.randn(2, 5, dtype=DT), composite="epsilon", gamma=0.5)


def test_composite_without_rule_for_a_weighted_layer() -> None:
    composite = lrp.Composite(by_name={"0": Epsilon()})
    with pytest.raises(UnsupportedOperationError) as error:
        lrp.explain(_mlp(), torch.randn(2, 5, dtype=DT), composite=composite)
    assert "'2'" in str(error.value) and "Linear" in str(error.value)


@pytest.mark.parametrize("named_first", [True, False])
def test_rule_lookup_cache_keeps_named_layers_apart(named_first: bool) -> None:
    """Lookups are cached without the module's name unless ``by_name`` holds it: the named layer gets its own
    rule in either order, and the other layers of its class share one cached lookup."""
    by_type, named = Epsilon(), Zero()
    composite = lrp.Composite(by_type={Weighted: by_type}, by_name={"features.0": named})
    conv = nn.Conv2d(1, 1, 1)
    order = ["features.0", "features.2", "features.4"] if named_first else ["features.2", "features.4", "features.0"]
    found = {name: composite.rule_for(conv, name, lrp.composites.Convolution, False)[0] for name in order}
    assert found == {"features.0": named, "features.2": by_type, "features.4": by_type}
    assert len(composite._cache) == 2


def test_model_returning_a_tuple() -> None:
    model = Block(lambda x: (x.sum(1, keepdim=True), x))
    with pytest.raises(TypeError, match="tuple"):
        lrp.explain(model, torch.randn(2, 5, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_non_float_input(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="floating"):
        lrp.explain(_mlp(), torch.ones(2, 5, dtype=dtype))


@pytest.mark.parametrize("how", ["constant", "detach", "no_grad"])
def test_output_independent_of_input(how: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(5, 2).to(DT)

    def forward(x: Tensor) -> Tensor:
        if how == "constant":
            return linear(torch.ones_like(x))
        if how == "detach":
            return linear(x.detach())
        with torch.no_grad():
            return linear(x)

    model = Block(forward)
    model.linear = linear
    with pytest.raises(UnsupportedOperationError, match="does not depend on its input"):
        lrp.explain(model, torch.randn(2, 5, dtype=DT))


def test_not_a_module_and_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        lrp.explain(lambda x: x, torch.randn(2, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        lrp.explain(_mlp(), [[1.0] * 5])


# ----------------------------------------------------------------------------------------------
# 5. leave no trace


def _bits(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()


def model_state(model: nn.Module) -> dict:
    """Everything explaining may not change: weights and buffers bitwise, flags, hooks, grads."""
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_state_dict_hooks", "_load_state_dict_pre_hooks")
    module_globals = nn.modules.module
    return {
        "state": {k: (v.dtype, v.shape, _bits(v)) for k, v in model.state_dict().items()},
        "params": [(name, id(p), p.requires_grad, p.grad) for name, p in model.named_parameters()],
        "training": [(name, m.training) for name, m in model.named_modules()],
        "hooks": [(name, hook, list(getattr(m, hook, {}).items())) for name, m in model.named_modules()
                  for hook in hook_dicts],
        "global hooks": [list(d.items()) for d in (
            module_globals._global_forward_hooks, module_globals._global_forward_pre_hooks,
            module_globals._global_backward_hooks, module_globals._global_backward_pre_hooks,
            module_globals._global_forward_hooks_always_called)],
        "function modes": torch._C._len_torch_function_stack(),
        "grad enabled": torch.is_grad_enabled(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in before:
        if key == "state":
            assert before[key].keys() == after[key].keys()
            for name, (dtype, shape, bits) in before[key].items():
                assert (dtype, shape) == after[key][name][:2], name
                assert torch.equal(bits, after[key][name][2]), f"{name} changed"
        else:
            assert before[key] == after[key], key


class Raising(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("user forward failed")


class Failing(Rule):
    def relevance(self, layer, relevance: Tensor) -> Tensor:
        raise RuntimeError("rule failed")


def _trace_model(tail: nn.Module | None = None) -> nn.Module:
    """A CNN with BatchNorm (running stats!) left in training mode, mixed flags and user hooks."""
    torch.manual_seed(0)
    body = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3, padding=1),
            nn.BatchNorm2d(3), nn.Dropout(0.3)]
    if tail is not None:
        body.append(tail)
    body += [nn.Flatten(), nn.Linear(3 * 4 * 4, 3)]
    model = nn.Sequential(*body).to(DT).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomize_batch_norm(m)
    model[0].eval()  # mixed training flags must come back as they were
    model[3].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("case", ["ok", "keep_layers", "2-D target", "unsupported deep", "forward raises",
                                  "rule raises", "bad target", "non-strict", "LRP context"])
def test_model_left_as_it_was(case: str) -> None:
    tail = {"unsupported deep": Block(torch.sin), "non-strict": Block(torch.sin), "forward raises": Raising()}
    model = _trace_model(tail.get(case))
    calls = []
    user_hooks = [
        model[3].register_forward_hook(lambda m, i, o: calls.append("forward")),
        model[3].register_forward_pre_hook(lambda m, i: calls.append("pre")),
        model[0].register_full_backward_hook(lambda m, gi, go: None),
        nn.modules.module.register_module_forward_hook(lambda m, i, o: None),
    ]
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    x_bits = _bits(x)
    try:
        before = model_state(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _explain_case(case, model, x)
        after = model_state(model)
        assert_same_state(before, after)
        assert calls[:2] == ["pre", "forward"]
    finally:
        for handle in user_hooks:
            handle.remove()
    assert torch.equal(_bits(x), x_bits) and not x.requires_grad and x.grad is None


def _explain_case(case: str, model: nn.Module, x: Tensor) -> None:
    if case in ("ok", "non-strict"):
        lrp.explain(model, x, composite="epsilon-gamma-box", low=-3.0, high=3.0, strict=case == "ok")
    elif case == "keep_layers":
        lrp.explain(model, x, keep_layers=True)
    elif case == "2-D target":
        lrp.explain(model, x, target=torch.tensor([[0, 1], [2, 0]]))
    elif case == "LRP context":
        with lrp.LRP(model, composite="alpha1-beta0") as explainer:
            explainer(x, target=1)
            explainer(x[:1])
    else:
        errors = {"unsupported deep": UnsupportedOperationError, "forward raises": RuntimeError,
                  "rule raises": RuntimeError, "bad target": TargetError}
        with pytest.raises(errors[case]):
            lrp.explain(model, x, composite=Failing() if case == "rule raises" else "epsilon",
                        target=9 if case == "bad target" else None)


def test_inputs_requiring_grad_are_left_alone() -> None:
    model = _mlp()
    x = torch.randn(3, 5, dtype=DT, requires_grad=True)
    expl = lrp.explain(model, x)
    assert x.requires_grad and x.grad is None and not expl.relevance.requires_grad
    nonleaf = x * 2
    expl = lrp.explain(model, nonleaf)
    assert x.grad is None and nonleaf.grad_fn is not None
    close(expl.relevance, reference(steps_of(model), nonleaf.detach())[0])


def test_explaining_under_no_grad_and_inference_mode() -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    expected, _, _ = reference(steps_of(model), x)
    with torch.no_grad():
        close(lrp.explain(model, x).relevance, expected)
    with torch.inference_mode():
        close(lrp.explain(model, x).relevance, expected)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_inference_tensor_input() -> None:
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    with torch.inference_mode():
        frozen = x.clone()
    close(lrp.explain(model, frozen).relevance, reference(steps_of(model), x)[0])


@pytest.mark.parametrize("inplace", ["relu", "add_", "mul_", "clamp_", "sigmoid_", "hardtanh", "dropout"])
def test_inplace_op_on_the_input_leaves_it_alone(inplace: str) -> None:
    out_of_place = {"relu": F.relu, "add_": lambda t: t + 1, "mul_": lambda t: t * 2,
                    "clamp_": lambda t: t.clamp(min=0), "sigmoid_": torch.sigmoid, "hardtanh": F.hardtanh,
                    "dropout": lambda t: t}[inplace]
    first = {"relu": nn.ReLU(inplace=True), "add_": Block(lambda t: t.add_(1)), "mul_": Block(lambda t: t.mul_(2)),
             "clamp_": Block(lambda t: t.clamp_(min=0)), "sigmoid_": Block(lambda t: t.sigmoid_()),
             "hardtanh": nn.Hardtanh(inplace=True), "dropout": nn.Dropout(0.5, inplace=True)}[inplace]
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).to(DT)
    x = torch.randn(4, 3, dtype=DT)
    x_before = x.clone()
    expl = lrp.explain(nn.Sequential(first, linear), x)
    assert torch.equal(x, x_before)
    close(expl.relevance, reference([(PASS, out_of_place), (RULE, linear)], x)[0])


def test_no_global_hooks_or_function_modes_left() -> None:
    module = nn.modules.module
    assert not module._global_forward_hooks and not module._global_forward_pre_hooks
    lrp.explain(_mlp(), torch.randn(2, 5, dtype=DT), keep_layers=True)
    with pytest.raises(UnsupportedOperationError):
        lrp.explain(_deep(torch.sin), torch.randn(2, 4, dtype=DT))
    with pytest.raises(RuntimeError, match="user forward failed"):
        lrp.explain(nn.Sequential(nn.Linear(5, 5), Raising()), torch.randn(2, 5))
    assert not module._global_forward_hooks and not module._global_forward_pre_hooks
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("composite,params,keep_layers", [
    ("epsilon", {}, False), ("epsilon-gamma-box", {"low": -3.0, "high": 3.0}, True), ("alpha2-beta1", {}, False),
])
@pytest.mark.parametrize("model", ["residual", "softmax", "pooled", "pooled in place"])
def test_explanation_leaves_no_reference_cycles(model: str, composite: str, params: dict,
                                                keep_layers: bool) -> None:
    """Everything a call allocates is freed by reference counting when its result is dropped; tensors
    kept alive by a cycle until the garbage collector runs fragment the heap call after call. ("pooled": a
    ReLU's output decided on through max pooling and flattening, see ``Trace.relay``.)"""
    if model.startswith("pooled"):
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=model.endswith("in place")),
                            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)).to(DT)
    else:
        net = ResBlockNet().to(DT) if model == "residual" else nn.Sequential(_mlp(), nn.Softmax(dim=1))
    x = torch.randn(3, *((2, 4, 4) if model != "softmax" else (5,)), dtype=DT)
    lrp.explain(net, x, composite=composite, keep_layers=keep_layers, **params)
    gc.collect()
    gc.disable()
    try:
        expl = lrp.explain(net, x, composite=composite, keep_layers=keep_layers, conservation=True, **params)
        expl.conservation()
        del expl
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_model_output_after_explaining_is_unchanged() -> None:
    model = _trace_model().eval()
    x = torch.randn(2, 2, 6, 6, dtype=DT)
    with torch.no_grad():
        before = model(x)
    lrp.explain(model, x)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_user_hooks_fire_during_explanation() -> None:
    model = _mlp()
    seen: list[Tensor] = []
    handle = model[2].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x = torch.randn(3, 5, dtype=DT)
    try:
        expl = lrp.explain(model, x)
    finally:
        handle.remove()
    assert len(seen) == 1
    close(seen[0], expl.prediction)


def test_user_hook_that_changes_the_output_is_explained() -> None:
    # a forward hook that doubles the output of the last layer: prediction and relevance double too
    model, x = _mlp(), torch.randn(3, 5, dtype=DT)
    expected, _, logits = reference(steps_of(model), x)
    handle = model[2].register_forward_hook(lambda m, i, o: o * 2)
    try:
        hooked = lrp.explain(model, x)
    finally:
        handle.remove()
    close(hooked.prediction, 2 * logits)
    close(hooked.relevance, 2 * expected)


# ----------------------------------------------------------------------------------------------
# 6. dtypes and devices


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    _randomize_batch_norm(model[1])
    return model.eval()


@pytest.mark.parametrize("composite,params", [("epsilon", {}), ("alpha2-beta1", {}), ("gamma", {}),
                                              ("epsilon-gamma-box", {"low": -3.0, "high": 3.0})])
def test_float32_matches_float64(composite: str, params: dict) -> None:
    model = _cnn()
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    r64 = lrp.explain(model.to(DT), x, composite=composite, **params)
    r32 = lrp.explain(model.float(), x.float(), composite=composite, **params)
    assert r32.relevance.dtype == torch.float32 and r64.relevance.dtype == DT
    assert torch.equal(r32.target, r64.target)
    scale = r64.relevance.abs().max()
    close(r32.relevance.to(DT), r64.relevance, rtol=1e-3, atol=1e-4 * float(scale))


@pytest.mark.parametrize("composite,params", [("epsilon", {}), ("alpha2-beta1", {}), ("epsilon-plus", {}),
                                              ("epsilon-gamma-box", {"low": -1.0, "high": 1.0})])
@pytest.mark.parametrize("signed", [False, True], ids=["non-negative", "signed"])
@pytest.mark.parametrize("dims", [2, 3])
def test_one_channel_float32_matches_float64(composite: str, params: dict, signed: bool, dims: int) -> None:
    """The first layer of a one-channel float32 input (an MRI volume) is transposed with channels-last weights
    (``Convolution._one_channel_on_cpu``), signed inputs through the pair of weights of x⁺ and x⁻; float64
    takes the ordinary path."""
    torch.manual_seed(0)
    conv, norm, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d,
                                                                                  nn.MaxPool3d)
    model = nn.Sequential(conv(1, 4, 3, padding=1), norm(4), nn.ReLU(), pool(2), conv(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(2, 1, *([8] * dims), dtype=DT) - (0.5 if signed else 0.0)
    model(x.float())
    _randomize_batch_norm(model[1])
    model.eval()
    r64 = lrp.explain(model.to(DT), x, composite=composite, **params)
    r32 = lrp.explain(model.float(), x.float(), composite=composite, **params)
    assert torch.equal(r32.target, r64.target)
    close(r32.relevance.to(DT), r64.relevance, rtol=1e-3, atol=1e-4 * float(r64.relevance.abs().max()))


@pytest.mark.parametrize("composite", ["epsilon", "alpha2-beta1", "gamma", "epsilon-plus-flat"])
def test_channels_last_matches_contiguous(composite: str) -> None:
    model = _cnn().to(DT)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    plain = lrp.explain(model, x, composite=composite).relevance
    x_last = x.to(memory_format=torch.channels_last)
    close(lrp.explain(model, x_last, composite=composite).relevance, plain)
    model = model.to(memory_format=torch.channels_last)
    close(lrp.explain(model, x_last, composite=composite).relevance, plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    model = _cnn().to(DT)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    cpu = lrp.explain(model, x, composite="epsilon-gamma-box", low=-3.0, high=3.0)
    gpu_model = _cnn().to(DT).cuda()
    before = model_state(gpu_model)
    gpu = lrp.explain(gpu_model, x.cuda(), composite="epsilon-gamma-box", low=-3.0, high=3.0)
    assert gpu.relevance.device.type == "cuda" and gpu.target.device.type == "cuda"
    close(gpu.relevance.cpu(), cpu.relevance, rtol=1e-7, atol=1e-10)
    assert_same_state(before, model_state(gpu_model))
    gpu32 = lrp.explain(gpu_model.float(), x.cuda().float(), target=cpu.target.cuda())
    r64 = lrp.explain(model, x, target=cpu.target).relevance
    # float32 convolutions may run in TF32 on the GPU: compare loosely
    close(gpu32.relevance.cpu().to(DT), r64, rtol=1e-2, atol=1e-3 * float(r64.abs().max()))


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.1), (torch.float16, 0.01)])
def test_half_precision_runs_close_to_float64(dtype: torch.dtype, tolerance: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 9, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    params = {"composite": "epsilon-gamma-box", "low": 0.0, "high": 1.0}
    reference = lrp.explain(copy.deepcopy(model).double(), x.double(), target=1, **params).relevance
    relevance = lrp.explain(model.to(dtype), x.to(dtype), target=1, **params).relevance
    assert relevance.dtype == dtype
    assert float((relevance.double() - reference).abs().max() / reference.abs().max()) < tolerance


class _WideSkip(nn.Module):
    """``head(relu(inner(x) + 2x))`` for x ≥ 0: inner's first output has only negative weights, so its
    z⁺ denominator is 0, yet the sum passes it relevance (z = −4 of the sum's 2 at x = (3, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.head = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.inner.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 0.0]]))
            self.head.weight.copy_(torch.tensor([[1.0, 1.0]]))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.inner(x) + 2 * x))


def test_float16_z_plus_quotient_over_a_zero_denominator_does_not_overflow() -> None:
    # the sum (R = 2 on its 2) hands inner's first output -4, and -4 / (0 + ε) overflows float16: inf·0 made the
    # input relevance NaN. The rule computes in float32, where that output's shares are exactly 0, as in float64
    model, x = _WideSkip(), torch.tensor([[3.0, 1.0]])
    composite = lrp.Composite(by_type={nn.Linear: lrp.rules.ZPlus()})
    reference = lrp.explain(copy.deepcopy(model).double(), x.double(), target=0, composite=composite).relevance
    relevance = lrp.explain(model.half(), x.half(), target=0, composite=composite).relevance
    assert relevance.dtype == torch.float16
    close(relevance.double(), reference, rtol=1e-3, atol=1e-3)


def test_bfloat16_alpha2_beta1_negative_share_is_not_lost_to_rounding() -> None:
    # after a ReLU, N = z − P: with z = 299.25 rounded to bfloat16's 300 that gave N = 0 and a share of ~1e8;
    # hand-computed: P = 300, N = -0.75, R = z, R_in = (2·R·300/300, -R·(-0.75)/(-0.75)) = (2R, -R)
    model = nn.Sequential(nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[300.0, 0.75]])
    relevance = lrp.explain(model.to(torch.bfloat16), x.to(torch.bfloat16), target=0, composite="alpha2-beta1")
    assert float(relevance.prediction) == 300.0  # 299.25 in bfloat16
    close(relevance.relevance.double(), torch.tensor([[600.0, -300.0]], dtype=DT), rtol=1e-2, atol=0.0)


@pytest.mark.parametrize("composite", ["alpha2-beta1", "epsilon"])
def test_float16_large_dense_layer_is_widened_block_by_block(monkeypatch, composite: str) -> None:
    """A 16-bit dense layer explained in row blocks widens each block's rows to float32, never the whole
    weight, and gives the same relevance as in one piece; also with ε, which takes a layer of any other dtype
    whole."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).half()
    x = torch.rand(2, 6).half()
    whole = lrp.explain(model, x, target=1, composite=composite).relevance
    widened_rows = []
    original = lrp.layers.LayerCall.in_float32

    def spy(call: lrp.layers.LayerCall) -> lrp.layers.LayerCall:
        widened_rows.append(call.raw_weight.shape[0])
        return original(call)
    monkeypatch.setattr(lrp.layers.LayerCall, "in_float32", spy)
    monkeypatch.setattr(lrp.layers, "BLOCK_WEIGHT_BYTES", 2 * 6 * 2)  # both layers in blocks of one row
    blocked = lrp.explain(model, x, target=1, composite=composite).relevance
    assert widened_rows == [1] * (3 + 10)
    close(blocked.double(), whole.double(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("composite, blocks", [("epsilon", []), ("zero", []), (Epsilon(bias=False), [3, 10]),
                                               ("alpha1-beta0", [3, 10]), ("gamma", [3, 10])], ids=str)
def test_large_dense_layers_go_in_row_blocks_only_for_rules_that_copy_or_reread_the_weight(
        monkeypatch, composite: str | Rule, blocks: list[int]) -> None:
    """ε and LRP-0 read a dense layer's weight once, as it is: a large layer is explained whole (blocks would only
    add calls). Rules with modified weights (W⁺, W + γW⁺) take it block by block, and so does ε without bias,
    which runs the layer again first. The relevance is the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    x = torch.rand(2, 6, dtype=DT)
    in_one_piece = lrp.explain(model, x, target=1, composite=composite).relevance
    counted = []
    original = LayerCall.row_blocks

    def spy(call: LayerCall) -> list:
        found = original(call)
        counted.append(len(found))
        return found
    monkeypatch.setattr(LayerCall, "row_blocks", spy)
    monkeypatch.setattr(lrp.layers, "BLOCK_WEIGHT_BYTES", 2 * 6 * 8)  # both layers in blocks of one row
    relevance = lrp.explain(model, x, target=1, composite=composite).relevance
    assert counted == blocks
    close(relevance, in_one_piece)

