"""The CAMELYON17 layout of the slide generator: lesions of given classes, each patient's plan of node labels and
pN stage, the written files, and the whole chain (XML ground truth -> perfect probability maps -> ``metastasis
lesions``) labelling every slide and patient as made."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import tifffile
from scipy.spatial.distance import pdist

from demodata.camelyon import (CAMELYON_MPP, LESION_DIAMETERS_UM, NoRoomError, camelyon17_plan, generate_camelyon17,
                               longest_diameter_um, make_scene)
from medcore.errors import UserError
from metastasis import cli
from metastasis.data.annotations import Annotation, rasterize, read_asap_xml, write_asap_xml
from metastasis.evaluation.staging import (ITC_MAX_UM, MICRO_MAX_UM, PN_STAGES, SLIDE_LABELS, lesion_category,
                                           pn_stage, read_stage_csv, slide_label)

#: A map pixel's diagonal at stride 32, in microns: how far a lesion measured on a map can be from its polygon.
MAP_ERROR_UM = 32 * math.sqrt(2) * CAMELYON_MPP


def _digest(*arrays) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:20]


def test_scenes_without_classes_are_those_of_before():
    """The lesion classes leave the default scenes as they were: digests of a scene's design taken before they
    existed, on a slide large enough for every lesion size (a macro-metastasis) and on a small one. The tissue
    field is pinned by the tissue it defines (``> 0``): its float bits differ between CPUs (an AMD EPYC gave other
    last bits than the machine the digests were first taken on; its values stay at least 5e-6 away from 0)."""
    big = make_scene("s", 20000, 15000, True, 5, 1)
    assert _digest(big.tissue_field > 0) == "987990493373181b77d9"
    assert _digest(*[a.points for a in big.annotations]) == "88f146d51518742fe28d"
    assert [a.group for a in big.annotations] == ["Tumor", "_2", "Tumor", "Tumor", "Tumor"]
    small = make_scene("s", 8192, 6144, True, 0, 0)
    assert _digest(*[a.points for a in small.annotations]) == "e47b258fac1aa39217bc"
    assert _digest(small.stain) == "ca230ce8afd15f4b4c8d"


@pytest.mark.parametrize("classes", [("itc",), ("itc", "itc"), ("micro", "itc"), ("macro",)])
def test_lesions_of_given_classes(classes):
    width, height = (14000, 10500) if "macro" in classes else (2400, 1800)
    for seed in range(3):
        scene = make_scene("s", width, height, True, seed, 4, classes=classes)
        tumours = [a for a in scene.annotations if not a.is_exclusion]
        diameters = sorted((longest_diameter_um(a.points) for a in tumours), reverse=True)
        assert diameters == pytest.approx(sorted((float(pdist(a.points).max()) * CAMELYON_MPP for a in tumours),
                                                 reverse=True))
        assert [lesion_category(d) for d in diameters] == sorted(classes, key=SLIDE_LABELS.index, reverse=True)
        for diameter in diameters:
            lo, hi = LESION_DIAMETERS_UM[lesion_category(diameter)]
            assert lo - 1e-6 <= diameter <= hi + 1e-6
            # a map's error never crosses a limit
            assert min(abs(diameter - ITC_MAX_UM), abs(diameter - MICRO_MAX_UM)) > 4 * MAP_ERROR_UM
        for a in tumours:  # on the slide
            assert a.points.min() >= 0 and a.points[:, 0].max() < width and a.points[:, 1].max() < height
        again = make_scene("s", width, height, True, seed, 4, classes=classes)
        assert all(np.array_equal(a.points, b.points) for a, b in zip(scene.annotations, again.annotations))


def test_longest_diameter_and_bad_classes():
    square = np.array([[0, 0], [30, 0], [30, 40], [0, 40], [15, 20]], float)
    assert longest_diameter_um(square, mpp=1.0) == pytest.approx(50.0)
    assert longest_diameter_um(square) == pytest.approx(50.0 * CAMELYON_MPP)
    assert longest_diameter_um(np.array([[0, 0], [1, 1], [3, 3], [2, 2], [1, 1]], float), 1.0) == pytest.approx(
        3 * math.sqrt(2))  # on a line
    with pytest.raises(UserError, match="lesion classes"):
        make_scene("s", 2048, 1536, False, 0, 0, classes=("itc",))
    with pytest.raises(UserError, match="lesion classes"):
        make_scene("s", 2048, 1536, True, 0, 0, classes=("huge",))
    with pytest.raises(UserError, match="lesion classes"):
        make_scene("s", 2048, 1536, True, 0, 0, classes=())
    with pytest.raises(NoRoomError, match="no room for a macro lesion of 2200 um"):
        make_scene("s", 2048, 1536, True, 0, 0, classes=("macro",))


def test_plan_realises_every_stage():
    plan = camelyon17_plan(10, seed=3)
    assert [stage for _, stage, _ in plan] == list(PN_STAGES) * 2
    for k, (patient, stage, nodes) in enumerate(plan):
        assert patient == f"patient_{k:03d}" and [name for name, _ in nodes] == [f"{patient}_node_{j}"
                                                                                 for j in range(5)]
        labels = [max(classes, key=SLIDE_LABELS.index, default="negative") for _, classes in nodes]
        assert pn_stage(labels) == stage
        for _, classes in nodes:
            assert classes.count("macro") + classes.count("micro") <= 1  # one metastasis a node
    assert camelyon17_plan(10, seed=3) == plan  # deterministic
    assert camelyon17_plan(10, seed=4) != plan
    assert [stage for _, stage, _ in camelyon17_plan(5, nodes=3)] == ["pN0", "pN0(i+)", "pN1mi", "pN1", "pN0"]
    with pytest.raises(UserError, match="nothing to generate"):
        camelyon17_plan(0)


def test_make_data_options_for_camelyon17(tmp_path, capsys):
    for extra, message in ((["--tumor", "2"], "--tumor does not apply to --split camelyon17"),
                           (["--tumor", "1", "--normal", "0"], "--tumor and --normal do not apply"),
                           (["--patients", "3", "--split", "testing"], "--patients applies to --split camelyon17")):
        split = [] if "--split" in extra else ["--split", "camelyon17"]
        assert cli.main(["make-data", "--out", str(tmp_path / "d"), *split, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "d" / "camelyon17").exists()


def test_a_negative_patient_kept_on_rerun_and_real_stage_labels_refused(tmp_path, capsys):
    """One patient (pN0: five negative nodes) through the command line; a rerun keeps the slides; a real
    stage_labels.csv (its slides not the generator's) stops a run before anything is written."""
    args = ["make-data", "--out", str(tmp_path), "--split", "camelyon17", "--patients", "1", "--width", "512",
            "--height", "512"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == f"5 slides under {tmp_path}/camelyon17"
    folder = tmp_path / "camelyon17"
    assert sorted(p.name for p in folder.iterdir()) == [f"patient_000_node_{j}.tif" for j in range(5)] + \
        ["stage_labels.csv"]
    assert (folder / "stage_labels.csv").read_text() == "patient,stage\npatient_000.zip,pN0\n" + "".join(
        f"patient_000_node_{j}.tif,negative\n" for j in range(5))
    stamps = [p.stat().st_mtime_ns for p in sorted(folder.glob("*.tif"))]
    assert cli.main(args) == 0  # kept, the CSV rewritten (it is the generator's)
    assert [p.stat().st_mtime_ns for p in sorted(folder.glob("*.tif"))] == stamps
    real = tmp_path / "real"
    (real / "camelyon17").mkdir(parents=True)
    (real / "camelyon17" / "stage_labels.csv").write_text("patient,stage\npatient_000.zip,pN1\n"
                                                         "patient_000_node_0.tif,macro\n")
    assert cli.main([*args[:2], str(real), *args[3:]]) == 2
    assert "stage_labels.csv" in capsys.readouterr().err
    assert sorted(p.name for p in (real / "camelyon17").iterdir()) == ["stage_labels.csv"]


def test_itc_patients_files_and_reruns(tmp_path):
    """Two patients (pN0, pN0(i+)) through the API: XML exactly for the nodes with lesions, labels measured from
    it; a rerun with another seed refuses kept slides, and with overwrite leaves no stale XML."""
    paths = generate_camelyon17(tmp_path, 2, 512, 512, seed=1, tile=256)
    folder = tmp_path / "camelyon17"
    assert paths == [folder / f"patient_{k:03d}_node_{j}.tif" for k in range(2) for j in range(5)]
    plan = camelyon17_plan(2, seed=1)
    stages, labels = read_stage_csv(folder / "stage_labels.csv")
    assert stages == {"patient_000": "pN0", "patient_001": "pN0(i+)"}
    with_lesions = {name for _, _, nodes in plan for name, classes in nodes if classes}
    assert {p.stem for p in (folder / "lesion_annotations").iterdir()} == with_lesions
    assert {name for name, label in labels.items() if label == "itc"} == with_lesions
    with pytest.raises(UserError, match="made with other settings than this run's .*seed 1 -> 2"):
        generate_camelyon17(tmp_path, 2, 512, 512, seed=2, tile=256)
    generate_camelyon17(tmp_path, 2, 512, 512, seed=2, tile=256, overwrite=True)
    _, labels = read_stage_csv(folder / "stage_labels.csv")
    itc = {name for name, label in labels.items() if label == "itc"}
    assert itc != with_lesions and {p.stem for p in (folder / "lesion_annotations").iterdir()} == itc
    # a kept node's XML edited since (its ITC grown to a micro-metastasis) no longer gives the planned label
    edited = folder / "lesion_annotations" / f"{sorted(itc)[0]}.xml"
    polygons = read_asap_xml(edited)
    centre = polygons[0].points.mean(axis=0)
    grown = 500 / longest_diameter_um(polygons[0].points)
    write_asap_xml(edited, [Annotation("a", "Tumor", centre + (polygons[0].points - centre) * grown)])
    with pytest.raises(UserError, match=f"{edited.name}: its lesions measure micro, the node was made itc"):
        generate_camelyon17(tmp_path, 2, 512, 512, seed=2, tile=256)


def _perfect_maps(folder, maps, stride=32):
    """Each slide's XML ground truth rasterised at ``stride`` as a 0/1 probability map (NAME.npy + NAME.json, as
    metastasis.inference.maps writes them); slides without XML get an empty map."""
    maps.mkdir()
    for slide in sorted(folder.glob("*.tif")):
        with tifffile.TiffFile(slide) as tif:
            height, width = tif.pages[0].shape[:2]
        xml = folder / "lesion_annotations" / f"{slide.stem}.xml"
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        probs = rasterize(read_asap_xml(xml), (0, 0), (cols, rows), stride).astype(np.float32) \
            if xml.is_file() else np.zeros((rows, cols), np.float32)
        np.save(maps / f"{slide.stem}.npy", probs)
        (maps / f"{slide.stem}.json").write_text(json.dumps({
            "slide": str(slide), "stride": stride, "origin": [stride / 2, stride / 2], "shape": [rows, cols],
            "level0_size": [width, height], "mpp": CAMELYON_MPP, "max_probability": float(probs.max())}))


@pytest.mark.slow
def test_the_chain_labels_every_node_and_patient_as_made(tmp_path, capsys):
    """Five patients of five nodes (one of each pN stage), made by the command line at 768 x 576 (nodes with
    metastases larger: the two macro nodes about 11000 x 8000, most of the time, about 90 s on two cores): their
    XML ground truth as perfect maps at stride 32 gives, through ``metastasis lesions``, every slide label and pN
    stage of stage_labels.csv, kappa 1."""
    root = tmp_path / "data"
    assert cli.main(["make-data", "--out", str(root), "--split", "camelyon17", "--patients", "5", "--width", "768",
                     "--height", "576", "--tile", "256", "--workers", "2"]) == 0
    folder = root / "camelyon17"
    reference = folder / "stage_labels.csv"
    stages, labels = read_stage_csv(reference)
    assert sorted(stages.values(), key=PN_STAGES.index) == list(PN_STAGES)
    assert set(labels.values()) == set(SLIDE_LABELS) and len(labels) == 25
    assert stages == {patient: stage for patient, stage, _ in camelyon17_plan(5)}
    # the reference is what the XML measures, by the polygons' longest diameters (computed here on their own)
    for name, label in labels.items():
        xml = folder / "lesion_annotations" / f"{name}.xml"
        tumours = [a for a in read_asap_xml(xml) if not a.is_exclusion] if xml.is_file() else []
        diameters = [float(pdist(a.points).max()) * CAMELYON_MPP for a in tumours]
        assert slide_label(diameters) == label and (label == "negative") == (not xml.is_file())
        assert all(min(abs(d - ITC_MAX_UM), abs(d - MICRO_MAX_UM)) > 4 * MAP_ERROR_UM for d in diameters)
    maps, out = tmp_path / "maps", tmp_path / "lesions"
    _perfect_maps(folder, maps)
    capsys.readouterr()
    assert cli.main(["lesions", str(maps), "--out", str(out), "--reference", str(reference)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "quadratic weighted kappa 1.0000 over 5 patients; slide-label accuracy 1.0000 over 25 slides")
    assert read_stage_csv(out / "stages.csv") == (stages, labels)
    staging = json.loads((out / "staging.json").read_text())
    assert staging["kappa"] == 1.0 and staging["patient_accuracy"] == 1.0 and staging["slide_accuracy"] == 1.0
    # each polygon is one lesion of the map, its longest diameter within a map pixel's diagonal
    for name in labels:
        xml = folder / "lesion_annotations" / f"{name}.xml"
        polygons = sorted((longest_diameter_um(a.points) for a in read_asap_xml(xml) if not a.is_exclusion),
                          reverse=True) if xml.is_file() else []
        found = [lesion["longest_diameter_um"]
                 for lesion in json.loads((out / f"{name}_lesions.json").read_text())["lesions"]]
        assert len(found) == len(polygons) and np.allclose(found, polygons, atol=MAP_ERROR_UM), name
