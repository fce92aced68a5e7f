import hashlib
import math

import numpy as np
import openslide
import pytest
import tifffile

from metastasis.data.annotations import read_asap_xml, rasterize
from metastasis.data.slide import SlideError, open_slide, read_rgb
from demodata.camelyon import CAMELYON_MPP, generate_dataset, make_scene, pyramid_shapes

from tests.support import SMALL_SLIDE


def _paths(root):
    return (root / "training/tumor/tumor_001.tif", root / "training/normal/normal_001.tif",
            root / "training/lesion_annotations/tumor_001.xml")


def test_layout(camelyon_root):
    tumour, normal, xml = _paths(camelyon_root)
    assert tumour.is_file() and normal.is_file() and xml.is_file()
    assert not (camelyon_root / "training/lesion_annotations/normal_001.xml").exists()
    leftovers = [p for p in camelyon_root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_openslide_reads_a_generic_tiff_pyramid(camelyon_root):
    for path in _paths(camelyon_root)[:2]:
        slide = openslide.OpenSlide(str(path))
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.dimensions == SMALL_SLIDE
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(CAMELYON_MPP, abs=1e-4)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(CAMELYON_MPP, abs=1e-4)
        assert slide.level_count == len(pyramid_shapes(*SMALL_SLIDE)) >= 4
        assert [round(d) for d in slide.level_downsamples] == [2 ** k for k in range(slide.level_count)]
        assert slide.properties["openslide.level[0].tile-width"] == "512"
        slide.close()
        with tifffile.TiffFile(path) as tif:  # every level its own top-level IFD, tiled JPEG, no SubIFDs
            assert len(tif.pages) == len(pyramid_shapes(*SMALL_SLIDE))
            for page in tif.pages:
                assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
                assert not page.subifds
                assert page.samplesperpixel == 3  # RGB, stored as YCbCr JPEG like the scanners' files
                assert page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)


def test_lesions_of_several_sizes_inside_tissue(camelyon_root):
    tumour, _, xml = _paths(camelyon_root)
    anns = [a for a in read_asap_xml(xml) if not a.is_exclusion]
    assert len(anns) >= 2
    diameters_um = [float(np.ptp(a.points, axis=0).max()) * CAMELYON_MPP for a in anns]
    assert min(diameters_um) < 200  # an isolated tumour cell cluster
    assert max(diameters_um) > 200  # a micro-metastasis
    slide = open_slide(tumour)
    width, height = slide.dimensions
    for a in anns:
        assert a.points[:, 0].min() >= 0 and a.points[:, 0].max() < width
        assert a.points[:, 1].min() >= 0 and a.points[:, 1].max() < height


def test_tumour_looks_different_from_normal_tissue(camelyon_root):
    tumour, normal, xml = _paths(camelyon_root)
    slide = open_slide(tumour)
    level = 2
    d = 2 ** level
    w, h = slide.level_dimensions[level]
    rgb = read_rgb(slide, (0, 0), level, (w, h)).astype(float)
    mask = rasterize(read_asap_xml(xml), (0, 0), (w, h), d).astype(bool)
    tissue = rgb.mean(axis=2) < 220
    assert mask.sum() > 50 and (tissue & ~mask).sum() > 1000
    assert tissue[mask].mean() > 0.95  # lesions lie in tissue
    # Metastases are paler (large vesicular nuclei) than the lymphocyte-dense node; glass is near white.
    assert rgb[mask].mean() > rgb[tissue & ~mask].mean() + 10
    assert rgb[~tissue].mean() > 230
    normal_rgb = read_rgb(open_slide(normal), (0, 0), level, open_slide(normal).level_dimensions[level])
    assert (normal_rgb.mean(axis=2) < 220).mean() > 0.2  # normal slides have tissue too


