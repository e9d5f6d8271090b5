"""A producer whose output feeds only a ReLU takes the ReLU's output in place of its own where every op that
takes the ReLU's output gives relevance in proportion to it (ε divides by ``relu(z) + ε``, γ skips its split
by the sign of z, α2β1 reads its negative denominator from it), and the layers after the ReLU keep its output
instead of its input where nothing else needs that (``Trace.rectify``). These tests check where that
happens, that it gives the same numbers, and that it does not happen where relevance can reach the ReLU's
zeros (a Flat or ZBox layer after it, a target tensor on a ReLU output, z used twice, a ReLU output shifted,
a BatchNorm unfolded after the ReLU ran, α2β1 or γ, which read z, before a Flat layer)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import never_rectified
from torch import nn

import lrp
from lrp import interception, rules
from lrp.composites import Weighted
from lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, ZBox

DT = torch.float64


@pytest.fixture
def rectified_divisions(monkeypatch) -> list[int]:
    """Counts the rectified divisions of the next explanations (one list entry each)."""
    calls: list[int] = []
    original = rules.divide_rectified

    def counting(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(rules, "divide_rectified", counting)  # sums too divide through their rule
    return calls


def _randomised(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model = model.double().eval()
    with torch.no_grad():
        model(x)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            elif hasattr(module, "bias") and isinstance(module.bias, torch.Tensor):
                module.bias.uniform_(-0.3, 0.3)
    return model


class Block(nn.Module):
    """A residual block: both convolutions and the sum feed a ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


def _residual() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Block(4), Block(4),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return _randomised(model, x), x


@pytest.mark.parametrize(("composite", "expected"), [("epsilon", 5), ("alpha1-beta0", 2), ("epsilon-plus", 2)])
def test_residual_network_divides_by_relu_outputs_with_the_same_numbers(
        rectified_divisions: list[int], composite: str, expected: int) -> None:
    model, x = _residual()
    relevance = lrp.explain(model, x, composite=composite).relevance
    # ε: the stem, each block's first convolution and both sums; α1β0 / ε+: the two sums (Norm)
    assert len(rectified_divisions) == expected
    torch.testing.assert_close(relevance, never_rectified(model, x, composite=composite), rtol=0, atol=0)


@pytest.mark.parametrize("composite", ["alpha1-beta0", "epsilon-plus", "alpha2-beta1", "epsilon-alpha2-beta1"])
def test_layers_after_a_relu_keep_its_output_where_nothing_else_needs_its_input(monkeypatch, composite: str) -> None:
    """z⁺ (α1β0) never reads its output z, and α2β1 and the sums' Norm rule read the ReLU's output instead
    after rectification: so the layers after each ReLU keep its output instead of making it again from z. The
    forward's one ReLU call out of place is the stem's (the blocks' four run in place, see Trace.relu_in_place);
    without rectification, the layer after the stem makes its output again."""
    model, x = _residual()
    calls: list[str] = []
    original = lrp.handlers._call_out_of_place
    monkeypatch.setattr(lrp.handlers, "_call_out_of_place",
                        lambda *a: (calls.append(a[1]) if "relu" in a[1] else None) or original(*a))
    relevance = lrp.explain(model, x, composite=composite).relevance
    assert len(calls) == 1
    calls.clear()
    torch.testing.assert_close(relevance, never_rectified(model, x, composite=composite), rtol=0, atol=0)
    assert len(calls) > 1  # made again for the layer after it


def test_rectified_gamma_layers_skip_the_split_by_sign(monkeypatch) -> None:
    """γ on each block's first convolution takes the ReLU's output in place of its own (every op after that
    ReLU is proportional), so it needs no split of its relevance by the sign of z: 2 splits (each block's
    second convolution, which feeds a sum) instead of 4, the same numbers up to rounding (a rectified γ layer
    takes its denominator from one layer call with leaky_relu(W), not from z). The stem (ZBox) is not γ."""
    model, x = _residual()
    splits: list[int] = []
    original = rules.where_positive
    monkeypatch.setattr(rules, "where_positive", lambda *a: splits.append(1) or original(*a))
    composite = lrp.composites.resolve_composite("epsilon-gamma-box", low=-3.0, high=3.0)
    relevance = lrp.explain(model, x, composite=composite).relevance
    assert len(splits) == 2
    splits.clear()
    torch.testing.assert_close(relevance, never_rectified(model, x, composite=composite), rtol=1e-12, atol=1e-18)
    assert len(splits) == 4


