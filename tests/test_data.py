"""Data sources (lrp.data): HDF5, NIfTI folders and CSV manifests, preprocessing, patient-wise splits.

Expected values come from the arrays written into the test files, from hand-computed formulas
(min-max, linear interpolation of a ramp) or from counting, never from earlier runs of this code.
"""
import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from lrp.data import HDF5Dataset, NiftiDataset, Preprocess, open_source, split_patients, write_split
from lrp.errors import DataError

SHAPE = (12, 14, 12)


def _volumes(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, *SHAPE)).astype(np.float32)


def _write_h5(path, channel_axis: bool = False, count: int = 6, **datasets) -> np.ndarray:
    volumes = _volumes(count)
    with h5py.File(path, "w") as file:
        file["X"] = volumes[:, None] if channel_axis else volumes
        file["y"] = np.arange(count) % 2
        for name, values in datasets.items():
            file[name] = values
    return volumes


def _write_nifti(path, volume: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), path)


# -- HDF5 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel_axis", [False, True], ids=["NxDxHxW", "Nx1xDxHxW"])
def test_hdf5_round_trip(tmp_path, channel_axis):
    path = tmp_path / "data.h5"
    volumes = _write_h5(path, channel_axis, patient=np.array([b"p0", b"p0", b"p1", b"p2", b"p3", b"p3"]),
                        age=np.arange(6) * 10.0)
    data = HDF5Dataset(path, patient="patient", extra=("age",))
    assert len(data) == 6
    assert data.subjects == [f"sub-{i}" for i in range(6)]
    assert data.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.manifest["patient"].tolist() == ["p0", "p0", "p1", "p2", "p3", "p3"]
    assert data.manifest["age"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    for i in (0, 3, -1):
        sample = data[i]
        assert sample["x"].shape == (1, *SHAPE) and sample["x"].dtype == torch.float32
        np.testing.assert_array_equal(sample["x"][0].numpy(), volumes[i])
        assert sample["y"] == i % 2 and sample["index"] == i % 6 and sample["subject"] == f"sub-{i % 6}"
    with pytest.raises(IndexError):
        data[6]


def test_hdf5_init_reads_no_volume_and_access_reads_one(tmp_path, monkeypatch):
    path = tmp_path / "data.h5"
    _write_h5(path)
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        reads.append((self.name, key))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    data = HDF5Dataset(path)
    assert all(name != "/X" for name, _ in reads), reads
    reads.clear()
    data[4]
    assert reads == [("/X", 4)]


def test_hdf5_with_dataloader_workers(tmp_path):
    path = tmp_path / "data.h5"
    volumes = _write_h5(path, count=8)
    data = HDF5Dataset(path)
    data[0]  # a handle opened in the parent process must not be used by the forked workers
    batches = list(DataLoader(data, batch_size=3, num_workers=2))
    x = torch.cat([batch["x"] for batch in batches])
    np.testing.assert_array_equal(x[:, 0].numpy(), volumes)
    assert torch.cat([batch["index"] for batch in batches]).tolist() == list(range(8))
    assert [subject for batch in batches for subject in batch["subject"]] == data.subjects


@pytest.mark.parametrize("make, message", [
    (lambda f: f.create_dataset("X", data=np.zeros((4, 12, 14))), "N×D×H×W"),
    (lambda f: f.create_dataset("X", data=np.zeros((4, 2, 3, 3, 3))), "one channel"),
    (lambda f: (f.create_dataset("X", data=np.zeros((4, 3, 3, 3))), f.create_dataset("y", data=[0, 1, 0])),
     "one value per sample"),
    (lambda f: f.create_dataset("X", data=np.zeros((4, 3, 3, 3))), "no dataset 'y'"),
    (lambda f: (f.create_dataset("X", data=np.zeros((2, 3, 3, 3))), f.create_dataset("y", data=[0.5, 1])),
     "integers"),
])
def test_hdf5_malformed_files_name_the_file(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as file:
        make(file)
    with pytest.raises(DataError, match=message) as error:
        HDF5Dataset(path)
    assert str(path) in str(error.value)


def test_hdf5_not_an_hdf5_file(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5 file") as error:
        open_source(path)
    assert str(path) in str(error.value)


# -- NIfTI -----------------------------------------------------------------------------------------
def test_nifti_folder(tmp_path):
    volumes = _volumes(3)
    for name, volume in zip(["b.nii.gz", "a.nii", "c.nii.gz"], volumes):
        _write_nifti(tmp_path / name, volume)
    (tmp_path / "notes.txt").write_text("ignored")
    data = open_source(tmp_path)
    assert isinstance(data, NiftiDataset)
    assert data.subjects == ["a", "b", "c"]
    assert data.labels.tolist() == [-1, -1, -1]
    assert data.manifest["patient"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(data[0]["x"][0].numpy(), volumes[1])  # a.nii
    np.testing.assert_array_equal(data[1]["x"][0].numpy(), volumes[0])  # b.nii.gz


def test_csv_manifest_relative_paths_labels_and_covariates(tmp_path):
    volumes = _volumes(3)
    (tmp_path / "scans").mkdir()
    for i, volume in enumerate(volumes):
        _write_nifti(tmp_path / "scans" / f"s{i}.nii.gz", volume)
    absolute = (tmp_path / "scans" / "s2.nii.gz").absolute()
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"path,subject,patient,label,age\nscans/s0.nii.gz,001,P1,AD,71\nscans/s1.nii.gz,002,P1,HC,72\n"
                   f"{absolute},003,P2,,80\n")
    data = open_source(csv, classes=["HC", "AD"])
    assert data.subjects == ["001", "002", "003"]  # read as text: leading zeros kept
    assert data.labels.tolist() == [1, 0, -1]
    assert data.class_names == ["HC", "AD"]
    assert data.manifest["age"].tolist() == [71, 72, 80]
    assert data.paths == [(tmp_path / "scans" / f"s{i}.nii.gz").absolute() for i in range(3)]
    sample = data[1]
    np.testing.assert_array_equal(sample["x"][0].numpy(), volumes[1])
    assert (sample["subject"], sample["patient"], sample["y"]) == ("002", "P1", 0)
    # string labels without classes: sorted names
    assert NiftiDataset(csv).class_names == ["AD", "HC"]


@pytest.mark.parametrize("text, message", [
    ("file,label\nx.nii.gz,1\n", "no 'path' column"),
    ("path,label\nmissing.nii.gz,1\n", "do not exist"),
    ("path,subject\ns0.nii.gz,\n", "empty 'subject' on line"),
    ("path,label\ns0.nii.gz,0.5\n", "integers"),
])
def test_csv_manifest_errors_name_the_csv(tmp_path, text, message):
    _write_nifti(tmp_path / "s0.nii.gz", _volumes(1)[0])
    csv = tmp_path / "manifest.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        NiftiDataset(csv)
    assert str(csv) in str(error.value)


def test_malformed_nifti_fails_on_access_naming_the_file(tmp_path):
    _write_nifti(tmp_path / "good.nii.gz", _volumes(1)[0])
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    data = NiftiDataset(tmp_path)
    data[data.subjects.index("good")]
    with pytest.raises(DataError) as error:
        data[data.subjects.index("bad")]
    assert str(bad) in str(error.value)


def test_open_source_rejects_unknown_kinds(tmp_path):
    (tmp_path / "table.txt").write_text("x")
    with pytest.raises(DataError, match="unknown data source"):
        open_source(tmp_path / "table.txt")
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "absent.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no NIfTI files"):
        open_source(tmp_path / "empty")


# -- preprocessing ---------------------------------------------------------------------------------
def test_preprocess_minmax_and_mask():
    volume = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) * 2 - 5  # from -5 to 41
    mask = np.zeros((2, 3, 4))
    mask[:, 1:, :] = 1
    out = Preprocess(mask=mask)(volume)
    np.testing.assert_allclose(out, (volume + 5) / 46 * mask, rtol=1e-6)
    np.testing.assert_allclose(Preprocess(minmax=False)(volume), volume)


def test_preprocess_grid_resamples_linearly():
    # trilinear zoom (scipy's default grid_mode=False) maps output index o to input o·(n_in-1)/(n_out-1):
    # a linear ramp stays a linear ramp with these sample positions
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 6, 5)).copy()
    out = Preprocess(minmax=False, grid=(4, 3, 5))(ramp)
    assert out.shape == (4, 3, 5)
    expected = np.arange(4) * 9 / 3
    np.testing.assert_allclose(out[:, 1, 2], expected, atol=1e-5)


