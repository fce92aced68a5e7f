"""The BraTS 2018 training-release layout and the checks every case passes before it is used.

Layout (as released)::

    ROOT/HGG/<case>/<case>_t1.nii.gz, _t1ce.nii.gz, _t2.nii.gz, _flair.nii.gz, _seg.nii.gz
    ROOT/LGG/<case>/...

with ``<case>`` like ``Brats18_CBICA_AAB_1``. Labels in ``seg``: 0 background, 1 necrotic / non-enhancing tumour
core, 2 peritumoral edema, 4 GD-enhancing tumour (there is no label 3 in BraTS 2018).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medcore.errors import UserError, first_line
from medcore.files import path_problem, require_file


__all__ = [
    "MODALITIES",
    "LABEL_VALUES",
    "GRADES",
    "RELEASE_SHAPE",
    "CaseError",
    "CaseInfo",
    "case_files",
    "find_cases",
    "check_case",
    "check_files",
    "check_image_values",
    "check_label_values",
]

#: Input channel order of the Clara model: T1c, T1, T2, FLAIR (file suffixes of the release).
MODALITIES: tuple[str, ...] = ("t1ce", "t1", "t2", "flair")
#: Label values allowed in a BraTS 2018 segmentation.
LABEL_VALUES: tuple[int, ...] = (0, 1, 2, 4)
#: Tumour grades, i.e. the release's top-level folders.
GRADES: tuple[str, ...] = ("HGG", "LGG")
#: Volume shape (x, y, z) of every BraTS 2018 image: 240 x 240 x 155 voxels of 1 mm, skull-stripped, co-registered.
RELEASE_SHAPE: tuple[int, int, int] = (240, 240, 155)


class CaseError(UserError):
    """A BraTS case that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class CaseInfo:
    """What :func:`check_case` found: the geometry shared by all five files and the labels present."""

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    labels: tuple[int, ...]


def case_files(case_dir: str | Path) -> dict[str, Path]:
    """Paths of a case's four contrasts and its label, keyed ``t1ce, t1, t2, flair, seg`` (not checked)."""
    case_dir = Path(case_dir)
    return {key: case_dir / f"{case_dir.name}_{key}.nii.gz" for key in (*MODALITIES, "seg")}


def find_cases(root: str | Path) -> dict[str, list[Path]]:
    """Case folders per grade under a BraTS root, sorted by name: ``{"HGG": [...], "LGG": [...]}`` (hidden folders
    left out).

    Raises:
        CaseError: ``root`` is missing or holds neither ``HGG/`` nor ``LGG/``.
    """
    root = Path(root)
    problem = path_problem(root, "folder")
    if problem is not None:
        raise CaseError(f"{root}: BraTS root folder does not exist" if problem == "no such folder" else
                        f"{root}: {problem} (expected the BraTS root folder)")
    # Hidden folders are never cases: a killed make-data leaves its work in progress as .NAME.<hex>.part
    found = {grade: sorted(p for p in (root / grade).iterdir() if p.is_dir() and not p.name.startswith("."))
             if (root / grade).is_dir() else [] for grade in GRADES}
    if not any(found.values()):
        raise CaseError(f"{root}: no case folders under {root / 'HGG'} or {root / 'LGG'} (expected the BraTS layout)")
    return found


def _load(path: Path) -> nib.Nifti1Image:
    require_file(path, "NIfTI file", CaseError)
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for corrupt headers
        raise CaseError(f"{path}: not a readable NIfTI file ({err})") from err
    if len(image.shape) != 3:
        raise CaseError(f"{path}: expected a 3-D volume, found shape {image.shape}")
    return image


