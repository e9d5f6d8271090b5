"""The synthetic Alzheimer's cohort (lrp.neuro.synthetic) and its random fields (lrp.neuro.deformation).

Small cohorts on the 4 mm grid; the template and a 40-subject cohort are built once per module."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.stats
from conftest import TEMPLATES, needs_templates
from nibabel.processing import resample_from_to
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lrp.errors import DataError
from lrp.neuro.atlas import Atlas
from lrp.neuro.deformation import grid_axes, random_affine, smooth_random_field
from lrp.neuro.synthetic import (
    DEFAULT_ATROPHY_REGIONS,
    CohortSpec,
    generate_cohort,
    prepare_template,
    synthesize_subject,
)

SPEC = CohortSpec(n_subjects=40, resolution_mm=4.0, seed=0)
STILL = {"deformation_mm": 0.0, "max_rotation_deg": 0.0, "max_translation_mm": 0.0, "max_scale": 0.0,
         "noise_std": 0.0, "bias_strength": 0.0, "ad_severity": (0.0, 0.0), "control_severity": (0.0, 0.0),
         "age_atrophy": (0.0, 0.0)}
"""Spec changes that leave the bare template: no anatomy, scanner or atrophy randomness."""


@pytest.fixture(scope="module")
def template():
    return prepare_template(SPEC)


@pytest.fixture(scope="module")
def cohort(template):
    return [synthesize_subject(template, SPEC, index) for index in range(SPEC.n_subjects)]


def planted_mask(template) -> np.ndarray:
    return np.isin(template.atlas.data, [region.label for region in template.regions])


def whole_brain_features(image: np.ndarray) -> list[float]:
    """Mean, standard deviation and percentiles 5, 25, 50, 75, 95 of the brain's (non-zero) voxels."""
    brain = image[image > 0]
    return [brain.mean(), brain.std(), *np.percentile(brain, [5, 25, 50, 75, 95])]


