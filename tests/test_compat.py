"""lrp.compat.InnvestigateModel against the paper's code (moboehle/Pytorch-LRP), zennit and hand-computed cases.

Everything runs in float64. The ``ORIGINAL`` numbers were produced by the original code
(``innvestigator.py`` @ d666551, ``inverter_util.py`` @ 8073364, run with torch 2.13 after
``torch.set_default_dtype(torch.float64)``, which makes its internal buffers float64 too) on the
deterministic models and inputs built below; the original is not needed to run these tests.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import zennit.rules
import zennit.types
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite, layer_map_base

from lrp.compat import InnvestigateModel
from lrp.errors import NonFiniteError

DTYPE = torch.float64
EPS = 1e-6


@pytest.fixture(autouse=True)
def _float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    yield
    torch.set_default_dtype(default)


def _quiet(model: nn.Module, **kwargs) -> InnvestigateModel:
    """InnvestigateModel without the beta=0 / beta=-1 warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InnvestigateModel(model, **kwargs)


# ---------------------------------------------------------------------------------------------
# deterministic models shared with the script that ran the original code


def _fill(model: nn.Module, scale: float = 0.6, freq: float = 0.7) -> nn.Module:
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=DTYPE) * freq + i).reshape(p.shape) * scale)
    return model


class SmallCNN(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> flatten -> fc -> relu -> fc [-> ending]; input (N, 1, 4, 4)."""

    def __init__(self, ending: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 6, 2)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(6, 5)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(5, 3)
        self.ending = ending

    def forward(self, x):
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        x = self.fc2(self.relu3(self.fc1(x.flatten(1))))
        return x if self.ending is None else self.ending(x)


class Conv1dNet(nn.Module):
    """Grouped, strided Conv1d -> relu -> flatten -> fc; input (N, 2, 7)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, stride=2, groups=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def _cnn_input() -> torch.Tensor:
    return torch.cos(torch.arange(32, dtype=DTYPE) * 0.9).reshape(2, 1, 4, 4)


def _mlp() -> nn.Module:
    return _fill(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)))


def _mlp_input() -> torch.Tensor:
    return torch.cos(torch.arange(12, dtype=DTYPE) * 1.3 + 0.5).reshape(2, 6)


def _conv1d_input() -> torch.Tensor:
    return torch.sin(torch.arange(28, dtype=DTYPE) * 1.1).reshape(2, 2, 7)


CNN_PREDICTION = [[0.8665428530973689, 0.27769444301570434, 0.6307629155547183],
                  [0.9483695550271092, 0.17068325785285193, 0.7493588935463112]]

