"""Synthetic multi-contrast brain MRI with gliomas, written in the BraTS 2018 training-release format.

Real BraTS data cannot be downloaded here, so the demo and the tests run on volumes made by this module. Each case
is a skull-stripped head (background exactly 0) with white matter, cortex, ventricles and sulcal CSF, and one tumour:

* HGG: necrotic core (label 1, dark on T1c, bright on T2), an enhancing rim (label 4, bright on T1c) and
  peritumoral edema (label 2, bright on T2 and FLAIR);
* LGG: a non-enhancing core (label 1) with edema and, in about a third of cases, a small enhancing focus.

The contrasts follow the signal behaviour of real MRI (CSF dark on FLAIR and T1, bright on T2; white matter
brighter than grey matter on T1), with partial-volume blur, a smooth bias field, noise and per-scanner intensity
scaling, stored as int16 like the release. Sub-region outlines are irregular (noise-modulated radii), so a model
has to learn the contrasts rather than a shape.

Geometry mirrors the release: 240 x 240 x 155 voxels at 1 mm, LPS-oriented affine. A smaller ``shape`` renders the
same head at a coarser voxel size (field of view kept), which is what the demo and the tests use.
"""

from __future__ import annotations

import dataclasses
import logging
import string
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from medcore.errors import UserError
from medcore.files import atomic_directory, check_replaceable
from medcore.progress import Progress
from medcore.provenance import check_made_with

from brats_fl.data import GRADES, MODALITIES, RELEASE_SHAPE, CaseError, case_files, check_case

from .random_fields import item_rng, smooth_field

__all__ = ["RELEASE_SHAPE", "RELEASE_FOV_MM", "brats_affine", "case_names", "synthesize_case", "generate_dataset"]

logger = logging.getLogger(__name__)

RELEASE_FOV_MM: tuple[float, float, float] = (240.0, 240.0, 155.0)

# Tissue classes of the phantom, in drawing order.
_BACKGROUND, _WM, _GM, _CSF, _EDEMA, _NECROSIS, _ENHANCING, _NONENH_CORE = range(8)
_CLASS_LABEL = {_EDEMA: 2, _NECROSIS: 1, _ENHANCING: 4, _NONENH_CORE: 1}
# Relative signal of each class per contrast (white matter of T1 = 1). Columns: t1ce, t1, t2, flair (MODALITIES).
_SIGNAL = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [1.00, 1.00, 0.55, 0.62],  # white matter
        [0.76, 0.72, 0.82, 0.80],  # grey matter
        [0.28, 0.25, 1.70, 0.22],  # CSF (suppressed on FLAIR)
        [0.68, 0.64, 1.32, 1.45],  # edema: bright on T2 / FLAIR
        [0.36, 0.42, 1.55, 0.95],  # necrosis: dark on T1c, fluid-bright on T2
        [1.62, 0.80, 1.02, 1.12],  # enhancing tumour: bright on T1c only
        [0.55, 0.52, 1.42, 1.18],  # non-enhancing (LGG) core: dark T1, bright T2, no enhancement
    ],
    dtype=np.float32,
)
assert MODALITIES == ("t1ce", "t1", "t2", "flair"), "_SIGNAL columns follow MODALITIES"

# Institution codes of the real release; HGG and LGG cases come from different mixes of them.
_INSTITUTIONS = {"HGG": ("CBICA", "TCIA01", "TCIA02", "TCIA03", "TCIA04", "TCIA05", "TCIA06", "TCIA08", "2013"),
                 "LGG": ("TCIA09", "TCIA10", "TCIA12", "TCIA13", "2013")}


def brats_affine(shape: Sequence[int] = RELEASE_SHAPE) -> np.ndarray:
    """The release's voxel-to-world affine (LPS orientation: x and y flipped) for a volume of ``shape``.

    At the release shape this is ``diag(-1, -1, 1)`` with the y origin at 239 mm, as in the BraTS 2018 headers;
    other shapes keep the field of view, so voxels are ``240 / shape`` mm.
    """
    spacing = np.array(RELEASE_FOV_MM) / np.array(shape, dtype=float)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing[1]
    return affine


def case_names(grade: str, count: int, seed: int) -> list[str]:
    """``count`` distinct, deterministic case names like the release's (``Brats18_TCIA01_131_1``)."""
    rng = item_rng(seed, 7919, GRADES.index(grade))
    names: list[str] = []
    while len(names) < count:
        site = _INSTITUTIONS[grade][rng.integers(len(_INSTITUTIONS[grade]))]
        if site == "CBICA":
            ident = "".join(rng.choice(list(string.ascii_uppercase), 3))
        elif site == "2013":
            ident = str(int(rng.integers(2, 60)))
        else:
            ident = str(int(rng.integers(100, 700)))
        name = f"Brats18_{site}_{ident}_1"
        if name not in names:
            names.append(name)
    return names


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates in mm relative to the volume centre, and the voxel size."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: np.ndarray

    @classmethod
    def for_shape(cls, shape: Sequence[int]) -> "_Grid":
        spacing = np.array(RELEASE_FOV_MM) / np.array(shape, dtype=float)
        axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing)]
        x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
        return cls(x, y, z, spacing)


