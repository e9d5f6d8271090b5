"""The floor under the speed targets: how long each composite's layer kernels (convolutions, transposed
convolutions, matrix products) take on their own, as a multiple of gradient×input's whole call.

    python benchmarks/conv_floor.py [--model resnet50] [--batch 1]
                                    [--composites epsilon,alpha1-beta0] [--repeats 7] [--profiled 3] [--threads 2]

A rule that needs more layer calls than the gradient (``epsilon-plus``'s z⁺, α-β's second transposed layer,
γ's two transposes where relevance reaches negative outputs) cannot run faster than those kernels, whatever
its element-wise and Python work cost. This measures that floor on the machine at hand, per composite:

- *time*: the composite's median time ÷ gradient×input's, both unprofiled, taken in turn round by round
  after two warm-up rounds (``benchmarks/engine_ab.py``'s ``timed_rounds``);
- *kernels*: the share of its layer kernels in its own calls under ``torch.profiler`` (their self CPU time
  ÷ the call's wall time, median of ``--profiled`` calls) times *time*: the floor, in the same unit; if
  anything a little low, as the profiler's own work between the ops counts in the call's wall time;
- *rest*: time − kernels, what the element-wise passes, memory and Python add;
- *target*: the issue's target for the composite, and how much of it the floor leaves for the rest.

gradient×input's own kernel share is printed first. CPU only: on a GPU the profiler's CPU times are launches.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see benchmarks/engine.py)

import torch
from engine_ab import timed_rounds  # (this script's directory is on the path)
from torch.profiler import ProfilerActivity, profile

import lrp
from lrp.benchmark import _composite_params, _gradient_x_input, build

LAYER_KERNELS = frozenset({
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward", "aten::slow_conv3d_forward", "aten::slow_conv_dilated2d",
    "aten::slow_conv_dilated3d", "aten::slow_conv_transpose2d", "aten::slow_conv_transpose3d",
    "aten::mm", "aten::addmm", "aten::bmm",
})
"""Profiler names of the ops that compute a dense or convolutional layer (or its transpose) on the CPU."""

TARGETS = {"epsilon": 1.2, "epsilon-plus": 1.6, "alpha1-beta0": 1.6, "epsilon-alpha2-beta1": 2.0,
           "epsilon-gamma-box": 1.6}
"""The issue's targets, time ÷ gradient×input."""


def kernel_share(call: Callable[[], object], calls: int) -> float:
    """Median over ``calls`` profiled calls of the share of the call's wall time spent in :data:`LAYER_KERNELS`
    (their self CPU time). A share, not seconds: the machine's load moves single calls by 10 % and more, and
    the profiler slows the ops between the kernels, so seconds from profiled calls would not compare with the
    unprofiled medians."""
    shares = []
    for _ in range(calls):
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            start = time.perf_counter()
            call()
            wall = time.perf_counter() - start
        kernels = sum(event.self_cpu_time_total for event in profiler.key_averages() if event.key in LAYER_KERNELS)
        shares.append(kernels / 1e6 / wall)
    return statistics.median(shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="paper, vgg16 or resnet50 (default: resnet50)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--composites", default=",".join(TARGETS))
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--profiled", type=int, default=3, help="profiled calls per method (default: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy versions of the models (a smoke test)")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    model, x = build(options.model, options.batch, quick=options.quick)
    target = model(x).argmax(1)
    composites = options.composites.split(",")
    runs: dict[str, Callable[[], object]] = {"gradient×input": lambda: _gradient_x_input(model, x, target)}
    for composite in composites:
        params = _composite_params(composite, x)
        runs[composite] = (lambda composite=composite, params=params:
                           lrp.explain(model, x, target, composite=composite, **params))
    medians = {name: statistics.median(times) for name, times in timed_rounds(runs, options.repeats).items()}
    base = medians["gradient×input"]
    print(f"{options.model} batch {options.batch}, {options.threads} threads, {options.repeats} rounds, "
          f"{options.profiled} profiled calls each; gradient×input {base * 1000:.0f} ms, of which layer kernels "
          f"{kernel_share(runs['gradient×input'], options.profiled):.2f}")
    print(f"{'composite':22s} {'time':>6s} {'kernels':>8s} {'rest':>6s} {'target':>7s} {'left for rest':>14s}")
    for composite in composites:
        ratio = medians[composite] / base
        floor = ratio * kernel_share(runs[composite], options.profiled)
        goal = TARGETS.get(composite)
        goal_text, left = ("", "") if goal is None else (f"{goal:.1f}", f"{goal - floor:+.2f}")
        print(f"{composite:22s} {ratio:6.2f} {floor:8.2f} {ratio - floor:6.2f} {goal_text:>7s} {left:>14s}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