# name: (model, input, constructor arguments, rel_for_class, heatmap of the original, flattened per sample)
ORIGINAL = {
    "cnn e-rule p=1": (lambda: SmallCNN(), _cnn_input, dict(method="e-rule", lrp_exponent=1), None, [
        [1.4494544547890276, 0.32661147137165386, 0.13842858752009962, -0.159882508178652, 1.3075766578858237,
         1.047752913756563, -3.785247551128394, 0.04312598772950408, -2.7424596566231636, 0.43607239427909583,
         -1.37179197681868, 2.390176193492886, -0.8738352413662702, 3.308822258385294, 0.0799865316578533,
         -0.7282458388524311],
        [0.009177569420955992, 0.8102379876688356, 1.3101691421343409, 0.0537878687697409, -0.7188927917053852,
         -0.640789874655027, 0.2382011967198168, -0.036937167942432174, -1.0334559393121434, -1.9947076630065255,
         -0.5081924772685543, 1.0608624105601632, 1.0150953475788158, 0.9268341421351791, -0.02083643135680941,
         0.4778069531664134]]),
    "cnn e-rule p=2 softmax": (lambda: SmallCNN(nn.Softmax(dim=1)), _cnn_input,
                               dict(method="e-rule", lrp_exponent=2), None, [
        [0.09595979694650374, 0.00514362992928792, 0.0009215994885814412, 0.0240264936564617, 0.08202676575139123,
         0.005825267642133284, 0.04467159523809266, 0.006835524228571251, 0.0031631997244504595,
         7.1955942152167e-05, 0.044934142054191994, 0.06722156880957983, 0.00033924043177229667,
         0.004692189612362617, 0.03888090367073801, 0.0017333705394960528],
        [8.352679491350981e-07, 0.007163752736114729, 0.023390181532545268, 0.0008044480274191694,
         0.006155449068342036, 0.021112469842360912, 0.0018456748547164004, 0.0002577222193416232,
         0.012950762649311928, 0.0504222782311914, 0.0060224921873410315, 0.14470966820405215, 0.04683220709543873,
         0.07674394084204476, 0.003475554688560387, 0.03689464517360542]]),
    "cnn e-rule p=3 class 2": (lambda: SmallCNN(), _cnn_input, dict(method="e-rule", lrp_exponent=3), 2, [
        [0.6382833966597213, 0.007573189507226179, 0.0006568764712388683, 0.0437546052870348, 0.5198076787119852,
         0.010028221488644599, -0.19213300520036208, -0.02072258476254828, -0.03095418911949948,
         9.338024978516483e-06, -0.15680228916517255, -0.2120954055655382, -0.0015355530499837407,
         0.06410029362511488, -0.03861763870704904, -0.0011978134708762267],
        [1.751520371831315e-07, 0.07372754084337406, 0.13103295596007414, -0.002118215898994673,
         -0.05147449366778989, 0.2442058577073044, 0.00649952362944176, 0.0003640411493973409,
         -0.17161458504540852, -0.048167574676872806, -0.0008542001198994648, 0.25205861077813974,
         0.1641946217978087, 0.10711224176455666, -0.0005120944047981544, 0.044827389126702755]]),
    "cnn b-rule beta=.5 logsoftmax": (lambda: SmallCNN(nn.LogSoftmax(dim=1)), _cnn_input,
                                      dict(method="b-rule", beta=0.5), None, [
        [0.09747800583746154, 0.02274600119631547, 0.008946249631176616, -0.08039780719198643, 0.08948099377098777,
         0.02146075119699534, -0.0039997277381045165, 0.0305841201681404, 0.020696301146440336,
         -0.001141449370667035, 0.08923959427140883, 0.05490969293472351, 0.006828936062282851,
         -0.009396967236015229, 0.06312903660025297, 0.015888414731653124],
        [-2.1897611599300778e-06, -0.007562956352198197, -0.03175155030009156, -0.0063879456219518215,
         0.013520301192685965, 0.061069354050930676, 0.009361340789406904, 0.0060054018293754985,
         0.018445860611710104, 0.019624468027685436, -0.050172705919612356, 0.12220128763508697,
         0.11816605381848226, 0.12575713431569013, -0.030289302567471487, 0.07080128927253376]]),
    "cnn b-rule beta=1 class 1": (lambda: SmallCNN(), _cnn_input, dict(method="b-rule", beta=1), 1, [
        [0.05241697532772389, 0.01252719459727341, 0.00458602660828562, -0.10902868728875256, 0.04729602750232561,
         0.008392917950213952, 0.016143809076572008, 0.028138400403845184, 0.02850034529621679,
         -0.0023827333737525824, 0.08512362829308061, 0.018557626446221054, 0.009342359939704293,
         -0.01931067629173589, 0.07639180842534639, 0.020998034592804898],
        [0.00017708149868404465, 0.010980094130114058, 0.003353340064528776, -0.003601571837839343,
         -0.012292099581315333, 0.013191552299836604, 0.00857111458988885, 0.001978129859065623,
         -0.01853381070811323, -0.053833229877232665, -0.07023082007577248, 0.09692558176920078,
         0.08568388957723305, 0.09606432722471524, -0.04210036194067919, 0.05434994999684947]]),
    "cnn b-rule beta=0": (lambda: SmallCNN(), _cnn_input, dict(method="b-rule", beta=0), None, [
        [0.12989464864757724, 0.030149868043912585, 0.012655285021640516, 0.0, 0.1199030162939476,
         0.0313725660603496, 0.09891958930364941, 0.037655945033160845, 0.028993990078123852, 0.0,
         0.11305578403086076, 0.10260849720095934, 0.009536309909894469, 0.0, 0.12418078165318268,
         0.027611719339907814],
        [0.0, 0.0, 0.0, 0.0, 0.03599478192977114, 0.09633470088104677, 0.01680365943789823, 0.00879217528955195,
         0.051833659043531655, 0.12232629152029255, 0.020371634427423898, 0.17746553085225542, 0.1478702503452393,
         0.16107186394138603, 0.01837894461395367, 0.09112065968810476]]),
    "mlp e-rule": (_mlp, _mlp_input, dict(method="e-rule", lrp_exponent=1), None, [
        [-0.17818293749416744, 0.00945515155937032, -0.1392590992699001, -0.07831531807779954, 0.20902735171713147,
         0.09667928773422994],
        [-0.006826938490056446, 0.003781730690773989, 0.002070876432439023, -0.027406574095814904,
         -0.013803796450546019, 0.003777123052532531]]),
    "mlp b-rule beta=.5": (_mlp, _mlp_input, dict(method="b-rule", beta=0.5), None, [
        [0.012996877885430351, -0.008792709773638966, -0.03447907893177836, -0.005793214506674413,
         -0.0168481398284878, -0.027679504317475134],
        [-0.009326336730901857, -0.020472649779588428, -0.0009718231795995171, -0.00863049564061961,
         -0.011706184434769777, 0.01269984893743522]]),
    "conv1d e-rule": (Conv1dNet, _conv1d_input, dict(method="e-rule", lrp_exponent=1), None, [
        [-0.0, -66.86115103126274, 65.95592354363397, 0.4536405991388324, -2.8656236779578936, -2.339089418969148,
         1.5799470415969308, 0.0, 0.0, 1.3880491338435172, 3.4196517319935236, 0.9970709400660003,
         -0.46640662341687783, -1.1691769772737295],
        [-0.08285110570283774, 0.0755002538235889, -0.10539106425528344, 0.012014740248513853,
         -0.060322994061120884, -0.11427321276548401, 0.0021796134823796284, 0.09097584411568006,
         0.09201792625285499, -0.012422596352432374, -0.03773624904048515, -0.15882646686645693,
         0.060466399610629065, 0.12015918562861769]]),
    "conv1d b-rule beta=.5": (Conv1dNet, _conv1d_input, dict(method="b-rule", beta=0.5), None, [
        [0.0, 0.017635035755181074, 0.02633293513151438, 0.013566453722657695, -0.013168554624981066,
         0.0012256266250784704, -0.003676873397069692, 0.0, 0.0, 0.013359574156489043, 0.032913165527816264,
         0.012134672046003775, -0.00224648674578853, -0.005631439287213786],
        [-0.03228748319119993, 0.024452863977106422, -0.04107141584627743, 0.019162295996925805,
         -0.049342251989171436, -0.08062979106963576, 0.028056176605795523, 0.025900965245138057,
         0.026197647661002497, -0.017439032655351773, -0.01636945539297644, -0.024488188563589627,
         0.006474968681475686, 0.012867095920163862]]),
}

