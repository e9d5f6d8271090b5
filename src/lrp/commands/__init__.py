"""The subcommands of ``lrp``: each module registers its parser with ``register(subparsers)`` and sets
``handler`` (options -> exit status). Heavy imports happen inside the handlers, so ``lrp --help`` is fast."""
from . import bench, demo, explain, regions, report, split, study, train

__all__ = ["SUBCOMMANDS"]

SUBCOMMANDS = (demo.register, explain.register, study.register, regions.register, split.register, train.register,
               report.register, bench.register)
"""Registration functions, in the order ``lrp --help`` lists the commands."""