def test_preprocess_constant_volume_raises_naming_the_file(tmp_path):
    _write_nifti(tmp_path / "flat.nii.gz", np.full(SHAPE, 3.0, dtype=np.float32))
    data = NiftiDataset(tmp_path, transform=Preprocess())
    with pytest.raises(DataError, match="constant volume") as error:
        data[0]
    assert "flat.nii.gz" in str(error.value)
    with pytest.raises(DataError, match="differs from grid"):
        Preprocess(mask=np.ones((2, 2, 2)), grid=(3, 3, 3))


def test_preprocess_options_round_trip(tmp_path):
    mask = tmp_path / "mask.nii.gz"
    _write_nifti(mask, (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 2).astype(np.float32))
    original = Preprocess(mask=mask, grid=SHAPE)
    rebuilt = Preprocess.from_dict(original.to_dict())
    volume = _volumes(1)[0]
    np.testing.assert_array_equal(rebuilt(volume), original(volume))
    assert original.to_dict() == {"minmax": True, "mask": str(mask), "grid": list(SHAPE), "invert": False}


def test_invert_turns_the_contrast_around_inside_the_brain_only():
    volume = np.array([[[0.0, 2.0], [4.0, 10.0]]], dtype=np.float32)  # 0 = background
    inverted = Preprocess(invert=True)(volume)
    np.testing.assert_allclose(inverted, [[[0.0, 0.8], [0.6, 0.0]]], atol=1e-7)
    mask = np.array([[[0, 1], [1, 0]]], dtype=np.float32)
    np.testing.assert_allclose(Preprocess(invert=True, mask=mask)(volume), [[[0.0, 0.8], [0.6, 0.0]]], atol=1e-7)
    assert Preprocess.from_dict(Preprocess(invert=True).to_dict()).invert
    with pytest.raises(ValueError, match="needs minmax"):
        Preprocess(minmax=False, invert=True)