# "cnn b-rule beta=1 class 1": per-sample sums of the original's get_r_values_per_layer(), output -> input
# (its call order: conv1, relu1, pool, conv2, relu2, fc1, relu3, fc2)
ORIGINAL_LAYER_SUMS = [
    [0.27769444301570434, 0.17068325785285193], [0.2776935620263707, 0.1706828535996416],
    [0.2776935620263707, 0.1706828535996416], [0.27769285287667006, 0.1706825560042678],
    [0.27769285287667006, 0.1706825560042678], [0.27769278698403177, 0.1706825290230366],
    [0.27769278698403177, 0.1706825290230366], [0.27769278698403177, 0.1706825290230366],
    [0.27769305750537265, 0.17068316698916428],
]


@pytest.mark.parametrize("name", list(ORIGINAL))
def test_equals_original_code(name):
    build, make_input, kwargs, rel_for_class, expected = ORIGINAL[name]
    model = _fill(build()).eval()
    prediction, heatmap = _quiet(model, epsilon=EPS, **kwargs).innvestigate(make_input(), rel_for_class)
    x = make_input()
    assert heatmap.shape == x.shape and heatmap.dtype == DTYPE
    torch.testing.assert_close(heatmap.reshape(2, -1), torch.tensor(expected), rtol=1e-12, atol=1e-15)
    assert prediction.shape == (2, 3)
    if name.startswith("cnn") and "softmax" not in name:
        torch.testing.assert_close(prediction, torch.tensor(CNN_PREDICTION), rtol=1e-14, atol=0)


