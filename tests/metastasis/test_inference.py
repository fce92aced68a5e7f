"""Whole-slide probability maps: exact geometry in both modes, tissue restriction, resumable folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metastasis import cli
from metastasis.inference.geometry import MapGeometry, tile_plan
from metastasis.inference.maps import load_map
from metastasis.inference.run import infer_slides, probability_map
from metastasis.data.slide import open_slide, read_rgb
from metastasis.data.tissue import compute_tissue_mask


class WindowMean(nn.Module):
    """A fully convolutional stand-in with no padding: output = a squashed mean of the red channel over each
    ``patch_size`` window at stride 32, so every output depends on its window alone and both modes must agree."""

    def __init__(self, patch_size: int = 64) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pool = nn.AvgPool2d(patch_size, stride=32)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.pool(x[:, :1]) * 4.0 + self.dummy


@pytest.fixture(scope="module")
def slide_and_tissue(camelyon_root):
    path = camelyon_root / "training/tumor/tumor_001.tif"
    return path, compute_tissue_mask(path)[0]


def test_geometry():
    g = MapGeometry(stride=32, patch_size=224, level0_size=(1000, 70))
    assert g.shape == (3, 32) and g.origin == (16, 16)
    x, y = g.centres(np.array([2]), np.array([31]))
    assert (x[0], y[0]) == (16 + 31 * 32, 16 + 2 * 32)


@pytest.mark.parametrize("stride, tile_outputs", [(32, 5), (32, 48), (64, 3)])
def test_tiled_and_patch_modes_compute_the_same_exact_grid(slide_and_tissue, stride, tile_outputs):
    path, tissue = slide_and_tissue
    model = WindowMean(64)
    tiled, info = probability_map(path, model, stride, tissue, "tiled", amp=False, tile_outputs=tile_outputs)
    patch, _ = probability_map(path, model, stride, tissue, "patch", amp=False, batch_size=7)
    assert tiled.shape == patch.shape == (-(-2048 // stride), -(-3072 // stride))
    assert np.abs(tiled - patch).max() < 1e-5
    on = tiled > 0
    assert 0 < info["tissue_outputs"] == on.sum() < on.size  # only tissue windows are evaluated
    # Map pixel (i, j) is the window centred at (stride/2 + j stride, stride/2 + i stride), read directly.
    i, j = np.argwhere(on)[len(np.argwhere(on)) // 2]
    g = MapGeometry(stride, 64, (3072, 2048))
    x, y = g.centres(np.array([i]), np.array([j]))
    slide = open_slide(path)
    window = read_rgb(slide, (int(x[0]) - 32, int(y[0]) - 32), 0, (64, 64), path, pad_outside=True)
    slide.close()
    red = (window[..., 0] / 255.0 - 0.485) / 0.229
    assert tiled[i, j] == pytest.approx(float(torch.sigmoid(torch.tensor(red.mean() * 4.0))), abs=1e-5)


def test_stain_normalisation_applies_the_slides_vectors_alike_in_both_modes(slide_and_tissue):
    path, tissue = slide_and_tissue
    model = WindowMean(64)
    plain, _ = probability_map(path, model, 64, tissue, "tiled", amp=False, tile_outputs=6)
    tiled, info = probability_map(path, model, 64, tissue, "tiled", amp=False, tile_outputs=6,
                                  stain_normalization="macenko")
    patch, _ = probability_map(path, model, 64, tissue, "patch", amp=False, stain_normalization="macenko")
    # float32 arithmetic on differently shaped reads: seen up to 1.2e-5 apart under load, 100x below the effect.
    assert np.abs(tiled - patch).max() < 5e-5 and np.abs(tiled - plain).max() > 1e-3
    assert info["stain_normalization"] == "macenko" and len(info["stain_vectors"]["he"]) == 3
    assert info["stain_seconds"] >= 0
    with pytest.raises(ValueError, match="stain_normalization must be one of"):
        probability_map(path, model, 64, tissue, stain_normalization="reinhard")


def test_tile_plan_covers_the_tissue_once_within_the_block_size_and_cheaper_than_bounding_boxes():
    """Two tissue pieces and a thin strand in one block: the plan covers every tissue pixel exactly once, no tile
    exceeds the block, and splitting leaves glass out (fewer input pixels than one box per block)."""
    todo = np.zeros((100, 70), bool)
    todo[2:30, 3:25] = True  # a piece in the top-left of the first block
    todo[40:60, 40:62] = True  # another in its bottom-right
    todo[70:72, 0:70] = True  # a strand across two blocks
    side = lambda n: 224 + 32 * (n - 1)  # noqa: E731
    boxes = tile_plan(todo, 64, side)
    covered = np.zeros(todo.shape, int)
    for i, j, h, w in boxes:
        assert 0 < h <= 64 and 0 < w <= 64 and i // 64 == (i + h - 1) // 64 and j // 64 == (j + w - 1) // 64
        covered[i:i + h, j:j + w] += 1
    assert covered[todo].min() == 1 and covered.max() == 1
    one_box_per_block = sum(side(h) * side(w) for h, w in [(58, 59), (2, 64), (2, 6)])
    assert sum(side(h) * side(w) for _, _, h, w in boxes) < 0.8 * one_box_per_block
    assert tile_plan(np.zeros((5, 5), bool), 64, side) == []
    assert tile_plan(np.ones((10, 10), bool), 64, side) == [(0, 0, 10, 10)]


def test_bad_requests(slide_and_tissue):
    path, tissue = slide_and_tissue
    with pytest.raises(ValueError, match="multiple of 32"):
        probability_map(path, WindowMean(), 48, tissue, "tiled")
    with pytest.raises(ValueError, match="mode must be one of"):
        probability_map(path, WindowMean(), 32, tissue, "fast")


def test_default_tile_keeps_its_pixels_at_any_stride(slide_and_tissue):
    """The default tile is the measured 2240-pixel one at every stride: its memory is that of its pixels."""
    from metastasis.config import DEFAULT_TILE_PIXELS, default_tile_outputs

    assert DEFAULT_TILE_PIXELS == 2240
    assert [default_tile_outputs(s) for s in (32, 64, 128, 4096)] == [64, 32, 16, 1]
    assert default_tile_outputs(32, patch_size=448) == 57  # 448 + 32 x 56 = 2240
    path, tissue = slide_and_tissue
    _, info = probability_map(path, WindowMean(), 64, tissue, "tiled", amp=False)
    assert info["tile_outputs"] == default_tile_outputs(64, patch_size=64) == 35  # 64 + 64 x 34 = 2240


def test_folder_is_resumable_and_outputs_are_complete(camelyon_root, tmp_path, caplog):
    slides = sorted(camelyon_root.glob("training/*/*.tif"))[:2]
    model = WindowMean(64)
    maps = infer_slides(slides, model, tmp_path, stride=64, amp=False, tile_outputs=8)
    for npy in maps:
        probs, meta = load_map(npy)
        assert meta["shape"] == list(probs.shape) and meta["stride"] == 64 and meta["origin"] == [32, 32]
        assert npy.with_name(npy.stem + "_heatmap.png").stat().st_size > 1000
    before = maps[0].stat().st_mtime_ns
    maps[1].with_suffix(".json").unlink()  # as if interrupted before the slide was marked done
    caplog.set_level("INFO")
    infer_slides(slides, model, tmp_path, stride=64, amp=False, tile_outputs=8)
    assert maps[0].stat().st_mtime_ns == before and "kept existing" in caplog.text
    assert json.loads(maps[1].with_suffix(".json").read_text())["tissue_outputs"] > 0
    with pytest.raises(ValueError, match="probability map file missing"):
        load_map(tmp_path / "none.npy")


def test_command_chain(camelyon_root, tmp_path, capsys):
    """infer -> detect -> evaluate with a real (untrained) checkpoint: every file lands and the FROC runs."""
    from metastasis.model import PatchClassifier

    checkpoint = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, checkpoint)
    slides = str(camelyon_root / "training")
    assert cli.main(["infer", slides, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "maps"),
                     "--stride", "64", "--tile-outputs", "16"]) == 0
    assert cli.main(["detect", str(tmp_path / "maps"), "--out", str(tmp_path / "det"), "--threshold", "0"]) == 0
    assert len(list((tmp_path / "det").glob("*.csv"))) == 4
    assert cli.main(["evaluate", slides, "--detections", str(tmp_path / "det"), "--annotations",
                     str(camelyon_root / "training/lesion_annotations"), "--maps", str(tmp_path / "maps"),
                     "--out", str(tmp_path / "froc")]) == 0
    out = capsys.readouterr().out
    assert "FROC score" in out and "slide-level AUC" in out
    result = json.loads((tmp_path / "froc/froc.json").read_text())
    assert result["n_slides"] == 4 and 0 <= result["froc_score"] <= 1 and set(result["sensitivity_at_fp_rate"]) \
        == {"0.25", "0.5", "1", "2", "4", "8"}
    assert cli.main(["evaluate", slides, "--detections", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "detections folder missing" in capsys.readouterr().err


def test_each_command_opens_each_slide_once_and_decodes_each_input_once(camelyon_root, tmp_path, monkeypatch):
    """tissue -> infer -> detect -> evaluate, counted at the readers: each command opens a slide at most once (the
    up-front checks read headers only), decodes each tissue mask and map at most once; detect and evaluate never
    open a slide for what a map's JSON records, and evaluate never decodes a map (its JSON holds the maximum)."""
    from collections import Counter

    import openslide

    from metastasis.data import tissue as tissue_module
    from metastasis.model import PatchClassifier

    opens, loads, decodes = Counter(), Counter(), Counter()

    class CountingSlide(openslide.OpenSlide):
        def __init__(self, filename, *args, **kwargs):
            opens[Path(filename).name] += 1
            super().__init__(filename, *args, **kwargs)

    real_load, real_png = np.load, tissue_module._read_png

    def counting_load(file, *args, **kwargs):
        loads[Path(file).name] += 1
        return real_load(file, *args, **kwargs)

    def counting_png(png, shape, exact=True, decode=True):
        decodes[png.name] += decode
        return real_png(png, shape, exact, decode)

    monkeypatch.setattr(openslide, "OpenSlide", CountingSlide)
    monkeypatch.setattr(np, "load", counting_load)
    monkeypatch.setattr(tissue_module, "_read_png", counting_png)
    checkpoint = tmp_path / "model.pt"
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, checkpoint)
    slides = camelyon_root / "training/tumor"
    names = sorted(p.name for p in slides.glob("*.tif"))

    def run(*argv: str) -> tuple[Counter, Counter, Counter]:
        for counter in (opens, loads, decodes):
            counter.clear()
        assert cli.main(list(argv)) == 0
        return Counter(opens), Counter(loads), Counter(decodes)

    assert run("tissue", str(slides), "--out", str(tmp_path / "masks"))[0] == Counter({n: 1 for n in names})
    opened, loaded, decoded = run("infer", str(slides), "--checkpoint", str(checkpoint), "--masks",
                                  str(tmp_path / "masks"), "--out", str(tmp_path / "maps"), "--stride", "128")
    assert opened == Counter({n: 1 for n in names})
    assert decoded == Counter({n.replace(".tif", "_tissue.png"): 1 for n in names})
    opened, loaded, _ = run("detect", str(tmp_path / "maps"), "--out", str(tmp_path / "det"), "--threshold", "0")
    assert not opened and loaded == Counter({n.replace(".tif", ".npy"): 1 for n in names})
    opened, loaded, _ = run("evaluate", str(slides), "--detections", str(tmp_path / "det"), "--annotations",
                            str(camelyon_root / "training/lesion_annotations"), "--maps", str(tmp_path / "maps"),
                            "--out", str(tmp_path / "froc"), "--resamples", "0")
    assert opened == Counter({n: 1 for n in names}) and not loaded
    maps = json.loads((tmp_path / "froc/froc.json").read_text())
    assert maps["n_slides"] == len(names)


