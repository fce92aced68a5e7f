"""A Camelyon16 test set on disk as FROC evaluation cases (:class:`~metastasis.froc.EvalCase`): the slides, their
detection CSVs, ground truth from ASAP XML or mask files, reference labels and slide scores. The FROC itself is
:mod:`metastasis.froc` (rules and arithmetic only)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medcore.errors import UserError, first_line
from medcore.files import read_user_text

from .detection import Detections
from .froc import EvalCase

__all__ = ["read_mask", "collect_cases"]

logger = logging.getLogger(__name__)


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth tumour mask file as a boolean array [y, x]: ``.npy`` (0/1 or 0/255) or TIFF (first page)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: mask file missing")
    try:
        if path.suffix == ".npy":
            mask = np.load(path, allow_pickle=False)
        else:
            import tifffile

            mask = tifffile.imread(path, key=0)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: cannot read the mask ({first_line(err, empty='')})") from err
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise UserError(f"{path}: expected a 2-D mask, got shape {mask.shape}")
    if mask.dtype.kind not in "biu" or mask.size and (
            int(mask.min()) < 0 or int(mask.max()) not in (0, 1, 255)
            or int(mask.max()) == 255 and bool(((mask != 0) & (mask != 255)).any())):
        raise UserError(f"{path}: expected an integer mask of 0/1 or 0/255 values, got {mask.dtype} values from "
                        f"{mask.min() if mask.size else '-'} to {mask.max() if mask.size else '-'}")
    return mask > 0


def _find_mask(mask_dir: Path, name: str) -> Path | None:
    wanted = {f"{name}.npy", f"{name}.tif", f"{name}_mask.tif", f"{name}.tiff", f"{name}_mask.tiff"}
    wanted = {w.lower() for w in wanted}
    for path in sorted(mask_dir.iterdir()):
        if path.name.lower() in wanted:
            return path
    return None


def _reference_labels(path: Path) -> dict[str, int]:
    labels = {}
    rows = list(csv.reader(io.StringIO(read_user_text(path, "reference file"))))
    for number, row in enumerate(rows, start=1):
        if not row or number == 1 and row[0].strip().lower() in ("name", "image", "slide"):
            continue
        if len(row) < 2 or row[1].strip().lower() not in ("tumor", "normal"):
            raise UserError(f"{path}:{number}: expected 'name,Tumor|Normal', got {','.join(row)!r}")
        labels[Path(row[0].strip()).stem.lower()] = int(row[1].strip().lower() == "tumor")
    return labels


def collect_cases(slides: Sequence[str | Path], detections_dir: str | Path, annotation_dir: str | Path | None = None,
                  mask_dir: str | Path | None = None, level: int = 5, map_dir: str | Path | None = None,
                  reference_csv: str | Path | None = None) -> list[EvalCase]:
    """The evaluation cases of a test set.

    Ground truth per slide: ``annotation_dir/NAME.xml`` (rasterised at ``level`` by the project), else a mask file
    in ``mask_dir`` (``NAME.npy``, ``NAME.tif`` or ``NAME_mask.tif``, indexed [y, x] at ``level``), else the slide
    is normal. Detections: ``detections_dir/NAME.csv`` (a missing file means no detections). Slide score: the
    maximum of ``map_dir/NAME.npy`` when given, else the highest detection probability. Slide label: from
    ``reference_csv`` (``name,Tumor|Normal``) when given, else whether the ground truth has tumour.
    """
    from .annotations import rasterize, read_asap_xml
    from .detection import read_detections
    from .slide import open_slide, slide_mpp

    slides = [Path(s) for s in slides]
    if not slides:
        raise UserError("no slides to evaluate")
    detections_dir = Path(detections_dir)
    if not detections_dir.is_dir():
        raise UserError(f"{detections_dir}: detections folder missing")
    labels = _reference_labels(Path(reference_csv)) if reference_csv else {}
    scale = 2 ** level
    cases = []
    for path in slides:
        name = path.stem
        slide = open_slide(path)
        try:
            width, height = slide.dimensions
            mpp = slide_mpp(slide, path)
        finally:
            slide.close()
        mask = None
        xml = Path(annotation_dir) / f"{name}.xml" if annotation_dir else None
        if xml is not None and xml.exists() and not xml.is_file():
            raise UserError(f"{xml}: not a file (expected the slide's ASAP XML annotation)")
        if xml is not None and xml.is_file():
            mask = rasterize(read_asap_xml(xml), (0.0, 0.0), (-(-width // scale), -(-height // scale)), scale) > 0
        elif mask_dir is not None and (found := _find_mask(Path(mask_dir), name)) is not None:
            mask = read_mask(found)
            expected = (-(-height // scale), -(-width // scale))
            if abs(mask.shape[0] - expected[0]) > 1 or abs(mask.shape[1] - expected[1]) > 1:
                raise UserError(f"{found}: mask of shape {mask.shape} is not level {level} of {path} "
                                 f"(expected about {expected})")
        csv_path = detections_dir / f"{name}.csv"
        if csv_path.is_file():
            detections = read_detections(csv_path)
        else:
            logger.warning("%s: no detections file, the slide counts with no detections", csv_path)
            detections = Detections(np.zeros(0), np.zeros(0), np.zeros(0))
        if map_dir is not None:
            probs = np.load(Path(map_dir) / f"{name}.npy", mmap_mode="r")
            slide_score = float(probs.max()) if probs.size else 0.0
        else:
            slide_score = float(detections.probability.max()) if len(detections) else 0.0
        if labels and name.lower() not in labels:
            raise UserError(f"{reference_csv}: no row for slide {name}")
        label = labels[name.lower()] if labels else int(mask is not None and bool(mask.any()))
        cases.append(EvalCase(name, detections, mask, mpp * scale, slide_score, label))
    return cases