def cohens_d(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(AD mean - HC mean) / pooled standard deviation, per column of ``values`` (N, F)."""
    ad, hc = values[labels == 1], values[labels == 0]
    return (ad.mean(0) - hc.mean(0)) / np.sqrt((ad.var(0, ddof=1) + hc.var(0, ddof=1)) / 2)


def read_voxels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


# -- random fields ----------------------------------------------------------------------------------
def test_smooth_random_field_has_the_requested_amplitude_and_smoothness():
    axes = [np.arange(0.0, 60.0, 4.0)] * 3
    rng = np.random.default_rng(0)
    fields = np.stack([smooth_random_field(rng, axes, sigma_mm=12.0, amplitude=2.0)[0] for _ in range(300)])
    assert fields.shape == (300, 15, 15, 15)
    pointwise_std = fields.std(axis=0)
    assert np.all(np.abs(pointwise_std - 2.0) < 0.35), (pointwise_std.min(), pointwise_std.max())
    assert abs(fields.mean()) < 0.1
    neighbours = np.corrcoef(fields[:, 5, 5, 5], fields[:, 6, 5, 5])[0, 1]  # 4 mm apart, sigma 12 mm
    assert neighbours > 0.9


def test_smooth_random_field_is_one_continuous_field_at_every_resolution():
    coarse = [np.arange(0.0, 41.0, 4.0)] * 3
    fine = [np.arange(0.0, 41.0, 2.0)] * 3
    a = smooth_random_field(np.random.default_rng(5), coarse, sigma_mm=10.0, amplitude=1.0, components=3)
    b = smooth_random_field(np.random.default_rng(5), fine, sigma_mm=10.0, amplitude=1.0, components=3)
    np.testing.assert_allclose(b[:, ::2, ::2, ::2], a, atol=1e-5)


def test_random_affine_respects_its_bounds():
    centre = np.array([10.0, -20.0, 5.0])
    for seed in range(20):
        matrix = random_affine(np.random.default_rng(seed), centre, max_rotation_deg=3.0, max_translation_mm=3.0,
                               max_scale=0.03)
        rotation, stretch = scipy.linalg.polar(matrix[:3, :3])
        angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
        assert angle <= 3.0 * np.sqrt(3) + 1e-9
        assert np.all(np.abs(np.linalg.eigvalsh(stretch) - 1) <= 0.03 + 1e-9)
        assert np.all(np.abs(matrix[:3, :3] @ centre + matrix[:3, 3] - centre) <= 3.0 + 1e-9)
    still = random_affine(np.random.default_rng(0), centre, max_rotation_deg=0, max_translation_mm=0, max_scale=0)
    np.testing.assert_allclose(still, np.eye(4), atol=1e-12)


def test_grid_axes_rejects_rotated_grids():
    with pytest.raises(ValueError, match="axis-aligned"):
        grid_axes((2, 2, 2), np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))


# -- the spec -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value", "error"), [
    ("n_subjects", 0, ValueError), ("ad_fraction", 1.5, ValueError), ("resolution_mm", 0.5, ValueError),
    ("resolution_mm", 5, ValueError), ("ad_severity", (0.7, 0.3), ValueError), ("atrophy_regions", (), ValueError),
    ("atrophy_regions", ("Hippocampus_L", "Hippocampus_L"), ValueError), ("atrophy_regions", "Hippocampus_L", TypeError),
    ("noise", "poisson", ValueError), ("seed", -1, ValueError), ("shrinkage_mm", -1.0, ValueError),
    ("bias_smoothness_mm", 0.0, ValueError), ("noise_std", "0.1", TypeError)])
def test_spec_rejects_bad_values(name, value, error):
    with pytest.raises(error, match=name):
        CohortSpec(**{name: value})


@needs_templates
def test_unknown_region_names_the_region():
    with pytest.raises(DataError, match="Hipocampus_L"):
        prepare_template(CohortSpec(resolution_mm=4.0, atrophy_regions=("Hipocampus_L",)))


@needs_templates
def test_template_of_another_spec_is_refused(template):
    with pytest.raises(ValueError, match="resolution_mm"):
        synthesize_subject(template, dataclasses.replace(SPEC, resolution_mm=3.0), 0)


# -- one subject ------------------------------------------------------------------------------------
@needs_templates
def test_still_subject_is_the_template_resampled_to_the_grid(template):
    """Without anatomy, scanner noise or atrophy, a subject is Colin27 on the cohort grid, masked and min-max
    normalised: compare with nibabel's affine-aware resampling of the same smoothed template."""
    subject = synthesize_subject(template, dataclasses.replace(SPEC, **STILL), 0)
    source = nib.load(TEMPLATES / "ch2bet.nii.gz")
    data = np.asarray(source.dataobj, dtype=np.float32)
    sigma = np.sqrt(4.0**2 - 1.0) / (2 * np.sqrt(2 * np.log(2)))  # FWHM = the 4 mm target voxel

    def on_grid(volume):
        smoothed = nib.Nifti1Image(scipy.ndimage.gaussian_filter(volume, sigma), source.affine)
        return resample_from_to(smoothed, (template.shape, template.affine), order=1).get_fdata()

    brain = on_grid((data > 0).astype(np.float32)) > 0.5
    reference = np.where(brain, on_grid(data), 0.0)
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    assert np.mean(brain == (subject.image > 0)) > 0.999
    both = brain & (subject.image > 0)
    np.testing.assert_allclose(subject.image[both], reference[both], atol=2e-3)
    np.testing.assert_array_equal(subject.labels, template.atlas.data)
    inside = np.argwhere(subject.image > 0)  # the grid is the brain's bounding box + the margin
    margin_voxels = SPEC.margin_mm / SPEC.resolution_mm
    assert np.all(inside.min(axis=0) >= margin_voxels - 1)
    assert np.all(np.array(template.shape) - 1 - inside.max(axis=0) >= margin_voxels - 1)


@needs_templates
def test_region_volume_decreases_with_severity(template):
    volumes = []
    for severity in (0.0, 0.35, 0.7, 1.0):
        spec = dataclasses.replace(SPEC, ad_severity=(severity, severity), region_jitter=0.0)
        subject = synthesize_subject(template, spec, 1)  # an AD subject: same anatomy and noise for every severity
        atlas = Atlas.from_array(subject.labels, template.affine, template.atlas.labels)
        assert subject.volume_mm3 == {name: atlas.region_volume_mm3(name) for name in spec.atrophy_regions}
        volumes.append([subject.volume_mm3[name] for name in spec.atrophy_regions])
    volumes = np.array(volumes)
    assert np.all(np.diff(volumes, axis=0) <= 0), volumes
    assert np.all(volumes[-1] < 0.85 * volumes[0]), volumes


@needs_templates
def test_atrophy_darkens_the_regions_and_widens_nearby_csf(template):
    """One AD subject (same anatomy, bias and noise) without atrophy, with atrophy, and with atrophy but no
    ventricle enlargement."""
    severe = dataclasses.replace(SPEC, ad_severity=(0.7, 0.7))
    healthy = synthesize_subject(template, dataclasses.replace(SPEC, ad_severity=(0.0, 0.0)), 1)
    atrophied = synthesize_subject(template, severe, 1)
    no_growth = synthesize_subject(template, dataclasses.replace(severe, ventricle_enlargement_mm=0.0), 1)
    planted = planted_mask(template)
    assert atrophied.image[planted].mean() < healthy.image[planted].mean() - 0.05
    ring = scipy.ndimage.binary_dilation(planted, iterations=3) & ~planted  # up to 12 mm around the regions
    dark = np.percentile(healthy.image[healthy.image > 0], 5)
    csf_voxels = [np.count_nonzero(subject.image[ring] < dark) for subject in (healthy, no_growth, atrophied)]
    assert csf_voxels[0] < csf_voxels[1] and 1.15 * csf_voxels[1] < csf_voxels[2], csf_voxels
    far = scipy.ndimage.distance_transform_edt(~planted, sampling=4.0) > 40
    assert np.abs(atrophied.image[far] - healthy.image[far]).mean() < 0.01


# -- the cohort: signal where it was planted, no global shortcut ------------------------------------------
@needs_templates
def test_planted_regions_separate_the_groups(template, cohort):
    labels = np.array([subject.label for subject in cohort])
    assert labels.sum() == len(cohort) // 2
    planted = planted_mask(template)
    regional = np.array([[subject.image[planted].mean()] for subject in cohort])
    assert cohens_d(regional, labels)[0] < -2.0
    assert roc_auc_score(labels, -regional[:, 0]) > 0.95
    severity = [np.mean(list(subject.severity.values())) for subject in cohort]
    volume = [sum(subject.volume_mm3.values()) for subject in cohort]  # despite anatomical variation
    assert scipy.stats.spearmanr(severity, volume)[0] < -0.4


@needs_templates
def test_whole_brain_statistics_do_not_separate_the_groups(cohort):
    labels = np.array([subject.label for subject in cohort])
    features = np.array([whole_brain_features(subject.image) for subject in cohort])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    accuracy = cross_val_score(classifier, features, labels, cv=folds).mean()
    assert accuracy <= 0.65, accuracy


@needs_templates
def test_atrophy_barely_moves_whole_brain_statistics(template, cohort):
    """Paired: each AD subject against the same anatomy, bias and noise without atrophy. The shift of every
    whole-brain statistic must be tiny next to the spread between subjects (without histogram matching
    the 5th percentile and the standard deviation shift by ~0.7 between-subject SDs)."""
    ad = [subject for subject in cohort if subject.label == 1]
    no_atrophy = dataclasses.replace(SPEC, ad_severity=(0.0, 0.0))
    with_atrophy = np.array([whole_brain_features(subject.image) for subject in ad])
    without = np.array([whole_brain_features(synthesize_subject(template, no_atrophy, s.index).image) for s in ad])
    spread = np.array([whole_brain_features(subject.image) for subject in cohort]).std(axis=0)
    shift = (with_atrophy - without).mean(axis=0) / spread
    assert np.all(np.abs(shift) < 0.15), shift


# -- files ------------------------------------------------------------------------------------------
@needs_templates
def test_cohort_files_and_manifest(tmp_path, template):
    spec = dataclasses.replace(SPEC, n_subjects=4)
    manifest = generate_cohort(spec, tmp_path, progress=False, template=template)
    regions = list(DEFAULT_ATROPHY_REGIONS)
    expected = (["subject", "path", "label", "group"] + [f"atrophy_{r}" for r in regions]
                + [f"volume_mm3_{r}" for r in regions] + ["seed"])
    assert list(manifest.columns) == expected
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "manifest.csv"), manifest, check_dtype=False)
    assert list(manifest["subject"]) == ["sub-0000", "sub-0001", "sub-0002", "sub-0003"]
    assert list(manifest["label"]) == [0, 1, 0, 1]
    assert list(manifest["group"]) == ["HC", "AD", "HC", "AD"]
    severities = manifest[[f"atrophy_{r}" for r in regions]].to_numpy()
    assert np.all(severities[manifest["label"] == 1] >= 0.3) and np.all(severities[manifest["label"] == 1] <= 0.7)
    assert np.all(severities[manifest["label"] == 0] <= 0.1)

    atlas_image = nib.load(tmp_path / "atlas.nii.gz")
    aal = nib.load(TEMPLATES / "aal.nii.gz")  # nearest neighbour by hand: each grid voxel's centre in AAL's voxels
    centres = np.indices(atlas_image.shape).reshape(3, -1)
    in_aal = nib.affines.apply_affine(np.linalg.inv(aal.affine) @ atlas_image.affine, centres.T).round().astype(int)
    inside = np.all((in_aal >= 0) & (in_aal < aal.shape), axis=1)
    expected_labels = np.zeros(len(in_aal), dtype=int)
    expected_labels[inside] = np.asarray(aal.dataobj)[tuple(in_aal[inside].T)]
    np.testing.assert_array_equal(np.asarray(atlas_image.dataobj).ravel(), expected_labels)
    np.testing.assert_allclose(atlas_image.affine[:3, :3], 4.0 * np.eye(3))
    for path in manifest["path"]:
        image = nib.load(tmp_path / path)
        voxels = np.asanyarray(image.dataobj)
        assert voxels.dtype == np.float32 and voxels.shape == atlas_image.shape
        np.testing.assert_allclose(image.affine, atlas_image.affine)
        assert voxels.min() == 0.0 and voxels.max() == 1.0

    truth = pd.read_csv(tmp_path / "ground_truth.csv")
    assert list(truth.columns) == ["region", "planted", "mean_severity_ad", "mean_severity_hc"]
    assert len(truth) == 116 and set(truth.loc[truth["planted"], "region"]) == set(regions)
    hippocampus = truth.set_index("region").loc["Hippocampus_L"]
    assert hippocampus["mean_severity_ad"] == pytest.approx(manifest.loc[[1, 3], "atrophy_Hippocampus_L"].mean())
    assert truth.loc[~truth["planted"], ["mean_severity_ad", "mean_severity_hc"]].eq(0).all().all()


