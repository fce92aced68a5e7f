"""Probability maps on disk: ``NAME.npy`` (float32, the slide at 1/stride, :mod:`~metastasis.inference.geometry`),
``NAME.json`` (its description) and ``NAME_heatmap.png`` (the map over the slide's thumbnail).

The description carries what later steps need, so that they neither reopen the slide nor decode the map twice:
the geometry, the slide's absolute path, size and pixel size (``mpp``), the map's maximum (``max_probability``,
the slide score) and what made the map (``made_with``). :func:`describe_map` checks a map from its JSON and the
``.npy`` header alone; :func:`load_map` decodes it once, checking its values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcore.errors import UserError
from medcore.files import atomic_path, npy_header, read_json, read_npy, require_file, write_json

from ..data.slide import Slide, opened
from .geometry import MapGeometry

__all__ = ["MAP_ENDINGS", "describe_map", "load_map", "map_maximum", "write_map", "write_heatmap"]

#: What :func:`write_map` writes per slide, as endings of the slide's name: the map, its description, the heatmap.
MAP_ENDINGS = (".npy", ".json", "_heatmap.png")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: What :func:`describe_map` requires of a map's JSON (the geometry :class:`MapGeometry` writes and the slide).
_MAP_FIELDS = {
    "slide": lambda v: isinstance(v, str) and bool(v),
    "stride": lambda v: _whole(v) and 0 < v <= 1 << 20,
    "origin": lambda v: isinstance(v, list) and len(v) == 2 and all(_number(c) for c in v),
    "shape": lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(c) and c >= 0 for c in v),
    "level0_size": lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(c) and 0 < c < 1 << 31 for c in v),
    "mpp": lambda v: v is None or _number(v) and 0 < v < 1e6,
    "max_probability": lambda v: v is None or _number(v) and 0 <= v <= 1,
}


def describe_map(npy: str | Path) -> dict:
    """A probability map's description (the JSON beside ``NAME.npy``), checked without decoding the map: the JSON's
    fields, a geometry that is a map of its slide (shape ``ceil(size / stride)``, origin ``stride / 2``) and a
    ``.npy`` header of that shape and a float type. Errors name the file and the problem."""
    npy = Path(npy)
    meta_path = npy.with_suffix(".json")
    if npy.suffix.lower() != ".npy":
        raise UserError(f"{npy}: not a probability map (expected NAME.npy, with its NAME.json beside it)")
    require_file(npy, "probability map file")
    meta = read_json(meta_path, "probability map description")
    problems = [key for key, ok in _MAP_FIELDS.items() if not isinstance(meta, dict) or not ok(meta.get(key))]
    if problems:
        raise UserError(f"{meta_path}: not a probability map description (missing or malformed: "
                        f"{', '.join(problems)})")
    geometry = MapGeometry(meta["stride"], 0, tuple(meta["level0_size"]))
    if list(geometry.shape) != list(meta["shape"]) or list(geometry.origin) != list(meta["origin"]):
        raise UserError(f"{meta_path}: a map of shape {meta['shape']} from origin {meta['origin']} at stride "
                        f"{meta['stride']} does not cover the {meta['level0_size'][0]}x{meta['level0_size'][1]} "
                        f"slide (expected shape {list(geometry.shape)} from {list(geometry.origin)})")
    shape, dtype = npy_header(npy, "probability map")
    if list(shape) != list(meta["shape"]):
        raise UserError(f"{npy}: map of shape {shape}, its JSON says {meta['shape']}")
    if dtype.kind != "f":
        raise UserError(f"{npy}: not a probability map (expected finite floats in [0, 1], got {dtype})")
    return meta


def load_map(npy: str | Path, meta: dict | None = None) -> tuple[np.ndarray, dict]:
    """A probability map written by :func:`write_map` and its description, decoded once and checked: the
    description as :func:`describe_map` checks it (pass ``meta``, its result, when it is at hand), the values finite
    probabilities."""
    npy = Path(npy)
    meta = describe_map(npy) if meta is None else meta
    probs = read_npy(npy, "probability map")
    if probs.dtype.kind != "f" or list(probs.shape) != list(meta["shape"]) or probs.size and not (
            np.isfinite(probs).all() and 0 <= probs.min() and probs.max() <= 1):
        raise UserError(f"{npy}: not a probability map (expected finite floats in [0, 1] of shape {meta['shape']}, "
                        f"got {probs.dtype} of shape {probs.shape})")
    return probs, meta


def map_maximum(npy: str | Path, meta: dict) -> float:
    """A map's maximum probability (the slide score): its description's ``max_probability``, else (a map of an
    earlier version, which did not record it) from the map itself."""
    if meta.get("max_probability") is not None:
        return float(meta["max_probability"])
    probs = load_map(npy, meta)[0]
    return float(probs.max()) if probs.size else 0.0


def write_map(npy: str | Path, probs: np.ndarray, description: dict, slide: Slide) -> Path:
    """``NAME.npy``, ``NAME_heatmap.png`` and, last, ``NAME.json``: ``description`` with the slide's absolute path
    and pixel size and the map's maximum. Each file is written atomically; a map with its JSON is finished."""
    npy = Path(npy)
    with atomic_path(npy) as tmp:
        np.save(tmp, probs)
    write_heatmap(slide, probs, description["stride"], npy.with_name(f"{npy.stem}{MAP_ENDINGS[2]}"))
    # the slide by its absolute path and pixel size: detect and evaluate need neither the folder infer ran in nor
    # the slide itself
    write_json(npy.with_suffix(".json"), {**description, "slide": str(Path(slide.path).resolve()), "mpp": slide.mpp,
                                          "max_probability": float(probs.max()) if probs.size else 0.0})
    return npy


def write_heatmap(slide: str | Path | Slide, probs: np.ndarray, stride: int, path: str | Path,
                  alpha: float = 0.6) -> Path:
    """PNG of the probability map (jet colours where it is above 0) over the slide's thumbnail at 1/stride
    (``slide``: a file, or an open :class:`~metastasis.data.slide.Slide` whose thumbnail is reused)."""
    import matplotlib

    with opened(slide) as slide:
        rgb = slide.downsampled(stride)[0]
    h, w = min(rgb.shape[0], probs.shape[0]), min(rgb.shape[1], probs.shape[1])
    out = rgb[:h, :w].copy()  # the thumbnail is the open Slide's cached one: paint on a copy
    shown = probs[:h, :w] > 0
    # Colours of the shown pixels only, as bytes: a 100k x 200k slide's map has 20 million pixels, and the
    # colormap's float64 RGBA of all of them alone would take 625 MB.
    colours = matplotlib.colormaps["jet"](probs[:h, :w][shown], bytes=True)[:, :3].astype(np.float32)
    out[shown] = np.rint((1 - alpha) * out[shown].astype(np.float32) + alpha * colours).astype(np.uint8)
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return Path(path)
