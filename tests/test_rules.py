"""Each rule against a slow, obviously-correct float64 reference in matrix form, and conservation.

A layer (dense or any convolution) is turned into its matrix ``M`` (out_features, in_features) by
applying it, without bias, to every basis vector; its bias into a vector ``b`` (out_features,).
The references then work on the contributions ``c[n, o, i] = x[n, i] · M[o, i]`` of every input to
every output, which is how the rules are written in the literature:
``R_in[n, i] = Σ_o c'[n, o, i] / stab(Σ_i c'[n, o, i] + b'[o]) · R_out[n, o]`` for a rule's
modified contributions c' and bias b'. ``stab(z) = z + ε·sign(z)`` with sign(0) = +1 (zennit's
convention).
"""
from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import lrp
from lrp import composites as families
from lrp import layers
from lrp import rules

from conftest import assert_relevance_close, make_mlp, random_input, seeded

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")


# -- matrix form of a layer ------------------------------------------------------------------------
def layer_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(M, b)``: the layer as ``z.flatten() = M @ x.flatten() + b`` for one sample of shape ``in_shape``.

    M: (out_features, in_features), b: (out_features,) (zeros without bias).
    """
    in_features = torch.Size(in_shape).numel()
    basis = torch.eye(in_features, dtype=torch.float64).reshape(in_features, *in_shape)
    with torch.no_grad():
        offset = layer(torch.zeros(1, *in_shape, dtype=torch.float64)).reshape(-1)
        columns = layer(basis).reshape(in_features, -1) - offset
    return columns.T.contiguous(), offset


def with_weight(layer: nn.Module, weight: Callable[[Tensor], Tensor]) -> nn.Module:
    """A copy of ``layer`` whose weight is ``weight(layer.weight)``."""
    layer = copy.deepcopy(layer)
    with torch.no_grad():
        layer.weight.copy_(weight(layer.weight))
    return layer


def stab(z: Tensor, epsilon: float) -> Tensor:
    """``z + ε·sign(z)`` with sign(0) = +1."""
    return z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def propagate(c: Tensor, denominator: Tensor, relevance: Tensor, epsilon: float) -> Tensor:
    """``Σ_o c[n, o, i] · R[n, o] / stab(denominator[n, o])``; c (N, O, I) or (O, I)."""
    scaled = relevance / stab(denominator, epsilon)
    return torch.einsum("oi,no->ni" if c.dim() == 2 else "noi,no->ni", c, scaled)


def reference_relevance(rule: rules.Rule, layer: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    """The input relevance (N, I) of ``rule`` for ``layer`` at ``x`` (N, *S) and output relevance (N, O)."""
    M, b = layer_matrix(layer, tuple(x.shape[1:]))
    flat = x.reshape(x.shape[0], -1)
    c = flat[:, None, :] * M[None]                          # (N, O, I)
    z = c.sum(-1) + b                                       # the layer's output, which selects Gamma's branch
    if not getattr(rule, "bias", True):
        b = torch.zeros_like(b)
    if isinstance(rule, (rules.Zero, rules.Epsilon)):
        z = c.sum(-1) + b
    if isinstance(rule, rules.Zero):
        safe = torch.where(z == 0, torch.ones_like(z), z)
        return torch.einsum("noi,no->ni", c, torch.where(z == 0, 0.0, relevance / safe))
    if isinstance(rule, rules.Epsilon):
        return propagate(c, z, relevance, rule.epsilon)
    if isinstance(rule, (rules.AlphaBeta, rules.ZPlus)):
        alpha, beta = (rule.alpha, rule.beta) if isinstance(rule, rules.AlphaBeta) else (1.0, 0.0)
        p, q = c.clamp(min=0), c.clamp(max=0)
        positive = propagate(p, p.sum(-1) + b.clamp(min=0), relevance, rule.stabilizer)
        negative = propagate(q, q.sum(-1) + b.clamp(max=0), relevance, rule.stabilizer)
        return alpha * positive - beta * negative
    if isinstance(rule, rules.Gamma):
        # the branch follows the sign of the layer's output z, also with bias=False (as in zennit)
        up = c + rule.gamma * c.clamp(min=0)                # z > 0: favour positive contributions
        down = c + rule.gamma * c.clamp(max=0)              # z < 0: favour negative contributions
        r_up, r_down = relevance * (z > 0), relevance * (z < 0)
        return (propagate(up, up.sum(-1) + b + rule.gamma * b.clamp(min=0), r_up, rule.stabilizer)
                + propagate(down, down.sum(-1) + b + rule.gamma * b.clamp(max=0), r_down, rule.stabilizer))
    if isinstance(rule, rules.ZBox):
        low = torch.broadcast_to(_channel_view(rule.low, x), (1, *x.shape[1:])).reshape(-1)
        high = torch.broadcast_to(_channel_view(rule.high, x), (1, *x.shape[1:])).reshape(-1)
        c = c - low * M.clamp(min=0) - high * M.clamp(max=0)  # bias terms cancel: b − b⁺ − b⁻ = 0
        return propagate(c, c.sum(-1), relevance, rule.stabilizer)
    if isinstance(rule, rules.Flat):
        ones, _ = layer_matrix(with_weight(layer, torch.ones_like), tuple(x.shape[1:]))
        connected = (ones != 0).to(x.dtype)
        return propagate(connected, connected.sum(-1).expand_as(z), relevance, rule.stabilizer)
    if isinstance(rule, rules.WSquare):
        squared, _ = layer_matrix(with_weight(layer, torch.square), tuple(x.shape[1:]))
        return propagate(squared, (squared.sum(-1) + b ** 2).expand_as(z), relevance, rule.stabilizer)
    raise TypeError(f"no reference for {rule!r}")


def _channel_view(bound: float | Tensor, x: Tensor) -> Tensor:
    """A ZBox bound as a tensor broadcastable to (1, C, *S); (C,) means per channel."""
    bound = torch.as_tensor(bound, dtype=x.dtype)
    if bound.dim() == 1 and x.dim() > 2:
        return bound.view(1, -1, *([1] * (x.dim() - 2)))
    return bound


# -- layers and rules ----------------------------------------------------------------------------------
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "dense": (lambda: nn.Linear(7, 5), (3, 7)),
    "conv1d-strided-padded": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (2, 2, 7)),
    "conv2d-dilated": (lambda: nn.Conv2d(2, 3, 2, dilation=2, padding=1), (2, 2, 5, 4)),
    "conv2d-grouped-strided": (lambda: nn.Conv2d(4, 4, 3, stride=2, groups=2), (2, 4, 5, 5)),
    "conv2d-pointwise": (lambda: nn.Conv2d(3, 4, 1), (2, 3, 5, 8)),
    "conv2d-pointwise-strided": (lambda: nn.Conv2d(3, 4, 1, stride=(2, 3)), (2, 3, 5, 8)),
    "conv2d-grouped-padded": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 6, 7)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, padding=(1, 0, 0)), (2, 2, 3, 3, 3)),
    "conv2d-same-even": (lambda: nn.Conv2d(2, 3, (2, 3), padding="same"), (2, 2, 4, 5)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (2, 2, 3, 3)),
}

RULES: list[rules.Rule] = [
    rules.Epsilon(0.1),
    rules.Epsilon(0.1, bias=False),
    rules.Zero(),
    rules.Zero(bias=False),
    rules.Gamma(0.3, stabilizer=1e-3),
    rules.Gamma(0.3, bias=False),
    rules.AlphaBeta(1.0, 0.0, stabilizer=1e-3),
    rules.AlphaBeta(2.0, 1.0),
    rules.AlphaBeta(3.0, 2.0, bias=False),
    rules.ZPlus(stabilizer=1e-3),
    rules.ZBox(-2.0, 2.5, stabilizer=1e-3),
    rules.ZBox(-1.5, 2.0, bias=False),
    rules.Flat(stabilizer=1e-3),
    rules.WSquare(),
    rules.WSquare(bias=False),
]


def _layer(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape = LAYERS[name]
    seeded(seed)
    layer = factory().double().eval()
    with torch.no_grad():
        layer.bias.normal_(0.0, 0.5)  # signed biases: b⁺ and b⁻ both matter
    return layer, shape


def _ours(layer: nn.Module, rule: rules.Rule | lrp.Composite, x: Tensor, relevance: Tensor) -> Tensor:
    """Our input relevance for the output relevance ``relevance`` (shaped like the layer's output)."""
    return lrp.explain(layer, x, target=relevance, composite=rule).relevance


@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "nonneg-input"])
@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_rule_matches_matrix_reference(layer_name: str, rule: rules.Rule, signed: bool):
    layer, shape = _layer(layer_name)
    x = random_input(shape, seed=3, signed=signed)
    with torch.no_grad():
        z = layer(x)
    relevance = random_input(tuple(z.shape), seed=4)  # signed output relevance on every output
    reference = reference_relevance(rule, layer, x, relevance.reshape(shape[0], -1)).reshape(x.shape)
    assert_relevance_close(_ours(layer, rule, x, relevance), reference)


