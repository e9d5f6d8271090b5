"""The device check (benchmarks/device_check.py), which a session with a GPU runs: it works end to end here
with the CPU standing in for the device, and its verdicts fail where they should."""
import pytest
import torch

from conftest import benchmark_module


@pytest.fixture(scope="module")
def device_check():
    return benchmark_module("device_check")  # in sys.modules, where its dataclass looks its module up


def test_cpu_as_the_device_passes_and_reports_every_model(device_check, tmp_path, capsys):
    output = tmp_path / "report.md"
    assert device_check.main(["--device", "cpu", "--quick", "--output", str(output)]) == 0
    report = output.read_text()
    assert "checks passed" in report and "FAILED" not in report
    for name in device_check.MODELS:
        assert f"| {name} epsilon-gamma-box float64 |" in report
        assert f"| {name} integrated gradients |" in report
        speed = report.split("## Speed and memory")[1]
        assert f"| {name} | " in speed
        assert all(f" | {method} | " in speed for method in ("epsilon-gamma-box", "zennit epsilon-gamma-box"))
    assert "| vgg16 epsilon-alpha2-beta1 channels_last |" in report


def test_no_zennit_leaves_its_rows_out(device_check, tmp_path):
    output = tmp_path / "report.md"
    device_check.main(["--device", "cpu", "--quick", "--no-zennit", "--output", str(output)])
    speed = output.read_text().split("## Speed and memory")[1]
    assert "| epsilon-gamma-box |" in speed and "zennit" not in speed


def test_checks_fail_above_the_limit_on_non_finite_values_and_unmet_requirements(device_check):
    checks = device_check.Checks()
    reference = torch.tensor([1.0, -2.0], dtype=torch.float64)
    checks.error("close", reference + 1e-10, reference, 1e-8)
    checks.error("far", reference + 1e-3, reference, 1e-8)
    checks.error("not finite", torch.tensor([float("nan"), 0.0]), reference, None)
    checks.require("unmet", False)
    assert checks.failed == ["far", "not finite", "unmet"]
    assert checks.markdown().count("FAILED") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(device_check, capsys):
    assert device_check.main(["--device", "cuda"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
