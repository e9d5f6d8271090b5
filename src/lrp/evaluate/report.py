"""Comparing explanation methods on a data set: one row per method, one column per metric."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain

import numpy as np
import pandas as pd
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..targets import TargetSpec
from .explainers import Explainer, check_batch, class_targets, explain_with
from .localisation import LOCALISATION_METRICS, localisation_scores
from .perturbation import PerturbationResult, unit_perturbation
from .randomisation import randomised_correlation
from .units import atlas_units, patch_units

__all__ = ["METRICS", "evaluate"]

AOPC_METRICS = {"aopc_morf": "most", "aopc_lerf": "least", "aopc_random": "random"}
METRICS = (*AOPC_METRICS, *LOCALISATION_METRICS, "randomisation")
"""Columns :func:`evaluate` can compute: AOPC for MoRF, LeRF and random removal; relevance mass
accuracy, relevance rank accuracy and pointing game hit rate (need masks); the Spearman correlation
of each map with the map of the fully randomised model (the last cascading randomisation step)."""

Batch = tuple[Tensor, TargetSpec, "Tensor | np.ndarray | None"]


def evaluate(model: nn.Module, data: Tensor | Iterable, explainers: Mapping[str, Explainer],
             metrics: Sequence[str] | None = None, *, target: TargetSpec = None,
             masks: Tensor | np.ndarray | None = None, patch_size: int | Sequence[int] | None = None,
             labels: Tensor | np.ndarray | None = None, steps: float = 1.0, units_per_step: int = 1,
             fill: str = "constant", value: float = 0.0, sigma: float | Sequence[float] = 2.0, rank_by: str = "sum",
             score: str = "logit", batch_size: int = 32, absolute: bool = False, seed: int = 0,
             progress: bool = True) -> pd.DataFrame:
    """Compare explanation methods on a data set.

    Args:
        model: classifier returning (N, classes).
        data: one batch x (N, C, *S) (with ``target`` and ``masks`` given here), or an iterable of
            ``(x, target)`` or ``(x, target, mask)`` batches (target None = the arg-max).
        explainers: method name -> ``(model, x, target) -> Explanation | Tensor``; each is called once
            per batch with the batch's classes (LongTensor (N,)).
        metrics: names from ``METRICS``; default: the three AOPCs, plus the localisation metrics when
            masks are given (for an iterable: when its first batch has a mask).
        masks: ground-truth bool masks, (*S) or (N, *S), for a single batch ``data``.
        patch_size / labels: the perturbation units, patches of ``patch_size`` voxels or the regions of an
            integer label volume shaped like the grid (see :func:`region_perturbation`,
            :func:`atlas_perturbation`); one of them is needed for the AOPC metrics.
        steps, units_per_step, fill, value, sigma, rank_by, score, batch_size: as in
            :func:`region_perturbation`. The random baseline of batch b uses ``seed + b``; randomisation
            uses ``seed`` and correlates absolute values if ``absolute``.
        progress: show a tqdm progress bar over batches × methods.

    Returns:
        one row per method (index ``method``), one column per metric: the mean over all samples
        (NaN values, e.g. of constant maps, left out).
    """
    if not explainers or not all(callable(explainer) for explainer in explainers.values()):
        raise TypeError("explainers must be a non-empty mapping from method name to a callable "
                        "(model, x, target) -> Explanation or Tensor")
    batches = _batches(data, target, masks)
    first = next(batches, None)
    if first is None:
        raise ValueError("data holds no batch")
    chosen = _chosen_metrics(metrics, first[2] is not None)
    if any(name in AOPC_METRICS for name in chosen) and (patch_size is None) == (labels is None):
        raise ValueError("the AOPC metrics need exactly one of patch_size (patches / cubes) or labels (atlas regions)")
    atlas = atlas_units(labels, np.shape(labels)) if labels is not None else None
    perturbation = {"steps": steps, "units_per_step": units_per_step, "fill": fill, "value": value, "sigma": sigma,
                    "rank_by": rank_by, "score": score, "batch_size": batch_size}

    def perturb(x: Tensor, relevance: Tensor | None, classes: Tensor, order: str, batch_seed: int = 0) -> PerturbationResult:
        units = atlas if atlas is not None else patch_units(x.shape[2:], patch_size)
        return unit_perturbation(model, x, relevance, units, classes, order=order, seed=batch_seed, **perturbation)

    values: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    count = 1 if isinstance(data, Tensor) else len(data) if hasattr(data, "__len__") else None
    with tqdm(total=count and count * len(explainers), desc="evaluate", disable=not progress) as bar:
        for index, (x, batch_target, mask) in enumerate(chain([first], batches)):
            check_batch(x)
            classes = class_targets(model, x, batch_target)
            if mask is None and any(name in LOCALISATION_METRICS for name in chosen):
                raise ValueError(f"batch {index} has no mask; the localisation metrics need one for every batch")
            baseline = perturb(x, None, classes, "random", seed + index).aopc if "aopc_random" in chosen else None
            for method, explainer in explainers.items():
                relevance = explain_with(explainer, model, x, classes, method)
                scores = _method_scores(chosen, x, relevance, classes, mask, perturb)
                if baseline is not None:
                    scores["aopc_random"] = baseline
                if "randomisation" in chosen:
                    scores["randomisation"] = randomised_correlation(model, x, explainer, classes, absolute=absolute,
                                                                     seed=seed)
                for name, per_sample in scores.items():
                    values[method][name].append(_as_array(per_sample))
                bar.update()
    table = {method: {name: pd.Series(np.concatenate(values[method][name])).mean() for name in chosen}
             for method in explainers}
    return pd.DataFrame.from_dict(table, orient="index", columns=list(chosen)).rename_axis("method")


def _method_scores(chosen: Sequence[str], x: Tensor, relevance: Tensor, classes: Tensor, mask,
                   perturb: Callable[..., PerturbationResult]) -> dict[str, Tensor | np.ndarray]:
    """Per-sample values (N,) of the relevance-dependent metrics for one method on one batch."""
    scores: dict[str, Tensor | np.ndarray] = {}
    for name, order in AOPC_METRICS.items():
        if name in chosen and order != "random":
            scores[name] = perturb(x, relevance, classes, order).aopc
    if any(name in LOCALISATION_METRICS for name in chosen):
        located = localisation_scores(relevance, mask)
        scores.update({name: located[name] for name in LOCALISATION_METRICS if name in chosen})
    return scores


def _chosen_metrics(metrics: Sequence[str] | None, has_masks: bool) -> tuple[str, ...]:
    if metrics is None:
        return (*AOPC_METRICS, *(LOCALISATION_METRICS if has_masks else ()))
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    return tuple(dict.fromkeys(metrics))


def _batches(data: Tensor | Iterable, target: TargetSpec, masks) -> Iterator[Batch]:
    """(x, target, mask) for every batch of ``data``."""
    if isinstance(data, Tensor):
        yield data, target, masks
        return
    if target is not None or masks is not None:
        raise ValueError("target= and masks= go with a single batch; an iterable yields (x, target[, mask]) batches")
    for index, batch in enumerate(data):
        if isinstance(batch, Tensor):
            yield batch, None, None
        elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
            yield batch[0], batch[1], batch[2] if len(batch) == 3 else None
        else:
            raise TypeError(f"batch {index} must be x, (x, target) or (x, target, mask), got {type(batch).__name__}")


def _as_array(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=float)

