"""LRP rules: how one layer redistributes the relevance of its outputs onto its inputs.

Every rule here is a closed-form backward for a linear layer ``z = W x + b`` (see
:mod:`lrp.layers`): ``R_in = x ⊙ Wᵀ (R / stab(z'))`` for modified weights and pre-activations.
Conventions, shared by every rule and equal to zennit 0.5.1 (``zennit.rules``) for the same
parameters:

- **Stabiliser.** ``stab(z) = z + ε·sign(z)`` with sign(0) = +1 (``layers.stabilize``). Only
  :class:`Zero` divides without it, and gives 0 relevance where the denominator is exactly 0.
- **Bias.** With ``bias=True`` (default) the bias is part of the denominator, so it absorbs its
  share of relevance; rules that split weights into positive and negative parts split the bias the
  same way (b⁺ goes with the positive, b⁻ with the negative part). ``bias=False`` drops the bias
  everywhere (zennit's ``zero_params='bias'``).
- **Negative inputs.** Rules built on positive/negative parts treat ``x⁺`` and ``x⁻`` separately:
  a positive contribution is ``x⁺w⁺`` or ``x⁻w⁻``, a negative one ``x⁺w⁻`` or ``x⁻w⁺``.
  When a layer's input is non-negative (after ReLU, or an image), the ``x⁻`` terms are exactly
  zero and are skipped, which is what makes these rules cost one extra convolution.
- **Precision.** For float16 / bfloat16 layers a rule computes in float32 (``layers.widened``); the
  relevance it hands on keeps the layer's dtype.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .layers import (
    LayerCall,
    all_zero,
    divide,
    divide_,
    divide_rectified,
    divide_scaled,
    safe_divide,
    where_negative,
    where_positive,
)

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "Zero",
    "ignores_output",
    "proportional_to_input",
    "takes_rectified_output",
]

WEIGHTED = "weighted"            # dense, convolution, unfolded BatchNorm
PARAMETER_FREE = "parameter_free"  # average pooling, mean, sum over dimensions
SUM = "sum"                      # element-wise sum of several tensors on the path (residuals)
ELEMENTWISE = "elementwise"      # activations


def _positive(t: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.clamp(t, min=0, out=out)


def _negative(t: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.clamp(t, max=0, out=out)


class Rule:
    """Base class: a rule computes input relevance from output relevance for one layer call."""

    kinds: frozenset[str] = frozenset({WEIGHTED})

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        """Relevance of ``layer.x`` (shape of x) from the relevance of ``layer.z`` (shape of z).

        Each output neuron's relevance must be redistributed independently of the others, as every LRP
        rule does: a dense layer with a large weight is explained block by block of output rows, and the
        blocks' results are summed (:meth:`LayerCall.row_blocks`)."""
        raise NotImplementedError(f"{self!r} does not apply to layers")

    def reads_weight_once(self) -> bool:
        """Whether the rule reads a layer's weight once and as it is (no modified copy such as ``W⁺``, no second
        pass). A large dense layer is then explained whole: row blocks (:meth:`LayerCall.row_blocks`) would
        only add calls, with nothing to keep in cache between passes."""
        return False

    def divide(self, relevance: Tensor, z: Tensor) -> Tensor:
        """``R / stab(z)`` for rules that split a sum in proportion to its terms."""
        raise NotImplementedError(f"{self!r} does not apply to sums")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Epsilon(Rule):
    """LRP-ε: ``R_in = x ⊙ Wᵀ (R / stab(z))`` with the layer's own output ``z``.

    Costs one transposed layer, as the gradient does. ``epsilon=0`` is LRP-0 up to the sign
    shift at exactly zero; see :class:`Zero` for the unshifted rule.
    """

    kinds = frozenset({WEIGHTED, PARAMETER_FREE, SUM})

    def __init__(self, epsilon: float = 1e-6, bias: bool = True):
        self.epsilon = epsilon
        self.bias = bias

    def divide(self, relevance: Tensor, z: Tensor) -> Tensor:
        return divide(relevance, z, self.epsilon)

    def reads_weight_once(self) -> bool:
        """Yes, in the transposed layer, unless ``bias=False`` runs the layer again first. (VGG-16's classifier
        at batch 1: 83 ms whole against 92 ms in blocks of 16 MiB.)"""
        return self.bias

    def divide_output(self, relevance: Tensor, z: Tensor, rectified: bool) -> Tensor:
        """``R / stab(z)`` for the layer's (or sum's) own output z; from a rectified z (``relu(z)``, see
        ``Trace.rectify``) as ``R / (z + ε)``, the same numbers."""
        return divide_rectified(relevance, z, self.epsilon) if rectified else self.divide(relevance, z)

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        if not (self.bias or layer.bias is None):
            s = self.divide(relevance, layer.forward(layer.x, layer.weight))
        else:
            s = self.divide_output(relevance, layer.z, layer.z_rectified)
        layer.release("z")  # before the transpose's output is made (the paper's model: a live peak of 791, not 1043 MiB)
        return layer.times_input(layer.transpose_effective(s))


