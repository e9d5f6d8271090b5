"""Shared helpers for the test suite: small float64 models, error measures and zennit references.

Every model factory returns an ``nn.Module`` in eval mode and float64, with weights drawn from a
seeded generator, so that tests are reproducible and comparisons are not limited by float32.
"""
from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import pytest
import torch
import torch.nn as nn
import torchvision
from torch import Tensor
from zennit import composites as zcomposites
from zennit import rules as zrules
from zennit import types as ztypes
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.torchvision import ResNetCanonizer

import lrp
from lrp import interception, rules

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> *args`` with the source tree on the path, from the repository root; output
    captured as text."""
    root = BENCHMARKS.parent
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], check=False, capture_output=True,
                          text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root / "src")}, timeout=300)


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported (with that directory on the path while it imports its siblings)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


RELATIVE_TOLERANCE = 1e-6
"""Largest accepted ``max|ours - ref| / max|ref|`` for float64 comparisons."""


# -- measuring -------------------------------------------------------------------------------------
def relative_error(ours: Tensor, reference: Tensor) -> float:
    """``max|ours - reference| / max|reference|`` (shapes must match exactly)."""
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != reference {tuple(reference.shape)}"
    scale = reference.abs().max()
    assert scale > 0, "the reference is identically zero: the comparison would be meaningless"
    return ((ours - reference).abs().max() / scale).item()


def assert_relevance_close(ours: Tensor, reference: Tensor, tolerance: float = RELATIVE_TOLERANCE) -> None:
    """Fail unless ``relative_error(ours, reference) <= tolerance`` and both are finite."""
    assert torch.isfinite(ours).all(), "our relevance holds NaN or inf"
    assert torch.isfinite(reference).all(), "the reference relevance holds NaN or inf"
    error = relative_error(ours, reference)
    assert error <= tolerance, f"relative error {error:.3g} > {tolerance:g}"


def never_rectified(model: nn.Module, x: Tensor, **kwargs) -> Tensor:
    """``lrp.explain(model, x, **kwargs).relevance`` with every ReLU's input kept (or, under a ReLU run in place,
    made again) and every producer dividing by ``stab(z)`` (``Trace._rectify`` switched off, every ReLU output
    taken as if relevance could reach its zeros): the reference for rectification."""
    original, proportional = interception.Trace.__dict__["_rectify"], interception._proportional_throughout
    interception.Trace._rectify = staticmethod(lambda entry, ends: None)
    interception._proportional_throughout = lambda entry, ends: False
    try:
        return lrp.explain(model, x, **kwargs).relevance
    finally:
        interception.Trace._rectify, interception._proportional_throughout = original, proportional


# -- models ----------------------------------------------------------------------------------------
def seeded(seed: int) -> None:
    """Seed torch's global generator (module initialisation draws from it)."""
    torch.manual_seed(seed)


def randomize_batch_norm(model: nn.Module, eps: float = 1e-12) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, and a tiny ``eps``.

    zennit's merged BatchNorm still divides by sqrt(1 + eps) (5e-6 relative for eps=1e-5), so
    comparison models use eps=1e-12 to test the rules, not that artefact.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model


def _finish(model: nn.Module) -> nn.Module:
    return randomize_batch_norm(model).double().eval()


def make_mlp(seed: int = 0, bias: bool = True, activation: type[nn.Module] = nn.ReLU,
             sizes: Sequence[int] = (12, 16, 10, 4)) -> nn.Sequential:
    """Dense network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers; input (N, sizes[0])."""
    seeded(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out, bias=bias))
    return _finish(nn.Sequential(*layers))


