"""Device check of the engine: the same explanations on a GPU as on the CPU, and its speed and memory there.

    PYTHONPATH=src python3 benchmarks/device_check.py [--device cuda] [--quick] [--output report.md]

Part 1, correctness (exit status 1 if a check fails). On toy-sized versions of the benchmark models (the
paper's 3D CNN, VGG-16, ResNet-50; batch 2) and every named composite, the relevance computed on the
device in float64 equals the CPU's to 1e-8 (max |difference| / max |CPU relevance|), float32 to 1e-2
(TF32 off for this part; part 2 runs with PyTorch's defaults), and bfloat16 / float16 are finite
(their error is reported) or raise the engine's NonFiniteError (a value outside the half-precision
range: reported, not a failure); the model's weights, buffers, ``training`` flags and ``requires_grad``
are unchanged afterwards; channels_last inputs give the float64 result; gradient, gradient×input,
guided backprop, deconvnet and integrated gradients equal the CPU's.

Part 2, speed and memory (reported, not checked). Median time of the timed runs (after warm-up runs) and
peak memory of gradient×input and of five composites, float32, on the full-size models (the paper's
model on 1×1×193×229×193, VGG-16 and ResNet-50 on 8×3×224×224; ``--quick``: the toy ones), as ratios to
gradient×input; zennit's equivalent composites too where zennit is installed (``--no-zennit``: not).
Memory is the peak of ``torch.cuda.max_memory_allocated`` above what was allocated before the run (on
the CPU: :func:`lrp.benchmark.live_peak_mib`). On a GPU, the kernel time of one run (torch.profiler) shows
how much of the call the device is busy; the rest is the host (Python, kernel launches).

Only torch, numpy and this package are imported (and zennit, if installed), so the script runs on a bare
machine with PyTorch.
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import lrp
from lrp.benchmark import ZENNIT_EQUIVALENTS, _composite_params, _gradient_x_input, _ours, _zennit, build, live_peak_mib
from lrp.composites import COMPOSITES
from lrp.errors import NonFiniteError

MODELS = ("paper", "vgg16", "resnet50")
TIMED = ("epsilon", "epsilon-plus", "alpha1-beta0", "epsilon-alpha2-beta1", "epsilon-gamma-box")
FULL_SIZE_BATCH = {"paper": 1, "vgg16": 8, "resnet50": 8}
FLOAT64_LIMIT, FLOAT32_LIMIT = 1e-8, 1e-2


@dataclass
class Checks:
    """Rows of (what, measured relative error or None, limit or None, passed)."""

    rows: list[tuple[str, float | None, float | None, bool]] = field(default_factory=list)

    def error(self, what: str, value: Tensor, reference: Tensor, limit: float | None) -> None:
        """Compare ``value`` with the CPU float64 ``reference``: finite, and within ``limit`` if given."""
        error = relative_error(value, reference)
        finite = bool(torch.isfinite(value).all())
        self.rows.append((what, error, limit, finite and (limit is None or error <= limit)))

    def require(self, what: str, passed: bool) -> None:
        self.rows.append((what, None, None, passed))

    @property
    def failed(self) -> list[str]:
        return [what for what, _, _, passed in self.rows if not passed]

    def markdown(self) -> str:
        lines = ["| check | relative error | limit | result |", "|---|---|---|---|"]
        for what, error, limit, passed in self.rows:
            lines.append(f"| {what} | {'' if error is None else f'{error:.2e}'} | "
                         f"{'' if limit is None else f'{limit:g}'} | {'ok' if passed else 'FAILED'} |")
        return "\n".join(lines)


def relative_error(value: Tensor, reference: Tensor) -> float:
    """``max |value − reference| / max |reference|``, computed in float64 on the CPU."""
    difference = (value.detach().double().cpu() - reference).abs().max()
    return float(difference / reference.abs().max().clamp_min(torch.finfo(torch.float64).tiny))


def state(model: nn.Module) -> tuple:
    """Weights and buffers (copies), ``training`` flags and ``requires_grad`` of ``model``."""
    return ({name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
            [module.training for module in model.modules()], [p.requires_grad for p in model.parameters()])


def same_state(before: tuple, after: tuple) -> bool:
    tensors_before, *flags_before = before
    tensors_after, *flags_after = after
    return (flags_before == flags_after and tensors_before.keys() == tensors_after.keys()
            and all(torch.equal(tensors_before[k], tensors_after[k]) for k in tensors_before))


def check_composites(name: str, model: nn.Module, x: Tensor, device: torch.device, checks: Checks) -> None:
    """Every named composite on ``device`` in four dtypes against the CPU in float64."""
    for composite in COMPOSITES:
        params = _composite_params(composite, x)
        reference = lrp.explain(model, x, composite=composite, **params)
        for dtype, limit in ((torch.float64, FLOAT64_LIMIT), (torch.float32, FLOAT32_LIMIT),
                             (torch.bfloat16, None), (torch.float16, None)):
            what = f"{name} {composite} {str(dtype).removeprefix('torch.')}"
            moved = copy.deepcopy(model).to(device, dtype)
            before = state(moved)
            try:
                explained = lrp.explain(moved, x.to(device, dtype), target=reference.target.to(device),
                                        composite=composite, **params)
            except NonFiniteError:  # a half-precision range overflow is reported by the engine, as it should be
                checks.require(f"{what}: NonFiniteError raised", limit is None)
                continue
            checks.error(what, explained.relevance, reference.relevance, limit)
            if dtype == torch.float64:
                checks.require(f"{name} {composite}: model unchanged", same_state(before, state(moved)))
                checks.require(f"{name} {composite}: target", torch.equal(explained.target.cpu(), reference.target))


def check_layouts_and_methods(name: str, model: nn.Module, x: Tensor, device: torch.device, checks: Checks) -> None:
    """channels_last inputs (2D models) and the gradient-based methods, float64, against the CPU."""
    moved, x_device = copy.deepcopy(model).to(device), x.to(device)
    if x.dim() == 4:
        for composite in ("epsilon-alpha2-beta1", "epsilon-gamma-box"):
            params = _composite_params(composite, x)
            reference = lrp.explain(model, x, composite=composite, **params).relevance
            last = copy.deepcopy(moved).to(memory_format=torch.channels_last)
            relevance = lrp.explain(last, x_device.to(memory_format=torch.channels_last), composite=composite,
                                    **params).relevance
            checks.error(f"{name} {composite} channels_last", relevance, reference, FLOAT64_LIMIT)
    methods: dict[str, Callable] = {
        "gradient": lrp.methods.gradient, "gradient×input": lrp.methods.gradient_x_input,
        "guided backprop": lrp.methods.guided_backprop, "deconvnet": lrp.methods.deconvnet,
        "integrated gradients": lambda m, t: lrp.methods.integrated_gradients(m, t, steps=8),
    }
    for label, method in methods.items():
        checks.error(f"{name} {label}", method(moved, x_device).relevance, method(model, x).relevance,
                     FLOAT64_LIMIT)


def correctness(device: torch.device) -> Checks:
    checks = Checks()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32 here
    try:
        for name in MODELS:
            model, x = build(name, 2, quick=True)
            model, x = model.double(), x.double()
            check_composites(name, model, x, device, checks)
            check_layouts_and_methods(name, model, x, device, checks)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return checks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], object], device: torch.device, warm_up: int, repeats: int) -> float:
    for _ in range(warm_up):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(run: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``run`` above what was allocated before it (MiB)."""
    if device.type != "cuda":
        return live_peak_mib(run)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def kernel_ms(run: Callable[[], object], device: torch.device) -> float | None:
    """The summed time of the device's kernels during one ``run`` (ms); None on the CPU."""
    if device.type != "cuda":
        return None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        run()
        synchronize(device)
    kernels = [event for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    return sum(event.device_time for event in kernels) / 1e3


def methods(zennit: bool) -> list[tuple[str, Callable]]:
    """gradient×input, each timed composite, and zennit's equivalent of each (with ``zennit``)."""
    ours = [(composite, _ours(composite)) for composite in TIMED]
    theirs = [(f"zennit {c}", _zennit(c)) for c in TIMED if c in ZENNIT_EQUIVALENTS] if zennit else []
    return [("gradient×input", _gradient_x_input), *ours, *theirs]


def speed_rows(name: str, device: torch.device, quick: bool, zennit: bool) -> list[str]:
    """Table rows of one model: gradient×input, then each method, with ratios to the former."""
    warm_up, repeats = (1, 2) if quick else (3, 10)
    model, x = build(name, 2 if quick else FULL_SIZE_BATCH[name], quick)
    model, x = model.to(device), x.to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    rows, baseline = [], None
    for label, method in methods(zennit):
        run = functools.partial(method, model, x, target)
        seconds, memory = median_seconds(run, device, warm_up, repeats), peak_mib(run, device)
        kernels = kernel_ms(run, device)
        baseline = baseline or (seconds, memory)
        rows.append(f"| {name} | {'×'.join(map(str, x.shape))} | {label} | {seconds * 1e3:.1f} | "
                    f"{seconds / baseline[0]:.2f} | {memory:.1f} | {memory / baseline[1]:.2f} | "
                    f"{'' if kernels is None else f'{kernels:.1f}'} |")
    return rows


def speed(device: torch.device, quick: bool, zennit: bool) -> str:
    header = ("| model | input | method | median time (ms) | time ÷ g×i | peak memory (MiB) | memory ÷ g×i | "
              "kernel time (ms) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        lines += speed_rows(name, device, quick, zennit)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="the device to check against the CPU (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="toy-sized models for part 2 too, 2 timed runs")
    parser.add_argument("--output", help="also write the report (markdown) to this file")
    parser.add_argument("--no-zennit", dest="zennit", action="store_false",
                        help="leave zennit's composites out of part 2 (they are in where zennit is installed)")
    options = parser.parse_args(argv)
    zennit = options.zennit and importlib.util.find_spec("zennit") is not None
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("device_check: --device cuda, but torch.cuda.is_available() is False on this machine", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    checks = correctness(device)
    verdict = f"{len(checks.failed)} of {len(checks.rows)} checks FAILED: " + "; ".join(checks.failed) \
        if checks.failed else f"all {len(checks.rows)} checks passed"
    report = "\n\n".join([
        f"# Device check: {name}, torch {torch.__version__}",
        f"## Correctness against the CPU (float64)\n\n{verdict}\n\n{checks.markdown()}",
        f"## Speed and memory, float32\n\n{speed(device, options.quick, zennit)}",
    ])
    print(report)
    if options.output:
        with open(options.output, "w") as file:
            file.write(report + "\n")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