def test_a_relu_output_the_model_still_holds_is_decided_after_the_forward(rectified_divisions: list[int]) -> None:
    class Holding(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(5, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.held = self.first(x)  # z outlives the ReLU's output: decided after the forward
            return self.second(F.relu(self.held))

    torch.manual_seed(1)
    model, x = Holding().double(), torch.randn(4, 5, dtype=DT)
    relevance = lrp.explain(model, x).relevance
    assert len(rectified_divisions) == 1
    torch.testing.assert_close(relevance, never_rectified(model, x), rtol=0, atol=0)


def _chain(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), *layers).double()


class WithAside(nn.Module):
    """Returns a ReLU's output, which an ε layer also took (its result put aside)."""

    def __init__(self):
        super().__init__()
        self.first, self.aside = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.first(x))
        self.put_aside = self.aside(y)
        return y


class TwiceUsed(nn.Module):
    """z feeds the ReLU and a sum; or the ReLU's output is also shifted by a constant; or z comes from a
    BatchNorm whose input is used again after it (so it is not folded, though it looked foldable)."""

    def __init__(self, second_use: str):
        super().__init__()
        self.first, self.second, self.third = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.norm = nn.BatchNorm1d(8)
        self.second_use = second_use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.first(x)
        z = self.norm(c)
        y = F.relu(z)
        if self.second_use == "z in a sum":
            other = z
        elif self.second_use == "shifted":
            other = y + 1.0
        else:
            other = c
        return self.third(self.second(y) + other)


@pytest.mark.parametrize(("case", "composite", "target"), [
    ("flat layer after the relu", lrp.Composite(by_type={Weighted: Epsilon()}, by_name={"2": Flat()}), None),
    ("zbox layer after the relu", lrp.Composite(by_type={Weighted: Epsilon()}, by_name={"2": ZBox(-1.0, 1.0)}),
     None),
    ("relu output returned, relevance given as a tensor", "epsilon", torch.ones(5, 8, dtype=DT)),
    ("z in a sum", "epsilon", None),
    ("relu output shifted by a constant", "epsilon", None),
    ("batch norm input used again", "epsilon", None),
    ("alpha2-beta1 layer before a flat layer",  # after a ReLU: the non-negative case, which reads z
     lrp.Composite(by_type={Weighted: Epsilon()},
                   by_name={"0": ZBox(-3.0, 3.0), "2": AlphaBeta(2.0, 1.0), "4": Flat()}), None),
    ("gamma layer before a flat layer",
     lrp.Composite(by_type={Weighted: Epsilon()}, by_name={"0": Gamma(0.25), "2": Flat()}), None),
])
def test_no_rectified_division_where_relevance_reaches_the_relus_zeros(
        rectified_divisions: list[int], case: str, composite, target) -> None:
    """Each case gives some relevance to the ReLU's zeros, so that dividing it by ``relu(z) + ε`` there
    instead of by ``stab(z)`` (or giving α2β1 / γ, which read z, the ReLU's output in its place) would change
    the result: it must stay as without rectification."""
    models = {"flat layer after the relu": lambda: _chain(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3)),
              "zbox layer after the relu": lambda: _chain(nn.Linear(8, 3)),
              "relu output returned, relevance given as a tensor": lambda: WithAside().double(),
              "z in a sum": lambda: TwiceUsed("z in a sum").double(),
              "relu output shifted by a constant": lambda: TwiceUsed("shifted").double(),
              "batch norm input used again": lambda: TwiceUsed("unfolded").double(),
              "alpha2-beta1 layer before a flat layer": lambda: _chain(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4),
                                                                       nn.ReLU(), nn.Linear(4, 3)),
              "gamma layer before a flat layer": lambda: _chain(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))}
    torch.manual_seed(3)
    x = torch.randn(5, 6, dtype=DT)
    model = _randomised(models[case](), x)
    first = next(module for module in model.modules() if isinstance(module, nn.Linear))
    with torch.no_grad():
        first.bias.sub_(0.5)  # many zeros after the ReLU
    relevance = lrp.explain(model, x, target=target, composite=composite).relevance
    assert not rectified_divisions
    assert bool((F.relu(first(x)) == 0).any())  # (before the BatchNorm: zeros are likely after it too)
    torch.testing.assert_close(relevance, never_rectified(model, x, target=target, composite=composite),
                               rtol=0, atol=0)


