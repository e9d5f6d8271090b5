"""benchmarks/engine_ab.py (the A/B of two engine versions) runs end to end on toy models."""
import re
from pathlib import Path

import pytest

from conftest import benchmark_module, run_benchmark

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history")
def test_engine_ab_times_a_commit_against_the_working_tree():
    done = run_benchmark("engine_ab.py", "HEAD", "--model", "paper", "--quick", "--repeats", "1", "--threads", "1",
                         "--composites", "epsilon,alpha1-beta0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["paper batch 1 epsilon", "paper batch 1 alpha1-beta0"]
    pattern = r"gradient×input \d+ ms, old \d+\.\d\d×, new \d+\.\d\d× \(relevance differs by \S+ of its maximum\)"
    assert all(re.search(pattern, line) for line in lines), lines


def test_timed_rounds_start_each_round_one_callable_later():
    """The order rotates from round to round, so that no version always runs right after the other."""
    timed_rounds = benchmark_module("engine_ab").timed_rounds
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("gradient", "old", "new")}
    times = timed_rounds(runs, 4)
    assert "".join(name[0] for name in calls) == "gon" * 2 + "gon" + "ong" + "ngo" + "gon"
    assert {name: len(values) for name, values in times.items()} == {"gradient": 4, "old": 4, "new": 4}


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history")
def test_engine_ab_times_the_narrow_resnet50():
    done = run_benchmark("engine_ab.py", "HEAD", "--narrow", "--repeats", "1", "--threads", "1",
                         "--composites", "epsilon-gamma-box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("resnet50-narrow batch 1 epsilon-gamma-box: gradient×input"), done.stdout


def test_narrow_resnet50_has_every_layer_of_the_full_model():
    """Only the widths differ: the same modules in the same order, so the same ops per explanation."""
    from lrp.benchmark import ResNet50

    model, x = benchmark_module("engine_ab").narrow_resnet50(2)
    kinds = [type(module).__name__ for module in model.modules()]
    assert kinds == [type(module).__name__ for module in ResNet50().modules()]
    assert kinds.count("Conv2d") == 53 and model.conv1.out_channels == 4
    assert x.shape == (2, 3, 32, 32)
    assert not model.training and not any(parameter.requires_grad for parameter in model.parameters())
