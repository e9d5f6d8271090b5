"""Your own cohort (issue 7): an HDF5 export of the demo's test subjects studied with ``lrp study`` gives
the demo's tables; HDF5 per-subject datasets found by name; patient-wise splits (property test);
``lrp train`` killed mid-epoch resumes from its checkpoint; bad HDF5 files give clear errors.

References are independent: the demo's own study of the same subjects read from NIfTI files, the
arrays and names written into the test files, counting, and an uninterrupted training run.
"""
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_templates
from hypothesis import given, settings
from hypothesis import strategies as st

from lrp.cli import main
from lrp.data import SPLITS, Preprocess, open_source, split_patients
from lrp.errors import DataError
from lrp.neuro.io import load_volume, save_image
from lrp.train import load_model

METHODS = "lrp:alpha1-beta0,guided_backprop"
RESOLUTION = 4
COVARIATE_REGION = "Hippocampus_L"  # the first planted region: the demo correlates its volume with its relevance
TABLE_KEYS = {"predictions": ["subject"], "regions": ["method", "subject", "region_id"],
              "summary": ["method", "region_id"], "overlap": ["by", "run_a", "run_b"], "correlation": ["method"]}
TINY_SHAPE = (16, 18, 16)  # the smallest grid for the demo CNN's four pooling blocks


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and immune to busy neighbours on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo(reduced_demo):
    """The reduced demo of conftest.py (shared with tests/test_demo.py)."""
    return reduced_demo


# -- the demo's subjects from HDF5 -----------------------------------------------------------------
@needs_templates
def test_hdf5_export_of_the_demo_subjects_gives_the_demo_tables(demo, tmp_path):
    test = pd.read_csv(demo / "split" / "test.csv", dtype={"subject": str, "patient": str})
    covariate = f"volume_mm3_{COVARIATE_REGION}"
    with h5py.File(tmp_path / "test.h5", "w") as file:  # the paper's layout, plus names and a covariate
        file["X"] = np.stack([load_volume(path)[0] for path in test["path"]])  # N×D×H×W float32, raw volumes
        file["y"] = test["label"].to_numpy()
        file["subject"] = test["subject"].to_numpy(dtype=object).astype(h5py.string_dtype())
        file["patient"] = test["patient"].to_numpy(dtype=object).astype(h5py.string_dtype())
        file[covariate] = test[covariate].to_numpy()
    out = tmp_path / "study"
    # the demo's study settings (lrp.demo.run_demo): minimum region size, covariate, permutations, seed
    status = main(["study", "--data", str(tmp_path / "test.h5"), "--reference", test["path"].iloc[0],
                   "--model", str(demo / "model.json"), "--out", str(out), "--methods", METHODS,
                   "--min-region-voxels", str(math.ceil(1000 / RESOLUTION**3)), "--covariate", covariate,
                   "--covariate-region", COVARIATE_REGION, "--permutations", "10000", "--seed", "0", "--no-figures"])
    assert status == 0
    for table, keys in TABLE_KEYS.items():
        ours = pd.read_csv(out / f"{table}.csv").sort_values(keys, ignore_index=True)
        expected = pd.read_csv(demo / f"{table}.csv").sort_values(keys, ignore_index=True)
        assert len(expected), table
        pd.testing.assert_frame_equal(ours, expected, rtol=1e-5, obj=table)
    for method in ("lrp_alpha1-beta0", "guided_backprop"):  # maps keep the subjects' names
        assert sorted(path.name for path in (out / "maps" / method).iterdir()) == sorted(
            f"{subject}.nii.gz" for subject in test["subject"])


