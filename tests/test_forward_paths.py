"""benchmarks/forward_paths.py (our traced forward against a plain one and a walk of autograd's graph) runs end to
end, and its walk visits every node of the graph once."""
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def test_forward_paths_prints_the_three_forwards():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "forward_paths.py"), "--model", "resnet50", "--quick", "--repeats",
         "1", "--threads", "1"],
        check=False, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    pattern = (r"^resnet50 batch 1, epsilon, 1 rounds, \d+ autograd nodes: plain [\d.]+ ms \(1\.00×\), "
               r"plain \+ walk [\d.]+ ms \([\d.]+×\), traced [\d.]+ ms \([\d.]+×\)$")
    assert re.match(pattern, done.stdout.strip()), done.stdout


def test_the_walk_visits_each_autograd_node_once():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from forward_paths import plain_and_walk
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    # addmm (the dense layer), view (flatten), ReLU, batch norm, convolution and the input's AccumulateGrad; the
    # frozen parameters record no node
    assert plain_and_walk(model, torch.randn(1, 2, 4, 4)) == 6
