"""Explain a digit classifier with LRP and its rivals, and check which explanation is faithful.

Trains a small CNN on scikit-learn's bundled handwritten digits (1797 images of 8×8 pixels, no
download) in seconds, explains test digits with several LRP composites, the gradient, guided
backpropagation and integrated gradients, draws a grid of inputs and heatmaps (red: evidence for the
class, blue: against, each column on its own symmetric scale), and prints the AOPC table of pixel
flipping: the mean drop of the class score when the most relevant pixels are set to 0 first (higher =
more faithful), the least relevant first (lower = better) and in random order (the baseline).

    python examples/digits.py --out digits.png
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import lrp
from lrp import methods
from lrp.evaluate import evaluate
from lrp.models import SmallCNN2d
from lrp.plots import grid

EXPLAINERS = {
    "LRP ε": functools.partial(lrp.explain, composite="epsilon", epsilon=0.1),
    "LRP α1β0": functools.partial(lrp.explain, composite="alpha1-beta0"),
    "LRP ε+flat": functools.partial(lrp.explain, composite="epsilon-plus-flat"),
    "LRP ε-γ-box": functools.partial(lrp.explain, composite="epsilon-gamma-box", low=0.0, high=1.0),
    "gradient": methods.gradient,
    "guided backprop": methods.guided_backprop,
    "integrated grad.": functools.partial(methods.integrated_gradients, steps=32),
}
"""The methods compared: name -> ``(model, x, target) -> Explanation``. LRP composites (README's table):
ε = epsilon (0.1), α1β0 = alpha1-beta0, ε+flat = epsilon-plus-flat, ε-γ-box = epsilon-gamma-box with the
pixel range [0, 1] as the first layer's bounds."""


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 8, 8) float tensors in [0, 1] and int labels, split 75 % / 25 % (stratified)."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.25, random_state=seed,
                                                        stratify=labels)
    return train_x, train_y, test_x, test_y


def train_model(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> SmallCNN2d:
    """SmallCNN2d for 8×8 digits, trained with Adam on mini-batches of 64; returned in eval mode."""
    torch.manual_seed(seed)
    model = SmallCNN2d(input_shape=(8, 8), channels=(16, 32), hidden=64, num_classes=10)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimiser.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    return model.eval()


def run(*, out: Path | None, epochs: int = 15, explained: int = 200, shown: int = 6, seed: int = 0,
        progress: bool = True) -> tuple[float, pd.DataFrame]:
    """Train, explain, draw (when ``out`` is given) and evaluate. Returns the test accuracy and the
    AOPC table (one row per method; columns aopc_morf, aopc_lerf, aopc_random)."""
    train_x, train_y, test_x, test_y = load_data(seed)
    model = train_model(train_x, train_y, epochs=epochs, seed=seed)
    with torch.no_grad():
        accuracy = float((model(test_x).argmax(1) == test_y).float().mean())
    x, target = test_x[:explained], test_y[:explained]
    if out is not None:
        heatmaps = {name: explainer(model, x[:shown], target[:shown]).relevance for name, explainer in EXPLAINERS.items()}
        with torch.no_grad():
            predicted = model(x[:shown]).argmax(1)
        titles = [f"digit {int(t)}, predicted {int(p)}" for t, p in zip(target[:shown], predicted)]
        grid(x[:shown], heatmaps, titles=titles, path=out)
    table = evaluate(model, x, EXPLAINERS, ["aopc_morf", "aopc_lerf", "aopc_random"], target=target, patch_size=1,
                     steps=16, fill="constant", value=0.0, seed=seed, progress=progress)
    return accuracy, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("digits.png"), help="figure (PNG or PDF)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--explained", type=int, default=200, help="test digits in the AOPC table")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    started = time.perf_counter()
    accuracy, table = run(out=options.out, epochs=options.epochs, explained=options.explained, seed=options.seed)
    print(f"test accuracy {accuracy:.3f}; figure: {options.out}")
    print(f"AOPC over the first 16 flipped pixels of {options.explained} test digits (set to 0):")
    print(table.sort_values("aopc_morf", ascending=False).to_string(float_format="{:.3f}".format))
    print(f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
