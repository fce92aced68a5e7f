"""Lesions of probability maps (metastasis.evaluation.lesions), their viewer files (overlays) and the ``lesions``
command, on hand-made maps whose outlines, sizes, categories and stages are worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medcore.errors import UserError
from metastasis import cli
from metastasis.evaluation.lesions import find_lesions, lesions_record, map_mpp, slide_result
from metastasis.evaluation.overlays import (CLASSES, LESION_GROUPS, lesions_geojson, read_geojson_detections,
                                           read_lesions_xml, write_heatmap_tiff, write_lesions_geojson,
                                           write_lesions_xml)
from metastasis.evaluation.staging import quadratic_weighted_kappa, read_stage_csv
from metastasis.inference.maps import describe_map, load_map


def _meta(shape, stride=32, mpp=0.5, size=None) -> dict:
    """A map description as ``write_map`` writes it (``size``: the slide's level-0 (width, height), by default
    exactly the map's blocks)."""
    rows, cols = shape
    size = size or (cols * stride, rows * stride)
    return {"slide": "/slides/x.tif", "stride": stride, "origin": [stride / 2, stride / 2], "shape": [rows, cols],
            "level0_size": list(size), "mpp": mpp, "max_probability": None}


def _shoelace(points) -> float:
    x, y = np.asarray(points, np.float64).T
    return 0.5 * float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum())


def test_a_single_pixel_is_its_block():
    probs = np.zeros((5, 6), np.float32)
    probs[2, 3] = 0.8
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=32, mpp=0.5))
    assert lesion.contour.tolist() == [[96, 64], [128, 64], [128, 96], [96, 96]]
    assert lesion.area_um2 == pytest.approx((32 * 0.5) ** 2)
    assert lesion.longest_diameter_um == pytest.approx(32 * math.sqrt(2) * 0.5)
    assert lesion.centroid == (112.0, 80.0) and lesion.pixels == 1 and lesion.category == "itc"
    assert lesion.max_probability == lesion.mean_probability == pytest.approx(0.8)


def test_contour_convention_on_a_three_pixel_region():
    """Vertices are block corners where the boundary turns; the ring starts at the first pixel's top-left corner,
    runs right first, keeps the region on its right (y down): a positive shoelace area, the blocks' area."""
    probs = np.zeros((4, 4), np.float32)
    probs[1, 1] = probs[2, 1] = probs[2, 2] = 0.9  # an L: (1, 1) above (2, 1), (2, 2) to its right
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=10, mpp=1.0))
    assert lesion.contour.tolist() == [[10, 10], [20, 10], [20, 20], [30, 20], [30, 30], [10, 30]]
    assert _shoelace(lesion.contour) == 3 * 10 * 10
    assert lesion.area_um2 == 300
    assert lesion.longest_diameter_um == pytest.approx(math.hypot(20, 20))  # (10, 10) to (30, 30)
    assert lesion.centroid == pytest.approx(((15 + 15 + 25) / 3, (15 + 25 + 25) / 3))


def test_an_l_shaped_region():
    probs = np.zeros((6, 5), np.float32)
    probs[1:4, 1] = [0.6, 0.7, 0.9]
    probs[3, 2] = 0.8
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=10, mpp=2.0))
    assert lesion.contour.tolist() == [[10, 10], [20, 10], [20, 30], [30, 30], [30, 40], [10, 40]]
    assert lesion.pixels == 4 and lesion.area_um2 == pytest.approx(4 * 20 * 20)
    assert lesion.longest_diameter_um == pytest.approx(2.0 * math.hypot(20, 30))  # (10, 10) to (30, 40)
    assert lesion.max_probability == pytest.approx(0.9)
    assert lesion.mean_probability == pytest.approx((0.6 + 0.7 + 0.9 + 0.8) / 4)
    assert lesion.centroid == pytest.approx((17.5, 27.5))


