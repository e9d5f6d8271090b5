"""The ``lrp`` command. Each subcommand is a module-level ``_add_<name>`` that registers its parser
and sets ``handler``; add new subcommands to ``SUBCOMMANDS``."""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

from . import __version__

__all__ = ["main", "build_parser"]


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    from . import benchmark

    parser = subparsers.add_parser(
        "bench", help="time and measure the memory of LRP composites vs gradient×input and zennit",
        description="Benchmark the LRP engine: median wall time and extra peak memory of our composites and "
                    "zennit's equivalents, as ratios to gradient×input, on the paper's 3D CNN (one "
                    "1×193×229×193 volume), VGG-16 and ResNet-50 (224×224). Each configuration runs in its "
                    "own process with OMP_WAIT_POLICY=PASSIVE. Output: a markdown report on stdout "
                    "(progress on stderr), also written to --output. Exit status 1 if a configuration failed.",
    )
    benchmark.add_arguments(parser)
    parser.set_defaults(handler=benchmark.main_from_args)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_bench,)


def build_parser() -> argparse.ArgumentParser:
    """The ``lrp`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lrp", description="Layer-wise Relevance Propagation for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrp`` command; returns the exit status."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if not hasattr(options, "handler"):
        parser.print_help()
        return 2
    return options.handler(options)


if __name__ == "__main__":
    raise SystemExit(main())
