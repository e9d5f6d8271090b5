"""What our traced forward pass costs against a plain one, and what reading the tensors LRP needs from
autograd's own graph after a plain forward would cost instead.

    python benchmarks/forward_paths.py [--model resnet50] [--batch 1] [--composite epsilon] [--repeats 15]

Three forward passes, taken in turn round by round after two warm-up rounds (``benchmarks/engine_ab.py``'s
``timed_rounds``), median milliseconds:

- *plain*: the model on an input that requires grad, as gradient×input's forward (autograd records its graph
  in C++, no Python per op);
- *plain + walk*: the same, then a walk in Python over every node of autograd's graph that reads the saved
  tensors a rule would need (each convolution's input and weight, each BatchNorm's input and statistics,
  each ReLU's output, ...): the forward a relevance graph built from autograd's nodes would cost;
- *traced*: our forward (:class:`lrp.interception.Trace`, one handler per op, and the work after it that
  :meth:`~lrp.interception.Trace.output_logits` does).

Each forward's output is dropped before the next, so no run pays for another's memory.
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see benchmarks/engine.py)

import torch
from engine_ab import timed_rounds  # (this script's directory is on the path)
from torch import Tensor, nn

from lrp.benchmark import _composite_params, build
from lrp.composites import Composite, resolve_composite
from lrp.interception import Trace

SAVED_TENSORS = {
    "ConvolutionBackward0": ("_saved_input", "_saved_weight"),
    "NativeBatchNormBackward0": ("_saved_input", "_saved_weight", "_saved_running_mean", "_saved_running_var"),
    "ReluBackward0": ("_saved_result",),
    "AddmmBackward0": ("_saved_mat1", "_saved_mat2"),
    "MaxPool2DWithIndicesBackward0": ("_saved_self", "_saved_result1"),
    "MaxPool3DWithIndicesBackward0": ("_saved_self", "_saved_result1"),
}
"""Per kind of autograd node (its class name), the saved tensors a rule reads; other kinds are only visited."""


def plain(model: nn.Module, x: Tensor) -> Tensor:
    """The model's forward on ``x`` as a leaf that requires grad."""
    return model(x.detach().requires_grad_(True))


def plain_and_walk(model: nn.Module, x: Tensor) -> int:
    """:func:`plain`, then every node of its autograd graph visited once, reading :data:`SAVED_TENSORS`.
    Returns the number of nodes."""
    output = plain(model, x)
    seen, pending = set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in SAVED_TENSORS.get(type(node).__name__, ()):
            getattr(node, name)
        pending.extend(child for child, _ in node.next_functions)
    return len(seen)


def traced(model: nn.Module, x: Tensor, composite: Composite) -> Tensor:
    """Our forward of ``model`` on ``x`` under ``composite``, up to the explained logits."""
    trace = Trace(model, composite)
    with trace:
        output = model(x.detach().requires_grad_(True))
    return trace.output_logits(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50", help="paper, vgg16 or resnet50 (default: resnet50)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--composite", default="epsilon")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="toy versions of the models (a smoke test)")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    model, x = build(options.model, options.batch, quick=options.quick)
    composite = resolve_composite(options.composite, **_composite_params(options.composite, x))
    runs: dict[str, Callable[[], object]] = {
        "plain": lambda: plain(model, x),
        "plain + walk": lambda: plain_and_walk(model, x),
        "traced": lambda: traced(model, x, composite),
    }
    medians = {name: statistics.median(times) for name, times in timed_rounds(runs, options.repeats).items()}
    base = medians["plain"]
    print(f"{options.model} batch {options.batch}, {options.composite}, {options.repeats} rounds, "
          f"{plain_and_walk(model, x)} autograd nodes: "
          + ", ".join(f"{name} {seconds * 1000:.1f} ms ({seconds / base:.2f}×)" for name, seconds in medians.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