@needs_templates
def test_cohort_is_deterministic_and_independent_of_its_size(tmp_path, template):
    small = generate_cohort(dataclasses.replace(SPEC, n_subjects=2), tmp_path / "a", progress=False)
    large = generate_cohort(dataclasses.replace(SPEC, n_subjects=3), tmp_path / "b", progress=False,
                            template=template)
    pd.testing.assert_frame_equal(small, large.iloc[:2])
    for path in small["path"]:
        np.testing.assert_array_equal(read_voxels(tmp_path / "a" / path), read_voxels(tmp_path / "b" / path))
    in_memory = synthesize_subject(template, SPEC, 2).image
    np.testing.assert_array_equal(read_voxels(tmp_path / "b" / "images" / "sub-0002.nii.gz"), in_memory)
    other_seed = synthesize_subject(template, dataclasses.replace(SPEC, seed=1), 2).image
    assert not np.array_equal(other_seed, in_memory)


@needs_templates
def test_cohort_resumes_and_repairs(tmp_path, template):
    spec = dataclasses.replace(SPEC, n_subjects=4)
    first = generate_cohort(spec, tmp_path, progress=False, template=template)
    images = tmp_path / "images"
    originals = {name: read_voxels(images / f"{name}.nii.gz") for name in first["subject"]}
    kept = os.stat(images / "sub-0000.nii.gz").st_mtime_ns
    (images / "sub-0001.nii.gz").unlink()
    corrupt = images / "sub-0002.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    replaced = nib.load(images / "sub-0003.nii.gz")  # readable, but not the recorded voxels
    nib.save(nib.Nifti1Image(np.zeros(replaced.shape, np.float32), replaced.affine), images / "sub-0003.nii.gz")

    second = generate_cohort(spec, tmp_path, progress=False, template=template)
    pd.testing.assert_frame_equal(first, second)
    assert os.stat(images / "sub-0000.nii.gz").st_mtime_ns == kept
    for name, voxels in originals.items():
        np.testing.assert_array_equal(read_voxels(images / f"{name}.nii.gz"), voxels)
    assert not [path for path in tmp_path.rglob(".*")], "temporary files were left behind"

    record = json.loads((images / "sub-0000.json").read_text())
    reseeded = generate_cohort(dataclasses.replace(spec, seed=7), tmp_path, progress=False, template=template)
    assert json.loads((images / "sub-0000.json").read_text())["fingerprint"] != record["fingerprint"]
    assert not np.array_equal(read_voxels(images / "sub-0000.nii.gz"), originals["sub-0000"])
    assert (reseeded["seed"] == 7).all()