def test_pixels_touching_at_a_corner_are_one_region():
    """8-connectivity: the ring goes round both pixels and passes their common corner twice."""
    probs = np.zeros((4, 4), np.float32)
    probs[1, 1] = probs[2, 2] = 0.9
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=10, mpp=1.0))
    assert lesion.pixels == 2
    assert lesion.contour.tolist() == [[10, 10], [20, 10], [20, 20], [30, 20], [30, 30], [20, 30], [20, 20],
                                       [10, 20]]
    assert lesion.longest_diameter_um == pytest.approx(20 * math.sqrt(2))
    # the other diagonal too
    probs = np.zeros((4, 4), np.float32)
    probs[1, 2] = probs[2, 1] = 0.9
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=10, mpp=1.0))
    assert lesion.contour.tolist() == [[20, 10], [30, 10], [30, 20], [20, 20], [20, 30], [10, 30], [10, 20],
                                       [20, 20]]


def test_holes_are_not_traced_nor_counted():
    probs = np.zeros((5, 5), np.float32)
    probs[1:4, 1:4] = 0.9
    probs[2, 2] = 0.1
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=10, mpp=1.0))
    assert lesion.contour.tolist() == [[10, 10], [40, 10], [40, 40], [10, 40]]
    assert lesion.pixels == 8 and lesion.area_um2 == 800 and lesion.mean_probability == pytest.approx(0.9)
    assert lesion.centroid == pytest.approx((25, 25))


def test_blocks_past_the_slide_edge_are_cut_at_it():
    probs = np.zeros((3, 4), np.float32)
    probs[2, 3] = 0.9  # the last row and column: the slide is 100 x 70 pixels, the blocks reach 128 x 96
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=32, mpp=1.0, size=(100, 70)))
    assert lesion.contour.tolist() == [[96, 64], [100, 64], [100, 70], [96, 70]]
    assert lesion.area_um2 == 4 * 6 and lesion.centroid == (98.0, 67.0)
    assert lesion.longest_diameter_um == pytest.approx(math.hypot(4, 6))


def test_regions_apart_are_separate_lesions_largest_first():
    probs = np.zeros((8, 8), np.float32)
    probs[0, 0] = 0.9  # 1 pixel, first in raster order
    probs[5:7, 5:8] = 0.6  # 2 x 3 pixels
    probs[0, 4] = 0.7  # 1 pixel, a tie with the first: raster order
    lesions = find_lesions(probs, _meta(probs.shape, stride=10, mpp=1.0))
    assert [lesion.pixels for lesion in lesions] == [6, 1, 1]
    assert [lesion.max_probability for lesion in lesions] == pytest.approx([0.6, 0.9, 0.7])
    assert slide_result(lesions) == ("itc", pytest.approx(0.9))
    assert find_lesions(np.zeros((8, 8), np.float32), _meta((8, 8))) == []
    assert slide_result([]) == ("negative", 0.0)


@pytest.mark.parametrize("rows,cols,diameter,category", [
    (3, 4, 200.0, "itc"), (4, 4, 5.0 / 4 * 32 * math.sqrt(32), "micro"),
    (30, 40, 2000.0, "micro"), (31, 40, 5.0 / 4 * 32 * math.hypot(31, 40), "macro")])
def test_categories_at_their_limits(rows, cols, diameter, category):
    """stride 32 and 1.25 um per pixel: 40 um per map pixel, so a 3 x 4 block's diagonal is 200 um exactly and a
    30 x 40 block's 2000 um (both limits included in the smaller class)."""
    probs = np.zeros((40, 48), np.float32)
    probs[2:2 + rows, 3:3 + cols] = 0.9
    (lesion,) = find_lesions(probs, _meta(probs.shape, stride=32, mpp=1.25))
    assert lesion.longest_diameter_um == pytest.approx(diameter, rel=1e-12) and lesion.category == category
    assert lesion.area_um2 == pytest.approx(rows * cols * 40.0 ** 2)
    assert slide_result([lesion])[0] == category
    if diameter in (200.0, 2000.0):
        assert lesion.longest_diameter_um == diameter