# -- HDF5 conventions and errors -------------------------------------------------------------------
def test_open_source_finds_subjects_patients_and_covariates_by_name(tmp_path):
    volumes = np.random.default_rng(0).normal(size=(4, 3, 4, 5)).astype(np.float32)
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["X"] = volumes[:, None]
        file["y"] = np.array(["AD", "HC", "HC", "AD"], dtype=object).astype(h5py.string_dtype())
        file["subject"] = np.array([101, 7, 12, 3])
        file["patient"] = np.array([b"p1", b"p2", b"p2", b"p1"])
        file["age"] = np.array([[70.5], [61.0], [62.0], [71.5]])
        file["affine"] = np.eye(4)  # not one value per sample: ignored
        file.create_group("meta")["note"] = np.arange(4)  # in a group: ignored
    data = open_source(tmp_path / "data.h5", classes=["HC", "AD"])
    assert data.subjects == ["101", "7", "12", "3"]
    assert data.manifest.columns.tolist() == ["subject", "patient", "label", "age"]
    assert data.manifest["patient"].tolist() == ["p1", "p2", "p2", "p1"]
    assert data.labels.tolist() == [1, 0, 0, 1]
    assert data.manifest["age"].tolist() == [70.5, 61.0, 62.0, 71.5]
    np.testing.assert_array_equal(data.select(["12"])[0]["x"][0].numpy(), volumes[2])
    with h5py.File(tmp_path / "plain.h5", "w") as file:  # the paper's files: X and y only
        file["X"], file["y"] = volumes, np.array([0, 1, 1, 0])
    assert open_source(tmp_path / "plain.h5").manifest.columns.tolist() == ["subject", "patient", "label"]


