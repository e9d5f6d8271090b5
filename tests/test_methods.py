"""The comparison methods of ``lrp.methods`` against captum (float64), a hand-computed case, and the
invariants every method shares (shape, batch independence, targets, no trace left on the model).

captum's definitions, read from ``captum/attr/_core`` and ``captum/attr/_utils/approximation_methods.py``:
``Saliency`` is the gradient (``abs=True`` by default); ``InputXGradient`` multiplies it by the input;
``GuidedBackprop`` / ``Deconvolution`` hook ``nn.ReLU`` modules only (functional and in-place ReLUs
keep their ordinary gradient there, hence the hand-computed case); ``IntegratedGradients`` takes
its path nodes from ``torch.linspace`` in float32 (relative differences ~1e-8); ``NoiseTunnel`` adds
``N(0, stdev²)`` noise to ``inputs.repeat_interleave(samples)`` (sample-major, as ours), drawn from
torch's global generator, so the tests hand it our noise; ``Occlusion`` returns float32.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from conftest import assert_relevance_close, make_cnn2d, make_mlp, random_input, seeded
from torch import Tensor, nn

import lrp
from lrp import methods

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients",
                                        "ignore:Setting backward hooks on ReLU activations")


# -- models ----------------------------------------------------------------------------------------
def make_cnn1d(seed: int = 0) -> nn.Sequential:
    """Conv1d-ReLU-Linear; input (N, 2, 10), 3 classes."""
    seeded(seed)
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).double().eval()


def make_cnn3d(seed: int = 0) -> nn.Sequential:
    """Conv3d-BN-ReLU-MaxPool, Conv3d-ReLU, Linear; input (N, 1, 8, 8, 8), 3 classes."""
    seeded(seed)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
                          nn.Conv3d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).double()
    with torch.no_grad():
        model[1].running_mean.normal_(0.0, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


class FunctionalCNN(nn.Module):
    """``make_cnn2d``'s layers with its ReLUs spelled as functions and in-place ops (same function)."""

    def __init__(self, twin: nn.Sequential):
        super().__init__()
        self.twin = twin

    def forward(self, x: Tensor) -> Tensor:
        t = self.twin
        x = t[3](F.relu(t[1](t[0](x)), inplace=True))
        x = t[7](t[5](t[4](x)).relu_())
        return t[11](torch.relu(t[9](t[8](x))))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "dense": (make_mlp, (12,)),
    "conv1d": (make_cnn1d, (2, 10)),
    "conv2d": (make_cnn2d, (3, 12, 12)),
    "conv3d": (make_cnn3d, (1, 8, 8, 8)),
}


def model_and_input(name: str, batch: int = 3) -> tuple[nn.Module, Tensor]:
    build, shape = MODELS[name]
    return build(), random_input((batch, *shape))


def captum_relevance(result: Tensor) -> Tensor:
    return result.detach().to(torch.float64)


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv1d", "conv2d", "conv3d"])
def test_gradients_match_captum(name: str):
    model, x = model_and_input(name)
    target = [0, 2, 1]
    assert_relevance_close(methods.gradient(model, x, target).relevance,
                           captum_relevance(Saliency(model).attribute(x.clone(), target=target, abs=False)))
    assert_relevance_close(methods.gradient(model, x, target, mode="abs").relevance,
                           captum_relevance(Saliency(model).attribute(x.clone(), target=target, abs=True)))
    assert_relevance_close(methods.gradient(model, x, target, mode="square").relevance,
                           captum_relevance(Saliency(model).attribute(x.clone(), target=target, abs=False)) ** 2)
    assert_relevance_close(methods.gradient_x_input(model, x, target).relevance,
                           captum_relevance(InputXGradient(model).attribute(x.clone(), target=target)))
    assert_relevance_close(methods.guided_backprop(model, x, target).relevance,
                           captum_relevance(GuidedBackprop(model).attribute(x.clone(), target=target)))
    assert_relevance_close(methods.deconvnet(model, x, target).relevance,
                           captum_relevance(Deconvolution(model).attribute(x.clone(), target=target)))


@pytest.mark.parametrize("method, captum_method", [(methods.guided_backprop, GuidedBackprop),
                                                   (methods.deconvnet, Deconvolution)])