def test_gamma_explains_negative_outputs():
    layer, shape = _layer("dense", seed=1)
    x = random_input(shape, seed=5)
    with torch.no_grad():
        z = layer(x)
    relevance = torch.where(z < 0, 1.0, 0.0).to(x.dtype) * random_input(tuple(z.shape), seed=6)
    assert (relevance != 0).sum() >= 3, "the case needs outputs z < 0 that receive relevance"
    rule = rules.Gamma(0.5)
    ours = _ours(layer, rule, x, relevance)
    assert_relevance_close(ours, reference_relevance(rule, layer, x, relevance))
    # the z < 0 branch differs from the z > 0 formula applied to negative outputs
    with torch.no_grad():
        up = x[:, None, :] * layer.weight
        up = up + 0.5 * up.clamp(min=0)
        as_positive = propagate(up, up.sum(-1) + layer.bias + 0.5 * layer.bias.clamp(min=0), relevance, 1e-6)
    assert not torch.allclose(ours, as_positive, rtol=1e-3)


@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "nonneg-input"])
def test_gamma_passes_nothing_through_outputs_that_are_exactly_zero(signed: bool):
    """An output with z = 0 belongs to neither branch: relevance that reaches it stops there, also where one
    denominator and one division serve both signs of z (non-negative input)."""
    layer, shape = _layer("dense", seed=2)
    with torch.no_grad():
        layer.weight[0] = 0.0
        layer.bias[0] = 0.0  # output 0 is exactly zero for every input
    x = random_input(shape, seed=7, signed=signed)
    with torch.no_grad():
        z = layer(x)
    assert (z[:, 0] == 0).all() and (z[:, 1:] > 0).any() and (z[:, 1:] < 0).any()
    relevance = random_input(tuple(z.shape), seed=8)
    rule = rules.Gamma(0.3)
    ours = _ours(layer, rule, x, relevance)
    assert_relevance_close(ours, reference_relevance(rule, layer, x, relevance))
    without_zero_output = relevance.clone()
    without_zero_output[:, 0] = 0.0
    assert_relevance_close(ours, _ours(layer, rule, x, without_zero_output))


