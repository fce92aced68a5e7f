import json

import pytest

from brats_fl.data import CaseError, case_files, find_cases
from brats_fl.datalist import CLARA_SITES, build_datalists, read_datalist, split_sizes, write_datalists


@pytest.mark.parametrize("site, n, expected", [(CLARA_SITES[0], 210, (144, 30, 36)), (CLARA_SITES[1], 75, (56, 12, 7))])
def test_clara_split_sizes_on_the_real_release(site, n, expected):
    assert split_sizes(n, site.clara_split) == expected


def test_other_sizes_keep_the_proportions():
    assert split_sizes(21, CLARA_SITES[0].clara_split) == (14, 3, 4)  # 21 * 30/210 = 3, 21 * 36/210 = 3.6 -> 4
    assert split_sizes(100, CLARA_SITES[0].clara_split) == (100 - 14 - 17, 14, 17)
    assert split_sizes(3, CLARA_SITES[1].clara_split) == (1, 1, 1)  # at least one case per split
    with pytest.raises(ValueError, match="too few"):
        split_sizes(2, CLARA_SITES[0].clara_split)


def test_datalists_format_determinism_and_disjointness(brats_root, tmp_path):
    a = build_datalists(brats_root, seed=3)
    b = build_datalists(brats_root, seed=3)
    assert a == b
    assert set(a) == {"site-1", "site-2"}
    grades = {"site-1": "HGG", "site-2": "LGG"}
    for site, lists in a.items():
        names = [e["label"].split("/")[1] for split in lists.values() for e in split]
        assert len(names) == len(set(names)) == 3  # every case exactly once
        assert [len(lists[s]) for s in ("training", "validation", "testing")] == [1, 1, 1]
        for split in lists.values():
            for entry in split:
                assert entry["image"][0].startswith(grades[site] + "/")
                assert [p.rsplit("_", 1)[1] for p in entry["image"]] == ["t1ce.nii.gz", "t1.nii.gz", "t2.nii.gz",
                                                                          "flair.nii.gz"]
                assert entry["label"].endswith("_seg.nii.gz") and not entry["label"].startswith("/")
    paths = write_datalists(brats_root, tmp_path, seed=3)
    assert paths["site-1"].name == "seg_brats18_datalist_client_a.json"
    assert paths["site-2"].name == "seg_brats18_datalist_client_b.json"
    assert json.loads(paths["site-1"].read_text()) == a["site-1"]
    resolved = read_datalist(paths["site-2"], brats_root)
    assert all(p.startswith(str(brats_root)) for p in resolved["training"][0]["image"])


def test_a_broken_case_stops_datalist_creation(brats_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(brats_root, root)
    bad = case_files(find_cases(root)["LGG"][1])["flair"]
    bad.write_bytes(b"\x1f\x8b broken gzip")
    with pytest.raises(CaseError, match=f"{bad}"):
        write_datalists(root, tmp_path / "lists")
    assert not (tmp_path / "lists").exists()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[]", "expected an object"),
    ('{"training": [], "validation": [], "testing": []}', "'training' list is missing or empty"),
    ('{"training": [{"image": "a.nii.gz", "label": "b"}], "validation": [1], "testing": [1]}', r"training\[0\] must be"),
])
def test_bad_datalists(tmp_path, content, message):
    path = tmp_path / "list.json"
    path.write_text(content)
    with pytest.raises(CaseError, match=message):
        read_datalist(path, tmp_path)


def test_datalist_pointing_at_missing_files(brats_root, tmp_path):
    lists = build_datalists(brats_root, check=False)["site-1"]
    lists["testing"][0]["label"] = "HGG/nowhere/nowhere_seg.nii.gz"
    path = tmp_path / "list.json"
    path.write_text(json.dumps(lists))
    with pytest.raises(CaseError, match="nowhere_seg.nii.gz: NIfTI file missing"):
        read_datalist(path, brats_root)
    with pytest.raises(CaseError, match="datalist file missing"):
        read_datalist(tmp_path / "none.json", brats_root)
