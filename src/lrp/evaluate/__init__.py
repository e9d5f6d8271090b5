"""Faithfulness and sanity metrics for explanations of N×C×L, N×C×H×W and N×C×D×H×W inputs.

- :func:`region_perturbation` / :func:`atlas_perturbation`: remove patches, cubes or atlas regions in
  order of relevance (MoRF / LeRF / random) and record the target score; AOPC (Samek et al. 2017).
- :func:`model_randomisation`: cascading parameter randomisation, Spearman correlation per layer
  (Adebayo et al. 2018).
- :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`, :func:`pointing_game`: localisation
  against a ground-truth mask.
- :func:`evaluate`: all of them for several methods on a data set, as one table.

An explainer is any ``(model, x, target) -> lrp.Explanation | Tensor``, e.g.
``functools.partial(lrp.explain, composite="epsilon-plus")`` or a method of ``lrp.methods``.
"""
from .explainers import Explainer
from .fills import FILLS, fill_values, gaussian_blur
from .localisation import (
    LOCALISATION_METRICS,
    localisation_scores,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from .perturbation import (
    ORDERS,
    RANKINGS,
    SCORES,
    PerturbationResult,
    atlas_perturbation,
    region_perturbation,
    unit_perturbation,
)
from .randomisation import LAYER_ORDERS, model_randomisation, parameter_layers, randomised_correlation, rank_correlation
from .report import METRICS, evaluate
from .units import Units, atlas_units, patch_units

__all__ = [
    "FILLS", "LAYER_ORDERS", "LOCALISATION_METRICS", "METRICS", "ORDERS", "RANKINGS", "SCORES",
    "Explainer", "PerturbationResult", "Units",
    "atlas_perturbation", "atlas_units", "evaluate", "fill_values", "gaussian_blur", "localisation_scores",
    "model_randomisation", "parameter_layers", "patch_units", "pointing_game", "randomised_correlation",
    "rank_correlation", "region_perturbation", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "unit_perturbation",
]