def test_rectified_layers_hold_no_more_memory() -> None:
    """A rectified producer and the layer after the ReLU keep the ReLU's output in place of z, which is
    freed: the live tensor peak is at most that without rectification (where x is freed instead)."""
    from lrp.benchmark import live_peak_mib

    torch.manual_seed(4)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                                         nn.ReLU())], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2)).eval()
    x = torch.randn(1, 8, 128, 128)
    rectified = live_peak_mib(lambda: lrp.explain(model, x))
    unrectified = live_peak_mib(lambda: never_rectified(model, x))
    assert rectified <= unrectified + 0.01


# -- ReLUs run in place ------------------------------------------------------------------------------
@pytest.fixture
def in_place_relus(monkeypatch) -> list[int]:
    """Counts the ReLUs that the next explanations run in place (``Trace.relu_in_place``)."""
    calls: list[int] = []
    original = interception.ReLUInPlaceFunction.apply

    def counting(z: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        x = original(z)
        assert x is z
        return x
    monkeypatch.setattr(interception.ReLUInPlaceFunction, "apply", counting)
    return calls


def _out_of_place_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ReLU modules and ``functional_in_place`` flags run out of place."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
        if hasattr(module, "functional_in_place"):
            module.functional_in_place = False
    return twin


def _same_explanations(model: nn.Module, x: torch.Tensor, composite: str) -> None:
    """Relevance, per-layer relevance and conservation table equal, bit for bit, to the out-of-place twin's."""
    ours = lrp.explain(model, x, composite=composite, keep_layers=True, conservation=True)
    twin = lrp.explain(_out_of_place_twin(model), x, composite=composite, keep_layers=True, conservation=True)
    torch.testing.assert_close(ours.relevance, twin.relevance, rtol=0, atol=0)
    assert list(ours.layers) == list(twin.layers)
    for name, relevance in ours.layers.items():
        torch.testing.assert_close(relevance, twin.layers[name], rtol=0, atol=0, msg=name)
    assert [(row.layer, row.op, row.rule) for row in ours.rows] == [(row.layer, row.op, row.rule) for row in twin.rows]
    for row, twin_row in zip(ours.rows, twin.rows):
        torch.testing.assert_close(row.relevance_in, twin_row.relevance_in, rtol=0, atol=0)


@pytest.mark.parametrize("composite", ["alpha1-beta0", "epsilon-plus", "z-plus", "epsilon", "epsilon-alpha2-beta1",
                                       "gamma"])
def test_in_place_relus_run_in_place(in_place_relus: list[int], composite: str) -> None:
    """Each block's two ReLUs (in place: after a convolution with a folded BatchNorm whose input the model has let
    go of, and after the sum) run in place, whether the rule before them reads z or not; the stem's (not in place)
    does not. The same numbers as the model with every ReLU out of place, also per layer and in the conservation
    table."""
    model, x = _residual()
    x_before = x.clone()
    _same_explanations(model, x, composite)
    assert len(in_place_relus) == 4
    assert torch.equal(x, x_before)


class InPlaceAfterUse(nn.Module):
    """A dense layer, a BatchNorm and an in-place ReLU, where the model uses a tensor that the ReLU's old values
    or a later unfolding depend on: ``consumer`` "before" (z feeds another op before the ReLU), "batch norm input"
    (the BatchNorm's input is used after the ReLU: unfolds the BatchNorm, whose ε rule reads its output),
    "batch norm after" (a BatchNorm after the ReLU, which must not fold across it)."""

    def __init__(self, consumer: str):
        super().__init__()
        self.consumer, self.functional_in_place = consumer, True
        self.first, self.second, self.aside = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)
        self.norm, self.after = nn.BatchNorm1d(8), nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.first(x)
        if self.consumer == "before":
            aside = self.aside(z)
            return self.second(F.relu(z, inplace=self.functional_in_place)) + aside
        if self.consumer == "batch norm input":
            y = F.relu(self.norm(z), inplace=self.functional_in_place)
            return self.second(y) + self.aside(z)
        return self.second(self.after(F.relu(z, inplace=self.functional_in_place)))


