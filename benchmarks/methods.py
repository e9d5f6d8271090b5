"""Cost of the comparison methods (``lrp.methods``) and of LRP on the paper's 3D CNN, relative to one gradient.

    python benchmarks/methods.py [--quick] [--repeats 3] [--threads 2] [--batch-size 4]
                                 [--steps 50] [--samples 25] [--patch 48] [--methods gradient,occlusion,...]

The model is ``lrp.models.PaperCNN3d`` with PyTorch's default random initialisation (timings do not
depend on the weights), in eval mode with frozen parameters, explaining one volume of uniform random
intensities: the paper's full 1×1×193×229×193 grid, or with ``--quick`` 1×1×64×76×64
(``PaperCNN3d.for_grid``). Every method runs in this one process: the single-pass methods after one
untimed warm-up call, each method ``--repeats`` times; the table gives the median wall time and its
ratio to the median of ``gradient``, and the same for the process's CPU time (all threads), which
depends less on other jobs on a shared machine. Integrated gradients, SmoothGrad and occlusion run with their
default parameters (50 Gauss–Legendre steps, 25 samples) except where an option states otherwise,
``--batch-size`` inputs per forward pass, and occlusion with non-overlapping ``--patch``³ patches
(default 48 on the full grid, 16 with ``--quick``).

OMP_WAIT_POLICY=PASSIVE is set before torch is imported, so that idle OpenMP threads sleep instead
of spinning on a shared machine.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (and its OpenMP runtime) is imported

import torch

import lrp
from lrp import methods
from lrp.models import PAPER_GRID, PaperCNN3d

QUICK_GRID = (64, 76, 64)
BASELINE = "gradient"


def method_table(options: argparse.Namespace) -> dict[str, tuple[str, bool, Callable]]:
    """name -> (parameters as shown, single forward/backward pass, call(model, x) -> Explanation)."""
    batch, steps, samples, patch = options.batch_size, options.steps, options.samples, options.patch
    return {
        "gradient": ("", True, methods.gradient),
        "gradient×input": ("", True, methods.gradient_x_input),
        "guided backprop": ("", True, methods.guided_backprop),
        "deconvnet": ("", True, methods.deconvnet),
        "LRP alpha1-beta0": ("", True, lambda m, x: lrp.explain(m, x, composite="alpha1-beta0")),
        "LRP epsilon": ("", True, lambda m, x: lrp.explain(m, x, composite="epsilon")),
        "integrated gradients": (f"gausslegendre, steps={steps}, batch_size={batch}", False,
                                 lambda m, x: methods.integrated_gradients(m, x, steps=steps, batch_size=batch)),
        "SmoothGrad": (f"samples={samples}, noise_level=0.1, batch_size={batch}", False,
                       lambda m, x: methods.smoothgrad(m, x, samples=samples, seed=0, batch_size=batch)),
        "occlusion": (f"patch={patch}³, stride={patch}, batch_size={batch}", False,
                      lambda m, x: methods.occlusion(m, x, patch=patch, batch_size=batch)),
    }


def timed(run: Callable[[], object], repeats: int, warm_up: bool) -> tuple[list[float], list[float]]:
    """Wall and CPU times (s) of ``repeats`` calls of ``run``, after one untimed call if ``warm_up``."""
    if warm_up:
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


Row = tuple[str, str, list[float], list[float]]
"""method, parameters as shown, wall times, CPU times."""


def markdown_table(rows: list[Row]) -> str:
    """One line per method: median wall and CPU time and their ratios to the gradient's."""
    base_wall, base_cpu = next((statistics.median(wall), statistics.median(cpu))
                               for name, _, wall, cpu in rows if name == BASELINE)
    lines = ["| method | parameters | runs | median time (s) | time ÷ gradient | median CPU (s) | CPU ÷ gradient |",
             "|---|---|---|---|---|---|---|"]
    for name, parameters, wall, cpu in rows:
        median, median_cpu = statistics.median(wall), statistics.median(cpu)
        lines.append(f"| {name} | {parameters or '–'} | {len(wall)} | {median:.3f} | {median / base_wall:.1f} "
                     f"| {median_cpu:.3f} | {median_cpu / base_cpu:.1f} |")
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the {'×'.join(map(str, QUICK_GRID))} grid")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=1, help="inputs per forward pass of IG, SmoothGrad, "
                                                                  "occlusion (default 1, the fastest on CPU)")
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients steps (default 50)")
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad samples (default 25)")
    parser.add_argument("--patch", type=int, default=None, help="occlusion patch edge (default 48; 16 with --quick)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods (gradient always runs)")
    options = parser.parse_args()
    if options.patch is None:
        options.patch = 16 if options.quick else 48
    known = method_table(options)
    chosen = list(known) if options.methods is None else [BASELINE] + [
        name.strip() for name in options.methods.split(",") if name.strip() and name.strip() != BASELINE]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(known)}")
    if min(options.repeats, options.threads, options.batch_size, options.steps, options.samples, options.patch) < 1:
        parser.error("--repeats, --threads, --batch-size, --steps, --samples and --patch must be >= 1")
    options.methods = chosen
    return options


def main() -> None:
    options = parse_arguments()
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    grid = QUICK_GRID if options.quick else PAPER_GRID
    model = (PaperCNN3d.for_grid(grid) if options.quick else PaperCNN3d()).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.rand(1, 1, *grid)
    table = method_table(options)
    rows = []
    started = time.perf_counter()
    for name in options.methods:
        parameters, single_pass, method = table[name]
        wall, cpu = timed(functools.partial(method, model, x), options.repeats, warm_up=single_pass)
        rows.append((name, parameters, wall, cpu))
        print(f"{name}: median {statistics.median(wall):.3f} s", flush=True)
    print()
    print(f"PaperCNN3d on 1×1×{'×'.join(map(str, grid))}, float32, {options.threads} thread(s), torch "
          f"{torch.__version__}; total {time.perf_counter() - started:.0f} s\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
