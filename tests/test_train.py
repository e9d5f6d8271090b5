"""Training, checkpoints, model files and prediction (lrp.train).

Reference numbers are computed independently here: cross-entropy and softmax with torch.nn.functional
on the returned model, best epochs with pandas on the history, weights of shorter runs from separate
runs; nothing is copied from earlier runs of this code.
"""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lrp.data import HDF5Dataset, Preprocess, split_patients, write_split
from lrp.errors import DataError
from lrp.models import DemoCNN3d, PaperCNN3d, SmallCNN2d
from lrp.train import TrainConfig, describe_architecture, load_model, predict, save_model, train

SHAPE = (12, 14, 12)


class Blobs(Dataset):
    """Volumes (1, 12, 14, 12) of noise in [0, 0.5); class 1 adds +1 to a block. Dicts like lrp.data."""

    def __init__(self, count: int, seed: int, flip_labels: bool = False):
        generator = torch.Generator().manual_seed(seed)
        self.labels = np.arange(count) % 2
        self.x = torch.rand(count, 1, *SHAPE, generator=generator) * 0.5
        self.x[torch.as_tensor(self.labels) == 1, :, 2:7, 3:9, 2:7] += 1.0
        if flip_labels:
            self.labels = 1 - self.labels
        self.class_names = ["HC", "AD"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": int(self.labels[i]), "subject": f"s{i:02d}", "patient": f"p{i // 2}",
                "index": i}


class Interrupted(Dataset):
    """``data`` that raises after ``reads`` item reads, like a run killed part-way through an epoch."""

    def __init__(self, data: Dataset, reads: int):
        self.data, self.reads, self.labels = data, reads, data.labels

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads -= 1
        if self.reads < 0:
            raise KeyboardInterrupt("simulated interruption")
        return self.data[i]


def tiny_net(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """Conv3d -> ReLU -> global max pool -> dropout -> Linear: separates Blobs in a few epochs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(4, 2))


def tiny_architecture(**kwargs) -> dict:
    return {"factory": f"{__name__}:tiny_net", "kwargs": kwargs}


def _config(**changes) -> TrainConfig:
    settings = {"epochs": 6, "batch_size": 8, "lr": 0.05, "patience": None, "device": "cpu", "seed": 0}
    return TrainConfig(**{**settings, **changes})


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_separable_toy_set_is_learned():
    model = tiny_net()
    result = train(model, Blobs(32, seed=1), Blobs(16, seed=2), _config(), progress=False)
    assert list(result.history.columns[:5]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert result.history["epoch"].tolist() == list(range(1, 7))
    assert result.best_val_acc >= 0.9
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    # the reported validation metrics are those of the returned model
    val = Blobs(16, seed=2)
    with torch.no_grad():
        logits = model.eval()(val.x)
    y = torch.as_tensor(val.labels)
    assert result.best_val_loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert result.best_val_acc == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_training_flags_and_device_are_restored():
    model = tiny_net().eval()
    train(model, Blobs(8, seed=1), None, _config(epochs=1), progress=False)
    assert not any(module.training for module in model.modules())


@pytest.mark.parametrize("monitor", ["val_loss", "val_acc"])
def test_early_stopping_keeps_the_best_epoch(monitor):
    # validation labels are the opposite of the training labels: the validation loss rises as the
    # model learns, so an early epoch is best and patience runs out
    train_data, val_data = Blobs(32, seed=1), Blobs(16, seed=2, flip_labels=True)
    model = tiny_net()
    result = train(model, train_data, val_data, _config(epochs=20, patience=2, monitor=monitor), progress=False)
    history = result.history
    if monitor == "val_loss":
        best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    else:  # highest accuracy, ties to the lower loss
        best = int(history.sort_values(["val_acc", "val_loss"], ascending=[False, True])["epoch"].iloc[0])
    assert result.best_epoch == best
    assert result.stopped_early and len(history) == best + 2 < 20
    reference = tiny_net()
    train(reference, train_data, None, _config(epochs=best), progress=False)
    assert _same_weights(model, reference)


def test_resume_after_interruption_gives_the_uninterrupted_weights(tmp_path):
    config = _config(epochs=4, augment=True)
    architecture = tiny_architecture(dropout=0.3)
    train_data, val_data = Blobs(20, seed=1), Blobs(8, seed=2)
    uninterrupted = tiny_net(dropout=0.3)
    expected = train(uninterrupted, train_data, val_data, config, out_dir=tmp_path / "a", progress=False,
                     architecture=architecture)

    resumed = tiny_net(dropout=0.3)
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after two checkpoints
        train(resumed, Interrupted(train_data, reads=2 * 20 + 5), val_data, config, out_dir=tmp_path / "b",
              progress=False, architecture=architecture)
    assert not (tmp_path / "b" / "model.json").exists()
    fresh = tiny_net(seed=123, dropout=0.3)  # a new process would start from other weights: the checkpoint wins
    result = train(fresh, train_data, val_data, config, out_dir=tmp_path / "b", progress=False,
                   architecture=architecture)
    assert result.resumed_from == 2
    assert _same_weights(fresh, uninterrupted)
    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert result.history[columns].equals(expected.history[columns])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.pt", "model.json", "model.pt"]
    again = tiny_net(seed=7, dropout=0.3)  # a finished run only restores its result
    assert train(again, train_data, val_data, config, out_dir=tmp_path / "b", progress=False,
                 architecture=architecture).resumed_from == 4
    assert _same_weights(again, uninterrupted)


def test_training_from_an_hdf5_split(tmp_path):
    blobs = Blobs(24, seed=1)
    with h5py.File(tmp_path / "data.h5", "w") as file:
        file["X"] = blobs.x.numpy()
        file["y"] = blobs.labels
        file["patient"] = np.arange(24) // 2
    data = HDF5Dataset(tmp_path / "data.h5", patient="patient", transform=Preprocess(), classes=["HC", "AD"])
    paths = write_split(split_patients(data.manifest, val_fraction=0.25, test_fraction=0.25), tmp_path / "split")
    result = train(tiny_net(), data.select(paths["train"]), data.select(paths["val"]), _config(epochs=3),
                   out_dir=tmp_path / "run", progress=False, architecture=tiny_architecture())
    model, info = load_model(result.model_info)
    assert info["preprocessing"] == {"minmax": True, "mask": None, "grid": None, "invert": False}
    assert info["class_names"] == ["HC", "AD"] and info["input_shape"] == [1, *SHAPE]
    table = predict(model, data.select(paths["test"]), progress=False)
    assert table["subject"].tolist() == pd.read_csv(paths["test"], dtype={"subject": str})["subject"].tolist()


def test_checkpoint_with_another_config_is_refused(tmp_path):
    train(tiny_net(), Blobs(8, seed=1), None, _config(epochs=1), out_dir=tmp_path, progress=False,
          architecture=tiny_architecture())
    with pytest.raises(DataError, match="lr"):
        train(tiny_net(), Blobs(8, seed=1), None, _config(epochs=2, lr=0.01), out_dir=tmp_path, progress=False,
              architecture=tiny_architecture())


def test_class_balanced_loss():
    data = Blobs(12, seed=1)
    data.labels = np.array([0] * 9 + [1] * 3)  # 9 : 3 -> weights 12 / (2·9), 12 / (2·3)
    model = tiny_net()
    result = train(model, data, data, _config(epochs=1, class_balanced=True), progress=False)
    with torch.no_grad():
        logits = model.eval()(data.x)
    weights = torch.tensor([12 / 18, 12 / 6])
    expected = F.cross_entropy(logits, torch.as_tensor(data.labels), weight=weights).item()
    assert result.best_val_loss == pytest.approx(expected, rel=1e-5)


def test_model_files_round_trip(tmp_path):
    model = PaperCNN3d.for_grid(SHAPE, channels=(2, 2, 4, 4), hidden=8)
    data = Blobs(8, seed=1)
    result = train(model, data, data, _config(epochs=2, lr=1e-3), out_dir=tmp_path, progress=False,
                   preprocessing={"minmax": True, "mask": None, "grid": list(SHAPE)})
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["architecture"]["name"] == "PaperCNN3d"
    assert info["input_shape"] == [1, *SHAPE]
    assert info["class_names"] == ["HC", "AD"]
    assert info["preprocessing"]["grid"] == list(SHAPE)
    assert info["training"]["epochs"] == 2 and info["metrics"]["best_epoch"] == result.best_epoch
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    loaded, loaded_info = load_model(tmp_path)
    assert loaded_info == info and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(data.x), model.eval()(data.x), rtol=0, atol=0)


@pytest.mark.parametrize("make, shape", [
    (lambda: PaperCNN3d.for_grid(SHAPE, channels=(2, 2, 4, 4), hidden=8, dropout=0.3), (1, *SHAPE)),
    (lambda: DemoCNN3d(SHAPE, channels=(2, 4), dropout=0.1, num_classes=3), (1, *SHAPE)),
    (lambda: SmallCNN2d((8, 8), channels=(3, 5), hidden=7, num_classes=4), (1, 8, 8)),
], ids=["PaperCNN3d", "DemoCNN3d", "SmallCNN2d"])
def test_built_in_architectures_are_described_and_rebuilt(tmp_path, make, shape):
    model = make().eval()
    architecture = describe_architecture(model)
    save_model(model, tmp_path, architecture=architecture, preprocessing=None,
               class_names=[str(k) for k in range(model.classifier[-1].out_features)], metrics=None)
    loaded, info = load_model(tmp_path)
    assert type(loaded) is type(model) and info["input_shape"] == list(shape)
    dropouts = [[m.p for m in net.modules() if isinstance(m, nn.Dropout)] for net in (model, loaded)]
    assert dropouts[0] == dropouts[1]
    x = torch.rand(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_model_with_a_factory_and_load_it(tmp_path):
    model = PaperCNN3d.for_grid(SHAPE, channels=(2, 2, 4, 4), hidden=8)
    architecture = {"factory": "lrp.models:PaperCNN3d.for_grid",
                    "kwargs": {"input_shape": list(SHAPE), "channels": [2, 2, 4, 4], "hidden": 8}}
    path = save_model(model, tmp_path, architecture=architecture, preprocessing=None, class_names=["a", "b"],
                      metrics={"val_acc": float("nan")})
    loaded, info = load_model(path)
    assert info["metrics"] == {"val_acc": None} and info["input_shape"] == [1, *SHAPE]
    assert _same_weights(loaded, model)


def test_model_file_errors(tmp_path):
    model = tiny_net()
    with pytest.raises(ValueError, match="factory"):
        describe_architecture(model)
    with pytest.raises(ValueError, match="does not rebuild"):
        save_model(model, tmp_path, architecture={"name": "SmallCNN2d", "kwargs": {"input_shape": [8, 8]}},
                   preprocessing=None, class_names=["a", "b"], metrics=None)
    with pytest.raises(DataError, match="too small"):
        save_model(model, tmp_path, architecture={"name": "PaperCNN3d", "kwargs": {"input_shape": list(SHAPE)}},
                   preprocessing=None, class_names=["a", "b"], metrics=None)
    assert not list(tmp_path.iterdir())
    save_model(model, tmp_path, architecture=tiny_architecture(), preprocessing=None, class_names=["a", "b"],
               metrics=None)
    info = json.loads((tmp_path / "model.json").read_text())
    info["architecture"] = {"factory": f"{__name__}:tiny_net_absent"}
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="cannot import factory"):
        load_model(tmp_path / "model.json")
    info["architecture"] = {"name": "SmallCNN2d", "kwargs": {"input_shape": [8, 8]}}
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="cannot load weights"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(DataError, match="model.json"):
        load_model(tmp_path)


def test_predict_matches_softmax_and_leaves_the_model_alone():
    model = tiny_net(dropout=0.5).train()
    data = Blobs(10, seed=3)
    table = predict(model, data, batch_size=4, device="cpu", progress=False)
    assert all(module.training for module in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert list(table.columns) == ["subject", "patient", "label", "prediction", "prob_HC", "prob_AD"]
    assert table["subject"].tolist() == [f"s{i:02d}" for i in range(10)]
    with torch.no_grad():
        expected = F.softmax(model.eval()(data.x), dim=1).numpy()
    np.testing.assert_allclose(table[["prob_HC", "prob_AD"]].to_numpy(), expected, rtol=1e-5)
    assert table["prediction"].tolist() == expected.argmax(1).tolist()
    assert table["label"].tolist() == data.labels.tolist()


def test_unlabelled_training_data_are_refused():
    data = Blobs(4, seed=1)
    data.labels = np.array([0, 1, -1, 0])
    with pytest.raises(DataError, match="label"):
        train(tiny_net(), data, None, _config(epochs=1), progress=False)