def test_a_pixel_exactly_at_the_threshold_counts():
    probs = np.zeros((3, 3), np.float32)
    probs[0, 0], probs[2, 2] = 0.5, 0.7  # 0.7 is stored as float32(0.7) < 0.7
    meta = _meta(probs.shape)
    assert [lesion.pixels for lesion in find_lesions(probs, meta, threshold=0.5)] == [1, 1]
    assert [lesion.max_probability for lesion in find_lesions(probs, meta, threshold=0.7)] == \
        [pytest.approx(0.7)]
    assert find_lesions(probs, meta, threshold=float(np.nextafter(np.float32(0.7), np.float32(1)))) == []
    assert len(find_lesions(probs, meta, threshold=1.0)) == 0
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold must be in"):
            find_lesions(probs, meta, threshold=bad)


def test_a_map_without_pixel_size_needs_mpp():
    probs = np.zeros((3, 3), np.float32)
    probs[1, 1] = 0.9
    meta = _meta(probs.shape, stride=32, mpp=None)
    with pytest.raises(UserError, match=r"maps/a\.json: the map does not record .* pass --mpp"):
        find_lesions(probs, meta, source="maps/a.json")
    with pytest.raises(UserError, match=r"/slides/x\.tif: .*--mpp"):
        map_mpp(meta)
    (lesion,) = find_lesions(probs, meta, mpp=0.25)
    assert lesion.area_um2 == pytest.approx((32 * 0.25) ** 2)
    # --mpp overrides the map's
    assert find_lesions(probs, _meta(probs.shape, stride=32, mpp=1.0), mpp=0.25)[0].area_um2 == lesion.area_um2
    with pytest.raises(ValueError, match="mpp must be a positive"):
        map_mpp(meta, 0.0)


def test_a_sparse_slide_sized_map():
    """A 3125 x 6250 map (a 100k x 200k slide at stride 32) with a few dozen lesions: every one is found with
    its pixel count, and the contours' shoelace areas are their blocks' areas (no holes in these squares)."""
    probs = np.zeros((3125, 6250), np.float32)
    rng = np.random.default_rng(0)
    sides = {}
    for k in range(40):
        i, j, side = int(rng.integers(0, 3000)) // 100 * 100, k * 150, int(rng.integers(1, 60))
        probs[i:i + side, j:j + side] = 0.6 + 0.01 * k
        sides[k] = side
    lesions = find_lesions(probs, _meta(probs.shape, stride=32, mpp=0.25))
    assert sorted(lesion.pixels for lesion in lesions) == sorted(side * side for side in sides.values())
    for lesion in lesions:
        assert _shoelace(lesion.contour) == lesion.pixels * 32 * 32
        assert lesion.longest_diameter_um == pytest.approx(math.sqrt(2 * lesion.pixels) * 32 * 0.25)


def test_geojson_for_qupath(tmp_path):
    probs = np.zeros((80, 80), np.float32)
    probs[1, 1] = 0.7
    probs[10:60, 10:70] = 0.9  # 50 x 60 pixels of 32 um: 2.5 mm, macro
    lesions = find_lesions(probs, _meta(probs.shape, stride=32, mpp=1.0))
    data = json.loads(write_lesions_geojson(tmp_path / "a.geojson", lesions).read_text())
    assert data == lesions_geojson(lesions)
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    for feature, lesion in zip(data["features"], lesions):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and ring[:-1] == lesion.contour.tolist() and len(ring) >= 5
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": CLASSES[lesion.category][0],
                                           "color": list(CLASSES[lesion.category][1])}
        assert props["measurements"] == {"Max probability": lesion.max_probability,
                                         "Mean probability": lesion.mean_probability,
                                         "Area \u00b5m^2": lesion.area_um2,
                                         "Longest diameter \u00b5m": lesion.longest_diameter_um}
    assert [f["properties"]["classification"]["name"] for f in data["features"]] == ["Macro-metastasis", "ITC"]
    assert [f["properties"]["name"] for f in data["features"]] == ["Lesion 1", "Lesion 2"]
    assert lesions_geojson([]) == {"type": "FeatureCollection", "features": []}