def _ellipsoid_radius(grid: _Grid, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) of every voxel."""
    return np.sqrt(((grid.x - centre[0]) / radii[0]) ** 2 + ((grid.y - centre[1]) / radii[1]) ** 2
                   + ((grid.z - centre[2]) / radii[2]) ** 2)


def _tumour_classes(grid: _Grid, shape: tuple[int, ...], grade: str, brain: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Tumour sub-region classes (0 where no tumour) for one case."""
    # Centre inside one hemisphere, away from the brain surface.
    side = rng.choice([-1.0, 1.0])
    centre = (side * rng.uniform(18, 40), rng.uniform(-45, 45), rng.uniform(-15, 25))
    dist = np.sqrt((grid.x - centre[0]) ** 2 + (grid.y - centre[1]) ** 2 + (grid.z - centre[2]) ** 2)
    # Irregular outlines: every boundary radius is modulated by its own smooth field.
    def wobble(cells: int, amount: float) -> np.ndarray:
        return 1.0 + amount * np.tanh(smooth_field(shape, rng, cells))

    classes = np.zeros(shape, np.uint8)
    if grade == "HGG":
        core_r = rng.uniform(11, 20)
        edema_r = core_r + rng.uniform(8, 20)
        necrosis_r = core_r * rng.uniform(0.35, 0.65)
        classes[dist < edema_r * wobble(14, 0.35)] = _EDEMA
        core = dist < core_r * wobble(18, 0.3)
        classes[core] = _ENHANCING
        classes[core & (dist < necrosis_r * wobble(18, 0.3))] = _NECROSIS
    else:
        core_r = rng.uniform(10, 22)
        edema_r = core_r * rng.uniform(1.1, 1.6)
        classes[dist < edema_r * wobble(14, 0.35)] = _EDEMA
        core = dist < core_r * wobble(16, 0.3)
        classes[core] = _NONENH_CORE
        if rng.random() < 0.35:  # a small enhancing focus inside the core
            offset = rng.normal(0, core_r * 0.3, 3)
            focus = np.sqrt((grid.x - centre[0] - offset[0]) ** 2 + (grid.y - centre[1] - offset[1]) ** 2
                            + (grid.z - centre[2] - offset[2]) ** 2) < rng.uniform(2.5, 5.0)
            classes[core & focus] = _ENHANCING
    classes[~brain] = 0
    return classes


