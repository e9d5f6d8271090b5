"""Region perturbation (pixel flipping): remove the most / least relevant units first and watch the score.

Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the visualization of what a deep neural
network has learned", IEEE TNNLS 2017. The input is split into units (patches / cubes of the grid, or
atlas regions), ranked by their summed relevance and replaced by a fill, one step after the other;
the target score after every step forms the perturbation curve, and the area over it is

    AOPC = 1 / (L + 1) · Σ_{k=0..L} (f(x⁰) − f(xᵏ)),

large when removing the first units destroys the evidence for the class (MoRF, ``order="most"``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DataError
from ..explanation import Explanation
from ..restore import borrowed
from ..targets import TargetSpec
from .explainers import as_relevance, check_batch, class_targets
from .fills import FILLS, fill_values
from .units import Units, atlas_units, patch_units, unit_sums

__all__ = ["ORDERS", "RANKINGS", "SCORES", "PerturbationResult", "atlas_perturbation", "region_perturbation",
           "unit_perturbation"]

ORDERS = ("most", "least", "random")
"""Removal orders: most relevant first (MoRF), least relevant first (LeRF), seeded random."""
SCORES = ("logit", "probability")
"""What is recorded: the target class's logit or its softmax probability."""
RANKINGS = ("sum", "density")
"""How units are ranked: summed relevance, or summed relevance per voxel."""


@dataclass
class PerturbationResult:
    """Perturbation curves of N samples over L steps.

    curves:  (N, L + 1) target score after k = 0 .. L steps (column 0: the intact input).
    removed: LongTensor (L + 1,), units removed after k steps.
    target:  LongTensor (N,), the scored class of every sample.
    units:   the number of units the input was split into.
    order:   the removal order (see ``ORDERS``).
    """

    curves: Tensor
    removed: Tensor
    target: Tensor
    units: int
    order: str

    @property
    def aopc(self) -> Tensor:
        """Area over the perturbation curve per sample, (N,): mean over k = 0 .. L of f(x⁰) − f(xᵏ)."""
        return (self.curves[:, :1] - self.curves).mean(1)

    @property
    def mean_aopc(self) -> float:
        """The AOPC averaged over the samples."""
        return float(self.aopc.mean())


def region_perturbation(model: nn.Module, x: Tensor, relevance: Tensor | Explanation | None, target: TargetSpec = None,
                        *, patch_size: int | Sequence[int], order: str = "most", fill: str = "constant",
                        value: float = 0.0, sigma: float | Sequence[float] = 2.0, steps: float = 1.0,
                        units_per_step: int = 1, rank_by: str = "sum", score: str = "logit", batch_size: int = 32,
                        seed: int = 0) -> PerturbationResult:
    """Perturbation curves for patches (2D) / cubes (3D) of ``patch_size`` voxels as units.

    Args:
        model: classifier returning (N, classes); run in eval mode without gradients, left unchanged.
        x: input (N, C, *S), 1 to 3 spatial axes.
        relevance: shaped like ``x`` (or an ``lrp.Explanation``); summed over channels and the voxels of
            each unit to rank the units. May be None for ``order="random"``.
        target: the scored class (None = the arg-max on ``x``, an int, or one class per sample).
        patch_size: voxels per axis (one int or one per spatial axis); border patches may be partial.
        order: ``"most"`` relevant first (MoRF), ``"least"`` relevant first (LeRF) or ``"random"``
            (a per-sample random order drawn from ``seed``).
        fill: ``"constant"`` (``value``), ``"mean"`` (per-sample, per-channel mean of ``x``) or
            ``"blur"`` (``x`` blurred by a Gaussian of ``sigma`` voxels), see :func:`fill_values`.
        steps: the number of steps L (an int), or the fraction of all units to remove (a float in (0, 1]).
        units_per_step: units removed per step (the last step may remove fewer).
        rank_by: ``"sum"`` of relevance or ``"density"`` (sum / voxels) of each unit.
        score: ``"logit"`` of the target class or its softmax ``"probability"``.
        batch_size: perturbed inputs per forward pass (bounds the memory); N · (L + 1) are scored.
    """
    check_batch(x)
    units = patch_units(x.shape[2:], patch_size)
    return unit_perturbation(model, x, relevance, units, target, order=order, fill=fill, value=value, sigma=sigma,
                    steps=steps, units_per_step=units_per_step, rank_by=rank_by, score=score,
                    batch_size=batch_size, seed=seed)


def atlas_perturbation(model: nn.Module, x: Tensor, relevance: Tensor | Explanation | None,
                       labels: np.ndarray | Tensor, target: TargetSpec = None, *, order: str = "most",
                       fill: str = "constant", value: float = 0.0, sigma: float | Sequence[float] = 2.0,
                       steps: float = 1.0, units_per_step: int = 1, rank_by: str = "sum", score: str = "logit",
                       batch_size: int = 32, seed: int = 0) -> PerturbationResult:
    """Perturbation curves with the regions of an atlas as units.

    labels: integer label volume on the input grid (shaped like ``x.shape[2:]``, e.g. D×H×W); 0 is
        background and never removed. Units are ranked by summed relevance (``rank_by="sum"``) or by
        relevance density (``"density"``: sum / voxels). Other arguments as in :func:`region_perturbation`.
    """
    check_batch(x)
    units = atlas_units(labels, x.shape[2:])
    return unit_perturbation(model, x, relevance, units, target, order=order, fill=fill, value=value, sigma=sigma,
                    steps=steps, units_per_step=units_per_step, rank_by=rank_by, score=score,
                    batch_size=batch_size, seed=seed)


