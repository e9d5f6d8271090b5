"""The digits example (examples/digits.py) runs, draws its figure, and LRP beats a random ordering."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.py"


@pytest.fixture(scope="module")
def digits():
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lrp_aopc_beats_random_order_and_figure_is_written(digits, tmp_path):
    figure = tmp_path / "digits.png"
    accuracy, table = digits.run(out=figure, epochs=6, explained=60, shown=2, seed=0, progress=False)
    assert accuracy > 0.9
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(table.index) == set(digits.EXPLAINERS)
    for method in ("LRP ε", "LRP α1β0", "LRP ε-γ-box"):
        assert table.loc[method, "aopc_morf"] > table.loc[method, "aopc_random"] > table.loc[method, "aopc_lerf"]
