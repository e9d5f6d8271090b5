"""benchmarks/forward_paths.py (our traced forward against a plain one and a walk of autograd's graph) runs end to
end, and its walk visits every node of the graph once."""
import re

import torch
from torch import nn

from conftest import benchmark_module, run_benchmark


def test_forward_paths_prints_the_three_forwards():
    done = run_benchmark("forward_paths.py", "--model", "resnet50", "--quick", "--repeats", "1", "--threads", "1")
    assert done.returncode == 0, done.stderr
    pattern = (r"^resnet50 batch 1, epsilon, 1 rounds, \d+ autograd nodes: plain [\d.]+ ms \(1\.00×\), "
               r"plain \+ walk [\d.]+ ms \([\d.]+×\), traced [\d.]+ ms \([\d.]+×\)$")
    assert re.match(pattern, done.stdout.strip()), done.stdout


def test_the_walk_visits_each_autograd_node_once():
    plain_and_walk = benchmark_module("forward_paths").plain_and_walk
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # addmm (the dense layer), view (flatten), ReLU, batch norm, convolution and the input's AccumulateGrad; the
    # frozen parameters record no node
    assert plain_and_walk(model, torch.randn(1, 2, 4, 4)) == 6
