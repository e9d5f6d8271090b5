"""benchmarks/engine_ab.py (the A/B of two engine versions) runs end to end on toy models."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history")
def test_engine_ab_times_a_commit_against_the_working_tree():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine_ab.py"), "HEAD", "--model", "paper", "--quick",
         "--repeats", "1", "--threads", "1", "--composites", "epsilon,alpha1-beta0"],
        check=False, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["paper batch 1 epsilon", "paper batch 1 alpha1-beta0"]
    pattern = r"gradient×input \d+ ms, old \d+\.\d\d×, new \d+\.\d\d× \(relevance differs by \S+ of its maximum\)"
    assert all(re.search(pattern, line) for line in lines), lines