def _bounds(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("layer_name, low, high", [
    ("conv2d-grouped-strided", _bounds([-1.0, -2.0, -3.0, -0.5]), _bounds([1.0, 2.5, 0.5, 3.0])),
    ("conv2d-grouped-strided", _bounds([-1.0, -2.0, -3.0, -0.5]).view(1, 4, 1, 1),
     _bounds([1.0, 2.5, 0.5, 3.0]).view(1, 4, 1, 1)),
    ("conv2d-grouped-padded", _bounds([-1.0, -2.0, -3.0, -0.5]), _bounds([1.0, 2.5, 0.5, 3.0])),
    ("conv3d", _bounds([-1.0, -2.0]), _bounds([0.5, 3.0])),
    ("dense", _bounds([-1.0, -2.0, -3.0, -0.5, -1.5, -2.5, -1.0]), _bounds([1.0, 2.5, 0.5, 3.0, 1.0, 1.5, 2.0])),
], ids=["conv-(C,)", "conv-(1,C,1,1)", "padded-conv-(C,)", "padded-conv3d-(C,)", "dense-(F,)"])
def test_zbox_per_channel_bounds(layer_name: str, low: Tensor, high: Tensor):
    layer, shape = _layer(layer_name)
    x = random_input(shape, seed=7)
    with torch.no_grad():
        z = layer(x)
    relevance = random_input(tuple(z.shape), seed=8)
    rule = rules.ZBox(low, high)
    reference = reference_relevance(rule, layer, x, relevance.reshape(shape[0], -1)).reshape(x.shape)
    assert_relevance_close(_ours(layer, rule, x, relevance), reference)
    # per-channel bounds differ from any scalar bound: a channel-blind implementation would fail above
    scalar = reference_relevance(rules.ZBox(-1.0, 1.0), layer, x, relevance.reshape(shape[0], -1)).reshape(x.shape)
    assert not torch.allclose(reference, scalar)


# -- hand-made cases ----------------------------------------------------------------------------------
def _dense(weight: list[list[float]], bias: list[float] | None) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


# x = (1, 2, -1): neuron 0 has z = 1 - 1 + 0 = 0 exactly, neuron 1 has z = 2.5, neuron 2 is dead (z = 0)
ZERO_CASE = dict(weight=[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], bias=[0.0, 0.5, 0.0])
ZERO_X = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.float64)
ZERO_R = torch.tensor([[3.0, 2.0, 5.0]], dtype=torch.float64)