def make_cnn2d(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU-AvgPool, Conv-BN-ReLU-MaxPool, two dense layers; input (N, 3, 12, 12), 5 classes."""
    seeded(seed)
    return _finish(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 5),
    ))


def make_resnet18(seed: int = 0, num_classes: int = 5) -> nn.Module:
    """torchvision's ResNet-18 with random weights and BatchNorm statistics; input (N, 3, 32, 32)."""
    seeded(seed)
    return _finish(torchvision.models.resnet18(num_classes=num_classes))


def make_cnn3d(seed: int = 0, channels: Sequence[int] = (1, 8, 16, 32, 64), pools: Sequence[int] = (2, 2, 2, 1),
               hidden: int = 32) -> nn.Sequential:
    """The paper's 3D CNN structure: 4x (Conv3d(k=3) -> BatchNorm3d -> ReLU -> MaxPool3d), Flatten,
    Dropout, Linear, ReLU, Dropout, Linear(hidden, 2). Sized for input (N, 1, 40, 40, 40)."""
    seeded(seed)
    layers: list[nn.Module] = []
    size = 40
    for c_in, c_out, pool in zip(channels[:-1], channels[1:], pools):
        layers += [nn.Conv3d(c_in, c_out, 3), nn.BatchNorm3d(c_out), nn.ReLU(), nn.MaxPool3d(pool)]
        size = (size - 2) // pool
    layers += [nn.Flatten(), nn.Dropout(), nn.Linear(channels[-1] * size ** 3, hidden), nn.ReLU(), nn.Dropout(),
               nn.Linear(hidden, 2)]
    return _finish(nn.Sequential(*layers))


def random_input(shape: Sequence[int], seed: int = 1, signed: bool = True) -> Tensor:
    """float64 input: standard normal (``signed``) or uniform in [0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    if signed:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


# -- zennit references -----------------------------------------------------------------------------
def zennit_rule(rule: rules.Rule):
    """The zennit 0.5.1 hook computing the same formula as one of our rules.

    ``bias=False`` maps to ``zero_params='bias'``; ``Zero`` maps to ``Epsilon(epsilon=0)`` (equal
    wherever no denominator is exactly zero); per-channel ZBox bounds (C,) become (1, C, 1, ...).
    """
    zero = None if getattr(rule, "bias", True) else "bias"
    if isinstance(rule, rules.Zero):
        return zrules.Epsilon(epsilon=0.0, zero_params=zero)
    if isinstance(rule, rules.Norm):
        return zrules.Norm(stabilizer=rule.epsilon)
    if isinstance(rule, rules.Epsilon):
        return zrules.Epsilon(epsilon=rule.epsilon, zero_params=zero)
    if isinstance(rule, rules.Gamma):
        return zrules.Gamma(gamma=rule.gamma, stabilizer=rule.stabilizer, zero_params=zero)
    if isinstance(rule, rules.AlphaBeta):
        assert not rule.conserve_one_sided, "zennit has no conserve_one_sided"
        return zrules.AlphaBeta(alpha=rule.alpha, beta=rule.beta, stabilizer=rule.stabilizer, zero_params=zero)
    if isinstance(rule, rules.ZPlus):
        return zrules.ZPlus(stabilizer=rule.stabilizer, zero_params=zero)
    if isinstance(rule, rules.ZBox):
        return zrules.ZBox(low=_zennit_bound(rule.low), high=_zennit_bound(rule.high), stabilizer=rule.stabilizer,
                           zero_params=zero)
    if isinstance(rule, rules.Flat):
        return zrules.Flat(stabilizer=rule.stabilizer)
    if isinstance(rule, rules.WSquare):
        return zrules.WSquare(stabilizer=rule.stabilizer, zero_params=zero)
    raise TypeError(f"no zennit counterpart for {rule!r}")


def _zennit_bound(bound: float | Tensor) -> float | Tensor:
    if isinstance(bound, Tensor) and bound.dim() == 1:
        return bound[None]  # (1, C): zennit appends the trailing singleton dimensions itself
    return bound


def canonizers_for(model: nn.Module) -> list:
    """The zennit canonizers that fold ``model``'s BatchNorms (and expose ResNet residual sums)."""
    if isinstance(model, torchvision.models.ResNet):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def zennit_uniform(rule: rules.Rule, canonizers: list | None = None, stabilizer: float = 1e-6,
                   first: rules.Rule | None = None) -> zcomposites.Composite:
    """zennit composite with ``rule`` on every conv / dense layer (and ``first`` on the first of them in
    registration order), zennit's base map elsewhere (Pass on activations, Norm(stabilizer) on
    average pooling and sums)."""
    layer_map = zcomposites.layer_map_base(stabilizer) + [(ztypes.Linear, zennit_rule(rule))]
    if first is None:
        return zcomposites.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    return zcomposites.SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=[(ztypes.Linear, zennit_rule(first))], canonizers=canonizers)