def test_r_values_per_layer_order_and_length_as_original():
    model = _fill(SmallCNN()).eval()
    inn = InnvestigateModel(model, beta=1, method="b-rule")
    _, heatmap = inn.innvestigate(_cnn_input(), rel_for_class=1)
    values = inn.get_r_values_per_layer()
    assert len(values) == 1 + 8  # the output relevance, then one entry per leaf call
    shapes = [tuple(v.shape) for v in values]
    assert shapes == [(2, 3), (2, 5), (2, 5), (2, 6), (2, 6, 1, 1), (2, 3, 2, 2), (2, 3, 4, 4), (2, 3, 4, 4),
                      (2, 1, 4, 4)]
    sums = torch.stack([v.reshape(2, -1).sum(1) for v in values])
    torch.testing.assert_close(sums, torch.tensor(ORIGINAL_LAYER_SUMS), rtol=1e-12, atol=1e-15)
    # the start: the chosen class's output (to rounding, which the CPU's kernels decide), exactly zero elsewhere
    # (atol=0: where the expected value is 0, only 0 passes)
    expected_start = torch.zeros(2, 3)
    expected_start[:, 1] = torch.tensor(CNN_PREDICTION)[:, 1]
    torch.testing.assert_close(values[0], expected_start, rtol=1e-14, atol=0)
    assert torch.equal(values[-1], heatmap)


# ---------------------------------------------------------------------------------------------
# cross-checks with zennit: e-rule (p = 1) = Epsilon, b-rule (beta = 0) = AlphaBeta(1, 0), both without bias


def _mlp_random() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


def _cnn2d_random() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(5 * 1 * 1, 3))


def _cnn3d_random() -> nn.Module:
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(), nn.Linear(16, 3))


# layers where the original code is wrong (see docs/compat.md); zennit is right there
def _dilated_random() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def _stride_leftover_random() -> nn.Module:  # k3 s2 p1 on 8x8: the transposed conv needs output_padding
    return nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def _overlapping_pool_random() -> nn.Module:  # one input can win several windows
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 3))


def _reflect_padding_random() -> nn.Module:  # the original zero-padded in its transposed conv
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 5 * 5, 3))


ZENNIT_MODELS = {
    "mlp": (_mlp_random, (3, 10)),
    "cnn2d-maxpool": (_cnn2d_random, (3, 2, 8, 8)),
    "cnn3d": (_cnn3d_random, (2, 1, 6, 6, 6)),
    "dilation": (_dilated_random, (2, 2, 8, 8)),
    "stride-leftover": (_stride_leftover_random, (2, 2, 8, 8)),
    "overlapping-maxpool": (_overlapping_pool_random, (2, 2, 8, 8)),
    "reflect-padding": (_reflect_padding_random, (2, 2, 5, 5)),
}


def _zennit(model: nn.Module, x: torch.Tensor, rule) -> torch.Tensor:
    composite = LayerMapComposite(layer_map=layer_map_base() + [(zennit.types.Linear, rule)])
    with Gradient(model=model, composite=composite) as attributor:
        def start(out: torch.Tensor) -> torch.Tensor:
            index = out.argmax(1, keepdim=True)
            return torch.zeros_like(out).scatter(1, index, out.gather(1, index))
        _, relevance = attributor(x, attr_output=start)
    return relevance


@pytest.mark.parametrize("name", list(ZENNIT_MODELS))
@pytest.mark.parametrize("method", ["e-rule", "b-rule"])
def test_equals_zennit_without_bias(name, method):
    build, shape = ZENNIT_MODELS[name]
    torch.manual_seed(list(ZENNIT_MODELS).index(name))
    model = build().eval()
    x = torch.randn(*shape)
    if method == "e-rule":
        inn = InnvestigateModel(model, lrp_exponent=1, epsilon=EPS, method="e-rule")
        rule = zennit.rules.Epsilon(epsilon=EPS, zero_params="bias")
    else:
        inn = _quiet(model, beta=0, epsilon=EPS, method="b-rule")
        rule = zennit.rules.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=EPS, zero_params="bias")
    _, heatmap = inn.innvestigate(x)
    expected = _zennit(model, x, rule)
    assert float(expected.abs().sum()) > 0
    torch.testing.assert_close(heatmap, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_is_folded():
    """The original passed BatchNorm through; we fold it into the conv (then the conv's own bias and
    the BatchNorm shift are both ignored). Reference: zennit on a model folded by hand."""
    torch.manual_seed(3)
    conv, bn, fc = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(3 * 4 * 4, 3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2), bn.bias.uniform_(-1, 1)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), fc).eval()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded_conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        folded_conv.weight.copy_(conv.weight * scale[:, None, None, None])
        folded_conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    folded = nn.Sequential(folded_conv, nn.ReLU(), nn.Flatten(), fc).eval()
    x = torch.randn(2, 2, 6, 6)
    for inn, rule in (
        (InnvestigateModel(model, epsilon=EPS, method="e-rule"), zennit.rules.Epsilon(EPS, zero_params="bias")),
        (_quiet(model, beta=0, epsilon=EPS, method="b-rule"),
         zennit.rules.AlphaBeta(1.0, 0.0, stabilizer=EPS, zero_params="bias")),
    ):
        _, heatmap = inn.innvestigate(x)
        torch.testing.assert_close(heatmap, _zennit(folded, x, rule), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def _linear(weight, bias) -> nn.Linear:
    weight = torch.tensor(weight, dtype=DTYPE)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.tensor(bias, dtype=DTYPE))
    return layer


