"""Our relevance equals zennit 0.5.1's for every shared rule and every named composite (float64).

zennit is an independent implementation (forward hooks re-running each layer with modified
parameters), so agreement to ~1e-12 checks the rules, the composites' layer maps, BatchNorm folding,
residual sums and pooling. BatchNorms use eps=1e-12 (see ``conftest.randomize_batch_norm``).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn as nn
from torch import Tensor

import lrp
import lrp.layers
from lrp import composites as families
from lrp import rules

from conftest import (
    assert_relevance_close, canonizers_for, make_cnn2d, make_cnn3d, make_mlp, make_resnet18, random_input,
    randomize_batch_norm, seeded, zennit_composite, zennit_relevance, zennit_uniform,
)

# model name -> (factory, input shape); batch sizes > 1 everywhere so that samples cannot mix.
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (make_mlp, (3, 12)),
    "mlp-tanh": (lambda: make_mlp(activation=nn.Tanh), (3, 12)),  # signed hidden inputs, z < 0 with relevance
    "cnn2d": (make_cnn2d, (2, 3, 12, 12)),
    "resnet18": (make_resnet18, (2, 3, 32, 32)),
    "cnn3d": (make_cnn3d, (2, 1, 40, 40, 40)),
}

# (model, signed input): signed inputs run the x⁻ branches of the first layer, non-negative ones the
# fast branches that skip them.
# The 3D CNN sees non-negative (MRI-like) input; signed 3D inputs are covered by CONV_VARIANTS.
MODEL_CASES = [("mlp", True), ("mlp", False), ("mlp-tanh", True), ("cnn2d", True), ("cnn2d", False),
               ("resnet18", True), ("cnn3d", False)]

# Named composites with non-default parameters where they take any, so that parameters must reach
# the rules; epsilon-gamma-box bounds are added per input below.
COMPOSITES: list[tuple[str, dict]] = [
    ("zero", {}),
    ("epsilon", {"epsilon": 0.01}),
    ("gamma", {"gamma": 0.5}),
    ("alpha1-beta0", {}),
    ("alpha2-beta1", {}),
    ("z-plus", {}),
    ("epsilon-plus", {"epsilon": 0.01}),
    ("epsilon-plus-flat", {"epsilon": 0.01}),
    ("epsilon-alpha2-beta1", {"epsilon": 0.01}),
    ("epsilon-gamma-box", {"gamma": 0.5, "epsilon": 0.01}),
]


@pytest.fixture(scope="module")
def models(resnet18_model: nn.Module) -> dict[str, nn.Module]:
    """Every model of MODELS, built once for this module (tests must not modify them)."""
    return {name: resnet18_model if name == "resnet18" else factory() for name, (factory, _) in MODELS.items()}


def _input(name: str, signed: bool, seed: int = 1) -> Tensor:
    return random_input(MODELS[name][1], seed=seed, signed=signed)


def _bounds(signed: bool) -> dict[str, float]:
    return {"low": -4.0, "high": 4.0} if signed else {"low": 0.0, "high": 1.0}


@pytest.mark.parametrize("composite, params", COMPOSITES, ids=[name for name, _ in COMPOSITES])
@pytest.mark.parametrize("model_name, signed", MODEL_CASES,
                         ids=[f"{name}-{'signed' if s else 'nonneg'}" for name, s in MODEL_CASES])
def test_named_composite_matches_zennit(models, model_name: str, signed: bool, composite: str, params: dict):
    model, x = models[model_name], _input(model_name, signed)
    if composite == "epsilon-gamma-box":
        params = {**params, **_bounds(signed)}
    ours = lrp.explain(model, x, composite=composite, **params).relevance
    reference = zennit_relevance(model, x, zennit_composite(composite, canonizers_for(model), **params))
    assert_relevance_close(ours, reference)


# A BatchNorm whose scale is positive in every channel is folded by taking the rule before the scale
# (LayerCall.inverse_scale); one with a negative channel is folded into a copy of the weight.
@pytest.mark.parametrize("composite, params", [("alpha2-beta1", {}), ("z-plus", {}), ("gamma", {"gamma": 0.5}),
                                               ("epsilon-gamma-box", {"gamma": 0.5, "low": 0.0, "high": 1.0})])
def test_batch_norm_with_a_negative_scale_matches_zennit(composite: str, params: dict):
    model = make_cnn2d()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight[::2] *= -1
    x = _input("cnn2d", signed=False)
    ours = lrp.explain(model, x, composite=composite, **params).relevance
    reference = zennit_relevance(model, x, zennit_composite(composite, canonizers_for(model), **params))
    assert_relevance_close(ours, reference)


# zennit's composites put Norm(stabilizer) on average pooling and sums (``layer_map_base(stabilizer)``);
# our uniform composites are compared with the same convention.
@pytest.mark.parametrize("composite", ["gamma", "alpha1-beta0", "alpha2-beta1", "z-plus", "epsilon-plus",
                                       "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
def test_named_composite_stabilizer_reaches_pooling(models, composite: str):
    model, x = models["cnn2d"], _input("cnn2d", signed=False)
    params = {"stabilizer": 0.05, **(_bounds(False) if composite == "epsilon-gamma-box" else {})}
    ours = lrp.explain(model, x, composite=composite, **params).relevance
    reference = zennit_relevance(model, x, zennit_composite(composite, canonizers_for(model), **params))
    assert_relevance_close(ours, reference)


# -- single rules on every weighted layer ------------------------------------------------------------
RULES: list[rules.Rule] = [
    rules.Epsilon(0.01),
    rules.Epsilon(0.01, bias=False),
    rules.Zero(),
    rules.Gamma(0.5),
    rules.Gamma(0.5, bias=False),
    rules.AlphaBeta(1.0, 0.0),
    rules.AlphaBeta(2.0, 1.0),
    rules.AlphaBeta(2.0, 1.0, bias=False),
    rules.AlphaBeta(3.0, 2.0),  # α, β ≠ 1: with α2β1 alone, a lost factor β = 1 would go unnoticed
    rules.ZPlus(),
    rules.ZPlus(bias=False),
    rules.ZBox(-4.0, 4.0),
    rules.Flat(),
    rules.WSquare(),
    rules.WSquare(bias=False),
]


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("model_name", ["mlp", "mlp-tanh", "cnn2d"])
def test_rule_matches_zennit(models, model_name: str, rule: rules.Rule):
    model, x = models[model_name], _input(model_name, signed=True)
    ours = lrp.explain(model, x, composite=rule).relevance
    reference = zennit_relevance(model, x, zennit_uniform(rule, canonizers_for(model)))
    assert_relevance_close(ours, reference)


def _mlp_with_batch_norm() -> nn.Module:
    seeded(3)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(),
                          nn.Linear(10, 4))
    return randomize_batch_norm(model).double().eval()


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("model_name", ["mlp-tanh", "mlp-batchnorm"])
def test_dense_layers_explained_block_by_block_match_zennit(monkeypatch, models, model_name: str, rule: rules.Rule):
    """Calls of large dense layers (VGG-16's 400 MB layer) are explained in blocks of rows (LayerCall.row_blocks);
    with a 64-byte bound every weight here is, one or two rows per block, BatchNorm folded in per block (except
    under ε and LRP-0 with their bias, which read the weight once and take every layer whole)."""
    monkeypatch.setattr(lrp.layers, "BLOCK_WEIGHT_BYTES", 64)
    model = models[model_name] if model_name in models else _mlp_with_batch_norm()
    x = _input("mlp-tanh", signed=True)
    ours = lrp.explain(model, x, composite=rule).relevance
    reference = zennit_relevance(model, x, zennit_uniform(rule, canonizers_for(model)))
    assert_relevance_close(ours, reference)


@pytest.mark.parametrize("composite, params", COMPOSITES, ids=[name for name, _ in COMPOSITES])
@pytest.mark.parametrize("model_name, signed, layout", [
    ("cnn2d", True, "contiguous"), ("cnn2d", False, "channels-last"), ("resnet18", True, "contiguous"),
    ("cnn3d", False, "contiguous")])
def test_convolutions_explained_sample_by_sample_match_zennit(monkeypatch, models, model_name: str, signed: bool,
                                                              layout: str, composite: str, params: dict):
    """CPU convolutions with large activations (VGG-16's first layers at batch 8) are explained in blocks of samples
    (LayerCall.sample_blocks); with both bounds lowered every convolution here is, one sample per block, and the
    blocks' relevance is assembled in the input's shape and layout."""
    monkeypatch.setattr(lrp.layers, "SAMPLE_SPLIT_BYTES", 0)
    monkeypatch.setattr(lrp.layers, "SAMPLE_BLOCK_BYTES", 1)
    split = []
    original = lrp.layers.LayerCall.sample_blocks
    monkeypatch.setattr(lrp.layers.LayerCall, "sample_blocks",
                        lambda layer: split.append(original(layer)) or split[-1])
    model, x = models[model_name], random_input((3, *MODELS[model_name][1][1:]), signed=signed)
    if layout == "channels-last":
        x = x.to(memory_format=torch.channels_last)
    if composite == "epsilon-gamma-box":
        params = {**params, **_bounds(signed)}
    ours = lrp.explain(model, x, composite=composite, **params).relevance
    reference = zennit_relevance(model, x, zennit_composite(composite, canonizers_for(model), **params))
    assert_relevance_close(ours, reference)
    assert any(blocks is not None and len(blocks) == 3 for blocks in split)
    if layout == "channels-last":
        assert ours.is_contiguous(memory_format=torch.channels_last)


def test_zero_rule_without_bias_matches_zennit_epsilon_zero():
    # tanh keeps every hidden unit alive, so no bias-free denominator W x is exactly zero
    model, x = make_mlp(seed=3, bias=False, activation=nn.Tanh), random_input((3, 12))
    rule = rules.Zero(bias=False)
    assert_relevance_close(lrp.explain(model, x, composite=rule).relevance,
                           zennit_relevance(model, x, zennit_uniform(rule)))


@pytest.mark.parametrize("model_name", ["cnn2d", "resnet18"])
def test_norm_stabilizer_on_pooling_and_sums_matches_zennit(models, model_name: str):
    # a large stabiliser makes a missing or default Norm on AvgPool / AdaptiveAvgPool / residual sums visible
    model, x = models[model_name], _input(model_name, signed=True)
    norm = rules.Norm(stabilizer=0.1)
    composite = lrp.Composite(by_type={families.Weighted: rules.Epsilon(), families.Pooling: norm,
                                       families.Sum: norm})
    ours = lrp.explain(model, x, composite=composite).relevance
    reference = zennit_relevance(model, x, zennit_uniform(rules.Epsilon(), canonizers_for(model), stabilizer=0.1))
    assert_relevance_close(ours, reference)


# -- ZBox bounds -----------------------------------------------------------------------------------------
BOUNDS: dict[str, tuple[Tensor | float, Tensor | float]] = {
    "scalar": (-2.5, 3.0),
    "per-channel": (torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64),
                    torch.tensor([2.0, 3.5, 4.0], dtype=torch.float64)),
    "per-channel-4d": (torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64).view(1, 3, 1, 1),
                       torch.tensor([2.0, 3.5, 4.0], dtype=torch.float64).view(1, 3, 1, 1)),
    "per-pixel": (-3.0 - torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5)),
                  3.0 + torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))),
}


@pytest.mark.parametrize("bounds", list(BOUNDS), ids=list(BOUNDS))
def test_zbox_bounds_match_zennit(models, bounds: str):
    low, high = BOUNDS[bounds]
    model, x = models["cnn2d"], _input("cnn2d", signed=True)
    ours = lrp.explain(model, x, composite="epsilon-gamma-box", low=low, high=high).relevance
    reference = zennit_relevance(model, x, zennit_composite("epsilon-gamma-box", canonizers_for(model),
                                                            low=low, high=high))
    assert_relevance_close(ours, reference)


def test_zbox_per_channel_first_rule_in_a_composite_matches_zennit(models):
    low, high = BOUNDS["per-channel"]
    model, x = models["resnet18"], _input("resnet18", signed=True)
    composite = lrp.Composite(by_type={families.Weighted: rules.Gamma()}, first=rules.ZBox(low, high))
    ours = lrp.explain(model, x, composite=composite).relevance
    reference = zennit_relevance(model, x, zennit_uniform(rules.Gamma(), canonizers_for(model),
                                                          first=rules.ZBox(low, high)))
    assert_relevance_close(ours, reference)


# -- convolution variants and pooling ---------------------------------------------------------------
def _head(features: nn.Module, n_features: int) -> nn.Sequential:
    return nn.Sequential(features, nn.ReLU(), nn.Flatten(), nn.Linear(n_features, 3))


# name -> (module factory, input shape); each layer is followed by ReLU, Flatten, Linear(., 3).
CONV_VARIANTS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv1d-strided-padded": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2), (2, 3, 15)),
    "conv1d-dilated-grouped": (lambda: nn.Conv1d(4, 6, 3, dilation=2, groups=2), (2, 4, 13)),
    "conv1d-same-even": (lambda: nn.Conv1d(3, 4, 4, padding="same"), (2, 3, 11)),
    "conv2d-strided-grouped": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    "conv1d-pointwise": (lambda: nn.Conv1d(3, 4, 1), (2, 3, 10)),
    "conv2d-pointwise": (lambda: nn.Conv2d(3, 5, 1), (2, 3, 7, 8)),
    "conv3d-pointwise-no-bias": (lambda: nn.Conv3d(2, 4, (1, 1, 1), bias=False), (2, 2, 3, 4, 5)),
    "conv1d-pointwise-strided": (lambda: nn.Conv1d(3, 4, 1, stride=3), (2, 3, 10)),
    "conv2d-pointwise-strided": (lambda: nn.Conv2d(3, 4, 1, stride=2), (2, 3, 7, 8)),
    "conv3d-pointwise-strided-grouped": (lambda: nn.Conv3d(4, 6, 1, stride=(1, 2, 3), dilation=2, groups=2),
                                         (2, 4, 3, 5, 7)),
    "conv2d-dilated-asymmetric": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
                                  (2, 3, 8, 9)),
    "conv2d-same-odd": (lambda: nn.Conv2d(3, 4, 3, padding="same"), (2, 3, 7, 7)),
    "conv2d-same-even": (lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=1), (2, 3, 7, 8)),
    "conv2d-same-dilated-even": (lambda: nn.Conv2d(3, 4, 2, padding="same", dilation=3), (2, 3, 7, 7)),
    "conv2d-reflect-padded": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 6, 6)),
    "conv2d-depthwise-no-bias": (lambda: nn.Conv2d(3, 6, 3, groups=3, bias=False), (2, 3, 6, 6)),
    "conv3d-strided-dilated-grouped": (lambda: nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1, dilation=(2, 1, 1),
                                                         groups=2), (2, 2, 6, 7, 7)),
    "conv3d-same-even": (lambda: nn.Conv3d(2, 3, 2, padding="same"), (2, 2, 5, 5, 5)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 6)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 5, 5)),
    "convtranspose2d-grouped-dilated": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, dilation=2, groups=2),
                                        (2, 4, 4, 5)),
    "convtranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2), (2, 2, 3, 3, 3)),
    "adaptive-avgpool2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 2))),
                           (2, 3, 9, 8)),
    "adaptive-avgpool1d": (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(4)), (2, 3, 12)),
    "avgpool3d-padded": (lambda: nn.Sequential(nn.Conv3d(2, 3, 3), nn.ReLU(),
                                               nn.AvgPool3d(2, stride=1, padding=1, count_include_pad=False)),
                         (2, 2, 5, 5, 5)),
}

CONV_RULES: list[rules.Rule] = [
    rules.Epsilon(0.01), rules.Gamma(0.5), rules.AlphaBeta(2.0, 1.0), rules.ZPlus(), rules.ZBox(-4.0, 4.0),
    rules.Flat(), rules.WSquare(),
]


def _conv_model(variant: str) -> tuple[nn.Module, Tensor]:
    factory, shape = CONV_VARIANTS[variant]
    seeded(7)
    features = factory()
    with torch.no_grad():
        n_features = features(torch.zeros(shape)).numel() // shape[0]
    return _head(features, n_features).double().eval(), random_input(shape, seed=2)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("rule", CONV_RULES, ids=repr)
@pytest.mark.parametrize("variant", list(CONV_VARIANTS))
def test_convolution_variant_matches_zennit(variant: str, rule: rules.Rule):
    model, x = _conv_model(variant)
    ours = lrp.explain(model, x, composite=rule).relevance
    reference = zennit_relevance(model, x, zennit_uniform(rule))
    assert_relevance_close(ours, reference)


# -- targets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [None, 1, [2, 0, 3]], ids=["argmax", "int", "per-sample"])
@pytest.mark.parametrize("composite", ["epsilon", "alpha2-beta1", "epsilon-plus-flat"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn2d"])
def test_targets_match_zennit(models, model_name: str, composite: str, target):
    model = models[model_name]
    x = random_input((3, *MODELS[model_name][1][1:]), seed=4)
    expl = lrp.explain(model, x, target=target, composite=composite)
    reference = zennit_relevance(model, x, zennit_composite(composite, canonizers_for(model)), target)
    assert_relevance_close(expl.relevance, reference)
    expected = model(x).argmax(1) if target is None else torch.as_tensor(target).expand(3)
    assert torch.equal(expl.target, expected)
