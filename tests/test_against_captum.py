"""Our relevance against captum's ``captum.attr.LRP`` (float64).

captum's conventions, read from ``captum/attr/_core/lrp.py`` and ``captum/attr/_utils/lrp_rules.py``:

- Output relevance: captum back-propagates from 1 at the target, divides by the stabilised output
  of the last layer and multiplies all relevances by the target output at the end; for rules that
  are linear in the relevance this is the output relevance "target logit, zero elsewhere", ours.
- ``EpsilonRule(epsilon=1e-9)``: ``x · Wᵀ(R / (z + ε·sign(z)))``, sign(0) = +1, bias in z: our
  Epsilon(ε). On average pooling it is our Norm(ε). On max-pooling it gives the winner
  ``R · z / (z + ε)``; ours passes R (the gradient), equal in the limit ε → 0.
- ``GammaRule(gamma)``: weights ``W + γW⁺`` for every input and output, bias kept unchanged (or
  zeroed with ``set_bias_to_zero``). Ours adds γb⁺ to the bias and treats negative inputs and
  negative outputs separately, so the two agree for inputs ≥ 0, no bias and outputs z > 0.
- ``Alpha1_Beta0_Rule``: weights ``W⁺``, the full bias b in the denominator. Ours uses ``b⁺`` and
  adds the ``x⁻W⁻`` contributions, so the two agree for inputs ≥ 0 and biases ≥ 0 (or none).
- ``IdentityRule``: relevance passes unchanged (for same-shaped layers): our Pass on activations.
- Rules are stored on the modules (``module.rule``), only leaf modules are hooked, and exact types are
  dispatched: captum has no rule for ``nn.Flatten``, so our captum models flatten functionally.
"""
from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn as nn
from captum.attr import LRP as CaptumLRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule
from torch import Tensor

import lrp
from lrp import composites as families
from lrp import rules

from conftest import assert_relevance_close, random_input, relative_error, seeded

CAPTUM_EPSILON = 1e-9  # captum's default stabiliser (PropagationRule.STABILITY_FACTOR)

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


class FeaturesClassifier(nn.Module):
    """``classifier(features(x).flatten(1))``: a sequential CNN whose flattening captum accepts."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def make_captum_cnn(seed: int = 0, pool: type[nn.Module] = nn.AvgPool2d) -> FeaturesClassifier:
    """Conv-ReLU-MaxPool, Conv-ReLU-(Adaptive)AvgPool, Linear-ReLU-Linear; input (N, 3, 10, 10), 3 classes."""
    seeded(seed)
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                             pool(2))
    classifier = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3))
    return FeaturesClassifier(features, classifier).double().eval()


def make_captum_mlp(seed: int = 0, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear(6, 5)-activation-Linear(5, 3)."""
    seeded(seed)
    return nn.Sequential(nn.Linear(6, 5), activation(), nn.Linear(5, 3)).double().eval()


def captum_relevance(model: nn.Module, x: Tensor, target, layer_rules: dict[str, object] | None = None) -> Tensor:
    """captum's LRP relevance on a deep copy of ``model`` with ``{module name: rule}`` set on it."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, rule in (layer_rules or {}).items():
        modules[name].rule = rule
    return CaptumLRP(model).attribute(x.clone(), target=target).detach()


def _weighted_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _modules_of(model: nn.Module, kind: type | tuple[type, ...]) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


def _exact_max_pool(model: nn.Module) -> dict[str, object]:
    """captum's epsilon rule on max-pooling with ε = 1e-300: the winner gets R·z/(z + ε) = R exactly."""
    return {name: EpsilonRule(epsilon=1e-300) for name in _modules_of(model, nn.MaxPool2d)}