def test_maps_record_their_slide_and_settings(camelyon_root, tmp_path, monkeypatch, capsys):
    """A map's JSON holds its slide's absolute path and pixel size, so detect runs from any folder and without the
    slide; a rerun reuses maps made with its settings and refuses others, naming what differs."""
    from metastasis.model import PatchClassifier

    checkpoint = tmp_path / "model.pt"
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, checkpoint)
    slide = tmp_path / "slides/s.tif"
    slide.parent.mkdir()
    slide.write_bytes(sorted(camelyon_root.glob("training/tumor/*.tif"))[0].read_bytes())
    monkeypatch.chdir(tmp_path / "slides")  # a relative slide path, as a user types it
    args = ["infer", "s.tif", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "maps"), "--stride", "128"]
    assert cli.main(args) == 0
    meta = json.loads((tmp_path / "maps/s.json").read_text())
    assert meta["slide"] == str(slide) and meta["mpp"] == pytest.approx(0.243)
    assert meta["made_with"]["stride"] == 128 and meta["made_with"]["tissue_mask"] == "computed"
    before = (tmp_path / "maps/s.npy").stat().st_mtime_ns
    assert cli.main(args) == 0 and (tmp_path / "maps/s.npy").stat().st_mtime_ns == before  # same settings: kept
    capsys.readouterr()
    assert cli.main([*args[:-1], "256"]) == 2
    assert "s.json: made with other settings than this run's (stride 128 -> 256); pass --overwrite" in \
        capsys.readouterr().err
    slide.unlink()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["detect", str(tmp_path / "maps"), "--out", str(tmp_path / "det"), "--threshold", "0"]) == 0
    assert (tmp_path / "det/s.csv").read_text()