class Zero(Epsilon):
    """LRP-0: ``R_in = x ⊙ Wᵀ (R / z)``, no stabiliser; outputs with ``z = 0`` pass no relevance."""

    def __init__(self, bias: bool = True):
        super().__init__(epsilon=0.0, bias=bias)

    def divide(self, relevance: Tensor, z: Tensor) -> Tensor:
        return safe_divide(relevance, z)

    def __repr__(self) -> str:
        return f"Zero(bias={self.bias!r})"


class Norm(Epsilon):
    """Proportional split with a small stabiliser: the rule for sums and average pooling.

    The same formula as :class:`Epsilon`; the name says that ε only guards the division.
    """

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(epsilon=stabilizer, bias=True)

    def __repr__(self) -> str:
        return f"Norm(stabilizer={self.epsilon!r})"


class ZPlus(Rule):
    """z⁺: only positive contributions, ``R_in = x⁺ ⊙ W⁺ᵀ s + x⁻ ⊙ W⁻ᵀ s`` with
    ``s = R / stab(W⁺x⁺ + W⁻x⁻ + b⁺)``. Equal to ``AlphaBeta(1, 0)``."""

    def __init__(self, stabilizer: float = 1e-6, bias: bool = True):
        self.stabilizer = stabilizer
        self.bias = bias

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        return AlphaBeta(1.0, 0.0, self.stabilizer, self.bias).relevance(layer, relevance)


