"""Engine benchmark (the same as ``lrp bench``): LRP composites vs gradient×input and zennit.

    python benchmarks/engine.py [--models paper,vgg16,resnet50] [--batch 1,8] [--repeats N]
                                [--methods epsilon,...] [--threads 2] [--quick] [--output table.md]

OMP_WAIT_POLICY=PASSIVE is set before torch is imported: on a shared 2-core machine OpenMP's
default busy-waiting threads would steal the cores from other processes and make timings noisy.
The workers, one process per configuration, get it (and the thread count) in their environment.
The implementation is ``lrp.benchmark``.
"""
import os
import sys

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from lrp.cli import main  # noqa: E402  (torch is imported after the environment is set)

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
