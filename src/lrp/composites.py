"""Composites: which rule goes to which layer.

A :class:`Composite` maps rules to layers by module name, by type (a concrete ``nn.Module`` class
or one of the layer families below, subclass-aware) and to the first layer in *execution order*.
Functional calls (``F.conv2d`` inside a custom module) are matched through their family.
Named composites follow the literature and zennit's composites of the same meaning.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping

from torch import nn

from .rules import (
    ELEMENTWISE,
    PARAMETER_FREE,
    SUM,
    WEIGHTED,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    Rule,
    ZBox,
    Zero,
    ZPlus,
)

__all__ = [
    "COMPOSITES",
    "Activation",
    "Composite",
    "Convolution",
    "Dense",
    "Family",
    "Normalization",
    "Pooling",
    "Sum",
    "Weighted",
    "resolve_composite",
]


class _FamilyMeta(type):
    """``isinstance(module, Family)`` is true for every subclass of the family's member classes."""

    def __instancecheck__(cls, instance: object) -> bool:
        return cls.__subclasscheck__(type(instance))

    def __subclasscheck__(cls, subclass: type) -> bool:
        return type.__subclasscheck__(cls, subclass) or issubclass(subclass, cls.members)


class Family(metaclass=_FamilyMeta):
    """A family of layers; usable as a key of ``Composite(by_type=...)``."""

    members: tuple[type, ...] = ()
    kind = WEIGHTED


class Convolution(Family):
    """Convolutions and transposed convolutions, 1D to 3D (and functional ``F.conv*``)."""

    members = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Dense(Family):
    """Fully connected layers (and functional ``F.linear`` / matmul with a constant matrix)."""

    members = (nn.Linear,)


class Weighted(Family):
    """Every layer with weights: convolutions and dense layers."""

    members = (Convolution, Dense)


class Normalization(Family):
    """BatchNorm layers that could not be folded into a neighbouring linear layer."""

    members = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Pooling(Family):
    """Average pooling (adaptive too) and ``mean`` / ``sum`` reductions: parameter-free linear ops."""

    members = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveAvgPool3d)
    kind = PARAMETER_FREE


class Activation(Family):
    """Element-wise activations."""

    members = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ReLU6,
               nn.PReLU, nn.SELU, nn.CELU, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid,
               nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.RReLU)
    kind = ELEMENTWISE


class Sum(Family):
    """Element-wise sums of tensors on the path (residual connections ``x + y``)."""

    kind = SUM


BUILTIN_DEFAULTS: dict[type[Family], Rule] = {
    Activation: Pass(), Pooling: Norm(), Sum: Norm(), Normalization: Epsilon(),
}


class Composite:
    """Assigns a rule to every layer call.

    Args:
        by_type: {module class or Family: rule}; first match in insertion order wins.
        by_name: {module name as in ``model.named_modules()``: rule}; wins over ``by_type``.
        first: rule (or {type or Family: rule}) for the first matching weighted layer executed.
        default: rule for weighted layers nothing else matched; without it such layers are an error.

    Activations default to :class:`~lrp.rules.Pass`, sums and average pooling to
    :class:`~lrp.rules.Norm`, unfoldable BatchNorm to :class:`~lrp.rules.Epsilon`.
    """

    def __init__(
        self,
        by_type: Mapping[type, Rule] | None = None,
        by_name: Mapping[str, Rule] | None = None,
        first: Rule | Mapping[type, Rule] | None = None,
        default: Rule | None = None,
    ):
        self.by_type = dict(by_type or {})
        self.by_name = dict(by_name or {})
        self.first = {Weighted: first} if isinstance(first, Rule) else dict(first or {})
        self.default = default
        self._cache: dict[tuple, tuple[Rule | None, bool]] = {}
        for where, rules in (("by_type", self.by_type.values()), ("by_name", self.by_name.values()),
                             ("first", self.first.values()), ("default", [default] if default else [])):
            for rule in rules:
                if not isinstance(rule, Rule):
                    raise TypeError(f"Composite {where} holds {rule!r}, which is not an lrp.rules.Rule")

    def rule_for(
        self, module: nn.Module, name: str, family: type[Family], first: bool
    ) -> tuple[Rule | None, bool]:
        """The rule for an op of ``family`` called inside ``module`` (named ``name``).

        ``first`` says that no first-layer rule has been used yet in this forward pass. Returns the
        rule (None when nothing applies: the caller decides whether that is an error) and whether
        it is the first-layer rule. Lookups are cached by module class, family, ``first`` and the name
        where ``by_name`` holds it (other names cannot change the answer: ResNet-50's 53 convolutions
        share one lookup instead of one each).
        """
        key = (type(module), name if name in self.by_name else None, family, first)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._lookup(module, name, family, first)
        return cached

    def _lookup(self, module: nn.Module, name: str, family: type[Family], first: bool) -> tuple[Rule | None, bool]:
        kind = family.kind
        if first:
            rule = _match(self.first, module, family, kind)
            if rule is not None:
                return rule, True
        rule = self.by_name.get(name)
        if rule is None or kind not in rule.kinds:
            rule = _match(self.by_type, module, family, kind)
        if rule is None and self.default is not None and kind in self.default.kinds:
            rule = self.default
        return (rule if rule is not None else BUILTIN_DEFAULTS.get(family)), False

    def __repr__(self) -> str:
        def names(mapping: Mapping) -> str:
            return "{" + ", ".join(f"{getattr(k, '__name__', k)}: {v!r}" for k, v in mapping.items()) + "}"
        return (f"Composite(by_type={names(self.by_type)}, by_name={names(self.by_name)}, "
                f"first={names(self.first)}, default={self.default!r})")