_ZENNIT_COMPOSITES: dict[str, Callable[..., zcomposites.Composite]] = {
    # LRP-0 everywhere: zennit's Norm on sums and pooling with a stabiliser too small to matter, which
    # (like our Zero) gives 0 instead of 0/0 where a pooling window is all zeros
    "zero": lambda canonizers: zennit_uniform(rules.Zero(), canonizers, stabilizer=1e-300),
    "epsilon": lambda canonizers, epsilon=1e-6: zennit_uniform(rules.Epsilon(epsilon), canonizers),
    "gamma": lambda canonizers, gamma=0.25, stabilizer=1e-6: zennit_uniform(
        rules.Gamma(gamma, stabilizer), canonizers, stabilizer),
    "alpha1-beta0": lambda canonizers, stabilizer=1e-6: zennit_uniform(
        rules.AlphaBeta(1.0, 0.0, stabilizer), canonizers, stabilizer),
    "alpha2-beta1": lambda canonizers, stabilizer=1e-6: zennit_uniform(
        rules.AlphaBeta(2.0, 1.0, stabilizer), canonizers, stabilizer),
    "z-plus": lambda canonizers, stabilizer=1e-6: zennit_uniform(rules.ZPlus(stabilizer), canonizers, stabilizer),
    "epsilon-plus": lambda canonizers, **params: zcomposites.EpsilonPlus(canonizers=canonizers, **params),
    "epsilon-plus-flat": lambda canonizers, **params: zcomposites.EpsilonPlusFlat(canonizers=canonizers, **params),
    "epsilon-alpha2-beta1": lambda canonizers, **params: zcomposites.EpsilonAlpha2Beta1(
        canonizers=canonizers, **params),
    "epsilon-gamma-box": lambda canonizers, low, high, **params: zcomposites.EpsilonGammaBox(
        low=_zennit_bound(low), high=_zennit_bound(high), canonizers=canonizers, **params),
}


def zennit_composite(name: str, canonizers: list | None = None, **params) -> zcomposites.Composite:
    """The zennit composite meaning the same as our named composite ``name`` with ``params``.

    zennit has no named uniform composites ("epsilon", "gamma", ...): those are its base layer map
    plus the rule on every ``zennit.types.Linear`` (conv and dense) layer.
    """
    return _ZENNIT_COMPOSITES[name](canonizers, **params)


def class_indices(model: nn.Module, x: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    """Explained class per sample (N,): the arg-max for None, else ``target`` broadcast to the batch."""
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    return torch.as_tensor(target, dtype=torch.long).expand(x.shape[0]).clone()


def zennit_relevance(model: nn.Module, x: Tensor, composite: zcomposites.Composite,
                     target: int | Sequence[int] | Tensor | None = None) -> Tensor:
    """zennit's input relevance for ``target`` (see :func:`class_indices`), output relevance = the
    target logit. Runs on a deep copy, so zennit can leave no trace on ``model``."""
    model = copy.deepcopy(model)
    index = class_indices(model, x, target)[:, None]

    def output_relevance(output: Tensor) -> Tensor:
        return torch.zeros_like(output).scatter(1, index, output.gather(1, index))

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone(), output_relevance)
    return relevance.detach()


@pytest.fixture(scope="session")
def resnet18_model() -> nn.Module:
    """One shared random ResNet-18 (5 classes, float64); tests must not modify it."""
    return make_resnet18()


TEMPLATES = Path("/usr/share/mricron/templates")
"""Where Debian's mricron-data puts Colin27 and the atlases (scripts/setup.sh installs it)."""
needs_templates = pytest.mark.skipif(
    not all((TEMPLATES / name).is_file() for name in ("aal.nii.gz", "ch2bet.nii.gz")),
    reason="needs Colin27 and AAL: apt-get install mricron-data")
"""Skip marker of tests on the real brain template and atlases."""

REDUCED_DEMO = ("--subjects", "30", "--resolution", "4", "--epochs", "3", "--methods", "lrp:alpha1-beta0,guided_backprop",
                "--atrophy", "Hippocampus,Amygdala_L", "--quiet")
"""Arguments of the reduced ``lrp demo`` that tests/test_demo.py and tests/test_own_data.py share."""


@pytest.fixture(scope="session")
def reduced_demo(tmp_path_factory):
    """Output folder of ``lrp demo`` on 30 subjects at 4 mm, run once per session with one torch thread
    (tiny tensors; immune to busy neighbours on the cores). Needs mricron-data (modules skip without)."""
    from lrp.cli import main

    out = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = main(["demo", "--out", str(out), *REDUCED_DEMO])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return out