class AlphaBeta(Rule):
    """LRP-αβ: ``R_in = α·(positive share) − β·(negative share)``, α − β = 1, α, β ≥ 0.

    The positive share uses ``s⁺ = R / stab(x⁺W⁺ + x⁻W⁻ + b⁺)``, the negative one
    ``s⁻ = R / stab(x⁺W⁻ + x⁻W⁺ + b⁻)``. zennit applies α and β also to neurons whose inputs are
    all of one sign, so such neurons pass on α·R (not R). ``conserve_one_sided=True`` gives those
    neurons weight 1 instead, as the paper's code did, which keeps relevance conserved.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        stabilizer: float = 1e-6,
        bias: bool = True,
        conserve_one_sided: bool = False,
    ):
        if alpha < 0 or beta < 0:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
        if abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1, got alpha={alpha}, beta={beta}")
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = stabilizer
        self.bias = bias
        self.conserve_one_sided = conserve_one_sided

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        x = layer.x
        signed = layer.input_has_negative()
        if not signed and not self.conserve_one_sided:
            return self._non_negative_input(layer, relevance)
        x_pos, x_neg = (_positive(x), _negative(x)) if signed else (x, None)
        need_negative = self.beta != 0 or self.conserve_one_sided
        w_pos = layer.modified(_positive)
        w_neg = layer.modified(_negative) if signed or need_negative else None
        layer.release("weight")

        positive = layer.forward_pair(x_pos, w_pos, x_neg, w_neg) if signed else layer.forward(x, w_pos)
        if self.bias:
            positive.add_(layer.bias_term(_positive))
        negative = self._negative_part(layer, positive, x_pos, x_neg, w_pos, w_neg) if need_negative else None

        alpha: Tensor | float = self.alpha
        beta: Tensor | float = self.beta
        if self.conserve_one_sided:  # one-sided neurons pass their relevance with weight 1
            alpha = torch.where(negative == 0, 1.0, torch.tensor(self.alpha, dtype=x.dtype, device=x.device))
            beta = torch.where(positive == 0, -1.0, torch.tensor(self.beta, dtype=x.dtype, device=x.device))
        if not signed:  # (conserve_one_sided, so need_negative) both shares through one transposed layer
            pairs = [(_scaled(divide_(relevance, positive, self.stabilizer, +1), alpha), w_pos),
                     (_scaled(divide_(relevance, negative, self.stabilizer, -1), -beta), w_neg)]
            del positive, negative, w_pos, w_neg  # pairs holds the only references: freed one by one
            return layer.transpose_sum(pairs).mul_(x)
        s_pos = _scaled(divide_(relevance, positive, self.stabilizer, +1), alpha)
        result = _spread(layer, s_pos, w_pos, w_neg, x_pos, x_neg)
        del s_pos, positive
        if need_negative:
            s_neg = _scaled(divide_(relevance, negative, self.stabilizer, -1), beta)
            result.sub_(_spread(layer, s_neg, w_neg, w_pos, x_pos, x_neg))
        return result

    def _negative_part(self, layer: LayerCall, positive: Tensor, x_pos: Tensor, x_neg: Tensor | None, w_pos: Tensor,
                       w_neg: Tensor) -> Tensor:
        """The negative part ``N = W⁻x⁺ + W⁺x⁻ (+ b⁻)``, given the positive part P (with ``b⁺`` where the rule keeps
        the bias); ``x_neg`` None for a non-negative input, which comes here only with ``conserve_one_sided``.
        ``P + N = Wx + b = z``, so it is ``z − P`` (``− b`` without the bias), one pass instead of a layer call,
        clamped to at most 0 (which only rounding could cross): the first layer of a network on normalised images,
        8×3×224×224 into ResNet-50's 7×7 stem: 5–14 against 57 ms. Made by a layer call where z has lost its digits
        (a 16-bit layer's) or one-sided neurons are found by exact zeros (``conserve_one_sided``: both parts
        computed, neither derived). A rectified z (``relu(z)``) differs from z only at outputs no relevance
        reaches."""
        if layer.z is None or layer.z_rounded or self.conserve_one_sided:
            negative = layer.forward(x_pos, w_neg) if x_neg is None else layer.forward_pair(x_pos, w_neg, x_neg, w_pos)
            return negative.add_(layer.bias_term(_negative)) if self.bias else negative
        negative = torch.sub(layer.z, positive)
        if not self.bias:
            negative.sub_(layer.bias_term())
        return negative.clamp_max_(0)

    def _non_negative_input(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        """x ≥ 0 (after a ReLU, or an image): ``P = W⁺x + b⁺ ≥ 0`` and ``N = W⁻x + b⁻ ≤ 0``, so the
        stabilised denominators are ``P + ε``, one layer call with bias ``b⁺ + ε``, and ``N − ε``,
        whose negative ``(P + ε) − (Wx + b)`` needs no second layer call (W⁻x = Wx − W⁺x). Both are
        clamped to at least ε, which only rounding (or a Winograd / FFT convolution) could undercut.
        With a folded BatchNorm of positive scale s, all of it is taken before the scale (divided by s,
        see :meth:`LayerCall.inverse_scale`)."""
        x = layer.x
        inverse = layer.inverse_scale() if self.bias else None
        w_pos = layer.modified(_positive, scaled=inverse is None)
        if self.beta == 0:  # z⁺ reads neither z nor the weight again: both freed before its layer call
            layer.release("weight", "z")
        positive = _forward_shifted(layer, x, w_pos, _positive if self.bias else None, self.stabilizer, inverse)
        floor = _scaled_like(layer, self.stabilizer, inverse)
        if self.beta == 0:
            s_pos = divide_scaled(relevance, positive.clamp_min_(floor), self.alpha)
            del positive
            return layer.transpose(s_pos, w_pos).mul_(x)
        w_neg = layer.modified(_negative, scaled=inverse is None)
        layer.release("weight")
        if layer.z_rounded:  # (P + ε) − z would keep only z's 16-bit digits of N: one layer call more
            negated = _forward_shifted(layer, x, w_neg, _negative if self.bias else None, -self.stabilizer,
                                       inverse).neg_()
        else:
            negated = _plus_scaled(positive, layer.z, _scaled_like(layer, 1.0, inverse), alpha=-1.0)  # ε − N (over s)
            if not self.bias:
                negated.add_(layer.bias_term())
        layer.release("z")
        s_neg = divide_scaled(relevance, negated.clamp_min_(floor), self.beta)
        s_pos = divide_scaled(relevance, positive.clamp_min_(floor), self.alpha)
        pairs = [(s_pos, w_pos), (s_neg, w_neg)]  # s_neg is −β R / (N − ε): the negative share, signed
        del positive, negated, s_pos, s_neg, w_pos, w_neg  # pairs holds the only references: freed one by one
        return layer.transpose_sum(pairs).mul_(x)


def _forward_shifted(layer: LayerCall, x: Tensor, weight: Tensor,
                     bias_part: Callable[[Tensor], Tensor] | None, shift: float, inverse: Tensor | None = None) -> Tensor:
    """``forward(x, weight) + bias_part(b) + shift``, the bias and shift added by the layer itself where it
    has a bias (``bias_part`` None: no bias). With ``inverse`` (1/s, see :meth:`LayerCall.inverse_scale`)
    and ``weight`` taken before the scale, everything comes divided by s."""
    if bias_part is None or layer.bias is None:
        return layer.forward(x, weight).add_(shift)
    bias = bias_part(layer.bias) + shift
    return layer.forward(x, weight, bias if inverse is None else bias.mul_(inverse))


def _scaled_like(layer: LayerCall, value: float, inverse: Tensor | None) -> Tensor | float:
    """``value``, or ``value / s`` per output channel (broadcastable to z) with ``inverse`` = 1/s."""
    return value if inverse is None else layer.linear_map.bias_view(inverse * value)


def _plus_scaled(a: Tensor, z: Tensor, factor: Tensor | float, alpha: float, out: Tensor | None = None) -> Tensor:
    """``a + alpha · factor · z`` in one pass (``factor`` per channel, or a number), as a new tensor or
    into ``out``."""
    if isinstance(factor, Tensor):
        return torch.addcmul(a, z, factor, value=alpha, out=out)
    return torch.add(a, z, alpha=alpha * factor, out=out)


def _spread(layer: LayerCall, s: Tensor, w_for_pos: Tensor, w_for_neg: Tensor | None, x_pos: Tensor,
            x_neg: Tensor | None) -> Tensor:
    """``x⁺ ⊙ (w_for_pos)ᵀ s + x⁻ ⊙ (w_for_neg)ᵀ s``; the ``x⁻`` term only when ``x⁻`` is not None."""
    if x_neg is None:
        return layer.transpose(s, w_for_pos).mul_(x_pos)
    for_pos, for_neg = layer.transpose_pair(s, w_for_pos, w_for_neg)
    return for_pos.mul(x_pos).add_(for_neg.mul(x_neg))


def _scaled(t: Tensor, factor: Tensor | float) -> Tensor:
    """``t · factor`` in place, skipping the exact no-op factor 1 (α = 1 in z⁺)."""
    return t if isinstance(factor, float) and factor == 1.0 else t.mul_(factor)


class Gamma(Rule):
    """LRP-γ (generalised to signed inputs and outputs, as zennit 0.5.1).

    Positive outputs (z > 0) are explained with weights ``W + γW⁺`` on ``x⁺`` and ``W + γW⁻`` on
    ``x⁻`` (denominator with bias ``b + γb⁺``); negative outputs with the roles swapped (bias
    ``b + γb⁻``); outputs with z = 0 pass nothing.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, bias: bool = True):
        if gamma < 0:
            raise ValueError(f"Gamma needs gamma >= 0, got {gamma}")
        self.gamma = gamma
        self.stabilizer = stabilizer
        self.bias = bias

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        if self.gamma > 0 and (self.bias or layer.bias is None) and not layer.input_has_negative():
            return self._non_negative_input(layer, relevance)
        gamma, x = self.gamma, layer.x
        x_pos, x_neg = _positive(x), _negative(x)
        r_up, r_down = _split_by_sign(relevance, layer)
        w_up = layer.modified(lambda w, out: torch.add(w, _positive(w), alpha=gamma, out=out))  # x⁺: z > 0, x⁻: z < 0
        w_down = layer.modified(lambda w, out: torch.add(w, _negative(w), alpha=gamma, out=out))  # x⁻: z > 0, x⁺: z < 0
        bias_up = layer.bias_term(lambda b: torch.add(b, _positive(b), alpha=gamma)) if self.bias else 0.0
        bias_down = layer.bias_term(lambda b: torch.add(b, _negative(b), alpha=gamma)) if self.bias else 0.0
        layer.release("z", "weight")
        s_up = divide_(r_up, layer.forward_pair(x_pos, w_up, x_neg, w_down).add_(bias_up), self.stabilizer)
        del r_up
        result = _spread(layer, s_up, w_up, w_down, x_pos, x_neg)
        if r_down is not None:
            s_down = divide_(r_down, layer.forward_pair(x_pos, w_down, x_neg, w_up).add_(bias_down), self.stabilizer)
            del r_down
            result.add_(_spread(layer, s_down, w_down, w_up, x_pos, x_neg))
        return result

    def _non_negative_input(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        """x ≥ 0, with the bias: ``P = W⁺x + b⁺ ≥ 0`` and ``N = z − P ≤ 0``, so outputs z > 0 have
        ``d_up = z + γP > 0`` and outputs z < 0 ``d_down = z + γN = (1 + γ)·z − γP < 0``. Outputs z > 0 are explained
        through ``W + γW⁺ = (1 + γ)·L`` with ``L = leaky_relu(W, 1/(1 + γ))``, whose layer call with bias
        ``leaky_relu(b, 1/(1 + γ)) + ε/(1 + γ)`` gives ``q = stab(d_up)/(1 + γ)`` (as :meth:`_rectified_output`);
        where z < 0 the same call plus ``(2 + γ)/(1 + γ)·(−z)`` is ``−stab(d_down)/(1 + γ)``. So one denominator q
        for both signs, at least ε/(1 + γ) (clamped to it only against a convolution's rounding), and one division,
        whose quotient is then split by the sign of z. Outputs z < 0 are explained through ``W + γW⁻ = M`` with
        ``M = leaky_relu(W, 1 + γ)``, their quotient taken −1/(1 + γ) times (on the quotient where it is smaller
        than the weight, else on M). Two modified weights, each made in one pass from W alone, where ``W⁺``,
        ``W⁺ + W/γ`` and ``W⁺ − (1 + 1/γ)·W`` took three, the last two reading two weights each (ResNet-50's 20
        layers that feed a residual sum, 7.8 M weights, alone: 5.7 against 8.3 ms). With a folded BatchNorm of
        positive scale s, all of it is taken before the scale (see :meth:`LayerCall.inverse_scale`). A rectified
        z needs none of the negative side (:meth:`_rectified_output`)."""
        if layer.z_rectified:
            return self._rectified_output(layer, relevance)
        slope = 1 / (1 + self.gamma)
        lowering, shift = _leaky(slope), self.stabilizer * slope
        inverse = layer.inverse_scale()
        lowered = layer.modified(lowering, scaled=inverse is None)
        q = _forward_shifted(layer, layer.x, lowered, lowering, shift, inverse)
        negative_z = torch.clamp(layer.z, max=0)  # −relu(−z)
        _plus_scaled(q, negative_z, _scaled_like(layer, 1.0, inverse), alpha=-(2 + self.gamma) * slope, out=q)
        s = torch.div(relevance, q.clamp_min_(_scaled_like(layer, shift, inverse)), out=q)
        s_up, s_down = _split_by_sign(s, layer, up=s, down=negative_z)
        del q, negative_z, s
        raised = None if s_down is None else layer.modified(_leaky(1 + self.gamma), scaled=inverse is None)
        layer.release("z", "weight")
        if s_down is None:  # no relevance reached outputs z < 0 (as after a ReLU whose decision was negative)
            return layer.transpose(s_up, lowered).mul_(layer.x)
        (s_down if s_down.numel() < raised.numel() else raised).mul_(-slope)
        pairs = [(s_up, lowered), (s_down, raised)]
        del s_up, s_down, lowered, raised  # pairs holds the only references: freed one by one
        return layer.transpose_sum(pairs).mul_(layer.x)

    def _rectified_output(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        """x ≥ 0 and z rectified (``relu(z)``, see ``Trace.rectify``): relevance reaches only outputs z > 0,
        whose denominator is ``d = z + γP = (W + γW⁺)x + b + γb⁺ > 0``. ``W + γW⁺ = (1 + γ)·L`` with
        ``L = leaky_relu(W, 1/(1 + γ))``, one pass over the weight, so one layer call with L and bias
        ``leaky_relu(b, 1/(1 + γ)) + ε/(1 + γ)`` gives ``stab(d)/(1 + γ)``, and the shares go back through L
        itself: z is never read. Clamped to at least ε/(1 + γ) where no relevance is divided by it (outputs
        z ≤ 0). With a folded BatchNorm of positive scale s, all of it before the scale (see
        :meth:`LayerCall.inverse_scale`)."""
        slope = 1 / (1 + self.gamma)
        lowering, shift = _leaky(slope), self.stabilizer * slope
        inverse = layer.inverse_scale()
        lowered = layer.modified(lowering, scaled=inverse is None)
        layer.release("z", "weight")
        denominator = _forward_shifted(layer, layer.x, lowered, lowering, shift, inverse)
        s = torch.div(relevance, denominator.clamp_min_(_scaled_like(layer, shift, inverse)), out=denominator)
        del denominator
        return layer.transpose(s, lowered).mul_(layer.x)


def _leaky(slope: float) -> Callable[..., Tensor]:
    """The weight modification ``(w, out) ↦ leaky_relu(w, slope)``: w where w ≥ 0, slope·w elsewhere (into
    ``out`` when given)."""
    def modify(w: Tensor, out: Tensor | None = None) -> Tensor:
        return torch.nn.functional.leaky_relu(w, slope) if out is None else \
            torch.ops.aten.leaky_relu.out(w, slope, out=out)
    return modify


def _split_by_sign(values: Tensor, layer: LayerCall, up: Tensor | None = None,
                   down: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``values`` (shaped like the layer's output: its relevance, or a quotient) at the outputs z > 0 and at
    the outputs z < 0 (outputs z = 0 pass nothing), as new tensors or written into ``up`` (``values`` itself
    included) and ``down``; the second is None when nothing reaches outputs z < 0. A rectified z (``relu(z)``,
    see ``Trace.rectify``) says so without a look, and the first is then ``values`` itself."""
    if layer.z_rectified:
        return values, None
    at_negative = where_negative(values, layer.z, down)  # before ``up`` may overwrite ``values``
    return where_positive(values, layer.z, up), (None if all_zero(at_negative) else at_negative)


class ZBox(Rule):
    """z^B for inputs bounded by ``low ≤ x ≤ high`` (the first layer on raw data).

    ``R_in = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs`` with ``s = R / stab(Wx − W⁺l − W⁻h)``. ``low`` and
    ``high`` are scalars, per-channel vectors (C,) or tensors broadcastable to the input.
    """

    def __init__(self, low: float | Tensor, high: float | Tensor, stabilizer: float = 1e-6, bias: bool = True):
        self.low = low
        self.high = high
        self.stabilizer = stabilizer
        self.bias = bias

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        x = layer.x
        w_pos, w_neg = layer.modified(_positive), layer.modified(_negative)
        low, high, bounds = self._bounds(layer, w_pos, w_neg)  # bounds: W⁺l + W⁻h
        if self.bias:
            bounds.add_(layer.bias_term(_positive)).add_(layer.bias_term(_negative))
        else:
            bounds.add_(layer.bias_term())  # z − b − (W⁺l + W⁻h)
        denominator = torch.sub(layer.z, bounds, out=bounds if bounds.shape == layer.z.shape else None)
        layer.release("z")
        s = divide_(relevance, denominator, self.stabilizer)
        del denominator, bounds
        for_low, for_high = layer.transpose_pair(s, w_pos, w_neg)
        del s
        return for_low.mul_(x - low).add_(for_high.mul_(x - high))

    def _bounds(self, layer: LayerCall, w_pos: Tensor, w_neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``low``, ``high`` (broadcastable to x) and ``W⁺l + W⁻h`` (broadcastable to z, a new tensor). Bounds
        that are one value per input channel need no layer call over an input of constants
        (:meth:`LinearMap.constant_response`): where the layer has no borders, one value per output channel
        instead of a tensor as large as z (the paper's first layer: 265 MB, and 18 % of the composite's time);
        with borders, one sample's output made from the kernel and the window's part inside the input."""
        x = layer.x
        low, high = _channel_values(self.low, x), _channel_values(self.high, x)
        if low is not None and high is not None:
            bounds = layer.linear_map.constant_response([(low, w_pos), (high, w_neg)], x)
            if bounds is not None:
                view = (1, -1, *([1] * (x.dim() - 2)))
                return low.view(view), high.view(view), bounds
        low, high = _bound_like(self.low, x), _bound_like(self.high, x)
        return low, high, layer.forward_pair(low, w_pos, high, w_neg)


def _channel_values(bound: float | Tensor, x: Tensor) -> Tensor | None:
    """A ZBox bound that is one value, or one per input channel, as (C_in,) in x's dtype; None otherwise."""
    bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    if bound.numel() == 1:
        return bound.reshape(1).expand(x.shape[1]).contiguous()
    if bound.dim() == 1 and bound.numel() == x.shape[1]:
        return bound
    return None


def _bound_like(bound: float | Tensor, x: Tensor) -> Tensor:
    """A ZBox bound as a tensor broadcast to x, with batch size 1 unless it varies per sample."""
    values = _channel_values(bound, x)
    if values is None:
        bound = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    else:
        bound = values.view(1, -1, *([1] * (x.dim() - 2)))
    per_sample = bound.dim() == x.dim() and bound.shape[0] == x.shape[0] and x.shape[0] > 1
    try:
        return torch.broadcast_to(bound, x.shape if per_sample else (1, *x.shape[1:])).contiguous()
    except RuntimeError:
        raise ValueError(
            f"ZBox bound of shape {tuple(bound.shape)} does not broadcast to the layer input {tuple(x.shape)}"
        ) from None


class Flat(Rule):
    """Flat: relevance spread uniformly over the receptive field (all weights and inputs 1, no bias)."""

    kinds = frozenset({WEIGHTED, PARAMETER_FREE})

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = stabilizer

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        ones = torch.ones_like(layer.source[:1])  # x's shape and dtype: x itself is not needed
        weight = None if layer.raw_weight is None else layer.modified(_ones)
        return layer.transpose(divide(relevance, layer.forward(ones, weight), self.stabilizer), weight)


def _ones(like: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.ones_like(like) if out is None else out.fill_(1)


class WSquare(Rule):
    """w²: relevance spread in proportion to the squared weights, independent of the input.

    The bias is squared too (``b²`` in the denominator), as in zennit; ``bias=False`` drops it.
    """

    def __init__(self, stabilizer: float = 1e-6, bias: bool = True):
        self.stabilizer = stabilizer
        self.bias = bias

    def relevance(self, layer: LayerCall, relevance: Tensor) -> Tensor:
        squared = layer.modified(lambda w, out: torch.square(w, out=out))
        ones = torch.ones_like(layer.source[:1])  # x's shape and dtype: x itself is not needed
        bias = layer.bias_term(torch.square) if self.bias else 0.0
        return layer.transpose(divide(relevance, layer.forward(ones, squared) + bias, self.stabilizer), squared)


class Pass(Rule):
    """Pass relevance through unchanged: the rule for element-wise activations."""

    kinds = frozenset({ELEMENTWISE})


def takes_rectified_output(rule: Rule) -> bool:
    """Whether ``rule`` gives the same numbers with ``relu(z)`` in place of its layer's (or sum's) output z,
    given that no relevance reaches the outputs that the ReLU zeroes (see ``Trace.rectify``): it reads z only
    where relevance arrives, and elsewhere divides zero by a denominator it keeps away from zero. The
    built-in ε rules with ε > 0 then divide by ``relu(z) + ε`` (:func:`lrp.layers.divide_rectified`); γ
    needs no split of the relevance by the sign of z; αβ with β > 0 takes its negative denominator from
    ``relu(z)``. Not their subclasses, which may read z otherwise."""
    return ((type(rule) in (Epsilon, Norm) and rule.epsilon > 0) or type(rule) is Gamma
            or (type(rule) is AlphaBeta and rule.beta > 0))


def ignores_output(rule: Rule) -> bool:
    """Whether ``rule`` never reads its layer's output z (z⁺ and α1β0 make their own denominators): the
    built-in ones, not their subclasses."""
    return type(rule) is ZPlus or (type(rule) is AlphaBeta and rule.beta == 0)


def proportional_to_input(rule: Rule) -> bool:
    """Whether ``rule`` gives each input relevance in proportion to it (``x ⊙ …``, or ``x⁺ ⊙ … + x⁻ ⊙ …``), so
    none to inputs that are zero: the built-in rules except ZBox, Flat, WSquare and Pass."""
    return type(rule) in (Epsilon, Zero, Norm, AlphaBeta, ZPlus, Gamma)
