"""Reference models: the 3D CNN of Böhle et al. (2019), its demo-sized variant and a small 2D CNN for digits.

``PaperCNN3d`` is the network of "Layer-wise relevance propagation for explaining deep neural
network decisions in MRI-based Alzheimer's disease classification" (Böhle, Eitel, Weygandt, Ritter,
Frontiers in Aging Neuroscience 2019): four blocks Conv3d(3×3×3, no padding) → BatchNorm3d → ReLU →
MaxPool3d with 8, 16, 32, 64 channels and pool sizes 2, 3, 2, 3, then Dropout(0.4) → Linear(·, 128)
→ ReLU → Dropout(0.4) → Linear(128, 2). On the paper's grid of 193×229×193 voxels the last block
leaves 64×4×5×4 = 5120 features.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["PAPER_GRID", "DemoCNN3d", "PaperCNN3d", "SmallCNN2d", "block_output_shape", "paper_pools_for_grid"]

PAPER_GRID: tuple[int, int, int] = (193, 229, 193)
"""The MRI grid of the paper (voxels), for inputs of shape (N, 1, 193, 229, 193)."""

PAPER_CHANNELS: tuple[int, ...] = (8, 16, 32, 64)
PAPER_POOLS: tuple[int, ...] = (2, 3, 2, 3)


def block_output_shape(grid: Sequence[int], pools: Sequence[int], kernel_size: int = 3) -> tuple[int, ...]:
    """Spatial shape after blocks of an unpadded convolution (``kernel_size``) and a max pooling
    (one pool size per block, stride = size, floor rounding).

    Raises ValueError when a block would leave no voxel along some axis.
    """
    shape = tuple(int(d) for d in grid)
    for block, pool in enumerate(pools, start=1):
        convolved = tuple(d - kernel_size + 1 for d in shape)
        shape = tuple(d // pool for d in convolved)
        if min(convolved) < 1 or min(shape) < 1:
            raise ValueError(f"grid {tuple(grid)} is too small for pool sizes {tuple(pools)}: block {block} "
                             f"leaves shape {shape}")
    return shape


def paper_pools_for_grid(grid: Sequence[int], pools: Sequence[int] = PAPER_POOLS,
                         kernel_size: int = 3) -> tuple[int, ...]:
    """The largest pool sizes, block by block and no larger than ``pools``, that ``grid`` allows.

    The paper's pools need at least 78 voxels along every axis; smaller (demo) grids get smaller
    pools in the earliest blocks that cannot afford them, so the design stays four blocks deep.
    """
    chosen: list[int] = []
    size = min(int(d) for d in grid)
    for block, largest in enumerate(pools):
        still_needed = 1 + (kernel_size - 1) * (len(pools) - block - 1)
        for pool in range(largest, 0, -1):
            if (size - kernel_size + 1) // pool >= still_needed:
                break
        else:
            raise ValueError(f"grid {tuple(grid)} is too small for {len(pools)} unpadded convolutions of size "
                             f"{kernel_size}")
        chosen.append(pool)
        size = (size - kernel_size + 1) // pool
    return tuple(chosen)


class PaperCNN3d(nn.Module):
    """The 3D CNN of Böhle et al. (2019) for inputs (N, in_channels, D, H, W); outputs logits (N, num_classes).

    Args:
        input_shape: spatial grid (D, H, W) the model is built for; it fixes the flatten size.
        channels: output channels of the four (or more) conv blocks.
        pools: max-pool size of each block (stride = size).
        in_channels, num_classes, hidden: input channels, classes, width of the hidden dense layer.
        dropout: dropout probability before each dense layer.

    Layout (module names): ``features`` = [conv, bn, relu, pool] × blocks, ``flatten``,
    ``classifier`` = [dropout, linear(flatten_size, hidden), relu, dropout, linear(hidden, classes)].
    With the defaults on the paper's grid: 64 × 4×5×4 = 5120 features, 728,898 parameters.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = PAPER_GRID,
        channels: Sequence[int] = PAPER_CHANNELS,
        pools: Sequence[int] = PAPER_POOLS,
        in_channels: int = 1,
        num_classes: int = 2,
        hidden: int = 128,
        dropout: float = 0.4,
    ):
        super().__init__()
        if len(channels) != len(pools):
            raise ValueError(f"one pool size per block: {len(channels)} channel counts, {len(pools)} pool sizes")
        if len(input_shape) != 3:
            raise ValueError(f"input_shape is the spatial grid (D, H, W), got {tuple(input_shape)}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.feature_shape = (int(channels[-1]), *block_output_shape(self.input_shape, pools))
        layers: list[nn.Module] = []
        previous = in_channels
        for width, pool in zip(channels, pools):
            layers += [nn.Conv3d(previous, width, kernel_size=3), nn.BatchNorm3d(width), nn.ReLU(),
                       nn.MaxPool3d(pool)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.flatten_size, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    @property
    def flatten_size(self) -> int:
        """Number of features entering the first dense layer (5120 on the paper's grid)."""
        size = 1
        for d in self.feature_shape:
            size *= d
        return size

    @classmethod
    def for_grid(cls, input_shape: Sequence[int], **kwargs) -> PaperCNN3d:
        """The paper's design sized for ``input_shape`` (D, H, W): the paper's pool sizes where the
        grid allows them, smaller ones where it does not (see :func:`paper_pools_for_grid`)."""
        pools = paper_pools_for_grid(input_shape, kwargs.pop("pools", PAPER_POOLS))
        return cls(input_shape, pools=pools, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_channels, D, H, W) on the grid given at construction -> logits (N, num_classes)."""
        return self.classifier(self.flatten(self.features(x)))


class DemoCNN3d(nn.Module):
    """The paper's convolutional design for coarse (2–4 mm) grids, with a linear head: the CNN of ``lrp demo``.

    Blocks Conv3d(3×3×3, padding 1) → BatchNorm3d → ReLU → MaxPool3d(2) with ``channels``, then
    Flatten → Dropout → Linear(C·d·h·w, num_classes). On the demo's 3 mm grid (about 52×64×54) four
    blocks leave 32 × 3×4×3 features. A hidden dense layer as in the paper (Linear→ReLU→Dropout) made
    training on a few hundred subjects stall at chance in most runs, so the head is one linear layer.

    Layout (module names): ``features`` = [conv, bn, relu, pool] × blocks, ``flatten``,
    ``classifier`` = [dropout, linear].
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (4, 8, 16, 32), in_channels: int = 1,
                 num_classes: int = 2, dropout: float = 0.2):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"input_shape is the spatial grid (D, H, W), got {tuple(input_shape)}")
        self.input_shape = tuple(int(d) for d in input_shape)
        shape = self.input_shape
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [nn.Conv3d(previous, width, kernel_size=3, padding=1), nn.BatchNorm3d(width), nn.ReLU(),
                       nn.MaxPool3d(2)]
            previous = width
            shape = tuple(d // 2 for d in shape)
        if min(shape) < 1:
            raise ValueError(f"grid {self.input_shape} is too small for {len(channels)} pooling blocks")
        self.feature_shape = (previous, *shape)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(previous * shape[0] * shape[1] * shape[2],
                                                                      num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_channels, D, H, W) on the grid given at construction -> logits (N, num_classes)."""
        return self.classifier(self.flatten(self.features(x)))


class SmallCNN2d(nn.Module):
    """A small CNN for digit images (N, 1, 8, 8) (scikit-learn digits) or (N, 1, 28, 28) (MNIST).

    Two blocks Conv2d(3×3, padding 1) → BatchNorm2d → ReLU → MaxPool2d(2) with ``channels``, then
    Flatten → Linear(C·(H/4)·(W/4), hidden) → ReLU → Linear(hidden, num_classes).
    8×8 inputs give 16·2·2 = 64 features, 28×28 inputs 16·7·7 = 784.
    """

    def __init__(self, input_shape: Sequence[int] = (28, 28), channels: Sequence[int] = (8, 16),
                 hidden: int = 64, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"input_shape is the image size (H, W), got {tuple(input_shape)}")
        height, width = (int(d) for d in input_shape)
        layers: list[nn.Module] = []
        previous = in_channels
        for out in channels:
            layers += [nn.Conv2d(previous, out, kernel_size=3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            previous = out
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"image size {tuple(input_shape)} is too small for {len(channels)} pooling blocks")
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Linear(previous * height * width, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_channels, H, W) -> logits (N, num_classes)."""
        return self.classifier(self.flatten(self.features(x)))
