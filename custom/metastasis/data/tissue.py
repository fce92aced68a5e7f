"""Tissue (foreground) masks: where a slide holds tissue, so that patches and inference skip the glass.

Clara's ``prepare_inference_data`` step. A mask is computed from a low-resolution view of the slide (default
1/32 of level 0, level 5 of a Camelyon16 pyramid): HSV saturation, whose histogram separates stained tissue from
white glass, is thresholded with Otsu's method (never below ``min_saturation``, so an all-glass view does not split
its noise into "tissue"); near-black pixels (scanner borders, pen) are not tissue; then specks smaller than
``min_tissue_um2`` are removed and holes smaller than ``max_hole_um2`` filled.

Geometry: mask pixel (row i, column j) covers level-0 ``[j d, (j + 1) d) x [i d, (i + 1) d)`` with ``d`` the
mask's ``downsample``. On disk a mask is three files: ``<name>_tissue.png`` (0/255), ``<name>_tissue.json``
(downsample, pyramid level read, level-0 size, threshold, slide path) and ``<name>_tissue_overlay.png`` (the mask
tinted over the thumbnail, for a user to check by eye).
"""

from __future__ import annotations

import dataclasses
import logging
import inspect
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from medcore.errors import UserError, first_line
from medcore.files import atomic_path, check_distinct_names, claim_output_dir, read_json, require_file, write_json
from medcore.progress import Progress
from medcore.provenance import check_described

from .slide import Slide, check_slide_file, opened

__all__ = ["TissueMask", "tissue_mask", "compute_tissue_mask", "write_overlay",
           "mask_paths", "prepare_tissue_masks"]

logger = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask (rows, cols) with its geometry.

    Attributes:
        mask: True where there is tissue.
        downsample: level-0 pixels per mask pixel.
        level0_size: slide (width, height) at level 0.
        level: pyramid level the mask was computed from (informative).
        threshold: saturation threshold used.
        slide: path of the slide it belongs to.
    """

    mask: np.ndarray
    downsample: float
    level0_size: tuple[int, int]
    level: int = 0
    threshold: float = 0.0
    slide: str = ""

    def __post_init__(self) -> None:
        width, height = self.level0_size
        expected = (math.ceil(height / self.downsample - 1e-6), math.ceil(width / self.downsample - 1e-6))
        if self.mask.ndim != 2 or any(abs(n - e) > 1 for n, e in zip(self.mask.shape, expected)):
            raise UserError(f"tissue mask of shape {self.mask.shape} does not cover a {width}x{height} slide at "
                             f"downsample {self.downsample} (expected about {expected})")

    def contains(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Whether level-0 points (x, y) fall on tissue (points outside the mask are not tissue)."""
        cols = np.floor(np.asarray(x, np.float64) / self.downsample).astype(np.int64)
        rows = np.floor(np.asarray(y, np.float64) / self.downsample).astype(np.int64)
        inside = (rows >= 0) & (rows < self.mask.shape[0]) & (cols >= 0) & (cols < self.mask.shape[1])
        out = np.zeros(np.broadcast(rows, cols).shape, bool)
        out[inside] = self.mask[rows[inside], cols[inside]]
        return out

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def save(self, png: str | Path, made_with: Mapping[str, Any] | None = None) -> Path:
        """Write the mask PNG and its JSON geometry next to it (both atomically); return the PNG path.
        ``made_with``: the settings that made it (:mod:`medcore.provenance`), recorded in the JSON."""
        png = Path(png)
        with atomic_path(png) as tmp:
            Image.fromarray(self.mask.astype(np.uint8) * 255).save(tmp, format="PNG")
        write_json(png.with_suffix(".json"), {
            "slide": self.slide, "downsample": self.downsample, "level": self.level,
            "level0_size": list(self.level0_size), "threshold": self.threshold,
            "shape": list(self.mask.shape), "tissue_fraction": round(self.tissue_fraction, 6),
            **({"made_with": dict(made_with)} if made_with is not None else {}),
        })
        return png

    @staticmethod
    def describe(png: str | Path) -> dict:
        """A saved mask's description (its JSON), checked with the PNG's header, without decoding the mask: what a
        command checks of every mask before any work. Errors name the file and the problem."""
        return _describe(Path(png))[0]

    @classmethod
    def load(cls, png: str | Path) -> "TissueMask":
        """Read a mask saved by :meth:`save` (the PNG path), decoding it once; errors name the file and the
        problem."""
        png = Path(png)
        meta, downsample, size, shape = _describe(png)
        mask = _read_png(png, shape, exact="shape" in meta)
        try:
            return cls(mask, downsample, size, int(meta.get("level", 0)), float(meta.get("threshold", 0.0)),
                       str(meta.get("slide", "")))
        except ValueError as err:
            raise UserError(f"{png}: {err}") from err