def test_e_rule_exponent_two():
    # z = Σ (x w)² without bias: x = [1, -3], w = [1, 1] -> z = 10; output 1 - 3 + 5 = 3
    inn = InnvestigateModel(_linear([[1.0, 1.0]], [5.0]), lrp_exponent=2, epsilon=EPS)
    prediction, heatmap = inn.innvestigate(torch.tensor([[1.0, -3.0]]))
    assert prediction.tolist() == [[3.0]]
    torch.testing.assert_close(heatmap, torch.tensor([[3.0 * 1 / (10 + EPS), 3.0 * 9 / (10 + EPS)]]),
                               rtol=1e-15, atol=0)


def test_e_rule_epsilon_and_bias():
    # the bias is not in z: x = [1e-7, 0], w = [1, 1], b = 10 -> R_0 = output * 1e-7 / (1e-7 + eps)
    inn = InnvestigateModel(_linear([[1.0, 1.0]], [10.0]), epsilon=EPS)
    _, heatmap = inn.innvestigate(torch.tensor([[1e-7, 0.0]]))
    torch.testing.assert_close(heatmap, torch.tensor([[(10 + 1e-7) * 1e-7 / (1e-7 + EPS), 0.0]]), rtol=1e-14, atol=0)


def test_e_rule_zero_denominator_gives_zero_and_keeps_stored_values():
    # z = 1 - 1 = 0 (bias ignored): no relevance passes; the original also overwrote the stored output relevance
    inn = InnvestigateModel(_linear([[1.0, -1.0]], [2.0]), epsilon=EPS)
    _, heatmap = inn.innvestigate(torch.tensor([[1.0, 1.0]]))
    assert torch.equal(heatmap, torch.zeros(1, 2))
    assert inn.get_r_values_per_layer()[0].tolist() == [[2.0]]


def test_b_rule_one_sided_neurons_are_conserved():
    # x = [1, 2, -1]; neuron 0 has only positive contributions, neuron 1 only negative ones, neuron 2 both
    x = torch.tensor([[1.0, 2.0, -1.0]])
    layer = _linear([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0], [1.0, -1.0, 1.0]], [0.5, -0.25, 2.5])
    inn = InnvestigateModel(layer, beta=1, epsilon=EPS, method="b-rule")
    alpha, beta = 2.0, 1.0
    out = [3.5, -3.25, 0.5]
    expected = {
        # z+ = 3: rescaled by alpha before eps, so alpha * z+_i * R / (alpha * 3 + eps)
        0: [alpha * c * out[0] / (alpha * 3 + EPS) for c in (1.0, 2.0, 0.0)],
        # z- = -3: rescaled by -beta, so -beta * z-_i * R / (-beta * -3 + eps)
        1: [-beta * c * out[1] / (beta * 3 + EPS) for c in (-1.0, -2.0, 0.0)],
        # z+ = 1 (x0 w0), z- = -2 - 1 = -3: alpha z+_i R / (1 + eps) - beta z-_i R / (-3 - eps)
        2: [alpha * 1.0 * out[2] / (1 + EPS), -beta * -2.0 * out[2] / (-3 - EPS), -beta * -1.0 * out[2] / (-3 - EPS)],
    }
    for j in range(3):
        prediction, heatmap = inn.innvestigate(x, rel_for_class=j)
        torch.testing.assert_close(prediction, torch.tensor([out]), rtol=1e-15, atol=0)
        torch.testing.assert_close(heatmap, torch.tensor([expected[j]]), rtol=1e-14, atol=1e-16)
        if j < 2:
            assert abs(float(heatmap.sum()) - out[j]) < 1e-5 * abs(out[j])


