"""Localisation: how much of the relevance falls on a ground-truth region (a bool mask on the grid).

Relevance mass and rank accuracy follow Arras, Osman & Samek, "CLEVR-XAI: a benchmark dataset for the
ground truth evaluation of neural network explanations", Information Fusion 2022; the pointing game
follows Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016. Relevance
(N, C, *S) is first summed over channels, giving one value per voxel.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..explanation import Explanation

__all__ = [
    "LOCALISATION_METRICS",
    "localisation_scores",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
]

LOCALISATION_METRICS = ("mass_accuracy", "rank_accuracy", "pointing_game")
"""The names :func:`localisation_scores` returns."""


def relevance_mass_accuracy(relevance: Tensor | Explanation, mask: Tensor | np.ndarray) -> Tensor:
    """Positive relevance inside the mask / all positive relevance, per sample (N,); NaN when a map has
    no positive relevance. relevance: (N, C, *S); mask: bool, (*S) for all samples or (N, *S)."""
    voxels, inside = _voxels_and_mask(relevance, mask)
    positive = voxels.clamp(min=0)
    return (positive * inside).sum(1) / positive.sum(1)


def relevance_rank_accuracy(relevance: Tensor | Explanation, mask: Tensor | np.ndarray) -> Tensor:
    """Share of the K most relevant voxels that lie inside the mask, K = the mask's voxel count, per
    sample (N,); NaN for an empty mask. Ties at the K-th value are broken by ``torch.topk``."""
    voxels, inside = _voxels_and_mask(relevance, mask)
    sizes = inside.sum(1)
    scores = torch.full((voxels.shape[0],), float("nan"), dtype=voxels.dtype, device=voxels.device)
    for i, size in enumerate(sizes.tolist()):
        if size:
            top = voxels[i].topk(size).indices
            scores[i] = inside[i, top].sum() / size
    return scores


def pointing_game(relevance: Tensor | Explanation, mask: Tensor | np.ndarray) -> Tensor:
    """Whether each sample's most relevant voxel lies inside the mask, BoolTensor (N,) (the first
    maximum in row-major order when several voxels share it)."""
    voxels, inside = _voxels_and_mask(relevance, mask)
    return inside.gather(1, voxels.argmax(1, keepdim=True)).squeeze(1)


def localisation_scores(relevance: Tensor | Explanation, mask: Tensor | np.ndarray) -> dict[str, Tensor]:
    """All localisation metrics per sample, by name (see ``LOCALISATION_METRICS``), each (N,)."""
    return {"mass_accuracy": relevance_mass_accuracy(relevance, mask),
            "rank_accuracy": relevance_rank_accuracy(relevance, mask),
            "pointing_game": pointing_game(relevance, mask)}


def _voxels_and_mask(relevance: Tensor | Explanation, mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Relevance summed over channels (N, V) and the mask broadcast to the batch (N, V), V voxels."""
    relevance = relevance.relevance if isinstance(relevance, Explanation) else relevance
    if not isinstance(relevance, Tensor) or relevance.dim() < 3:
        shape = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance).__name__
        raise ValueError(f"relevance must be shaped (N, C, *S) with at least one spatial axis, got {shape}")
    grid = tuple(relevance.shape[2:])
    mask = mask.detach() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError(f"the mask must be bool (or 0/1 integers), got {mask.dtype}")
        mask = mask != 0
    samples = relevance.shape[0]
    if tuple(mask.shape) == grid:
        mask = mask.expand(samples, *grid)
    elif tuple(mask.shape) != (samples, *grid):
        raise DataError(f"the mask has shape {tuple(mask.shape)}; the relevance grid needs {grid} or "
                        f"{(samples, *grid)}")
    voxels = relevance.detach().sum(1).reshape(samples, -1)
    return voxels, mask.reshape(samples, -1).to(voxels.device)