def _describe(png: Path) -> tuple[dict, float, tuple[int, int], tuple[int, int]]:
    """A mask's JSON, downsample, level-0 size and mask shape (rows, cols), checked with the PNG's header."""
    meta_path = png.with_suffix(".json")
    for path in (png, meta_path):
        require_file(path, "tissue mask file")
    meta = read_json(meta_path, "tissue mask description")
    try:
        downsample, size = float(meta["downsample"]), tuple(int(v) for v in meta["level0_size"])
        if len(size) != 2 or not (math.isfinite(downsample) and downsample > 0):
            raise ValueError("level0_size needs two numbers, downsample a positive one")
        # the mask's size: as recorded, else (an earlier version's JSON) the slide's at the downsample
        shape = tuple(int(v) for v in meta["shape"]) if "shape" in meta else \
            (math.ceil(size[1] / downsample), math.ceil(size[0] / downsample))
        if len(shape) != 2:
            raise ValueError("shape needs two numbers")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise UserError(f"{meta_path}: not a tissue mask description ({type(err).__name__}: {err})") from None
    _read_png(png, shape, exact="shape" in meta, decode=False)
    return meta, downsample, size, shape


def _read_png(png: Path, shape: tuple[int, int], exact: bool = True, decode: bool = True) -> np.ndarray | None:
    """The mask PNG as booleans (``decode``; else only its header is read and checked), its size checked against
    the description's ``shape`` (rows, cols; with ``exact``, else left to :class:`TissueMask`) before its pixels
    are decoded. PIL's decompression-bomb limit is
    raised to that size, so a large valid mask (a whole slide at 1/8) reads and a forged or foreign image of far
    more pixels is refused unread."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max(shape[0] * shape[1], limit or 0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(png) as image:
                if exact and image.size != (shape[1], shape[0]):
                    raise UserError(f"{png}: image of {image.size[0]}x{image.size[1]} pixels, its description says "
                                    f"{shape[1]}x{shape[0]}")
                return np.asarray(image.convert("L")) > 127 if decode else None
    except Image.DecompressionBombError:
        raise UserError(f"{png}: image of far more pixels than its description's {shape[1]}x{shape[0]}; refused "
                        "unread") from None
    except OSError as err:
        raise UserError(f"{png}: cannot read the mask image ({first_line(err)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def tissue_mask(rgb: np.ndarray, pixel_um: float, min_saturation: float = 0.07, min_tissue_um2: float = 10_000.0,
                max_hole_um2: float = 20_000.0) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB image (H, W, 3) uint8 whose pixels are ``pixel_um`` microns wide.

    Returns the mask and the saturation threshold used.
    """
    rgb = rgb.astype(np.float32) / 255.0
    value = rgb.max(axis=-1)
    saturation = np.where(value > 0, (value - rgb.min(axis=-1)) / np.maximum(value, 1e-6), 0.0)
    valid = value > 0.1  # near-black: scanner borders, pen marks, not tissue
    threshold = min_saturation
    if valid.any() and np.ptp(saturation[valid]) > 0:
        threshold = max(float(threshold_otsu(saturation[valid])), min_saturation)
    mask = valid & (saturation > threshold)
    pixel_area = pixel_um * pixel_um
    mask = remove_small_objects(mask, max_size=max(int(min_tissue_um2 / pixel_area), 1))
    mask = remove_small_holes(mask, max_size=max(int(max_hole_um2 / pixel_area), 1))
    return mask, threshold


