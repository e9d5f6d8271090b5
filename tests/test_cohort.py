"""Cohort analysis (lrp.neuro.cohort, lrp.neuro.statistics) on constructed cohorts with known answers.

References are computed independently: numpy means over stacked maps, hand-made tables, and
brute-force enumeration of every pairing for the permutation test.
"""
from __future__ import annotations

import itertools
import os
import tracemalloc
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from lrp.errors import DataError, NonFiniteError
from lrp.neuro import cohort
from lrp.neuro.cohort import (
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
from lrp.neuro.io import save_image
from lrp.neuro.statistics import covariate_correlation, region_covariate_correlations

# subject: (label, prediction, expected outcome); labels and predictions mix names and indices (HC=0, AD=1)
COHORT = {
    "s1": ("AD", "AD", "TP"), "s2": (1, 1, "TP"), "s3": ("AD", 1, "TP"),
    "s4": ("HC", "HC", "TN"), "s5": (0, "HC", "TN"),
    "s6": ("HC", "AD", "FP"), "s7": (0, 1, "FP"),
    "s8": ("AD", "HC", "FN"),
}
SHAPE = (3, 4, 5)


@pytest.fixture
def groups() -> pd.DataFrame:
    subjects = pd.DataFrame({"subject": list(COHORT), "label": [v[0] for v in COHORT.values()],
                             "prediction": [v[1] for v in COHORT.values()]})
    return assign_groups(subjects)


def subject_maps(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {subject: rng.normal(size=SHAPE).astype(np.float32) for subject in COHORT}


# -- groups ----------------------------------------------------------------------------------------
def test_assign_groups_outcomes_and_counts(groups):
    assert list(groups["outcome"]) == [v[2] for v in COHORT.values()]
    assert groups["outcome"].value_counts().to_dict() == {"TP": 3, "TN": 2, "FP": 2, "FN": 1}
    assert list(groups["group_true"]) == ["AD"] * 3 + ["HC"] * 4 + ["AD"]
    assert list(groups["group_pred"]) == ["AD"] * 3 + ["HC"] * 2 + ["AD"] * 2 + ["HC"]


def test_assign_groups_other_disease_and_input_unchanged():
    subjects = pd.DataFrame({"subject": [1, 2, 3, 4], "label": [0, 2, 2, 0], "prediction": [2, 2, 0, 0]})
    before = subjects.copy()
    names = {"positive": "PD", "negative": "HC", "class_names": ("HC", "MSA", "PD")}
    groups = assign_groups(subjects, **names)
    assert list(groups["outcome"]) == ["FP", "TP", "FN", "TN"] and list(groups["group_true"]) == ["HC", "PD", "PD", "HC"]
    pd.testing.assert_frame_equal(subjects, before)
    with pytest.raises(DataError, match="must be 'PD' or 'HC'"):  # MSA: a class, but not one of the two
        assign_groups(subjects.assign(label=[0, 1, 2, 0]), **names)


@pytest.mark.parametrize("change, message", [
    ({"label": ["AD", "MCI", "HC"]}, "MCI"),
    ({"prediction": [0, 1, 2]}, "prediction"),
    ({"subject": ["a", "b", "a"]}, "duplicated"),
    ({"label": ["AD", None, "HC"]}, "label"),
])
def test_assign_groups_rejects_bad_rows(change, message):
    subjects = pd.DataFrame({"subject": ["a", "b", "c"], "label": ["AD", "HC", "HC"], "prediction": [1, 0, 0]})
    with pytest.raises(DataError, match=message):
        assign_groups(subjects.assign(**change))


def test_assign_groups_rejects_missing_column_and_bad_names():
    with pytest.raises(DataError, match="prediction"):
        assign_groups(pd.DataFrame({"subject": ["a"], "label": ["AD"]}))
    subjects = pd.DataFrame({"subject": ["a"], "label": ["AD"], "prediction": ["AD"]})
    with pytest.raises(ValueError, match="positive"):
        assign_groups(subjects, positive="PD")


# -- group mean maps -------------------------------------------------------------------------------
def test_group_mean_maps_equal_numpy_means(groups):
    maps = subject_maps()
    means = group_mean_maps(((subject, data) for subject, data in maps.items()), groups)  # a generator
    members = {"AD": ["s1", "s2", "s3", "s8"], "HC": ["s4", "s5", "s6", "s7"], "TP": ["s1", "s2", "s3"],
               "TN": ["s4", "s5"], "FP": ["s6", "s7"], "FN": ["s8"]}
    assert list(means) == list(members)
    for name, subjects in members.items():
        expected = np.stack([maps[s].astype(np.float64) for s in subjects]).mean(axis=0)
        assert means[name].dtype == np.float64 and means[name].shape == SHAPE
        np.testing.assert_allclose(means[name], expected, rtol=1e-12, atol=1e-12)


def test_group_means_counts_subset_and_empty_groups(groups):
    accumulator = GroupMeans(groups, which=("FN", "TN", "HC")).update(
        {s: m for s, m in subject_maps().items() if s != "s8"})
    assert accumulator.counts == {"FN": 0, "TN": 2, "HC": 4} and accumulator.empty == ("FN",)
    assert list(accumulator.means()) == ["TN", "HC"]
    with pytest.raises(DataError, match="FN"):
        accumulator.mean("FN")


def test_group_means_rejects_bad_maps_and_adds_nothing(groups):
    accumulator = GroupMeans(groups).update({"s1": np.ones(SHAPE)})
    bad = [("s9", np.ones(SHAPE), DataError), ("s1", np.ones(SHAPE), DataError), ("s2", np.ones((3, 4)), DataError),
           ("s2", np.full(SHAPE, np.nan), NonFiniteError), ("s2", np.full(SHAPE, "x"), DataError)]
    for subject, data, error in bad:
        with pytest.raises(error, match=subject):
            accumulator.add(subject, data)
    assert accumulator.counts["AD"] == 1 and accumulator.counts["HC"] == 0
    np.testing.assert_array_equal(accumulator.mean("AD"), np.ones(SHAPE))
    with pytest.raises(ValueError, match="which"):
        GroupMeans(groups, which=("AD", "MCI"))


def test_group_means_memory_is_bounded(groups):
    """40 maps streamed from a generator: peak memory stays near the four (class, outcome)
    accumulators plus one map, far below the 40 maps an all-in-memory mean would hold."""
    shape = (20, 25, 25)
    nbytes = np.prod(shape) * 8
    subjects = pd.DataFrame({"subject": range(40), "label": [i % 2 for i in range(40)],
                             "prediction": [(i // 2) % 2 for i in range(40)]})
    cohort = assign_groups(subjects)
    rng = np.random.default_rng(1)
    tracemalloc.start()
    try:
        means = GroupMeans(cohort, which=("TP", "TN", "FP", "FN")).update(
            (subject, rng.normal(size=shape)) for subject in range(40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert means.counts == {"TP": 10, "TN": 10, "FP": 10, "FN": 10}
    assert peak < 7 * nbytes, f"peak {peak / nbytes:.1f} maps"


# -- region tables ---------------------------------------------------------------------------------
def region_table(groups: pd.DataFrame) -> pd.DataFrame:
    """Per-subject region sums with known group means: region "A": TP 5, 6, 7 (mean 6), HC 1, 3, 1, 3
    (mean 2); "B": HC mean 0; "C": HC mean -1; density = sum / 10."""
    values = {"A": {"TP": [5, 6, 7], "HC": [1, 3, 1, 3], "FN": [4]},
              "B": {"TP": [1, 2, 3], "HC": [1, -1, 2, -2], "FN": [4]},
              "C": {"TP": [3, 3, 3], "HC": [-1, -1, -1, -1], "FN": [4]}}
    by_group = {"TP": ["s1", "s2", "s3"], "HC": ["s4", "s5", "s6", "s7"], "FN": ["s8"]}
    rows = [{"subject": s, "region_id": i + 1, "region": region, "voxels": 10, "sum": float(v), "density": v / 10}
            for i, (region, table) in enumerate(values.items())
            for group, numbers in table.items() for s, v in zip(by_group[group], numbers)]
    return pd.DataFrame(rows)


def test_region_group_means_match_hand_values(groups):
    table = region_group_means(region_table(groups), groups, value="sum", which=("TP", "HC", "FN", "AD"))
    assert list(table.columns) == ["region_id", "region", "group", "value", "n", "mean", "std"]
    row = table.set_index(["region", "group"])
    assert row.loc[("A", "TP"), "mean"] == 6 and row.loc[("A", "TP"), "n"] == 3
    assert row.loc[("A", "HC"), "std"] == pytest.approx(np.std([1, 3, 1, 3], ddof=1))
    assert row.loc[("A", "AD"), "mean"] == pytest.approx(np.mean([5, 6, 7, 4]))
    assert np.isnan(row.loc[("A", "FN"), "std"]) and row.loc[("A", "FN"), "n"] == 1


def test_region_group_means_empty_group_and_unknown_subject(groups):
    stats = region_table(groups)
    stats = stats[stats["subject"] != "s8"]
    row = region_group_means(stats, groups).set_index(["region", "group"])
    assert row.loc[("A", "FN"), "n"] == 0 and np.isnan(row.loc[("A", "FN"), "mean"])
    with pytest.raises(DataError, match="s99"):
        region_group_means(pd.concat([stats, stats.iloc[:1].assign(subject="s99")]), groups)
    with pytest.raises(DataError, match="several rows"):
        region_group_means(pd.concat([stats, stats.iloc[:1]]), groups)


def test_gain_and_non_positive_reference_rule(groups):
    table = gain(region_table(groups), groups, value="sum", group="TP", reference="HC").set_index("region")
    assert table.loc["A", "gain"] == pytest.approx(3.0)  # 6 / 2
    assert table.loc["A", "mean_group"] == 6 and table.loc["A", "mean_reference"] == 2
    assert np.isnan(table.loc["B", "gain"]) and np.isnan(table.loc["C", "gain"])  # reference mean 0, -1
    assert not np.isinf(table["gain"]).any()
    density = gain(region_table(groups), groups, value="density").set_index("region")
    assert density.loc["A", "gain"] == pytest.approx(3.0)


def test_rank_regions_ties_nan_and_top():
    table = pd.DataFrame({"region": ["e", "d", "c", "b", "a"], "gain": [5.0, 3.0, 5.0, np.nan, 1.0]})
    ranked = rank_regions(table, by="gain")
    assert list(ranked["region"]) == ["c", "e", "d", "a", "b"]  # ties by region name, NaN last
    assert ranked["rank"].tolist()[:4] == [1, 1, 3, 4] and ranked["rank"].isna().tolist()[-1]
    assert list(rank_regions(table, by="gain", top=2)["region"]) == ["c", "e"]
    assert len(rank_regions(table, by="gain", top=10)) == 4  # unranked (NaN) rows never in a top list


def test_rank_regions_within_each_group():
    table = pd.DataFrame({"group": ["TP", "TP", "HC", "HC"], "region": ["a", "b", "a", "b"], "mean": [1, 2, 4, 3]})
    ranked = rank_regions(table, by="mean", top=1)
    assert sorted(zip(ranked["group"], ranked["region"])) == [("HC", "a"), ("TP", "b")]


# -- top-k overlap ---------------------------------------------------------------------------------
def test_topk_overlap_of_hand_made_rankings():
    rankings = {"beta0": ["x", "y", "z", "w"], "beta0.5": ["z", "x", "q", "y"], "beta1": ["p", "q", "r", "x"]}
    overlap = topk_overlap(rankings, k=3)
    first = overlap.iloc[0]
    assert (first["run_a"], first["run_b"], first["k"], first["intersection"]) == ("beta0", "beta0.5", 3, 2)
    assert first["jaccard"] == pytest.approx(2 / 4) and first["shared"] == "x; z"
    assert overlap.iloc[1]["intersection"] == 0 and overlap.iloc[1]["jaccard"] == 0
    assert overlap.iloc[2]["shared"] == "q" and overlap.iloc[2]["jaccard"] == pytest.approx(1 / 5)
    matrix = overlap_matrix(overlap)
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T)
    assert (np.diag(matrix) == 1).all() and matrix.loc["beta1", "beta0.5"] == pytest.approx(0.2)
    assert overlap_matrix(overlap, value="intersection").loc["beta0", "beta0"] == 3


def test_topk_overlap_from_ranked_table_and_errors():
    long = pd.DataFrame({"run": ["a"] * 3 + ["b"] * 3, "region": ["r1", "r2", "r3", "r3", "r1", "r2"],
                         "gain": [3.0, 2.0, 1.0, 9.0, 8.0, 7.0]})
    overlap = topk_overlap(rank_regions(long, by="gain"), k=2)
    assert overlap.iloc[0]["intersection"] == 1 and overlap.iloc[0]["shared"] == "r1"
    with pytest.raises(DataError, match="fewer than k=4"):
        topk_overlap({"a": ["r1", "r2", "r3"], "b": ["r1", "r2", "r3", "r4"]}, k=4)
    with pytest.raises(DataError, match="more than once"):
        topk_overlap({"a": ["r1", "r1"], "b": ["r1", "r2"]}, k=2)


# -- correlation with a covariate ------------------------------------------------------------------
def brute_force_p(x: np.ndarray, y: np.ndarray, correlation) -> dict[str, float]:
    """p-values over every one of the n! pairings (observed one included), scipy's two-sided rule."""
    observed = correlation(x, y)
    null = np.array([correlation(x[list(order)], y) for order in itertools.permutations(range(len(x)))])
    tolerance = 1e-12
    greater = np.mean(null >= observed - tolerance)
    less = np.mean(null <= observed + tolerance)
    return {"greater": greater, "less": less, "two-sided": min(1.0, 2 * min(greater, less))}


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_permutation_p_equals_exact_enumeration(method):
    rng = np.random.default_rng(3)
    x = rng.normal(size=6)
    y = 0.6 * x + rng.normal(size=6)
    def pearson(a, b):
        return np.corrcoef(a, b)[0, 1]
    def spearman(a, b):
        return scipy.stats.spearmanr(a, b).statistic
    reference = brute_force_p(x, y, pearson if method == "pearson" else spearman)
    for alternative, p in reference.items():
        result = covariate_correlation(x, y, method=method, alternative=alternative, permutations=10000)
        assert result.exact and result.permutations == 720 and result.n == 6
        assert result.p_permutation == pytest.approx(p, abs=1e-12), alternative
    assert result.r == pytest.approx((pearson if method == "pearson" else spearman)(x, y))


def test_perfect_correlation_gives_smallest_p():
    x = np.arange(6.0)
    exact = covariate_correlation(x, 2 * x + 1, alternative="greater")
    assert exact.r == pytest.approx(1.0) and exact.p_permutation == pytest.approx(1 / 720)
    x = np.arange(30.0)
    sampled = covariate_correlation(x, x ** 3, method="spearman", permutations=999)
    assert sampled.r == pytest.approx(1.0) and not sampled.exact
    assert sampled.p_permutation == pytest.approx(2 / 1000)  # two-sided: 2 × (0 hits + 1) / (999 + 1)


def test_uncorrelated_data_gives_large_p():
    x = np.arange(-6.0, 7.0)
    result = covariate_correlation(x, x ** 2, permutations=2000)  # r = 0 exactly by symmetry
    assert abs(result.r) < 1e-12 and result.p_permutation > 0.5 and result.p_parametric > 0.5


def test_sampled_permutations_are_seeded_and_near_exact():
    rng = np.random.default_rng(5)
    x = rng.normal(size=8)
    y = 0.5 * x + rng.normal(size=8)
    exact = covariate_correlation(x, y, permutations=50000).p_permutation  # 8! = 40320 <= 50000
    first, again, other = (covariate_correlation(x, y, permutations=4000, seed=seed).p_permutation
                           for seed in (1, 1, 2))
    assert first == again and first != other
    assert abs(first - exact) < 4 * np.sqrt(exact * (1 - exact) / 4000) + 1e-3


def test_series_are_paired_by_subject():
    x = pd.Series([1.0, 2.0, 4.0, 3.0, 7.0], index=list("abcde"))
    y = pd.Series([10.0, 30.0, 20.0, 40.0, 60.0], index=list("abcde"))
    shuffled = covariate_correlation(x, y.iloc[::-1], permutations=100)
    assert shuffled == covariate_correlation(x.to_numpy(), y.to_numpy(), permutations=100)
    with pytest.raises(DataError, match="different subjects"):
        covariate_correlation(x, y.rename({"a": "z"}))


@pytest.mark.parametrize("values, covariate, message", [
    ([1.0, 2.0, 3.0], [1.0, 2.0], "covariate"), ([1.0, 2.0], [1.0, 2.0], "at least 3"),
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN"), ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "constant"),
])
def test_covariate_correlation_rejects_bad_input(values, covariate, message):
    with pytest.raises(DataError, match=message):
        covariate_correlation(values, covariate)


def test_region_covariate_correlations_per_region_and_method():
    rng = np.random.default_rng(7)
    subjects = [f"s{i}" for i in range(9)]
    volume = rng.normal(3.5, 0.4, size=9)
    stats = pd.DataFrame([{"method": method, "subject": s, "region": region, "sum": rng.normal() + v * (region == "Hip")}
                          for method in ("lrp", "gb") for region in ("Hip", "Amy") for s, v in zip(subjects, volume)])
    covariates = pd.DataFrame({"subject": subjects[::-1], "hip_volume": volume[::-1],
                               "amy_volume": rng.normal(size=9)})
    table = region_covariate_correlations(stats, covariates, region=["Hip", "Amy"],
                                          covariate={"Hip": "hip_volume", "Amy": "amy_volume"}, permutations=200)
    assert list(zip(table["method"], table["region"])) == [("lrp", "Hip"), ("lrp", "Amy"), ("gb", "Hip"),
                                                            ("gb", "Amy")]
    for row in table.itertuples():
        part = stats[(stats["method"] == row.method) & (stats["region"] == row.region)]
        column = covariates.set_index("subject").loc[part["subject"], row.covariate]
        assert row.r == pytest.approx(np.corrcoef(part["sum"], column)[0, 1]) and row.n == 9
    with pytest.raises(DataError, match="s8"):
        region_covariate_correlations(stats, covariates[covariates["subject"] != "s8"], region="Hip",
                                      covariate="hip_volume")
    with pytest.raises(DataError, match="Thalamus"):
        region_covariate_correlations(stats, covariates, region="Thalamus", covariate="hip_volume")


# -- files -----------------------------------------------------------------------------------------
class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot format this cell")


def test_write_tables_round_trip_and_no_temporary_files(tmp_path, groups):
    overlap = topk_overlap({"a": ["x", "y"], "b": ["y", "z"]}, k=2)
    paths = write_tables({"gain": gain(region_table(groups), groups), "overlap": overlap_matrix(overlap)},
                         tmp_path / "tables")
    assert sorted(os.listdir(tmp_path / "tables")) == ["gain.csv", "overlap.csv"]
    read = pd.read_csv(paths["gain"])
    assert list(read["region"]) == ["A", "B", "C"] and read["gain"].iloc[0] == pytest.approx(3.0)
    assert list(pd.read_csv(paths["overlap"], index_col="run").columns) == ["a", "b"]


def test_write_tables_failure_leaves_nothing(tmp_path):
    good = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(RuntimeError, match="cannot format"):
        write_tables({"good": good, "bad": pd.DataFrame({"a": [Unprintable()]})}, tmp_path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="plain file name"):
        write_tables({"good": good, "../escape": good}, tmp_path)
    assert os.listdir(tmp_path) == []


def test_save_group_maps_writes_nifti_atomically(tmp_path, groups, monkeypatch):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    accumulator = GroupMeans(groups, which=("AD", "TP", "FN")).update(
        {s: m for s, m in subject_maps().items() if s != "s8"})
    with pytest.warns(UserWarning, match="FN"):
        paths = save_group_maps(accumulator, affine, tmp_path, prefix="lrp_")
    assert sorted(os.listdir(tmp_path)) == ["lrp_mean_AD.nii.gz", "lrp_mean_TP.nii.gz"]
    image = nibabel.load(paths["TP"])
    np.testing.assert_allclose(image.get_fdata(), accumulator.mean("TP"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(image.affine, affine)

    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_image(*args, **kwargs)

    monkeypatch.setattr(cohort, "save_image", fail_on_second)
    target = tmp_path / "failed"
    with pytest.raises(OSError, match="disk full"):
        save_group_maps({"AD": np.ones(SHAPE), "HC": np.zeros(SHAPE)}, affine, target)
    assert not target.exists() or os.listdir(target) == []
    assert Path(paths["AD"]).exists()
