"""Patch lists generated from slides (:func:`generate_patch_list`).

Tumour patches have their centre pixel on tumour (inside a ``Tumor`` / ``_0`` / ``_1`` polygon and outside every
``_2`` exclusion, exactly as :func:`~metastasis.data.annotations.rasterize` decides); normal patches have their
centre on tissue and their whole window at least a margin away from any tumour, from tumour slides and from normal
slides. Balanced and deterministic for a seed, with training and validation split by slide.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from medcore.errors import UserError
from medcore.files import input_files

from .annotations import Annotation, AnnotationError, check_inside, read_asap_xml, rasterize
from .patch_lists import SPLITS
from .slide import Slide
from .tissue import TissueMask, mask_paths, prepare_tissue_masks

__all__ = ["SlideSource", "find_training_slides", "generate_patch_list"]

logger = logging.getLogger(__name__)


class SlideSource:
    """One slide for patch generation: its path, annotations (empty for a normal slide), tissue mask and level-0
    microns per pixel."""

    def __init__(self, path: Path, annotations: Sequence[Annotation], tissue: TissueMask, mpp: float) -> None:
        self.path, self.annotations, self.tissue, self.mpp = Path(path), list(annotations), tissue, float(mpp)

    @property
    def is_tumor(self) -> bool:
        return any(not a.is_exclusion for a in self.annotations)

    def labels_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Exact tumour label (0/1) of level-0 pixels (x, y), as :func:`rasterize` decides it at level 0."""
        return np.array([rasterize(self.annotations, (float(x), float(y)), (1, 1), 1.0)[0, 0] if self.annotations
                         else 0 for x, y in zip(xs, ys)], np.uint8)


def find_training_slides(data_root: str | Path, mask_dir: str | Path, annotation_dir: str | Path | None = None,
                         downsample: float = 32.0, **tissue_options: float) -> list[SlideSource]:
    """The slides of a Camelyon16 training release (``training/tumor``, ``training/normal``) with their
    annotations (``training/lesion_annotations/<name>.xml``) and tissue masks (computed into ``mask_dir`` when
    missing, by :func:`~metastasis.data.tissue.prepare_tissue_masks` with ``downsample`` and ``tissue_options``).
    A ``tumor_*`` slide without annotations, or annotations outside their slide, are errors."""
    root = Path(data_root)
    annotation_dir = Path(annotation_dir) if annotation_dir else root / "training" / "lesion_annotations"
    tumour, normal = (input_files(root / "training" / kind, "*.tif") if (root / "training" / kind).is_dir() else []
                      for kind in ("tumor", "normal"))
    if not tumour and not normal:
        raise UserError(f"{root}: no slides in training/tumor or training/normal")
    annotations_of = {}  # read before any mask is written
    for path in tumour:
        xml = annotation_dir / f"{path.stem}.xml"
        if not xml.is_file():
            raise AnnotationError(f"{xml}: annotation file missing for tumour slide {path}")
        annotations_of[path] = read_asap_xml(xml)
    prepare_tissue_masks(tumour + normal, mask_dir, downsample=downsample, **tissue_options,
                         remedy="give the tissue options that made it, or another --masks folder")
    sources = []
    for path in tumour + normal:
        xml = annotation_dir / f"{path.stem}.xml"
        annotations: list[Annotation] = annotations_of.get(path, [])
        tissue = TissueMask.load(mask_paths(mask_dir, path)[0])
        check_inside(annotations, tissue.level0_size, xml)
        with Slide(path) as slide:
            sources.append(SlideSource(path, annotations, tissue, slide.mpp))
    return sources


def _split_slides(sources: Sequence[SlideSource], validation_fraction: float,
                  rng: np.random.Generator) -> dict[str, list[SlideSource]]:
    """Tumour and normal slides are split separately, so both sides get both kinds when there are two of each."""
    split: dict[str, list[SlideSource]] = {s: [] for s in SPLITS}
    for kind in (True, False):
        group = [s for s in sources if s.is_tumor == kind]
        order = rng.permutation(len(group))
        n_val = int(round(validation_fraction * len(group)))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        else:
            n_val = 0
        split["validation"] += [group[i] for i in order[:n_val]]
        split["training"] += [group[i] for i in order[n_val:]]
    return split