# -- splits ----------------------------------------------------------------------------------------
def _cohort(patients_per_class: int = 20, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-3 scans each; half of them AD (label 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in (0, 1):
        for p in range(patients_per_class):
            for scan in range(rng.integers(1, 4)):
                rows.append({"subject": f"c{label}p{p}s{scan}", "patient": f"c{label}p{p}", "label": label})
    return pd.DataFrame(rows)


def test_split_is_patient_wise_stratified_and_seeded():
    manifest = _cohort()
    split = split_patients(manifest, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert split.groupby("patient")["split"].nunique().max() == 1
    patients = split.drop_duplicates("patient")
    counts = patients.groupby(["label", "split"]).size().unstack()
    assert counts.loc[0].to_dict() == counts.loc[1].to_dict() == {"test": 4, "train": 14, "val": 2}
    assert split["split"].tolist() == split_patients(manifest, seed=3)["split"].tolist()
    assert split["split"].tolist() != split_patients(manifest, seed=4)["split"].tolist()
    shuffled = split_patients(manifest.sample(frac=1.0, random_state=1), seed=3)
    assert shuffled.set_index("subject")["split"].sort_index().equals(split.set_index("subject")["split"].sort_index())


def test_split_test_per_class():
    split = split_patients(_cohort(), test_per_class=5, val_fraction=0.0)
    tested = split[split["split"] == "test"].drop_duplicates("patient")
    assert tested["label"].value_counts().to_dict() == {0: 5, 1: 5}
    with pytest.raises(ValueError, match="too few"):
        split_patients(_cohort(patients_per_class=3), test_per_class=3)


def test_split_errors():
    with pytest.raises(DataError, match="patient"):
        split_patients(pd.DataFrame({"subject": ["a"], "label": [0]}))
    with pytest.raises(ValueError, match="leave room"):
        split_patients(_cohort(), val_fraction=0.5, test_fraction=0.5)


def test_write_split_and_select(tmp_path):
    path = tmp_path / "data.h5"
    volumes = _write_h5(path, count=10, patient=np.repeat(np.arange(5), 2))
    data = HDF5Dataset(path, patient="patient")
    split = split_patients(data.manifest, val_fraction=0.2, test_fraction=0.2, stratify=None, seed=0)
    paths = write_split(split, tmp_path / "split")
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["test.csv", "train.csv", "val.csv"]
    parts = {name: data.select(file) for name, file in paths.items()}
    assert sum(len(part) for part in parts.values()) == 10
    for name, part in parts.items():
        assert part.subjects == split.loc[split["split"] == name, "subject"].tolist()
        for i in range(len(part)):
            sample = part[i]
            np.testing.assert_array_equal(sample["x"][0].numpy(), volumes[sample["index"]])
    with pytest.raises(DataError, match="not in"):
        data.select(["sub-0", "nobody"])
