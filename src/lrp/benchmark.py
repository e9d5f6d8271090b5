"""Engine benchmark: wall time and peak memory of LRP composites next to gradient×input and zennit.

For every (model, batch) one fresh Python process builds the model (random weights, fixed seed)
and the input, and times every method on them:

- untimed warm-up runs of each method on the whole batch: at least ``WARMUP_MIN_RUNS``, then more
  until ``WARMUP_SECONDS`` have passed or ``WARMUP_MAX_RUNS`` ran (lazy imports, kernel selection,
  and the allocator: glibc needs about ten calls before the temporaries of a call stop costing page
  faults; explaining many inputs in one process is the steady state this measures, for every method
  alike);
- timed rounds, each running every method once, a different method first in each round: at least
  ``repeats`` rounds, then more until ``TIMED_SECONDS`` per method have passed or ``TIMED_MAX_RUNS``
  rounds ran (not with ``--quick``). Taking the methods in turn gives each the same share of the
  machine's changing load, so their ratios to gradient×input stay put when other jobs come and go
  (timed in separate processes one after another, ResNet-50 batch 8 ``epsilon`` took 1.12× the
  gradient in one run and 1.31× in another, same code). The table shows the median wall time
  (``time.perf_counter``), the median CPU time of the process (``time.process_time``, all threads) and the
  ratios to gradient×input taken within each round (:func:`round_ratios`), which also cancel the drift
  of the machine's speed from round to round;

then each method runs once more in a fresh process of its own, for memory, after
``WARMUP_MIN_RUNS`` untimed runs (a fresh process keeps one method's cached allocations from
hiding the next one's peak):

- one run measures the resident memory (RSS): after ``gc.collect()`` and ``malloc_trim(0)`` the
  process's peak resident set size (``VmHWM``) is reset to the current RSS (``echo 5 >
  /proc/self/clear_refs``, Linux ≥ 4.0); the extra memory is ``VmHWM`` after the run minus
  ``VmRSS`` before it, i.e. everything the explanation holds at its peak beyond model and input
  (activations, saved tensors, rule intermediates, the relevance itself). Its relevance gives the
  column ΣR / logit. (``malloc_trim`` has returned the warm heap to the system, so this run faults
  all of its memory back in: it is no timing run);
- one more run under ``torch.profiler`` with ``profile_memory=True`` gives the peak of the bytes held
  by live tensors (every allocation and free in time order, :func:`live_peak_mib`): what
  ``torch.cuda.max_memory_allocated`` would report on a GPU. The RSS also counts freed memory that
  glibc's malloc keeps for reuse, which depends on how many large buffers of which sizes a method
  allocates, not only on what it holds.

Methods: ``gradient×input`` (the baseline: one forward pass, ``torch.autograd.grad`` of the
explained logit w.r.t. the input, times the input), our composites (``lrp.explain``) and zennit's
equivalent composites (``zennit.attribution.Gradient``) with ``SequentialMergeBatchNorm``. Every
method explains the same class (the arg-max of the first forward pass) with all parameters frozen
(``requires_grad=False``) and the model in eval mode.

Threads: each worker uses ``--threads`` intra-op threads (default 2) and runs with
``OMP_WAIT_POLICY=PASSIVE`` set before torch is imported. On a shared 2-core machine OpenMP's
default active waiting keeps idle worker threads spinning after every parallel region, which
steals the cores from other processes (and from the other thread of our own pool when it
oversubscribes), so timings get slower and noisier; passive waiting lets idle threads sleep.
Workers inherit the rest of the environment; glibc malloc tunables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``), which change how often freed memory is returned to the system and
page-faulted back, and PyTorch's ``THP_MEM_ALLOC_ENABLE`` (large tensors on huge pages, which
``--huge-pages`` switches on: :mod:`lrp.hugepages`) are named in the report's header when set.

The architectures (VGG-16 configuration "D", ResNet-50 with bottleneck blocks) are written here,
not imported from torchvision, so that zennit's torchvision-specific canonizers do not apply.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .composites import COMPOSITES
from .hugepages import ENVIRONMENT_VARIABLE, kernel_mode
from .models import PaperCNN3d

__all__ = [
    "BASELINE",
    "DEFAULT_COMPOSITES",
    "MODELS",
    "VGG16",
    "ZENNIT_EQUIVALENTS",
    "Bottleneck",
    "Measurement",
    "ResNet50",
    "add_arguments",
    "in_turn",
    "live_peak_mib",
    "main_from_args",
    "markdown_table",
    "round_ratios",
    "run",
]

BASELINE = "gradient×input"
DEFAULT_COMPOSITES = ("epsilon", "epsilon-plus", "alpha1-beta0", "epsilon-alpha2-beta1", "epsilon-gamma-box")
ZENNIT_EQUIVALENTS = ("epsilon", "gamma", "alpha1-beta0", "alpha2-beta1", "z-plus", "epsilon-plus",
                      "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-gamma-box")
"""Our composites that have a zennit counterpart in this benchmark."""

_RESULT_MARK = "BENCH-RESULT "
_SEED = 0

# ---------------------------------------------------------------------------------------------
# architectures


VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                       512, 512, 512, "M")
"""VGG configuration "D" (Simonyan & Zisserman 2015): 13 convolutions, "M" = 2×2 max pooling."""


class VGG16(nn.Module):
    """VGG-16 (configuration "D", no BatchNorm) for images (N, 3, H, W) -> logits (N, num_classes).

    ``width`` scales the channel counts (1 = the original 64…512), ``pooled`` is the side of the
    adaptive average pooling before the classifier (7 for 224×224 inputs, as in torchvision).
    """

    def __init__(self, width: float = 1.0, hidden: int = 4096, num_classes: int = 1000, pooled: int = 7):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for item in VGG16_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(1, round(int(item) * width))
                layers += [nn.Conv2d(previous, out, 3, padding=1), nn.ReLU(inplace=True)]
                previous = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Linear(previous * pooled * pooled, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) -> (N, num_classes)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4 channels), each with BatchNorm, and the
    residual ``out + identity`` (identity projected by ``downsample`` when the shape changes)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        # registration order conv, bn, conv, bn, ... is the execution order (zennit's
        # SequentialMergeBatchNorm pairs a BatchNorm with the leaf registered right before it)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, inplanes, H, W) -> (N, 4·planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 (He et al. 2016, stride on the 3×3 convolution) for (N, 3, H, W) -> (N, num_classes).

    ``layers`` blocks per stage (3, 4, 6, 3) and ``width`` channels in the stem (64) give the
    original; smaller values give a toy network of the same design.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        inplanes = width
        for stage, blocks in enumerate(layers):
            planes = width * 2 ** stage
            stride = 1 if stage == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
            stage_blocks = [Bottleneck(inplanes, planes, stride, downsample)]
            inplanes = planes * Bottleneck.expansion
            stage_blocks += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) -> (N, num_classes)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmark model and its input, full size and for ``--quick``."""

    build: Callable[[bool], nn.Module]
    input_shape: Callable[[bool], tuple[int, ...]]  # without the batch dimension
    input_kind: str  # "unit" (uniform in [0, 1], a min-max normalised MRI) or "normal" (a standardised image)
    batches_option: str  # which option gives its batch sizes
    residual: bool = False
    repeats: Callable[[int], int] = lambda batch: 3  # default timed runs for a batch size
    calibration_batch: int = 2  # samples for measuring BatchNorm statistics (> 1 where maps shrink to 1×1)