def test_infer_applies_the_checkpoints_stain_normalisation(camelyon_root, tmp_path, capsys):
    from metastasis.model import PatchClassifier

    slide = str(camelyon_root / "training/tumor/tumor_001.tif")
    for value, code in (("macenko", 0), ("reinhard", 2)):
        checkpoint = tmp_path / f"{value}.pt"
        torch.save({"model": PatchClassifier(64).state_dict(),
                    "train_conf": {"patch_size": 64, "stain_normalization": value}}, checkpoint)
        assert cli.main(["infer", slide, "--checkpoint", str(checkpoint), "--out", str(tmp_path / value),
                         "--stride", "64"]) == code
    meta = json.loads((tmp_path / "macenko/tumor_001.json").read_text())
    assert meta["stain_normalization"] == "macenko" and "stain_vectors" in meta
    assert "reinhard.pt: its train_conf has an unknown stain_normalization 'reinhard'" in capsys.readouterr().err


_MEMORY_PROBE = """
import json, sys
import torch
from metastasis.inference.run import infer_slides
from metastasis.model import PatchClassifier

def rss_mb():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) // 1024 for line in handle if line.startswith("VmRSS"))

torch.manual_seed(0)
torch.set_num_threads(1)
model = PatchClassifier(224)
after = []
for slide in sys.argv[2:]:  # one call per slide, as a folder run does one slide after another
    infer_slides([slide], model, sys.argv[1], tile_outputs=32, overwrite=True)
    after.append(rss_mb())
print(json.dumps(after))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the RSS from /proc")
def test_infer_memory_does_not_grow_from_slide_to_slide(camelyon_root, tmp_path):
    """Over four slides whose tissue differs (so do the tile shapes), what the process holds after each slide stays
    where the first slide left it. Before freed memory was given back (before a larger tile, after each slide), it
    grew by about 210 MB over these four slides (1.1 GB over eight 12k x 16k slides:
    benchmarks/results/infer_memory.md)."""
    slides = [str(p) for p in sorted(camelyon_root.glob("training/*/*.tif"))]
    run = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "maps"), *slides],
                         capture_output=True, text=True, check=True)
    after = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(after) == 4 and max(after) - after[0] < 150, after  # here: +86 MB; before the change +206


def test_heatmap_leaves_the_slides_shared_thumbnail_alone(camelyon_root, tmp_path):
    from metastasis.inference.maps import write_heatmap
    from metastasis.data.slide import Slide

    with Slide(camelyon_root / "training/tumor/tumor_001.tif") as slide:
        before = slide.downsampled(32)[0].copy()
        write_heatmap(slide, np.full(before.shape[:2], 0.9, np.float32), 32, tmp_path / "heat.png")
        assert np.array_equal(slide.downsampled(32)[0], before)


def test_slides_shared_out_over_processes_give_the_maps_of_one(camelyon_root, tmp_path, capsys):
    """`infer --processes 2` (two CPU processes by torch.distributed's launcher, each slide done by one of them)
    writes the maps one process writes, value for value; a rank that meets a bad input ends the command with
    that input's one-line error."""
    from metastasis.model import PatchClassifier

    checkpoint = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save({"model": PatchClassifier(64).state_dict(), "train_conf": {"patch_size": 64}}, checkpoint)
    common = [str(camelyon_root / "training"), "--checkpoint", str(checkpoint), "--stride", "64", "--tile-outputs",
              "16", "--num-threads", "1"]
    assert cli.main(["infer", *common, "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["infer", *common, "--out", str(tmp_path / "two"), "--processes", "2"]) == 0
    one, two = sorted((tmp_path / "one").glob("*.npy")), sorted((tmp_path / "two").glob("*.npy"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 4
    for a, b in zip(one, two):
        assert np.array_equal(np.load(a), np.load(b)), a.name
        meta_a, meta_b = (json.loads(p.with_suffix(".json").read_text()) for p in (a, b))
        assert meta_a["made_with"] == meta_b["made_with"] and meta_a["max_probability"] == meta_b["max_probability"]
    capsys.readouterr()
    # A tissue mask that breaks only when its slide's turn comes (its PNG decodes to garbage after the header).
    masks = tmp_path / "masks"
    assert cli.main(["tissue", str(camelyon_root / "training"), "--out", str(masks)]) == 0
    png = sorted(masks.glob("*_tissue.png"))[-1]
    png.write_bytes(png.read_bytes()[:60] + b"\0" * (png.stat().st_size - 60))
    capsys.readouterr()
    assert cli.main(["infer", *common, "--out", str(tmp_path / "bad"), "--masks", str(masks),
                     "--processes", "2"]) == 2
    err = capsys.readouterr().err
    assert png.name in err and "Traceback" not in err, err