@pytest.mark.parametrize("consumer", ["before", "batch norm input", "batch norm after"])
@pytest.mark.parametrize("composite", ["alpha1-beta0", "epsilon-plus"])
def test_in_place_relus_whose_old_values_are_still_needed_run_out_of_place(
        in_place_relus: list[int], consumer: str, composite: str) -> None:
    torch.manual_seed(5)
    x = torch.randn(5, 6, dtype=DT)
    model = _randomised(InPlaceAfterUse(consumer), x)
    with torch.no_grad():
        model.first.bias.sub_(0.5)  # many zeros after the ReLU
    _same_explanations(model, x, composite)
    # only the last case runs in place (under ε+, the dense layer's ε rule gets z made again: the BatchNorm after
    # the ReLU is not folded, and explained as a layer of its own, it does not count as proportional)
    assert len(in_place_relus) == (1 if consumer == "batch norm after" else 0)


class ThenRelu(nn.Module):
    """``before`` ("dense", "dense and batch norm", "sum" of two dense layers, "convolution and batch norm") and an
    in-place ReLU, whose output goes on to ``after``: "dense" (proportional: relu(z) serves the rule before),
    "max pool" (through indexing and max pooling: proportional throughout), "shift" (a constant added: relevance
    reaches the ReLU's zeros), or "output" (the model's output)."""

    def __init__(self, before: str, after: str):
        super().__init__()
        self.before, self.after, self.functional_in_place = before, after, True
        self.first, self.second, self.norm = nn.Linear(6, 8), nn.Linear(6, 8), nn.BatchNorm1d(8)
        self.conv, self.conv_norm = nn.Conv1d(1, 1, 3, padding=2), nn.BatchNorm1d(1)
        self.last, self.pooled = nn.Linear(8, 3), nn.Linear(4, 3)

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """z (N, 8), or (N, 1, 8) after the convolution."""
        if self.before == "sum":
            return self.first(x) + self.second(x)
        if self.before == "convolution and batch norm":
            return self.conv_norm(self.conv(x[:, None]))
        return self.norm(self.first(x)) if self.before == "dense and batch norm" else self.first(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.pre_activation(x), inplace=self.functional_in_place).flatten(1)
        if self.after == "output":
            return y
        if self.after == "max pool":
            return self.pooled(F.max_pool1d(y[:, None], 2)[:, 0])
        return self.last(y + 1.0 if self.after == "shift" else y)


@pytest.fixture
def in_place_decisions(monkeypatch) -> list[bool]:
    """For each ReLU of the next explanations run in place over an output that its producer's rule reads: whether
    the producer takes the ReLU's output in its place (True) or z made again (``Trace._rectify_in_place``)."""
    decisions: list[bool] = []
    original = interception.Trace.__dict__["_rectify_in_place"].__func__

    def recording(entry, ends):
        original(entry, ends)
        decisions.append(entry.produced.record.z_rectified)
    monkeypatch.setattr(interception.Trace, "_rectify_in_place", staticmethod(recording))
    return decisions


@pytest.mark.parametrize("after", ["dense", "max pool", "shift", "output"])
@pytest.mark.parametrize("before", ["dense", "dense and batch norm", "sum", "convolution and batch norm"])
@pytest.mark.parametrize("composite", ["epsilon", "gamma", "alpha2-beta1"])
def test_a_relu_in_place_over_an_output_that_the_rule_reads_gives_the_out_of_place_numbers(
        in_place_relus: list[int], in_place_decisions: list[bool], composite: str, before: str, after: str) -> None:
    """The ReLU runs in place over z; after the forward, the op before it takes its output in z's place where every
    op after the ReLU is proportional (also through indexing and max pooling), else z made again from the op's
    input (the same op, and its folded BatchNorm; a sum from its terms): the numbers of the same model with the
    ReLU out of place, bit for bit."""
    torch.manual_seed(6)
    x = torch.randn(5, 6, dtype=DT)
    model = _randomised(ThenRelu(before, after), x)
    with torch.no_grad():
        z = model.pre_activation(x)
    assert bool((z < 0).any()) and bool((z > 0).any())
    target = torch.ones(5, 8, dtype=DT) if after == "output" else None
    ours = lrp.explain(model, x, target=target, composite=composite).relevance
    assert len(in_place_relus) == 1
    assert in_place_decisions == [after in ("dense", "max pool")]
    twin = lrp.explain(_out_of_place_twin(model), x, target=target, composite=composite).relevance
    torch.testing.assert_close(ours, twin, rtol=0, atol=0)