# -- where the definitions coincide ------------------------------------------------------------------
@pytest.mark.parametrize("target", [1, [0, 2]], ids=["int", "per-sample"])
@pytest.mark.parametrize("pool", [nn.AvgPool2d, nn.AdaptiveAvgPool2d])
def test_default_epsilon_matches_captum(pool: type[nn.Module], target):
    # captum's defaults: EpsilonRule(1e-9) on every layer, max-pooling included (a 1e-9 / z difference)
    model, x = make_captum_cnn(pool=pool), random_input((2, 3, 10, 10))
    composite = lrp.Composite(by_type={families.Weighted: rules.Epsilon(CAPTUM_EPSILON),
                                       families.Pooling: rules.Norm(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=target, composite=composite).relevance
    assert_relevance_close(ours, captum_relevance(model, x, target))


@pytest.mark.parametrize("epsilon", [1e-3, 0.1])
def test_epsilon_matches_captum(epsilon: float):
    model, x = make_captum_cnn(seed=1), random_input((2, 3, 10, 10), seed=2)
    layer_rules = {name: EpsilonRule(epsilon) for name in _modules_of(model, (nn.Linear, nn.Conv2d, nn.AvgPool2d))}
    composite = lrp.Composite(by_type={families.Weighted: rules.Epsilon(epsilon),
                                       families.Pooling: rules.Norm(epsilon)})
    ours = lrp.explain(model, x, target=2, composite=composite).relevance
    assert_relevance_close(ours, captum_relevance(model, x, 2, {**layer_rules, **_exact_max_pool(model)}), 1e-10)


def test_output_relevance_is_the_target_logit():
    # bias-free and a tiny epsilon: both conserve, so the input relevance sums to what each put on the output
    seeded(3)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)).double().eval()
    x, target = random_input((3, 6), seed=3), [0, 1, 2]
    reference = captum_relevance(model, x, target)
    with torch.no_grad():
        logits = model(x)[torch.arange(3), target]
    torch.testing.assert_close(reference.sum(1), logits, rtol=1e-7, atol=0)
    ours = lrp.explain(model, x, target=target, composite=rules.Epsilon(CAPTUM_EPSILON))
    assert_relevance_close(ours.relevance, reference, 1e-10)