def synthesize_case(grade: str, shape: Sequence[int], seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: ``(images, seg)``.

    Args:
        grade: ``"HGG"`` or ``"LGG"``.
        shape: volume shape (x, y, z); :data:`RELEASE_SHAPE` for the release geometry.
        seed, index: the case depends only on these (and grade and shape).

    Returns:
        ``images``: int16 array (4, x, y, z) in :data:`~brats_fl.data.MODALITIES` order, 0 outside the brain and
        at least 1 inside it; ``seg``: uint8 array (x, y, z) with BraTS labels {0, 1, 2, 4}.
    """
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, got {grade!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise UserError(f"shape must be three sizes of at least 16 voxels, got {shape}")
    rng = item_rng(seed, GRADES.index(grade), index)
    grid = _Grid.for_shape(shape)

    # Head: an ellipsoidal brain with an irregular surface, cortex, sulci and two lateral ventricles.
    radii = np.array([68.0, 84.0, 62.0]) * rng.uniform(0.93, 1.05, 3)
    centre = (rng.normal(0, 2), rng.normal(3, 3), rng.normal(-4, 2))
    r = _ellipsoid_radius(grid, centre, radii)
    brain = r < 1.0 + 0.035 * smooth_field(shape, rng, 10)
    classes = np.where(brain, _WM, _BACKGROUND).astype(np.uint8)
    gyri = smooth_field(shape, rng, 24)
    classes[brain & (r > 0.91 + 0.04 * gyri)] = _GM
    classes[brain & (r > 0.90) & (gyri > 1.2)] = _CSF  # sulci
    for lateral in (-1.0, 1.0):
        ventricle = _ellipsoid_radius(grid, (centre[0] + lateral * 9, centre[1] + 4, centre[2] + 8),
                                      (6.5, 28.0, 10.0) * rng.uniform(0.8, 1.2, 3)) < 1.0
        classes[ventricle] = _CSF
    tumour = _tumour_classes(grid, shape, grade, brain, rng)
    classes = np.where(tumour > 0, tumour, classes)

    seg = np.zeros(shape, np.uint8)
    for cls, label in _CLASS_LABEL.items():
        seg[classes == cls] = label

    # Signal: class means, tumour heterogeneity, partial-volume blur, bias field, noise, scanner scaling.
    voxel_mm = float(np.mean(grid.spacing))
    texture = smooth_field(shape, rng, 30)
    in_tumour = tumour > 0
    images = np.empty((len(MODALITIES), *shape), np.int16)
    for channel in range(len(MODALITIES)):
        signal = _SIGNAL[classes, channel]
        signal *= 1.0 + np.where(in_tumour, 0.10, 0.03) * texture
        signal = ndimage.gaussian_filter(signal, sigma=0.8 / voxel_mm)
        signal *= np.exp(0.08 * smooth_field(shape, rng, 3))
        signal += rng.normal(0.0, 0.025, shape).astype(np.float32)
        scale = rng.uniform(250, 900)  # arbitrary scanner units, as in the release
        values = np.clip(np.rint(signal * scale), 1, np.iinfo(np.int16).max)
        images[channel] = np.where(brain, values, 0).astype(np.int16)
    return images, seg


def _write_case(case_dir: Path, images: np.ndarray, seg: np.ndarray, affine: np.ndarray) -> None:
    files = case_files(case_dir)
    for channel, key in enumerate(MODALITIES):
        _save(images[channel], affine, files[key])
    _save(seg, affine, files["seg"])


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header["descrip"] = SYNTHETIC_DESCRIPTION.encode()
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


#: Written into every generated NIfTI's header (``descrip``): how ``--overwrite`` recognises the cases it made.
SYNTHETIC_DESCRIPTION = "clara-open synthetic BraTS case"


def is_synthetic_case(case_dir: Path) -> bool:
    """Whether ``case_dir`` holds a case this generator wrote and nothing else: exactly its five files, the T1's
    header marked as generated (the data is not read)."""
    if not case_dir.is_dir() or {p.name for p in case_dir.iterdir()} != {p.name for p in case_files(case_dir).values()}:
        return False
    try:
        descrip = nib.load(str(case_files(case_dir)["t1"])).header["descrip"]
    except Exception:  # missing or unreadable: not ours
        return False
    return bytes(descrip).split(b"\0")[0].decode(errors="replace") == SYNTHETIC_DESCRIPTION


def generate_dataset(root: str | Path, n_hgg: int, n_lgg: int, shape: Sequence[int] = RELEASE_SHAPE,
                     seed: int = 0, overwrite: bool = False) -> dict[str, list[Path]]:
    """Write ``n_hgg`` HGG and ``n_lgg`` LGG cases under ``root`` in the release layout and verify each one.

    Every case is written to a temporary folder, read back with nibabel and checked (:func:`check_case`, plus the
    expected shape, affine, int16/uint8 types and zero background) before it is moved into place, so an interrupted
    run never leaves a half-written case. Existing cases are kept unless ``overwrite`` is set; then they are
    regenerated if this generator wrote them, and any other folder of the same name (a real case) stops the run
    before anything is written. Returns the case folders per grade.
    """
    root = Path(root)
    shape = tuple(int(s) for s in shape)
    affine = brats_affine(shape)
    jobs = [(grade, i, name) for grade, count in (("HGG", n_hgg), ("LGG", n_lgg))
            for i, name in enumerate(case_names(grade, count, seed))]
    if not jobs:
        raise UserError("nothing to generate: n_hgg and n_lgg are both 0")
    for grade, _, name in jobs:  # before anything is written: cases to replace are ours, cases kept are alike
        case_dir = root / grade / name
        if overwrite:
            check_replaceable(case_dir, "synthetic BraTS case", is_synthetic_case)
        elif case_dir.is_dir():  # the seed names the cases, the header records the shape
            check_made_with(case_dir, {"shape": list(check_case(case_dir, read_data=False).shape)},
                            {"shape": list(shape)}, "pass --overwrite to regenerate it, or choose another --out")
    progress = Progress(len(jobs), "cases", logger)
    written: dict[str, list[Path]] = {grade: [] for grade in GRADES}
    for grade, index, name in jobs:
        case_dir = root / grade / name
        written[grade].append(case_dir)
        if case_dir.is_dir() and not overwrite:
            progress.step(f"kept existing {grade}/{name}")
            continue
        images, seg = synthesize_case(grade, shape, seed, index)
        with atomic_directory(case_dir) as staged:
            _write_case(staged, images, seg, affine)
            _verify(staged, shape, affine, images, seg)
        labels = ",".join(str(v) for v in np.unique(seg))
        progress.step(f"wrote {grade}/{name} {shape} labels {{{labels}}}")
    return written


def _verify(case_dir: Path, shape: tuple[int, ...], affine: np.ndarray, images: np.ndarray, seg: np.ndarray) -> None:
    """Read a written case back as a user would and compare it with what was meant to be written."""
    info = check_case(case_dir)
    files = case_files(case_dir)
    if info.shape != shape or not np.allclose(info.affine, affine):
        raise CaseError(f"{case_dir}: read back shape {info.shape} / affine differ from what was written")
    for channel, key in enumerate(MODALITIES):
        back = nib.load(str(files[key]))
        if back.get_data_dtype() != np.int16 or not np.array_equal(np.asanyarray(back.dataobj), images[channel]):
            raise CaseError(f"{files[key]}: read back differs from what was written")
    back = nib.load(str(files["seg"]))
    if back.get_data_dtype() != np.uint8 or not np.array_equal(np.asanyarray(back.dataobj), seg):
        raise CaseError(f"{files['seg']}: read back differs from what was written")
