"""A Camelyon16 test set on disk as FROC evaluation cases (:class:`~metastasis.evaluation.froc.EvalCase`): the
slides, their detection CSVs, ground truth from ASAP XML or mask files, reference labels and slide scores. The
FROC itself is :mod:`metastasis.evaluation.froc` (rules and arithmetic only)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medcore.errors import UserError, first_line
from medcore.files import check_distinct_names, find_named, read_npy, read_user_text, require_file

from .detection import Detections
from .froc import GROW_UM, EvalCase

__all__ = ["read_mask", "ground_truth", "collect_cases"]

logger = logging.getLogger(__name__)


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth tumour mask file as a boolean array [y, x]: ``.npy`` (0/1 or 0/255) or TIFF (first page)."""
    path = Path(path)
    require_file(path, "mask file")
    if path.suffix.lower() == ".npy":
        mask = read_npy(path, "mask")
    else:
        import tifffile

        try:
            mask = tifffile.imread(path, key=0)
        except (OSError, ValueError, EOFError, MemoryError) as err:
            raise UserError(f"{path}: cannot read the mask ({first_line(err)})") from None
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
    """``name -> 1 (Tumor) or 0 (Normal)`` from Camelyon16's ``reference.csv`` (``name,Tumor|Normal[,...]``, an
    optional header); each slide once, and at least one."""
    labels, lines = {}, {}
    rows = list(csv.reader(io.StringIO(read_user_text(path, "reference file"))))
    for number, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or number == 1 and row[0].strip().lower() in ("name", "image", "slide"):
            continue
        if len(row) < 2 or row[1].strip().lower() not in ("tumor", "normal"):
            raise UserError(f"{path}:{number}: expected 'name,Tumor|Normal', got {','.join(row)!r}")
        name = Path(row[0].strip()).stem.lower()
        if name in lines:
            raise UserError(f"{path}:{number}: slide {row[0].strip()} is listed again (first on line {lines[name]})")
        lines[name] = number
        labels[name] = int(row[1].strip().lower() == "tumor")
    if not labels:
        raise UserError(f"{path}: lists no slides")
    return labels


def ground_truth(slide: str | Path, level: int, annotation_dir: str | Path | None = None,
                 mask_dir: str | Path | None = None) -> tuple[np.ndarray | None, float]:
    """A slide's tumour mask [y, x] at ``level`` and the mask's microns per pixel.

    From ``annotation_dir/NAME.xml`` (rasterised by the project; every polygon must fit the slide), else a mask
    file in ``mask_dir`` (``NAME.npy``, ``NAME.tif`` or ``NAME_mask.tif``, checked to be ``level`` of the slide),
    else ``None``: a normal slide.
    """
    return _ground_truth(Path(slide), _geometry(Path(slide)), level, annotation_dir, mask_dir)


def _geometry(path: Path) -> tuple[tuple[int, int], float]:
    """A slide's level-0 (width, height) and microns per pixel."""
    from ..data.slide import Slide

    with Slide(path) as opened:
        return opened.dimensions, opened.mpp


