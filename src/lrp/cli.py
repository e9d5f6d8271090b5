"""The ``lrp`` command. Subcommands live in :mod:`lrp.commands`, one module each."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import SUBCOMMANDS
from .errors import LRPError
from .hugepages import enable_huge_pages

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``lrp`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lrp", description="Layer-wise Relevance Propagation for PyTorch models, "
                                                             "and the region-by-region analysis of 3D MRI classifiers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lrp`` command; returns the exit status (2 for bad input, with the reason). Large CPU
    tensors go on huge pages unless ``THP_MEM_ALLOC_ENABLE`` says otherwise (see :mod:`lrp.hugepages`), except
    in ``lrp bench`` without ``--huge-pages``."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if getattr(options, "huge_pages", True):
        enable_huge_pages()  # before the subcommand makes its first tensor
    if not hasattr(options, "handler"):
        parser.print_help()
        return 2
    try:
        return options.handler(options)
    except LRPError as error:
        print(f"lrp: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