def test_asap_xml_round_trip(tmp_path):
    probs = np.zeros((80, 80), np.float32)
    probs[1, 1] = 0.7
    probs[3:5, 3:4] = 0.8
    probs[10:20, 10:15] = 0.9
    probs[30:80, 20:80] = 0.95  # to the slide's edges, which are not on block edges
    probs[40, 30] = 0.1  # a hole
    meta = _meta(probs.shape, stride=32, mpp=1.0, size=(80 * 32 - 5, 80 * 32 - 9))
    lesions = find_lesions(probs, meta)
    path = write_lesions_xml(tmp_path / "a.xml", lesions, comment="lesions of a--b.npy")
    back = read_lesions_xml(path)
    assert [a.group for a in back] == ["Macro-metastasis", "Micro-metastasis", "ITC", "ITC"]
    assert [a.name for a in back] == [f"Lesion {n} ({lesion.longest_diameter_um:.0f} um)"
                                      for n, lesion in enumerate(lesions, start=1)]
    for annotation, lesion in zip(back, lesions):
        assert np.array_equal(annotation.points, lesion.contour)
    text = path.read_text()
    assert 'Name="Macro-metastasis" PartOfGroup="None" Color="#DC143C"' in text and "a- -b.npy" in text
    assert set(LESION_GROUPS) == {"ITC", "Micro-metastasis", "Macro-metastasis"}
    # the Camelyon16 reader still refuses other groups unless asked for them
    from metastasis.data.annotations import AnnotationError, read_asap_xml

    with pytest.raises(AnnotationError, match="Camelyon16 groups are"):
        read_asap_xml(path)


def test_heatmap_tiff_opens_in_openslide_at_every_level(tmp_path):
    """Level 0 is the map at 255 steps, on the slide scaled by the stride; each level the 2 x 2 maximum of the one
    before (a one-pixel lesion stays visible), down to 256 pixels a side; the pixel size is stride x mpp."""
    import openslide
    import tifffile

    probs = np.zeros((700, 530), np.float32)
    probs[3, 5], probs[400:410, 100:120], probs[699, 529] = 0.9, 0.5, 1.0
    path = write_heatmap_tiff(tmp_path / "s_heatmap.tif", probs, stride=32, mpp=0.25, slide="/data/s.tif")
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_dimensions == ((530, 700), (265, 350), (133, 175))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(8.0)
        level0 = np.asarray(slide.read_region((0, 0), 0, (530, 700)))[..., 0]
        assert np.array_equal(level0, np.rint(probs * 255).astype(np.uint8))
        level2 = np.asarray(slide.read_region((0, 0), 2, (133, 175)))[..., 0]
        assert level2[0, 1] == 230 and level2[174, 132] == 255 and level2[100, 25] == 128
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and all(page.is_tiled for page in tif.pages)
        described = json.loads(tif.pages[0].description)
        assert described["stride"] == 32 and described["heatmap_of"] == "/data/s.tif"


