"""The paper's API: :class:`InnvestigateModel`, as in moboehle/Pytorch-LRP (Böhle et al. 2019).

A drop-in replacement for ``innvestigator.InnvestigateModel`` that runs on lrp's engine. It gives
the original's numbers wherever the original is correct, and leaves the model untouched (the
original left hooks on it for good). Where and why the numbers differ: ``docs/compat.md``.

Both of the original's rules ignore the bias (``z`` never includes it), so the relevance the bias
would absorb is passed on to the inputs:

- ``"e-rule"``: ``R_in = xᵖ ⊙ (Wᵖ)ᵀ (R / (z + ε·sign z))`` with ``z = Wᵖ xᵖ`` and sign(0) = 0;
  outputs with ``z = 0`` pass no relevance.
- ``"b-rule"``: LRP-αβ with ``α = 1 + β``, positive and negative parts of inputs and weights
  taken apart; a neuron whose contributions all have one sign passes its relevance on in full.
"""
from __future__ import annotations

import itertools
import warnings

import torch
from torch import Tensor, nn

from .composites import Composite, Normalization, Weighted
from .engine import LRP
from .errors import NonFiniteError
from .layers import LayerCall, safe_divide
from .restore import borrowed
from .rules import Rule

__all__ = ["InnvestigateModel"]

METHODS = ("e-rule", "b-rule")


class _ExponentEpsilon(Rule):
    """The original e-rule: ``R_in = xᵖ ⊙ (Wᵖ)ᵀ (R / (z + ε·sign z))``, ``z = Wᵖ xᵖ`` without bias.

    ``sign(0) = 0``, and outputs with ``z = 0`` pass no relevance. Even ``p`` makes every
    contribution positive; non-integer ``p`` gives NaN for negative inputs or weights.
    """

    def __init__(self, exponent: float, epsilon: float):
        self.exponent = exponent
        self.epsilon = epsilon

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        x, weight = layer.x, layer.weight
        if not float(self.exponent).is_integer() and (bool((x < 0).any()) or bool((weight < 0).any())):
            raise NonFiniteError(f"lrp_exponent={self.exponent} is not an integer, and a layer's input or weight "
                                 f"has negative entries, whose powers are NaN (the original returned NaN)")
        if self.exponent != 1:
            x, weight = x.pow(self.exponent), weight.pow(self.exponent)
        z = layer.forward(x, weight)
        return x * layer.transpose(safe_divide(relevance, z + torch.sign(z) * self.epsilon), weight)


class _RescaledAlphaBeta(Rule):
    """The original b-rule: LRP-αβ with ``α = 1 + β``, bias ignored, one-sided neurons rescaled.

    With ``z⁺ = x⁺W⁺ + x⁻W⁻ ≥ 0`` and ``z⁻ = x⁺W⁻ + x⁻W⁺ ≤ 0`` (per output):
    ``R_in = α·(x⁺W⁺ + x⁻W⁻)ᵀ R / stab(z⁺) − β·(x⁺W⁻ + x⁻W⁺)ᵀ R / stab(z⁻)``. A zero ``z±`` is
    replaced by 1; where either is zero, ``z⁺`` is multiplied by α and ``z⁻`` by −β (so the one
    non-empty side passes R in full), except that a factor of 0 (β = 0 or β = −1) is taken as 1.
    The stabiliser ``ε·sign`` is added after this rescaling.
    """

    def __init__(self, beta: float, epsilon: float):
        self.beta = beta
        self.epsilon = epsilon

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        beta, x, weight = self.beta, layer.x, layer.weight
        x_pos, w_pos, w_neg = x.clamp(min=0), weight.clamp(min=0), weight.clamp(max=0)
        x_neg = x.clamp(max=0) if bool((x < 0).any()) else None  # x ≥ 0: every x⁻ term is exactly 0

        def part(for_x_pos: Tensor, for_x_neg: Tensor) -> Tensor:
            z = layer.forward(x_pos, for_x_pos)
            return z if x_neg is None else z + layer.forward(x_neg, for_x_neg)

        # β = 0 (β = −1): the negative (positive) share is 0·R and every rescaling factor is 1,
        # so that side is not computed at all
        z_pos = part(w_pos, w_neg) if beta != -1 else None
        z_neg = part(w_neg, w_pos) if beta != 0 else None
        if z_pos is not None and z_neg is not None:
            one_sided = (z_pos == 0) | (z_neg == 0)
            z_pos = torch.where(one_sided, _nonzero(z_pos) * (1 + beta), z_pos)
            z_neg = torch.where(one_sided, _nonzero(z_neg) * -beta, z_neg)

        result = 0.0
        if z_pos is not None:
            s_pos = relevance * ((1 + beta) / self._stabilize(z_pos))
            result = x_pos * layer.transpose(s_pos, w_pos)
            if x_neg is not None:
                result = result + x_neg * layer.transpose(s_pos, w_neg)
        if z_neg is not None:
            s_neg = relevance * (-beta / self._stabilize(z_neg))
            result = result + x_pos * layer.transpose(s_neg, w_neg)
            if x_neg is not None:
                result = result + x_neg * layer.transpose(s_neg, w_pos)
        return result

    def _stabilize(self, z: Tensor) -> Tensor:
        z = _nonzero(z)
        return z + self.epsilon * torch.sign(z)


def _nonzero(z: Tensor) -> Tensor:
    """``z`` with exact zeros replaced by 1 (their numerators are all zero)."""
    return torch.where(z == 0, 1.0, z)


