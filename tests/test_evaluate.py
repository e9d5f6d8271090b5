"""lrp.evaluate against hand-computed cases, straightforward loop re-implementations and scipy.

The perturbation references below remove units one by one with explicit boolean masks and re-run a
linear score f(x) = w·x + b, so on a linear model the exact curves and AOPC values are known; fills
are checked against scipy.ndimage, localisation against hand-built masks, randomisation against
explainers whose dependence on the weights is known by construction.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch
from torch import Tensor, nn

import lrp
from lrp.errors import DataError, TargetError
from lrp.evaluate import (
    atlas_perturbation,
    evaluate,
    fill_values,
    localisation_scores,
    model_randomisation,
    parameter_layers,
    pointing_game,
    randomised_correlation,
    rank_correlation,
    region_perturbation,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)

DTYPE = torch.float64


# -- helpers -------------------------------------------------------------------------------------------
def linear_model(weight: Tensor, bias: float = 0.5, seed: int = 0) -> nn.Sequential:
    """Flatten + Linear with 2 classes; class 0 scores f(x) = weight·x + bias, weight (C, *S)."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(weight.numel(), 2).to(DTYPE)
    with torch.no_grad():
        layer.weight[0] = weight.reshape(-1)
        layer.weight[1] = torch.randn(weight.numel(), generator=generator, dtype=DTYPE)
        layer.bias.copy_(torch.tensor([bias, 0.1], dtype=DTYPE))
    return nn.Sequential(nn.Flatten(), layer).eval()


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Gradient × input by autograd (an explainer independent of lrp.methods)."""
    leaf = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    return grad * leaf.detach()


def random_tensor(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def patch_masks(grid: tuple[int, ...], size: tuple[int, ...]) -> list[Tensor]:
    """Boolean masks of the patches tiling ``grid`` row-major, border patches partial."""
    masks = []
    for starts in itertools.product(*(range(0, n, s) for n, s in zip(grid, size))):
        mask = torch.zeros(grid, dtype=torch.bool)
        mask[tuple(slice(start, start + s) for start, s in zip(starts, size))] = True
        masks.append(mask)
    return masks


def reference_curves(weight: Tensor, bias: float, x: Tensor, regions: list[Tensor], order: str,
                     fill: Tensor | None = None, density: bool = False) -> Tensor:
    """Curves (N, U + 1) of f(x) = weight·x + bias, removing regions one at a time, relevance = weight·x."""
    fill = torch.zeros_like(x) if fill is None else fill
    curves = []
    for sample, replacement in zip(x, fill):
        voxel_relevance = (weight * sample).sum(0)
        scores = [float(voxel_relevance[region].sum()) / (int(region.sum()) if density else 1) for region in regions]
        sequence = sorted(range(len(regions)), key=lambda u: -scores[u] if order == "most" else scores[u])
        current = sample.clone()
        curve = [float((weight * current).sum()) + bias]
        for unit in sequence:
            current[:, regions[unit]] = replacement[:, regions[unit]]
            curve.append(float((weight * current).sum()) + bias)
        curves.append(curve)
    return torch.tensor(curves, dtype=DTYPE)


def aopc(curves: Tensor) -> Tensor:
    return torch.stack([sum(row[0] - value for value in row) / len(row) for row in curves])


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 4)).to(DTYPE)


def snapshot(model: nn.Module) -> dict:
    """Everything about ``model`` that evaluating must leave alone."""
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "grad": [p.requires_grad for p in model.parameters()],
            "training": [m.training for m in model.modules()],
            "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                      for m in model.modules()]}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert before["grad"] == after["grad"] and before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]


# -- region perturbation --------------------------------------------------------------------------------
def test_hand_computed_curves_and_aopc():
    # w = [[1,2,3,4],[5,6,7,8]], x = 1, b = 0.5: left 2×2 patch sums to 14, right to 22, f(x) = 36.5
    weight = torch.arange(1.0, 9.0, dtype=DTYPE).reshape(1, 2, 4)
    model = linear_model(weight)
    x = torch.ones(1, 1, 2, 4, dtype=DTYPE)
    relevance = weight * x
    morf = region_perturbation(model, x, relevance, 0, patch_size=2, order="most")
    lerf = region_perturbation(model, x, relevance, 0, patch_size=2, order="least")
    assert morf.curves.tolist() == [[36.5, 14.5, 0.5]] and lerf.curves.tolist() == [[36.5, 22.5, 0.5]]
    assert morf.aopc.item() == pytest.approx(58 / 3, abs=1e-12)  # (0 + 22 + 36) / 3
    assert lerf.mean_aopc == pytest.approx(50 / 3, abs=1e-12)    # (0 + 14 + 36) / 3
    assert morf.removed.tolist() == [0, 1, 2] and morf.units == 2 and morf.target.tolist() == [0]


@pytest.mark.parametrize("shape, size", [((3, 2, 3, 5), (2, 2)), ((2, 1, 5, 4, 3), (2, 2, 2)),
                                         ((2, 2, 8), (3,))], ids=["2d", "3d", "1d"])
@pytest.mark.parametrize("order", ["most", "least"])
def test_curves_match_loop_reference_with_partial_patches(shape, size, order):
    weight = random_tensor(*shape[1:], seed=1)
    model = linear_model(weight, bias=-0.3)
    x = random_tensor(*shape, seed=2)
    result = region_perturbation(model, x, gradient_x_input(model, x, torch.zeros(shape[0], dtype=torch.long)), 0,
                                 patch_size=size[0] if len(set(size)) == 1 else size, order=order, batch_size=5)
    expected = reference_curves(weight, -0.3, x, patch_masks(shape[2:], size), order)
    torch.testing.assert_close(result.curves, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(result.aopc, aopc(expected), rtol=1e-10, atol=1e-10)


def test_morf_above_random_above_lerf_on_a_linear_model():
    weight = random_tensor(1, 6, 6, seed=3)
    model = linear_model(weight)
    x = random_tensor(4, 1, 6, 6, seed=4)
    relevance = weight * x
    target = torch.zeros(4, dtype=torch.long)
    kwargs = {"patch_size": 2, "steps": 0.5}
    morf = region_perturbation(model, x, relevance, target, order="most", **kwargs).aopc
    lerf = region_perturbation(model, x, relevance, target, order="least", **kwargs).aopc
    for seed in range(3):
        random = region_perturbation(model, x, None, target, order="random", seed=seed, **kwargs).aopc
        assert bool((morf >= random - 1e-12).all()) and bool((random >= lerf - 1e-12).all())
    assert bool((morf > lerf).all())


def test_random_order_is_seeded_and_a_permutation():
    weight = random_tensor(1, 4, 4, seed=5)
    model = linear_model(weight, bias=0.0)
    x = random_tensor(2, 1, 4, 4, seed=6)
    first = region_perturbation(model, x, None, 0, patch_size=2, order="random", seed=7)
    again = region_perturbation(model, x, None, 0, patch_size=2, order="random", seed=7)
    other = region_perturbation(model, x, None, 0, patch_size=2, order="random", seed=8)
    torch.testing.assert_close(first.curves, again.curves, rtol=0, atol=0)
    assert not torch.equal(first.curves, other.curves)
    # every order removes everything: f ends at the bias, and each drop is one patch's relevance
    patch_sums = sorted(float((weight * x[0])[0][m].sum()) for m in patch_masks((4, 4), (2, 2)))
    drops = sorted((first.curves[0, :-1] - first.curves[0, 1:]).tolist())
    assert drops == pytest.approx(patch_sums, abs=1e-12)
    assert first.curves[:, -1].tolist() == pytest.approx([0.0, 0.0], abs=1e-12)


def test_steps_fraction_and_units_per_step():
    weight = random_tensor(1, 4, 6, seed=9)
    model = linear_model(weight)
    x = random_tensor(1, 1, 4, 6, seed=10)
    full = reference_curves(weight, 0.5, x, patch_masks((4, 6), (2, 2)), "most")  # 6 patches
    half = region_perturbation(model, x, weight * x, 0, patch_size=2, steps=0.5)
    assert half.removed.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(half.curves, full[:, :4], rtol=1e-10, atol=1e-10)
    paired = region_perturbation(model, x, weight * x, 0, patch_size=2, steps=2, units_per_step=4)
    assert paired.removed.tolist() == [0, 4, 6]
    torch.testing.assert_close(paired.curves, full[:, [0, 4, 6]], rtol=1e-10, atol=1e-10)
    three = region_perturbation(model, x, weight * x, 0, patch_size=2, steps=3)
    torch.testing.assert_close(three.curves, full[:, :4], rtol=1e-10, atol=1e-10)


def test_batch_size_does_not_change_the_curves():
    weight = random_tensor(2, 5, 5, seed=11)
    model = linear_model(weight)
    x = random_tensor(3, 2, 5, 5, seed=12)
    small = region_perturbation(model, x, weight * x, 0, patch_size=2, batch_size=1)
    large = region_perturbation(model, x, weight * x, 0, patch_size=2, batch_size=1000)
    torch.testing.assert_close(small.curves, large.curves, rtol=1e-12, atol=1e-12)


def test_probability_score_and_default_target():
    weight = random_tensor(1, 4, 4, seed=13)
    model = linear_model(weight)
    x = random_tensor(2, 1, 4, 4, seed=14)
    result = region_perturbation(model, x, weight * x, patch_size=2, score="probability")
    probabilities = torch.softmax(model(x), 1)
    assert result.target.tolist() == probabilities.argmax(1).tolist()
    torch.testing.assert_close(result.curves[:, 0], probabilities.max(1).values, rtol=1e-12, atol=1e-12)
    assert bool(((result.curves >= 0) & (result.curves <= 1)).all())


# -- fills ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, sigma", [((2, 3, 7, 9), 1.3), ((1, 2, 5, 6, 7), (0.8, 0.0, 2.0)),
                                          ((2, 1, 4, 3), 3.0), ((2, 2, 11), 1.0)], ids=["2d", "3d", "wide", "1d"])
def test_blur_fill_matches_scipy(shape, sigma):
    x = random_tensor(*shape, seed=15)
    sigmas = (0.0, 0.0, *((sigma,) * (len(shape) - 2) if isinstance(sigma, float) else sigma))
    expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma=sigmas, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(fill_values(x, "blur", sigma=sigma).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_mean_fill_matches_scipy():
    x = random_tensor(2, 3, 4, 5, seed=16)
    expected = np.array([[scipy.ndimage.mean(channel) for channel in sample] for sample in x.numpy()])
    filled = fill_values(x, "mean")
    assert filled.shape == x.shape
    np.testing.assert_allclose(filled.numpy(), np.broadcast_to(expected[:, :, None, None], x.shape), rtol=1e-12)
    assert bool((fill_values(x, "constant", value=-2.5) == -2.5).all())


@pytest.mark.parametrize("fill", ["blur", "mean"])
def test_removing_everything_leaves_the_fill(fill):
    # after the last step every voxel is replaced, so f ends at f(fill), with the fill computed by scipy
    weight = random_tensor(2, 4, 5, 3, seed=17)
    model = linear_model(weight)
    x = random_tensor(2, 2, 4, 5, 3, seed=18)
    if fill == "blur":
        expected = scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5, 1.5), mode="reflect")
    else:
        expected = np.broadcast_to(x.numpy().mean(axis=(2, 3, 4), keepdims=True), x.shape)
    result = region_perturbation(model, x, weight * x, 0, patch_size=2, fill=fill, sigma=1.5)
    final = (weight.numpy() * expected).reshape(2, -1).sum(1) + 0.5
    np.testing.assert_allclose(result.curves[:, -1].numpy(), final, rtol=1e-10)
    expected_curves = reference_curves(weight, 0.5, x, patch_masks((4, 5, 3), (2, 2, 2)), "most",
                                       fill=torch.from_numpy(np.ascontiguousarray(expected)))
    torch.testing.assert_close(result.curves, expected_curves, rtol=1e-10, atol=1e-10)


# -- atlas regions -------------------------------------------------------------------------------------------
def atlas_volume() -> np.ndarray:
    """A 4×5×3 label volume: background 0 and regions 1, 2, 7 of 6, 12 and 30 voxels."""
    labels = np.full((4, 5, 3), 7, dtype=np.int16)
    labels[0, :2, :] = 0                       # 6 background voxels
    labels[1:, 0, :] = 1
    labels[1:, 0, 2] = 0                       # region 1: 6 voxels, 3 more background
    labels[:, 3:, :] = 2                       # region 2: 24 voxels
    labels[0, 3:, :] = 0                       # -> 18 voxels
    return labels


@pytest.mark.parametrize("rank_by", ["sum", "density"])
@pytest.mark.parametrize("order", ["most", "least"])
def test_atlas_regions_as_units(rank_by, order):
    labels = atlas_volume()
    weight = random_tensor(1, 4, 5, 3, seed=19)
    model = linear_model(weight)
    x = random_tensor(3, 1, 4, 5, 3, seed=20)
    regions = [torch.from_numpy(labels == region) for region in (1, 2, 7)]
    result = atlas_perturbation(model, x, weight * x, torch.from_numpy(labels), 0, order=order, rank_by=rank_by)
    expected = reference_curves(weight, 0.5, x, regions, order, density=rank_by == "density")
    torch.testing.assert_close(result.curves, expected, rtol=1e-10, atol=1e-10)
    # background stays: the last point is f of x with only the background left
    background = torch.from_numpy(labels == 0)
    kept = (weight * x)[:, 0][:, background].sum(1) + 0.5
    torch.testing.assert_close(result.curves[:, -1], kept, rtol=1e-10, atol=1e-10)
    assert result.units == 3


def test_density_ranking_differs_from_sum_ranking():
    # one large region with a larger sum but a lower density than a small one
    labels = np.zeros((2, 2, 4), dtype=np.int64)
    labels[:, :, :3] = 1   # 12 voxels
    labels[:, :, 3] = 2    # 4 voxels
    weight = torch.ones(1, 2, 2, 4, dtype=DTYPE)
    model = linear_model(weight, bias=0.0)
    x = torch.ones(1, 1, 2, 2, 4, dtype=DTYPE)
    x[..., 3] = 2.0        # region 1: sum 12, density 1; region 2: sum 8, density 2
    by_sum = atlas_perturbation(model, x, weight * x, labels, 0, order="most", rank_by="sum")
    by_density = atlas_perturbation(model, x, weight * x, labels, 0, order="most", rank_by="density")
    assert by_sum.curves.tolist() == [[20.0, 8.0, 0.0]]
    assert by_density.curves.tolist() == [[20.0, 12.0, 0.0]]


# -- localisation -----------------------------------------------------------------------------------------------
def localisation_case() -> Tensor:
    """Relevance (2, 2, 2, 2) whose channel sums are [[3, -1], [1, 0]] and [[0, 5], [2, -3]]."""
    sums = torch.tensor([[[3.0, -1.0], [1.0, 0.0]], [[0.0, 5.0], [2.0, -3.0]]], dtype=DTYPE)
    return torch.stack([sums + 1.0, torch.full_like(sums, -1.0)], dim=1)


def test_localisation_on_hand_built_masks():
    relevance = localisation_case()
    corner = torch.tensor([[True, False], [False, False]])
    assert relevance_mass_accuracy(relevance, corner).tolist() == [0.75, 0.0]   # 3/4, 0/7
    assert relevance_rank_accuracy(relevance, corner).tolist() == [1.0, 0.0]    # top-1: the 3; the 5
    assert pointing_game(relevance, corner).tolist() == [True, False]
    per_sample = torch.stack([corner, torch.tensor([[True, True], [False, False]])])
    scores = localisation_scores(relevance, per_sample.numpy().astype(np.uint8))
    assert scores["mass_accuracy"].tolist() == pytest.approx([0.75, 5 / 7])
    assert scores["rank_accuracy"].tolist() == [1.0, 0.5]   # sample 2, top-2 = {5, 2}: one inside
    assert scores["pointing_game"].tolist() == [True, True]


def test_localisation_degenerate_cases():
    relevance = -torch.ones(1, 1, 2, 3, dtype=DTYPE)
    assert torch.isnan(relevance_mass_accuracy(relevance, torch.ones(2, 3, dtype=torch.bool))).all()
    assert torch.isnan(relevance_rank_accuracy(relevance, torch.zeros(2, 3, dtype=torch.bool))).all()


def test_localisation_rejects_mismatched_masks():
    relevance = localisation_case()
    with pytest.raises(DataError, match="mask has shape"):
        relevance_mass_accuracy(relevance, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(DataError, match="bool"):
        pointing_game(relevance, torch.full((2, 2), 0.5))


# -- randomisation ---------------------------------------------------------------------------------------------
def test_explainer_ignoring_weights_stays_correlated():
    model = mlp()
    x = random_tensor(3, 12, seed=21)
    table = model_randomisation(model, x, lambda m, inputs, target: inputs * 2.0)
    assert list(table.columns) == ["step", "layer", "correlation", "sample_0", "sample_1", "sample_2"]
    assert table["layer"].tolist() == ["4", "2", "0"] and table["step"].tolist() == [1, 2, 3]
    assert np.allclose(table[["correlation", "sample_0", "sample_1", "sample_2"]].to_numpy(), 1.0)


def test_gradient_x_input_decorrelates_and_model_is_untouched():
    model = mlp()
    model.train()
    model[2].weight.requires_grad_(False)
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    x = random_tensor(4, 12, seed=22)
    table = model_randomisation(model, x, gradient_x_input, seed=3)
    assert_unchanged(model, before)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert table["correlation"].iloc[-1] < 0.9
    assert table["correlation"].iloc[-1] == pytest.approx(
        float(randomised_correlation(model, x, gradient_x_input, seed=3).mean()), abs=1e-12)
    again = model_randomisation(model, x, gradient_x_input, seed=3)
    pd.testing.assert_frame_equal(table, again)


def first_layer_explainer(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Depends on the first layer's weights only."""
    return model[0].weight.sum(0).expand_as(x)