def test_deterministic_for_a_seed():
    a = make_scene("s", 3000, 2000, True, seed=5, index=1)
    b = make_scene("s", 3000, 2000, True, seed=5, index=1)
    c = make_scene("s", 3000, 2000, True, seed=6, index=1)
    assert len(a.annotations) == len(b.annotations)
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a.annotations, b.annotations))
    region = ((1000, 700), (300, 200), 1)
    assert np.array_equal(a.render(*region), b.render(*region))
    assert not np.array_equal(a.render(*region), c.render(*region))


def test_tiles_join_seamlessly():
    """A region rendered whole equals the same region rendered as two halves (no tile seams)."""
    scene = make_scene("s", 3000, 2000, False, seed=2, index=0)
    whole = scene.render((1000, 800), (256, 128), 1)
    left = scene.render((1000, 800), (128, 128), 1)
    right = scene.render((1128, 800), (128, 128), 1)
    assert np.array_equal(whole, np.concatenate([left, right], axis=1))


def test_testing_split_and_reference(tmp_path):
    paths = generate_dataset(tmp_path, 1, 1, 1024, 768, seed=0, split="testing")
    assert sorted(p.name for p in paths) == ["test_001.tif", "test_002.tif"]
    assert all(p.parent == tmp_path / "testing/images" for p in paths)
    lines = (tmp_path / "testing/reference.csv").read_text().splitlines()
    assert lines[0] == "name,class" and sorted(line.split(",")[1] for line in lines[1:]) == ["Normal", "Tumor"]
    tumour_name = next(line.split(",")[0] for line in lines[1:] if line.endswith("Tumor"))
    assert (tmp_path / f"testing/lesion_annotations/{tumour_name}.xml").is_file()


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="at least 512"):
        make_scene("s", 300, 2000, False, 0, 0)
    with pytest.raises(ValueError, match="split"):
        generate_dataset(tmp_path, 1, 0, 1024, 1024, split="validation")
    with pytest.raises(ValueError, match="multiple of 16"):
        generate_dataset(tmp_path, 0, 1, 1024, 1024, tile=500)


def test_slide_errors(tmp_path, camelyon_root):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(SlideError, match="broken.tif: OpenSlide cannot open"):
        open_slide(bad)
    with pytest.raises(SlideError, match="missing"):
        open_slide(tmp_path / "none.tif")
    slide = open_slide(_paths(camelyon_root)[1])
    with pytest.raises(SlideError, match="outside the slide"):
        read_rgb(slide, (SMALL_SLIDE[0] - 10, 0), 0, (224, 224))
    with pytest.raises(SlideError, match="level 9"):
        read_rgb(slide, (0, 0), 9, (10, 10))


def test_pyramid_shapes():
    assert pyramid_shapes(1000, 600) == [(1000, 600), (500, 300), (250, 150)]
    shapes = pyramid_shapes(100_000, 200_000)
    assert shapes[-1][1] <= 256 and len(shapes) == 11
    assert all(math.ceil(a[0] / 2) == b[0] for a, b in zip(shapes, shapes[1:]))


def _digest(scene, origin, size, downsample):
    return hashlib.sha256(np.round(scene.render(origin, size, downsample), 2).tobytes()).hexdigest()[:16]


def test_default_slides_are_unchanged_by_centres_and_difficulty():
    """Without a centre and at difficulty 0, the generator draws what it drew before centres existed (digests
    taken from that version), so the demo data and its results stay as they were."""
    assert _digest(make_scene("s", 3000, 2000, True, 5, 1), (1000, 700), (256, 192), 1) == "a7d1582d6c3daff9"
    assert _digest(make_scene("s", 3000, 2000, False, 5, 1), (0, 0), (300, 200), 4) == "3b2edda416be523f"
    assert _digest(make_scene("s", 3000, 2000, True, 5, 1), (0, 0), (200, 150), 16) == "e3e99b74a835d5ea"


