"""The ResNet18 patch classifier: torchvision's state-dict layout, shapes, pretrained weights, checkpoints."""

import pytest
import torch

from metastasis.model import PatchClassifier, load_checkpoint, load_pretrained


def _torchvision_resnet18_keys():
    """The state-dict keys of torchvision's ``resnet18()``, written out from its definition."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for layer in range(1, 5):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            keys += [f"{prefix}.conv1.weight"] + [f"{prefix}.bn1.{k}" for k in bn]
            keys += [f"{prefix}.conv2.weight"] + [f"{prefix}.bn2.{k}" for k in bn]
            if layer > 1 and block == 0:
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{k}" for k in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_torchvision_layout():
    state = PatchClassifier().state_dict()
    assert list(state) == _torchvision_resnet18_keys() and len(state) == 122
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["fc.weight"].shape == (1, 512, 1, 1) and state["fc.bias"].shape == (1,)


def test_shapes_patch_and_tile():
    model = PatchClassifier().eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1, 1, 1)
        assert model(torch.zeros(1, 3, 224 + 3 * 32, 224 + 2 * 32)).shape == (1, 1, 4, 3)
        assert PatchClassifier(64).eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="smaller than the 224-pixel patch"):
        model(torch.zeros(1, 3, 200, 224))
    with pytest.raises(ValueError, match="multiple of 32"):
        PatchClassifier(100)


def _imagenet_like_state(outputs=1000):
    """A torchvision-style ResNet18 state dict: our backbone with a linear (outputs x 512) fc."""
    torch.manual_seed(7)
    state = {k: v.clone() for k, v in PatchClassifier().state_dict().items()}
    state["fc.weight"] = torch.randn(outputs, 512)
    state["fc.bias"] = torch.randn(outputs)
    return state


def test_load_pretrained_imagenet_weights(tmp_path):
    path = tmp_path / "resnet18-f37072fd.pth"
    state = _imagenet_like_state()
    torch.save(state, path)
    model = PatchClassifier()
    head_before = model.fc.weight.clone()
    assert load_pretrained(model, path) == ["fc.weight", "fc.bias"]
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.fc.weight, head_before)
    one = _imagenet_like_state(outputs=1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in one.items()}}, path)
    assert load_pretrained(model, path) == []
    assert torch.equal(model.fc.weight.flatten(), one["fc.weight"].flatten())


def test_pretrained_weights_at_construction(tmp_path, monkeypatch):
    """How the server builds a job's first global model (metastasis.job): the file's backbone over the seeded
    initialisation, the path's $VARS expanded; a head that does not fit keeps its initialisation."""
    state = _imagenet_like_state()
    torch.save(state, tmp_path / "resnet18.pth")
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    model = PatchClassifier(224, seed=3, pretrained="$WEIGHTS_DIR/resnet18.pth")
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.fc.weight, PatchClassifier(224, seed=3).fc.weight)
    with pytest.raises(ValueError, match="weights file missing"):
        PatchClassifier(pretrained=tmp_path / "none.pth")


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="weights file missing"):
        load_pretrained(PatchClassifier(), tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not torch")
    with pytest.raises(ValueError, match="cannot read pretrained weights"):
        load_pretrained(PatchClassifier(), bad)
    state = _imagenet_like_state()
    del state["layer4.1.bn2.weight"]
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"not a ResNet18 state dict \(missing \['layer4.1.bn2.weight'\], "
                                         r"mismatched \['conv1.weight"):
        load_pretrained(PatchClassifier(), bad)


def test_checkpoint_round_trip(tmp_path):
    model = PatchClassifier(96)
    path = tmp_path / "best_model.pt"
    torch.save({"model": model.state_dict(), "train_conf": {"patch_size": 96}, "epoch": 3}, path)
    loaded, meta = load_checkpoint(path)
    assert loaded.patch_size == 96 and meta["epoch"] == 3 and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    torch.save({"model": model.state_dict()}, path)  # no recipe: built as the seed's 224 (same tensors)
    assert load_checkpoint(path)[0].patch_size == 224
    state = model.state_dict()
    state.pop("fc.bias")
    torch.save(state, path)
    with pytest.raises(ValueError, match="weights do not fit a 224-pixel PatchClassifier"):
        load_checkpoint(path)
    path.write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="checkpoint missing"):
        load_checkpoint(tmp_path / "none.pt")
