import re

import nibabel as nib
import numpy as np
import pytest

from brats_fl.data import MODALITIES, case_files, check_case, find_cases
from demodata.brats import brats_affine, case_names, generate_dataset, synthesize_case

from tests.support import TINY_BRATS_SHAPE

NAME = re.compile(r"^Brats18_(CBICA_[A-Z]{3}|TCIA\d\d_\d{3}|2013_\d+)_1$")


def test_release_affine_matches_brats_headers():
    affine = brats_affine((240, 240, 155))
    expected = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert np.allclose(affine, expected)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    small = brats_affine((64, 64, 31))
    assert np.allclose(np.abs(np.diag(small)[:3]), [3.75, 3.75, 5.0])  # same field of view


def test_layout_names_and_types(brats_root):
    cases = find_cases(brats_root)
    assert [len(cases["HGG"]), len(cases["LGG"])] == [3, 3]
    for grade, dirs in cases.items():
        for case_dir in dirs:
            assert NAME.match(case_dir.name), case_dir.name
            files = case_files(case_dir)
            assert sorted(p.name for p in case_dir.iterdir()) == sorted(p.name for p in files.values())
            for key, path in files.items():
                image = nib.load(str(path))
                assert image.shape == TINY_BRATS_SHAPE
                assert image.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
                assert np.allclose(image.affine, brats_affine(TINY_BRATS_SHAPE))
                assert image.header["qform_code"] == 1 and image.header["sform_code"] == 1
            info = check_case(case_dir)
            assert set(info.labels) <= {0, 1, 2, 4}


def test_skull_stripped_background_and_labels():
    for grade in ("HGG", "LGG"):
        images, seg = synthesize_case(grade, (64, 64, 48), seed=3, index=0)
        brain = images[0] > 0
        assert 0.1 < brain.mean() < 0.3  # a 1.2-1.6 l brain in the 8.9 l field of view
        for channel in images:  # background exactly 0 in every contrast, brain nonzero in every contrast
            assert np.array_equal(channel > 0, brain)
        assert np.all(brain[seg > 0])  # tumour only inside the brain
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        assert (seg == 2).any() and (seg == 1).any()


def test_hgg_enhances_lgg_mostly_does_not():
    hgg_et = [(synthesize_case("HGG", (48, 48, 32), 0, i)[1] == 4).sum() for i in range(4)]
    lgg = [synthesize_case("LGG", (48, 48, 32), 0, i)[1] for i in range(6)]
    assert all(n > 0 for n in hgg_et)
    lgg_et_share = [(s == 4).sum() / max((s > 0).sum(), 1) for s in lgg]
    assert sum(share == 0 for share in lgg_et_share) >= 3  # most LGG cases have no enhancing tumour
    assert max(lgg_et_share) < 0.1  # and where there is some, it is little


def _region_means(images, seg, mask_fn):
    return [float(images[c][mask_fn(seg, images)].mean()) for c in range(len(MODALITIES))]


def test_sub_regions_have_the_real_contrasts():
    images, seg = synthesize_case("HGG", (96, 96, 64), seed=1, index=2)
    ch = {m: i for i, m in enumerate(MODALITIES)}
    brain = images[0] > 0
    # Healthy reference: brain away from the tumour and its edema (mostly white matter).
    healthy = brain & (seg == 0)
    def mean(channel, mask):
        return float(images[ch[channel]][mask].mean())
    edema, necrosis, enhancing = seg == 2, seg == 1, seg == 4
    assert mean("flair", edema) > 1.4 * mean("flair", healthy)
    assert mean("t2", edema) > 1.4 * mean("t2", healthy)
    assert mean("t1ce", enhancing) > 1.3 * mean("t1ce", healthy)
    assert mean("t1ce", enhancing) > 1.5 * mean("t1", enhancing) * mean("t1ce", healthy) / mean("t1", healthy)
    assert mean("t1ce", necrosis) < 0.6 * mean("t1ce", enhancing)


def test_contrasts_carry_the_labels():
    """A per-voxel threshold on normalised FLAIR already finds the whole tumour: the data is learnable."""
    dice = []
    for index in range(3):
        images, seg = synthesize_case("HGG", (64, 64, 48), seed=7, index=index)
        flair = images[MODALITIES.index("flair")].astype(float)
        brain = flair > 0
        z = (flair - flair[brain].mean()) / flair[brain].std()
        pred, truth = (z > 1.0) & brain, seg > 0
        dice.append(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    assert np.mean(dice) > 0.6, dice


def test_deterministic_for_a_seed(tmp_path):
    a = synthesize_case("LGG", (32, 32, 24), seed=11, index=4)
    b = synthesize_case("LGG", (32, 32, 24), seed=11, index=4)
    c = synthesize_case("LGG", (32, 32, 24), seed=12, index=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert case_names("HGG", 5, 0) == case_names("HGG", 5, 0)
    assert len(set(case_names("HGG", 40, 0))) == 40
    # A case does not depend on how many others are generated with it.
    generate_dataset(tmp_path / "one", 1, 0, shape=(32, 32, 24), seed=4)
    generate_dataset(tmp_path / "two", 2, 1, shape=(32, 32, 24), seed=4)
    first = find_cases(tmp_path / "one")["HGG"][0]
    again = tmp_path / "two" / "HGG" / first.name
    for key, path in case_files(first).items():
        assert np.array_equal(nib.load(str(path)).get_fdata(), nib.load(str(case_files(again)[key])).get_fdata())


def test_existing_cases_are_kept(tmp_path):
    root = tmp_path / "b"
    generate_dataset(root, 1, 1, shape=(32, 32, 24), seed=0)
    seg = case_files(find_cases(root)["HGG"][0])["seg"]
    stamp = seg.stat().st_mtime_ns
    generate_dataset(root, 1, 1, shape=(32, 32, 24), seed=0)
    assert seg.stat().st_mtime_ns == stamp
    generate_dataset(root, 1, 1, shape=(32, 32, 24), seed=0, overwrite=True)
    assert seg.stat().st_mtime_ns != stamp


def test_bad_requests():
    with pytest.raises(ValueError, match="grade"):
        synthesize_case("GBM", (32, 32, 32), 0, 0)
    with pytest.raises(ValueError, match="shape"):
        synthesize_case("HGG", (8, 32, 32), 0, 0)
    with pytest.raises(ValueError, match="nothing to generate"):
        generate_dataset("/nonexistent-never-written", 0, 0)
