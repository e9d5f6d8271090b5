"""``lrp demo``: a synthetic Alzheimer's cohort from a real brain, trained, explained and reported."""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="synthetic AD cohort from Colin27 + AAL: generate, train, explain, "
                                                "report (not yet available)")
    parser.set_defaults(handler=run)


def run(options: argparse.Namespace) -> int:
    raise SystemExit("lrp demo: not available yet")
