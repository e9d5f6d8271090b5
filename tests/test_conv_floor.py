"""benchmarks/conv_floor.py (how much of each composite's time its layer kernels take) runs end to end, and its
kernel share counts the layer kernels and nothing else."""
import re

import torch

from conftest import benchmark_module, run_benchmark


def test_conv_floor_prints_one_row_per_composite():
    done = run_benchmark("conv_floor.py", "--model", "paper", "--quick", "--repeats", "1", "--profiled", "1",
                         "--threads", "1", "--composites", "epsilon,alpha1-beta0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.match(r"paper batch 1, 1 threads, 1 rounds, 1 profiled calls each; gradient×input \d+ ms, of which "
                    r"layer kernels \d\.\d\d$", lines[0]), lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["epsilon", "alpha1-beta0"]
    for name, time_ratio, kernels, rest, target, left in rows:
        assert abs(float(time_ratio) - float(kernels) - float(rest)) <= 0.011
        assert 0 < float(kernels) <= float(time_ratio)
        assert abs(float(target) - float(kernels) - float(left)) <= 0.011
    assert [row[4] for row in rows] == ["1.2", "1.6"]


def test_kernel_share_counts_matrix_products_and_not_element_wise_ops():
    kernel_share = benchmark_module("conv_floor").kernel_share
    a = torch.randn(256, 256)
    assert kernel_share(lambda: (a + 1).exp_().mul_(2), 1) == 0.0
    assert kernel_share(lambda: [torch.mm(a, a) for _ in range(20)], 1) > 0.5
