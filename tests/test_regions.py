"""lrp.neuro.regions: per-region relevance statistics against brute-force numpy masks."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEMPLATES, needs_templates

from lrp.errors import DataError
from lrp.neuro import Atlas, load_atlas, region_stats, resample_map, save_image
from lrp.neuro.regions import STATS_COLUMNS


@pytest.fixture(scope="module")
def aal() -> Atlas:
    return load_atlas("aal", directory=TEMPLATES)


@pytest.fixture(scope="module")
def aal_3mm(aal) -> Atlas:
    return aal.resample_to(((61, 73, 61), aal.affine @ np.diag([3.0, 3.0, 3.0, 1.0])))


def random_atlas(shape=(9, 8, 7), seed=0) -> Atlas:
    """Random labels 0..5 on 1.5 mm voxels, plus a named label (9) without voxels."""
    data = np.random.default_rng(seed).integers(0, 6, size=shape)
    affine = np.diag([1.5, -1.5, 1.5, 1.0])
    return Atlas.from_array(data, affine, {1: "A", 2: "B", 3: "C", 4: "D", 5: "E", 9: "Nowhere"})


def random_maps(shape, count=3, seed=1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"s{index}": rng.normal(size=shape).astype(np.float32) for index in range(count)}


def brute_force(maps: dict[str, np.ndarray], atlas_data: np.ndarray, labels: dict[int, str],
                voxel_volume: float) -> pd.DataFrame:
    """The statistics region by region, with boolean masks (obviously correct, slow)."""
    rows = []
    for subject, values in maps.items():
        values = np.asarray(values, dtype=np.float64)
        for label, name in labels.items():
            inside = values[atlas_data == label]
            rows.append({"subject": subject, "region_id": label, "region": name, "voxels": inside.size,
                         "volume_mm3": inside.size * voxel_volume, "sum": inside.sum(),
                         "density": inside.mean() if inside.size else np.nan,
                         "positive": inside[inside > 0].sum(), "negative": inside[inside < 0].sum(),
                         "share": inside.sum() / values.sum()})
    return pd.DataFrame(rows)


def assert_tables_match(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert list(ours.columns) == list(STATS_COLUMNS)
    assert list(ours["subject"]) == list(reference["subject"])
    assert list(ours["region"]) == list(reference["region"])
    np.testing.assert_array_equal(ours["region_id"], reference["region_id"])
    np.testing.assert_array_equal(ours["voxels"], reference["voxels"])
    for column in ("volume_mm3", "sum", "density", "positive", "negative", "share"):
        np.testing.assert_allclose(ours[column], reference[column], rtol=1e-9, atol=1e-9, err_msg=column)


def test_random_maps_match_brute_force():
    atlas = random_atlas()
    maps = random_maps(atlas.shape)
    table = region_stats(maps, atlas)
    assert_tables_match(table, brute_force(maps, atlas.data, atlas.labels, 1.5 ** 3))
    empty = table[table.region == "Nowhere"]
    assert (empty.voxels == 0).all() and empty.density.isna().all() and (empty["sum"] == 0).all()


def test_input_forms_agree(tmp_path):
    atlas = random_atlas()
    maps = random_maps(atlas.shape, count=2)
    reference = region_stats(maps, atlas)
    stack = np.stack(list(maps.values()))
    for variant in (region_stats(stack, atlas, subjects=list(maps)),
                    region_stats(torch.from_numpy(stack)[:, None], atlas, subjects=list(maps)),
                    region_stats({name: torch.from_numpy(m)[None, None] for name, m in maps.items()}, atlas),
                    region_stats({name: nib.Nifti1Image(m, atlas.affine) for name, m in maps.items()}, atlas),
                    region_stats({name: save_image(m, atlas.image, tmp_path / f"{name}.nii.gz")
                                  for name, m in maps.items()}, atlas)):
        pd.testing.assert_frame_equal(variant, reference)
    single = region_stats(maps["s0"], atlas)
    assert list(single.subject.unique()) == [0]
    np.testing.assert_array_equal(single["sum"], reference["sum"][: len(atlas.ids)])


def test_method_column_and_zero_map():
    atlas = random_atlas()
    table = region_stats({"zero": np.zeros(atlas.shape)}, atlas, method="lrp-epsilon")
    assert list(table.columns) == [*STATS_COLUMNS, "method"]
    assert (table["method"] == "lrp-epsilon").all()
    assert table.share.isna().all() and (table["sum"] == 0).all()


@needs_templates
def test_indicator_map_recovers_its_region(aal):
    hippocampus = aal.region_id("Hippocampus_R")
    table = region_stats({"one": (aal.data == hippocampus).astype(np.float32)}, aal).set_index("region")
    row = table.loc["Hippocampus_R"]
    assert row["sum"] == row["voxels"] == (aal.data == hippocampus).sum()
    assert row["share"] == 1.0 and row["density"] == 1.0 and row["positive"] == row["sum"] and row["negative"] == 0
    others = table.drop(index="Hippocampus_R")
    assert (others[["sum", "positive", "negative", "share", "density"]] == 0).all().all()


@needs_templates
def test_random_maps_on_aal_match_brute_force(aal_3mm):
    maps = random_maps(aal_3mm.shape, count=2)
    assert_tables_match(region_stats(maps, aal_3mm), brute_force(maps, aal_3mm.data, aal_3mm.labels, 27.0))


def test_nan_map_is_refused_naming_the_subject():
    atlas = random_atlas()
    maps = random_maps(atlas.shape, count=2)
    maps["s1"][2, 3, 4] = np.nan
    with pytest.raises(DataError, match=r"map of subject 's1' has 1 NaN or infinite voxels"):
        region_stats(maps, atlas)


def test_map_on_wrong_grid_is_refused():
    atlas = random_atlas()
    with pytest.raises(DataError, match=r"map of subject 'p7' has shape \(9, 8, 6\) but the atlas grid is \(9, 8, 7\)"):
        region_stats({"p7": np.zeros((9, 8, 6))}, atlas)
    shifted = atlas.affine.copy()
    shifted[0, 3] += 1.5
    with pytest.raises(DataError, match=r"map of subject 'p8' \(in-memory image\) is not on the atlas grid"):
        region_stats({"p8": nib.Nifti1Image(np.zeros(atlas.shape, np.float32), shifted)}, atlas)
    with pytest.raises(DataError, match="3 names for 2 maps"):
        region_stats(np.zeros((2, *atlas.shape)), atlas, subjects=["a", "b", "c"])
    with pytest.raises(DataError, match=r"map of subject 0 has shape \(9, 8, 6\)"):
        region_stats(np.zeros((2, 9, 8, 6)), atlas)
    with pytest.raises(DataError, match=r"expected a stack \(N, X, Y, Z\)"):
        region_stats(np.zeros((2, 3)), atlas)


def test_resample_map_interpolates_linear_maps_exactly():
    """A map whose value is the x coordinate in mm is linear, so trilinear resampling must reproduce the
    x coordinate of each target voxel centre (inside the source field of view)."""
    source_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    source_affine[:3, 3] = (-10.0, -12.0, -8.0)
    index = np.indices((21, 25, 17)).reshape(3, -1).T
    x_mm = nib.affines.apply_affine(source_affine, index)[:, 0].reshape(21, 25, 17).astype(np.float32)
    target_affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # flipped x, 2 mm
    target_affine[:3, 3] = (8.0, -10.0, -6.0)
    target = Atlas.from_array(np.ones((9, 11, 7), int), target_affine, {1: "all"})
    resampled = resample_map(nib.Nifti1Image(x_mm, source_affine), target)
    assert resampled.shape == (9, 11, 7) and resampled.get_data_dtype() == np.float32
    expected = nib.affines.apply_affine(target_affine, np.indices((9, 11, 7)).reshape(3, -1).T)[:, 0]
    np.testing.assert_allclose(np.asanyarray(resampled.dataobj).ravel(), expected, atol=1e-4)
    np.testing.assert_array_equal(resampled.affine, target_affine)
