"""lrp.plots: colour mapping, 2D grids, brain slices (orientation, contours, scaling), region plots, saving.

Figures are checked through matplotlib's public API (images, contour sets, colour bar limits,
legend texts) and by rendering them with Agg and locating coloured pixels; expectations come from
matplotlib's colour maps, numpy/scipy/pandas computations and hand-built volumes.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from scipy import ndimage, stats

from lrp.errors import DataError, NonFiniteError
from lrp.plots import (
    grid,
    heatmap_to_rgb,
    heatmap_to_rgba,
    overlay,
    plot_covariate,
    plot_gain,
    plot_group_maps,
    plot_mosaic,
    plot_slices,
    plot_top_regions,
    save_figure,
    symmetric_limits,
)

TEMPLATES = Path("/usr/share/mricron/templates")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WHITE, BLUE, RED = np.ones(3), np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])


# -- colours ---------------------------------------------------------------------------------------
def test_zero_maps_exactly_to_the_centre_colour():
    assert np.array_equal(heatmap_to_rgb(np.zeros((3, 4, 5)), vmax=1.0), np.broadcast_to(WHITE, (3, 4, 5, 3)))
    # the centre of any colour map: its value at 0.5, which a 3-entry resample evaluates exactly
    centre = matplotlib.colormaps["RdBu_r"].resampled(3)(1)[:3]
    relevance = np.array([[0.0, 1.0], [-1.0, 0.0]])
    colours = heatmap_to_rgb(relevance, cmap="RdBu_r")
    assert np.array_equal(colours[0, 0], centre) and np.array_equal(colours[1, 1], centre)


def test_opposite_relevance_gets_mirrored_colours():
    relevance = np.random.default_rng(0).normal(size=(2, 9, 7))
    # bwr is blue -> white -> red, linear in each channel: mirroring swaps red and blue
    assert np.allclose(heatmap_to_rgb(-relevance), heatmap_to_rgb(relevance)[..., ::-1], atol=1e-12)


def test_colours_follow_matplotlib_scaling():
    relevance = np.random.default_rng(1).normal(size=(16, 16))
    vmax = np.percentile(np.abs(relevance), 90)
    expected = matplotlib.colormaps["bwr"](Normalize(-vmax, vmax, clip=True)(relevance))[..., :3]
    assert np.abs(heatmap_to_rgb(relevance, percentile=90) - expected).max() < 0.01


def test_values_beyond_the_percentile_saturate():
    relevance = np.linspace(-10, 10, 101).reshape(1, 101)
    vmax = np.percentile(np.abs(relevance), 80)
    colours = heatmap_to_rgb(relevance, percentile=80)[0]
    assert np.array_equal(colours[relevance[0] >= vmax], np.broadcast_to(RED, colours[relevance[0] >= vmax].shape))
    assert np.array_equal(colours[relevance[0] <= -vmax], np.broadcast_to(BLUE, colours[relevance[0] <= -vmax].shape))
    inside = np.abs(relevance[0]) < vmax * 0.95
    assert not np.any(np.all(colours[inside] == RED, axis=-1))
    half = heatmap_to_rgb(np.array([[vmax / 2]]), vmax=vmax)[0, 0]  # bwr: red half way = (1, 0.5, 0.5)
    assert np.allclose(half, [1.0, 0.5, 0.5], atol=1 / 256)


def test_vmax_overrides_the_percentile_and_is_checked():
    assert np.array_equal(heatmap_to_rgb(np.array([[2.0]]), vmax=1.0)[0, 0], RED)
    assert not np.array_equal(heatmap_to_rgb(np.array([[2.0]]), vmax=4.0)[0, 0], RED)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="vmax"):
            heatmap_to_rgb(np.ones((2, 2)), vmax=bad)


def test_constant_zero_map_needs_no_division(recwarn):
    assert symmetric_limits(np.zeros((5, 5))) == (-1.0, 1.0)
    assert np.array_equal(heatmap_to_rgb(np.zeros((5, 5))), np.broadcast_to(WHITE, (5, 5, 3)))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_symmetric_limits_of_several_and_sparse_maps():
    first, second = np.arange(10.0), -np.arange(20.0).reshape(4, 5)
    low, high = symmetric_limits([first, second], percentile=50)
    assert high == -low == np.percentile(np.abs(np.concatenate([first, second.ravel()])), 50)
    sparse = np.zeros(1000)
    sparse[3] = -7.0  # the 99.5th percentile is 0: fall back to the largest magnitude
    assert symmetric_limits(sparse) == (-7.0, 7.0)
    with pytest.raises(ValueError, match="percentile"):
        symmetric_limits(first, percentile=0)


def test_heatmaps_of_tensors_and_bad_values():
    tensor = torch.randn(2, 4, 4, requires_grad=True)
    assert np.array_equal(heatmap_to_rgb(tensor), heatmap_to_rgb(tensor.detach().numpy()))
    with pytest.raises(NonFiniteError):
        heatmap_to_rgb(np.array([[0.0, np.nan]]))
    with pytest.raises(DataError, match="real numbers"):
        heatmap_to_rgb(np.array([["a"]]))


def test_rgba_is_transparent_near_zero_and_positive_only_hides_negatives():
    relevance = np.array([0.0, 0.05, 0.5, 1.0, -1.0])
    rgba = heatmap_to_rgba(relevance, vmax=1.0, threshold=0.1, opaque_at=0.4)
    assert np.array_equal(rgba[:, 3], [0.0, 0.0, 1.0, 1.0, 1.0])
    positive = heatmap_to_rgba(relevance, vmax=1.0, cmap="autumn", positive_only=True)
    assert positive[4, 3] == 0.0 and np.allclose(positive[3, :3], [1.0, 1.0, 0.0])  # autumn ends in yellow


# -- 2D images ---------------------------------------------------------------------------------------
def test_overlay_shows_the_image_without_relevance_and_the_colour_at_vmax():
    image = np.random.default_rng(2).uniform(size=(6, 6))
    grey = (image - image.min()) / (image.max() - image.min())
    relevance = np.zeros((6, 6))
    relevance[1, 2], relevance[4, 4] = 3.0, -5.0
    blended = overlay(image, relevance, alpha=1.0, vmax=3.0)
    untouched = relevance == 0
    assert np.allclose(blended[untouched], np.repeat(grey[untouched][:, None], 3, axis=1))
    assert np.allclose(blended[1, 2], RED) and np.allclose(blended[4, 4], BLUE)
    with pytest.raises(DataError, match="relevance"):
        overlay(image, np.zeros((5, 6)))


def test_grid_layout_scaling_and_channel_sum(tmp_path):
    rng = np.random.default_rng(3)
    images = torch.rand(3, 1, 8, 8)
    heatmaps = {"lrp": rng.normal(size=(3, 2, 8, 8)), "gradient": 100 * rng.normal(size=(3, 8, 8))}
    figure = grid(images, heatmaps, titles=["a", "b", "c"], path=tmp_path / "grid.png")
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3 * 3
    colour_bars = [ax for ax in figure.axes if not ax.images]
    vmax_gradient = np.percentile(np.abs(heatmaps["gradient"]), 99.5)
    assert sorted(round(ax.get_xlim()[1], 9) for ax in colour_bars) == sorted(
        round(v, 9) for v in (np.percentile(np.abs(heatmaps["lrp"].sum(1)), 99.5), vmax_gradient))
    lrp_panel = next(ax for ax in panels if ax.get_title() == "lrp")
    expected = heatmap_to_rgb(heatmaps["lrp"].sum(1)[0], vmax=symmetric_limits(heatmaps["lrp"].sum(1))[1])
    assert np.allclose(lrp_panel.images[0].get_array(), expected)
    assert [ax.get_ylabel() for ax in panels if ax.get_ylabel()] == ["a", "b", "c"]
    assert (tmp_path / "grid.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(DataError, match="N = 3"):
        grid(images, {"lrp": rng.normal(size=(2, 8, 8))})
    with pytest.raises(DataError, match="titles"):
        grid(images, heatmaps, titles=["a"])


# -- saving ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix, magic", [(".png", PNG_MAGIC), (".pdf", b"%PDF")])
def test_figures_are_saved_by_suffix_without_leftovers(tmp_path, suffix, magic):
    target = tmp_path / f"figure{suffix}"
    figure = grid(np.zeros((1, 4, 4)), {"m": np.ones((1, 4, 4))}, path=target)
    assert isinstance(figure, Figure)
    assert target.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    if suffix == ".png":
        assert matplotlib.image.imread(target).ndim == 3


def test_a_failed_save_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    figure = grid(np.zeros((1, 4, 4)), {"m": np.ones((1, 4, 4))})

    def broken_savefig(self, stream, **kwargs):
        stream.write(b"half a figure")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(figure, tmp_path / "new.png")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.pdf"
    old.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        save_figure(figure, old)
    assert [p.name for p in tmp_path.iterdir()] == ["old.pdf"] and old.read_bytes() == b"previous"
    with pytest.raises(ValueError, match="suffix"):
        save_figure(figure, tmp_path / "figure.jpg")
    assert [p.name for p in tmp_path.iterdir()] == ["old.pdf"]


# -- brain figures on small synthetic volumes ------------------------------------------------------------
SHAPE = (20, 24, 18)
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -24], [0, 0, 2.0, -18], [0, 0, 0, 1]])


def blob(centre: tuple[int, int, int], sigma: float = 1.5) -> np.ndarray:
    grids = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * sigma ** 2))


def head() -> np.ndarray:
    """An ellipsoid 'head' filling most of the grid, brighter towards the top."""
    grids = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    inside = sum(g ** 2 for g in grids) < 0.95
    return inside * (50.0 + 50.0 * grids[2])


def atlas() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[2:7, 16:22, 10:16] = 1  # left, front, top
    labels[12:17, 3:9, 3:8] = 2    # right, back, bottom
    return labels


# left (small i), anterior (large j), superior (large k); world (-12, 14, 8) mm
LEFT_FRONT_TOP = (4, 19, 13)


def red_centroid(figure: Figure, ax) -> tuple[float, float]:
    """Where the saturated red pixels of ``ax`` lie, as fractions of its width (0 = left) and height (0 = bottom)."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = ax.get_window_extent()
    height = pixels.shape[0]
    rows, columns = np.mgrid[0:height, 0:pixels.shape[1]]
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    red &= (columns >= box.x0) & (columns <= box.x1) & (height - rows >= box.y0) & (height - rows <= box.y1)
    assert red.sum() > 10, "no red blob drawn"
    return ((columns[red].mean() - box.x0) / box.width, (height - rows[red].mean() - box.y0) / box.height)