def compute_tissue_mask(slide: str | Path | Slide, downsample: float = 32.0,
                        **options: float) -> tuple[TissueMask, np.ndarray]:
    """Tissue mask of a slide (a file, or an open :class:`~metastasis.data.slide.Slide` whose thumbnail is reused) and
    the RGB thumbnail it was computed from (``options``: see :func:`tissue_mask`)."""
    with opened(slide) as slide:
        rgb, effective, level = slide.downsampled(downsample)
        mask, threshold = tissue_mask(rgb, slide.mpp * effective, **options)
        return TissueMask(mask, effective, slide.dimensions, level, threshold, str(slide.path)), rgb


def write_overlay(rgb: np.ndarray, mask: np.ndarray, path: str | Path, color=(0, 200, 0), alpha: float = 0.4) -> Path:
    """PNG of the thumbnail with the mask tinted over it (and its outline drawn solid)."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = color
    with atomic_path(path) as tmp:
        Image.fromarray(out.astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)


def mask_paths(out_dir: str | Path, slide_path: str | Path) -> tuple[Path, Path]:
    """Where :func:`prepare_tissue_masks` writes a slide's mask PNG and overlay PNG."""
    stem = Path(slide_path).stem
    return Path(out_dir) / f"{stem}_tissue.png", Path(out_dir) / f"{stem}_tissue_overlay.png"


_REMEDY = "pass --overwrite to recompute the mask, or choose another --out"


def prepare_tissue_masks(slides: Sequence[str | Path], out_dir: str | Path, downsample: float = 32.0,
                         overwrite: bool = False, remedy: str = _REMEDY, **options: float) -> list[Path]:
    """Compute and save the tissue mask of every slide (skipping finished ones); return the mask PNG paths.

    Every slide is checked first (its header), so a broken file stops the run before any work, with its name in
    the error; each is then opened once. A kept mask made with other settings is refused, the error ending with
    ``remedy`` (what the calling command's user can do).
    """
    slides = [Path(s) for s in slides]
    if not slides:
        raise UserError("no slides given")
    check_distinct_names(slides, "slides", "tissue masks")
    for path in slides:
        check_slide_file(path)

    def files(path: Path) -> tuple[Path, Path, Path]:
        png, overlay = mask_paths(out_dir, path)
        return png, png.with_suffix(".json"), overlay

    def finished(path: Path) -> bool:
        return not overwrite and all(f.is_file() for f in files(path))

    defaults = {name: p.default for name, p in inspect.signature(tissue_mask).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def made_with(path: Path) -> dict:
        """What decides a slide's mask: a rerun that asks for other values refuses to keep it."""
        return {"slide": path.name, "slide_bytes": path.stat().st_size, "downsample": downsample,
                **defaults, **options}

    for path in slides:  # kept masks must be of this run's settings (checked before any work)
        if finished(path):
            check_described(files(path)[1], "tissue mask description", made_with(path), remedy)
    claim_output_dir(out_dir, "tissue masks", [f.name for s in slides if not finished(s) for f in files(s)])
    progress = Progress(len(slides), "slides", logger)
    written = []
    for path in slides:
        png, overlay = mask_paths(out_dir, path)
        written.append(png)
        if finished(path):
            progress.step(f"kept existing {png.name}")
            continue
        mask, rgb = compute_tissue_mask(path, downsample, **options)
        write_overlay(rgb, mask.mask, overlay)
        mask.save(png, made_with(path))  # last: its JSON marks the slide as done
        progress.step(f"{path.name}: {100 * mask.tissue_fraction:.1f}% tissue at 1/{mask.downsample:g}")
    return written