def test_zero_rule_drops_relevance_of_zero_denominators():
    ours = _ours(_dense(**ZERO_CASE), rules.Zero(), ZERO_X, ZERO_R)
    # only neuron 1 passes relevance: x_i w_1i R_1 / z_1 = (1, 2, -1) * 2 / 2.5
    expected = torch.tensor([[0.8, 1.6, -0.8]], dtype=torch.float64)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


def test_epsilon_treats_zero_denominator_as_positive():
    ours = _ours(_dense(**ZERO_CASE), rules.Epsilon(0.5), ZERO_X, ZERO_R)
    # neuron 0: (1, 0, -1) * 3 / (0 + 0.5); neuron 1: (1, 2, -1) * 2 / 3.0; neuron 2: no contributions
    expected = torch.tensor([[6.0 + 2 / 3, 4 / 3, -6.0 - 2 / 3]], dtype=torch.float64)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


def test_gamma_passes_nothing_for_zero_outputs():
    layer = _dense(weight=[[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], bias=None)  # z = (0, 2)
    ours = _ours(layer, rules.Gamma(0.5, stabilizer=1e-9), ZERO_X, torch.tensor([[7.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(ours, torch.zeros_like(ours), rtol=0, atol=0)


# neuron 0 has only positive contributions (1, 4), neuron 1 only negative ones (-1, -6)
ONE_SIDED = dict(weight=[[1.0, 2.0], [-1.0, -3.0]], bias=None)
ONE_SIDED_X = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
ONE_SIDED_R = torch.tensor([[3.0, 7.0]], dtype=torch.float64)


def test_alpha_beta_conserve_one_sided_by_hand():
    s = 1e-9
    rule = rules.AlphaBeta(2.0, 1.0, stabilizer=s, conserve_one_sided=True)
    ours = _ours(_dense(**ONE_SIDED), rule, ONE_SIDED_X, ONE_SIDED_R)
    # each one-sided neuron passes its whole relevance, split in proportion to its contributions
    expected = torch.tensor([[1 / (5 + s) * 3 + -1 / -(7 + s) * 7, 4 / (5 + s) * 3 + -6 / -(7 + s) * 7]],
                            dtype=torch.float64)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours.sum(), ONE_SIDED_R.sum(), rtol=1e-8, atol=0)


def test_alpha_beta_one_sided_neurons_follow_zennit_by_default():
    rule = rules.AlphaBeta(2.0, 1.0, stabilizer=1e-9)
    ours = _ours(_dense(**ONE_SIDED), rule, ONE_SIDED_X, ONE_SIDED_R)
    # α = 2 on neuron 0's positive share, −β = −1 on neuron 1's negative share: 2·3 − 7 in total
    expected = 2 * torch.tensor([[1 / 5, 4 / 5]], dtype=torch.float64) * 3 \
        - torch.tensor([[1 / 7, 6 / 7]], dtype=torch.float64) * 7
    torch.testing.assert_close(ours, expected, rtol=1e-8, atol=0)


@pytest.mark.parametrize("conserve_one_sided", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_alpha_beta_derives_the_negative_part_of_a_signed_input_from_z(monkeypatch, bias: bool,
                                                                      conserve_one_sided: bool):
    """With signed inputs, N = z − P takes no layer call of its own; one-sided neurons are found by exact zeros,
    so ``conserve_one_sided`` computes N. Either way the relevance equals the matrix reference."""
    layer, shape = _layer("conv2d-dilated")
    x = random_input(shape, seed=3, signed=True)
    with torch.no_grad():
        relevance = random_input(tuple(layer(x).shape), seed=4)
    calls = []
    forward_pair = layers.LayerCall.forward_pair
    monkeypatch.setattr(layers.LayerCall, "forward_pair", lambda *args: calls.append(1) or forward_pair(*args))
    rule = rules.AlphaBeta(2.0, 1.0, bias=bias, conserve_one_sided=conserve_one_sided)
    ours = _ours(layer, rule, x, relevance)
    assert len(calls) == (2 if conserve_one_sided else 1)
    if not conserve_one_sided:
        reference = reference_relevance(rule, layer, x, relevance.reshape(shape[0], -1)).reshape(x.shape)
        assert_relevance_close(ours, reference)


def test_alpha_beta_conserve_one_sided_matches_default_on_two_sided_neurons():
    layer, shape = _layer("dense", seed=2)
    x, relevance = random_input(shape, seed=9), random_input((shape[0], 5), seed=10)
    with torch.no_grad():
        c = x[:, None, :] * layer.weight
    assert ((c > 0).any(-1) & (c < 0).any(-1)).all(), "every neuron must be two-sided here"
    plain = _ours(layer, rules.AlphaBeta(2.0, 1.0), x, relevance)
    conserving = _ours(layer, rules.AlphaBeta(2.0, 1.0, conserve_one_sided=True), x, relevance)
    torch.testing.assert_close(conserving, plain, rtol=1e-12, atol=0)


@pytest.mark.parametrize("make", [
    lambda: rules.AlphaBeta(2.0, 0.0),
    lambda: rules.AlphaBeta(1.0, 1.0),
    lambda: rules.AlphaBeta(-1.0, -2.0),
    lambda: rules.AlphaBeta(0.5, -0.5),
    lambda: rules.Gamma(-0.25),
], ids=["alpha-beta=2", "alpha-beta=0", "negative-both", "negative-beta", "negative-gamma"])
def test_invalid_parameters_raise(make: Callable[[], rules.Rule]):
    with pytest.raises(ValueError):
        make()


# -- conservation -------------------------------------------------------------------------------------
class _Residual(nn.Module):
    """Bias-free residual network: conv, two residual blocks ``relu(conv(relu(conv(h))) + h)``, avg-pool, dense."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, bias=False))
            for _ in range(2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        for block in self.blocks:
            h = F.relu(block(h) + h)
        return self.head(self.pool(h).flatten(1))


def _bias_free_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 6, 2, bias=False),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=False))


CONSERVING_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: make_mlp(seed=4, bias=False), (4, 12)),
    "cnn-avgpool": (_bias_free_cnn, (4, 2, 9, 9)),
    "residual": (_Residual, (4, 2, 6, 6)),
}

# The "zero" composite keeps Norm(1e-6) on pooling and sums (as zennit's base map), which absorbs
# about 1e-6 / z of the relevance there; with Zero on them too conservation is exact up to rounding.
ZERO_EVERYWHERE = lrp.Composite(by_type={families.Weighted: rules.Zero(), families.Pooling: rules.Zero(),
                                         families.Sum: rules.Zero()})
CONSERVATION_CASES = [pytest.param("mlp", "zero", id="mlp-zero")] + [
    pytest.param(name, ZERO_EVERYWHERE, id=f"{name}-zero-everywhere") for name in CONSERVING_MODELS]


@pytest.mark.parametrize("model_name, composite", CONSERVATION_CASES)
def test_lrp0_conserves_the_explained_logit(model_name: str, composite):
    factory, shape = CONSERVING_MODELS[model_name]
    seeded(5)
    model = factory().double().eval()
    x = random_input(shape, seed=11)
    target = [0, 1, 2, 1]
    expl = lrp.explain(model, x, target=target, composite=composite)
    with torch.no_grad():
        logits = model(x)[torch.arange(4), target]
    assert logits.abs().min() > 1e-3
    totals = expl.relevance.reshape(4, -1).sum(1)
    assert ((totals - logits).abs() / logits.abs()).max() <= 1e-6


CHAIN_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda: make_mlp(seed=6, bias=True), (3, 12)),
    "cnn": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 2), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)),
            (3, 2, 8, 8)),
}


@pytest.mark.parametrize("composite", ["zero", "epsilon", "alpha2-beta1"])
@pytest.mark.parametrize("model_name", list(CHAIN_MODELS))
def test_conservation_rows_chain(model_name: str, composite: str):
    factory, shape = CHAIN_MODELS[model_name]
    seeded(7)
    model = factory().double().eval()
    x = random_input(shape, seed=12)
    expl = lrp.explain(model, x, target=[0, 1, 2], composite=composite, conservation=True)
    rows = expl.conservation()
    weighted = sum(isinstance(m, (nn.Linear, nn.Conv2d, nn.AvgPool2d)) for m in model.modules())
    assert len(rows) == weighted
    # activations, max-pooling and flattening pass relevance on: what enters a layer from above is
    # what left the layer below
    for below, above in zip(rows[:-1], rows[1:]):
        torch.testing.assert_close(above.relevance_in, below.relevance_out, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        logits = model(x)[torch.arange(3), [0, 1, 2]]
    torch.testing.assert_close(rows[-1].relevance_out, logits, rtol=1e-10, atol=0)
    torch.testing.assert_close(rows[0].relevance_in, expl.relevance.reshape(3, -1).sum(1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("activation, known", [(nn.ReLU(inplace=True), True), (nn.Sigmoid(), True),
                                               (nn.ELU(), False), (nn.Tanh(), False)])
def test_rules_know_a_relu_output_is_non_negative_without_looking(monkeypatch, activation: nn.Module, known: bool):
    """After ReLU-like activations the αβ / γ rules skip the scan for negative inputs (the x⁻ terms);
    after activations with negative outputs they look (and take the signed path when they find one)."""
    looked, real_amin = [], torch.amin
    monkeypatch.setattr(torch, "amin", lambda *args, **kwargs: looked.append(1) or real_amin(*args, **kwargs))
    model = nn.Sequential(nn.Linear(5, 6), activation, nn.Linear(6, 3)).double().eval()
    x = random_input((2, 5))
    ours = lrp.explain(model, x, composite=rules.AlphaBeta(2.0, 1.0)).relevance
    assert len(looked) == (1 if known else 2)  # the first layer's input is always looked at
    assert torch.isfinite(ours).all()
