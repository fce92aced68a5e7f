"""Patch classification scores (hand-computed), augmentations, and training on generated slides."""

import json
import math

import numpy as np
import pytest
import torch

from metastasis import cli
from metastasis.config import TrainConfig
from metastasis.engine import train
from metastasis.metrics import classification_scores, roc_auc
from metastasis.data.patch_lists import read_patch_list
from metastasis.data.transforms import ColorJitter, normalize, to_input, to_unit, train_augmentation


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 3 of the 4 positive-negative pairs ordered right
    ([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1], 0.875),  # one tie counts one half: (1 + 1 + 1 + 0.5) / 4
    ([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0], 0.5),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.1, 0.2, 0.3], [0, 1, 1], 1.0),
])
def test_roc_auc_hand_cases(scores, labels, expected):
    assert roc_auc(scores, labels) == pytest.approx(expected)


def test_roc_auc_undefined_and_errors():
    assert math.isnan(roc_auc([0.2, 0.4], [1, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0.2, 0.4], [1, 2])
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        roc_auc([0.2, 0.4], [1, 0, 1])


def test_classification_scores():
    s = classification_scores([0.9, 0.5, 0.49, 0.1, 0.7], [1, 1, 1, 0, 0])
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (2, 1, 1, 1)  # 0.5 counts as tumour
    assert s["accuracy"] == pytest.approx(3 / 5) and s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(1 / 2) and s["n"] == 5
    with pytest.raises(ValueError, match="no predictions"):
        classification_scores([], [])


def test_input_convention():
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    x = to_input(rgb)
    assert x.shape == (2, 3, 8, 8)
    assert x[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229) and x[0, 1, 0, 0] == pytest.approx(-0.456 / 0.224)
    assert torch.allclose(normalize(to_unit(rgb[0])), x[0])
    with pytest.raises(ValueError, match="expected RGB"):
        to_input(np.zeros((8, 8)))


def test_color_jitter():
    grey = torch.full((3, 16, 16), 0.5)
    neutral = ColorJitter(0, 0, 0, 0)
    assert torch.allclose(neutral(grey), grey)
    hue_only = ColorJitter(0, 0, 0, 0.5)
    assert torch.allclose(hue_only(grey), grey, atol=1e-5)  # a hue turn leaves greys grey
    pink = torch.tensor([0.87, 0.64, 0.81]).view(3, 1, 1).expand(3, 16, 16).clone()
    hue_only.set_random_state(0)
    turned = hue_only(pink)
    assert not torch.allclose(turned, pink, atol=1e-2)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    assert (turned * luma).sum(0).mean() == pytest.approx(float((pink * luma).sum(0).mean()), abs=0.02)
    jitter = ColorJitter()
    for seed in range(5):
        jitter.set_random_state(seed)
        out = jitter(torch.rand(3, 16, 16))
        assert out.min() >= 0 and out.max() <= 1


def test_augmentation_is_seeded():
    image = torch.rand(3, 32, 32)
    a = train_augmentation(seed=1)
    b = train_augmentation(seed=1)
    outs_a = [torch.as_tensor(a(image)) for _ in range(4)]
    outs_b = [torch.as_tensor(b(image)) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(outs_a, outs_b))
    assert all(o.shape == (3, 32, 32) for o in outs_a)
    assert not all(torch.equal(outs_a[0], o) for o in outs_a[1:])


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(patch_size=100)
    assert TrainConfig().lr == 1e-3 and TrainConfig().patch_size == 224


@pytest.mark.parametrize("hed_jitter", [TrainConfig().hed_jitter, 0.05], ids=["default", "hed_light"])
def test_training_learns_and_resumes(camelyon_root, camelyon_patches, tmp_path, hed_jitter):
    """The default recipe (only the patch and batch sizes made small), and the same with Tellez's HED-light stain
    jitter, learn on 64-pixel patches of the generated slides, all of one look (one centre): validation accuracy
    rises from the first epoch to the third and tumour ranks above normal (AUC); a second call with more epochs
    resumes where the first stopped."""
    patches = read_patch_list(camelyon_patches, camelyon_root)
    config = TrainConfig(patch_size=64, batch_size=16, epochs=4, num_workers=0, seed=0, hed_jitter=hed_jitter)
    assert config.augment  # Clara's augmentations on
    best = train(patches, config, tmp_path)
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    accuracy = [row["val_accuracy"] for row in history]
    assert accuracy[2] >= accuracy[0] + 0.05 and accuracy[3] >= accuracy[0] + 0.05, accuracy
    assert max(row["val_auc"] for row in history) >= 0.95 and history[-1]["val_loss"] < history[0]["val_loss"]
    assert best["val_accuracy"] == max(row["val_accuracy"] for row in history)
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,train_loss,val_loss,val_accuracy")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = torch.load(tmp_path / "best_model.pt", weights_only=True)
    assert checkpoint["epoch"] == best["epoch"] and checkpoint["train_conf"]["patch_size"] == 64
    train(patches, TrainConfig.from_dict({**config.to_dict(), "epochs": 5}), tmp_path)
    assert [row["epoch"] for row in json.loads((tmp_path / "metrics.json").read_text())] == [1, 2, 3, 4, 5]


def test_cli_train_and_validate(camelyon_root, camelyon_patches, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--patches", str(camelyon_patches), "--data-root", str(camelyon_root), "--out",
                     str(out), "--epochs", "1", "--set", "patch_size=64", "--set", "num_workers=0"]) == 0
    assert "best model: epoch 1" in capsys.readouterr().out
    csv_path = tmp_path / "probabilities.csv"
    assert cli.main(["validate", "--checkpoint", str(out / "best_model.pt"), "--patches", str(camelyon_patches),
                     "--data-root", str(camelyon_root), "--num-workers", "0", "--csv", str(csv_path)]) == 0
    assert "on validation (120 patches): accuracy" in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "image,y,x,label,probability" and len(lines) == 121
    assert cli.main(["train", "--patches", str(camelyon_patches), "--out", str(out), "--set", "patch_size=224"]) == 2
    assert "training/tumor/tumor_002.tif: slide file missing" in capsys.readouterr().err  # paths need --data-root
    assert cli.main(["train", "--patches", str(camelyon_patches), "--data-root", str(camelyon_root), "--out",
                     str(out), "--set", "patch_size=224"]) == 2
    assert "made for 64-pixel patches" in capsys.readouterr().err


def test_data_parallel_training(camelyon_root, camelyon_patches, tmp_path, capsys):
    """`train --set processes=2` (the recipe's setting; `--processes` overrides it): two CPU processes train one
    patch classifier on their shares of the patches; the validation accuracy and AUC are over all 120 validation
    patches, gathered from both."""
    from metastasis.engine import validate_checkpoint

    out = tmp_path / "run"
    assert cli.main(["train", "--patches", str(camelyon_patches), "--data-root", str(camelyon_root), "--out",
                     str(out), "--epochs", "1", "--set", "patch_size=64", "--set", "num_workers=0", "--set",
                     "num_threads=1", "--set", "amp=false", "--set", "processes=2"]) == 0
    assert "best model: epoch 1" in capsys.readouterr().out
    row = json.loads((out / "metrics.json").read_text())[0]
    scores = validate_checkpoint(out / "best_model.pt", camelyon_patches, camelyon_root, "validation",
                                 tmp_path / "p.csv", num_workers=0, num_threads=1, device="cpu")
    assert scores["n"] == 120 and row["val_auc"] == pytest.approx(scores["auc"], abs=1e-6)
