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