def grey_brightness(figure: Figure, ax, half: str) -> float:
    """Mean brightness of the grey (anatomy) pixels in the upper or lower ``half`` of ``ax``."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = ax.get_window_extent()
    height = pixels.shape[0]
    top, bottom = int(height - box.y1), int(height - box.y0)
    middle = (top + bottom) // 2
    part = pixels[top:middle] if half == "upper" else pixels[middle:bottom]
    part = part[:, int(box.x0):int(box.x1)]
    grey = (np.ptp(part, axis=-1) < 0.02) & (part.mean(axis=-1) < 0.99)  # not coloured, not the white figure
    return float(part[grey].mean())


@pytest.mark.parametrize("convention", ["neurological", "radiological"])
def test_slices_are_drawn_in_radiological_or_neurological_orientation(convention):
    figure = plot_slices(blob(LEFT_FRONT_TOP), head(), AFFINE, convention=convention)
    axial, coronal, sagittal = (ax for ax in figure.axes if ax.images)
    horizontal, vertical = red_centroid(figure, axial)
    assert vertical > 0.6  # anterior at the top
    assert horizontal < 0.4 if convention == "neurological" else horizontal > 0.6
    horizontal, vertical = red_centroid(figure, coronal)
    assert vertical > 0.6 and (horizontal < 0.4 if convention == "neurological" else horizontal > 0.6)
    horizontal, vertical = red_centroid(figure, sagittal)
    assert vertical > 0.6 and horizontal > 0.6  # upright, front to the right
    # the anatomy is brighter towards the top of the head, so its upper half must look brighter
    assert grey_brightness(figure, coronal, "upper") > grey_brightness(figure, coronal, "lower")
    letters = [t.get_text() for t in axial.texts]
    assert letters == (["L", "R"] if convention == "neurological" else ["R", "L"])


def test_auto_cuts_find_the_peak_and_titles_give_millimetres():
    relevance = blob(LEFT_FRONT_TOP)
    relevance[15, 3, 3] = 5.0  # one outlying voxel must not capture the cut
    figure = plot_slices(relevance, head(), AFFINE)
    titles = [ax.get_title() for ax in figure.axes if ax.images]
    # LEFT_FRONT_TOP in mm through AFFINE: x = 2*4 - 20, y = 2*19 - 24, z = 2*13 - 18
    assert titles == ["axial z = 8 mm", "coronal y = 14 mm", "sagittal x = -12 mm"]
    figure = plot_slices(relevance, head(), AFFINE, cuts={"z": 0.0}, views=["axial", "sagittal"])
    assert [ax.get_title() for ax in figure.axes if ax.images] == ["axial z = 0 mm", "sagittal x = -12 mm"]


def test_flipped_storage_is_drawn_like_ras_storage():
    relevance, background, labels = blob(LEFT_FRONT_TOP), head(), atlas()
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    flipped[:3, 3] = [18.0, -24.0, -18.0]  # voxel 19 - i of the flipped arrays sits where voxel i sat
    cuts = {"x": -12, "y": 14, "z": 8}
    ras = plot_slices(relevance, background, AFFINE, cuts=cuts, atlas_labels=labels, regions=[1, 2])
    lps = plot_slices(relevance[::-1], background[::-1], flipped, cuts=cuts, atlas_labels=labels[::-1],
                      regions=[1, 2])
    ras.canvas.draw()
    lps.canvas.draw()
    assert np.array_equal(np.asarray(ras.canvas.buffer_rgba()), np.asarray(lps.canvas.buffer_rgba()))


def test_region_contours_and_legend(tmp_path):
    names = {1: "Frontal_L", 2: "Occipital_R"}
    figure = plot_slices(blob(LEFT_FRONT_TOP), head(), AFFINE, cuts=(-12, 14, 8), atlas_labels=atlas(),
                         regions=["Frontal_L", 2], names=names, path=tmp_path / "slices.pdf")
    contours = [c for ax in figure.axes for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 3  # region 1 crosses all three cuts, region 2 none of them
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["Frontal_L", "Occipital_R"]
    assert (tmp_path / "slices.pdf").read_bytes().startswith(b"%PDF")
    without = plot_slices(blob(LEFT_FRONT_TOP), head(), AFFINE)
    assert not any(isinstance(c, ContourSet) for ax in without.axes for c in ax.collections)
    every = plot_slices(blob(LEFT_FRONT_TOP), head(), AFFINE, cuts=(-12, 14, 8), atlas_labels=atlas())
    assert any(isinstance(c, ContourSet) for ax in every.axes for c in ax.collections) and not every.legends


def test_colour_scale_from_reference_vmax_and_positive_only():
    relevance = blob(LEFT_FRONT_TOP) - 0.5 * blob((15, 5, 5))
    reference = 3.0 * relevance
    figure = plot_slices(relevance, head(), AFFINE, reference=reference)
    expected = np.percentile(np.abs(reference), 99.5)
    assert np.allclose(figure.axes[-1].get_ylim(), (-expected, expected))
    figure = plot_slices(relevance, head(), AFFINE, vmax=0.25)
    assert np.allclose(figure.axes[-1].get_ylim(), (-0.25, 0.25))
    figure = plot_slices(relevance, head(), AFFINE, positive_only=True, percentile=99)
    assert np.allclose(figure.axes[-1].get_ylim(), (0.0, np.percentile(np.maximum(relevance, 0), 99)))


def test_mosaic_slices_span_the_head(tmp_path):
    figure = plot_mosaic(blob(LEFT_FRONT_TOP), head(), AFFINE, view="coronal", n_slices=5,
                         path=tmp_path / "mosaic.png")
    panels = [ax for ax in figure.axes if ax.images]
    coordinates = [float(re.search(r"= (-?\d+) mm", ax.get_title()).group(1)) for ax in panels]
    assert len(panels) == 5 and coordinates == sorted(coordinates) and len(set(coordinates)) == 5
    inside = np.flatnonzero(head().any(axis=(0, 2)))
    assert AFFINE[1, 3] + 2 * inside[0] <= coordinates[0] and coordinates[-1] <= AFFINE[1, 3] + 2 * inside[-1]
    figure = plot_mosaic(blob(LEFT_FRONT_TOP), head(), AFFINE, coords=[-10, 0, 10])
    assert [ax.get_title() for ax in figure.axes if ax.images] == [f"axial z = {z} mm" for z in (-10, 0, 10)]


def test_group_maps_share_scale_and_cuts(tmp_path):
    strong, weak = blob(LEFT_FRONT_TOP), 0.3 * blob(LEFT_FRONT_TOP) - 0.2 * blob((15, 5, 5))
    figure = plot_group_maps({"AD": strong, "HC": weak}, head(), AFFINE, atlas_labels=atlas(), regions=[1],
                             path=tmp_path / "groups.png")
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 2 * 3
    expected = np.percentile(np.abs(np.concatenate([strong.ravel(), weak.ravel()])), 99.5)
    assert np.allclose(figure.axes[-1].get_ylim(), (-expected, expected))
    assert [ax.get_title() for ax in panels[:3]] == ["axial z = 8 mm", "coronal y = 14 mm", "sagittal x = -12 mm"]
    assert [t.get_text() for ax in panels for t in ax.texts if t.get_text() in ("AD", "HC")] == ["AD", "HC"]


def test_brain_plots_reject_bad_input():
    relevance, background = blob(LEFT_FRONT_TOP), head()
    with pytest.raises(DataError, match="3-D"):
        plot_slices(relevance[:, :, 0], background[:, :, 0])
    with pytest.raises(DataError, match="one grid"):
        plot_slices(relevance, background[:, :-1])
    with pytest.raises(DataError, match="atlas_labels"):
        plot_slices(relevance, background, atlas_labels=atlas()[1:])
    with pytest.raises(DataError, match="integer"):
        plot_slices(relevance, background, atlas_labels=atlas() + 0.5)
    with pytest.raises(DataError, match="Frontal_L"):
        plot_slices(relevance, background, atlas_labels=atlas(), regions=["Frontal_l"], names={1: "Frontal_L"})
    with pytest.raises(DataError, match="region 7"):
        plot_slices(relevance, background, atlas_labels=atlas(), regions=[7])
    with pytest.raises(DataError, match="outside"):
        plot_slices(relevance, background, AFFINE, cuts={"z": 500})
    with pytest.raises(ValueError, match="views"):
        plot_slices(relevance, background, views=["transverse"])
    with pytest.raises(ValueError, match="atlas_labels"):
        plot_slices(relevance, background, regions=[1])
    nifti = pytest.importorskip("nibabel")
    image = nifti.Nifti1Image(relevance.astype(np.float32), AFFINE)
    with pytest.raises(DataError, match="affine"):
        plot_slices(image, nifti.Nifti1Image(background.astype(np.float32), np.eye(4)))


def test_colin27_hippocampus(tmp_path):
    nib = pytest.importorskip("nibabel")
    if not (TEMPLATES / "ch2bet.nii.gz").exists() or not (TEMPLATES / "aal.nii.gz").exists():
        pytest.skip("Colin27 / AAL templates (Debian mricron-data) not installed")
    t1, aal = nib.load(TEMPLATES / "ch2bet.nii.gz"), nib.load(TEMPLATES / "aal.nii.gz")
    labels = np.asarray(aal.dataobj).astype(int)
    names = {}
    for line in (TEMPLATES / "aal.nii.txt").read_text().splitlines():
        if line.strip():
            number, name = line.split()[:2]
            names[int(number)] = name
    relevance = ndimage.gaussian_filter((labels == 37).astype(np.float32), 2.0)  # left hippocampus
    figure = plot_slices(nib.Nifti1Image(relevance, t1.affine), t1, atlas_labels=aal,
                         regions=["Hippocampus_L", 38], names=names, path=tmp_path / "colin.png")
    axial = next(ax for ax in figure.axes if ax.images)
    cut = [float(re.search(r"= (-?\d+) mm", ax.get_title()).group(1)) for ax in figure.axes if ax.images]
    z, y, x = cut  # axial, coronal, sagittal
    voxel = np.rint(np.linalg.inv(t1.affine) @ [x, y, z, 1.0])[:3].astype(int)
    assert labels[tuple(voxel)] == 37, "the automatic cut misses the left hippocampus"
    assert x < 0
    horizontal, _ = red_centroid(figure, axial)
    assert horizontal < 0.5  # the left hippocampus on the left (neurological)
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["Hippocampus_L", "Hippocampus_R"]
    assert any(isinstance(c, ContourSet) for c in axial.collections)
    assert matplotlib.image.imread(tmp_path / "colin.png").shape[-1] in (3, 4)


# -- region plots ------------------------------------------------------------------------------------
def region_table() -> pd.DataFrame:
    """6 subjects (AD: a0-a2, HC: h0-h2) × 4 regions; sums chosen so AD ranks C > A > D > B."""
    base = {"A": 3.0, "B": 1.0, "C": 4.0, "D": 2.0}
    voxels = {"A": 10, "B": 20, "C": 40, "D": 5}
    rows = []
    for group, factor in (("AD", 2.0), ("HC", 1.0)):
        for index in range(3):
            for number, (region, value) in enumerate(base.items()):
                total = factor * value + 0.1 * index
                rows.append({"subject": f"{group.lower()}{index}", "region_id": number + 1, "region": region,
                             "voxels": voxels[region], "volume_mm3": float(voxels[region]), "sum": total,
                             "density": total / voxels[region], "positive": total, "negative": 0.0, "share": 0.25,
                             "group_true": group})
    return pd.DataFrame(rows)


def regions_top_down(figure: Figure) -> list[str]:
    """The y tick labels of a region plot, from the top of the plot down."""
    ax = figure.axes[0]
    pairs = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())), reverse=True)
    return [label for _, label in pairs]


def bar_widths(figure: Figure, label_start: str) -> list[float]:
    ax = figure.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    container = handles[[label.startswith(label_start) for label in labels].index(True)]
    return [patch.get_width() for patch in container.patches]


def test_top_regions_rank_and_group_means(tmp_path):
    table = region_table()
    figure = plot_top_regions(table, by="density", k=3, groups="group_true", path=tmp_path / "top.png")
    expected_top = table.groupby("region")["density"].mean().sort_values(ascending=False).index[:3]
    assert regions_top_down(figure) == list(expected_top)
    means = table.groupby(["group_true", "region"])["density"].mean()
    assert np.allclose(bar_widths(figure, "AD"), [means["AD", region] for region in expected_top])
    assert np.allclose(bar_widths(figure, "HC"), [means["HC", region] for region in expected_top])
    assert (tmp_path / "top.png").read_bytes().startswith(PNG_MAGIC)
    violins = plot_top_regions(table, by="sum", k=2, groups="group_true", distribution="violin")
    assert any(isinstance(c, PolyCollection) for c in violins.axes[0].collections)


def test_top_regions_by_gain_over_the_baseline_mean():
    table = region_table()
    groups = dict(zip(table["subject"], table["group_true"]))
    figure = plot_top_regions(table.drop(columns="group_true"), by="gain", k=4, groups=groups, baseline="HC")
    hc_mean = table[table.group_true == "HC"].groupby("region")["sum"].mean()
    ad_mean = table[table.group_true == "AD"].groupby("region")["sum"].mean()
    gain = (ad_mean / hc_mean).sort_values(ascending=False)
    assert regions_top_down(figure) == list(gain.index)
    assert np.allclose(bar_widths(figure, "AD"), gain.to_numpy())
    assert np.allclose(bar_widths(figure, "HC"), 1.0)


def test_top_regions_reject_bad_tables():
    table = region_table()
    with pytest.raises(DataError, match="density"):
        plot_top_regions(table.drop(columns="density"), by="density")
    with pytest.raises(DataError, match="several methods"):
        plot_top_regions(pd.concat([table.assign(method="lrp"), table.assign(method="gb")]))
    with pytest.raises(DataError, match="no group"):
        plot_top_regions(table, groups={"ad0": "AD"})
    with pytest.raises(DataError, match="baseline"):
        plot_top_regions(table, by="gain", groups="group_true", baseline="CN")


def test_gain_bars_per_method():
    table = pd.DataFrame({"region": ["A", "B", "C"] * 2, "method": ["lrp"] * 3 + ["gb"] * 3,
                          "gain": [1.5, 3.0, 0.5, 1.0, 2.0, 0.9]})
    figure = plot_gain(table, k=2)
    assert regions_top_down(figure) == ["B", "A"]
    assert sorted(bar_widths(figure, "lrp")) == [1.5, 3.0] and sorted(bar_widths(figure, "gb")) == [1.0, 2.0]
    series = plot_gain(pd.Series({"A": 1.2, "B": 0.8, "C": 2.5}), k=3)
    assert regions_top_down(series) == ["C", "A", "B"]
    with pytest.raises(DataError, match="gain"):
        plot_gain(table.rename(columns={"gain": "ratio"}))


def test_covariate_line_r_and_p(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=30)
    y = 2.0 * x + rng.normal(size=30)
    x[3] = np.nan  # this pair is left out
    figure = plot_covariate(x, y, xlabel="MMSE", ylabel="relevance", p_value=0.0123, path=tmp_path / "cov.pdf")
    keep = np.isfinite(x)
    fit = stats.linregress(x[keep], y[keep])
    line = figure.axes[0].lines[0].get_xydata()
    assert np.allclose(line[:, 1], fit.intercept + fit.slope * line[:, 0])
    assert np.allclose(line[:, 0], [x[keep].min(), x[keep].max()])
    (text,) = [t.get_text() for t in figure.legends[0].get_texts()]
    assert f"r = {stats.pearsonr(x[keep], y[keep])[0]:.2f}" in text and "p = 0.0123" in text and "n = 29" in text
    assert figure.axes[0].get_xlabel() == "MMSE"
    with pytest.raises(DataError, match="non-constant"):
        plot_covariate(np.ones(5), np.arange(5.0), xlabel="x", ylabel="y")
    with pytest.raises(DataError, match="one length"):
        plot_covariate(np.ones(5), np.ones(4), xlabel="x", ylabel="y")
