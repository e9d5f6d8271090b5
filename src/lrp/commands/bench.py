"""``lrp bench``: the engine benchmark (see :mod:`lrp.benchmark`)."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from .. import benchmark

    parser = subparsers.add_parser(
        "bench", help="time and measure the memory of LRP composites vs gradient×input and zennit",
        description="Benchmark the LRP engine: median wall time, extra peak resident memory and live tensor "
                    "peak of our composites and zennit's equivalents, as ratios to gradient×input, on the "
                    "paper's 3D CNN (one "
                    "1×193×229×193 volume), VGG-16 and ResNet-50 (224×224). Per model and batch one process "
                    "times the methods in turn, and each method's memory is measured in a process of its "
                    "own, all with OMP_WAIT_POLICY=PASSIVE. Output: a markdown report on stdout (progress "
                    "on stderr), also written to --output. Exit status 1 if a configuration failed.",
    )
    benchmark.add_arguments(parser)
    parser.set_defaults(handler=benchmark.main_from_args)
