"""``lrp explain``: outputs checked against independent computations, and the same outputs under torchrun,
after a kill -9 and a rerun, with a corrupt input; weights that hold pickled objects are refused."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import lrp
from lrp.cli import main
from lrp.models import DemoCNN3d
from lrp.neuro.atlas import Atlas
from lrp.streaming import KILL_AFTER_WRITES
from lrp.train import load_model, save_model

SHAPE = (12, 14, 12)
SUBJECTS = [f"sub-{i:02d}" for i in range(6)]
CLASSES = ["HC", "AD"]
METHODS = ("lrp_alpha1-beta0", "gradient")
AFFINE = np.array([[2.0, 0, 0, -12], [0, 2.0, 0, -14], [0, 0, 2.0, -12], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six noise volumes (labels HC, AD, ...) in a manifest, a tiny DemoCNN3d in model/, a two-region atlas."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = []
    for i, subject in enumerate(SUBJECTS):
        path = root / "volumes" / f"{subject}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        volume = rng.normal(100.0, 20.0, size=SHAPE).astype(np.float32) + 30.0 * (i % 2) * (np.arange(SHAPE[0]) < 6)[
            :, None, None]
        nib.save(nib.Nifti1Image(volume, AFFINE), path)
        rows.append({"path": f"volumes/{subject}.nii.gz", "subject": subject, "label": CLASSES[i % 2], "age": 70 + i})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    torch.manual_seed(0)
    model = DemoCNN3d(SHAPE, channels=(2, 4)).eval()
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([0.0, 0.02]))  # both classes get predicted
    save_model(model, root / "model", architecture={"name": "DemoCNN3d", "kwargs": {"input_shape": list(SHAPE),
                                                                                   "channels": [2, 4]}},
               preprocessing={"minmax": True, "mask": None, "grid": None}, class_names=CLASSES, metrics=None)
    torch.save(model.state_dict(), root / "state.pt")
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[1:6], labels[6:11] = 3, 7
    nib.save(Atlas.from_array(labels, AFFINE, {3: "Left", 7: "Right"}).image, root / "atlas.nii.gz")
    (root / "atlas.txt").write_text("3 Left 3\n7 Right 7\n")
    return root


def _arguments(root: Path, out: Path, data: str = "manifest.csv") -> list[str]:
    return ["explain", "--data", str(root / data), "--model", str(root / "model"), "--out", str(out),
            "--methods", "lrp:alpha1-beta0,gradient", "--atlas", str(root / "atlas.nii.gz"), "--atlas-labels",
            str(root / "atlas.txt"), "--quiet", "--workers", "1"]


@pytest.fixture(scope="module")
def baseline(cohort, tmp_path_factory):
    """One uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("baseline") / "out"
    assert main(_arguments(cohort, out)) == 0
    return out


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _files(folder: Path) -> list[Path]:
    return sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())


def assert_same_outputs(expected: Path, actual: Path, group_tolerance: float = 0.0) -> None:
    """The same files; maps with equal data and affine; tables and records byte for byte. Group means may
    differ by ``group_tolerance`` (relative): float64 sums of shards add in another order."""
    assert _files(expected) == _files(actual)
    for name in _files(expected):
        if name.name.endswith(".nii.gz"):
            want, got = nib.load(expected / name), nib.load(actual / name)
            np.testing.assert_array_equal(want.affine, got.affine)
            if name.parts[0] == "group_means":
                np.testing.assert_allclose(got.get_fdata(), want.get_fdata(), rtol=group_tolerance, atol=0)
            else:
                np.testing.assert_array_equal(got.get_fdata(), want.get_fdata(), err_msg=str(name))
        else:
            assert (expected / name).read_bytes() == (actual / name).read_bytes(), name