def test_functional_relus_match_captum_on_the_module_twin(method, captum_method):
    twin = make_cnn2d()
    functional = FunctionalCNN(twin)
    x = random_input((2, 3, 12, 12))
    reference = captum_relevance(captum_method(twin).attribute(x.clone(), target=3))
    assert_relevance_close(method(functional, x, 3).relevance, reference)
    plain = methods.gradient(functional, x, 3).relevance
    assert (plain - reference).abs().max() > 1e-3 * reference.abs().max(), "the ReLU rule made no difference"


W1 = [[1.0, 2.0], [-1.0, 1.0], [2.0, -3.0]]
W2 = [[1.0, -1.0, -2.0], [-2.0, 1.0, 1.0]]
W3 = [[1.0, 1.0], [-1.0, 2.0]]
RELU_SPELLINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "nn.ReLU": nn.ReLU(),
    "nn.ReLU(inplace)": nn.ReLU(inplace=True),
    "F.relu": F.relu,
    "F.relu(inplace)": functools.partial(F.relu, inplace=True),
    "F.relu_": F.relu_,
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "Tensor.relu": Tensor.relu,
    "Tensor.relu_": Tensor.relu_,
    # called for the side effect only (the result is dropped): the in-place op must really happen
    "x.relu_(); x": lambda t: (t.relu_(), t)[1],
    "F.relu(x, inplace=True); x": lambda t: (F.relu(t, inplace=True), t)[1],
}


class HandNet(nn.Module):
    """x (N, 2) -> W1 -> relu -> W2 -> relu -> W3 -> (N, 2), no biases, ReLU spelled as ``relu``."""

    def __init__(self, relu: Callable[[Tensor], Tensor]):
        super().__init__()
        self.relu = relu
        self.w1, self.w2, self.w3 = (nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in (W1, W2, W3))

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.relu(x @ self.w1.T) @ self.w2.T) @ self.w3.T


