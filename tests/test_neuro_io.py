"""lrp.neuro.io: NIfTI reading and atomic writing, checked against nibabel directly."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from lrp.errors import DataError
from lrp.neuro import io
from lrp.neuro.io import MissingFileError, grid_of, load_image, load_volume, save_image

# an oblique-free affine with flipped and permuted axes, anisotropic voxels; all entries exact in float32
AFFINE = np.array([[0.0, -2.0, 0.0, 90.5],
                   [1.5, 0.0, 0.0, -126.0],
                   [0.0, 0.0, 2.5, -72.25],
                   [0.0, 0.0, 0.0, 1.0]])


def volume(shape=(5, 6, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def write_nifti(path, data, affine=AFFINE) -> None:
    """Write with nibabel itself, so reading is tested against an independent writer."""
    nib.save(nib.Nifti1Image(data, affine), path)


def files_in(folder) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


# -- saving ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["map.nii.gz", "map.nii"])
def test_round_trip_keeps_data_and_affine(tmp_path, name):
    data = volume()
    path = save_image(data, AFFINE, tmp_path / name)
    assert path == tmp_path / name
    assert files_in(tmp_path) == [name]
    stored = nib.load(path)  # read back with nibabel, not our reader
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), data)
    np.testing.assert_array_equal(stored.affine, AFFINE)
    image = load_image(path)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_array_equal(image.affine, AFFINE)


@pytest.mark.parametrize("layout", [(1,), (1, 1)])
def test_model_layout_tensors_are_saved_as_volumes(tmp_path, layout):
    data = volume((3, 4, 5))
    tensor = torch.from_numpy(data).to(torch.float64).reshape(*layout, 3, 4, 5).requires_grad_()
    save_image(tensor * 1.0, AFFINE, tmp_path / "r.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "r.nii.gz").dataobj), data)


def test_reference_image_header_is_kept(tmp_path):
    reference = nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.int16), AFFINE)
    reference.header.set_sform(AFFINE, code="mni")
    reference.header.set_qform(AFFINE, code="scanner")
    reference.header.set_xyzt_units("mm", "sec")
    reference.header.set_slope_inter(3.0, 1.0)  # must not rescale our data
    data = volume((4, 5, 6))
    save_image(data, reference, tmp_path / "r.nii.gz")
    stored = nib.load(tmp_path / "r.nii.gz")
    assert int(stored.header["sform_code"]) == 4 and int(stored.header["qform_code"]) == 1
    assert stored.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(stored.affine, AFFINE)
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), data)
    assert stored.get_data_dtype() == np.float32


def test_integer_dtype(tmp_path):
    labels = np.arange(24).reshape(2, 3, 4)
    save_image(labels, np.eye(4), tmp_path / "labels.nii.gz", dtype=np.int16)
    stored = nib.load(tmp_path / "labels.nii.gz")
    assert stored.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), labels)
    with pytest.raises(DataError, match="int16"):
        save_image(labels + 0.5, np.eye(4), tmp_path / "bad.nii.gz", dtype=np.int16)
    assert files_in(tmp_path) == ["labels.nii.gz"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_are_refused_and_nothing_is_written(tmp_path, bad):
    data = volume()
    data[1, 2, 3] = bad
    with pytest.raises(DataError, match=r"map\.nii\.gz.*1 of 210 voxels are NaN or infinite"):
        save_image(data, AFFINE, tmp_path / "map.nii.gz")
    assert files_in(tmp_path) == []


def test_shape_mismatch_with_reference(tmp_path):
    reference = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), AFFINE)
    with pytest.raises(DataError, match=r"\(5, 6, 7\).*\(4, 5, 6\)"):
        save_image(volume(), reference, tmp_path / "map.nii.gz")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("shape", [(5, 6), (2, 5, 6, 7), (1, 2, 5, 6, 7)])
def test_wrong_layout_is_refused(tmp_path, shape):
    with pytest.raises(DataError, match="expected a volume shaped"):
        save_image(np.zeros(shape), AFFINE, tmp_path / "map.nii.gz")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("affine", [np.eye(3), np.diag([1.0, 0.0, 1.0, 1.0]), np.full((4, 4), np.nan)])
def test_malformed_affine_is_refused(tmp_path, affine):
    with pytest.raises(DataError, match="affine"):
        save_image(volume(), affine, tmp_path / "map.nii.gz")
    assert files_in(tmp_path) == []


def test_file_name_must_be_nifti(tmp_path):
    with pytest.raises(DataError, match=r"\.nii or \.nii\.gz"):
        save_image(volume(), AFFINE, tmp_path / "map.png")


def test_failed_write_leaves_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "map.nii.gz"
    save_image(volume(seed=1), AFFINE, target)
    before = target.read_bytes()

    def failing_save(image, filename):
        with open(filename, "wb") as handle:  # half a file, then a crash
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(volume(seed=2), AFFINE, target)
    assert files_in(tmp_path) == ["map.nii.gz"]
    assert target.read_bytes() == before


# -- loading ---------------------------------------------------------------------------------------
def test_trailing_singleton_counts_as_3d(tmp_path):
    data = volume((4, 5, 6))
    write_nifti(tmp_path / "v.nii.gz", data[..., None])
    image = load_image(tmp_path / "v.nii.gz")
    assert image.shape == (4, 5, 6)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)


def test_4d_only_when_allowed(tmp_path):
    write_nifti(tmp_path / "series.nii.gz", volume((4, 5, 6, 3)))
    with pytest.raises(DataError, match=r"series\.nii\.gz.*4D.*expected 3D"):
        load_image(tmp_path / "series.nii.gz")
    assert load_image(tmp_path / "series.nii.gz", ndim=(3, 4)).shape == (4, 5, 6, 3)


def test_2d_file_is_refused(tmp_path):
    write_nifti(tmp_path / "slice.nii", volume((6, 7)))
    with pytest.raises(DataError, match=r"slice\.nii: the image is 2D \(shape \(6, 7\)\); expected 3D"):
        load_image(tmp_path / "slice.nii")


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="absent.nii.gz: no such file") as caught:
        load_image(tmp_path / "absent.nii.gz")
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, DataError)


def test_garbage_and_truncated_files(tmp_path):
    (tmp_path / "garbage.nii.gz").write_bytes(gzip.compress(b"not an image at all" * 30))
    with pytest.raises(DataError, match="garbage.nii.gz"):
        load_image(tmp_path / "garbage.nii.gz")
    write_nifti(tmp_path / "whole.nii.gz", volume((20, 20, 20)))
    content = (tmp_path / "whole.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(content[: len(content) // 2])
    with pytest.raises(DataError, match="cut.nii.gz"):
        load_image(tmp_path / "cut.nii.gz")


def test_singular_affine_in_file(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((3, 4, 5))
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 0, 0, 5], [0, 0, 1, 0]
    header["sform_code"], header["qform_code"] = 2, 0
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), None, header=header), tmp_path / "flat.nii")
    with pytest.raises(DataError, match=r"flat\.nii: the affine is singular"):
        load_image(tmp_path / "flat.nii")


def test_image_objects_are_checked_too():
    data = volume()
    image = load_image(nib.Nifti1Image(data, AFFINE))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_array_equal(image.affine, AFFINE)
    with pytest.raises(DataError, match="in-memory image: the image has no affine"):
        load_image(nib.Nifti1Image(data, None))
    with pytest.raises(DataError, match="in-memory image: the image is 2D"):
        load_image(nib.Nifti1Image(data[0], AFFINE))
    with pytest.raises(TypeError, match="path or a nibabel image"):
        load_image(data)


def test_load_volume_casts_and_checks_finiteness(tmp_path):
    data = volume().astype(np.float64)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    write_nifti(tmp_path / "v.nii.gz", data)
    values, affine = load_volume(tmp_path / "v.nii.gz")
    assert values.dtype == np.float32 and values.shape == (5, 6, 7)
    np.testing.assert_array_equal(affine, AFFINE)
    with pytest.raises(DataError, match=r"v\.nii\.gz: 3 of 210 voxels are NaN or infinite"):
        load_volume(tmp_path / "v.nii.gz", finite=True)


def test_grid_of():
    shape, affine = grid_of(((3, 4, 5), AFFINE))
    assert shape == (3, 4, 5)
    np.testing.assert_array_equal(affine, AFFINE)
    assert grid_of(nib.Nifti1Image(np.zeros((3, 4, 5, 2)), AFFINE))[0] == (3, 4, 5)
    with pytest.raises(DataError, match="three positive integers"):
        grid_of(((3, 4), AFFINE))
    with pytest.raises(DataError, match="last row"):
        grid_of(((3, 4, 5), np.ones((4, 4))))