def test_outputs_match_an_independent_computation(cohort, baseline):
    model, _ = load_model(cohort / "model")
    predictions = pd.read_csv(baseline / "predictions.csv", dtype={"subject": str})
    regions = pd.read_csv(baseline / "regions.csv", dtype={"subject": str})
    assert predictions["subject"].tolist() == SUBJECTS
    assert (pd.read_csv(baseline / "errors.csv").empty)
    atlas = np.asarray(nib.load(cohort / "atlas.nii.gz").dataobj)
    maps = {method: {} for method in METHODS}
    for i, subject in enumerate(SUBJECTS):
        volume = np.asarray(nib.load(cohort / "volumes" / f"{subject}.nii.gz").dataobj, dtype=np.float64)
        x = torch.tensor((volume - volume.min()) / (volume.max() - volume.min()), dtype=torch.float32)[None, None]
        x.requires_grad_(True)
        logits = model(x)
        gradient, = torch.autograd.grad(logits[0, 1], x)
        start = torch.zeros_like(logits.detach())  # LRP distributes the AD probability (--start probability)
        start[0, 1] = torch.softmax(logits.detach(), 1)[0, 1]
        expected = {"lrp_alpha1-beta0": lrp.explain(model, x.detach(), target=start, composite="alpha1-beta0").relevance,
                    "gradient": gradient}
        row = predictions.iloc[i]
        probabilities = torch.softmax(logits.detach().double(), 1)[0].numpy()
        np.testing.assert_allclose(row[["prob_HC", "prob_AD"]].to_numpy(float), probabilities, rtol=1e-5)
        assert row["prediction"] == probabilities.argmax() and row["label"] == i % 2
        truth, guess = CLASSES[i % 2], CLASSES[probabilities.argmax()]
        assert row["outcome"] == ("T" if truth == guess else "F") + ("P" if guess == "AD" else "N")
        for method in METHODS:
            image = nib.load(baseline / "maps" / method / f"{subject}.nii.gz")
            np.testing.assert_allclose(image.affine, AFFINE)
            stored = np.asarray(image.dataobj)
            assert stored.dtype == np.float32
            np.testing.assert_allclose(stored, expected[method][0, 0].numpy(), rtol=1e-5, atol=1e-7)
            maps[method][subject] = stored.astype(np.float64)
            for region_id in (3, 7):
                rows = regions[(regions["subject"] == subject) & (regions["method"] == method)
                               & (regions["region_id"] == region_id)]
                assert len(rows) == 1
                np.testing.assert_allclose(rows["sum"].iloc[0], stored[atlas == region_id].sum(dtype=np.float64),
                                           rtol=1e-9, atol=1e-12)
    groups = {name: predictions["subject"][predictions["group_true"] == name].tolist() for name in CLASSES}
    groups |= {name: predictions["subject"][predictions["outcome"] == name].tolist() for name in ("TP", "TN", "FP", "FN")}
    for method in METHODS:
        written = {path.name for path in (baseline / "group_means").glob(f"{method}_*.nii.gz")}
        assert written == {f"{method}_{group}.nii.gz" for group, members in groups.items() if members}
        for group, members in groups.items():
            if members:
                mean = np.mean([maps[method][subject] for subject in members], axis=0)
                stored = nib.load(baseline / "group_means" / f"{method}_{group}.nii.gz").get_fdata()
                np.testing.assert_allclose(stored, mean, rtol=1e-6, atol=1e-12)


def test_torchrun_two_processes_give_the_outputs_of_one(cohort, baseline, tmp_path):
    out = tmp_path / "two"
    script = Path(sys.executable).with_name("lrp")
    program = ["--no-python", str(script)] if script.exists() else ["-m", "lrp.cli"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *program, *_arguments(cohort, out)], capture_output=True, text=True, timeout=300,
                          env=_environment(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "done 6, skipped 0, failed 0"  # printed once, by rank 0
    assert_same_outputs(baseline, out, group_tolerance=1e-6)


@pytest.mark.parametrize("writes, recomputed", [(5, 6), (20, 1)])
def test_kill_9_then_rerun_gives_identical_outputs(cohort, baseline, tmp_path, capsys, writes, recomputed):
    """Killed after the 2nd map of sub-01, before its record (sub-00: 2 maps + record = 3 writes), or while
    writing the tables (18 maps and records, then predictions.csv and errors.csv)."""
    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-m", "lrp.cli", *_arguments(cohort, out)], capture_output=True,
                            env={**_environment(), KILL_AFTER_WRITES: str(writes)}, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "maps" / "gradient" / "sub-01.nii.gz").is_file()
    assert not (out / "regions.csv").exists() and not (out / "group_means").exists()
    (out / "maps" / "gradient" / ".sub-02.x8f3k.tmp.nii.gz").write_bytes(b"half a map")  # killed mid-write
    damaged = out / "maps" / "lrp_alpha1-beta0" / "sub-00.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:200])  # a damaged map of a finished subject is recomputed
    capsys.readouterr()
    assert main(_arguments(cohort, out)) == 0
    summary = f"done {recomputed}, skipped {6 - recomputed}, failed 0"
    assert capsys.readouterr().out.strip().splitlines()[-1] == summary
    assert_same_outputs(baseline, out)
    shutil.rmtree(out / "group_means")
    for table in ("predictions", "regions", "errors"):
        (out / f"{table}.csv").unlink()
    assert main(_arguments(cohort, out)) == 0  # every subject skipped: tables and group means from the stored maps
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done 0, skipped 6, failed 0"
    assert_same_outputs(baseline, out)