class InnvestigateModel(nn.Module):
    """LRP with the interface of the paper's code (moboehle/Pytorch-LRP).

    Args:
        the_model: any ``nn.Module``; it is registered as ``self.model`` (so ``inn.eval()`` and
            ``inn.cuda()`` reach it) but never modified: no hooks, no changed flags or weights.
        lrp_exponent: ``p`` of the e-rule (inputs and weights are raised to it); unused by the b-rule.
        beta: ``β`` of the b-rule (``α = 1 + β``); unused by the e-rule.
        epsilon: the stabiliser ``ε`` of both rules.
        method: ``"e-rule"`` or ``"b-rule"``.

    ``inn(x)`` / ``inn.evaluate(x)`` run the model and remember ``x``; ``inn.innvestigate(x)``
    explains ``x`` (or the remembered input) and returns ``(prediction (N, -1), relevance)``.
    Explaining always runs the model in eval mode (the original used whatever mode it was in).
    """

    def __init__(self, the_model: nn.Module, lrp_exponent: float = 1, beta: float = .5, epsilon: float = 1e-6,
                 method: str = "e-rule"):
        super().__init__()
        if method not in METHODS:
            raise NotImplementedError(f"Only methods available are: {list(METHODS)}; got {method!r}")
        self.model = the_model
        self.method = method
        self.lrp_exponent = lrp_exponent
        self.beta = beta
        self.epsilon = epsilon
        rule = _ExponentEpsilon(lrp_exponent, epsilon) if method == "e-rule" else _RescaledAlphaBeta(beta, epsilon)
        # an unfoldable BatchNorm gets the same rule: without its shift that is (up to ε) the
        # identity the original used for every BatchNorm
        self._explainer = LRP(the_model, Composite(by_type={Weighted: rule, Normalization: rule}))
        self._input: Tensor | None = None
        self.prediction: Tensor | None = None
        self.r_values_per_layer: list[Tensor | None] | None = None
        if method == "b-rule" and float(beta) in (-1.0, 0.0):
            kept, lost = ("negative", "positive") if float(beta) == -1.0 else ("positive", "negative")
            warnings.warn(f"with beta={beta} only {kept} contributions are used: a neuron with only {lost} "
                          f"contributions passes no relevance, so relevance is not conserved there", stacklevel=2)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a model without any)."""
        tensor = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def evaluate(self, in_tensor: Tensor) -> Tensor:
        """Run the model on ``in_tensor`` (in its current mode) and remember the input for
        :meth:`innvestigate` without arguments."""
        prediction = self.model(in_tensor)
        self._input = in_tensor.detach()
        self.prediction = prediction.detach() if isinstance(prediction, Tensor) else prediction
        return prediction

    def forward(self, in_tensor: Tensor) -> Tensor:
        """``inn(x)``: the same as :meth:`evaluate`."""
        return self.evaluate(in_tensor)

    def innvestigate(self, in_tensor: Tensor | None = None, rel_for_class=None) -> tuple[Tensor, Tensor]:
        """Explain ``in_tensor`` (N, *S), or the last evaluated input when None.

        rel_for_class: None explains the arg-max of each sample (every tied class in full), else
            an index into the flattened output (an int, or anything that indexes a column:
            a negative int, a list, a slice), the same for every sample.

        The output relevance is the model output at the explained classes (a probability after a
        final Softmax or Sigmoid; after a final LogSoftmax the exponentiated log-probability) and
        zero elsewhere. Returns the prediction (N, -1) on the model's device and the relevance
        like ``in_tensor``, on the CPU as in the original.
        """
        self.r_values_per_layer = None
        if in_tensor is None:
            if self._input is None:
                raise RuntimeError("Model needs to be evaluated at least once before an innvestigation can be "
                                   "performed. Please evaluate model first or call innvestigate with a new input "
                                   "to evaluate.")
            in_tensor = self._input
        self._input = in_tensor.detach()
        output, log_probabilities = self._predict(in_tensor)
        flat = output.reshape(output.shape[0], -1)
        if rel_for_class is None:
            selected = flat == flat.max(dim=1, keepdim=True).values
        else:
            selected = torch.zeros_like(flat, dtype=torch.bool)
            selected[:, rel_for_class] = True
        initial = torch.where(selected, flat, torch.zeros_like(flat)).view(output.shape)
        start = torch.where(selected, flat.exp(), torch.zeros_like(flat)).view(output.shape) \
            if log_probabilities else initial
        explanation = self._explainer(in_tensor, start, keep_layers=True)
        layers = [None if r is None else r.cpu() for r in reversed(explanation.layers.values())]
        self.r_values_per_layer = [initial.cpu(), *layers]
        self.prediction = flat
        return flat, explanation.relevance.cpu()

    def get_r_values_per_layer(self) -> list[Tensor | None] | None:
        """Relevance from output to input: ``[0]`` the output relevance (like the output), then the
        relevance entering each leaf module, last executed first (None before any innvestigate)."""
        if self.r_values_per_layer is None:
            warnings.warn("No relevances have been calculated yet, returning None in get_r_values_per_layer.",
                          stacklevel=2)
        return self.r_values_per_layer

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, lrp_exponent={self.lrp_exponent}, beta={self.beta}, "
                f"epsilon={self.epsilon}")

    def _predict(self, in_tensor: Tensor) -> tuple[Tensor, bool]:
        """The model output in eval mode, and whether its last op is a log-softmax."""
        with borrowed(self.model), torch.enable_grad():
            output = self.model(in_tensor.detach().requires_grad_(True))
        if not isinstance(output, Tensor):
            raise TypeError(f"the model returned {type(output).__name__}; InnvestigateModel explains a model "
                            f"that returns one tensor")
        log_probabilities = output.grad_fn is not None and output.grad_fn.name().startswith("LogSoftmaxBackward")
        return output.detach(), log_probabilities
