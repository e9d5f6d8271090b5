"""The linear maps rules act on: chunked CPU convolutions equal one-call convolutions, the
transposes are the adjoints of the forwards (⟨f(x), s⟩ = ⟨x, fᵀ(s)⟩), and they keep a channels_last
input's layout."""
from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrp
from lrp import layers
from lrp.composites import Weighted
from lrp.layers import Convolution, ParameterFree
from lrp.rules import Epsilon, Zero

DT = torch.float64

# (input shape, weight shape, stride, padding, dilation, groups, extra padding)
CASES = {
    "1d": ((2, 3, 29), (4, 3, 3), (2,), (1,), (1,), 1, ()),
    "2d-strided": ((2, 3, 23, 17), (4, 3, 3, 2), (2, 1), (1, 2), (1, 1), 1, ()),
    "2d-dilated": ((2, 4, 23, 17), (6, 2, 3, 3), (2, 2), (2, 1), (2, 1), 2, ()),
    "2d-same-even": ((1, 3, 20, 11), (5, 3, 4, 2), (1, 1), (1, 0), (1, 1), 1, (1, 1)),
    "1d-pointwise": ((3, 5, 11), (4, 5, 1), (1,), (0,), (1,), 1, ()),
    "2d-pointwise-strided": ((2, 3, 9, 8), (4, 3, 1, 1), (2, 3), (0, 0), (1, 1), 1, ()),
    "3d": ((1, 2, 13, 9, 8), (3, 2, 3, 3, 3), (1, 2, 1), (0, 1, 1), (1, 1, 1), 1, ()),
}


def _conv(case: str) -> tuple[Convolution, torch.Tensor, torch.Tensor]:
    x_shape, w_shape, stride, padding, dilation, groups, extra = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, dtype=DT, generator=generator)
    weight = torch.randn(w_shape, dtype=DT, generator=generator)
    return Convolution(stride, padding, dilation, groups, False, (), extra), x, weight


@pytest.mark.parametrize("case", CASES)
def test_chunked_convolution_equals_one_call(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conv, x, weight = _conv(case)
    z = conv.forward(x, weight)
    s = torch.randn_like(z)
    transposed = conv.transpose(s, weight, x)
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)  # a few output rows per slab
    assert conv._rows_per_chunk(x, weight, z.shape[2]) is not None
    torch.testing.assert_close(conv.forward(x, weight), z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.transpose(s, weight, x), transposed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["2d-strided", "2d-dilated", "2d-same-even", "3d"])
