"""The result of an explanation."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from torch import Tensor

from .nodes import ConservationRow

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Relevance of every input element for the explained output.

    relevance:  like the input (N, *S), or (N, K, *S) when K classes per input were explained.
    prediction: the explained model output (logits; (N, C) or (N, K, C)).
    target:     the explained classes, LongTensor (N,) or (N, K).
    layers:     with ``keep_layers=True``, relevance entering every leaf module, by module name in
                execution order (a module called twice appears as ``name``, ``name#2``).
    rows:       with ``conservation=True``, the conservation table (see :meth:`conservation`); else None.
    """

    relevance: Tensor
    prediction: Tensor
    target: Tensor
    layers: OrderedDict[str, Tensor] = field(default_factory=OrderedDict)
    rows: list[ConservationRow] | None = field(default=None, repr=False)

    def conservation(self) -> list[ConservationRow]:
        """Per explained op, in execution order: relevance out and in per sample, and what the bias
        and stabiliser absorbed. ``print(*expl.conservation(), sep="\\n")`` shows a table. Recorded by LRP
        when asked for (``lrp.explain(..., conservation=True)``, or the explainer's call); raises
        ``ValueError`` otherwise."""
        if self.rows is None:
            raise ValueError("this explanation has no conservation table: LRP records it when asked for, "
                             "lrp.explain(model, x, ..., conservation=True) or explainer(x, ..., conservation=True)")
        return sorted(self.rows, key=lambda row: row.index)
