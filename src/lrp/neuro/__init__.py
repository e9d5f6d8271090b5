"""Neuroimaging toolkit: NIfTI I/O, atlases and templates, and relevance statistics per atlas region."""
from .atlas import Atlas, load_atlas, load_template, template_path
from .io import MissingFileError, load_image, load_volume, save_image
from .regions import region_stats, resample_map

__all__ = ["Atlas", "MissingFileError", "load_atlas", "load_image", "load_template", "load_volume", "region_stats",
           "resample_map", "save_image", "template_path"]