def _sample(source: SlideSource, candidates: np.ndarray, count: int, label: int, patch_size: int,
            rng: np.random.Generator) -> list[dict]:
    """``count`` patch centres in random candidate mask cells whose exact level-0 label is ``label``."""
    d = source.tissue.downsample
    width, height = source.tissue.level0_size
    half = patch_size // 2
    rows, cols = np.nonzero(candidates)
    entries: list[dict] = []
    if len(rows) == 0 or count <= 0:
        return entries
    for _ in range(20):  # rejection rounds: cells on a lesion border may have pixels of the other label
        pick = rng.integers(0, len(rows), size=2 * (count - len(entries)))
        xs = np.clip(np.floor((cols[pick] + rng.random(len(pick))) * d), half, width - half).astype(np.int64)
        ys = np.clip(np.floor((rows[pick] + rng.random(len(pick))) * d), half, height - half).astype(np.int64)
        keep = source.labels_at(xs, ys) == label
        if label == 0:
            keep &= source.tissue.contains(xs + 0.5, ys + 0.5)
        entries += [{"image": str(source.path), "location": [int(y), int(x)], "label": label}
                    for x, y in zip(xs[keep], ys[keep])][: count - len(entries)]
        if len(entries) >= count:
            break
    return entries


def generate_patch_list(sources: Sequence[SlideSource], tumor_per_slide: int = 200, patch_size: int = 224,
                        validation_fraction: float = 0.2, margin_um: float = 50.0, seed: int = 0) -> dict:
    """Balanced tumour/normal patches from slides with annotations and tissue masks, split by slide.

    Each tumour slide gives ``tumor_per_slide`` tumour patches (centre pixel tumour). The same number of normal
    patches is drawn per split, half from the tumour slides' tissue at least ``margin_um`` (plus half a patch)
    away from any tumour and half from normal slides (all from tumour slides when a split has no normal slide).
    Deterministic for a seed.
    """
    if not sources:
        raise UserError("no slides to sample patches from")
    if not any(s.is_tumor for s in sources):
        raise UserError("no slide has tumour annotations: tumour patches cannot be sampled")
    if patch_size < 32 or patch_size % 32 or tumor_per_slide < 1 or not 0 <= validation_fraction < 1:
        raise UserError(f"invalid settings: patch_size {patch_size}, tumor_per_slide {tumor_per_slide}, "
                         f"validation_fraction {validation_fraction}")
    split = _split_slides(sources, validation_fraction, np.random.default_rng([seed, 0]))
    result: dict = {"patch_size": patch_size}
    for index_split, name in enumerate(SPLITS):
        group = split[name]
        tumour_slides = [s for s in group if s.is_tumor]
        normal_slides = [s for s in group if not s.is_tumor]
        entries: list[dict] = []
        normal_cells = {}
        for i, s in enumerate(tumour_slides):
            shape, d = s.tissue.mask.shape, s.tissue.downsample
            # Cells whose centre is tumour, plus cells holding a polygon vertex (an ITC can miss every centre);
            # the exact level-0 label of each sampled centre decides in _sample.
            cells = (rasterize(s.annotations, (0.0, 0.0), (shape[1], shape[0]), d) > 0) | \
                _vertex_cells(s.annotations, shape, d)
            reach = int(math.ceil((patch_size / 2 + margin_um / s.mpp) / d)) + 1
            normal_cells[s.path] = s.tissue.mask & ~ndimage.binary_dilation(cells, iterations=reach)
            rng = np.random.default_rng([seed, 1, index_split, i])
            entries += _sample(s, cells, tumor_per_slide, 1, patch_size, rng)
        n_tumour = len(entries)
        from_tumour_slides = n_tumour // 2 if normal_slides else n_tumour
        for k, (slides, total) in enumerate([(tumour_slides, from_tumour_slides),
                                             (normal_slides, n_tumour - from_tumour_slides)]):
            for i, s in enumerate(slides):
                quota = total // len(slides) + (1 if i < total % len(slides) else 0)
                cells = normal_cells.get(s.path, s.tissue.mask)
                entries += _sample(s, cells, quota, 0, patch_size, np.random.default_rng([seed, 2 + k, index_split, i]))
        if not tumour_slides and validation_fraction > 0:
            logger.warning("%s: no tumour slide on this side of the split (at least two tumour slides are needed "
                           "for both sides)", name)
        result[name] = entries
        counts = np.bincount([e["label"] for e in entries], minlength=2)
        logger.info("%s: %d slides (%d tumour), %d tumour and %d normal patches", name, len(group),
                    len(tumour_slides), counts[1], counts[0])
    return result


def _vertex_cells(annotations: Sequence[Annotation], shape: tuple[int, int], d: float) -> np.ndarray:
    """Mask cells containing a tumour polygon vertex (so lesions smaller than a cell are not missed)."""
    out = np.zeros(shape, bool)
    for ann in annotations:
        if ann.is_exclusion:
            continue
        cols = np.clip((ann.points[:, 0] // d).astype(int), 0, shape[1] - 1)
        rows = np.clip((ann.points[:, 1] // d).astype(int), 0, shape[0] - 1)
        out[rows, cols] = True
    return out