@pytest.mark.parametrize("spelling", list(RELU_SPELLINGS))
def test_guided_backprop_and_deconvnet_by_hand(spelling: str):
    # x = (2, 1): z1 = W1 x = (4, -1, 1), a1 = (4, 0, 1); z2 = W2 a1 = (2, -7), a2 = (2, 0); y = (2, -2).
    # guided, class 0: g = W3[0] = (1, 1) -> ·[z2>0]·[g>0] = (1, 0) -> W2ᵀ: (1, -1, -2)
    #                  -> ·[z1>0]·[g>0] = (1, 0, 0) -> W1ᵀ: (1, 2)          (the plain gradient: (-3, 8))
    # deconvnet, class 1: g = W3[1] = (-1, 2) -> relu (0, 2) -> W2ᵀ: (-4, 2, 2) -> relu (0, 2, 2) -> W1ᵀ: (2, -4)
    model = HandNet(RELU_SPELLINGS[spelling])
    x = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    guided = methods.guided_backprop(model, x)
    torch.testing.assert_close(guided.relevance, torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(guided.prediction, torch.tensor([[2.0, -2.0]], dtype=torch.float64))
    assert guided.target.tolist() == [0]
    torch.testing.assert_close(methods.deconvnet(model, x, 1).relevance, torch.tensor([[2.0, -4.0]], dtype=torch.float64))
    torch.testing.assert_close(methods.gradient(model, x).relevance, torch.tensor([[-3.0, 8.0]], dtype=torch.float64))


# -- integrated gradients --------------------------------------------------------------------------
@pytest.mark.parametrize("method, steps, baseline", [
    ("gausslegendre", 16, None),
    ("riemann_trapezoid", 12, 0.5),
    ("riemann_left", 9, "channel"),
    ("riemann_right", 9, "like x"),
    ("riemann_middle", 10, None),
])
def test_integrated_gradients_match_captum(method: str, steps: int, baseline):
    model, x = model_and_input("conv2d")
    if baseline == "channel":
        baseline = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    elif baseline == "like x":
        baseline = random_input(x.shape, seed=7) * 0.5
    captum_baseline = 0.0 if baseline is None else baseline
    reference = IntegratedGradients(model).attribute(x.clone(), baselines=captum_baseline, target=[1, 0, 4],
                                                     n_steps=steps, method=method)
    ours = methods.integrated_gradients(model, x, [1, 0, 4], baseline=baseline, steps=steps, method=method,
                                        batch_size=7)
    assert_relevance_close(ours.relevance, captum_relevance(reference))


def test_integrated_gradients_on_conv3d_match_captum():
    model, x = model_and_input("conv3d", batch=2)
    reference = IntegratedGradients(model).attribute(x.clone(), target=2, n_steps=12)
    assert_relevance_close(methods.integrated_gradients(model, x, 2, steps=12, batch_size=5).relevance,
                           captum_relevance(reference))


# -- SmoothGrad ------------------------------------------------------------------------------------
def standard_noise(x: Tensor, samples: int, seed: int) -> Tensor:
    """The documented draws: sample by sample, copy by copy, ``randn(x.shape[1:])`` from one generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(x.shape[1:], generator=generator, dtype=x.dtype)
                        for _ in range(x.shape[0] * samples)])


@pytest.mark.parametrize("kind", methods.SMOOTHGRAD_KINDS)
@pytest.mark.parametrize("ours, captum_method, captum_kwargs", [
    (methods.gradient, Saliency, {"abs": False}),
    (methods.gradient_x_input, InputXGradient, {}),
])
def test_smoothgrad_matches_captum_noise_tunnel(monkeypatch, kind, ours, captum_method, captum_kwargs):
    model, x = model_and_input("conv2d", batch=2)
    samples, stdev, seed = 5, 0.3, 11
    noise = standard_noise(x, samples, seed)

    def add_our_noise(inputs: Tensor, sigma: float, copies: int) -> Tensor:
        assert copies == samples
        return inputs.repeat_interleave(copies, dim=0) + sigma * noise

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add_our_noise))
    reference = NoiseTunnel(captum_method(model)).attribute(x.clone(), nt_type=kind, nt_samples=samples, stdevs=stdev,
                                                            target=1, **captum_kwargs)
    expl = methods.smoothgrad(model, x, 1, stdev=stdev, samples=samples, kind=kind, method=ours, seed=seed,
                              batch_size=3)
    assert_relevance_close(expl.relevance, captum_relevance(reference))


def test_smoothgrad_noise_level_seed_and_lrp_method():
    model, x = model_and_input("conv1d", batch=1)
    spread = (x.max() - x.min()).item()
    relative = methods.smoothgrad(model, x, noise_level=0.2, samples=4, seed=3).relevance
    torch.testing.assert_close(relative, methods.smoothgrad(model, x, stdev=0.2 * spread, samples=4, seed=3).relevance)
    assert not torch.equal(relative, methods.smoothgrad(model, x, noise_level=0.2, samples=4, seed=4).relevance)
    explain = functools.partial(lrp.explain, composite="epsilon")
    torch.testing.assert_close(methods.smoothgrad(model, x, stdev=0.0, samples=2, method=explain).relevance,
                               lrp.explain(model, x, composite="epsilon").relevance)


# -- occlusion -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, patch, stride, captum_window, captum_stride", [
    ("dense", 5, 3, (5,), (3,)),
    ("conv1d", 4, None, (2, 4), (2, 4)),
    ("conv2d", (5, 4), (2, 3), (3, 5, 4), (3, 2, 3)),
    ("conv3d", 3, 2, (1, 3, 3, 3), (1, 2, 2, 2)),
    ("conv3d", (8, 2), 2, (1, 8, 8, 2), (1, 1, 2, 2)),
])
def test_occlusion_matches_captum(name, patch, stride, captum_window, captum_stride):
    model, x = model_and_input(name, batch=2)
    fill = random_input((1, *x.shape[1:]), seed=5) * 0.1
    reference = Occlusion(model).attribute(x.clone(), sliding_window_shapes=captum_window, strides=captum_stride,
                                           baselines=fill, target=[1, 2], perturbations_per_eval=4)
    ours = methods.occlusion(model, x, [1, 2], patch=patch, stride=stride, fill=fill, batch_size=5)
    assert_relevance_close(ours.relevance, captum_relevance(reference))


# -- invariants of every method --------------------------------------------------------------------
METHODS: dict[str, tuple[Callable, dict, bool]] = {
    # name: (method, parameters, more than one forward pass)
    "gradient": (methods.gradient, {"mode": "abs"}, False),
    "gradient_x_input": (methods.gradient_x_input, {}, False),
    "guided_backprop": (methods.guided_backprop, {}, False),
    "deconvnet": (methods.deconvnet, {}, False),
    "integrated_gradients": (methods.integrated_gradients, {"steps": 4, "baseline": 0.1, "batch_size": 3}, True),
    "smoothgrad": (methods.smoothgrad, {"samples": 3, "kind": "vargrad", "method": methods.guided_backprop,
                                        "batch_size": 2}, True),
    "occlusion": (methods.occlusion, {"patch": 4, "batch_size": 3}, True),
}


class FailingAfterReLU(nn.Module):
    """``head(body(x))`` that raises after ``body`` (which ends in a ReLU) from its ``fail_at``-th call on."""

    def __init__(self, body: nn.Module, head: nn.Module, fail_at: int):
        super().__init__()
        self.body, self.head, self.fail_at, self.calls = body, head, fail_at, 0

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.body(x)
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("the model failed midway")
        return self.head(hidden)


def snapshot(model: nn.Module) -> dict:
    """Everything an explanation must leave as it was."""
    return {
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "training": [module.training for module in model.modules()],
        "requires_grad": [param.requires_grad for param in model.parameters()],
        "grads": [param.grad is None for param in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)) for m in model.modules()],
        "global hooks": (len(nn.modules.module._global_forward_hooks),
                         len(nn.modules.module._global_forward_pre_hooks),
                         len(nn.modules.module._global_backward_hooks)),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        if key == "state":
            assert all(torch.equal(after[key][name], tensor) for name, tensor in value.items()), "weights changed"
        else:
            assert after[key] == value, f"{key} changed"
    t = torch.tensor([-1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad((-F.relu(t)).sum(), t)
    assert grad.tolist() == [0.0, -1.0], "a modified ReLU backward is still active"


def in_train_mode_with_mixed_grad_flags(model: nn.Module) -> nn.Module:
    model.train()
    for i, param in enumerate(model.parameters()):
        param.requires_grad_(i % 2 == 0)
    return model


@pytest.mark.parametrize("name", list(METHODS))
def test_invariants_of_every_method(name: str):
    method, params, multi_pass = METHODS[name]
    model, x = model_and_input("conv3d")
    in_train_mode_with_mixed_grad_flags(model)
    before = snapshot(model)
    with torch.no_grad():
        logits = model.eval()(x)
    model.train()
    expl = method(model, x, **params)
    assert expl.relevance.shape == x.shape and expl.relevance.dtype == x.dtype
    assert bool(torch.isfinite(expl.relevance).all()) and expl.relevance.abs().max() > 0
    torch.testing.assert_close(expl.prediction, logits, rtol=1e-12, atol=1e-12)
    assert expl.target.dtype == torch.long and expl.target.tolist() == logits.argmax(1).tolist()
    assert_unchanged(model, before)

    # a batch with one class per sample = each sample alone (SmoothGrad: one generator for all calls),
    # also under torch.inference_mode
    targets = [2, 0, 1]

    def with_seed(seed: int) -> dict:
        return {**params, "seed": torch.Generator().manual_seed(seed)} if name == "smoothgrad" else params
    batch = method(model, x, targets, **with_seed(1))
    assert batch.target.tolist() == targets
    one_generator = with_seed(1)  # the samples alone, one after another, draw from one generator
    for i, target in enumerate(targets):
        alone = method(model, x[i:i + 1], target, **one_generator)
        torch.testing.assert_close(alone.relevance[0], batch.relevance[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(alone.prediction[0], batch.prediction[i], rtol=1e-12, atol=1e-12)
        assert alone.target.tolist() == [target]
    with torch.inference_mode():
        torch.testing.assert_close(method(model, x.clone(), torch.tensor(targets), **with_seed(1)).relevance,
                                   batch.relevance)
    same_class = method(model, x, 1, **params)
    assert same_class.target.tolist() == [1, 1, 1]
    if name != "smoothgrad":
        torch.testing.assert_close(same_class.relevance, method(model, x, torch.tensor([1, 1, 1]), **params).relevance)
    with pytest.raises(lrp.errors.TargetError):
        method(model, x, 3, **params)
    with pytest.raises(lrp.errors.TargetError):
        method(model, x, [0, 1], **params)
    assert_unchanged(model, before)

    # the model raises midway (in the first forward pass, or in a later one)
    for fail_at in (1, 2) if multi_pass else (1,):
        failing = in_train_mode_with_mixed_grad_flags(FailingAfterReLU(model[:3], model[3:], fail_at))
        before_failing = snapshot(failing)
        with pytest.raises(RuntimeError, match="failed midway"):
            method(failing, x, **params)
        assert_unchanged(failing, before_failing)


class BatchRecorder(nn.Module):
    """Runs ``model`` and records the batch size of every call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("method, params, passes", [
    (methods.integrated_gradients, {"steps": 5}, 2 * 5),  # N·steps interpolated inputs
    (methods.smoothgrad, {"samples": 4}, 2 * 4),  # N·samples noisy copies
    (methods.occlusion, {"patch": 4}, 2 * 8),  # N·windows occluded inputs (8 patches of 4³ in 8³)
])
def test_batch_size_bounds_the_inputs_per_forward_pass(method, params, passes):
    model, x = model_and_input("conv3d", batch=2)
    recorder = BatchRecorder(model)
    reference = method(recorder, x, 0, **params, batch_size=passes, **_seed(method)).relevance
    assert recorder.batches[1:] == [passes]  # after the forward pass on x itself
    recorder.batches.clear()
    chunked = method(recorder, x, 0, **params, batch_size=3, **_seed(method)).relevance
    assert max(recorder.batches) <= 3 and sum(recorder.batches[1:]) == passes
    torch.testing.assert_close(chunked, reference, rtol=1e-10, atol=1e-12)


def _seed(method: Callable) -> dict:
    return {"seed": 0} if method is methods.smoothgrad else {}


# -- bad parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize("method, params, error, match", [
    (methods.gradient, {"mode": "signed"}, ValueError, "unknown gradient mode"),
    (methods.integrated_gradients, {"steps": 0}, ValueError, "steps must be an int >= 1"),
    (methods.integrated_gradients, {"steps": 1, "method": "riemann_trapezoid"}, ValueError, "steps >= 2"),
    (methods.integrated_gradients, {"method": "simpson"}, ValueError, "unknown integration method"),
    (methods.integrated_gradients, {"baseline": torch.zeros(2, 1, 1)}, ValueError, "baseline of shape"),
    (methods.integrated_gradients, {"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    (methods.smoothgrad, {"kind": "mean"}, ValueError, "unknown SmoothGrad kind"),
    (methods.smoothgrad, {"samples": 0}, ValueError, "samples must be an int >= 1"),
    (methods.smoothgrad, {"noise_level": -0.1}, ValueError, "noise_level must be"),
    (methods.smoothgrad, {"seed": "seven"}, TypeError, "seed must be"),
    (methods.occlusion, {"patch": 9}, ValueError, "patch 9 is larger than the input"),
    (methods.occlusion, {"patch": (2, 2, 2, 2, 2)}, ValueError, "needs 1 to 4 sizes"),
    (methods.occlusion, {"patch": 2, "stride": 3}, ValueError, "stride 3 is larger than the patch 2"),
    (methods.occlusion, {"patch": (2, 2), "stride": (1, 1, 1)}, ValueError, "one step per patched axis"),
    (methods.occlusion, {"fill": torch.zeros(2, 1, 1)}, ValueError, "fill of shape"),
    (methods.occlusion, {"fill": "blur"}, TypeError, "fill must be a finite float or a tensor"),
])
def test_bad_parameters_raise_clear_errors_and_change_nothing(method, params, error, match):
    model, x = model_and_input("conv3d", batch=1)
    model.train()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        method(model, x, **params)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_model_may_modify_its_input_in_place(name: str):
    method, params, _ = METHODS[name]
    seeded(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 3)).double()
    x = random_input((2, 6))
    original = x.clone()
    params = {**params, "patch": 2} if name == "occlusion" else params
    expl = method(model, x, 1, **params)
    assert torch.equal(x, original), "the user's input was modified"
    assert expl.relevance.shape == x.shape
    if name in ("gradient", "guided_backprop"):  # hand-computed: |W[1]·[x > 0]|, W[1]·[x > 0]·[W[1] > 0]
        row = model[1].weight[1].detach()
        expected = (row * (x > 0)).abs() if name == "gradient" else row.clamp_min(0) * (x > 0)
        torch.testing.assert_close(expl.relevance, expected)


def test_bad_inputs_and_targets():
    model, x = model_and_input("conv1d", batch=2)
    with pytest.raises(TypeError, match="floating-point"):
        methods.gradient(model, x.long())
    with pytest.raises(TypeError, match="nn.Module"):
        methods.gradient(lambda t: t, x)
    with pytest.raises(lrp.errors.TargetError, match="one class per sample"):
        methods.occlusion(model, x, torch.zeros(2, 3, dtype=torch.float64), patch=2)
