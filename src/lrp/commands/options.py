"""Options shared by ``lrp study``, ``lrp regions`` and ``lrp demo``: atlas, groups and statistics."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_analysis_options", "add_atlas_options", "analysis_overrides", "comma_list", "float_list"]


def comma_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def float_list(text: str) -> list[float]:
    """``"0,0.25,0.5"`` -> ``[0.0, 0.25, 0.5]``."""
    try:
        return [float(item) for item in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_atlas_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("atlas")
    group.add_argument("--atlas", help="built-in atlas (aal, harvard-oxford, brodmann; from Debian's mricron-data) "
                                       "or a label NIfTI (default: aal)")
    group.add_argument("--atlas-labels", help="label table of a custom atlas: AAL-style text, TSV/CSV, FSL XML")
    group.add_argument("--merge-hemispheres", action="store_true", default=None,
                       help="merge left and right labels into one area each")
    group.add_argument("--area-mapping", help="CSV/TSV (columns label, area) or JSON {area: [labels]} grouping "
                                              "labels into areas")
    group.add_argument("--min-region-voxels", type=int, help="leave out regions with fewer voxels on the grid")


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("groups and statistics")
    group.add_argument("--positive", help="disease class name (default: AD)")
    group.add_argument("--negative", help="control class name (default: HC)")
    group.add_argument("--gain-group", help="numerator group of the gain (default: TP)")
    group.add_argument("--reference-group", help="denominator group of the gain (default: HC)")
    group.add_argument("--gain-value", choices=("positive", "sum", "density", "negative", "share"),
                       help="region statistic the gain compares (default: positive, the relevance for the class)")
    group.add_argument("--top-k", type=int, help="regions per ranking and for the top-k overlap (default: 10)")
    group.add_argument("--covariate", help="manifest column to correlate with a region's relevance "
                                           "(e.g. a hippocampal volume)")
    group.add_argument("--covariate-region", help="the region whose relevance is correlated with --covariate")
    group.add_argument("--permutations", type=int, help="permutations of the correlation test (default: 10000)")
    group.add_argument("--seed", type=int, help="seed of the permutation test (default: 0)")
    group.add_argument("--no-figures", dest="figures", action="store_false", default=None,
                       help="write tables and maps only")


_ANALYSIS_FIELDS = ("atlas", "atlas_labels", "merge_hemispheres", "area_mapping", "min_region_voxels", "positive",
                    "negative", "gain_group", "gain_value", "reference_group", "top_k", "covariate", "covariate_region",
                    "permutations", "seed", "figures")


def analysis_overrides(options: argparse.Namespace) -> dict[str, Any]:
    """The atlas and analysis options given on the command line (None = not given)."""
    return {name: getattr(options, name, None) for name in _ANALYSIS_FIELDS}
