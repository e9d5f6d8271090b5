"""A reduced ``lrp demo`` end to end (a few subjects on a 4 mm grid), then ``lrp regions`` on its maps."""
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import needs_templates

from lrp.cli import main
from lrp.neuro.ground_truth import GROUND_TRUTH_COLUMNS
from lrp.neuro.regions import STATS_COLUMNS

pytestmark = needs_templates
METHODS = ("lrp_alpha1-beta0", "guided_backprop")
GROUPS = ("AD", "HC", "TP", "TN", "FP", "FN")


@pytest.fixture(scope="module")
def demo(reduced_demo):
    """The reduced demo of conftest.py: 30 subjects at 4 mm, planted Hippocampus (L, R) and Amygdala_L."""
    return reduced_demo


def test_every_documented_output_exists_and_is_valid(demo):
    manifest = pd.read_csv(demo / "cohort" / "manifest.csv")
    assert len(manifest) == 30 and {"subject", "path", "label"} <= set(manifest.columns)
    assert (demo / "model.pt").is_file() and json.loads((demo / "model.json").read_text())["preprocessing"]["invert"]
    predictions = pd.read_csv(demo / "predictions.csv")
    test = pd.read_csv(demo / "split" / "test.csv")
    assert sorted(predictions["subject"]) == sorted(test["subject"])
    assert {"subject", "label", "prediction", "group_true", "outcome"} <= set(predictions.columns)
    for method in METHODS:
        for row in test.itertuples():
            relevance = nib.load(demo / "maps" / method / f"{row.subject}.nii.gz")
            subject = nib.load(demo / "cohort" / row.path)
            assert relevance.shape == subject.shape
            np.testing.assert_allclose(relevance.affine, subject.affine)
            assert np.isfinite(relevance.get_fdata()).all()
    present = {"AD", "HC"} | set(predictions["outcome"])
    for method in METHODS:
        for group in present:
            assert (demo / "group_means" / f"{method}_{group}.nii.gz").is_file(), (method, group)
    regions = pd.read_csv(demo / "regions.csv")
    assert list(regions.columns) == [*STATS_COLUMNS, "method"]
    assert set(regions["method"]) == set(METHODS)
    summary = pd.read_csv(demo / "summary.csv")
    assert {"method", "region", "voxels", "sum_AD", "sum_HC", "density_AD", "gain", "rank_sum", "rank_density",
            "rank_gain"} <= set(summary.columns)
    truth = pd.read_csv(demo / "ground_truth.csv")
    assert list(truth.columns) == list(GROUND_TRUTH_COLUMNS)
    assert set(truth["method"]) == {*METHODS, "oracle"}
    assert set(truth["region"]) == {"Hippocampus_L", "Hippocampus_R", "Amygdala_L", "all planted"}
    metrics = json.loads((demo / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and {"flips", "confusion_matrix"} <= set(metrics)
    assert len(list((demo / "figures").glob("*.png"))) >= 8


def test_report_embeds_every_image(demo):
    html = (demo / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in html and "https://" not in html
    assert "Ground truth" in html and "oracle" in html


def test_oracle_finds_the_planted_regions(demo):
    """Even on this tiny cohort, |subject − undiseased twin| puts the planted regions at the top by gain."""
    truth = pd.read_csv(demo / "ground_truth.csv")
    oracle = truth[(truth["method"] == "oracle") & (truth["region"] != "all planted")]
    assert (oracle["rank_gain"] <= len(oracle) + 2).all(), oracle
    assert (oracle["enrichment"] > 3).all()


def test_regions_command_reproduces_the_study_tables(demo, tmp_path):
    predictions = pd.read_csv(demo / "predictions.csv")
    subjects = tmp_path / "subjects.csv"
    predictions[["subject", "label", "prediction"]].to_csv(subjects, index=False)
    study = json.loads((demo / "metrics.json").read_text())
    assert study["planted_regions"]
    out = tmp_path / "regions"
    minimum = str(int(np.ceil(1000 / 4**3)))
    status = main(["regions", "--maps", str(demo / "maps"), "--subjects", str(subjects), "--out", str(out),
                   "--min-region-voxels", minimum, "--no-figures"])
    assert status == 0
    ours = pd.read_csv(out / "summary.csv").sort_values(["method", "region"]).reset_index(drop=True)
    theirs = pd.read_csv(demo / "summary.csv").sort_values(["method", "region"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-5)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--subjects", "2"], "at least 20 subjects"),
    (["--atrophy", "Hipocampus"], "close matches: Hippocampus"),
])
def test_bad_demo_input_is_explained(arguments, message, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "out"), "--quiet", *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_command_redraws_a_finished_study(demo, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(demo, folder, ignore=shutil.ignore_patterns("figures", "report.html", "cohort"))
    # the maps table points into the original folder; the copy's report must still find every file
    assert main(["report", str(folder), "--title", "again"]) == 0
    html = (folder / "report.html").read_text()
    assert "<title>again</title>" in html and "Ground truth" in html
    assert len(list((folder / "figures").glob("*.png"))) == len(list((demo / "figures").glob("*.png")))


def test_report_command_refuses_a_folder_without_a_study(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "study.json" in capsys.readouterr().err
