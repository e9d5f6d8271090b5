"""The ``lrp`` command line and the benchmark report (no timing assertions)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrp
from lrp import benchmark, hugepages
from lrp.benchmark import (
    BASELINE,
    Measurement,
    live_peak_mib,
    markdown_table,
    methods_for,
    report,
    round_ratios,
    worker_environment,
)
from lrp.cli import main

COLUMNS = ["model", "input", "method", "median time (s)", "time ÷ g×i", "per round ÷ g×i", "median CPU (s)",
           "CPU ÷ g×i", "extra peak memory (MiB)", "memory ÷ g×i", "live tensor peak (MiB)", "live ÷ g×i",
           "ΣR / logit", "runs"]


def _header_cells(table: str) -> list[str]:
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    return [cell.strip() for cell in header.strip("|").split("|")]


def test_help_lists_bench(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "bench" in capsys.readouterr().out


def test_console_script_version():
    script = Path(sys.executable).with_name("lrp")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lrp.cli"]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert done.stdout.strip() == f"lrp {lrp.__version__}"


def test_bench_help_documents_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--models", "--batch", "--repeats", "--methods", "--quick", "--output", "--threads",
                   "--channels-last"):
        assert option in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--batch", "0"], "--batch: expected a positive integer, got '0'"),
    (["bench", "--batch", "1,x"], "--batch: expected a positive integer, got 'x'"),
    (["bench", "--repeats", "-2"], "--repeats: expected a positive integer"),
    (["bench", "--threads", "two"], "--threads: expected a positive integer"),
    (["bench", "--models", "paper,alexnet"], "unknown model 'alexnet'; choose from paper, vgg16, resnet50"),
    (["bench", "--methods", "epsilon,lrp-magic"], "unknown composite 'lrp-magic'"),
    (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["benchmark"], "invalid choice: 'benchmark'"),
])
def test_bad_options_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_methods_pair_each_composite_with_zennit():
    assert methods_for(["epsilon", "zero"], zennit=True) == [BASELINE, "lrp:epsilon", "zennit:epsilon", "lrp:zero"]
    assert methods_for(["epsilon"], zennit=False) == [BASELINE, "lrp:epsilon"]


def test_workers_wait_passively_with_the_chosen_threads():
    env = worker_environment(3)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "3"


def _spec(**fields) -> str:
    spec = {"model": "resnet50", "batch": 1, "repeats": 1, "threads": torch.get_num_threads(), "quick": True,
            "channels_last": False}
    return json.dumps({**spec, **fields})


@pytest.mark.parametrize("model, memory_format", [("resnet50", torch.channels_last),
                                                   ("paper", torch.channels_last_3d)])
def test_bench_channels_last_gives_every_method_a_channels_last_input(monkeypatch, model, memory_format):
    formats = []

    def method(net, x, target):
        formats.append(x.is_contiguous(memory_format=memory_format))  # one channel (paper): both formats
        return benchmark._gradient_x_input(net, x, target)
    monkeypatch.setattr(benchmark, "_method", lambda name: method)
    benchmark._timing_worker(_spec(model=model, batch=2, channels_last=True, methods=[BASELINE]))
    benchmark._memory_worker(_spec(model=model, batch=2, channels_last=True, method=BASELINE))
    assert len(formats) > benchmark.WARMUP_MIN_RUNS * 2 and all(formats)
    options = argparse.Namespace(threads=2, quick=True, channels_last=True)
    assert "inputs in channels_last memory format" in report([], options, elapsed=1.0).splitlines()[2]


@pytest.mark.parametrize("quick", [True, False])
def test_fast_configurations_get_more_timed_rounds_within_the_budget(monkeypatch, quick):
    """Beyond the --repeats minimum, rounds continue for TIMED_SECONDS per method (up to TIMED_MAX_RUNS); not with
    --quick. Every method runs once per round."""
    quick_build = benchmark.build
    monkeypatch.setattr(benchmark, "build", lambda model, batch, _: quick_build(model, batch, True))
    timings = benchmark._timing_worker(_spec(repeats=2, quick=quick, methods=[BASELINE, "lrp:epsilon"]))
    runs = {len(timing["times"]) for timing in timings.values()}
    assert len(runs) == 1 and all(len(timing["cpu_times"]) in runs for timing in timings.values())
    assert runs == {2} if quick else 2 < runs.pop() <= benchmark.TIMED_MAX_RUNS


def test_timed_rounds_take_the_methods_in_turn_and_go_on_without_a_failing_one(monkeypatch):
    calls = []

    def method(name):
        def run(net, x, target):
            calls.append(name)
            if name == "broken" or (name == "late" and calls.count("late") > benchmark.WARMUP_MAX_RUNS + 1):
                raise RuntimeError(f"{name}: no rule for this layer\nsecond line")
        return run
    monkeypatch.setattr(benchmark, "_method", method)
    timings = benchmark._timing_worker(_spec(repeats=3, methods=["a", "broken", "b", "late", "c"]))
    # after the warm-up runs, three rounds, each starting one method later; "late" fails in the second
    assert calls[-11:] == ["a", "b", "late", "c", "b", "late", "c", "a", "c", "a", "b"]
    assert timings["broken"] == {"times": [], "cpu_times": [], "error": "RuntimeError: broken: no rule for this layer"}
    assert timings["late"]["error"] == "RuntimeError: late: no rule for this layer"
    assert all(len(timings[name]["times"]) == 3 and not timings[name]["error"] for name in "abc")


def test_a_method_that_fails_its_timing_is_reported_and_not_measured_again(monkeypatch):
    workers = []

    def run_worker(worker, spec, timeout):
        workers.append((worker, spec.get("method")))
        if worker == "times":
            return {"gradient×input": {"times": [1.0], "cpu_times": [1.0], "error": ""},
                    "lrp:zero": {"times": [], "cpu_times": [], "error": "NonFiniteError: relevance became NaN"}}, ""
        return {"base_mib": 1.0, "peak_mib": 3.0, "sum_ratio": 1.0, "live_mib": 2.0, "note": ""}, ""
    monkeypatch.setattr(benchmark, "_run_worker", run_worker)
    results = benchmark.measure("vgg16", 1, [BASELINE, "lrp:zero"], repeats=1, threads=1, quick=True)
    assert workers == [("times", None), ("memory", BASELINE)]
    assert results[0].median == 1.0 and results[0].extra_mib == 2.0 and not results[0].error
    assert results[1].error == "NonFiniteError: relevance became NaN" and results[1].extra_mib is None


def test_workers_inherit_allocator_settings_and_the_report_names_them(monkeypatch):
    monkeypatch.delenv(hugepages.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "67108864")
    assert worker_environment(2)["MALLOC_MMAP_THRESHOLD_"] == "67108864"
    header = report([], argparse.Namespace(threads=2, quick=True), elapsed=1.0).splitlines()[2]
    assert "OMP_WAIT_POLICY=PASSIVE, MALLOC_MMAP_THRESHOLD_=67108864;" in header
    monkeypatch.setenv(hugepages.ENVIRONMENT_VARIABLE, "1")
    assert worker_environment(2)[hugepages.ENVIRONMENT_VARIABLE] == "1"
    header = report([], argparse.Namespace(threads=2, quick=True), elapsed=1.0).splitlines()[2]
    assert (f"MALLOC_MMAP_THRESHOLD_=67108864, THP_MEM_ALLOC_ENABLE=1 (kernel transparent huge pages: "
            f"{hugepages.kernel_mode() or 'none'});") in header


def test_table_ratios_are_relative_to_gradient_times_input():
    results = [
        Measurement("vgg16", 8, BASELINE, times=[2.0, 1.0, 3.0], cpu_times=[4.0, 4.0, 4.0], base_mib=100.0,
                    peak_mib=150.0, live_mib=40.0, sum_ratio=1.0),
        Measurement("vgg16", 8, "lrp:epsilon", times=[2.5, 2.5, 9.0], cpu_times=[1.0, 3.0, 2.0], base_mib=100.0,
                    peak_mib=200.0, live_mib=50.0, sum_ratio=0.5),
        Measurement("vgg16", 1, "lrp:epsilon", error="worker exited with status 9"),
    ]
    table = markdown_table(results)
    assert _header_cells(table) == COLUMNS
    rows = {line.split("|")[3].strip() + line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines()[2:]}
    baseline = rows[BASELINE + "8×3×224×224"]
    assert baseline[3:14] == ["2.000", "1.00", "1.00 [1.00–1.00]", "4.000", "1.00", "50.0", "1.00", "40.0", "1.00",
                              "1", "3"]
    ours = rows["lrp:epsilon8×3×224×224"]  # per round 1.25, 2.5, 3: median 2.5 where the medians' ratio is 1.25
    assert ours[3:14] == ["2.500", "1.25", "2.50 [1.88–2.75]", "2.000", "0.50", "100.0", "2.00", "50.0", "1.25",
                          "0.5", "3"]
    assert "failed: worker exited with status 9" in rows["lrp:epsilon1×3×224×224"][3]
    assert all(len(row) == len(COLUMNS) for row in rows.values())


def test_round_ratios_pair_runs_of_the_same_round():
    """Run i of a method over run i of the baseline; a method that stopped early (failed) pairs its rounds only."""
    assert round_ratios([3.0, 4.0, 10.0, 2.0, 6.0], [1.0, 2.0, 2.0, 1.0, 3.0]) == (2.0, 2.0, 3.0)  # 3 2 5 2 2
    assert round_ratios([3.0, 9.0], [1.0, 2.0, 4.0]) == (3.75, 3.375, 4.125)  # 3 and 4.5; the third round unpaired
    assert round_ratios([5.0], [2.0]) == (2.5, 2.5, 2.5)
    assert round_ratios([], [1.0]) is None


def test_live_peak_counts_tensors_held_at_once():
    """4 MiB buffers: two alive together peak at 8 MiB, one freed before the next at 4 MiB."""
    mib = 2**20 // 4  # float32 elements per MiB

    def together():
        a, b = torch.ones(4 * mib), torch.ones(4 * mib)
        return float(a[0] + b[0])

    def one_after_another():
        total = 0.0
        for _ in range(3):
            total += float(torch.ones(4 * mib)[0])
        return total

    assert live_peak_mib(together) == pytest.approx(8.0, abs=0.1)
    assert live_peak_mib(one_after_another) == pytest.approx(4.0, abs=0.1)


class _TemporaryInBackward(torch.autograd.Function):
    """Identity whose backward holds a 16 MiB temporary (as an LRP rule does)."""

    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, grad):
        temporary = torch.ones(4 * grad.numel())
        return grad * temporary[:grad.numel()]


def test_live_peak_sees_temporaries_of_a_custom_backward():
    """x (4 MiB) + the 16 MiB temporary + the gradient (4 MiB) are alive together inside the backward."""
    def run():
        x = torch.ones(2**20, requires_grad=True)
        return torch.autograd.grad(_TemporaryInBackward.apply(x).sum(), x)

    assert live_peak_mib(run) == pytest.approx(24.0, abs=0.1)


def test_bench_quick_runs_and_prints_the_table(tmp_path, capsys):
    output = tmp_path / "table.md"
    status = main(["bench", "--quick", "--models", "paper", "--methods", "epsilon", "--threads", "1",
                   "--output", str(output)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert _header_cells(captured.out) == COLUMNS
    rows = [line for line in captured.out.splitlines() if line.startswith("| paper")]
    assert [row.split("|")[3].strip() for row in rows] == [BASELINE, "lrp:epsilon", "zennit:epsilon"]
    assert all("failed" not in row for row in rows)
    assert "1×1×24×28×24" in rows[0]
    assert "[3/3] paper batch 1 zennit:epsilon" in captured.err
    assert output.read_text().strip() == captured.out.strip()