def test_a_batch_norm_with_batch_statistics_keeps_its_relu_out_of_place(in_place_relus: list[int]) -> None:
    """A BatchNorm called with ``training=True`` would update its running statistics again if its output were
    made again: the ReLU after it runs out of place where the rule reads z, and the statistics are updated once,
    as by the model's own forward."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.last = nn.Linear(6, 8), nn.Linear(8, 3)
            self.register_buffer("mean", torch.zeros(8))
            self.register_buffer("var", torch.ones(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = F.batch_norm(self.first(x), self.mean, self.var, training=True)
            return self.last(F.relu(z, inplace=True))

    torch.manual_seed(7)
    x = torch.randn(5, 6, dtype=DT)
    model, plain = Functional().double(), Functional().double()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain(x)
    lrp.explain(model, x, composite="epsilon")
    assert not in_place_relus
    torch.testing.assert_close(model.mean, plain.mean, rtol=0, atol=0)
    torch.testing.assert_close(model.var, plain.var, rtol=0, atol=0)


class Pooled(nn.Module):
    """Blocks Conv2d → BatchNorm2d → ReLU (out of place) → MaxPool2d, flattened into a dense layer, or with
    ``pooled_output`` the last pool's output flattened as the model's output."""

    def __init__(self, pooled_output: bool = False):
        super().__init__()
        self.pooled_output = pooled_output
        self.blocks = nn.Sequential(*[m for c_in, c_out in ((3, 4), (4, 6), (6, 8)) for m in (
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))])
        self.last = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.blocks(x), 1)
        return features if self.pooled_output else self.last(features)


@pytest.mark.parametrize("composite", ["epsilon", "gamma", "alpha2-beta1"])
def test_relus_out_of_place_are_decided_through_max_pooling(
        rectified_divisions: list[int], composite: str) -> None:
    """Max pooling and flattening pass on the decision to the ops that take their output (as for ReLUs run in
    place): each block's convolution takes its ReLU's output in place of its own, the numbers of the same
    model without rectification (γ: up to rounding), and the same as with in-place ReLUs, bit for bit. Where
    the last pool's output is the model's output (relevance given as a tensor), its block is not rectified."""
    torch.manual_seed(8)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    model = _randomised(Pooled(), x)
    relevance = lrp.explain(model, x, composite=composite).relevance
    if composite == "epsilon":
        assert len(rectified_divisions) == 3
    exact = composite != "gamma"
    torch.testing.assert_close(relevance, never_rectified(model, x, composite=composite),
                               rtol=0 if exact else 1e-12, atol=0 if exact else 1e-18)
    in_place = copy.deepcopy(model)
    for module in in_place.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    torch.testing.assert_close(lrp.explain(in_place, x, composite=composite).relevance, relevance, rtol=0, atol=0)

    rectified_divisions.clear()
    ends = _randomised(Pooled(pooled_output=True), x)
    target = torch.ones(2, 128, dtype=DT)
    relevance = lrp.explain(ends, x, target=target, composite=composite).relevance
    if composite == "epsilon":
        assert len(rectified_divisions) == 2
    torch.testing.assert_close(relevance, never_rectified(ends, x, target=target, composite=composite),
                               rtol=0 if exact else 1e-12, atol=0 if exact else 1e-18)


def test_relus_decided_through_max_pooling_are_decided_once_the_pools_output_is_let_go_of(monkeypatch) -> None:
    """A ReLU output waits for the pool's output (and the flattened one, after the last block) to be let go of,
    one layer later, not for the end of the forward: else it would hold both x and z of every block until then.
    All three blocks are decided during the forward."""
    decided: list[bool] = []  # per decision: whether the forward was still running
    finished = []
    original_rectify, original_decide = interception.Trace.rectify, interception.Trace.__dict__["_rectify"].__func__
    monkeypatch.setattr(interception.Trace, "rectify", lambda self, *outputs: finished.append(1) or
                        original_rectify(self, *outputs))

    def deciding(entry, ends):
        if entry.kept is not None:
            decided.append(not finished)
        original_decide(entry, ends)
    monkeypatch.setattr(interception.Trace, "_rectify", staticmethod(deciding))
    torch.manual_seed(9)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    lrp.explain(_randomised(Pooled(), x), x)
    assert decided == [True, True, True]
