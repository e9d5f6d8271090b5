"""Neuroimaging toolkit: NIfTI I/O, atlases and templates, relevance statistics per atlas region and
cohort analysis. The synthetic cohort of ``lrp demo`` is :mod:`lrp.neuro.synthetic` (needs scikit-learn)."""
from .atlas import Atlas, load_atlas, load_template, template_path
from .cohort import (
    OUTCOMES,
    GroupMeans,
    assign_groups,
    gain,
    group_mean_maps,
    overlap_matrix,
    rank_regions,
    region_group_means,
    save_group_maps,
    topk_overlap,
    write_tables,
)
from .io import MissingFileError, load_image, load_volume, save_image
from .regions import region_stats, resample_map
from .statistics import CorrelationResult, covariate_correlation, region_covariate_correlations

__all__ = ["OUTCOMES", "Atlas", "CorrelationResult", "GroupMeans", "MissingFileError", "assign_groups",
           "covariate_correlation", "gain", "group_mean_maps", "load_atlas", "load_image", "load_template",
           "load_volume", "overlap_matrix", "rank_regions", "region_covariate_correlations", "region_group_means",
           "region_stats", "resample_map", "save_group_maps", "save_image", "template_path", "topk_overlap",
           "write_tables"]
