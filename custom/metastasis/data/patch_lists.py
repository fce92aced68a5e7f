"""Training patch lists: Clara's JSON and NCRF's coordinate files, read, checked and written.

A patch list is MONAI's ``PatchWSIDataset`` convention, in one JSON file per data set::

    {"patch_size": 224, "patch_level": 0,
     "training":   [{"image": "training/tumor/tumor_001.tif", "location": [y, x], "label": 1}, ...],
     "validation": [...]}

``location`` is the level-0 (row, column) = (y, x) of the patch centre, as MONAI's ``PatchWSIDataset`` with
``center_location=True`` reads it; the patch covers level-0 ``[x - P/2, x + P/2) x [y - P/2, y + P/2)``.
``image`` paths are relative to a data root (or absolute). ``label`` is 1 for tumour, 0 for normal.

NCRF's coordinate files (``coords/tumor_train.txt`` ...) have one ``name,x,y`` line per patch centre (level 0,
x first), with the label implied by the file; :func:`read_ncrf_coords` turns one into list entries. Lists are made
from slides by :mod:`~metastasis.data.sampling` and read into patches by :mod:`~metastasis.data.dataset`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from medcore.errors import UserError
from medcore.files import input_files, read_json, read_user_text, write_json

from .slide import Slide, SlideError

__all__ = ["PatchListError", "SPLITS", "is_patch_list", "read_patch_list", "check_patch_list", "read_ncrf_coords",
           "write_patch_list"]

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
    list of Clara's size (hundreds of thousands of patches over hundreds of slides) checks in seconds.
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
