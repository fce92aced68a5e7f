import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from brats_fl.data import CaseError, case_files, check_case, find_cases


@pytest.fixture()
def case(brats_root, tmp_path):
    """A private copy of one generated case, to break."""
    src = find_cases(brats_root)["HGG"][0]
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _rewrite(path, data=None, affine=None):
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(path))


def test_good_case(case):
    info = check_case(case)
    assert info.name == case.name and 4 in info.labels


def test_missing_file(case):
    case_files(case)["t2"].unlink()
    with pytest.raises(CaseError, match=r"_t2\.nii\.gz: NIfTI file missing"):
        check_case(case)


def test_corrupt_header(case):
    case_files(case)["flair"].write_bytes(b"this is not nifti")
    with pytest.raises(CaseError, match=r"_flair\.nii\.gz: not a readable NIfTI"):
        check_case(case)


def test_truncated_data(case):
    path = case_files(case)["t1"]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: image data cannot be read"):
        check_case(case)


def test_shape_mismatch(case):
    path = case_files(case)["t1"]
    _rewrite(path, data=np.asanyarray(nib.load(str(path)).dataobj)[:-1])
    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: shape .* differs"):
        check_case(case)


def test_affine_mismatch(case):
    path = case_files(case)["seg"]
    _rewrite(path, affine=np.diag([1.0, 1.0, 1.0, 1.0]))  # RAS instead of LPS
    with pytest.raises(CaseError, match=r"_seg\.nii\.gz: affine differs"):
        check_case(case)


def test_wrong_labels(case):
    path = case_files(case)["seg"]
    seg = np.asanyarray(nib.load(str(path)).dataobj).copy()
    seg[seg == 4] = 3  # BraTS 2018 has no label 3
    _rewrite(path, data=seg)
    with pytest.raises(CaseError, match=r"_seg\.nii\.gz: label values \[3\]"):
        check_case(case)


def test_nan_in_image(case):
    path = case_files(case)["t1ce"]
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    _rewrite(path, data=data)
    with pytest.raises(CaseError, match=r"_t1ce\.nii\.gz: contains NaN"):
        check_case(case)


def test_root_errors(tmp_path):
    with pytest.raises(CaseError, match="does not exist"):
        find_cases(tmp_path / "nope")
    with pytest.raises(CaseError, match="no case folders"):
        find_cases(tmp_path)


def test_hidden_folders_are_not_cases(tmp_path):
    """A killed make-data leaves its case in progress as a hidden .NAME.<hex>.part folder: never a case."""
    (tmp_path / "HGG/Brats18_A_1").mkdir(parents=True)
    (tmp_path / "HGG/.Brats18_A_2.0123abcd.part").mkdir()
    (tmp_path / "LGG/.hidden").mkdir(parents=True)
    assert find_cases(tmp_path) == {"HGG": [tmp_path / "HGG/Brats18_A_1"], "LGG": []}