def unit_perturbation(model: nn.Module, x: Tensor, relevance: Tensor | Explanation | None, units: Units,
                      target: TargetSpec = None, *, order: str = "most", fill: str = "constant", value: float = 0.0,
                      sigma: float | Sequence[float] = 2.0, steps: float = 1.0, units_per_step: int = 1,
                      rank_by: str = "sum", score: str = "logit", batch_size: int = 32,
                      seed: int = 0) -> PerturbationResult:
    """Perturbation curves for any partition of the grid into :class:`~lrp.evaluate.units.Units` (e.g. built
    once by :func:`atlas_units` and reused over batches); arguments as in :func:`region_perturbation`."""
    check_batch(x)
    if tuple(units.index.shape) != tuple(x.shape[2:]):
        raise DataError(f"the units cover a grid of {tuple(units.index.shape)}, the input grid is {tuple(x.shape[2:])}")
    _check_choice("order", order, ORDERS)
    _check_choice("fill", fill, FILLS)
    _check_choice("rank_by", rank_by, RANKINGS)
    _check_choice("score", score, SCORES)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("units_per_step", units_per_step)
    removed = _removal_schedule(units.count, steps, units_per_step).to(x.device)
    if relevance is None and order != "random":
        raise ValueError(f"order={order!r} ranks the units by relevance; relevance=None works only with order='random'")
    if relevance is not None:
        relevance = as_relevance(relevance, x.shape)
    classes = class_targets(model, x, target)
    ranks = _removal_ranks(units, relevance, order, rank_by, seed, x.shape[0]).to(x.device)
    index = units.index.to(x.device)
    voxel_rank = torch.where(index >= 0, ranks[:, index.clamp(min=0)], units.count)  # (N, *S)
    replacement = fill_values(x, fill, value, sigma)
    curves = _score_steps(model, x, replacement, voxel_rank, removed, classes, score, batch_size)
    return PerturbationResult(curves, removed.cpu(), classes, units.count, order)


def _score_steps(model: nn.Module, x: Tensor, replacement: Tensor, voxel_rank: Tensor, removed: Tensor,
                 classes: Tensor, score: str, batch_size: int) -> Tensor:
    """Target scores (N, L + 1) of ``x`` with the voxels of rank < removed[k] replaced, in batches."""
    samples, points = x.shape[0], removed.numel()
    spatial = (1,) * (x.dim() - 2)
    scores = []
    with borrowed(model), torch.no_grad():
        for start in range(0, samples * points, batch_size):
            pair = torch.arange(start, min(start + batch_size, samples * points), device=x.device)
            sample, step = pair // points, pair % points
            gone = voxel_rank[sample] < removed[step].reshape(-1, *spatial)  # (B, *S)
            output = model(torch.where(gone.unsqueeze(1), replacement[sample], x[sample]))
            if score == "probability":
                output = output.softmax(1)
            scores.append(output.gather(1, classes[sample, None]).squeeze(1))
    return torch.cat(scores).reshape(samples, points)


def _removal_ranks(units: Units, relevance: Tensor | None, order: str, rank_by: str, seed: int,
                   samples: int) -> Tensor:
    """Position of every unit in each sample's removal order, LongTensor (N, U) on the CPU."""
    count = units.count
    if order == "random":
        generator = torch.Generator().manual_seed(seed)
        sequence = torch.stack([torch.randperm(count, generator=generator) for _ in range(samples)])
    else:
        unit_scores = unit_sums(units, relevance).cpu()
        if rank_by == "density":
            unit_scores = unit_scores / units.voxels.to(unit_scores.dtype)
        sequence = torch.sort(unit_scores, dim=1, descending=order == "most", stable=True).indices
    positions = torch.arange(count).expand(samples, count)
    return torch.empty_like(sequence).scatter_(1, sequence, positions)


def _removal_schedule(count: int, steps: float, units_per_step: int) -> Tensor:
    """Units removed after k = 0 .. L steps, LongTensor (L + 1,)."""
    if isinstance(steps, bool) or not isinstance(steps, Real):
        raise TypeError(f"steps must be an int (number of steps) or a float fraction of the units, got {steps!r}")
    if isinstance(steps, (int, np.integer)):
        available = math.ceil(count / units_per_step)
        if not 1 <= steps <= available:
            raise ValueError(f"steps={steps} is out of range: {count} units, {units_per_step} per step allow "
                             f"1 to {available} steps")
        total = min(int(steps) * units_per_step, count)
    else:
        if not 0 < steps <= 1:
            raise ValueError(f"a fractional steps must lie in (0, 1], got {steps}")
        total = max(1, math.ceil(steps * count - 1e-9))
    points = math.ceil(total / units_per_step) + 1
    return (torch.arange(points) * units_per_step).clamp(max=total)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