def _data(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    try:
        return np.asanyarray(image.dataobj)
    except Exception as err:  # truncated gzip streams fail only when the data is read
        raise CaseError(f"{path}: image data cannot be read (truncated or corrupt: {first_line(err)})") from err


def check_image_values(path: str | Path, data: np.ndarray | torch.Tensor) -> None:
    """A contrast's decoded voxels: no NaN or infinity (a :class:`CaseError` naming ``path`` otherwise)."""
    if isinstance(data, torch.Tensor):
        finite = not data.is_floating_point() or bool(torch.isfinite(data).all())
    else:  # numpy: NIfTI data may be big-endian, which torch cannot take
        finite = not np.issubdtype(data.dtype, np.floating) or bool(np.isfinite(data).all())
    if not finite:
        raise CaseError(f"{path}: contains NaN or infinite values")


def check_label_values(path: str | Path, data: np.ndarray | torch.Tensor) -> tuple[int, ...]:
    """A segmentation's decoded voxels: integral values of :data:`LABEL_VALUES` only (a :class:`CaseError` naming
    ``path`` otherwise); returns the labels present. One comparison pass per label value: sorting a whole volume
    for its distinct values (``unique``) took 0.3 s a case at the release's size, and is left to the failure."""
    if not isinstance(data, torch.Tensor):  # numpy, maybe big-endian (NIfTI), which torch cannot take
        data = torch.from_numpy(np.asarray(data, dtype=np.asarray(data).dtype.newbyteorder("=")))
    present, known = [], torch.zeros(data.shape, dtype=torch.bool)
    for value in LABEL_VALUES:
        equal = data == value
        if bool(equal.any()):
            present.append(value)
            known |= equal
    if bool(known.all()):
        return tuple(present)
    values = np.unique(data[~known].cpu().numpy())
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values) & (values == np.round(values))):
        raise CaseError(f"{path}: label values must be integers, found {values[:10].tolist()}")
    raise CaseError(f"{path}: label values {values.astype(np.int64).tolist()[:10]} are not BraTS labels "
                    f"{list(LABEL_VALUES)}")


def check_case(case_dir: str | Path, read_data: bool = True) -> CaseInfo:
    """Check one case folder of the release layout; see :func:`check_files`."""
    return check_files(case_files(case_dir), Path(case_dir).name, read_data=read_data)


def check_files(files: dict[str, Path], name: str, read_data: bool = True) -> CaseInfo:
    """Check one case the way training needs it, and describe it.

    ``files`` maps ``t1ce, t1, t2, flair`` (and ``seg`` when the case is labelled) to NIfTI paths. Checks from the
    headers: every file exists and is a readable 3-D NIfTI volume; all share one shape and affine (so they overlay
    voxel by voxel). With ``read_data`` the voxels are decoded and checked too (:func:`check_image_values`,
    :func:`check_label_values`); the commands that go on to use the voxels check only the headers up front and
    the values where they decode them anyway (:class:`brats_fl.transforms.LoadCased`), so each file is decoded
    once.

    Raises:
        CaseError: naming the offending file and what is wrong with it.
    """
    files = {key: Path(path) for key, path in files.items()}
    images = {key: _load(path) for key, path in files.items()}
    ref_key = MODALITIES[0]
    ref = images[ref_key]
    for key, image in images.items():
        if image.shape != ref.shape:
            raise CaseError(f"{files[key]}: shape {image.shape} differs from {files[ref_key].name} {ref.shape}")
        if not np.allclose(image.affine, ref.affine, atol=1e-3):
            raise CaseError(
                f"{files[key]}: affine differs from {files[ref_key].name} (orientation or spacing mismatch):\n"
                f"{np.round(image.affine, 3)}\nvs\n{np.round(ref.affine, 3)}"
            )
    labels: tuple[int, ...] = ()
    if read_data:
        for key in MODALITIES:
            check_image_values(files[key], _data(files[key], images[key]))
        if "seg" in files:
            labels = check_label_values(files["seg"], _data(files["seg"], images["seg"]))
    zooms = ref.header.get_zooms()[:3]
    return CaseInfo(
        name=name,
        shape=tuple(int(s) for s in ref.shape),
        spacing=tuple(float(z) for z in zooms),
        affine=np.asarray(ref.affine),
        labels=labels,
    )