def test_cascade_runs_top_down():
    model = mlp()
    x = random_tensor(2, 12, seed=23)
    cascading = model_randomisation(model, x, first_layer_explainer)
    assert np.allclose(cascading["correlation"].iloc[:2], 1.0) and cascading["correlation"].iloc[2] < 0.99
    independent = model_randomisation(model, x, first_layer_explainer, cascading=False)
    assert np.allclose(independent["correlation"].iloc[:2], 1.0) and independent["correlation"].iloc[2] < 0.99
    only_middle = model_randomisation(model, x, first_layer_explainer, layers=["2"])
    assert only_middle["layer"].tolist() == ["2"] and np.allclose(only_middle["correlation"], 1.0)


def test_absolute_correlation():
    model = mlp()
    original = model[0].weight.detach().clone()

    def flips_sign(m: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return x if torch.equal(m[0].weight, original) else -x

    x = random_tensor(2, 12, seed=24)
    signed = model_randomisation(model, x, flips_sign)
    absolute = model_randomisation(model, x, flips_sign, absolute=True)
    assert signed["correlation"].tolist() == pytest.approx([1.0, 1.0, -1.0])
    assert absolute["correlation"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert rank_correlation(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[30.0, 20.0, 10.0]])).tolist() == [-1.0]


class Reordered(nn.Module):
    """Defines ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(5, 3)
        self.early = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.late(torch.relu(self.early(x)))


def test_layer_orders():
    model = Reordered()
    x = torch.randn(2, 4)
    assert parameter_layers(model, x) == ["late", "early"]
    assert parameter_layers(model, order="modules") == ["early", "late"]
    table = model_randomisation(model, x, lambda m, inputs, target: inputs, order="modules")
    assert table["layer"].tolist() == ["early", "late"]
    with pytest.raises(ValueError, match="layer order"):
        parameter_layers(model, x, order="backwards")
    with pytest.raises(ValueError, match="not modules with parameters"):
        model_randomisation(model, x, lambda m, inputs, target: inputs, layers=["middle"])


# -- evaluate ---------------------------------------------------------------------------------------------------
def test_evaluate_on_a_linear_model_matches_closed_form():
    weight = random_tensor(1, 4, 4, seed=25)
    model = linear_model(weight, bias=0.0)
    batches = [random_tensor(2, 1, 4, 4, seed=26), random_tensor(3, 1, 4, 4, seed=27)]
    target = [torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long)]
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    explainers = {
        "gradient_x_input": gradient_x_input,
        "lrp_zero": functools.partial(lrp.explain, composite="zero"),   # = w·x for a bias-free linear score
        "negated": lambda m, inputs, t: -gradient_x_input(m, inputs, t),
        "input": lambda m, inputs, t: inputs.clone(),
    }
    before = snapshot(model)
    table = evaluate(model, [(x, t, mask) for x, t in zip(batches, target)], explainers,
                     metrics=[*lrp.evaluate.METRICS], patch_size=2, progress=False)
    assert_unchanged(model, before)
    assert list(table.index) == list(explainers) and table.index.name == "method"
    assert list(table.columns) == list(lrp.evaluate.METRICS)
    x = torch.cat(batches)
    masks = patch_masks((4, 4), (2, 2))
    morf = aopc(reference_curves(weight, 0.0, x, masks, "most")).mean().item()
    lerf = aopc(reference_curves(weight, 0.0, x, masks, "least")).mean().item()
    row = table.loc["gradient_x_input"]
    assert row["aopc_morf"] == pytest.approx(morf, abs=1e-10) and row["aopc_lerf"] == pytest.approx(lerf, abs=1e-10)
    assert row["aopc_morf"] >= row["aopc_random"] >= row["aopc_lerf"]
    assert table.loc["lrp_zero", "aopc_morf"] == pytest.approx(morf, abs=1e-10)
    assert table.loc["negated", "aopc_morf"] == pytest.approx(lerf, abs=1e-10)
    assert table["aopc_random"].nunique() == 1
    random = torch.cat([region_perturbation(model, batch, None, classes, patch_size=2, order="random", seed=index).aopc
                        for index, (batch, classes) in enumerate(zip(batches, target))])   # batch b: seed + b
    assert row["aopc_random"] == pytest.approx(random.mean().item(), abs=1e-12)
    relevance = weight * x
    assert row["mass_accuracy"] == pytest.approx(relevance_mass_accuracy(relevance, mask).mean().item())
    assert row["pointing_game"] == pytest.approx(pointing_game(relevance, mask).double().mean().item())
    assert table.loc["input", "randomisation"] == pytest.approx(1.0)
    assert row["randomisation"] < 0.99


def test_evaluate_3d_cnn_with_atlas_and_single_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(3, 2)).to(DTYPE).eval()
    x = random_tensor(2, 1, 4, 5, 3, seed=28)
    table = evaluate(model, x, {"lrp": functools.partial(lrp.explain, composite="epsilon"),
                                "gradient_x_input": gradient_x_input},
                     labels=atlas_volume(), masks=torch.from_numpy(atlas_volume() == 2))  # with a progress bar
    assert list(table.columns) == ["aopc_morf", "aopc_lerf", "aopc_random", "mass_accuracy", "rank_accuracy",
                                   "pointing_game"]
    assert bool(np.isfinite(table.to_numpy()).all())


# -- errors ------------------------------------------------------------------------------------------------------
def test_clear_errors_and_nothing_changed():
    weight = random_tensor(1, 4, 4, seed=29)
    model = linear_model(weight)
    before = snapshot(model)
    x = random_tensor(2, 1, 4, 4, seed=30)
    relevance = weight * x
    with pytest.raises(ValueError, match="larger than the input grid"):
        region_perturbation(model, x, relevance, patch_size=5)
    with pytest.raises(ValueError, match="unknown fill 'noise'"):
        region_perturbation(model, x, relevance, patch_size=2, fill="noise")
    with pytest.raises(ValueError, match="unknown order 'middle'"):
        region_perturbation(model, x, relevance, patch_size=2, order="middle")
    with pytest.raises(ValueError, match="unknown score"):
        region_perturbation(model, x, relevance, patch_size=2, score="loss")
    with pytest.raises(ValueError, match="steps=9 is out of range"):
        region_perturbation(model, x, relevance, patch_size=2, steps=9)
    with pytest.raises(ValueError, match="expected the input's shape"):
        region_perturbation(model, x, relevance[:, :, :3], patch_size=2)
    with pytest.raises(ValueError, match="relevance=None"):
        region_perturbation(model, x, None, patch_size=2)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        region_perturbation(model, x[:, 0, 0], relevance[:, 0, 0], patch_size=2)
    with pytest.raises(TargetError):
        region_perturbation(model, x, relevance, torch.zeros(2, 2), patch_size=2)
    with pytest.raises(DataError, match=r"label volume has shape \(4, 5\)"):
        atlas_perturbation(model, x, relevance, np.ones((4, 5), dtype=int))
    with pytest.raises(DataError, match="non-integer"):
        atlas_perturbation(model, x, relevance, np.full((4, 4), 1.5))
    with pytest.raises(DataError, match="no region"):
        atlas_perturbation(model, x, relevance, np.zeros((4, 4), dtype=int))
    with pytest.raises(DataError, match="mask has shape"):
        evaluate(model, x, {"g": gradient_x_input}, target=0, masks=torch.ones(5, 4, dtype=torch.bool),
                 patch_size=2, progress=False)
    with pytest.raises(DataError, match=r"units cover a grid of \(4, 5, 3\)"):
        evaluate(model, x, {"g": gradient_x_input}, labels=atlas_volume(), progress=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(model, x, {"g": gradient_x_input}, metrics=["aopc"], patch_size=2, progress=False)
    with pytest.raises(ValueError, match="exactly one of patch_size"):
        evaluate(model, x, {"g": gradient_x_input}, progress=False)
    with pytest.raises(ValueError, match="has no mask"):
        evaluate(model, x, {"g": gradient_x_input}, metrics=["pointing_game"], progress=False)
    assert_unchanged(model, before)