def test_centres_look_different_and_hard_slides_join_seamlessly():
    a = make_scene("s", 4096, 3072, True, 7, 0, centre="A", difficulty=1.0)
    b = make_scene("s", 4096, 3072, True, 7, 0, centre="B", difficulty=1.0)
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a.annotations, b.annotations))  # same design
    region = ((0, 0), (256, 192), 16)  # the whole slide
    assert np.abs(a.render(*region).mean((0, 1)) - b.render(*region).mean((0, 1))).max() > 10
    again = make_scene("s", 4096, 3072, True, 7, 0, centre="B", difficulty=1.0)
    assert np.array_equal(b.render(*region), again.render(*region))  # deterministic
    # Blur (focus, out-of-focus areas) and artefacts need a margin: halves must still join exactly, at every kind
    # of artefact and mimic, at a lesion, and at several levels.
    scenes = [b, make_scene("s", 4096, 3072, True, 9, 0, centre="A", difficulty=1.0)]
    assert {kind for scene in scenes for kind, _, _ in scene.artefacts} == {"pen", "fold", "bubble", "focus"}
    for scene in scenes:
        outlines = [(k, o) for k, o, _ in scene.artefacts] + scene.mimics + [("tumour", scene.annotations[0])]
        for kind, outline in outlines + [(f"{k} edge", o) for k, o in outlines]:
            at = outline.points[0] if kind.endswith("edge") else outline.points.mean(axis=0)  # on the edge, inside
            x, y = int(at[0]), int(at[1])
            for d in (1, 2, 8):
                whole = scene.render((x - 64 * d, y - 32 * d), (128, 64), d)
                left = scene.render((x - 64 * d, y - 32 * d), (64, 64), d)
                right = scene.render((x, y - 32 * d), (64, 64), d)
                assert np.allclose(whole, np.concatenate([left, right], axis=1), atol=1e-6), (kind, d)


def test_difficulty_adds_mimics_and_artefacts_and_tumour_cells_come_closer_to_lymphocytes():
    easy = make_scene("s", 8192, 6144, True, 3, 0, difficulty=0.0)
    hard = make_scene("s", 8192, 6144, True, 3, 0, difficulty=1.0)
    assert not easy.mimics and not easy.artefacts
    assert {kind for kind, _ in hard.mimics} >= {"germinal_centre", "histiocytes"} and hard.artefacts
    counts = [len(make_scene("s", 8192, 6144, True, 3, 0, difficulty=d).mimics) for d in (0.25, 1.0)]
    assert counts[0] < counts[1]
    gap = [np.abs(s.tumour.nucleus - easy_normal).sum() for s in (easy, hard)
           for easy_normal in [np.array([72.0, 42.0, 132.0])]]
    assert gap[1] < 0.5 * gap[0] and hard.tumour.grid.radius[1] < easy.tumour.grid.radius[1]
    # Mimics are never tumour: the annotations (labels) are the same design whatever the difficulty.
    assert [a.points.tolist() for a in easy.annotations] == [a.points.tolist() for a in hard.annotations]
    with pytest.raises(ValueError, match="unknown centre 'C'"):
        make_scene("s", 1024, 1024, False, 0, 0, centre="C")
    with pytest.raises(ValueError, match="difficulty must be between 0 and 1"):
        make_scene("s", 1024, 1024, False, 0, 0, difficulty=1.5)


def test_make_data_writes_a_centres_slide_with_its_jpeg_quality(tmp_path):
    from metastasis import cli

    assert cli.main(["make-data", "--out", str(tmp_path), "--tumor", "0", "--normal", "1", "--width", "1024",
                     "--height", "768", "--centre", "B", "--difficulty", "0.5"]) == 0
    path = tmp_path / "training/normal/normal_001.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
    slide = open_slide(path)
    assert slide.level_dimensions[0] == (1024, 768)
    assert cli.main(["make-data", "--out", str(tmp_path / "x"), "--centre", "Z"]) == 2