def test_b_rule_beta_zero_drops_only_negative_neurons():
    layer = _linear([[-1.0, -1.0]], [0.0])
    with pytest.warns(UserWarning, match="only positive contributions"):
        inn = InnvestigateModel(layer, beta=0, method="b-rule")
    _, heatmap = inn.innvestigate(torch.tensor([[1.0, 2.0]]))
    assert torch.equal(heatmap, torch.zeros(1, 2))


def test_arg_max_ties_keep_every_tied_class():
    inn = InnvestigateModel(_linear([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]], [0.0, 0.0, 0.0]), epsilon=EPS)
    prediction, heatmap = inn.innvestigate(torch.tensor([[1.0, 2.0]]))
    assert prediction.tolist() == [[3.0, 3.0, 2.0]]
    assert inn.get_r_values_per_layer()[0].tolist() == [[3.0, 3.0, 0.0]]
    torch.testing.assert_close(heatmap, torch.tensor([[6 / (3 + EPS), 12 / (3 + EPS)]]), rtol=1e-15, atol=0)


def test_rel_for_class_list_selects_several_classes():
    inn = InnvestigateModel(_linear([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]], [0.0, 0.0, 0.0]), epsilon=EPS)
    _, heatmap = inn.innvestigate(torch.tensor([[1.0, 2.0]]), rel_for_class=[0, 2])
    expected = [1.0 * 3 / (3 + EPS), 2.0 * (3 / (3 + EPS) + 2 / (2 + EPS))]
    torch.testing.assert_close(heatmap, torch.tensor([expected]), rtol=1e-15, atol=0)
    _, last = inn.innvestigate(torch.tensor([[1.0, 2.0]]), rel_for_class=-1)
    torch.testing.assert_close(last, torch.tensor([[0.0, 2.0 * 2 / (2 + EPS)]]), rtol=1e-15, atol=0)


