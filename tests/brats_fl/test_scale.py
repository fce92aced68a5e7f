"""The BraTS data path at real scale: compact cached cases, crops and whole volumes made from them, streamed
validation, and the whole-volume validation pass."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from monai import transforms as mt

from brats_fl.config import TrainConfig
from brats_fl.data import MODALITIES, case_files, find_cases
from brats_fl.engine import eval_dataset, predict_regions, train_dataset
from demodata.brats import RELEASE_SHAPE, generate_dataset
from brats_fl.transforms import CropToBraind, RandCropFullFramed, RestoreFullFramed, compact_nbytes


def _case(shape=(20, 18, 9), box=((3, 15), (2, 16), (1, 8)), seed=0):
    """A 4-channel volume and a BraTS label, zero outside ``box`` (skull-stripped, as BraTS is)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    label = np.zeros((1, *shape), np.float32)
    inside = (slice(None), *(slice(a, b) for a, b in box))
    image[inside] = rng.normal(size=image[inside].shape) + 3
    label[inside] = rng.choice([0, 1, 2, 4], size=label[inside].shape)
    return {"image": torch.as_tensor(image), "label": torch.as_tensor(label)}


def test_compact_case_keeps_only_the_brain_box_and_restores_exactly():
    case = _case()
    compact = CropToBraind()(case)
    assert tuple(compact["image"].shape) == (4, 12, 14, 7) and compact["box_start"] == [3, 2, 1]
    assert compact["full_shape"] == [20, 18, 9]
    restored = RestoreFullFramed()(compact)
    assert torch.equal(restored["image"], case["image"]) and torch.equal(restored["label"].float(), case["label"])
    empty = {"image": torch.zeros(4, 5, 6, 7), "label": torch.zeros(1, 5, 6, 7)}
    assert CropToBraind()(empty)["image"].shape == (4, 5, 6, 7)  # nothing nonzero: the whole extent is kept


@pytest.mark.parametrize("roi", [(8, 8, 8), (24, 8, 16), (20, 18, 9)])
def test_random_crop_of_a_compact_case_is_the_crop_of_the_padded_volume(roi):
    """Every crop equals SpatialPad(roi) + the same corner of the whole volume, and the corners cover every
    position a random crop of the padded volume can take."""
    case = _case()
    compact = CropToBraind()(case)
    padded = mt.SpatialPadd(keys=["image", "label"], spatial_size=roi)(case)
    frame = padded["image"].shape[1:]
    crop = RandCropFullFramed(roi)
    crop.set_random_state(seed=0)
    corners = set()
    for _ in range(200):
        out = crop(compact)
        corner = crop._corner
        corners.add(tuple(corner))
        window = (slice(None), *(slice(c, c + r) for c, r in zip(corner, roi)))
        assert torch.equal(out["image"], torch.as_tensor(padded["image"])[window])
        assert torch.equal(out["label"].float(), torch.as_tensor(padded["label"])[window])
        assert set(out) == {"image", "label"}
    for axis in range(3):
        assert {c[axis] for c in corners} == set(range(frame[axis] - roi[axis] + 1))


@pytest.fixture(scope="module")
def full_size_case(tmp_path_factory):
    """One generated case at the release's 240x240x155 voxels, as datalist entries."""
    root = tmp_path_factory.mktemp("brats_full")
    generate_dataset(root, 1, 0, shape=RELEASE_SHAPE, seed=5)
    files = case_files(find_cases(root)["HGG"][0])
    return [{"image": [str(files[m]) for m in MODALITIES], "label": str(files["seg"]), "name": "full"}]


@pytest.mark.slow
def test_cache_of_a_full_size_case_stays_within_its_bound(full_size_case):
    config = TrainConfig(num_workers=0)
    dataset = train_dataset(full_size_case, config)
    held = sum(compact_nbytes(item) for item in dataset._cache)
    assert held <= 40e6, held  # was about 250 MB: a float32 image and a 3-channel float32 label
    sample = dataset[0]
    assert sample["image"].shape == (4, *config.crop) and sample["label"].shape == (3, *config.crop)
    # The whole volume rebuilt for validation is the seed's preprocessing, up to float16 rounding.
    keys = ["image", "label"]
    seed_chain = mt.Compose([
        mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True), mt.EnsureChannelFirstd(keys=keys),
        mt.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
        mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])
    expected = seed_chain(full_size_case[0])
    restored = eval_dataset(full_size_case)[0]
    assert restored["image"].shape == (4, *RELEASE_SHAPE)
    assert torch.allclose(restored["image"], expected["image"].float(), rtol=2 ** -10, atol=1e-6)
    assert torch.equal(restored["label"].bool(), torch.as_tensor(expected["label"]).bool())
    assert np.allclose(np.asarray(restored["image"].affine), np.asarray(expected["image"].affine))