def _paper(quick: bool) -> nn.Module:
    if quick:
        return PaperCNN3d.for_grid((24, 28, 24), channels=(4, 8, 8, 16), hidden=16)
    return PaperCNN3d()


MODELS: dict[str, ModelSpec] = {
    "paper": ModelSpec(_paper, lambda quick: (1, 24, 28, 24) if quick else (1, 193, 229, 193), "unit",
                       "paper_batch", calibration_batch=1),
    "vgg16": ModelSpec(lambda quick: VGG16(1 / 16, 64, 10, 1) if quick else VGG16(),
                       lambda quick: (3, 32, 32) if quick else (3, 224, 224), "normal", "batch",
                       repeats=lambda batch: 3 if batch == 1 else 2),
    "resnet50": ModelSpec(lambda quick: ResNet50((1, 1, 1, 1), 4, 10) if quick else ResNet50(),
                          lambda quick: (3, 32, 32) if quick else (3, 224, 224), "normal", "batch", residual=True),
}
"""Benchmark models by name: the paper's 3D CNN (193×229×193 volume), VGG-16, ResNet-50 (224×224)."""


def _initialise(model: nn.Module, x: Tensor) -> None:
    """Random weights that keep activations at a stable scale, and BatchNorm that is not an identity.

    Conv / dense weights: He-normal (fan-in), biases N(0, 0.1²). BatchNorm statistics are measured
    on the calibration batch ``x`` in train mode (so BatchNorm normalises, as in a trained network), then perturbed:
    variance × U(0.5, 2), mean + N(0, 0.1²)·std; affine weight U(0.5, 1.5), bias N(0, 0.1²).
    """
    norms = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
                norms.append(module)
        if norms:
            model.train()
            model(x)
        for norm in norms:
            channels = norm.num_features
            norm.momentum = 0.1
            norm.running_var.mul_(torch.empty(channels).uniform_(0.5, 2.0))
            norm.running_mean.add_(torch.randn(channels) * 0.1 * norm.running_var.sqrt())
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def build(name: str, batch: int, quick: bool) -> tuple[nn.Module, Tensor]:
    """The benchmark model ``name`` (eval mode, frozen, seeded random weights) and an input batch."""
    spec = MODELS[name]
    torch.manual_seed(_SEED)
    model = spec.build(quick)
    shape = (batch, *spec.input_shape(quick))
    sample = torch.rand if spec.input_kind == "unit" else torch.randn
    _initialise(model, sample(spec.calibration_batch, *shape[1:]))
    return model, sample(shape)


