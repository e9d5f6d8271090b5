"""A synthetic Alzheimer's cohort built from a real brain: the Colin27 T1 template (``ch2bet``) and the
AAL atlas, with atrophy planted in chosen regions of the "AD" subjects, random anatomy (affine jitter
and a smooth elastic deformation), a smooth bias field and MR noise for everyone.

One subject, on the cohort grid (``resolution_mm``, the template's brain bounding box + margin):

1. **Severity.** AD subjects draw a severity ``s`` in ``ad_severity`` (controls in
   ``control_severity``); each atrophy region gets ``s`` plus a uniform jitter of ±``region_jitter``,
   kept in the group's range.
2. **Atrophy, in template space**, for each region with severity ``s``:

   - *tissue loss*: intensity moves toward the template's CSF intensity by the fraction
     ``s · profile``, where the profile is the region mask smoothed with a Gaussian (σ = 2 mm) and
     scaled to peak 1: loss is strongest in the region's core and fades smoothly across its border;
   - *shrinkage*: a displacement field ``s · shrinkage_mm · (−∇(G_σ * mask)) / max|∇(G_σ * mask)|``
     (σ = 4 mm) moves the region's border inward by up to ``s · shrinkage_mm``; the surroundings
     (white matter, CSF) stretch into the freed space, and the label image follows, so the region's
     measured volume drops with ``s``;
   - *ventricle enlargement*: AAL has no ventricle label, so CSF is found from the T1 intensities.
     3-class k-means on the template's brain intensities gives the CSF/grey-matter threshold (the
     midpoint of the two darker centres); CSF voxels are interior brain voxels (at least 4 mm from the
     brain's outer surface, so that the dark rim of the skull-stripped brain does not count) below it.
     Near the region (weight ``exp(-d²/2λ²)``, λ = 8 mm from its border) this CSF grows by
     ``s · ventricle_enlargement_mm`` into the adjacent tissue, with partial-volume edges. The CSF
     intensity that tissue moves toward is the median of pure CSF (those voxels eroded by 2 mm) in the
     1 mm template; outside the brain the template counts as CSF too, so tissue pulled away from the
     brain's surface leaves CSF behind.
   Every subject, AD or control, also loses a little tissue everywhere (``age_atrophy``: a fraction
   ``a·(1 + tanh f)/2`` toward CSF, ``f`` a smooth random field): normal ageing, which gives the
   controls a baseline in every region (so that a gain, AD over controls, is defined everywhere).
3. **Anatomy**: a random affine about the brain's centre (rotation ≤ ``max_rotation_deg``,
   translation ≤ ``max_translation_mm``, scale ``1 ± max_scale`` per axis) plus a smooth elastic
   displacement (``lrp.neuro.deformation.smooth_random_field``, RMS ``deformation_mm`` per axis,
   smoothness ``deformation_smoothness_mm``). The atrophied template and the atlas are sampled once
   through the composed transform (trilinear; nearest neighbour for labels); the deformed atlas gives
   the region volumes. The skull-strip mask is the deformed template brain mask: atrophy changes what
   lies inside the brain, not its outline.
4. **No global shortcut** (``match_histogram``): the brain's intensities are rearranged, rank for
   rank, into exactly the histogram of the same deformed brain without atrophy, a monotone intensity
   standardisation in the spirit of Nyúl et al. (2000). Atrophy darkens ~2% of the brain, which
   otherwise lowers the lower percentiles and widens the spread enough for a logistic regression on
   whole-brain statistics to tell the groups apart (84% cross-validated on 120 subjects at 3 mm); with
   it, the groups' whole-brain mean, spread and percentiles have one distribution (checked in
   ``tests/test_synthetic.py``), while every local contrast keeps its sign.
5. **Scanner**: a smooth multiplicative bias field ``exp(b)`` (``b`` with standard deviation
   ``bias_strength``), Rician (or Gaussian) noise of standard deviation ``noise_std`` × the white-matter
   intensity, background outside the brain set to 0, then min-max normalisation to [0, 1] per volume,
   as Böhle et al. (2019) did.

Subject ``k`` (``sub-0000``, ``sub-0001``, ...) depends only on the spec (not on ``n_subjects``) and
``k``: its random numbers come from ``numpy.random.SeedSequence([seed, k])``, and its group from the
low-discrepancy sequence ``label_k = floor((k+1)·f) - floor(k·f)`` (``f = ad_fraction``), so every
prefix of the cohort holds the AD fraction as closely as integers allow (0.5: HC, AD, HC, AD, ...).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from ..errors import DataError
from ..files import atomic_path, write_text
from .atlas import Atlas, load_atlas, load_template
from .deformation import grid_axes, pull_back_positions, random_affine, sample, smooth_random_field
from .io import load_image, save_image

__all__ = ["DEFAULT_ATROPHY_REGIONS", "GROUPS", "CohortSpec", "CohortTemplate", "SyntheticSubject", "generate_cohort",
           "prepare_template", "synthesize_subject"]

DEFAULT_ATROPHY_REGIONS: tuple[str, ...] = ("Hippocampus_L", "Hippocampus_R", "Amygdala_L", "Amygdala_R",
                                            "ParaHippocampal_L", "ParaHippocampal_R")
"""AAL regions that atrophy in the AD group by default (medial temporal lobe, both hemispheres)."""
GROUPS: tuple[str, str] = ("HC", "AD")
"""Group names by label: 0 = healthy control, 1 = Alzheimer's disease."""

