"""Reference models (lrp.models) and the benchmark architectures (lrp.benchmark).

Expected shapes and parameter counts are worked out by hand from the paper's description (and
torchvision for VGG-16 / ResNet-50), never taken from the code under test.
"""
import pytest
import torch
import torch.nn as nn

import lrp
from lrp.benchmark import VGG16, ResNet50
from lrp.models import PAPER_GRID, PaperCNN3d, SmallCNN2d, block_output_shape, paper_pools_for_grid


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_grid_gives_5120_features():
    # per axis: conv (k=3, no padding) takes 2 voxels, then floor division by the pool size
    # 193 -> 191//2=95 -> 93//3=31 -> 29//2=14 -> 12//3=4 ; 229 -> 227//2=113 -> 111//3=37 -> 35//2=17 -> 15//3=5
    assert PAPER_GRID == (193, 229, 193)
    model = PaperCNN3d()
    assert model.feature_shape == (64, 4, 5, 4)
    assert model.flatten_size == 5120 == model.classifier[1].in_features


def test_paper_forward_shapes_at_full_grid_on_meta():
    with torch.device("meta"):
        model = PaperCNN3d()
        features = model.features(torch.empty(1, 1, *PAPER_GRID))
        logits = model(torch.empty(3, 1, *PAPER_GRID))
    assert features.shape == (1, 64, 4, 5, 4)
    assert logits.shape == (3, 2)


def test_paper_parameter_count():
    convs = [(1, 8), (8, 16), (16, 32), (32, 64)]
    expected = sum(cin * cout * 27 + cout + 2 * cout for cin, cout in convs)  # conv weight+bias, BN weight+bias
    expected += 5120 * 128 + 128 + 128 * 2 + 2
    assert expected == 728_898
    assert _count(PaperCNN3d()) == expected


def test_paper_layout_follows_the_paper():
    model = PaperCNN3d()
    kinds = [type(m) for m in model.features]
    assert kinds == [nn.Conv3d, nn.BatchNorm3d, nn.ReLU, nn.MaxPool3d] * 4
    convs = [m for m in model.features if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (0, 0, 0) for c in convs)
    assert [m.kernel_size for m in model.features if isinstance(m, nn.MaxPool3d)] == [2, 3, 2, 3]
    head = list(model.classifier)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[0].p == head[3].p == 0.4
    assert (head[1].in_features, head[1].out_features, head[4].out_features) == (5120, 128, 2)


def test_paper_model_on_another_grid():
    # 100 -> 98//2=49 -> 47//3=15 -> 13//2=6 -> 4//3=1 ; 120 -> 118//2=59 -> 57//3=19 -> 17//2=8 -> 6//3=2
    model = PaperCNN3d(input_shape=(100, 120, 100))
    assert model.feature_shape == (64, 1, 2, 1)
    assert model.classifier[1].in_features == 128
    with torch.device("meta"):
        assert PaperCNN3d(input_shape=(100, 120, 100))(torch.empty(2, 1, 100, 120, 100)).shape == (2, 2)


def test_paper_model_custom_channels_pools_and_classes():
    model = PaperCNN3d((30, 30, 30), channels=(2, 4), pools=(2, 2), num_classes=3, hidden=5)
    # 30 -> 28//2=14 -> 12//2=6
    assert model.feature_shape == (4, 6, 6, 6)
    assert model(torch.rand(2, 1, 30, 30, 30)).shape == (2, 3)


def test_grid_too_small_for_the_paper_pools():
    with pytest.raises(ValueError, match="too small"):
        PaperCNN3d(input_shape=(40, 40, 40))
    with pytest.raises(ValueError, match="too small"):
        paper_pools_for_grid((8, 8, 8))


def test_for_grid_keeps_the_paper_pools_where_they_fit():
    assert paper_pools_for_grid(PAPER_GRID) == (2, 3, 2, 3)
    assert PaperCNN3d.for_grid(PAPER_GRID).feature_shape == (64, 4, 5, 4)
    assert paper_pools_for_grid((78, 78, 78)) == (2, 3, 2, 3)  # the smallest grid the paper's pools allow


@pytest.mark.parametrize("grid", [(32, 32, 32), (24, 28, 24), (49, 58, 49), (77, 90, 77)])
def test_for_grid_sizes_the_design_for_small_grids(grid):
    pools = paper_pools_for_grid(grid)
    assert len(pools) == 4 and all(1 <= p <= q for p, q in zip(pools, (2, 3, 2, 3)))
    assert min(block_output_shape(grid, pools)) >= 1
    model = PaperCNN3d.for_grid(grid)
    assert model(torch.rand(2, 1, *grid)).shape == (2, 2)


@pytest.mark.parametrize("size, features", [(8, 16 * 2 * 2), (28, 16 * 7 * 7)])
def test_small_cnn_shapes(size, features):
    model = SmallCNN2d((size, size))
    assert model.classifier[0].in_features == features
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(5, 1, size, size)).shape == (5, 10)


def _randomise_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("make, shape", [
    (lambda: SmallCNN2d((8, 8)), (3, 1, 8, 8)),
    (lambda: SmallCNN2d((28, 28)), (2, 1, 28, 28)),
    (lambda: PaperCNN3d.for_grid((24, 28, 24), channels=(2, 4, 4, 8), hidden=8), (2, 1, 24, 28, 24)),
])
def test_models_are_fully_explained_and_lrp_zero_equals_gradient_times_input(make, shape):
    # for ReLU networks (max pooling, BatchNorm in eval mode) LRP-0 is gradient×input: an
    # independent reference computed with plain autograd
    torch.manual_seed(0)
    model = make().double()
    _randomise_batchnorm(model)
    model.eval()
    x = torch.rand(shape, dtype=torch.float64)
    expl = lrp.explain(model, x, composite="zero", strict=True)
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    (grad,) = torch.autograd.grad(logits.gather(1, expl.target[:, None]).sum(), leaf)
    torch.testing.assert_close(expl.relevance, grad * x, rtol=1e-9, atol=1e-12)


def test_benchmark_architectures_match_torchvision():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        pairs = [(VGG16(), torchvision.models.vgg16()), (ResNet50(), torchvision.models.resnet50())]
    for ours, reference in pairs:
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
               {k: v.shape for k, v in reference.state_dict().items()}
    assert _count(pairs[0][0]) == 138_357_544 and _count(pairs[1][0]) == 25_557_032


def test_benchmark_resnet_computes_what_torchvision_computes():
    # fewer blocks than ResNet-50 to keep it fast; the same Bottleneck with and without projection
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 1, 1], num_classes=10)
    _randomise_batchnorm(reference)
    ours = ResNet50(layers=(1, 2, 1, 1), num_classes=10)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))
