"""Explanation methods by name, for the command line, studies and the demo.

A method spec is ``NAME[:COMPOSITE][:KEY=VALUE,...]``:

- ``lrp:alpha1-beta0``, ``lrp:epsilon:epsilon=0.01``, ``lrp:epsilon-gamma-box`` — :func:`lrp.explain`
  with a named composite (see ``lrp.composites.COMPOSITES``). ``epsilon-gamma-box`` without ``low`` /
  ``high`` uses each batch's own minimum and maximum, the true bounds of the input.
- ``lrp:alpha-beta:beta=0.5`` — the paper's b-rule: AlphaBeta(alpha=1+beta, beta) on every weighted
  layer (the paper's beta sweep runs beta = 0, 0.25, 0.5, 0.75, 1).
- ``gradient``, ``gradient_x_input``, ``guided_backprop``, ``deconvnet``, ``integrated_gradients``,
  ``smoothgrad``, ``occlusion`` with their keyword parameters, e.g. ``occlusion:patch=4,stride=4``,
  ``gradient:mode=abs``.

Values are parsed as int, float, bool or comma-free strings.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import methods
from .composites import COMPOSITES
from .engine import explain
from .restore import borrowed
from .rules import AlphaBeta
from .targets import output_relevance

__all__ = ["METHODS", "STARTS", "MethodSpec", "parse_method"]

METHODS: dict[str, Callable[..., Any]] = {
    "gradient": methods.gradient,
    "gradient_x_input": methods.gradient_x_input,
    "guided_backprop": methods.guided_backprop,
    "deconvnet": methods.deconvnet,
    "integrated_gradients": methods.integrated_gradients,
    "smoothgrad": methods.smoothgrad,
    "occlusion": methods.occlusion,
}
"""The non-LRP methods of :mod:`lrp.methods` by name."""

STARTS: tuple[str, ...] = ("logit", "probability")
"""What LRP distributes from the output (see :meth:`MethodSpec.explainer`)."""

_SWEEP_COMPOSITE = "alpha-beta"


@dataclass(frozen=True)
class MethodSpec:
    """One explanation method with its parameters.

    name: ``"lrp"`` or a key of :data:`METHODS`; composite: for LRP, a composite name or ``"alpha-beta"``;
    params: keyword parameters. ``label`` names its output folder and table rows.
    """

    name: str
    composite: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A file-name-safe label, e.g. ``lrp_alpha1-beta0``, ``lrp_alpha-beta_beta0.5``, ``guided_backprop``."""
        parts = [self.name] + ([self.composite] if self.composite else [])
        parts += [f"{key}{value}" for key, value in sorted(self.params.items())]
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts))

    def __str__(self) -> str:
        text = self.name + (f":{self.composite}" if self.composite else "")
        if self.params:
            text += ":" + ",".join(f"{key}={value}" for key, value in self.params.items())
        return text

    def explainer(self, start: str = "logit") -> Callable[[nn.Module, Tensor, Any], Tensor]:
        """``(model, x (N, C, *S), target) -> relevance`` like ``x``.

        start: what LRP distributes: the explained class's ``"logit"`` (lrp.explain's default), or its
        softmax ``"probability"``, as the paper did (a softmax appended to the logits); with the
        probability every subject's map has the sign of the evidence, also where the logit is negative.
        Other methods ignore it (their maps do not depend on the output's scale but by a factor).
        """
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        if self.name != "lrp":
            method, params = METHODS[self.name], dict(self.params)
            return lambda model, x, target: method(model, x, target, **params).relevance
        params = dict(self.params)
        if self.composite == _SWEEP_COMPOSITE:
            beta = float(params.pop("beta"))
            composite, params = AlphaBeta(alpha=1.0 + beta, beta=beta, **params), {}
        else:
            composite = self.composite
        needs_bounds = self.composite == "epsilon-gamma-box" and not {"low", "high"} & params.keys()

        def run(model: nn.Module, x: Tensor, target: Any) -> Tensor:
            bounds = {"low": float(x.amin()), "high": float(x.amax())} if needs_bounds else {}
            if start == "probability":
                target = _probability_start(model, x, target)
            return explain(model, x, target, composite, **params, **bounds).relevance

        return run


def _probability_start(model: nn.Module, x: Tensor, target: Any) -> Tensor:
    """The output relevance (N, classes): the softmax probability of each sample's target class (the
    arg-max for None), zero elsewhere."""
    with borrowed(model), torch.no_grad():
        logits = model(x)
    _, index = output_relevance(logits, target)
    start = torch.zeros_like(logits)
    return start.scatter_(1, index[:, None], torch.softmax(logits, dim=1).gather(1, index[:, None]))


def parse_method(text: str | MethodSpec) -> MethodSpec:
    """A :class:`MethodSpec` from ``NAME[:COMPOSITE][:KEY=VALUE,...]``; ValueError naming close matches
    for unknown methods or composites, and for a beta sweep without ``beta``."""
    if isinstance(text, MethodSpec):
        return text
    fields = [part.strip() for part in str(text).strip().split(":")]
    name = fields[0].lower()
    known = ["lrp", *METHODS]
    if name not in known:
        raise ValueError(f"unknown method {fields[0]!r}{_close(name, known)}; known: {', '.join(known)}")
    composite = None
    if name == "lrp":
        if len(fields) < 2 or "=" in fields[1]:
            raise ValueError(f"method {text!r}: LRP needs a composite, e.g. 'lrp:alpha1-beta0' or "
                             f"'lrp:alpha-beta:beta=0.5'")
        composite = fields.pop(1).lower().replace("_", "-")
        composites = [*COMPOSITES, _SWEEP_COMPOSITE]
        if composite not in composites:
            raise ValueError(f"method {text!r}: unknown composite {composite!r}{_close(composite, composites)}; "
                             f"known: {', '.join(composites)}")
    if len(fields) > 2:
        raise ValueError(f"method {text!r}: expected NAME[:COMPOSITE][:KEY=VALUE,...]")
    params = _parse_params(fields[1], text) if len(fields) == 2 else {}
    if composite == _SWEEP_COMPOSITE and "beta" not in params:
        raise ValueError(f"method {text!r}: the alpha-beta sweep needs beta, e.g. 'lrp:alpha-beta:beta=0.5'")
    return MethodSpec(name, composite, params)


def _parse_params(text: str, spec: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"method {spec!r}: parameter {item!r} is not KEY=VALUE")
        params[key.strip()] = _value(value.strip())
    return params


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _close(word: str, choices: list[str]) -> str:
    matches = difflib.get_close_matches(word, choices, n=3)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""