def _ground_truth(path: Path, geometry: tuple[tuple[int, int], float], level: int,
                  annotation_dir: str | Path | None, mask_dir: str | Path | None) -> tuple[np.ndarray | None, float]:
    from ..data.annotations import check_inside, rasterize, read_asap_xml

    (width, height), mpp = geometry
    scale = 2 ** level
    size = (-(-width // scale), -(-height // scale))
    xml = find_named(annotation_dir, f"{path.stem}.xml", "annotation") if annotation_dir else None
    if xml is not None and xml.exists() and not xml.is_file():
        raise UserError(f"{xml}: not a file (expected the slide's ASAP XML annotation)")
    if xml is not None and xml.is_file():
        annotations = read_asap_xml(xml)
        check_inside(annotations, (width, height), xml)
        return rasterize(annotations, (0.0, 0.0), size, scale) > 0, mpp * scale
    found = _find_mask(Path(mask_dir), path.stem) if mask_dir is not None else None
    if found is None:
        return None, mpp * scale
    mask = read_mask(found)
    if abs(mask.shape[0] - size[1]) > 1 or abs(mask.shape[1] - size[0]) > 1:
        raise UserError(f"{found}: mask of shape {mask.shape} is not level {level} of {path} "
                        f"(expected about {(size[1], size[0])})")
    return mask, mpp * scale


def _detections(detections_dir: Path, name: str, size: tuple[int, int]) -> Detections:
    """``detections_dir/NAME.csv``, every detection inside the ``size`` = (width, height) slide; a missing file
    means no detections (logged)."""
    from .detection import read_detections

    path = find_named(detections_dir, f"{name}.csv", "detections file")
    if path is None or not path.is_file():
        logger.warning("%s: no detections file, the slide counts with no detections", detections_dir / f"{name}.csv")
        return Detections(np.zeros(0), np.zeros(0), np.zeros(0))
    detections = read_detections(path)
    outside = (detections.x >= size[0]) | (detections.y >= size[1])
    if outside.any():  # a detection off the slide can hit nothing: it would count as a false positive unnoticed
        i = int(np.argmax(outside))
        raise UserError(f"{path}: detection {i + 1} at level-0 ({detections.x[i]}, {detections.y[i]}) lies outside "
                        f"the {size[0]}x{size[1]} slide {name} (coordinates of another slide or level?)")
    return detections


def _slide_score(detections: Detections, map_path: Path | None, size: tuple[int, int]) -> float:
    """The maximum of the probability map when given (its description checked by
    :func:`~metastasis.inference.maps.describe_map`, and to be a map of this ``size`` = (width, height) slide; the
    maximum is the one it records), else the highest detection probability (0 for none)."""
    if map_path is not None:
        from ..inference.maps import describe_map, map_maximum

        meta = describe_map(map_path)
        if tuple(meta["level0_size"]) != tuple(size):
            raise UserError(f"{map_path}: a map of a {meta['level0_size'][0]}x{meta['level0_size'][1]} slide, not of "
                            f"the {size[0]}x{size[1]} slide {map_path.stem} (the map of another slide?)")
        return map_maximum(map_path, meta)
    return float(detections.probability.max()) if len(detections) else 0.0


def collect_cases(slides: Sequence[str | Path], detections_dir: str | Path, annotation_dir: str | Path | None = None,
                  mask_dir: str | Path | None = None, level: int = 5, map_dir: str | Path | None = None,
                  reference_csv: str | Path | None = None) -> list[EvalCase]:
    """The evaluation cases of a test set.

    Ground truth per slide: :func:`ground_truth` at ``level``. Detections: ``detections_dir/NAME.csv`` (a missing
    file means no detections). Slide score: the maximum of ``map_dir/NAME.npy`` when given, else the highest
    detection probability. Slide label: from ``reference_csv`` (``name,Tumor|Normal``) when given, else whether the
    ground truth has tumour.
    """
    slides = [Path(s) for s in slides]
    if not slides:
        raise UserError("no slides to evaluate")
    check_distinct_names(slides, "slides", "detections, maps and rows")
    detections_dir = Path(detections_dir)
    if not detections_dir.is_dir():
        raise UserError(f"{detections_dir}: detections folder missing")
    labels = _reference_labels(Path(reference_csv)) if reference_csv else {}
    cases = []
    for path in slides:
        name = path.stem
        if labels and name.lower() not in labels:
            raise UserError(f"{reference_csv}: no row for slide {name}")
        geometry = _geometry(path)
        if geometry[1] * 2 ** level > GROW_UM / 2:  # the rules' growth would be less than a pixel: not their FROC
            raise UserError(f"level {level}: a ground-truth pixel of {path.name} would be "
                            f"{geometry[1] * 2 ** level:.0f} um wide, coarser than the {GROW_UM / 2:g} um the "
                            "Camelyon16 evaluation regions grow by; use a lower level (the challenge uses 5)")
        mask, mask_mpp = _ground_truth(path, geometry, level, annotation_dir, mask_dir)
        detections = _detections(detections_dir, name, geometry[0])
        map_path = None if map_dir is None else (find_named(map_dir, f"{name}.npy", "map")
                                                 or Path(map_dir) / f"{name}.npy")
        score = _slide_score(detections, map_path, geometry[0])
        has_tumour = mask is not None and bool(mask.any())
        label = labels[name.lower()] if labels else int(has_tumour)
        if has_tumour and not label:
            raise UserError(f"{reference_csv}: slide {name} is labelled Normal, but its ground truth has tumour "
                            "regions (the reference or the annotations belong to another slide)")
        cases.append(EvalCase(name, detections, mask, mask_mpp, score, label))
    return cases