def _match(mapping: Mapping[type, Rule], module: nn.Module, family: type[Family], kind: str) -> Rule | None:
    for key, rule in mapping.items():
        matches = isinstance(module, key) or (issubclass(family, key) if isinstance(key, type) else False)
        if matches and kind in rule.kinds:
            return rule
    return None


def _uniform(rule: Rule, stabilizer: float) -> Composite:
    return Composite(by_type={Weighted: rule, **_proportional(stabilizer)})


def _conv_dense(conv: Rule, dense: Rule, stabilizer: float, first: Mapping[type, Rule] | None = None) -> Composite:
    return Composite(by_type={Convolution: conv, Dense: dense, **_proportional(stabilizer)}, first=first)


def _proportional(stabilizer: float) -> dict[type, Rule]:
    """Sums and average pooling split relevance in proportion, with the composite's stabiliser."""
    return {Pooling: Norm(stabilizer), Sum: Norm(stabilizer)}


COMPOSITES: dict[str, Callable[..., Composite]] = {
    "zero": lambda: Composite(by_type={family: Zero() for family in (Weighted, Normalization, Pooling, Sum)}),
    "epsilon": lambda epsilon=1e-6, stabilizer=1e-6: _uniform(Epsilon(epsilon), stabilizer),
    "gamma": lambda gamma=0.25, stabilizer=1e-6: _uniform(Gamma(gamma, stabilizer), stabilizer),
    "alpha1-beta0": lambda stabilizer=1e-6: _uniform(AlphaBeta(1.0, 0.0, stabilizer), stabilizer),
    "alpha2-beta1": lambda stabilizer=1e-6: _uniform(AlphaBeta(2.0, 1.0, stabilizer), stabilizer),
    "z-plus": lambda stabilizer=1e-6: _uniform(ZPlus(stabilizer), stabilizer),
    "epsilon-plus": lambda epsilon=1e-6, stabilizer=1e-6: _conv_dense(ZPlus(stabilizer), Epsilon(epsilon), stabilizer),
    "epsilon-plus-flat": lambda epsilon=1e-6, stabilizer=1e-6: _conv_dense(
        ZPlus(stabilizer), Epsilon(epsilon), stabilizer, first={Weighted: Flat(stabilizer)}),
    "epsilon-alpha2-beta1": lambda epsilon=1e-6, stabilizer=1e-6: _conv_dense(
        AlphaBeta(2.0, 1.0, stabilizer), Epsilon(epsilon), stabilizer),
    "epsilon-gamma-box": lambda low, high, gamma=0.25, epsilon=1e-6, stabilizer=1e-6: _conv_dense(
        Gamma(gamma, stabilizer), Epsilon(epsilon), stabilizer, first={Convolution: ZBox(low, high, stabilizer)}),
}
"""Named composites; each takes the keyword parameters shown (``epsilon-gamma-box`` needs low, high).
``zero`` is LRP-0 everywhere (sums, pooling and unfoldable BatchNorm too), so it conserves exactly."""


def resolve_composite(composite: str | Composite | Rule, **params) -> Composite:
    """A Composite from a name (with its parameters), a Composite, or one rule for all weighted layers."""
    if isinstance(composite, Composite):
        if params:
            raise TypeError(f"parameters {sorted(params)} only apply to named composites, not to a Composite object")
        return composite
    if isinstance(composite, Rule):
        if params:
            raise TypeError(f"parameters {sorted(params)} only apply to named composites, not to a rule")
        return Composite(by_type={Weighted: composite})
    if not isinstance(composite, str):
        raise TypeError(f"composite must be a name, an lrp.Composite or an lrp.rules.Rule, not {type(composite).__name__}")
    key = composite.strip().lower().replace("_", "-")
    if key not in COMPOSITES:
        close = difflib.get_close_matches(key, COMPOSITES, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown composite {composite!r}.{hint} Known: {', '.join(COMPOSITES)}")
    try:
        return COMPOSITES[key](**params)
    except TypeError as error:
        raise TypeError(f"composite {key!r}: {error}") from None