@pytest.mark.parametrize("gamma", [0.25, 1.0])
def test_gamma_matches_captum_without_bias_on_nonnegative_inputs(gamma: float):
    # non-negative inputs everywhere (image in [0, 1), ReLU outputs), no bias, and an epsilon last layer
    # (the target logit may be negative): only outputs z > 0 carry relevance into a gamma layer
    model, x = make_captum_cnn(seed=4), random_input((2, 3, 10, 10), seed=5, signed=False)
    last = _weighted_names(model)[-1]
    layer_rules = {name: GammaRule(gamma, set_bias_to_zero=True) for name in _weighted_names(model)[:-1]}
    layer_rules[last] = EpsilonRule(CAPTUM_EPSILON)
    composite = lrp.Composite(by_type={families.Weighted: rules.Gamma(gamma, CAPTUM_EPSILON, bias=False),
                                       families.Pooling: rules.Norm(CAPTUM_EPSILON)},
                              by_name={last: rules.Epsilon(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=0, composite=composite).relevance
    assert_relevance_close(ours, captum_relevance(model, x, 0, {**layer_rules, **_exact_max_pool(model)}), 1e-9)


@pytest.mark.parametrize("bias", ["positive", "zeroed"])
def test_alpha1_beta0_matches_captum_on_nonnegative_inputs(bias: str):
    # with b ≥ 0, b = b⁺; with set_bias_to_zero=True captum drops the bias as our bias=False does
    model, x = make_captum_cnn(seed=6), random_input((2, 3, 10, 10), seed=7, signed=False)
    if bias == "positive":
        with torch.no_grad():
            for name in _weighted_names(model):
                model.get_submodule(name).bias.abs_()
    zeroed = bias == "zeroed"
    layer_rules = {name: Alpha1_Beta0_Rule(set_bias_to_zero=zeroed) for name in _weighted_names(model)}
    composite = lrp.Composite(by_type={families.Weighted: rules.AlphaBeta(1.0, 0.0, CAPTUM_EPSILON, bias=not zeroed),
                                       families.Pooling: rules.Norm(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=0, composite=composite).relevance
    assert_relevance_close(ours, captum_relevance(model, x, 0, {**layer_rules, **_exact_max_pool(model)}), 1e-9)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.ELU, nn.LeakyReLU])
def test_identity_rule_on_activations_matches_pass(activation: type[nn.Module]):
    # captum has no default rule for ELU / LeakyReLU; IdentityRule passes relevance as our Pass does.
    # Signed hidden inputs (ELU, LeakyReLU) also run the epsilon rule on negative inputs.
    model, x = make_captum_mlp(seed=8, activation=activation), random_input((3, 6), seed=9)
    layer_rules = {"1": IdentityRule()}
    ours = lrp.explain(model, x, target=[2, 0, 1], composite=rules.Epsilon(CAPTUM_EPSILON)).relevance
    assert_relevance_close(ours, captum_relevance(model, x, [2, 0, 1], layer_rules), 1e-10)


# -- where the definitions differ by design -----------------------------------------------------------
Contributions = Callable[[Tensor, Tensor], Tensor]


def two_layer_reference(model: nn.Sequential, x: Tensor, target: int, contributions: Contributions,
                        bias: Callable[[Tensor], Tensor]) -> Tensor:
    """Input relevance of ``Linear -> ReLU -> Linear`` with an epsilon (1e-9) last layer and, for the
    first layer, ``R_i = Σ_o c_oi R_o / stab(Σ_i c_oi + bias(b)_o)`` with ``c = contributions(x, W)``
    (N, O, I). Output relevance: the target logit."""
    first, last = model[0], model[2]
    with torch.no_grad():
        hidden = torch.relu(first(x))
        z = last(hidden)
    start = torch.zeros_like(z)
    start[:, target] = z[:, target]
    r_hidden = hidden * ((start / _stab(z)) @ last.weight)
    c = contributions(x, first.weight)
    return torch.einsum("noi,no->ni", c, r_hidden / _stab(c.sum(-1) + bias(first.bias)))


def _stab(z: Tensor) -> Tensor:
    return z + CAPTUM_EPSILON * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _with_bias(model: nn.Sequential, values: list[float]) -> nn.Sequential:
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor(values))
    return model


def _first_rule_composite(rule: rules.Rule) -> lrp.Composite:
    return lrp.Composite(by_name={"0": rule}, by_type={families.Dense: rules.Epsilon(CAPTUM_EPSILON)})


MIXED_BIAS = [0.3, -0.2, 0.5, -0.1, 0.4]  # hidden biases of both signs, none making a denominator vanish


def test_captum_gamma_keeps_the_plain_bias():
    # captum: denominator (W + γW⁺)x + b; ours: (W + γW⁺)x + b + γb⁺ (both on inputs ≥ 0)
    gamma = 0.5
    model, x = _with_bias(make_captum_mlp(seed=10), MIXED_BIAS), random_input((3, 6), seed=11, signed=False)
    def boosted(x: Tensor, w: Tensor) -> Tensor:
        return x[:, None, :] * (w + gamma * w.clamp(min=0))
    captum_style = two_layer_reference(model, x, 1, boosted, lambda b: b)
    ours_style = two_layer_reference(model, x, 1, boosted, lambda b: b + gamma * b.clamp(min=0))
    reference = captum_relevance(model, x, 1, {"0": GammaRule(gamma), "2": EpsilonRule(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=1, composite=_first_rule_composite(rules.Gamma(gamma, CAPTUM_EPSILON)))
    assert_relevance_close(reference, captum_style, 1e-10)
    assert_relevance_close(ours.relevance, ours_style, 1e-10)
    assert relative_error(ours_style, captum_style) > 1e-3


def test_captum_gamma_boosts_negative_inputs_with_positive_weights():
    # signed inputs: captum weights every input with W + γW⁺; ours favours the positive contributions,
    # x⁺(W + γW⁺) + x⁻(W + γW⁻) = xW + γ(xW)⁺, for outputs z > 0
    gamma = 0.5
    model = _with_bias(make_captum_mlp(seed=12), [0.0] * 5)
    x = random_input((3, 6), seed=13)
    def captum_contributions(x: Tensor, w: Tensor) -> Tensor:
        return x[:, None, :] * (w + gamma * w.clamp(min=0))
    def our_contributions(x: Tensor, w: Tensor) -> Tensor:
        c = x[:, None, :] * w
        return c + gamma * c.clamp(min=0)
    captum_style = two_layer_reference(model, x, 0, captum_contributions, lambda b: b)
    ours_style = two_layer_reference(model, x, 0, our_contributions, lambda b: b)
    reference = captum_relevance(model, x, 0, {"0": GammaRule(gamma), "2": EpsilonRule(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=0, composite=_first_rule_composite(rules.Gamma(gamma, CAPTUM_EPSILON)))
    assert_relevance_close(reference, captum_style, 1e-10)
    assert_relevance_close(ours.relevance, ours_style, 1e-10)
    assert relative_error(ours_style, captum_style) > 1e-3


def test_captum_alpha1_beta0_keeps_the_full_bias():
    # captum: denominator W⁺x + b; ours: W⁺x + b⁺ (both on inputs ≥ 0)
    model, x = _with_bias(make_captum_mlp(seed=14), MIXED_BIAS), random_input((3, 6), seed=15, signed=False)
    def positive(x: Tensor, w: Tensor) -> Tensor:
        return x[:, None, :] * w.clamp(min=0)
    captum_style = two_layer_reference(model, x, 2, positive, lambda b: b)
    ours_style = two_layer_reference(model, x, 2, positive, lambda b: b.clamp(min=0))
    reference = captum_relevance(model, x, 2, {"0": Alpha1_Beta0_Rule(), "2": EpsilonRule(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=2, composite=_first_rule_composite(rules.AlphaBeta(1.0, 0.0, CAPTUM_EPSILON)))
    assert_relevance_close(reference, captum_style, 1e-10)
    assert_relevance_close(ours.relevance, ours_style, 1e-10)
    assert relative_error(ours_style, captum_style) > 1e-3


def test_captum_alpha1_beta0_ignores_the_sign_of_inputs():
    # signed inputs: captum's contributions are x·W⁺ (negative for x < 0); ours are (x·W)⁺ = x⁺W⁺ + x⁻W⁻
    model, x = _with_bias(make_captum_mlp(seed=16), [0.2] * 5), random_input((3, 6), seed=17)
    def captum_contributions(x: Tensor, w: Tensor) -> Tensor:
        return x[:, None, :] * w.clamp(min=0)
    def our_contributions(x: Tensor, w: Tensor) -> Tensor:
        return (x[:, None, :] * w).clamp(min=0)
    captum_style = two_layer_reference(model, x, 1, captum_contributions, lambda b: b)
    ours_style = two_layer_reference(model, x, 1, our_contributions, lambda b: b)
    reference = captum_relevance(model, x, 1, {"0": Alpha1_Beta0_Rule(), "2": EpsilonRule(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=1, composite=_first_rule_composite(rules.AlphaBeta(1.0, 0.0, CAPTUM_EPSILON)))
    assert_relevance_close(reference, captum_style, 1e-10)
    assert_relevance_close(ours.relevance, ours_style, 1e-10)
    assert relative_error(ours_style, captum_style) > 1e-3


def test_captum_max_pool_epsilon_absorbs_relevance():
    # captum's epsilon rule on max-pooling hands the winner R·z/(z + ε), ours R: with a large ε the
    # difference is visible, and captum equals ours with that factor applied at the pooling layer
    model, x = make_captum_cnn(seed=18), random_input((2, 3, 10, 10), seed=19, signed=False)
    epsilon = 0.5
    weighted = {name: EpsilonRule(CAPTUM_EPSILON) for name in _modules_of(model, (nn.Linear, nn.Conv2d, nn.AvgPool2d))}
    reference = captum_relevance(model, x, 0, {**weighted, "features.2": EpsilonRule(epsilon)})
    composite = lrp.Composite(by_type={families.Weighted: rules.Epsilon(CAPTUM_EPSILON),
                                       families.Pooling: rules.Norm(CAPTUM_EPSILON)})
    ours = lrp.explain(model, x, target=0, composite=composite, keep_layers=True)
    assert relative_error(ours.relevance, reference) > 1e-3
    # R at the max-pool output, scaled by z / (z + ε), pushed through the first conv with ours
    pooled = model.features[:3](x).detach()
    scaled = ours.layers["features.3"] * pooled / (pooled + epsilon)
    start = lrp.explain(model.features[:3], x, target=scaled, composite=rules.Epsilon(CAPTUM_EPSILON)).relevance
    assert_relevance_close(start, reference, 1e-9)
