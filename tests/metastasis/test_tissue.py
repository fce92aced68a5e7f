"""Tissue masks: found on generated slides, bounded-memory downsampled reading, files and their errors."""

import json

import numpy as np
import pytest
from PIL import Image

from metastasis import cli
from metastasis.data import slide as slide_module
from metastasis.data.slide import SlideError, open_slide
from metastasis.data.slide import read_downsampled
from metastasis.data.tissue import TissueMask, compute_tissue_mask, prepare_tissue_masks, tissue_mask


def _saturation(rgb):
    rgb = rgb.astype(float)
    top = rgb.max(-1)
    return (top - rgb.min(-1)) / np.maximum(top, 1)


def test_tissue_found_background_not(camelyon_root):
    for path in sorted(camelyon_root.glob("training/*/*.tif")):
        mask, rgb = compute_tissue_mask(path)
        stained = _saturation(rgb) > 0.25
        glass = (rgb.min(-1) > 225) & (_saturation(rgb) < 0.04)
        assert stained.sum() > 100 and glass.sum() > 100
        assert mask.mask[stained].mean() > 0.97, path
        assert mask.mask[glass].mean() < 0.03, path
        assert mask.downsample == pytest.approx(32, rel=0.01)
        assert mask.mask.shape == (64, 96)


def test_blank_glass_has_no_tissue():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal([242, 241, 244], 2.0, (100, 120, 3)), 0, 255).astype(np.uint8)
    mask, threshold = tissue_mask(glass, pixel_um=8.0)
    assert not mask.any() and threshold >= 0.07


def test_specks_removed_and_holes_filled():
    rgb = np.full((100, 100, 3), 242, np.uint8)
    rgb[20:80, 20:80] = (200, 120, 190)  # tissue 60 x 60 px
    rgb[45:48, 45:48] = 242  # a 9-pixel hole
    rgb[5:7, 90:92] = (200, 120, 190)  # a 4-pixel speck
    mask, _ = tissue_mask(rgb, pixel_um=10.0, min_tissue_um2=1000.0, max_hole_um2=2000.0)
    assert mask[20:80, 20:80].all() and not mask[5:7, 90:92].any() and mask.sum() == 3600


class _FakeSlide:
    """A one-level slide over an array that records the size of every read."""

    def __init__(self, rgb):
        self.rgb = rgb
        self.level_count = 1
        self.level_downsamples = (1.0,)
        self.level_dimensions = ((rgb.shape[1], rgb.shape[0]),)
        self.dimensions = self.level_dimensions[0]
        self.reads = []

    def get_best_level_for_downsample(self, downsample):
        return 0

    def read_region(self, location, level, size):
        (x, y), (w, h) = location, size
        self.reads.append((w, h))
        rgba = np.zeros((h, w, 4), np.uint8)
        part = self.rgb[y:y + h, x:x + w]
        rgba[:part.shape[0], :part.shape[1], :3] = part
        rgba[:part.shape[0], :part.shape[1], 3] = 255
        return Image.fromarray(rgba)


def test_read_downsampled_averages_in_bounded_blocks(monkeypatch):
    monkeypatch.setattr(slide_module, "_BLOCK", 32)
    rgb = np.random.default_rng(1).integers(0, 256, (100, 150, 3)).astype(np.uint8)
    slide = _FakeSlide(rgb)
    out, downsample, level = read_downsampled(slide, 8)
    assert (downsample, level) == (8.0, 0) and out.shape == (13, 19, 3)
    assert max(w * h for w, h in slide.reads) <= 32 * 32
    expected = rgb[:96, :144].astype(float).reshape(12, 8, 18, 8, 3).mean((1, 3))
    assert np.abs(out[:12, :18].astype(float) - expected).max() <= 0.5
    # The last, partial blocks average their edge-padded pixels.
    corner = np.pad(rgb[96:, 144:].astype(float), ((0, 4), (0, 2), (0, 0)), mode="edge").mean((0, 1))
    assert np.abs(out[12, 18] - corner).max() <= 0.5


def test_save_load_overlay_and_resume(camelyon_root, tmp_path, caplog):
    slides = sorted(camelyon_root.glob("training/*/*.tif"))
    pngs = prepare_tissue_masks(slides, tmp_path)
    assert [p.name for p in pngs] == [f"{s.stem}_tissue.png" for s in slides]
    for png in pngs:
        assert png.with_name(png.stem + "_overlay.png").is_file()
        mask = TissueMask.load(png)
        assert mask.level0_size == (3072, 2048) and mask.slide.endswith(".tif") and 0.1 < mask.tissue_fraction < 0.9
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["shape"] == list(mask.mask.shape)
        x, y = (np.argwhere(mask.mask)[0][::-1] + 0.5) * mask.downsample
        assert mask.contains(x, y) and not mask.contains(-5, y) and not mask.contains(x, 1e9)
    before = pngs[0].stat().st_mtime_ns
    caplog.set_level("INFO")
    prepare_tissue_masks(slides, tmp_path)
    assert pngs[0].stat().st_mtime_ns == before and "kept existing" in caplog.text


def test_bad_inputs(camelyon_root, tmp_path):
    with pytest.raises(SlideError, match="slide file missing"):
        prepare_tissue_masks([tmp_path / "none.tif"], tmp_path)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a slide")
    with pytest.raises(SlideError, match=f"{broken}: OpenSlide cannot open"):
        prepare_tissue_masks([broken], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no slides"):
        prepare_tissue_masks([], tmp_path)
    png = prepare_tissue_masks([next(camelyon_root.glob("training/tumor/*.tif"))], tmp_path / "m")[0]
    png.with_suffix(".json").write_text("{")
    with pytest.raises(ValueError, match="_tissue.json: not valid JSON"):
        TissueMask.load(png)
    png.with_suffix(".json").write_text("[1]")
    with pytest.raises(ValueError, match="not a tissue mask description"):
        TissueMask.load(png)
    png.with_suffix(".json").write_text(json.dumps({"downsample": 32, "level0_size": [9000, 9000]}))
    with pytest.raises(ValueError, match="does not cover"):
        TissueMask.load(png)
    png.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the mask image"):
        TissueMask.load(png)
    png.unlink()
    with pytest.raises(ValueError, match="tissue mask file missing"):
        TissueMask.load(png)


def test_cli(camelyon_root, tmp_path, capsys):
    assert cli.main(["tissue", str(camelyon_root / "training"), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("% tissue") == 4
    assert cli.main(["tissue", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "no such slide file or folder" in capsys.readouterr().err
    slide = open_slide(next(camelyon_root.glob("training/normal/*.tif")))
    assert slide.level_count >= 4