GENERATOR_VERSION = 2
"""Changes whenever the algorithm changes, so files written by another version are regenerated."""
_LOSS_SIGMA_MM = 2.0
_SHRINK_SIGMA_MM = 4.0
_PROXIMITY_MM = 8.0
_SURFACE_EXCLUSION_MM = 4.0
_KMEANS_SAMPLE = 200_000


@dataclass(frozen=True)
class CohortSpec:
    """Everything that defines a synthetic cohort (see the module docstring for the model).

    n_subjects, ad_fraction:   cohort size and share of AD subjects.
    resolution_mm:             voxel size of the cohort grid, 1 to 4 (3 mm: 56×68×58 voxels).
    atrophy_regions:           AAL region names that atrophy in AD.
    ad_severity, control_severity: ``(low, high)`` severity range per group; a severity is the peak
                               fraction of tissue lost toward CSF intensity (0 = none, 1 = all).
    age_atrophy, age_smoothness_mm: range of a mild, spatially smooth tissue loss everywhere in the brain,
                               for every subject of both groups (the normal ageing controls show too).
    region_jitter:             per-region deviation (±, uniform) from the subject's severity.
    shrinkage_mm:              inward motion of a region's border at severity 1.
    ventricle_enlargement_mm:  growth of nearby CSF into tissue at severity 1.
    deformation_mm, deformation_smoothness_mm: RMS per axis and Gaussian width of the elastic field.
    max_rotation_deg, max_translation_mm, max_scale: bounds of the affine jitter (scale ``1 ± max_scale``).
    noise, noise_std:          ``"rician"`` or ``"gaussian"``, standard deviation × white-matter intensity.
    bias_strength, bias_smoothness_mm: standard deviation of the log bias field and its Gaussian width.
    match_histogram:           remove the whole-brain intensity shortcut (module docstring, step 4).
    margin_mm:                 space around the template's brain on the grid.
    seed:                      subject ``k`` draws from ``SeedSequence([seed, k])``.
    """

    n_subjects: int = 120
    ad_fraction: float = 0.5
    resolution_mm: float = 3.0
    atrophy_regions: tuple[str, ...] = DEFAULT_ATROPHY_REGIONS
    ad_severity: tuple[float, float] = (0.3, 0.7)
    control_severity: tuple[float, float] = (0.0, 0.0)
    age_atrophy: tuple[float, float] = (0.0, 0.1)
    age_smoothness_mm: float = 20.0
    region_jitter: float = 0.05
    shrinkage_mm: float = 2.0
    ventricle_enlargement_mm: float = 4.0
    deformation_mm: float = 1.5
    deformation_smoothness_mm: float = 12.0
    max_rotation_deg: float = 3.0
    max_translation_mm: float = 3.0
    max_scale: float = 0.03
    noise: Literal["rician", "gaussian"] = "rician"
    noise_std: float = 0.03
    bias_strength: float = 0.1
    bias_smoothness_mm: float = 50.0
    match_histogram: bool = True
    margin_mm: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.atrophy_regions, str):
            raise TypeError(f"atrophy_regions must be a sequence of region names, got the string "
                             f"{self.atrophy_regions!r}")
        object.__setattr__(self, "atrophy_regions", tuple(self.atrophy_regions))
        for field in fields(self):
            if field.type in ("float", float):
                object.__setattr__(self, field.name, _number(field.name, getattr(self, field.name)))
        object.__setattr__(self, "ad_severity", _range("ad_severity", self.ad_severity))
        object.__setattr__(self, "control_severity", _range("control_severity", self.control_severity))
        object.__setattr__(self, "age_atrophy", _range("age_atrophy", self.age_atrophy))
        if isinstance(self.n_subjects, bool) or not isinstance(self.n_subjects, int) or self.n_subjects < 1:
            raise ValueError(f"n_subjects must be a positive integer, got {self.n_subjects!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.ad_fraction <= 1.0:
            raise ValueError(f"ad_fraction must lie in [0, 1], got {self.ad_fraction}")
        if not 1.0 <= self.resolution_mm <= 4.0:
            raise ValueError(f"resolution_mm must lie in [1, 4], got {self.resolution_mm}")
        if not self.atrophy_regions or not all(isinstance(name, str) for name in self.atrophy_regions):
            raise ValueError(f"atrophy_regions must be a non-empty sequence of region names, got "
                             f"{self.atrophy_regions!r}")
        if len(set(self.atrophy_regions)) != len(self.atrophy_regions):
            raise ValueError(f"atrophy_regions holds duplicates: {self.atrophy_regions!r}")
        if self.noise not in ("rician", "gaussian"):
            raise ValueError(f"noise must be 'rician' or 'gaussian', got {self.noise!r}")
        if not 0.0 <= self.max_scale < 0.5:
            raise ValueError(f"max_scale must lie in [0, 0.5), got {self.max_scale}")
        for name in ("region_jitter", "shrinkage_mm", "ventricle_enlargement_mm", "deformation_mm",
                     "max_rotation_deg", "max_translation_mm", "noise_std", "bias_strength", "margin_mm"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("deformation_smoothness_mm", "bias_smoothness_mm"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def _number(name: str, value: object) -> float:
    """``value`` as a float; TypeError naming ``name`` unless it is a real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _range(name: str, value: Sequence[float]) -> tuple[float, float]:
    """``value`` as ``(low, high)`` with ``0 <= low <= high <= 1``; ValueError naming ``name`` otherwise."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from error
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= low <= high <= 1, got {value!r}")
    return low, high


# -- the template on the cohort grid ----------------------------------------------------------------
class _Tissue(NamedTuple):
    """Template intensities: pure CSF, grey and white matter, and the CSF/grey-matter threshold."""

    csf: float
    grey: float
    white: float
    csf_threshold: float


@dataclass(frozen=True)
class _RegionAtrophy:
    """Precomputed atrophy fields of one region, inside ``box`` (slices of the cohort grid).

    profile:   (bx, by, bz) tissue-loss profile, peak 1.
    shrink:    (3, bx, by, bz) unit inward-shrinking displacement, in voxels per mm of border motion.
    proximity: (bx, by, bz) weight of ventricle enlargement, 1 inside the region, exp(-d²/2λ²) outside.
    """

    name: str
    label: int
    box: tuple[slice, slice, slice]
    profile: np.ndarray
    shrink: np.ndarray
    proximity: np.ndarray


@dataclass(frozen=True)
class CohortTemplate:
    """The template and atlas on the cohort grid, with what atrophy needs; shared by all subjects.

    atlas:         the AAL atlas on the cohort grid (X, Y, Z), whose affine is the grid's.
    t1:            (X, Y, Z) float32 T1, with the CSF intensity outside the brain (so that tissue pulled
                   away from the brain's surface leaves CSF behind, not background).
    brain:         (X, Y, Z) bool brain mask (the skull-strip mask, applied to every subject).
    csf_distance:  (X, Y, Z) float32 distance (mm) to the nearest interior CSF voxel (inf if none).
    tissue:        CSF, grey- and white-matter intensities and the CSF threshold of the template.
    centre_mm:     the brain's centre of mass (world mm), the centre of the affine jitter.
    digest:        hash of the grid, template and atlas (part of every subject's fingerprint).
    """

    resolution_mm: float
    margin_mm: float
    atrophy_regions: tuple[str, ...]
    atlas: Atlas
    t1: np.ndarray
    brain: np.ndarray
    csf_distance: np.ndarray
    tissue: _Tissue
    centre_mm: np.ndarray
    regions: tuple[_RegionAtrophy, ...]
    atrophy_box: tuple[slice, slice, slice]
    digest: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """The cohort grid's shape (X, Y, Z)."""
        return self.atlas.shape

    @property
    def affine(self) -> np.ndarray:
        """The cohort grid's voxel-to-mm affine (4, 4), axis-aligned."""
        return self.atlas.affine


def prepare_template(spec: CohortSpec, directory: str | os.PathLike | None = None) -> CohortTemplate:
    """Resample Colin27 (``ch2bet``) and AAL to the cohort grid and precompute the atrophy fields.

    The grid has ``spec.resolution_mm`` voxels, axes aligned with world (MNI) axes, and covers the
    template's brain bounding box plus ``spec.margin_mm`` on every side. The T1 is smoothed with a
    Gaussian (FWHM = the target voxel size) before trilinear resampling, against aliasing; the atlas is
    resampled by nearest neighbour. ``directory`` holds the template files (default: the installed
    ``mricron-data``). Raises DataError for region names the atlas does not have.
    """
    source_atlas = load_atlas("aal", directory=directory)
    region_ids = [source_atlas.region_id(name) for name in spec.atrophy_regions]
    t1_image = load_template("ch2bet", directory)
    source = np.asarray(t1_image.dataobj, dtype=np.float32)
    shape, affine = _cohort_grid(source > 0, t1_image.affine, spec.resolution_mm, spec.margin_mm)
    tissue = _tissue_intensities(source, float(np.linalg.norm(t1_image.affine[:3, :3], axis=0).min()))
    t1, brain = _resample_t1(source, t1_image.affine, shape, affine, tissue.csf)
    atlas = source_atlas.resample_to((shape, affine))
    r = spec.resolution_mm
    csf_distance = _csf_distance(t1, brain, tissue, r)
    regions = tuple(_region_atrophy(name, label, atlas.data, r) for name, label in zip(spec.atrophy_regions, region_ids))
    atrophy_box = tuple(slice(min(reg.box[a].start for reg in regions), max(reg.box[a].stop for reg in regions))
                        for a in range(3))
    centre_mm = (affine @ np.append(ndimage.center_of_mass(brain), 1.0))[:3]
    digest = hashlib.sha256(json.dumps(atlas.labels, sort_keys=True).encode())
    for part in (affine, t1, atlas.data):
        digest.update(np.ascontiguousarray(part).tobytes())
    return CohortTemplate(resolution_mm=r, margin_mm=spec.margin_mm, atrophy_regions=spec.atrophy_regions,
                          atlas=atlas, t1=t1, brain=brain, csf_distance=csf_distance, tissue=tissue,
                          centre_mm=centre_mm, regions=regions, atrophy_box=atrophy_box, digest=digest.hexdigest())


def _cohort_grid(brain: np.ndarray, source_affine: np.ndarray, resolution_mm: float,
                 margin_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the axis-aligned grid covering ``brain``'s world bounding box + margin."""
    corners = np.array(np.meshgrid(*[[i.min(), i.max()] for i in np.nonzero(brain)], indexing="ij")).reshape(3, -1)
    world = source_affine[:3, :3] @ corners + source_affine[:3, 3:]
    low, high = world.min(axis=1) - margin_mm, world.max(axis=1) + margin_mm
    shape = tuple(math.ceil((h - lo) / resolution_mm) + 1 for lo, h in zip(low, high))
    affine = np.diag([resolution_mm] * 3 + [1.0])
    affine[:3, 3] = low
    return shape, affine


def _resample_t1(source: np.ndarray, source_affine: np.ndarray, shape: tuple[int, int, int],
                 affine: np.ndarray, background: float) -> tuple[np.ndarray, np.ndarray]:
    """(T1, brain mask) on the grid: Gaussian anti-aliasing (FWHM = target voxel), then trilinear;
    ``background`` outside the brain mask."""
    source_voxel = np.linalg.norm(source_affine[:3, :3], axis=0)
    target_voxel = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = np.sqrt(np.clip(target_voxel**2 - source_voxel**2, 0.0, None)) / (2 * np.sqrt(2 * np.log(2)))
    matrix = np.linalg.inv(source_affine) @ affine

    def resample(volume: np.ndarray) -> np.ndarray:
        smoothed = ndimage.gaussian_filter(volume, sigma / source_voxel)
        return ndimage.affine_transform(smoothed, matrix[:3, :3], matrix[:3, 3], output_shape=shape, order=1)

    brain = resample((source > 0).astype(np.float32)) > 0.5
    t1 = np.where(brain, resample(source), background).astype(np.float32)
    return t1, brain


def _tissue_intensities(source: np.ndarray, voxel_mm: float) -> _Tissue:
    """CSF, grey- and white-matter intensities of the template at its own resolution.

    Grey and white matter are the upper two centres of 3-class k-means on the brain's intensities; the
    CSF threshold is the midpoint of the lowest two. The CSF intensity is the median of pure CSF: interior
    voxels (``_SURFACE_EXCLUSION_MM`` inside the brain) below the threshold, eroded by 2 mm against
    partial volumes (the k-means centre would mix in dark grey matter)."""
    brain = source > 0
    values = source[brain]
    step = max(1, values.size // _KMEANS_SAMPLE)
    kmeans = KMeans(n_clusters=3, n_init=3, random_state=0).fit(values[::step, None].astype(np.float64))
    dark, grey, white = np.sort(kmeans.cluster_centers_[:, 0])
    threshold = 0.5 * (dark + grey)
    csf = _interior(brain, voxel_mm) & (source < threshold)
    core = ndimage.binary_erosion(csf, iterations=max(1, round(2.0 / voxel_mm)))
    if not core.any():
        raise DataError("the template has no CSF darker than its grey matter inside the brain")
    return _Tissue(csf=float(np.median(source[core])), grey=float(grey), white=float(white),
                   csf_threshold=float(threshold))


def _interior(brain: np.ndarray, voxel_mm: float) -> np.ndarray:
    """``brain`` eroded by ``_SURFACE_EXCLUSION_MM`` (at least one voxel)."""
    return ndimage.binary_erosion(brain, iterations=max(1, round(_SURFACE_EXCLUSION_MM / voxel_mm)))


def _csf_distance(t1: np.ndarray, brain: np.ndarray, tissue: _Tissue, resolution_mm: float) -> np.ndarray:
    """Distance (mm) to the nearest interior CSF voxel of the grid: darker than ``tissue.csf_threshold``
    and at least ``_SURFACE_EXCLUSION_MM`` inside the brain. float32 (X, Y, Z), inf everywhere if none."""
    csf = _interior(brain, resolution_mm) & (t1 < tissue.csf_threshold)
    if not csf.any():
        return np.full(t1.shape, np.inf, dtype=np.float32)
    return ndimage.distance_transform_edt(~csf, sampling=resolution_mm).astype(np.float32)


def _region_atrophy(name: str, label: int, labels: np.ndarray, resolution_mm: float) -> _RegionAtrophy:
    """Tissue-loss profile, shrinking displacement and ventricle proximity of one region (see the module
    docstring), inside its bounding box plus 3 widths of the widest kernel."""
    mask = labels == label
    if not mask.any():
        raise DataError(f"atlas region {name} (id {label}) has no voxel on the {resolution_mm} mm cohort grid")
    reach = math.ceil(3 * max(_LOSS_SIGMA_MM, _SHRINK_SIGMA_MM, _PROXIMITY_MM) / resolution_mm) + 1
    where = np.nonzero(mask)
    box = tuple(slice(max(0, int(i.min()) - reach), min(size, int(i.max()) + reach + 1))
                for i, size in zip(where, labels.shape))
    local = mask[box].astype(np.float32)
    profile = ndimage.gaussian_filter(local, _LOSS_SIGMA_MM / resolution_mm)
    profile /= profile.max()
    smooth = ndimage.gaussian_filter(local, _SHRINK_SIGMA_MM / resolution_mm)
    gradient = np.stack(np.gradient(smooth))
    shrink = -gradient / (np.linalg.norm(gradient, axis=0).max() * resolution_mm)
    distance = ndimage.distance_transform_edt(local == 0, sampling=resolution_mm)
    proximity = np.exp(-0.5 * (distance / _PROXIMITY_MM) ** 2)
    return _RegionAtrophy(name=name, label=label, box=box, profile=profile, shrink=shrink.astype(np.float32),
                          proximity=proximity.astype(np.float32))


# -- one subject ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject on the cohort grid.

    name, index: ``sub-0000`` and 0, ...; label: 0 = HC, 1 = AD.
    image:    (X, Y, Z) float32 T1 in [0, 1] (min-max normalised), 0 outside the brain.
    labels:   (X, Y, Z) int32 the subject's deformed atlas (label ids of ``CohortTemplate.atlas``).
    severity: true atrophy severity per atrophy region; volume_mm3: region volumes on ``labels``.
    """

    name: str
    index: int
    label: int
    image: np.ndarray
    labels: np.ndarray
    severity: dict[str, float]
    volume_mm3: dict[str, float]

    @property
    def group(self) -> str:
        """``"HC"`` or ``"AD"``."""
        return GROUPS[self.label]


def _subject_name(index: int) -> str:
    """``sub-0000``, ``sub-0001``, ... (wider beyond 9999)."""
    return f"sub-{index:04d}"


def _subject_label(index: int, ad_fraction: float) -> int:
    """1 (AD) or 0 (HC): ``floor((index+1)·f) - floor(index·f)``, so every prefix of the cohort holds
    the fraction ``f`` of AD subjects as closely as integers allow, whatever the cohort size."""
    return math.floor((index + 1) * ad_fraction) - math.floor(index * ad_fraction)


def synthesize_subject(template: CohortTemplate, spec: CohortSpec, index: int, *,
                       atrophy: bool = True) -> SyntheticSubject:
    """Subject ``index`` of the cohort ``spec`` (independent of ``spec.n_subjects``), in memory.

    ``template`` must come from ``prepare_template(spec)`` (same resolution and atrophy regions).
    ``atrophy=False`` gives the same subject undiseased: the same anatomy, bias field and noise, with
    every severity 0 (the ground truth of ``lrp demo``: what the subject would look like without atrophy).
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    _check_template(template, spec)
    index = int(index)
    label = _subject_label(index, spec.ad_fraction)
    severity_rng, anatomy_rng, bias_rng, noise_rng, age_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence([spec.seed, index]).spawn(5))
    severities = _draw_severities(severity_rng, spec.ad_severity if label else spec.control_severity,
                                  spec.region_jitter, len(template.regions))
    if not atrophy:
        severities = np.zeros_like(severities)
    atrophied, shrink = _atrophy(template, spec, severities)
    axes = grid_axes(template.shape, template.affine)
    if atrophy:
        _age(atrophied, template, spec, age_rng, axes)
    pose = random_affine(anatomy_rng, template.centre_mm, max_rotation_deg=spec.max_rotation_deg,
                         max_translation_mm=spec.max_translation_mm, max_scale=spec.max_scale)
    elastic = smooth_random_field(anatomy_rng, axes, sigma_mm=spec.deformation_smoothness_mm,
                                  amplitude=spec.deformation_mm, components=3)
    world = pull_back_positions(axes, pose, elastic)
    healthy_voxels = (world - template.affine[:3, 3, None, None, None]) / spec.resolution_mm
    voxels = _displaced(healthy_voxels, shrink, template.atrophy_box)

    image = sample(atrophied, voxels, order=1)
    labels = sample(template.atlas.data, voxels, order=0)
    brain = sample(template.brain.astype(np.float32), healthy_voxels, order=1) > 0.5
    if spec.match_histogram:
        image[brain] = _match_histogram(image[brain], sample(template.t1, healthy_voxels[:, brain], order=1))
    bias = np.exp(smooth_random_field(bias_rng, axes, sigma_mm=spec.bias_smoothness_mm,
                                      amplitude=spec.bias_strength)[0])
    image = _noisy(image * bias, noise_rng, spec.noise, spec.noise_std * template.tissue.white)
    image[~brain] = 0.0
    image = _min_max(image)

    voxel_mm3 = spec.resolution_mm**3
    return SyntheticSubject(
        name=_subject_name(index), index=index, label=label, image=image, labels=labels,
        severity={region.name: float(s) for region, s in zip(template.regions, severities)},
        volume_mm3={region.name: float(np.count_nonzero(labels == region.label) * voxel_mm3)
                    for region in template.regions})


def _age(atrophied: np.ndarray, template: CohortTemplate, spec: CohortSpec, rng: np.random.Generator,
         axes: Sequence[np.ndarray]) -> None:
    """Mild age-like tissue loss everywhere in the brain, in place: intensity moves toward CSF by
    ``a · (1 + tanh f) / 2`` with ``a`` uniform in ``spec.age_atrophy`` and ``f`` a smooth random field
    (RMS 1, smoothness ``age_smoothness_mm``) — the same for both groups, so it tells them nothing apart."""
    amount = rng.uniform(*spec.age_atrophy)
    if amount <= 0:
        return
    field = smooth_random_field(rng, axes, sigma_mm=spec.age_smoothness_mm, amplitude=1.0)[0]
    loss = (amount * (1.0 + np.tanh(field)) / 2.0).astype(np.float32)
    inside = template.brain
    atrophied[inside] += loss[inside] * (template.tissue.csf - atrophied[inside])


def _check_template(template: CohortTemplate, spec: CohortSpec) -> None:
    """ValueError unless ``template`` was prepared for ``spec``'s grid and atrophy regions."""
    for name in ("resolution_mm", "margin_mm", "atrophy_regions"):
        if getattr(template, name) != getattr(spec, name):
            raise ValueError(f"the template was prepared for {name}={getattr(template, name)!r}, but the spec has "
                             f"{getattr(spec, name)!r}; prepare it with prepare_template(spec)")


def _draw_severities(rng: np.random.Generator, severity_range: tuple[float, float], jitter: float,
                     n_regions: int) -> np.ndarray:
    """(n_regions,) a subject severity uniform in the range, plus ±jitter per region, kept in the range."""
    low, high = severity_range
    subject = rng.uniform(low, high)
    return np.clip(subject + rng.uniform(-jitter, jitter, n_regions), low, high)


def _atrophy(template: CohortTemplate, spec: CohortSpec, severities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(atrophied T1 (X, Y, Z) float32, shrinking displacement (3, *atrophy box) in voxels).

    Each region's tissue loss and ventricle growth are blend weights toward CSF intensity, combined over
    regions by their maximum and with each other as independent fractions; displacements add up.
    """
    r = spec.resolution_mm
    outer = template.atrophy_box
    box_shape = tuple(s.stop - s.start for s in outer)
    loss = np.zeros(box_shape, np.float32)
    growth = np.zeros(box_shape, np.float32)
    shrink = np.zeros((3, *box_shape), np.float32)
    for region, severity in zip(template.regions, severities):
        inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(region.box, outer))
        distance = template.csf_distance[region.box]
        reach = severity * spec.ventricle_enlargement_mm
        covered = np.where(distance > 0, np.clip((reach + r - distance) / r, 0.0, 1.0), 0.0)
        np.maximum(loss[inner], severity * region.profile, out=loss[inner])
        np.maximum(growth[inner], region.proximity * covered, out=growth[inner])
        shrink[(slice(None), *inner)] += (severity * spec.shrinkage_mm) * region.shrink
    weight = (1.0 - (1.0 - loss) * (1.0 - growth)) * template.brain[outer]
    atrophied = template.t1.copy()
    atrophied[outer] += weight * (template.tissue.csf - atrophied[outer])
    return atrophied, shrink


def _match_histogram(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The values of ``reference`` (n,) rearranged in the order of ``values`` (n,): the result has
    exactly ``reference``'s histogram and ``values``' ranks (a monotone intensity mapping)."""
    matched = np.empty_like(reference)
    matched[np.argsort(values, kind="stable")] = np.sort(reference)
    return matched


def _displaced(voxels: np.ndarray, displacement: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """``voxels`` (3, X, Y, Z) plus ``displacement`` (3, *box), sampled trilinearly at ``voxels`` where they
    fall inside ``box`` (the displacement is zero elsewhere). A new array."""
    start = np.array([s.start for s in box], dtype=float)[:, None]
    stop = np.array([s.stop - 1 for s in box], dtype=float)[:, None]
    flat = voxels.reshape(3, -1).copy()
    inside = np.all((flat >= start) & (flat <= stop), axis=0)
    local = flat[:, inside] - start
    for axis in range(3):
        flat[axis, inside] += sample(displacement[axis], local, order=1)
    return flat.reshape(voxels.shape)


def _noisy(image: np.ndarray, rng: np.random.Generator, kind: str, std: float) -> np.ndarray:
    """``image`` with Rician (magnitude of complex Gaussian) or Gaussian noise of standard deviation
    ``std``, clipped at 0. float32, same shape."""
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * std
    if kind == "rician":
        return np.hypot(real, rng.standard_normal(image.shape, dtype=np.float32) * std)
    return np.maximum(real, 0.0)


def _min_max(image: np.ndarray) -> np.ndarray:
    """``image`` scaled to [0, 1] (float32); a constant image becomes 0."""
    low, high = float(image.min()), float(image.max())
    return ((image - low) / (high - low) if high > low else np.zeros_like(image)).astype(np.float32)


# -- the cohort on disk -----------------------------------------------------------------------------
def generate_cohort(spec: CohortSpec, out_dir: str | os.PathLike, *, progress: bool = True,
                    template_dir: str | os.PathLike | None = None,
                    template: CohortTemplate | None = None) -> pd.DataFrame:
    """Write the cohort ``spec`` to ``out_dir`` and return its manifest.

    Files (each written atomically):

    - ``images/<subject>.nii.gz``: float32 T1 in [0, 1] on the cohort grid; ``images/<subject>.json``
      beside it records the subject's fingerprint (spec and template hash, voxel hash) and values;
    - ``atlas.nii.gz``: the AAL atlas on the same grid (nearest neighbour, int16);
    - ``manifest.csv``: ``subject, path`` (relative to ``out_dir``), ``label`` (0 = HC, 1 = AD),
      ``group``, ``atrophy_<Region>`` (true severity), ``volume_mm3_<Region>`` (on the subject's
      deformed atlas), ``seed``; one row per subject;
    - ``ground_truth.csv``: ``region, planted, mean_severity_ad, mean_severity_hc``, one row per atlas
      region (severities are 0 outside the planted regions).

    Re-running is deterministic and resumable: a subject whose image and record exist, read back intact
    and match the spec is kept; any other (missing, corrupt, other spec) is regenerated. Files of
    subjects beyond ``n_subjects`` (from a larger earlier run) are left alone.
    ``template_dir``: folder of ``ch2bet.nii.gz`` and the AAL atlas (default: the installed mricron-data).
    ``template``: a ``prepare_template(spec)`` result to reuse (saves its preparation, ~2 s).
    """
    if template is None:
        template = prepare_template(spec, template_dir)
    _check_template(template, spec)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(spec, template)
    save_image(template.atlas.data, template.atlas.image, out / "atlas.nii.gz", dtype=np.int16)
    records = [_ensure_subject(template, spec, index, out, fingerprint)
               for index in tqdm(range(spec.n_subjects), disable=not progress, desc="synthetic cohort",
                                 unit="subject")]
    manifest = _manifest(records, spec)
    with atomic_path(out / "manifest.csv") as temporary:
        manifest.to_csv(temporary, index=False)
    with atomic_path(out / "ground_truth.csv") as temporary:
        _ground_truth(manifest, template, spec).to_csv(temporary, index=False)
    return manifest


def _fingerprint(spec: CohortSpec, template: CohortTemplate) -> str:
    """Hash of everything a subject depends on: the spec without ``n_subjects``, the template and the
    generator version."""
    settings = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "n_subjects"}
    text = json.dumps({"version": GENERATOR_VERSION, "template": template.digest, "spec": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _voxel_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


def _ensure_subject(template: CohortTemplate, spec: CohortSpec, index: int, out: Path, fingerprint: str) -> dict:
    """The record of subject ``index``: read back when its files are intact and current, otherwise
    generated and written (image first, record second, so a record always describes a complete image)."""
    name = _subject_name(index)
    image_path, record_path = out / "images" / f"{name}.nii.gz", out / "images" / f"{name}.json"
    record = _intact_record(image_path, record_path, template, fingerprint)
    if record is not None:
        return record
    subject = synthesize_subject(template, spec, index)
    save_image(subject.image, template.atlas.image, image_path)
    record = {"subject": name, "path": f"images/{name}.nii.gz", "label": subject.label, "group": subject.group,
              "severity": subject.severity, "volume_mm3": subject.volume_mm3, "fingerprint": fingerprint,
              "voxels_sha256": _voxel_hash(subject.image)}
    write_text(record_path, json.dumps(record, indent=1))
    return record


def _intact_record(image_path: Path, record_path: Path, template: CohortTemplate, fingerprint: str) -> dict | None:
    """The subject's stored record if it matches ``fingerprint`` and the image reads back with the
    recorded voxels on the template grid; None otherwise (missing, corrupt or stale files)."""
    if not (image_path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
            return None
        image = load_image(image_path)  # reads the voxels: corrupt files raise DataError
    except (OSError, ValueError):  # unreadable, undecodable or malformed: regenerate
        return None
    voxels = np.asanyarray(image.dataobj)
    intact = (voxels.dtype == np.float32 and voxels.shape == template.shape
              and np.allclose(image.affine, template.affine, atol=1e-5)
              and _voxel_hash(voxels) == record.get("voxels_sha256"))
    return record if intact else None


def _manifest(records: list[dict], spec: CohortSpec) -> pd.DataFrame:
    """One row per subject: subject, path, label, group, atrophy_<R>..., volume_mm3_<R>..., seed."""
    rows = []
    for record in records:
        row = {key: record[key] for key in ("subject", "path", "label", "group")}
        row.update({f"atrophy_{region}": record["severity"][region] for region in spec.atrophy_regions})
        row.update({f"volume_mm3_{region}": record["volume_mm3"][region] for region in spec.atrophy_regions})
        row["seed"] = spec.seed
        rows.append(row)
    return pd.DataFrame(rows)


def _ground_truth(manifest: pd.DataFrame, template: CohortTemplate, spec: CohortSpec) -> pd.DataFrame:
    """One row per atlas region: region, planted, mean_severity_ad, mean_severity_hc."""
    rows = []
    for region in template.atlas.names:
        planted = region in spec.atrophy_regions
        row = {"region": region, "planted": planted}
        for group in ("AD", "HC"):
            members = manifest[manifest["group"] == group]
            mean = members[f"atrophy_{region}"].mean() if planted else 0.0
            row[f"mean_severity_{group.lower()}"] = float(mean) if len(members) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
