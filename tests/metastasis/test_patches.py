"""Patch lists: generation against the annotations, the split by slide, reading (JSON, NCRF) and its errors, and
the patch dataset's slide handles."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from metastasis.data.annotations import AnnotationError, read_asap_xml, rasterize
from metastasis.data.dataset import PatchDataset
from metastasis.data.patch_lists import PatchListError, read_ncrf_coords, read_patch_list, write_patch_list
from metastasis.data.sampling import find_training_slides, generate_patch_list
from metastasis.data.tissue import TissueMask, compute_tissue_mask, mask_paths


def test_labels_agree_with_the_tumour_mask(camelyon_root, camelyon_patches):
    patches = read_patch_list(camelyon_patches, camelyon_root)
    assert patches["patch_size"] == 64
    for split in ("training", "validation"):
        for image, group in _by_image(patches[split]).items():
            xml = camelyon_root / "training/lesion_annotations" / (image.split("/")[-1][:-4] + ".xml")
            anns = read_asap_xml(xml) if xml.is_file() else []
            tissue = TissueMask.load(mask_paths(camelyon_patches.parent / "masks", image)[0])
            for entry in group:
                y, x = entry["location"]
                centre = rasterize(anns, (x, y), (1, 1), 1.0)[0, 0] if anns else 0
                assert centre == entry["label"]
                if entry["label"] == 0:
                    # The whole 64-pixel window (4-pixel grid) is free of tumour, and the centre is on tissue.
                    window = rasterize(anns, (x - 32, y - 32), (16, 16), 4.0) if anns else np.zeros(1)
                    assert not window.any() and tissue.contains(x + 0.5, y + 0.5)


def _by_image(entries):
    groups = {}
    for e in entries:
        groups.setdefault(e["image"], []).append(e)
    return groups


def test_split_by_slide_and_balanced(camelyon_root, camelyon_patches):
    patches = read_patch_list(camelyon_patches, camelyon_root)
    train_slides = {e["image"] for e in patches["training"]}
    val_slides = {e["image"] for e in patches["validation"]}
    assert train_slides and val_slides and not train_slides & val_slides
    for split in ("training", "validation"):
        labels = Counter(e["label"] for e in patches[split])
        assert labels[1] == 60 and labels[0] == 60
        normal_sources = {e["image"].split("/")[-2] for e in patches[split] if e["label"] == 0}
        assert normal_sources == {"tumor", "normal"}  # normal patches from tumour and normal slides


def test_patches_computes_missing_masks_as_tissue_does_with_the_same_options(camelyon_root, tmp_path, capsys):
    """``patches`` and ``tissue`` share their tissue options: masks computed on the way to a patch list are those
    ``tissue`` writes with the same options (here far from the defaults, so that a dropped option shows)."""
    from metastasis.cli import main

    options = ["--downsample", "16", "--min-saturation", "0.2", "--min-tissue-um2", "40000", "--max-hole-um2", "0"]
    slides = sorted((camelyon_root / "training").glob("*/*.tif"))
    assert main(["tissue", *map(str, slides), "--out", str(tmp_path / "by_tissue"), *options]) == 0
    assert main(["patches", "--data-root", str(camelyon_root), "--masks", str(tmp_path / "by_patches"), "--out",
                 str(tmp_path / "patches.json"), "--tumor-per-slide", "5", "--patch-size", "64", *options]) == 0
    changed = 0
    for slide in slides:
        ours, theirs = (TissueMask.load(mask_paths(tmp_path / d, slide)[0]) for d in ("by_patches", "by_tissue"))
        assert ours.downsample == theirs.downsample == 16
        np.testing.assert_array_equal(ours.mask, theirs.mask)
        changed += not np.array_equal(ours.mask, compute_tissue_mask(slide, 16)[0].mask)
    assert changed  # the options are not the defaults' in effect
    # masks made by `tissue` with options are used by `patches` given the same options (before, patches could only
    # ask for the defaults, and refused such masks as made with other settings)
    assert main(["patches", "--data-root", str(camelyon_root), "--masks", str(tmp_path / "by_tissue"), "--out",
                 str(tmp_path / "again.json"), "--tumor-per-slide", "5", "--patch-size", "64", *options]) == 0
    assert (tmp_path / "again.json").read_text() == (tmp_path / "patches.json").read_text()
    # other options: refused, with advice that fits patches (it has no --overwrite)
    capsys.readouterr()
    assert main(["patches", "--data-root", str(camelyon_root), "--masks", str(tmp_path / "by_tissue"), "--out",
                 str(tmp_path / "defaults.json"), "--tumor-per-slide", "5", "--patch-size", "64", "--downsample",
                 "16"]) == 2
    error = capsys.readouterr().err
    assert "made with other settings" in error and "min_saturation 0.2 -> 0.07" in error
    assert "another --masks folder" in error and "--overwrite" not in error
    assert not (tmp_path / "defaults.json").exists()


def test_deterministic_for_a_seed(camelyon_root, camelyon_patches):
    sources = find_training_slides(camelyon_root, camelyon_patches.parent / "masks")
    a = generate_patch_list(sources, 20, 64, 0.5, seed=3)
    b = generate_patch_list(sources, 20, 64, 0.5, seed=3)
    c = generate_patch_list(sources, 20, 64, 0.5, seed=4)
    assert a == b and a != c


def test_write_read_round_trip(camelyon_root, camelyon_patches, tmp_path):
    raw = json.loads(camelyon_patches.read_text())
    assert raw["patch_level"] == 0 and not raw["training"][0]["image"].startswith("/")  # relative to the root
    patches = read_patch_list(camelyon_patches, camelyon_root)
    out = write_patch_list(tmp_path / "again.json", patches, camelyon_root)
    assert json.loads(out.read_text()) == raw


def _write(tmp_path, data):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("data, message", [
    ("{", "not valid JSON"),
    ([1, 2], "expected an object"),
    ({"training": []}, "patch list is empty"),
    ({"training": [{"image": "a.tif", "label": 1}]}, r"training\[0\]: an entry needs"),
    ({"training": [{"image": "a.tif", "location": [1], "label": 1}]}, "location must be"),
    ({"training": [{"image": "a.tif", "location": [1, "x"], "label": 1}]}, "location must be"),
    ({"validation": [{"image": "a.tif", "location": [1, 2], "label": 2}]}, r"validation\[0\]: label must be 0"),
    ({"training": [{"image": "a.tif", "location": [1, 2], "label": True}]}, "label must be 0"),
    ({"patch_size": 100, "training": [{"image": "a.tif", "location": [1, 2], "label": 1}]}, "multiple of 32"),
    ({"patch_level": 1, "training": [{"image": "a.tif", "location": [1, 2], "label": 1}]}, "only level-0"),
    ({"training": [{"image": "missing.tif", "location": [500, 500], "label": 1}]}, "missing.tif: slide file missing"),
])
def test_bad_lists(tmp_path, data, message):
    with pytest.raises(PatchListError, match=message):
        read_patch_list(_write(tmp_path, data))


def test_bad_locations_and_leaks(camelyon_root, tmp_path):
    slide = "training/normal/normal_001.tif"
    outside = {"patch_size": 224, "training": [{"image": slide, "location": [2000, 100], "label": 0}]}
    with pytest.raises(PatchListError, match=r"training\[0\]: the 224-pixel patch centred at x=100, y=2000"):
        read_patch_list(_write(tmp_path, outside), camelyon_root)
    both = {"training": [{"image": slide, "location": [500, 500], "label": 0}],
            "validation": [{"image": slide, "location": [600, 600], "label": 0}]}
    with pytest.raises(PatchListError, match="in both training and validation"):
        read_patch_list(_write(tmp_path, both), camelyon_root)
    with pytest.raises(PatchListError, match="patch list missing"):
        read_patch_list(tmp_path / "none.json")


def test_ncrf_coordinates(camelyon_root, tmp_path):
    coords = tmp_path / "tumor_train.txt"
    coords.write_text("Tumor_001,1000,800\nNormal_002,1500.4,900.6\n\n")
    entries = read_ncrf_coords(coords, camelyon_root, 1)
    assert [e["location"] for e in entries] == [[800, 1000], [901, 1500]]
    assert entries[0]["image"].endswith("training/tumor/tumor_001.tif") and entries[0]["label"] == 1
    coords.write_text("Tumor_001;1000;800\n")
    with pytest.raises(PatchListError, match="tumor_train.txt:1: expected 'name,x,y'"):
        read_ncrf_coords(coords, camelyon_root, 1)
    coords.write_text("Tumor_099,1000,800\n")
    with pytest.raises(PatchListError, match="no slide Tumor_099.tif"):
        read_ncrf_coords(coords, camelyon_root, 1)
    coords.write_text("")
    with pytest.raises(PatchListError, match="no coordinates"):
        read_ncrf_coords(coords, camelyon_root, 0)


def test_bad_annotations_stop_generation(camelyon_root, camelyon_patches, tmp_path):
    root = tmp_path / "c16"
    shutil.copytree(camelyon_root / "training", root / "training")
    masks = camelyon_patches.parent / "masks"
    xml = root / "training/lesion_annotations/tumor_001.xml"
    xml.write_text(xml.read_text().replace('X="', 'X="9', 1))  # push one vertex far outside the slide
    with pytest.raises(AnnotationError, match="tumor_001.xml: annotation .* outside the 3072x2048 slide"):
        find_training_slides(root, masks)
    xml.unlink()
    with pytest.raises(AnnotationError, match="tumor_001.xml: annotation file missing for tumour slide"):
        find_training_slides(root, masks)
    with pytest.raises(ValueError, match="no slides in training/tumor or training/normal"):
        find_training_slides(tmp_path / "empty", masks)
    normal_only = [s for s in find_training_slides(camelyon_root, masks) if not s.is_tumor]
    with pytest.raises(ValueError, match="no slide has tumour annotations"):
        generate_patch_list(normal_only)


def test_dataset_reads_patches_with_one_handle_per_slide(camelyon_root, camelyon_patches, monkeypatch):
    """One handle per slide, all sharing the process's one bounded tile cache (not OpenSlide's 32 MiB each)."""
    import metastasis.data.slide as slide_module

    opened, caches = Counter(), set()
    real_open = slide_module.open_slide

    def counting_open(path, cache=None):
        opened[path] += 1
        caches.add(id(cache))
        return real_open(path, cache)

    monkeypatch.setattr(slide_module, "open_slide", counting_open)  # the dataset's Slide opens through it
    patches = read_patch_list(camelyon_patches, camelyon_root, check=False)
    dataset = PatchDataset(patches["training"], 64)
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.shape == (3, 64, 64) and image.dtype.is_floating_point
        assert label.tolist() == [float(patches["training"][i]["label"])]
    assert set(opened.values()) == {1} and len(opened) == len({e["image"] for e in patches["training"]})
    assert len(caches) == 1 and dataset._cache is not None and len(opened) > 1


def test_a_list_of_the_seeds_size_is_checked_entry_by_entry(camelyon_root, tmp_path):
    """60,000 entries over 30 slide files (links to one slide): the check passes, shares one path string per
    slide, and still names the one bad entry deep in a split (the check works per slide on arrays)."""
    target = (camelyon_root / "training/normal/normal_001.tif").resolve()
    for i in range(30):
        (tmp_path / f"s{i:02d}.tif").symlink_to(target)
    rng = np.random.default_rng(0)
    centres = zip(rng.integers(32, 2048 - 32, 50_000), rng.integers(32, 3072 - 32, 50_000))
    entries = [{"image": f"s{i % 24:02d}.tif", "location": [int(y), int(x)], "label": i % 2}
               for i, (y, x) in enumerate(centres)]
    validation = [{"image": f"s{24 + i % 6:02d}.tif", "location": [1000, 1500], "label": 0} for i in range(10_000)]
    data = {"patch_size": 64, "training": entries, "validation": validation}
    patches = read_patch_list(_write(tmp_path, data), tmp_path)
    assert len(patches["training"]) == 50_000 and len(patches["validation"]) == 10_000
    assert len({id(e["image"]) for e in patches["training"]}) == 24
    entries[41_234] = {"image": "s05.tif", "location": [2040, 700], "label": 1}
    with pytest.raises(PatchListError, match=r"training\[41234\]: the 64-pixel patch centred at x=700, y=2040 is "
                                             r"not inside .*s05.tif \(3072x2048\)"):
        read_patch_list(_write(tmp_path, data), tmp_path)