@pytest.mark.parametrize("datasets, message", [
    ({"y": np.zeros(4)}, "no dataset 'X'"),
    ({"X": np.zeros((4, 3, 3, 3))}, "no dataset 'y'"),
    ({"X": np.zeros((4, 3, 3)), "y": np.zeros(4)}, "N×D×H×W"),
    ({"X": np.zeros((4, 3, 3, 3)), "y": np.zeros(4), "subject": np.arange(3)}, "'subject' has shape"),
    ({"X": np.zeros((4, 3, 3, 3)), "y": np.zeros(4), "subject": np.array([1, 2, 2, 3])}, "repeated: 2"),
])
def test_open_source_refuses_malformed_hdf5_naming_the_file(tmp_path, datasets, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as file:
        for name, values in datasets.items():
            file[name] = values
    with pytest.raises(DataError, match=message) as error:
        open_source(path)
    assert str(path) in str(error.value)


def test_nan_volumes_in_hdf5_are_refused_naming_the_file_and_row(tmp_path, capsys):
    volumes = np.random.default_rng(1).random((6, *TINY_SHAPE)).astype(np.float32)
    volumes[2, 3, 4, 5] = np.nan
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as file:
        file["X"], file["y"] = volumes, np.arange(6) % 2
    data = open_source(path, transform=Preprocess())  # what lrp train and lrp study read through
    data[1]
    with pytest.raises(DataError, match="NaN") as error:
        data[2]
    assert f"{path} ['X'][2]" in str(error.value)
    assert main(["train", "--train", str(path), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size",
                 "6", "--device", "cpu"]) == 2
    assert f"{path} ['X'][2]" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()


# -- patient-wise splits ---------------------------------------------------------------------------
@st.composite
def split_problems(draw):
    """A manifest of patients with 1-4 scans (2-3 classes; a patient's scans mostly share a label), rows in
    random order, and split settings."""
    classes = draw(st.integers(2, 3))
    rows = []
    for patient in range(draw(st.integers(1, 24))):
        usual = draw(st.integers(0, classes - 1))
        for scan in range(draw(st.integers(1, 4))):
            label = draw(st.one_of(st.just(usual), st.integers(0, classes - 1)))
            rows.append({"subject": f"p{patient}-s{scan}", "patient": f"p{patient}", "label": label})
    manifest = pd.DataFrame(draw(st.permutations(rows)))
    options = {"test_per_class": draw(st.none() | st.integers(0, 3)),
               "val_fraction": draw(st.floats(0, 0.45)), "test_fraction": draw(st.floats(0, 0.45)),
               "seed": draw(st.integers(0, 2**32 - 1))}
    return manifest, options


def _stratum_of_patients(manifest: pd.DataFrame) -> dict[str, int]:
    """Each patient's most frequent label, ties to the smallest."""
    labels: dict[str, Counter] = {}
    for row in manifest.itertuples():
        labels.setdefault(row.patient, Counter())[row.label] += 1
    return {patient: min(label for label, n in counts.items() if n == max(counts.values()))
            for patient, counts in labels.items()}


@settings(max_examples=40, deadline=None)
@given(split_problems())
def test_split_never_puts_a_patient_on_two_sides_and_keeps_every_row(problem):
    manifest, options = problem
    strata = _stratum_of_patients(manifest)
    sizes = Counter(strata.values())
    if options["test_per_class"] is not None and min(sizes.values()) <= options["test_per_class"]:
        with pytest.raises(ValueError, match="too few"):
            split_patients(manifest, **options)
        return
    result = split_patients(manifest, **options)
    pd.testing.assert_frame_equal(result.drop(columns="split"), manifest)
    assert set(result["split"]) <= set(SPLITS)
    side = result.groupby("patient")["split"].agg(set)
    assert (side.map(len) == 1).all(), side[side.map(len) > 1]
    side = side.map(min)
    for stratum in sizes:
        members = side[[patient for patient, s in strata.items() if s == stratum]]
        assert (members == "train").any(), f"stratum {stratum} has no training patient"
        if options["test_per_class"] is not None:
            assert (members == "test").sum() == options["test_per_class"]
    shuffled = split_patients(manifest.sample(frac=1, random_state=0), **options)
    assert shuffled.groupby("patient")["split"].first().to_dict() == side.to_dict()


# -- lrp train, killed and rerun -------------------------------------------------------------------
def _tiny_cohort(folder: Path) -> Path:
    """16 NIfTI volumes (TINY_SHAPE, 4 mm), AD ones with a brighter block, and manifest.csv (path, label)."""
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(16):
        volume = rng.random(TINY_SHAPE).astype(np.float32)
        volume[4:10, 5:12, 4:10] += i % 2
        save_image(volume, np.diag([4.0, 4.0, 4.0, 1.0]), folder / "volumes" / f"sub-{i:02d}.nii.gz")
        lines.append(f"volumes/sub-{i:02d}.nii.gz,{('HC', 'AD')[i % 2]}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def _train_command(manifest: Path, split: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "lrp.cli", "train", "--data", str(manifest), "--split", str(split), "--model",
            "demo", "--out", str(out), "--epochs", str(epochs), "--patience", str(epochs), "--batch-size", "2",
            "--device", "cpu"]


def test_lrp_train_killed_mid_epoch_resumes_from_its_checkpoint(tmp_path):
    epochs = 40
    manifest = _tiny_cohort(tmp_path)
    assert main(["split", "--data", str(manifest), "--out", str(tmp_path / "split")]) == 0
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    run, checkpoint = tmp_path / "run", tmp_path / "run" / "checkpoint.pt"
    command = _train_command(manifest, tmp_path / "split", run, epochs)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # the first epoch is saved: the process is in a later one
    assert process.wait(timeout=30) == -signal.SIGKILL, "lrp train ended before it could be killed"
    assert checkpoint.is_file(), "no checkpoint.pt within 60 s"
    interrupted = torch.load(checkpoint, weights_only=True)["progress"]
    assert 1 <= interrupted["epoch"] < epochs and not (run / "model.json").exists()

    finished = subprocess.run(command, check=False, capture_output=True, text=True, env=environment, timeout=120)
    assert finished.returncode == 0, finished.stderr
    history = torch.load(checkpoint, weights_only=True)["progress"]["history"]
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert history[:interrupted["epoch"]] == interrupted["history"]  # kept, timings included: resumed, not redone
    model, info = load_model(run)
    assert info["metrics"]["epochs_run"] == epochs and set(info["class_names"]) == {"AD", "HC"}

    reference = tmp_path / "uninterrupted"
    subprocess.run(_train_command(manifest, tmp_path / "split", reference, epochs), check=True,
                   capture_output=True, env=environment, timeout=120)
    expected, _ = load_model(reference)
    for (name, ours), theirs in zip(model.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)