def test_every_geojson_geometry_is_valid_for_an_independent_reader():
    """shapely (GEOS) parses every feature and finds it valid, also where pixels touch only at a corner (a
    MultiPolygon of the parts, touching there); each part is the union of its pixels' blocks, or the region with
    its enclosed holes filled (holes are not traced)."""
    from scipy import ndimage
    from shapely.geometry import box, shape
    from shapely.ops import unary_union

    corner = np.zeros((6, 6), np.float32)
    corner[1, 1] = corner[2, 2] = 0.9
    geometry = lesions_geojson(find_lesions(corner, _meta(corner.shape, stride=1)))["features"][0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and shape(geometry).is_valid and shape(geometry).area == 2
    rng = np.random.default_rng(0)
    for _ in range(100):
        probs = (rng.random((14, 14)) < 0.5).astype(np.float32)
        labels = ndimage.label(probs >= 0.5, structure=np.ones((3, 3)))[0]
        for lesion in find_lesions(probs, _meta(probs.shape, stride=1)):
            geometry = shape(lesions_geojson([lesion])["features"][0]["geometry"])
            assert geometry.is_valid, lesion.contour
            x, y = lesion.contour[0]
            region = labels == labels[int(y), int(x)]
            blocks = unary_union([box(j, i, j + 1, i + 1) for i, j in zip(*np.nonzero(region))])
            assert geometry.area in (blocks.area, ndimage.binary_fill_holes(region).sum())


def test_detection_points_read_back_from_the_geojson_give_the_same_froc(tmp_path):
    from metastasis.evaluation.detection import Detections, find_detections
    from metastasis.evaluation.froc import EvalCase, evaluate_froc

    probs = np.zeros((40, 40), np.float32)
    probs[5:9, 5:9], probs[20, 30], probs[30:33, 10:12] = 0.9, 0.7, 0.6
    meta = _meta(probs.shape, stride=32, mpp=0.25)
    found = find_detections(probs, 32, tuple(meta["origin"]), 0.25)
    path = write_lesions_geojson(tmp_path / "s_lesions.geojson", find_lesions(probs, meta), found)
    back = read_geojson_detections(path)
    assert len(back.probability) == 3
    assert all(np.array_equal(getattr(back, k), getattr(found, k)) for k in ("probability", "x", "y"))
    mask = np.zeros((40, 40), np.uint8)  # ground truth at the map's scale: the first lesion only
    mask[5:9, 5:9] = 1

    def froc(detections: Detections) -> float:
        cases = [EvalCase("s", detections, mask, 100.0, 0.9, 1)]  # 100 um mask pixels: the lesion is no ITC
        return evaluate_froc(cases, level=5, resamples=0).score

    assert froc(back) == froc(found) and froc(found) > 0


def test_lesions_record():
    probs = np.zeros((4, 4), np.float32)
    probs[1, 1] = 0.9
    record = lesions_record(find_lesions(probs, _meta(probs.shape, mpp=None), mpp=0.25), _meta(probs.shape, mpp=None),
                            0.5, 0.25, "maps/a.npy")
    assert record["label"] == "itc" and record["score"] == pytest.approx(0.9) and record["mpp"] == 0.25
    assert record["map_mpp"] is None and record["map"].endswith("maps/a.npy") and record["n_lesions"] == 1
    assert record["lesions"][0]["contour"] == [[32, 32], [64, 32], [64, 64], [32, 64]]
    json.dumps(record)


# -- the command --------------------------------------------------------------------------------------------------


def _write_map(folder, name, probs, stride=32, mpp=1.25):
    """NAME.npy and NAME.json with the fields describe_map requires (what write_map writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", probs.astype(np.float32))
    meta = _meta(probs.shape, stride=stride, mpp=mpp)
    meta.update(slide=f"/slides/{name}.tif", max_probability=float(probs.max()))
    (folder / f"{name}.json").write_text(json.dumps(meta))
    describe_map(folder / f"{name}.npy")  # the map is one the project reads
    load_map(folder / f"{name}.npy")


def _maps(folder):
    """Four slides of three patients at 40 um per map pixel (stride 32, 1.25 um per pixel)."""
    macro, micro, itc = (np.zeros((64, 64), np.float32) for _ in range(3))
    macro[5:60, 5:50] = 0.95  # 55 x 45 pixels: 2.8 mm
    macro[62, 62] = 0.6
    micro[10:20, 10:20] = 0.8  # 10 x 10: 566 um
    itc[30, 30] = 0.55  # one pixel: 57 um
    _write_map(folder, "patient_000_node_0", macro)
    _write_map(folder, "patient_000_node_1", np.zeros((64, 64), np.float32))
    _write_map(folder, "patient_001_node_0", itc)
    _write_map(folder, "slideA", micro)


def test_command_end_to_end(tmp_path, capsys):
    maps, out = tmp_path / "maps", tmp_path / "out"
    _maps(maps)
    (tmp_path / "patients.csv").write_text("slide,patient\nslideA,patient_002\n")
    # the reference: right but for patient_001, whose ITC it calls negative
    (tmp_path / "reference.csv").write_text(
        "patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,macro\npatient_000_node_1.tif,negative\n"
        "patient_001.zip,pN0\npatient_001_node_0.tif,negative\npatient_002.zip,pN1mi\nslideA.tif,micro\n")
    assert cli.main(["lesions", str(maps), "--out", str(out), "--patients", str(tmp_path / "patients.csv"),
                     "--reference", str(tmp_path / "reference.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["patient_000_node_0: macro, 2 lesions (largest 2843 um), score 0.950",
                         "patient_000_node_1: negative, 0 lesions (none), score 0.000",
                         "patient_001_node_0: itc, 1 lesion (largest 57 um), score 0.550",
                         "slideA: micro, 1 lesion (largest 566 um), score 0.800"]
    assert lines[4] == f"{out / 'stages.csv'}: 4 slides, 3 patients (pN0(i+) 1, pN1mi 1, pN1 1)"
    kappa = quadratic_weighted_kappa(["pN1", "pN0", "pN1mi"], ["pN1", "pN0(i+)", "pN1mi"])
    assert lines[5].startswith(f"quadratic weighted kappa {kappa:.4f} over 3 patients; slide-label accuracy "
                               "0.7500 over 4 slides") and len(lines) == 6
    assert (out / "stages.csv").read_text() == (
        "patient,stage\npatient_000.zip,pN1\npatient_000_node_0.tif,macro\npatient_000_node_1.tif,negative\n"
        "patient_001.zip,pN0(i+)\npatient_001_node_0.tif,itc\npatient_002.zip,pN1mi\nslideA.tif,micro\n")
    assert read_stage_csv(out / "stages.csv")[0] == {"patient_000": "pN1", "patient_001": "pN0(i+)",
                                                     "patient_002": "pN1mi"}
    staging = json.loads((out / "staging.json").read_text())
    assert staging["kappa"] == pytest.approx(kappa) and staging["patient_accuracy"] == pytest.approx(2 / 3)
    assert staging["reference"] == str((tmp_path / "reference.csv").resolve())
    record = json.loads((out / "patient_000_node_0_lesions.json").read_text())
    assert record["label"] == "macro" and record["n_lesions"] == 2 and record["threshold"] == 0.5
    assert record["mpp"] == 1.25 and record["map"] == str((maps / "patient_000_node_0.npy").resolve())
    assert record["slide"] == "/slides/patient_000_node_0.tif"
    assert record["lesions"][0]["longest_diameter_um"] == pytest.approx(40 * math.hypot(55, 45))
    geojson = json.loads((out / "patient_000_node_0_lesions.geojson").read_text())
    assert [f["properties"]["classification"]["name"] for f in geojson["features"]] == ["Macro-metastasis", "ITC"]
    assert json.loads((out / "patient_000_node_1_lesions.geojson").read_text())["features"] == []
    assert [a.group for a in read_lesions_xml(out / "slideA_lesions.xml")] == ["Micro-metastasis"]
    assert read_lesions_xml(out / "patient_000_node_1_lesions.xml") == []
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == sorted([f"{name}{ending}" for name in ("patient_000_node_0", "patient_000_node_1",
                                                              "patient_001_node_0", "slideA")
                              for ending in ("_lesions.geojson", "_lesions.xml", "_lesions.json", "_heatmap.tif")]
                             + ["stages.csv", "staging.json"])
    # a second run into the same folder replaces its own files; a higher threshold drops the ITC
    assert cli.main(["lesions", str(maps), "--out", str(out), "--patients", str(tmp_path / "patients.csv"),
                     "--threshold", "0.7"]) == 0
    assert "patient_001_node_0: negative, 0 lesions" in capsys.readouterr().out
    assert read_stage_csv(out / "stages.csv")[0]["patient_001"] == "pN0"
    assert not (out / "staging.json").exists()  # the first run's evaluation is not of these stages


def test_command_on_one_map_with_mpp(tmp_path, capsys):
    maps = tmp_path / "maps"
    probs = np.zeros((8, 8), np.float32)
    probs[2, 2] = 0.9
    _write_map(maps, "patient_007_node_3", probs, mpp=None)
    args = ["lesions", str(maps / "patient_007_node_3.npy"), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{maps / 'patient_007_node_3.json'}: the map does not record its slide's pixel size" in err
    assert "pass --mpp" in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    assert cli.main(args + ["--mpp", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("patient_007_node_3: itc, 1 lesion (largest 23 um)")
    assert json.loads((tmp_path / "out/patient_007_node_3_lesions.json").read_text())["mpp"] == 0.5
    assert (tmp_path / "out/stages.csv").read_text() == "patient,stage\npatient_007.zip,pN0(i+)\n" \
                                                        "patient_007_node_3.tif,itc\n"
    # the detect command's points go into the GeoJSON with --detections (a malformed CSV stops before any work)
    (tmp_path / "detections").mkdir()
    (tmp_path / "detections/patient_007_node_3.csv").write_text("0.9,80,80\n")
    assert cli.main(args + ["--mpp", "0.5", "--detections", str(tmp_path / "detections")]) == 0
    back = read_geojson_detections(tmp_path / "out/patient_007_node_3_lesions.geojson")
    assert back.probability.tolist() == [0.9] and (back.x[0], back.y[0]) == (80, 80)
    (tmp_path / "detections/patient_007_node_3.csv").write_text("0.9,eighty,80\n")
    assert cli.main(args + ["--mpp", "0.5", "--detections", str(tmp_path / "detections")]) == 2
    assert "patient_007_node_3.csv" in capsys.readouterr().err


@pytest.mark.parametrize("threshold,problem", [("0", "must be > 0"), ("1.5", "must be > 0 and <= 1"),
                                               ("nan", "expected a finite number")])
def test_command_refuses_a_bad_threshold(tmp_path, capsys, threshold, problem):
    _maps(tmp_path / "maps")
    assert cli.main(["lesions", str(tmp_path / "maps"), "--out", str(tmp_path / "out"), "--threshold",
                     threshold]) == 2
    assert f"argument --threshold: {problem}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_command_errors_name_the_file(tmp_path, capsys):
    maps, out = tmp_path / "maps", tmp_path / "out"
    _maps(maps)

    def fails(*extra):
        assert cli.main(["lesions", str(maps), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1
        return err

    # a slide name that is not CAMELYON17's, and no patient map (or one without it)
    err = fails()
    assert f"{maps / 'slideA.npy'}: slide 'slideA' is not a CAMELYON17 slide name" in err and "--patients" in err
    (tmp_path / "other.csv").write_text("slide,patient\nslideB,patient_009\n")
    assert f"not in {tmp_path / 'other.csv'}" in fails("--patients", str(tmp_path / "other.csv"))
    (tmp_path / "patients.csv").write_text("slide,patient\nslideA,patient_002\n")
    # a reference with a slide the maps lack, and a malformed one
    (tmp_path / "ref.csv").write_text("patient,stage\npatient_000.zip,pN1\npatient_000_node_4.tif,macro\n")
    assert f"{tmp_path / 'ref.csv'}: 1 of its patients and slides have no map in {maps}: patient_000_node_4" in \
        fails("--patients", str(tmp_path / "patients.csv"), "--reference", str(tmp_path / "ref.csv"))
    (tmp_path / "bad.csv").write_text("patient,stage\npatient_000.zip,pN7\n")
    assert f"{tmp_path / 'bad.csv'}:2: unknown stage 'pN7'" in \
        fails("--patients", str(tmp_path / "patients.csv"), "--reference", str(tmp_path / "bad.csv"))
    assert not out.exists()
    # a user's file in --out is never overwritten
    out.mkdir()
    (out / "stages.csv").write_text("mine\n")
    assert f"{out / 'stages.csv'}: exists and was not written by lesions" in \
        fails("--patients", str(tmp_path / "patients.csv"))
    assert (out / "stages.csv").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["stages.csv"]
    # a map that is not one
    (maps / "patient_003_node_0.npy").write_bytes(b"not numpy")
    (maps / "patient_003_node_0.json").write_text(json.dumps(_meta((64, 64))))
    assert f"{maps / 'patient_003_node_0.npy'}" in fails("--patients", str(tmp_path / "patients.csv"))