def test_corrupt_input_is_listed_in_errors_and_skipped(cohort, baseline, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(cohort / "volumes", data / "volumes")
    shutil.copy(cohort / "manifest.csv", data / "manifest.csv")
    corrupt = data / "volumes" / "sub-03.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    for name in ("model", "atlas.nii.gz", "atlas.txt"):
        (data / name).symlink_to(cohort / name)
    out = tmp_path / "out"
    assert main(_arguments(data, out)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "done 5, skipped 0, failed 1"
    errors = pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)
    assert errors[["subject", "method"]].values.tolist() == [["sub-03", ""]]
    assert str(corrupt) in errors["error"].iloc[0]
    predictions = pd.read_csv(out / "predictions.csv", dtype={"subject": str})
    assert predictions["subject"].tolist() == [s for s in SUBJECTS if s != "sub-03"]
    for method in METHODS:
        assert not (out / "maps" / method / "sub-03.nii.gz").exists()
        np.testing.assert_array_equal(nib.load(out / "maps" / method / "sub-04.nii.gz").get_fdata(),
                                      nib.load(baseline / "maps" / method / "sub-04.nii.gz").get_fdata())


def test_weights_by_state_dict_work_and_pickled_objects_are_refused(cohort, baseline, tmp_path, capsys):
    common = ["explain", "--data", str(cohort / "manifest.csv"), "--model", "demo", "--model-args",
              '{"channels": [2, 4]}', "--methods", "gradient", "--quiet", "--workers", "0"]
    pickled = tmp_path / "pickled.pt"
    model, _ = load_model(cohort / "model")
    torch.save(model, pickled)  # the whole module: unpickling it would import and run code
    assert main([*common, "--weights", str(pickled), "--out", str(tmp_path / "refused")]) == 2
    message = capsys.readouterr().err
    assert "refused" in message and "pickled Python object" in message and "weights_only=True" in message
    assert not (tmp_path / "refused").exists()
    assert main([*common, "--weights", str(cohort / "state.pt"), "--out", str(tmp_path / "demo")]) == 0
    np.testing.assert_array_equal(nib.load(tmp_path / "demo" / "maps" / "gradient" / "sub-01.nii.gz").get_fdata(),
                                  nib.load(baseline / "maps" / "gradient" / "sub-01.nii.gz").get_fdata())


def test_rerun_with_another_model_is_refused(cohort, baseline, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    state = torch.load(cohort / "state.pt", weights_only=True)
    state["classifier.1.bias"] += 1.0
    torch.save(state, tmp_path / "other.pt")
    assert main([*_arguments(cohort, out), "--weights", str(tmp_path / "other.pt")]) == 2
    assert "other settings (differing: model)" in capsys.readouterr().err
    assert_same_outputs(baseline, out)


def test_lrp_regions_reads_the_outputs_and_agrees(cohort, baseline, tmp_path):
    out = tmp_path / "regions"
    assert main(["regions", "--maps", str(baseline / "maps"), "--subjects", str(baseline / "predictions.csv"),
                 "--atlas", str(cohort / "atlas.nii.gz"), "--atlas-labels", str(cohort / "atlas.txt"), "--out",
                 str(out), "--background", str(cohort / "volumes" / "sub-00.nii.gz"), "--top-k", "2",
                 "--no-figures"]) == 0
    keys = ["subject", "method", "region_id"]
    ours = pd.read_csv(baseline / "regions.csv", dtype={"subject": str}).sort_values(keys, ignore_index=True)
    theirs = pd.read_csv(out / "regions.csv", dtype={"subject": str}).sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(ours, theirs[ours.columns], check_exact=False, rtol=1e-12)
    assert _files(out / "group_means") == _files(baseline / "group_means")
    for name in _files(baseline / "group_means"):
        np.testing.assert_allclose(nib.load(out / "group_means" / name).get_fdata(),
                                   nib.load(baseline / "group_means" / name).get_fdata(), rtol=1e-6, atol=1e-12)


def test_help_documents_inputs_and_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--data", "--model", "--weights", "weights_only=True", "--out", "--methods", "--target", "--atlas",
                  "--workers", "--grid", "--mask", "maps/<method>/<subject>.nii.gz", "predictions.csv", "regions.csv",
                  "errors.csv", "group_means/<method>_<group>.nii.gz", "torchrun --nproc_per_node N",
                  "done N, skipped M, failed K"):
        assert words in text, words
