"""Attribution methods to compare LRP with: gradient, gradient×input, guided backpropagation,
deconvnet, integrated gradients, SmoothGrad and occlusion.

Every method is called like :func:`lrp.explain`, ``method(model, x, target=None, **params)``, and
returns an :class:`~lrp.Explanation`: ``relevance`` shaped like ``x`` (N, *S), ``prediction`` the
model's logits for ``x`` (N, C) and ``target`` the explained classes, LongTensor (N,). ``target`` is
None (the arg-max class of each sample), an int, or one class per sample; the explained score of a
sample is its target class's output. Inputs are batch-first, e.g. (N, C, L), (N, C, H, W) or
(N, C, D, H, W); the samples of a batch are explained independently. The model runs in eval mode
with frozen parameters and is given back unchanged (:func:`lrp.restore.borrowed`); nothing is
attached to it, also not for guided backpropagation and deconvnet (see :mod:`lrp.relu_backward`).

Integrated gradients, SmoothGrad and occlusion follow the definitions of captum's
``IntegratedGradients``, ``NoiseTunnel`` and ``Occlusion``, so that they give the same numbers.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .engine import _check_input
from .errors import TargetError, UnsupportedOperationError
from .explanation import Explanation
from .relu_backward import ModifiedReLUBackward, ReLURule
from .restore import borrowed
from .targets import TargetSpec, output_relevance

__all__ = [
    "GRADIENT_MODES",
    "QUADRATURES",
    "SMOOTHGRAD_KINDS",
    "deconvnet",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "integrated_gradients",
    "occlusion",
    "smoothgrad",
]

GRADIENT_MODES: dict[str, Callable[[Tensor], Tensor]] = {
    "raw": lambda g: g,
    "abs": torch.abs,
    "square": torch.square,
}
"""How :func:`gradient` reports the gradient: as it is, its absolute value, or its square."""

QUADRATURES: tuple[str, ...] = (
    "gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle",
)
"""Path-integral rules of :func:`integrated_gradients` (the names and definitions of captum)."""

SMOOTHGRAD_KINDS: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")
"""How :func:`smoothgrad` combines the noisy explanations: mean, mean of squares, variance."""


# ---------------------------------------------------------------------------------------------
# gradients


def gradient(model: nn.Module, x: Tensor, target: TargetSpec = None, *, mode: str = "raw") -> Explanation:
    """Sensitivity: the gradient of the target score with respect to ``x`` (N, *S).

    mode: ``"raw"`` (∂f/∂x), ``"abs"`` (|∂f/∂x|, captum's ``Saliency``) or ``"square"`` ((∂f/∂x)²).
    """
    if mode not in GRADIENT_MODES:
        raise ValueError(f"unknown gradient mode {mode!r}; choose one of {tuple(GRADIENT_MODES)}")
    _check_model_and_input(model, x)
    with _borrowed(model):
        grad, logits, index = _explained_gradient(model, x, target)
    return Explanation(GRADIENT_MODES[mode](grad), logits, index)


def gradient_x_input(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """Gradient × input: ``x ⊙ ∂f/∂x``, shaped like ``x`` (N, *S)."""
    _check_model_and_input(model, x)
    with _borrowed(model):
        grad, logits, index = _explained_gradient(model, x, target)
    return Explanation(x.detach() * grad, logits, index)


def guided_backprop(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """Guided backpropagation: the gradient with every ReLU passing back ``g · [x > 0] · [g > 0]``.

    ReLUs are caught as modules, functions and in-place ops alike (:mod:`lrp.relu_backward`).
    """
    return _modified_relu_gradient(model, x, target, "guided")


def deconvnet(model: nn.Module, x: Tensor, target: TargetSpec = None) -> Explanation:
    """Deconvnet: the gradient with every ReLU passing back ``g · [g > 0]`` (its input is ignored).

    ReLUs are caught as modules, functions and in-place ops alike (:mod:`lrp.relu_backward`).
    """
    return _modified_relu_gradient(model, x, target, "deconvnet")


def _modified_relu_gradient(model: nn.Module, x: Tensor, target: TargetSpec, rule: ReLURule) -> Explanation:
    _check_model_and_input(model, x)
    with _borrowed(model):
        grad, logits, index = _explained_gradient(model, x, target, rule)
    return Explanation(grad, logits, index)


# ---------------------------------------------------------------------------------------------
# integrated gradients


def integrated_gradients(model: nn.Module, x: Tensor, target: TargetSpec = None, *,
                         baseline: float | Tensor | None = None, steps: int = 50, method: str = "gausslegendre",
                         batch_size: int | None = None) -> Explanation:
    """Integrated gradients (Sundararajan et al. 2017): ``(x − x̄) ⊙ Σ_k w_k ∇f(x̄ + α_k (x − x̄))``.

    Args:
        baseline: x̄; None (zeros), a float, or a tensor broadcastable to ``x`` (N, *S).
        steps: number of points α_k on the path (at least 1; 2 for ``"riemann_trapezoid"``).
        method: the quadrature, as in captum: ``"gausslegendre"`` (Gauss–Legendre nodes and weights
            on [0, 1]); ``"riemann_left"`` / ``"riemann_right"`` / ``"riemann_middle"`` (α_k = k/n,
            (k+1)/n, (k+½)/n, w_k = 1/n); ``"riemann_trapezoid"`` (α_k = k/(n−1), w_k = 1/n halved at
            both ends, so the weights sum to 1 − 1/n, exactly as captum defines it).
        batch_size: interpolated inputs per forward pass (default: all N·steps at once).

    The explained class of each sample (``target=None``: its arg-max) is decided on ``x`` itself.
    """
    alphas, weights = _quadrature(method, steps)
    _check_batch_size(batch_size)
    _check_model_and_input(model, x)
    x = x.detach()
    reference = _like_input(baseline, x, "baseline")
    alphas_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    weights_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    n = x.shape[0]
    trailing = (1,) * (x.dim() - 1)
    with _borrowed(model):
        logits, index = _predict(model, x, target)
        summed = torch.zeros_like(x)
        for pair in _chunks(steps * n, batch_size, x.device):  # pair = step * N + sample
            step, sample = pair // n, pair % n
            alpha = alphas_t[step].view(-1, *trailing)
            path = reference[sample] + alpha * (x[sample] - reference[sample])
            grad = _explained_gradient(model, path, index[sample])[0]
            summed.index_add_(0, sample, weights_t[step].view(-1, *trailing) * grad)
    return Explanation((x - reference) * summed, logits, index)


def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α (steps,) in [0, 1] and weights w (steps,) of the path-integral rule ``method``."""
    if method not in QUADRATURES:
        raise ValueError(f"unknown integration method {method!r}; choose one of {QUADRATURES}")
    _check_count("steps", steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    weights = np.full(steps, 1 / steps)
    k = np.arange(steps, dtype=np.float64)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2 (both ends of the path)")
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / steps, weights


def _like_input(value: float | Tensor | None, x: Tensor, name: str) -> Tensor:
    """The argument ``name`` (None = 0, a float, or a tensor broadcastable to ``x``) shaped like ``x``
    (a broadcast view where possible)."""
    if value is None:
        return torch.zeros_like(x)
    if isinstance(value, Tensor):
        try:
            return value.detach().to(dtype=x.dtype, device=x.device).broadcast_to(x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the input's "
                             f"shape {tuple(x.shape)}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return torch.full_like(x, float(value))
    raise TypeError(f"{name} must be a finite float or a tensor broadcastable to the input, got {value!r}")


# ---------------------------------------------------------------------------------------------
# SmoothGrad


def smoothgrad(model: nn.Module, x: Tensor, target: TargetSpec = None, *, noise_level: float = 0.1,
               stdev: float | None = None, samples: int = 25, kind: str = "smoothgrad",
               method: Callable[..., Explanation] = gradient, seed: int | torch.Generator | None = None,
               batch_size: int | None = None) -> Explanation:
    """SmoothGrad (Smilkov et al. 2017) and its variants: ``method`` explained on noisy copies of ``x``.

    Args:
        noise_level: σ of the Gaussian noise as a fraction of each sample's ``max − min``.
        stdev: an absolute σ for every sample; overrides ``noise_level``.
        samples: noisy copies per sample.
        kind: ``"smoothgrad"`` (mean of the copies' relevance), ``"smoothgrad_sq"`` (mean of its
            square) or ``"vargrad"`` (its variance, mean of squares − square of mean), as captum's
            ``NoiseTunnel``.
        method: any method with this calling convention, e.g. :func:`gradient` (default),
            :func:`gradient_x_input` or ``functools.partial(lrp.explain, composite="epsilon")``; it
            explains every copy for the class decided on ``x`` itself (``target=None``: its arg-max).
        seed: an int, a ``torch.Generator`` (on ``x``'s device), or None (torch's global generator).
            Sample by sample and copy by copy, each copy draws its noise as
            ``torch.randn(x.shape[1:], generator=...)`` in ``x``'s dtype; so explaining a batch gives
            the same as explaining its samples one after another with one generator.
        batch_size: noisy copies per call of ``method`` (default: all N·samples at once).
    """
    if kind not in SMOOTHGRAD_KINDS:
        raise ValueError(f"unknown SmoothGrad kind {kind!r}; choose one of {SMOOTHGRAD_KINDS}")
    _check_count("samples", samples)
    _check_batch_size(batch_size)
    if not callable(method):
        raise TypeError(f"method must be an attribution method (model, x, target) -> Explanation, got {method!r}")
    _check_model_and_input(model, x)
    x = x.detach()
    sigma = _noise_sigma(x, noise_level, stdev)
    generator = _generator(seed, x.device)
    n = x.shape[0]
    with _borrowed(model):
        logits, index = _predict(model, x, target)
        summed, summed_squares = torch.zeros_like(x), torch.zeros_like(x)
        for pair in _chunks(n * samples, batch_size, x.device):  # pair = sample * samples + copy: the drawing order
            sample = pair // samples
            noise = torch.stack([torch.randn(x.shape[1:], generator=generator, dtype=x.dtype, device=x.device)
                                 for _ in range(len(pair))])
            noisy = x[sample] + sigma[sample].view(-1, *(1,) * (x.dim() - 1)) * noise
            relevance = method(model, noisy, index[sample]).relevance.detach()
            summed.index_add_(0, sample, relevance)
            summed_squares.index_add_(0, sample, relevance * relevance)
    mean, mean_square = summed / samples, summed_squares / samples
    if kind == "smoothgrad":
        return Explanation(mean, logits, index)
    if kind == "smoothgrad_sq":
        return Explanation(mean_square, logits, index)
    return Explanation(mean_square - mean * mean, logits, index)


def _noise_sigma(x: Tensor, noise_level: float, stdev: float | None) -> Tensor:
    """σ per sample (N,): ``stdev`` if given, else ``noise_level · (max − min)`` of each sample."""
    if stdev is not None:
        if isinstance(stdev, bool) or not isinstance(stdev, (int, float)) or not stdev >= 0 or math.isinf(stdev):
            raise ValueError(f"stdev must be a finite float >= 0, got {stdev!r}")
        return torch.full((x.shape[0],), float(stdev), dtype=x.dtype, device=x.device)
    if isinstance(noise_level, bool) or not isinstance(noise_level, (int, float)) or not noise_level >= 0 \
            or math.isinf(noise_level):
        raise ValueError(f"noise_level must be a finite float >= 0, got {noise_level!r}")
    flat = x.reshape(x.shape[0], -1)
    return noise_level * (flat.amax(1) - flat.amin(1))


def _generator(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# occlusion


def occlusion(model: nn.Module, x: Tensor, target: TargetSpec = None, *, patch: int | Sequence[int] = 8,
              stride: int | Sequence[int] | None = None, fill: float | Tensor = 0.0,
              batch_size: int = 4) -> Explanation:
    """Occlusion (Zeiler & Fergus 2014): how much the target score drops when a patch is replaced by ``fill``.

    Args:
        patch: the patch size along the trailing (spatial) axes; an int applies to every axis after
            the channel axis ((N, C, L), (N, C, H, W), (N, C, D, H, W); the feature axis of (N, F)).
            A sequence of k sizes applies to the last k axes. Axes between the batch axis and the
            patched ones (the channels) are always occluded whole.
        stride: the shift between patches, an int or one per patched axis (default: ``patch``, i.e.
            non-overlapping tiles). It may not exceed the patch (every element must be covered);
            along each axis patches start at 0, stride, 2·stride, ... until one reaches the end, and
            the last one is cut at the border (as captum's ``Occlusion``).
        fill: the value of occluded elements, a float or a tensor broadcastable to ``x`` (N, *S),
            e.g. a blurred copy of ``x``.
        batch_size: occluded inputs per forward pass (each holds its activations at once: keep it
            small for whole-brain volumes).

    Relevance of an element = the mean, over the patches covering it, of ``f_t(x) − f_t(x occluded)``
    (the same for every channel of one location), as captum's ``Occlusion`` with
    ``sliding_window_shapes`` over all channels.
    """
    _check_batch_size(batch_size)
    _check_model_and_input(model, x)
    x = x.detach()
    spatial, sizes, strides = _patch_grid(x.shape, patch, stride)
    fill_t = _like_input(fill, x, "fill")
    windows = _windows(x.shape[-spatial:], sizes, strides)
    coverage = torch.zeros(x.shape[-spatial:], dtype=x.dtype, device=x.device)
    for window in windows:
        coverage[window] += 1
    n = x.shape[0]
    with _borrowed(model):
        logits, index = _predict(model, x, target)
        score = logits.gather(1, index[:, None])[:, 0]
        drops = torch.zeros((n, *x.shape[-spatial:]), dtype=x.dtype, device=x.device)
        for pair in _chunks(n * len(windows), batch_size, x.device):  # pair = sample * windows + window
            sample, window = (pair // len(windows)).tolist(), (pair % len(windows)).tolist()
            occluded = x[sample]  # advanced indexing copies
            for i, (s, w) in enumerate(zip(sample, window)):
                region = (..., *windows[w])
                occluded[i][region] = fill_t[s][region]
            with torch.no_grad():
                occluded_score = _forward(model, occluded).gather(1, index[sample][:, None])[:, 0]
            for s, w, drop in zip(sample, window, (score[sample] - occluded_score).tolist()):
                drops[s][windows[w]] += drop
    relevance = (drops / coverage).view(n, *(1,) * (x.dim() - 1 - spatial), *x.shape[-spatial:])
    return Explanation(relevance.expand(x.shape).contiguous(), logits, index)


def _patch_grid(shape: torch.Size, patch: int | Sequence[int],
                stride: int | Sequence[int] | None) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Number of patched (trailing) axes, patch size and stride along each of them."""
    if isinstance(patch, int) and not isinstance(patch, bool):
        spatial = max(len(shape) - 2, 1)
        sizes = (patch,) * spatial
    else:
        sizes = tuple(patch)
        spatial = len(sizes)
        if not 1 <= spatial <= len(shape) - 1:
            raise ValueError(f"patch {sizes} needs 1 to {len(shape) - 1} sizes for an input of shape {tuple(shape)}")
    if stride is None:
        steps = sizes
    elif isinstance(stride, int) and not isinstance(stride, bool):
        steps = (stride,) * spatial
    else:
        steps = tuple(stride)
        if len(steps) != spatial:
            raise ValueError(f"stride {steps} must give one step per patched axis ({spatial}), like patch {sizes}")
    extent = tuple(shape[-spatial:])
    for axis, (size, step, length) in enumerate(zip(sizes, steps, extent)):
        where = f"along axis {len(shape) - spatial + axis} of the input of shape {tuple(shape)}"
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"patch sizes must be ints >= 1, got {sizes}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"strides must be ints >= 1, got {steps}")
        if size > length:
            raise ValueError(f"patch {size} is larger than the input ({length}) {where}")
        if step > size and size < length:
            raise ValueError(f"stride {step} is larger than the patch {size} {where}: some elements would never "
                             f"be occluded")
    return spatial, sizes, steps


def _windows(extent: Sequence[int], sizes: Sequence[int], strides: Sequence[int]) -> list[tuple[slice, ...]]:
    """Every patch as a tuple of slices over the patched axes; the last patch per axis is cut at the border."""
    per_axis = [
        [slice(k * step, min(k * step + size, length)) for k in range(math.ceil((length - size) / step) + 1)]
        for length, size, step in zip(extent, sizes, strides)
    ]
    return list(itertools.product(*per_axis))


# ---------------------------------------------------------------------------------------------
# shared pieces


@contextlib.contextmanager
def _borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`lrp.restore.borrowed`, outside inference mode (tensors made inside can enter autograd)."""
    with torch.inference_mode(False), borrowed(model):
        yield model


def _check_model_and_input(model: nn.Module, x: Tensor) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be an nn.Module, got {type(model).__name__}")
    _check_input(x)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None:
        _check_count("batch_size", batch_size)


def _chunks(total: int, batch_size: int | None, device: torch.device) -> Iterator[Tensor]:
    """Consecutive index ranges (LongTensor on ``device``) covering ``range(total)``, ``batch_size`` long
    (None: one range)."""
    step = total if batch_size is None else batch_size
    for start in range(0, total, step):
        yield torch.arange(start, min(start + step, total), device=device)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    """The model's output for ``x``, which must be one tensor (logits (N, C))."""
    output = model(x)
    if not isinstance(output, Tensor):
        raise TypeError(f"the model returned {type(output).__name__}; these methods explain a model that returns "
                        f"one tensor of logits (N, classes)")
    return output


def _target_index(logits: Tensor, target: TargetSpec) -> Tensor:
    """The explained class of each sample, LongTensor (N,) (see :func:`lrp.targets.output_relevance`)."""
    if isinstance(target, Tensor) and (target.is_floating_point() or target.dim() > 1):
        raise TargetError(f"these methods explain one class per sample (None, an int or a sequence of ints), got a "
                          f"{target.dtype} tensor of shape {tuple(target.shape)}")
    return output_relevance(logits, target)[1].clone()  # a user's inference-mode tensor could not enter autograd


def _predict(model: nn.Module, x: Tensor, target: TargetSpec) -> tuple[Tensor, Tensor]:
    """Logits (N, C) for ``x`` without gradient, and the explained classes (N,)."""
    with torch.no_grad():
        logits = _forward(model, x.clone())
    return logits, _target_index(logits, target)


def _explained_gradient(model: nn.Module, x: Tensor, target: TargetSpec,
                        relu_rule: ReLURule | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of the target scores w.r.t. ``x`` (N, *S), the logits (N, C) and the classes (N,).

    With ``relu_rule``, ReLUs pass back that rule's modified gradient (:mod:`lrp.relu_backward`)."""
    relu_mode = ModifiedReLUBackward(relu_rule) if relu_rule is not None else contextlib.nullcontext()
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        with relu_mode:
            logits = _forward(model, leaf.clone())  # not the leaf itself: the model may modify its input in place
        index = _target_index(logits.detach(), target)
        if not logits.requires_grad:
            raise UnsupportedOperationError("the model output does not depend on its input (was it detached, or "
                                            "computed under torch.no_grad inside the model?)")
        (grad,) = torch.autograd.grad(logits.gather(1, index[:, None]).sum(), leaf)
    return grad, logits.detach(), index
