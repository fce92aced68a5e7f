"""Training patch lists: read them (the seed's JSON, NCRF coordinate files), generate them from slides, and read
the patches they point at.

A patch list is MONAI's ``PatchWSIDataset`` convention, in one JSON file per data set::

    {"patch_size": 224, "patch_level": 0,
     "training":   [{"image": "training/tumor/tumor_001.tif", "location": [y, x], "label": 1}, ...],
     "validation": [...]}

``location`` is the level-0 (row, column) = (y, x) of the patch centre, as MONAI's ``PatchWSIDataset`` with
``center_location=True`` reads it; the patch covers level-0 ``[x - P/2, x + P/2) x [y - P/2, y + P/2)``.
``image`` paths are relative to a data root (or absolute). ``label`` is 1 for tumour, 0 for normal.

NCRF's coordinate files (``coords/tumor_train.txt`` ...) have one ``name,x,y`` line per patch centre (level 0,
x first), with the label implied by the file; :func:`read_ncrf_coords` turns one into list entries.

Generation (:func:`generate_patch_list`) samples tumour patches whose centre pixel is tumour (inside a ``Tumor``
/ ``_0`` / ``_1`` polygon and outside every ``_2`` exclusion, exactly as :func:`~metastasis.annotations.rasterize`
decides) and normal patches whose centre is on tissue and whose whole window is at least a margin away from any
tumour, from tumour slides and from normal slides, balanced and deterministic for a seed, with training and
validation split by slide.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import openslide
import torch
from scipy import ndimage

from medcore.errors import UserError
from medcore.files import input_files, read_json, read_user_text, write_json

from .annotations import Annotation, AnnotationError, check_inside, read_asap_xml, rasterize
from .slide import Slide, SlideError, open_slide, read_rgb
from .stain import StainNormalizer, slide_stain_vectors
from .tissue import TissueMask, mask_paths, prepare_tissue_masks
from .transforms import normalize, to_unit

__all__ = ["PatchListError", "SPLITS", "is_patch_list", "read_patch_list", "check_patch_list", "read_ncrf_coords",
           "write_patch_list", "SlideSource", "find_training_slides", "generate_patch_list", "PatchDataset"]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation")


class PatchListError(UserError):
    """A patch list that cannot be used; the message names the file (and entry) and the problem."""


def _resolve(image: str, root: Path) -> Path:
    path = Path(image)
    return path if path.is_absolute() else root / path


def _check_entry(entry: object, where: str) -> dict:
    if not isinstance(entry, Mapping) or not {"image", "location", "label"} <= set(entry):
        raise PatchListError(f"{where}: an entry needs 'image', 'location' [y, x] and 'label', got {entry!r}")
    location = entry["location"]
    if not isinstance(location, (list, tuple)) or len(location) != 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in location):
        raise PatchListError(f"{where}: location must be [y, x] level-0 numbers, got {location!r}")
    label = entry["label"]
    if isinstance(label, (list, tuple)) and len(label) == 1:
        label = label[0]
    if isinstance(label, bool) or label not in (0, 1):
        raise PatchListError(f"{where}: label must be 0 (normal) or 1 (tumour), got {entry['label']!r}")
    return {"image": str(entry["image"]), "location": [int(round(location[0])), int(round(location[1]))],
            "label": int(label)}


def is_patch_list(path: Path) -> bool:
    """Whether ``path`` is a patch list this project wrote (a JSON object with ``patch_size`` and both splits)."""
    try:
        data = read_json(path)
    except UserError:
        return False
    return isinstance(data, dict) and "patch_size" in data and all(isinstance(data.get(s), list) for s in SPLITS)


def read_patch_list(path: str | Path, data_root: str | Path | None = None, check: bool = True) -> dict:
    """Read a patch list JSON: ``{"patch_size": P, "training": [...], "validation": [...]}``.

    Image paths become absolute (relative ones are taken from ``data_root``, default the list's folder). With
    ``check``, every slide is opened once and every patch must lie inside its slide
    (:func:`check_patch_list`). Raises :class:`PatchListError` naming the file, split and entry.
    """
    path = Path(path)
    data = read_json(path, "patch list", PatchListError)
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise PatchListError(f"{path}: expected an object with 'training' and/or 'validation' lists")
    root = Path(data_root) if data_root is not None else path.parent
    patch_size = data.get("patch_size", 224)
    if not isinstance(patch_size, int) or patch_size < 32 or patch_size % 32:
        raise PatchListError(f"{path}: patch_size must be a multiple of 32 (at least 32), got {patch_size!r}")
    if data.get("patch_level", 0) != 0:
        raise PatchListError(f"{path}: only level-0 patches are supported, got patch_level {data['patch_level']!r}")
    result: dict = {"patch_size": patch_size, "source": str(path)}
    resolved: dict[str, str] = {}
    for split in SPLITS:
        entries = data.get(split, [])
        if not isinstance(entries, list):
            raise PatchListError(f"{path}: '{split}' must be a list")
        checked = [_check_entry(e, f"{path} {split}[{i}]") for i, e in enumerate(entries)]
        for entry in checked:  # one path string per slide, shared by its entries
            if entry["image"] not in resolved:
                resolved[entry["image"]] = str(_resolve(entry["image"], root))
            entry["image"] = resolved[entry["image"]]
        result[split] = checked
    if not result["training"] and not result["validation"]:
        raise PatchListError(f"{path}: the patch list is empty")
    if check:
        check_patch_list(result, path)
    return result


def check_patch_list(patches: Mapping, source: str | Path = "patch list") -> None:
    """Open every slide once and check every patch lies inside it; no slide may be on both sides of the split.

    Linear in the entries (they are grouped by slide once, and each slide's bounds are checked as one array), so a
    list of the seed's size (hundreds of thousands of patches over hundreds of slides) checks in seconds.
    """
    size = int(patches["patch_size"])
    half = size // 2
    rows: dict[str, dict[str, list[int]]] = {}  # slide -> split -> entry indices
    for split in SPLITS:
        for i, entry in enumerate(patches.get(split, [])):
            rows.setdefault(entry["image"], {}).setdefault(split, []).append(i)
    both = sorted(k for k, v in rows.items() if len(v) > 1)
    if both:
        raise PatchListError(f"{source}: slide(s) in both training and validation: {both[:5]}")
    for image, by_split in rows.items():
        try:
            with Slide(image) as slide:
                width, height = slide.dimensions
        except SlideError as err:
            raise PatchListError(f"{source}: {err}") from err
        for split, indices in by_split.items():
            entries = patches[split]
            yx = np.array([entries[i]["location"] for i in indices], dtype=np.int64).reshape(-1, 2)
            outside = (yx[:, 1] < half) | (yx[:, 1] > width - half) | (yx[:, 0] < half) | (yx[:, 0] > height - half)
            if outside.any():
                i = indices[int(np.argmax(outside))]
                y, x = entries[i]["location"]
                raise PatchListError(f"{source} {split}[{i}]: the {size}-pixel patch centred at x={x}, y={y} "
                                     f"is not inside {image} ({width}x{height})")


def read_ncrf_coords(path: str | Path, slide_dir: str | Path, label: int) -> list[dict]:
    """Entries for the patch centres of an NCRF coordinate file (``name,x,y`` per line, level 0).

    Slide names are looked up case-insensitively as ``<name>.tif`` anywhere under ``slide_dir`` (NCRF writes
    ``Tumor_001`` for the release's ``tumor_001.tif``).
    """
    path = Path(path)
    if label not in (0, 1):
        raise PatchListError(f"{path}: label must be 0 or 1, got {label!r}")
    text = read_user_text(path, "coordinate file", PatchListError)
    index = {p.stem.lower(): p for p in input_files(slide_dir, "*.tif", recursive=True)}
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            name, x, y = fields[0], float(fields[1]), float(fields[2])
            if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
                raise ValueError
        except (IndexError, ValueError):
            raise PatchListError(f"{path}:{number}: expected 'name,x,y' with non-negative level-0 coordinates, "
                                 f"got {line!r}") from None
        slide = index.get(name.lower())
        if slide is None:
            raise PatchListError(f"{path}:{number}: no slide {name}.tif under {slide_dir}")
        entries.append({"image": str(slide), "location": [int(round(y)), int(round(x))], "label": label})
    if not entries:
        raise PatchListError(f"{path}: no coordinates")
    return entries


def write_patch_list(path: str | Path, patches: Mapping, data_root: str | Path | None = None) -> Path:
    """Write a patch list (image paths made relative to ``data_root`` when they lie under it), atomically."""
    root = Path(data_root).resolve() if data_root is not None else None
    written: dict[str, str] = {}  # each slide's path is worked out once, not once per patch

    def relative(image: str) -> str:
        if image not in written:
            path = Path(image)
            if root is not None and path.resolve().is_relative_to(root):
                path = path.resolve().relative_to(root)
            written[image] = str(path)
        return written[image]

    out: dict = {"patch_size": int(patches["patch_size"]), "patch_level": 0}
    for split in SPLITS:
        out[split] = [{"image": relative(str(e["image"])), "location": list(e["location"]), "label": int(e["label"])}
                      for e in patches.get(split, [])]
    return write_json(path, out)


# -- generation -----------------------------------------------------------------------------------------------------
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
                         downsample: float = 32.0) -> list[SlideSource]:
    """The slides of a Camelyon16 training release (``training/tumor``, ``training/normal``) with their
    annotations (``training/lesion_annotations/<name>.xml``) and tissue masks (computed into ``mask_dir`` when
    missing). A ``tumor_*`` slide without annotations, or annotations outside their slide, are errors."""
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
    prepare_tissue_masks(tumour + normal, mask_dir, downsample=downsample)
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
            entries += _sample(s, cells, tumor_per_slide, 1, patch_size, np.random.default_rng([seed, 1, index_split, i]))
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


# -- reading patches ------------------------------------------------------------------------------------------------
class PatchDataset(torch.utils.data.Dataset):
    """Patches of a patch list as ``(image (3, P, P) float32, label (1,) float32)``.

    Slides are opened lazily and kept open per process (DataLoader workers each keep their own handles, at most
    ``max_open`` of them, least recently used closed first), so a slide is opened once per worker, not per patch.
    The open slides of a process share one decoded-tile cache of ``cache_mb`` MiB (``None``: OpenSlide's own
    32 MiB per slide, which over 64 open slides is 2 GiB per worker; shuffled patches seldom hit a cache anyway).
    ``transform`` maps a [0, 1] (3, P, P) tensor to another (e.g. the training augmentation); the result is
    normalised with :func:`~metastasis.transforms.normalize`. With ``normalize_stains``, each patch is first
    Macenko-normalised with its slide's stain vectors (:func:`~metastasis.stain.slide_stain_vectors`, estimated
    once per slide and process), as whole-slide inference does.
    """

    def __init__(self, entries: Sequence[Mapping], patch_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, max_open: int = 64,
                 cache_mb: int | None = 32, normalize_stains: bool = False) -> None:
        self.entries = list(entries)
        self.normalize_stains = normalize_stains
        self.patch_size = int(patch_size)
        self.transform = transform
        self.max_open = max_open
        self.cache_mb = cache_mb
        self._slides: OrderedDict = OrderedDict()
        self._cache: openslide.OpenSlideCache | None = None
        self._normalizers: dict[str, StainNormalizer] = {}  # a few floats per slide: kept for every slide
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def _slide(self, image: str):
        if self._pid != os.getpid():  # a forked worker must not share its parent's OpenSlide handles
            self._slides, self._cache, self._pid = OrderedDict(), None, os.getpid()
        if self._cache is None and self.cache_mb is not None:
            self._cache = openslide.OpenSlideCache(self.cache_mb * 2 ** 20)
        if image in self._slides:
            self._slides.move_to_end(image)
        else:
            self._slides[image] = open_slide(image, self._cache)
            while len(self._slides) > self.max_open:
                self._slides.popitem(last=False)[1].close()
        return self._slides[image]

    def read(self, index: int) -> np.ndarray:
        """The raw uint8 RGB patch (P, P, 3) of entry ``index``."""
        entry = self.entries[index]
        y, x = entry["location"]
        half = self.patch_size // 2
        return read_rgb(self._slide(entry["image"]), (x - half, y - half), 0, (self.patch_size, self.patch_size),
                        entry["image"])

    def normalizer(self, image: str) -> StainNormalizer:
        """The stain normaliser of slide ``image`` (its vectors estimated on first use)."""
        if image not in self._normalizers:
            self._normalizers[image] = StainNormalizer(slide_stain_vectors(self._slide(image), image))
        return self._normalizers[image]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = self.read(index)
        if self.normalize_stains:
            rgb = self.normalizer(self.entries[index]["image"])(rgb)
        image = to_unit(rgb)
        if self.transform is not None:
            image = torch.as_tensor(self.transform(image)).clamp(0, 1)
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = torch.tensor([float(self.entries[index]["label"])])
        return normalize(image).contiguous(), label
