"""Huge pages for large CPU tensors (lrp.hugepages): the kernel setting, the probe, and that the switch works
only before a process's first tensor (each case in a fresh process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrp import benchmark, hugepages
from lrp.cli import main

SOURCE = str(Path(__file__).resolve().parent.parent / "src")


@pytest.mark.parametrize(("text", "mode"), [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                            ("always madvise [never]", "never"), ("", None)])
def test_kernel_mode_reads_the_bracketed_choice(tmp_path, monkeypatch, text, mode):
    setting = tmp_path / "enabled"
    setting.write_text(text)
    monkeypatch.setattr(hugepages, "_KERNEL_SETTING", setting)
    assert hugepages.kernel_mode() == mode


def test_kernel_mode_without_the_setting_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(hugepages, "_KERNEL_SETTING", tmp_path / "missing")
    assert hugepages.kernel_mode() is None
    assert not hugepages.huge_pages_active()  # nothing to grant them


def _in_fresh_process(code: str, setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != hugepages.ENVIRONMENT_VARIABLE}
    if setting is not None:
        env[hugepages.ENVIRONMENT_VARIABLE] = setting
    env["PYTHONPATH"] = SOURCE + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


ENABLE = """
import json, os, torch
from lrp import hugepages
{before}
active = hugepages.enable_huge_pages()
probe = torch.empty(8 * 2**20, dtype=torch.uint8)
print(json.dumps({{"active": active, "setting": os.environ.get(hugepages.ENVIRONMENT_VARIABLE),
                   "page_aligned": probe.data_ptr() % 4096 == 0, "mode": hugepages.kernel_mode()}}))
"""


def test_enable_before_the_first_tensor_puts_large_tensors_on_huge_pages():
    result = _in_fresh_process(ENABLE.format(before=""), None)
    assert result["setting"] == "1"
    granted = result["mode"] in ("always", "madvise")
    assert result["active"] is granted
    assert result["page_aligned"]  # PyTorch aligns for huge pages whatever the kernel grants


def test_an_explicit_setting_stands():
    result = _in_fresh_process(ENABLE.format(before=""), "0")
    assert result == {**result, "setting": "0", "active": False, "page_aligned": False}


def test_enable_after_a_tensor_is_too_late_and_says_so():
    result = _in_fresh_process(ENABLE.format(before="torch.ones(3)"), None)
    assert result["setting"] == "1"
    assert result["active"] is False and result["page_aligned"] is False


def test_the_lrp_command_switches_huge_pages_on_unless_set(monkeypatch):
    monkeypatch.delenv(hugepages.ENVIRONMENT_VARIABLE, raising=False)
    assert main([]) == 2  # no subcommand: help
    assert os.environ[hugepages.ENVIRONMENT_VARIABLE] == "1"
    monkeypatch.setenv(hugepages.ENVIRONMENT_VARIABLE, "0")
    main([])
    assert os.environ[hugepages.ENVIRONMENT_VARIABLE] == "0"


def test_lrp_bench_keeps_the_allocator_unless_asked(monkeypatch):
    monkeypatch.setattr(benchmark, "main_from_args", lambda options: 0)
    monkeypatch.delenv(hugepages.ENVIRONMENT_VARIABLE, raising=False)
    assert main(["bench"]) == 0
    assert hugepages.ENVIRONMENT_VARIABLE not in os.environ
    assert main(["bench", "--huge-pages"]) == 0
    assert os.environ[hugepages.ENVIRONMENT_VARIABLE] == "1"