_PEAK_RSS = textwrap.dedent("""
    import json, resource, sys
    import psutil
    from brats_fl.engine import eval_dataset, read_ahead
    entries = json.loads(sys.argv[1])
    cached = sys.argv[2] == "cached"
    dataset = eval_dataset(entries) if cached else read_ahead(eval_dataset(entries, cached=False))
    for item in dataset:
        del item
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, psutil.Process().memory_info().rss / 2 ** 20)
""")


def _rss_mb(entries, mode):
    """(peak, final) RSS in MB of a process that reads every case of ``entries`` once."""
    import json

    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, json.dumps(entries), mode], capture_output=True,
                         text=True, check=True)
    peak, final = out.stdout.split()[-2:]
    return float(peak), float(final)


@pytest.mark.slow
def test_streamed_validation_memory_does_not_grow_with_the_cases(full_size_case):
    """Ten full-size cases take what two take when streamed (peak and after reading); kept in memory (the site's
    per-round validation) each costs its compact size, which the same measurement sees."""
    two = [dict(full_size_case[0], name=f"c{i}") for i in range(2)]
    ten = [dict(full_size_case[0], name=f"c{i}") for i in range(10)]
    streamed = [a - b for a, b in zip(_rss_mb(ten, "streamed"), _rss_mb(two, "streamed"))]
    cached = _rss_mb(ten, "cached")[1] - _rss_mb(two, "cached")[1]
    assert max(streamed) < 60, streamed
    assert cached > 100, cached  # held after reading: eight more compact cases, about 26 MB each


class _CountingModel(torch.nn.Module):
    """Three output channels of a fixed 1x1x1 convolution; records the size of every forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 3, 1)
        torch.nn.init.constant_(self.conv.weight, 0.5)
        torch.nn.init.constant_(self.conv.bias, -0.5)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_brain_window_validation_is_one_crop_centred_on_the_brain():
    case = _case(shape=(30, 26, 20), box=((4, 14), (5, 21), (2, 9)))  # the brain: 10 x 16 x 7 voxels
    image = case["image"]
    model = _CountingModel()
    config = TrainConfig(crop=(16, 16, 8), amp=False)
    brain = predict_regions(model, image, config, torch.device("cpu"))
    assert model.shapes == [(16, 16, 8)]
    model.shapes.clear()
    sliding = predict_regions(model, image, TrainConfig(crop=(16, 16, 8), val_window="sliding", amp=False),
                              torch.device("cpu"))
    assert len(model.shapes) > 1 and set(model.shapes) == {(16, 16, 8)}
    # A voxel-wise model sees no context, and predicts nothing on the zero background: both ways agree exactly.
    assert brain.shape == sliding.shape == (3, 30, 26, 20) and brain.any() and np.array_equal(brain, sliding)
    # A brain larger than the crop falls back to the sliding windows.
    model.shapes.clear()
    predict_regions(model, image, TrainConfig(crop=(8, 8, 8), amp=False), torch.device("cpu"))
    assert len(model.shapes) > 1
    with pytest.raises(ValueError, match="setting val_window: expected brain or sliding"):
        TrainConfig(val_window="whole")


def test_brain_window_is_centred_on_the_brain_and_predicts_nothing_outside():
    """A model that marks every voxel of its input: the marks are exactly the window, centred on the brain box
    and cut at the volume's edges."""

    class MarkAll(torch.nn.Module):
        def forward(self, x):
            return torch.full((1, 3, *x.shape[2:]), 10.0)

    image = _case(shape=(30, 26, 20), box=((0, 6), (5, 21), (2, 9)))["image"]
    regions = predict_regions(MarkAll(), image, TrainConfig(crop=(16, 16, 8), amp=False), torch.device("cpu"))
    # brain box x 0..6 -> window corner 3 - 8 = -5: x 0..11 inside the volume; y 5..21 -> 13 - 8 = 5: 5..21;
    # z 2..9 -> 5 - 4 = 1: 1..9.
    expected = np.zeros((3, 30, 26, 20), bool)
    expected[:, 0:11, 5:21, 1:9] = True
    assert np.array_equal(regions, expected)