class _FunctionalLogSoftmax(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return F.log_softmax(self.layer(x), dim=1)


ENDINGS = {
    "softmax": lambda layer: nn.Sequential(layer, nn.Softmax(dim=1)),
    "log-softmax": lambda layer: nn.Sequential(layer, nn.LogSoftmax(dim=1)),
    "functional log-softmax": _FunctionalLogSoftmax,
    "sigmoid": lambda layer: nn.Sequential(layer, nn.Sigmoid()),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_normalised_endings_start_from_the_probability(ending):
    # logits [-1, 2.6]; class 1 has z (no bias) = 0.5 * 1 + 1 * 2 = 2.5
    model = ENDINGS[ending](_linear([[1.0, -1.0], [0.5, 1.0]], [0.0, 0.1]))
    logits = torch.tensor([-1.0, 2.6])
    value = torch.sigmoid(logits[1]) if ending == "sigmoid" else torch.softmax(logits, 0)[1]
    inn = InnvestigateModel(model, epsilon=EPS)
    prediction, heatmap = inn.innvestigate(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(heatmap, torch.tensor([[0.5 * value / (2.5 + EPS), 2.0 * value / (2.5 + EPS)]]),
                               rtol=1e-14, atol=0)
    values = inn.get_r_values_per_layer()
    if "log" in ending:
        assert prediction[0, 1] < 0
        assert values[0].tolist() == [[0.0, float(prediction[0, 1])]]  # the log-probability, no -1e6 entries
        if ending == "log-softmax":  # the relevance entering the LogSoftmax module: the probability
            torch.testing.assert_close(values[1], torch.tensor([[0.0, float(value)]]), rtol=1e-15, atol=0)
        else:  # a functional log_softmax is no module: the next entry is the Linear's input
            assert len(values) == 2 and torch.equal(values[1], heatmap)
    else:
        torch.testing.assert_close(values[0], torch.tensor([[0.0, float(value)]]), rtol=1e-15, atol=0)


def test_log_softmax_probability_one_is_not_lost():
    # log-probability exactly 0: the original gave an all-zero heatmap; the probability is 1
    model = nn.Sequential(_linear([[1.0], [-799.0]], [-1.0, 0.0]), nn.LogSoftmax(dim=1))
    prediction, heatmap = InnvestigateModel(model, epsilon=EPS).innvestigate(torch.tensor([[1.0]]))
    assert prediction[0, 0] == 0.0
    torch.testing.assert_close(heatmap, torch.tensor([[1 / (1 + EPS)]]), rtol=1e-15, atol=0)


def test_output_that_is_not_two_dimensional():
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(0.5)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    prediction, heatmap = InnvestigateModel(conv, epsilon=EPS).innvestigate(x)
    assert prediction.tolist() == [[2.5, 4.5, 6.5, 8.5]]
    expected = torch.zeros(1, 1, 2, 2)
    expected[0, 0, 1, 1] = 4.0 * 2.0 * 8.5 / (8.0 + EPS)
    torch.testing.assert_close(heatmap, expected, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------
# the rest of the interface


def test_innvestigate_without_input_explains_the_last_evaluated_one():
    inn = InnvestigateModel(_fill(SmallCNN()).eval(), epsilon=EPS)
    with pytest.raises(RuntimeError, match="evaluated at least once"):
        inn.innvestigate()
    with pytest.warns(UserWarning, match="No relevances"):
        assert inn.get_r_values_per_layer() is None
    output = inn(_cnn_input())
    torch.testing.assert_close(output, torch.tensor(CNN_PREDICTION), rtol=1e-14, atol=0)
    expected = torch.tensor(ORIGINAL["cnn e-rule p=1"][-1])
    for _ in range(2):  # the original raised AttributeError on a second call without input
        _, heatmap = inn.innvestigate()
        torch.testing.assert_close(heatmap.reshape(2, -1), expected, rtol=1e-12, atol=1e-15)


def _hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, name)) for m in model.modules()
               for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _global_hooks() -> int:
    module = nn.modules.module
    return sum(len(getattr(module, name)) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[:, 0].sum().backward()
    return x.grad


@pytest.mark.parametrize("method", ["e-rule", "b-rule"])
def test_model_is_left_untouched(method):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Dropout(0.5),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 2))
    model.train()
    model[0].weight.requires_grad_(False)
    x = torch.randn(2, 1, 4, 4)
    model.eval()
    gradient = _input_gradient(model, x)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, global_hooks = _hooks(model), _global_hooks()

    inn = InnvestigateModel(model, method=method, beta=0.5)
    first = inn.innvestigate(x)[1]
    second = inn.innvestigate(x)[1]
    assert torch.equal(first, second)  # explained in eval mode: Dropout and BatchNorm statistics are inactive

    assert _hooks(model) == hooks and _global_hooks() == global_hooks
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.eval()
    assert torch.equal(_input_gradient(model, x), gradient)  # the original left guided backprop on every ReLU


def test_is_a_module_around_the_model():
    model = nn.Sequential(nn.Linear(3, 2))
    inn = InnvestigateModel(model)
    assert list(inn.state_dict()) == ["model.0.weight", "model.0.bias"]
    inn.eval()
    assert not model.training
    assert inn.device == torch.device("cpu")
    assert "e-rule" in repr(inn)


def test_rejects_unknown_method():
    with pytest.raises(NotImplementedError, match="e-rule"):
        InnvestigateModel(nn.Linear(2, 2), method="z-rule")


def test_non_integer_exponent_with_negative_values_raises():
    inn = InnvestigateModel(_linear([[1.0, 1.0]], [0.0]), lrp_exponent=1.5)
    _, heatmap = inn.innvestigate(torch.tensor([[1.0, 4.0]]))
    torch.testing.assert_close(heatmap, torch.tensor([[1.0, 8.0]]) * 5.0 / (9.0 + 1e-6), rtol=1e-15, atol=0)
    with pytest.raises(NonFiniteError, match="lrp_exponent=1.5"):
        inn.innvestigate(torch.tensor([[1.0, -4.0]]))


def test_runs_under_no_grad_and_in_float32():
    torch.manual_seed(0)
    model = _cnn2d_random().float().eval()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float32)
    with torch.no_grad():
        prediction, heatmap = InnvestigateModel(model, method="b-rule").innvestigate(x)
    assert heatmap.dtype == torch.float32 and heatmap.shape == x.shape
    assert not prediction.requires_grad and not heatmap.requires_grad
    chosen = prediction.max(1).values
    assert math.isclose(float(heatmap[0].sum()), float(chosen[0]), rel_tol=1e-3)