def test_chunked_transpose_of_a_channels_last_input_keeps_its_layout(case: str, monkeypatch) -> None:
    """The slabs' canvas and stand-in input take x's memory format, so the result comes in its layout,
    channels innermost (cropped from the canvas, so not necessarily dense); a contiguous result would make
    the rule's element-wise product with x mix layouts."""
    conv, x, weight = _conv(case)
    channels_last = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    x = x.contiguous(memory_format=channels_last)
    s = torch.randn_like(conv.forward(x.contiguous(), weight))
    expected = conv.transpose(s, weight, x.contiguous())
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)
    assert conv._rows_per_chunk(x, weight, s.shape[2]) is not None
    transposed = conv.transpose(s, weight, x)
    torch.testing.assert_close(transposed, expected, rtol=1e-12, atol=1e-12)
    assert transposed.stride(1) == 1


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pointwise_strided_transpose_on_the_grid_equals_pytorchs_strided_one(layout) -> None:
    """A 1×1 convolution with strides (2, 3) on a 9×8 input reads rows 0, 2, 4, 6, 8 and columns 0, 3, 6: its
    transpose, made unstrided on that grid, equals PyTorch's own strided one (zeros elsewhere, column 7
    included) and keeps a channels-last input's layout."""
    conv, x, weight = _conv("2d-pointwise-strided")
    x = x.contiguous(memory_format=layout)
    assert conv._reads_grid(x, weight)
    s = torch.randn_like(conv.forward(x, weight))
    reference = torch.nn.grad.conv2d_input(x.shape, weight, s, stride=conv.stride)
    transposed = conv.transpose(s, weight, x)
    torch.testing.assert_close(transposed, reference, rtol=1e-12, atol=1e-12)
    assert transposed.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pointwise_layer_runs_as_matrix_products_equal_to_pytorchs_convolution(layout) -> None:
    """A 1×1 convolution without stride of a contiguous input runs as one matrix product per sample, forward and
    transposed (two pairs summed in the second product); a channels-last input takes oneDNN's layer and keeps its
    layout. Both equal PyTorch's convolution and its input gradient."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 6, 7, dtype=DT, generator=generator).contiguous(memory_format=layout)
    weight, other = torch.randn(2, 4, 5, 1, 1, dtype=DT, generator=generator)
    bias = torch.randn(4, dtype=DT, generator=generator)
    conv = Convolution((1, 1), (0, 0), (1, 1), 1)
    assert conv.is_matrix_product(x, weight) == (layout == torch.contiguous_format)
    torch.testing.assert_close(conv.forward(x, weight, bias), F.conv2d(x, weight, bias), rtol=1e-12, atol=1e-12)
    s, t = torch.randn(2, 3, 4, 6, 7, dtype=DT, generator=generator)
    reference = torch.nn.grad.conv2d_input(x.shape, weight, s) + torch.nn.grad.conv2d_input(x.shape, other, t)
    summed = conv.transpose_sum([(s, weight), (t, other)], x)
    torch.testing.assert_close(summed, reference, rtol=1e-12, atol=1e-12)
    assert summed.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("setting", ["contiguous", "channels-last", "autocast"])
def test_models_own_pointwise_layer_runs_as_matrix_products_in_the_trace(monkeypatch, setting: str) -> None:
    """The model's own call of a pointwise layer without stride runs as the rules' matrix products
    (``Convolution.products``), the same layer up to rounding: the prediction is the model's output. A channels-last
    input, or CPU autocast (which would run the two in different precisions), keeps the model's own layer."""
    calls = []
    products = Convolution.products
    monkeypatch.setattr(Convolution, "products", staticmethod(lambda *a: calls.append(a[0].shape) or products(*a)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(), nn.Conv2d(5, 4, 1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 7, 3)).eval()
    if setting != "autocast":
        model = model.double()
    x = torch.rand(2, 3, 6, 7, dtype=DT if setting != "autocast" else torch.float32)
    if setting == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", enabled=setting == "autocast"):
        explanation = lrp.explain(model, x, composite="epsilon")  # ε never calls products in its backward
        expected = model(x)
    torch.testing.assert_close(explanation.prediction, expected, rtol=1e-12, atol=1e-12)
    assert calls == ([(2, 3, 6, 7), (2, 5, 6, 7)] if setting == "contiguous" else [])


def test_models_pointwise_layer_with_a_bias_of_another_dtype_raises_the_models_own_error() -> None:
    """A float32 bias in a float64 pointwise layer: the matrix products would add it silently, so the trace leaves
    the call to the model's own layer, which raises."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).double().eval()
    model[0].bias.data = model[0].bias.data.float()
    x = torch.rand(1, 3, 5, 5, dtype=DT)
    with pytest.raises(RuntimeError, match="bias type"):
        model(x)
    with pytest.raises(RuntimeError, match="bias type"):
        lrp.explain(model, x)


def test_pointwise_layer_of_a_large_batch_with_a_large_weight_stays_with_onednn() -> None:
    """The products read the weight once per sample: ResNet-50's last stage at batch 8 (2048×512 on 7×7 positions)
    stays with oneDNN, at batch 1 it does not."""
    conv, weight = Convolution((1, 1), (0, 0), (1, 1), 1), torch.empty(2048, 512, 1, 1)
    assert not conv.is_matrix_product(torch.empty(8, 512, 7, 7), weight)
    assert conv.is_matrix_product(torch.empty(1, 512, 7, 7), weight)
    assert conv.is_matrix_product(torch.empty(8, 512, 28, 28), weight)


@pytest.mark.parametrize("case", CASES)
def test_constant_response_equals_the_layer_over_a_constant_input(case: str) -> None:
    """One value per input channel at every position: the response made from the kernel and the window's part
    inside the input (borders, strides, dilation, groups, 'same' with an even kernel) equals the layer's output,
    for one sample, and tells every position apart only where the layer has padding."""
    conv, x, weight = _conv(case)
    values = torch.randn(x.shape[1], dtype=DT, generator=torch.Generator().manual_seed(1))
    constant = values.view(1, -1, *([1] * (x.dim() - 2))).expand(x.shape).contiguous()
    response = conv.constant_response([(values, weight)], x)
    expected = conv.forward(constant, weight)
    assert response.shape[:2] == (1, weight.shape[0])
    assert response.shape[2:] == (expected.shape[2:] if any(conv.padding) or any(conv.extra_padding)
                                  else (1,) * (x.dim() - 2))
    torch.testing.assert_close(response.expand(expected.shape), expected, rtol=1e-12, atol=1e-12)


def test_constant_response_of_a_grouped_padded_layer_sums_its_pairs_over_each_groups_channels() -> None:
    conv = Convolution((2, 1), (2, 1), (2, 1), 2)
    generator = torch.Generator().manual_seed(2)
    x, weight = torch.randn(1, 4, 9, 6, dtype=DT, generator=generator), torch.randn(6, 2, 3, 3, dtype=DT, generator=generator)
    values = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    constant = values.view(1, -1, 1, 1).expand(x.shape).contiguous()
    other = torch.randn(weight.shape, dtype=DT, generator=generator)
    torch.testing.assert_close(conv.constant_response([(values, weight), (-values, other)], x),
                               conv.forward(constant, weight) + conv.forward(-constant, other), rtol=1e-12, atol=1e-12)
    transposed = Convolution((1, 1), (0, 0), (1, 1), 1, transposed=True)
    assert transposed.constant_response([(values, weight)], x) is None


@pytest.mark.parametrize("chunk_bytes", [None, 600])
@pytest.mark.parametrize("case", CASES)
def test_transpose_is_the_adjoint_of_forward(case: str, chunk_bytes: int | None, monkeypatch) -> None:
    conv, x, weight = _conv(case)
    if chunk_bytes is not None:
        monkeypatch.setattr(layers, "CHUNK_BYTES", chunk_bytes)
    z = conv.forward(x, weight)
    s = torch.randn_like(z)
    assert torch.allclose((z * s).sum(), (x * conv.transpose(s, weight, x)).sum(), rtol=1e-12)


@pytest.mark.parametrize("composite", ["epsilon", "alpha2-beta1", "epsilon-gamma-box"])
def test_explanations_do_not_depend_on_chunking(composite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 6, 3),
                          nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    x = torch.rand(2, 1, 12, 14, 12, dtype=DT)
    model(x)
    params = {"low": 0.0, "high": 1.0} if composite == "epsilon-gamma-box" else {}
    expected = lrp.explain(model, x, composite=composite, **params).relevance
    monkeypatch.setattr(layers, "CHUNK_BYTES", 2000)
    torch.testing.assert_close(lrp.explain(model, x, composite=composite, **params).relevance, expected,
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("case", ["2d-strided", "2d-dilated", "3d"])
def test_onednn_transposes_run_in_one_call(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 CPU convolution that PyTorch runs with oneDNN (batch of 2) is transposed in one call whatever
    the slab bound, and equals the float64 transposition, which runs in slabs; without oneDNN (switched off, or
    float64) the bound holds."""
    conv, x, weight = _conv(case)
    x = x.repeat(2, *([1] * (x.dim() - 1)))[:2]
    s = torch.randn_like(conv.forward(x, weight))
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)
    x32, s32, weight32 = x.float(), s.float(), weight.float()
    assert conv._rows_per_chunk(x32, weight32, s.shape[2]) is None
    assert conv._rows_per_chunk(x, weight, s.shape[2]) is not None
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert conv._rows_per_chunk(x32, weight32, s.shape[2]) is not None
    torch.testing.assert_close(conv.transpose(s32, weight32, x32), conv.transpose(s, weight, x).float(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_stacked_transpose_sum_equals_separate_transposes(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conv, x, weight = _conv(case)
    other = torch.randn_like(weight)
    s = torch.randn_like(conv.forward(x, weight))
    t = torch.randn_like(s)
    expected = conv.transpose(s, weight, x) + conv.transpose(t, other, x)
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)  # slabs: the pairs are stacked into one call per slab
    torch.testing.assert_close(conv.transpose_sum([(s, weight), (t, other)], x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 7], ids=["whole", "chunked"])
def test_stabilised_division_hand_computed(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """R / (z + ε·sign z), sign(0) = +1, written out element by element; chunked (7-element chunks of a
    101-element tensor) or whole, new tensor or in place."""
    if chunk is not None:
        monkeypatch.setattr(layers, "DIVIDE_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1, 101, dtype=DT, generator=generator)
    z[0, :5] = torch.tensor([0.0, 1e-9, -1e-9, 2.0, -2.0], dtype=DT)
    relevance = torch.randn(1, 101, dtype=DT, generator=generator)
    eps = 1e-3
    pairs = zip(relevance[0].tolist(), z[0].tolist())
    expected = torch.tensor([[r / (v + (eps if v >= 0 else -eps)) for r, v in pairs]], dtype=DT)
    assert torch.equal(layers.divide(relevance, z, eps), expected)
    denominator = z.clone()
    assert layers.divide_(relevance, denominator, eps) is denominator
    assert torch.equal(denominator, expected)


def test_transpose_sum_frees_each_relevance_share_before_the_next_transpose(monkeypatch) -> None:
    """Unchunked, the pairs are taken from the list one by one: with the list holding the only reference,
    the first share is gone when the second transposed layer runs (one activation less at the peak)."""
    conv, x, weight = _conv("2d-strided")
    s, t = (torch.randn_like(conv.forward(x, weight)) for _ in range(2))
    expected = conv.transpose(s, weight, x) + conv.transpose(t, weight, x)
    first = weakref.ref(s)
    alive_at_call = []
    original = Convolution._convolution_backward

    def spy(self, *args, **kwargs):
        alive_at_call.append(first() is not None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Convolution, "_convolution_backward", spy)
    pairs = [(s, weight), (t, weight)]
    del s, t
    result = conv.transpose_sum(pairs, x)
    assert alive_at_call == [True, False] and pairs == []
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def _z_alive_at(method: str, rule: lrp.rules.Rule, monkeypatch) -> list[bool]:
    """Explains two convolutions (the first on a signed input, the second on a ReLU's output) with ``rule``,
    spying on ``Convolution.<method>`` (``forward`` or ``transpose_sum``) in the backward: for each call on a
    layer's own input, in the backward's order, whether that layer's output z was still alive. Checks that the
    spied run gives the same relevance as one without the spy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.LazyLinear(2)).double()
    x = torch.randn(2, 2, 9, 9, dtype=DT)
    model(x)
    outputs, alive = {}, []
    original_call, original = lrp.nodes.LinearRecord.layer_call, getattr(Convolution, method)
    position = {"forward": 0, "transpose_sum": 1}[method]  # of the layer's input among the arguments

    def remember(record):
        call = original_call(record)
        outputs[id(call.source)] = weakref.ref(call.z)
        return call

    def spy(self, *args):
        if id(args[position]) in outputs:  # not a stand-in of a transposed pair
            alive.append(outputs[id(args[position])]() is not None)
        return original(self, *args)

    monkeypatch.setattr(lrp.nodes.LinearRecord, "layer_call", remember)
    monkeypatch.setattr(Convolution, method, spy)
    composite = lrp.Composite(by_type={lrp.composites.Convolution: rule, lrp.composites.Dense: lrp.rules.Epsilon()})
    with_spy = lrp.explain(model, x, composite=composite).relevance
    monkeypatch.undo()
    torch.testing.assert_close(with_spy, lrp.explain(model, x, composite=composite).relevance)
    return alive


@pytest.mark.parametrize("rule", [lrp.rules.Epsilon(0.01), lrp.rules.AlphaBeta(2.0, 1.0), lrp.rules.Gamma(0.25)],
                         ids=repr)
def test_rules_release_the_layer_output_before_transposing(rule, monkeypatch) -> None:
    """ε, α2β1 and γ no longer need z once their quotients exist: z is freed before the transposed layer runs
    (the record and the layer call let go of it). γ's signed layer transposes through its own pairs, which the
    spy does not see. (The paper's model, ``epsilon``: a live peak of 791 instead of 1043 MiB.)"""
    alive = _z_alive_at("transpose_sum", rule, monkeypatch)
    assert alive and not any(alive)  # the second convolution, then the first where seen


@pytest.mark.parametrize("rule", [lrp.rules.ZPlus(), lrp.rules.AlphaBeta(1.0, 0.0)], ids=repr)
def test_z_plus_releases_the_layer_output_before_its_layer_call(rule, monkeypatch) -> None:
    """z⁺ on a non-negative input reads neither z nor the folded weight: both are freed before its own layer call
    ``W⁺x`` makes a tensor of z's size. (The paper's model, ``epsilon-plus``: a live peak of 791 instead of 1011
    MiB.)"""
    assert _z_alive_at("forward", rule, monkeypatch)[0] is False  # the second convolution, on a ReLU's output


def test_layer_call_release_names_what_it_can_release() -> None:
    conv, x, weight = _conv("1d")
    call = layers.LayerCall(conv, x, conv.forward(x, weight), weight, None)
    call.release("z")
    assert call.z is None
    with pytest.raises(ValueError, match="'z' or 'weight'"):
        call.release("x")


def test_workspace_reuses_one_buffer_per_slot_and_grows_it() -> None:
    workspace = lrp.workspace.Workspace()
    like = torch.empty(3, 4, dtype=DT)
    first = workspace.take("a", like)
    assert first.shape == (3, 4) and first.dtype == DT and first.is_contiguous()
    assert workspace.take("a", like[:2]).data_ptr() == first.data_ptr()  # smaller: a view of the same memory
    assert workspace.take("b", like).data_ptr() != first.data_ptr()  # another slot: its own memory
    assert workspace.take("a", like.float()).data_ptr() != first.data_ptr()  # another dtype too
    grown = workspace.take("a", torch.empty(5, 4, dtype=DT))
    assert grown.shape == (5, 4)
    assert workspace.take("a", like).data_ptr() == grown.data_ptr()


def test_row_blocks_share_a_workspace_for_modified_weights(monkeypatch) -> None:
    """Each block's W⁺ is written into the same buffer; the sum over the blocks equals the whole call."""
    monkeypatch.setattr(layers, "BLOCK_WEIGHT_BYTES", 8 * 5 * 2)  # 10-row weight: blocks of one row
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.rand(2, 5, dtype=DT, generator=generator), torch.randn(10, 5, dtype=DT, generator=generator)
    call = layers.LayerCall(layers.Dense(), x, x @ weight.T, weight, None)
    blocks = call.row_blocks()
    assert len(blocks) == 10
    pointers = {block.modified(lrp.rules._positive).data_ptr() for _, block in blocks}
    assert len(pointers) == 1
    rule, relevance = lrp.rules.AlphaBeta(2.0, 1.0), torch.randn(2, 10, dtype=DT, generator=generator)
    whole = rule.relevance(layers.LayerCall(layers.Dense(), x, x @ weight.T, weight, None), relevance)
    summed = sum(rule.relevance(block, relevance[..., rows]) for rows, block in call.row_blocks())
    torch.testing.assert_close(summed, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("signed", [True, False])
def test_row_blocks_look_at_the_input_sign_once(signed: bool, monkeypatch) -> None:
    """The blocks share the input, so the one reduction that finds a negative entry runs for the call, not per
    block; αβ then takes the path for that sign in every block, and the sum equals the whole call."""
    monkeypatch.setattr(layers, "BLOCK_WEIGHT_BYTES", 8 * 5 * 2)  # 10-row weight: blocks of one row
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, dtype=DT, generator=generator) - (0.5 if signed else 0.0)
    weight = torch.randn(10, 5, dtype=DT, generator=generator)
    rule, relevance = lrp.rules.AlphaBeta(2.0, 1.0), torch.randn(2, 10, dtype=DT, generator=generator)
    whole = rule.relevance(layers.LayerCall(layers.Dense(), x, x @ weight.T, weight, None), relevance)
    reductions = []
    amin = torch.amin
    monkeypatch.setattr(torch, "amin", lambda *args, **kwargs: reductions.append(1) or amin(*args, **kwargs))
    blocks = layers.LayerCall(layers.Dense(), x, x @ weight.T, weight, None).row_blocks()
    summed = sum(rule.relevance(block, relevance[..., rows]) for rows, block in blocks)
    assert len(reductions) == 1 and all(block.input_negative is signed for _, block in blocks)
    torch.testing.assert_close(summed, whole, rtol=1e-12, atol=1e-12)


def test_where_positive_and_where_negative_split_by_strict_sign() -> None:
    sign_source = torch.tensor([-2.0, -1e-300, -0.0, 0.0, 1e-300, 3.0], dtype=DT)
    values = torch.arange(1.0, 7.0, dtype=DT)
    assert layers.where_positive(values, sign_source).tolist() == [0, 0, 0, 0, 5, 6]
    assert layers.where_negative(values, sign_source).tolist() == [1, 2, 0, 0, 0, 0]


@pytest.mark.parametrize("where", [None, 0, 5, -1])
@pytest.mark.parametrize("value", [1e-30, -2.0, float("nan")])
def test_all_zero_finds_a_single_non_zero_anywhere(where: int | None, value: float) -> None:
    t = torch.zeros(3, 8 * layers.HEAD_ELEMENTS + 7)  # larger than the head that is looked at first
    if where is not None:
        t.view(-1)[where] = value
    assert layers.all_zero(t) is (where is None)
    assert layers.all_zero(t.t()) is (where is None)  # not contiguous: read whole


def test_times_relu_equals_multiplying_by_the_relu_output_in_place() -> None:
    source = torch.tensor([-2.0, -1e-300, -0.0, 0.0, 1e-300, 3.0, 0.5], dtype=DT)
    t = torch.tensor([1.5, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0], dtype=DT)
    expected = t * torch.relu(source)
    result = layers.times_relu(t, source)
    assert result.data_ptr() == t.data_ptr()
    assert result.tolist() == expected.tolist() == [0, 0, 0, 0, 5e-300, -18, 3.5]


def test_epsilon_after_a_relu_does_not_make_its_output_again(monkeypatch) -> None:
    """ε only multiplies by its input, so after a ReLU it takes ``t ⊙ relu(z)`` from the kept z
    (:func:`layers.times_relu`) instead of making the ReLU's output again; the relevance is the same. (LRP-0
    before the first ReLU divides by z itself, with no stabiliser to take ``relu(z)`` in its place, so the
    layer after it keeps z; the second ReLU's output is kept itself, see ``Trace.rectify``.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.LazyLinear(2)).double().eval()
    x = torch.randn(2, 2, 11, 11, dtype=DT)
    model(x)
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
    composite = lrp.Composite(by_type={Weighted: Epsilon()}, by_name={"0": Zero()})
    calls = []
    original = lrp.handlers._call_out_of_place
    monkeypatch.setattr(lrp.handlers, "_call_out_of_place",
                        lambda *a: (calls.append(a[1]) if "relu" in a[1] else None) or original(*a))
    without_remaking = lrp.explain(model, x, composite=composite).relevance
    assert len(calls) == 2  # the forward pass's two ReLUs only
    calls.clear()
    monkeypatch.setattr(lrp.handlers, "times_relu", None)
    remade = lrp.explain(model, x, composite=composite).relevance
    assert len(calls) == 3  # the same, and the first ReLU's output made again for the layer after it
    torch.testing.assert_close(without_remaking, remade, rtol=0, atol=0)


@pytest.mark.parametrize("op", [lambda t: F.avg_pool2d(t, 2), lambda t: t.mean(dim=(2, 3), keepdim=True)],
                         ids=["avg_pool2d", "mean"])
def test_parameter_free_transpose_keeps_a_channels_last_layout(op) -> None:
    """The transpose of a parameter-free op (autograd's, materialised where it is an expanded view) comes in
    x's memory format, as the rule multiplies it by x."""
    x = torch.randn(2, 3, 6, 4, dtype=DT).contiguous(memory_format=torch.channels_last)
    s = torch.randn_like(op(x.contiguous()))
    transposed = ParameterFree(op).transpose(s, None, x)
    torch.testing.assert_close(transposed, ParameterFree(op).transpose(s, None, x.contiguous()), rtol=0, atol=0)
    assert transposed.is_contiguous(memory_format=torch.channels_last)


ONE_CHANNEL = {  # (input shape, weight shape, stride, padding): float32 CPU inputs with one channel
    "2d": ((2, 1, 19, 15), (4, 1, 3, 3), (2, 1), (1, 0)),
    "3d": ((2, 1, 11, 9, 10), (3, 1, 3, 3, 3), (1, 1, 1), (1, 1, 1)),
}


@pytest.mark.parametrize("case", ONE_CHANNEL)
def test_one_channel_transposes_run_channels_last_and_equal_float64(case: str, monkeypatch) -> None:
    """A one-channel float32 CPU input is transposed with a channels-last weight (oneDNN's direct kernel
    instead of an unfolded output), in one call whatever the slab bound, and a pair of weights in one call on a
    two-channel channels-last stand-in (the halves are stride-2 views); float64 (the ordinary path) agrees."""
    x_shape, w_shape, stride, padding = ONE_CHANNEL[case]
    generator = torch.Generator().manual_seed(0)
    x, weight, other = (torch.randn(shape, dtype=DT, generator=generator) for shape in (x_shape, w_shape, w_shape))
    conv = Convolution(stride, padding, (1,) * len(stride), 1, False, (), ())
    s = torch.randn_like(conv.forward(x, weight))
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)  # float64 runs in slabs; float32 ignores the bound
    x32, s32, weight32, other32 = x.float(), s.float(), weight.float(), other.float()
    assert conv._one_channel_on_cpu(x32, weight32) and not conv._one_channel_on_cpu(x, weight)
    assert not conv._one_channel_on_cpu(x32[:1], weight32)  # PyTorch runs one small sample without oneDNN
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not conv._one_channel_on_cpu(x32, weight32)
    assert torch.backends.mkldnn.enabled
    asked = []
    rows_per_chunk = Convolution._rows_per_chunk
    monkeypatch.setattr(Convolution, "_rows_per_chunk", lambda self, t, *rest: asked.append(t.dtype) or
                        rows_per_chunk(self, t, *rest))
    transposed = conv.transpose(s32, weight32, x32)
    assert asked == []  # no slabs asked for
    torch.testing.assert_close(transposed, conv.transpose(s, weight, x).float(), rtol=1e-5, atol=1e-5)
    assert asked == [DT]  # float64 did ask
    assert transposed.is_contiguous()
    first, second = conv.transpose_pair(s32, weight32, other32, x32)
    assert first.stride(-1) == second.stride(-1) == 2
    torch.testing.assert_close(first, conv.transpose(s, weight, x).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, conv.transpose(s, other, x).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_one_channel_sample_with_a_large_kernel_takes_the_onednn_path(dims: int, monkeypatch) -> None:
    """PyTorch runs a kernel larger than 3×3 with oneDNN even for one small sample (its rule, which
    ``_select_conv_backend`` reports): such an input takes the channels-last path, in one call whatever the slab
    bound, and agrees with float64 (the ordinary path, in slabs)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((1, 1, 12, 11, 10)[:dims + 2], dtype=DT, generator=generator)
    weight = torch.randn((3, 1, 5, 5, 5)[:dims + 2], dtype=DT, generator=generator)
    conv = Convolution((1,) * dims, (2,) * dims, (1,) * dims, 1, False, (), ())
    s = torch.randn_like(conv.forward(x, weight))
    assert conv._one_channel_on_cpu(x.float(), weight.float())
    assert not conv._one_channel_on_cpu(x.float(), torch.ones((3, 1, *(3,) * dims)))  # 3×3: no oneDNN, as above
    monkeypatch.setattr(layers, "CHUNK_BYTES", 600)
    asked = []
    rows_per_chunk = Convolution._rows_per_chunk
    monkeypatch.setattr(Convolution, "_rows_per_chunk", lambda self, t, *rest: asked.append(t.dtype) or
                        rows_per_chunk(self, t, *rest))
    transposed = conv.transpose(s.float(), weight.float(), x.float())
    assert asked == []
    torch.testing.assert_close(transposed, conv.transpose(s, weight, x).float(), rtol=1e-5, atol=1e-5)
    assert asked == [DT]
