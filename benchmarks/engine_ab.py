"""A/B of two engine versions: an earlier commit's ``lrp`` against the working tree's, alternating in one
process, each timed against gradient×input on the same model and input.

    python benchmarks/engine_ab.py OLD_COMMIT [--model resnet50] [--batch 1]
                                   [--composites epsilon,alpha1-beta0] [--repeats 7] [--threads 2] [--quick | --narrow]

Wall times on a shared machine drift by 10-15 % between processes; alternating the two versions
(and the gradient) run by run in one process cancels most of that, which is how the README's
before/after figures are measured. The earlier version is unpacked with ``git archive`` into a
temporary directory and imported as ``lrp_old`` (the package imports itself relatively). ``--narrow`` times
ResNet-50 with all its 53 convolutions at 4 channels in the stem on 32×32 inputs (:func:`narrow_resnet50`):
what an engine change does to the work per op that does not shrink with the input. Prints,
per composite, the median time of each version ÷ the median gradient×input, the largest
difference of their relevance relative to its maximum, and the ratios taken within each round
(median and quartiles over the rounds): each version ÷ gradient×input, and new ÷ old.
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see benchmarks/engine.py)

import torch

import lrp
from lrp.benchmark import ResNet50, _composite_params, _gradient_x_input, _initialise, build, in_turn, round_ratios

REPOSITORY = Path(__file__).resolve().parent.parent


def import_old(commit: str, into: Path):
    """``src/lrp`` of ``commit``, unpacked into ``into`` and imported as ``lrp_old``."""
    archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", commit, "src/lrp"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "src" / "lrp").rename(into / "lrp_old")
    sys.path.insert(0, str(into))
    return importlib.import_module("lrp_old")


def narrow_resnet50(batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """ResNet-50 with all 16 blocks (53 convolutions, 53 BatchNorms, 16 residual sums) at 4 channels in the stem
    instead of 64, initialised as the benchmark's models, and an input (batch, 3, 32, 32). Its kernels take little
    time, so an explanation's time is mostly what every op costs besides its kernel (Python, dispatch, small
    tensors), as much of it as the full model pays at any input size (session 28, per round: ``epsilon`` 2.8×,
    ``epsilon-gamma-box`` 4.2× the gradient's 9–14 ms)."""
    torch.manual_seed(0)
    model = ResNet50(width=4, num_classes=10)
    _initialise(model, torch.randn(2, 3, 32, 32))
    return model, torch.randn(batch, 3, 32, 32)


def timed_rounds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each callable, run in turn ``repeats`` times after two warm-up rounds: one list per
    callable, one entry per round. Each round starts one callable later than the one before
    (:func:`lrp.benchmark.in_turn`, as ``lrp bench``), so that no version always runs right after the other.
    Even so, two runs with the same code on the paper's model (whose input takes no changed path) gave
    new ÷ old 1.04 in a fixed order (5 rounds) and 0.95 rotated (6 rounds): on the paper's model,
    differences under about 5 % are noise."""
    for _ in range(2):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats):
        for name in in_turn(list(runs), round_index):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def explainer(package, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, composite: str,
              params: dict) -> Callable[[], torch.Tensor]:
    """A call of ``package.explain`` (either version of ``lrp``) returning the relevance."""
    return lambda: package.explain(model, x, target, composite=composite, **params).relevance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the earlier commit (any git revision)")
    parser.add_argument("--model", default="resnet50", help="paper, vgg16 or resnet50 (default: resnet50)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--composites", default="epsilon,epsilon-plus,alpha1-beta0,epsilon-alpha2-beta1,"
                                                "epsilon-gamma-box")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="toy versions of the models (a smoke test)")
    size.add_argument("--narrow", action="store_true",
                      help="ResNet-50 at full depth with 4 channels in the stem on 32×32 (the work per op)")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory() as directory:
        old = import_old(options.old, Path(directory))
        if options.narrow:
            label, (model, x) = "resnet50-narrow", narrow_resnet50(options.batch)
        else:
            label, (model, x) = options.model, build(options.model, options.batch, quick=options.quick)
        target = model(x).argmax(1)
        for composite in options.composites.split(","):
            runs = {"gradient×input": lambda: _gradient_x_input(model, x, target)}
            for name, package in (("old", old), ("new", lrp)):
                runs[name] = explainer(package, model, x, target, composite, _composite_params(composite, x))
            before, after = runs["old"](), runs["new"]()
            difference = float((before - after).abs().max() / before.abs().max())
            times = timed_rounds(runs, options.repeats)
            medians = {name: statistics.median(values) for name, values in times.items()}
            base = medians["gradient×input"]
            paired = {name: round_ratios(times[name], times["gradient×input"]) for name in ("old", "new")}
            new_over_old = round_ratios(times["new"], times["old"])
            print(f"{label} batch {options.batch} {composite}: gradient×input {base * 1000:.0f} ms, "
                  f"old {medians['old'] / base:.2f}×, new {medians['new'] / base:.2f}× "
                  f"(relevance differs by {difference:.2g} of its maximum); per round: "
                  + ", ".join(f"{name} {m:.2f}× [{lo:.2f}–{hi:.2f}]" for name, (m, lo, hi) in paired.items())
                  + f", new ÷ old {new_over_old[0]:.3f} [{new_over_old[1]:.3f}–{new_over_old[2]:.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