# ---------------------------------------------------------------------------------------------
# methods (each returns relevance like x and the logits)


def _gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    leaf = x.detach().requires_grad_(True)
    logits = model(leaf)
    (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), leaf)
    return gradient * leaf.detach(), logits.detach()


def _composite_params(composite: str, x: Tensor) -> dict:
    return {"low": x.min().item(), "high": x.max().item()} if composite == "epsilon-gamma-box" else {}


def _ours(composite: str) -> Callable:
    import lrp

    def explain(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        expl = lrp.explain(model, x, target, composite=composite, **_composite_params(composite, x))
        return expl.relevance, expl.prediction
    return explain


def _zennit_composite(composite: str, x: Tensor):
    """zennit's composite of the same meaning, with SequentialMergeBatchNorm."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit import types as zt
    from zennit.canonizers import SequentialMergeBatchNorm

    canonizers = [SequentialMergeBatchNorm()]
    uniform = {"epsilon": lambda: zr.Epsilon(epsilon=1e-6), "gamma": lambda: zr.Gamma(gamma=0.25),
               "alpha1-beta0": lambda: zr.AlphaBeta(alpha=1.0, beta=0.0),
               "alpha2-beta1": lambda: zr.AlphaBeta(alpha=2.0, beta=1.0), "z-plus": lambda: zr.ZPlus()}
    if composite in uniform:
        return zc.LayerMapComposite(layer_map=zc.layer_map_base() + [(zt.Linear, uniform[composite]())],
                                    canonizers=canonizers)
    named = {"epsilon-plus": zc.EpsilonPlus, "epsilon-plus-flat": zc.EpsilonPlusFlat,
             "epsilon-alpha2-beta1": zc.EpsilonAlpha2Beta1, "epsilon-gamma-box": zc.EpsilonGammaBox}
    return named[composite](canonizers=canonizers, **_composite_params(composite, x))


def _zennit(composite: str) -> Callable:
    from zennit.attribution import Gradient

    def explain(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        def output_relevance(out: Tensor) -> Tensor:
            index = target[:, None]
            return torch.zeros_like(out).scatter(1, index, out.gather(1, index))
        with Gradient(model=model, composite=_zennit_composite(composite, x)) as attributor:
            logits, relevance = attributor(x.detach(), output_relevance)
        return relevance, logits.detach()
    return explain


def _method(method: str) -> Callable:
    """``gradient×input``, ``lrp:<composite>`` or ``zennit:<composite>``."""
    if method == BASELINE:
        return _gradient_x_input
    engine, composite = method.split(":", 1)
    return _ours(composite) if engine == "lrp" else _zennit(composite)


# ---------------------------------------------------------------------------------------------
# one configuration in its own process


def _proc_status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE).group(1)) / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _zennit_merge_note(model: nn.Module) -> str:
    from zennit.canonizers import SequentialMergeBatchNorm

    merges = SequentialMergeBatchNorm().apply(model)
    for merge in merges:
        merge.remove()
    total = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return f"zennit SequentialMergeBatchNorm merged {len(merges)} of {total} BatchNorm layers"


WARMUP_MIN_RUNS, WARMUP_MAX_RUNS, WARMUP_SECONDS = 2, 10, 5.0
TIMED_MAX_RUNS, TIMED_SECONDS = 25, 3.0


def warm_up(run: Callable[[], object]) -> int:
    """Run ``run`` untimed until the process is warm (see the module docstring); returns the count."""
    start, runs = time.perf_counter(), 0
    while runs < WARMUP_MIN_RUNS or (runs < WARMUP_MAX_RUNS and time.perf_counter() - start < WARMUP_SECONDS):
        run()
        runs += 1
    return runs


def _setup(spec: dict) -> tuple[nn.Module, Tensor, Tensor]:
    """The worker's model, input (in channels_last memory format if asked) and explained classes (N,)."""
    torch.set_num_threads(spec["threads"])
    model, x = build(spec["model"], spec["batch"], spec["quick"])
    if spec["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, target


def _error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _timing_worker(spec_json: str) -> dict:
    """Time every method of one (model, batch) in turn, in one process (see the module docstring): returns
    per method its wall and CPU times (s) and an error line if it failed."""
    spec = json.loads(spec_json)
    model, x, target = _setup(spec)
    results = {method: {"times": [], "cpu_times": [], "error": ""} for method in spec["methods"]}
    runs = {}
    for name in spec["methods"]:
        method = _method(name)
        try:
            warm_up(lambda method=method: method(model, x, target))
        except Exception as error:  # noqa: BLE001 - reported in the table, the other methods go on
            results[name]["error"] = _error_line(error)
            continue
        runs[name] = method
    budget = 0.0 if spec["quick"] else TIMED_SECONDS * len(runs)
    rounds, spent = 0, 0.0
    while runs and (rounds < spec["repeats"] or (rounds < TIMED_MAX_RUNS and spent < budget)):
        for name in in_turn(list(runs), rounds):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                runs[name](model, x, target)
            except Exception as error:  # noqa: BLE001
                results[name]["error"] = _error_line(error)
                del runs[name]
                continue
            results[name]["times"].append(time.perf_counter() - start)
            results[name]["cpu_times"].append(time.process_time() - start_cpu)
            spent += results[name]["times"][-1]
        rounds += 1
    return results


def _memory_worker(spec_json: str) -> dict:
    """Measure the memory of one method (see the module docstring); runs in its own process."""
    spec = json.loads(spec_json)
    model, x, target = _setup(spec)
    method = _method(spec["method"])
    note = _zennit_merge_note(model) if spec["method"].startswith("zennit:") else ""
    for _ in range(WARMUP_MIN_RUNS):
        method(model, x, target)
    _release_free_memory()  # the first run after it faults its whole heap back in
    base = _proc_status_mib("VmRSS") if _reset_peak_rss() else None
    relevance, logits = method(model, x, target)
    peak = _proc_status_mib("VmHWM") if base is not None else None
    explained = logits.gather(1, target[:, None]).squeeze(1)
    ratio = (relevance.flatten(1).sum(1) / explained).mean().item()
    del relevance, logits
    return {"base_mib": base, "peak_mib": peak, "sum_ratio": ratio,
            "live_mib": live_peak_mib(lambda: method(model, x, target)), "note": note}


def live_peak_mib(run: Callable[[], object]) -> float:
    """The peak of the bytes held by tensors allocated during ``run`` (MiB): the profiler's record of every
    CPU allocation and free in time order (``torch.profiler._memory_profiler``, what
    ``profile.export_memory_timeline`` draws; per-op memory totals would miss temporaries freed inside a
    custom autograd backward)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as profiler:
        run()
    changes = {Action.CREATE: 1, Action.DESTROY: -1}
    live = peak = 0
    for _, action, _, size in sorted(MemoryProfile(profiler.profiler.kineto_results).timeline, key=lambda r: r[0]):
        live += changes.get(action, 0) * size
        peak = max(peak, live)
    return peak / 2**20


_WORKERS = {"times": _timing_worker, "memory": _memory_worker}


def _worker_main() -> None:
    """Entry of a worker process: ``argv[1]`` names the worker (a key of ``_WORKERS``), ``argv[2]`` is its spec."""
    result = _WORKERS[sys.argv[1]](sys.argv[2])
    print(_RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# orchestration


@dataclass
class Measurement:
    """One (model, batch, method): wall and CPU times of the timed runs (s), RSS before and peak RSS during
    the untimed memory run after them, live tensor peak (MiB)."""

    model: str
    batch: int
    method: str
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    base_mib: float | None = None
    peak_mib: float | None = None
    live_mib: float | None = None
    sum_ratio: float | None = None
    note: str = ""
    error: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_times) if self.cpu_times else None

    @property
    def extra_mib(self) -> float | None:
        return None if self.peak_mib is None or self.base_mib is None else self.peak_mib - self.base_mib


def worker_environment(threads: int) -> dict[str, str]:
    """The environment of a worker process: passive OpenMP waiting and the thread count, set before
    the worker imports torch (see the module docstring)."""
    env = dict(os.environ)
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _run_worker(worker: str, spec: dict, timeout: float | None) -> tuple[dict | None, str]:
    """Run a worker (a key of ``_WORKERS``) in a fresh Python process: its result, or None and an error line."""
    code = "from lrp.benchmark import _worker_main; _worker_main()"
    try:
        done = subprocess.run([sys.executable, "-c", code, worker, json.dumps(spec)], capture_output=True,
                              text=True, env=worker_environment(spec["threads"]), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_RESULT_MARK)), None)
    if done.returncode != 0 or line is None:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return None, lines[-1] if lines else f"worker exited with status {done.returncode}"
    return json.loads(line[len(_RESULT_MARK):]), ""


def measure(model: str, batch: int, methods: Sequence[str], *, repeats: int, threads: int, quick: bool,
            channels_last: bool = False, timeout: float | None = None,
            progress: Callable[[Measurement], None] | None = None) -> list[Measurement]:
    """Measure the methods on one (model, batch): their times in one process, taken in turn, then the memory
    of each in a fresh process of its own (see the module docstring); ``progress`` gets each finished
    measurement. Failures are recorded, not raised. ``channels_last`` gives the methods their input in that
    memory format (channels_last_3d for 5-D inputs)."""
    spec = {"model": model, "batch": batch, "repeats": repeats, "threads": threads, "quick": quick,
            "channels_last": channels_last}
    timings, error = _run_worker("times", {**spec, "methods": list(methods)}, timeout)
    results = []
    for method in methods:
        result = Measurement(model, batch, method, error=error)
        if timings is not None:
            for key, value in timings[method].items():
                setattr(result, key, value)
        if not result.error:
            memory, result.error = _run_worker("memory", {**spec, "method": method}, timeout)
            for key, value in (memory or {}).items():
                setattr(result, key, value)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def methods_for(composites: Sequence[str], zennit: bool) -> list[str]:
    """The methods of one (model, batch): the baseline, then each composite in our engine and in zennit."""
    methods = [BASELINE]
    for composite in composites:
        methods.append(f"lrp:{composite}")
        if zennit and composite in ZENNIT_EQUIVALENTS:
            methods.append(f"zennit:{composite}")
    return methods


def run(options: argparse.Namespace, progress: Callable[[str], None] | None = None) -> list[Measurement]:
    """Measure every configuration the options ask for, in order; ``progress`` gets one line each."""
    results: list[Measurement] = []
    methods = methods_for(options.methods, options.zennit)
    plan = [(model, batch) for model in options.models for batch in getattr(options, MODELS[model].batches_option)]
    total = len(plan) * len(methods)

    def report_progress(result: Measurement) -> None:
        results.append(result)
        if progress is not None:
            outcome = result.error or f"median {result.median:.3f} s, extra peak " + (
                f"{result.extra_mib:.0f} MiB" if result.extra_mib is not None else "n/a") + (
                f", live tensor peak {result.live_mib:.0f} MiB" if result.live_mib is not None else "")
            progress(f"[{len(results)}/{total}] {result.model} batch {result.batch} {result.method}: {outcome}")
    for model, batch in plan:
        repeats = options.repeats or (1 if options.quick else MODELS[model].repeats(batch))
        measure(model, batch, methods, repeats=repeats, threads=options.threads, quick=options.quick,
                channels_last=options.channels_last, progress=report_progress)
    return results


# ---------------------------------------------------------------------------------------------
# report


def _input_label(model: str, batch: int, quick: bool) -> str:
    return "×".join(str(d) for d in (batch, *MODELS[model].input_shape(quick)))


def _fmt(value: float | None, digits: str) -> str:
    return "n/a" if value is None else format(value, digits)


def _ratio(value: float | None, baseline: float | None) -> str:
    return "n/a" if value is None or not baseline else f"{value / baseline:.2f}"


def in_turn(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: each round starts one name later than the one before, so that every
    method runs first in turn and none always right after another."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def round_ratios(times: Sequence[float], base_times: Sequence[float]) -> tuple[float, float, float] | None:
    """Each run's time ÷ the baseline's in the same round (methods are timed in turn, so the i-th run of every
    method falls in round i): the median over the rounds and the quartiles, all three that one ratio after one
    round; None without a common round. A ratio within a round cancels the drift of a shared machine's speed
    over minutes, which the ratio of the two medians keeps (VGG-16 batch 8's gradient×input took 4.7 s in one
    run and 5.5–6.2 s in others of the same day)."""
    ratios = [t / b for t, b in zip(times, base_times)]
    if len(ratios) < 2:
        return (ratios[0],) * 3 if ratios else None
    low, middle, high = statistics.quantiles(ratios, n=4, method="inclusive")  # within the data, also for few
    return middle, low, high


def _round_ratio(times: Sequence[float], base: Measurement | None) -> str:
    ratios = None if base is None else round_ratios(times, base.times)
    return "n/a" if ratios is None else f"{ratios[0]:.2f} [{ratios[1]:.2f}–{ratios[2]:.2f}]"


def markdown_table(results: Sequence[Measurement], quick: bool = False) -> str:
    """The results as a markdown table; ratios are to gradient×input of the same model and batch."""
    header = ("| model | input | method | median time (s) | time ÷ g×i | per round ÷ g×i | median CPU (s) "
              "| CPU ÷ g×i | extra peak memory (MiB) | memory ÷ g×i | live tensor peak (MiB) | live ÷ g×i "
              "| ΣR / logit | runs |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    baselines = {(r.model, r.batch): r for r in results if r.method == BASELINE}
    for r in results:
        base = baselines.get((r.model, r.batch))
        label = _input_label(r.model, r.batch, quick)
        if r.error:
            lines.append(f"| {r.model} | {label} | {r.method} | failed: {r.error.replace('|', '/')} "
                         "| | | | | | | | | | |")
            continue
        lines.append(
            f"| {r.model} | {label} | {r.method} | {_fmt(r.median, '.3f')} "
            f"| {_ratio(r.median, base.median if base else None)} | {_round_ratio(r.times, base)} "
            f"| {_fmt(r.cpu_median, '.3f')} "
            f"| {_ratio(r.cpu_median, base.cpu_median if base else None)} | {_fmt(r.extra_mib, '.1f')} "
            f"| {_ratio(r.extra_mib, base.extra_mib if base else None)} | {_fmt(r.live_mib, '.1f')} "
            f"| {_ratio(r.live_mib, base.live_mib if base else None)} | {_fmt(r.sum_ratio, '.4g')} "
            f"| {len(r.times)} |")
    return "\n".join(lines)


def _allocator_settings() -> str:
    """The allocator settings that workers inherit from this environment, as ", K=V": glibc malloc tunables
    (``MALLOC_*``) and PyTorch's huge pages switch, with the kernel's huge page mode (see :mod:`lrp.hugepages`)."""
    settings = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]
    if ENVIRONMENT_VARIABLE in os.environ:
        settings.append(f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]} (kernel transparent huge "
                        f"pages: {kernel_mode() or 'none'})")
    return "".join(f", {setting}" for setting in settings)


def report(results: Sequence[Measurement], options: argparse.Namespace, elapsed: float,
           load: tuple[float, float] | None = None) -> str:
    """Markdown: how it was measured, the table, and notes (zennit's handling of BatchNorm and sums)."""
    threads = options.threads
    lines = [
        "# LRP engine benchmark" + (" (--quick: toy models and grids)" if options.quick else ""),
        "",
        f"torch {torch.__version__}, {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs visible, "
        f"{threads} intra-op thread(s) per worker, OMP_WAIT_POLICY=PASSIVE{_allocator_settings()}"
        + ("; inputs in channels_last memory format (channels_last_3d for the paper model), model weights as "
           "built" if getattr(options, "channels_last", False) else "") + "; "
        f"total wall time {elapsed:.0f} s"
        + (f"; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (other jobs "
           "share the machine when it exceeds the thread count)." if load else "."),
        "",
        f"- Per model and batch, one fresh Python process builds model (random weights, seed 0) and input, runs "
        f"each method {WARMUP_MIN_RUNS}–{WARMUP_MAX_RUNS} times untimed ({WARMUP_SECONDS:.0f} s budget each), then "
        "times the methods in turn, a different one first in each round "
        + ("(column *runs*); " if options.quick else
           f"(column *runs*: the --repeats minimum, then more up to {TIMED_MAX_RUNS} within {TIMED_SECONDS:.0f} s "
           "per method); ")
        + "*median time* is their median wall time, *median CPU* their median CPU time (all threads of the "
        "process). Taken in turn, every method gets the same share of the machine's changing load. *per round "
        "÷ g×i*: each round's time ÷ gradient×input's in the same round, median [quartiles] over the rounds "
        "(steadier than the ratio of the medians when the machine's speed drifts).",
        f"- *extra peak memory*: each method in a fresh process of its own, after {WARMUP_MIN_RUNS} untimed runs: "
        "peak RSS during one more run (VmHWM, reset to the current RSS just before it via /proc/self/clear_refs, "
        "after gc and malloc_trim) minus the RSS before it (model, input, libraries). *live tensor peak*: the most "
        "bytes held by tensors allocated during one more run, from torch.profiler's allocation records (what "
        "torch.cuda.max_memory_allocated reports on a GPU; the RSS also counts freed memory that malloc keeps). "
        "Ratios are to gradient×input of the same model and batch.",
        "- gradient×input: one forward, torch.autograd.grad of the explained logit w.r.t. the input, × input. "
        "lrp:<composite>: lrp.explain. zennit:<composite>: zennit.attribution.Gradient with zennit's "
        "composite of the same meaning and SequentialMergeBatchNorm, entered per call (like lrp.explain). "
        "All explain the arg-max class; parameters frozen; eval mode.",
        "- ΣR / logit: input relevance summed per sample over the explained logit (batch mean); 1 means "
        "conservation (biases and stabilisers absorb some).",
    ]
    notes = sorted({f"{r.model}: {r.note}" for r in results if r.note})
    lines += [f"- {note}" for note in notes]
    if any(MODELS[r.model].residual and r.method.startswith("zennit:") for r in results):
        lines.append(
            "- zennit and the residual sum: the hand-written ResNet-50 computes `out + identity` as a plain "
            "tensor sum, which no zennit rule covers (zennit's ResNetCanonizer only matches torchvision's "
            "Bottleneck class). zennit therefore leaves it to autograd: the gradient of a sum hands the *full* "
            "relevance of the sum to both branches instead of splitting it in proportion to their "
            "contributions (our engine's Norm rule); compare ΣR / logit of zennit and lrp rows. zennit's "
            "numbers on ResNet-50 are therefore not the same explanation as ours, only a similar amount of work.")
    lines += ["", markdown_table(results, options.quick), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_list(text: str) -> list[int]:
    values = [_positive(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _names(known: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [v.strip().lower().replace("_", "-") for v in text.split(",") if v.strip()]
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; choose from {', '.join(known)}")
        return names
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``lrp bench`` and ``benchmarks/engine.py``)."""
    parser.add_argument("--models", type=_names(list(MODELS), "model"), default=list(MODELS),
                        help="comma-separated models: paper (3D CNN of Böhle et al. 2019 on a 1×193×229×193 "
                             "volume), vgg16, resnet50 (224×224 RGB) (default: all)")
    parser.add_argument("--batch", type=_positive_list, default=[1, 8],
                        help="comma-separated batch sizes for vgg16 and resnet50 (default: 1,8)")
    parser.add_argument("--paper-batch", type=_positive_list, default=[1],
                        help="comma-separated batch sizes for the 3D paper model (default: 1)")
    parser.add_argument("--methods", type=_names(list(COMPOSITES), "composite"), default=list(DEFAULT_COMPOSITES),
                        help="comma-separated composites to time next to gradient×input "
                             f"(default: {','.join(DEFAULT_COMPOSITES)})")
    parser.add_argument("--no-zennit", dest="zennit", action="store_false",
                        help="skip zennit's equivalent composites")
    parser.add_argument("--repeats", type=_positive, default=None,
                        help="timed rounds (one run of every method each) at least, after the warm-up runs; more "
                             f"follow within {TIMED_SECONDS:.0f} s per method, up to {TIMED_MAX_RUNS} (default: 3, 2 "
                             "for vgg16 with batch > 1; 1 and no more with --quick)")
    parser.add_argument("--threads", type=_positive, default=2,
                        help="torch intra-op threads per worker process (default: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="toy-sized models and grids (a smoke run; its time goes to starting a Python process "
                             "per method and one per model and batch: about 9 minutes for everything on 2 cores, "
                             "half a minute for one model and composite)")
    parser.add_argument("--channels-last", action="store_true",
                        help="give every method its input in channels_last memory format (channels_last_3d for "
                             "the paper model, whose one-channel volume is the same in both formats); the model's "
                             "weights stay as built")
    parser.add_argument("--huge-pages", action="store_true",
                        help="put large CPU tensors on huge pages in every worker (THP_MEM_ALLOC_ENABLE=1, as the "
                             "other lrp commands do; see lrp.hugepages); by default the workers keep PyTorch's "
                             "allocator as the environment sets it")
    parser.add_argument("--output", metavar="FILE",
                        help="also write the report (markdown: method notes and the table) to FILE")


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def main_from_args(options: argparse.Namespace) -> int:
    """Run the benchmark for parsed options: progress on stderr, the report on stdout (and --output)."""
    if options.zennit:
        try:
            import zennit  # noqa: F401
        except ImportError:
            print("zennit is not installed; running without it (pip install zennit==0.5.1)", file=sys.stderr)
            options.zennit = False
    start, load_start = time.perf_counter(), _load_average()
    results = run(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    load = None if load_start is None else (load_start, _load_average())
    text = report(results, options, time.perf_counter() - start, load)
    print(text)
    if options.output:
        with open(options.output, "w") as out:
            out.write(text)
    return 1 if any(r.error for r in results) else 0
