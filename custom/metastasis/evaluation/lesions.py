"""Lesions of a probability map: its connected regions at or above a threshold, each with its outline, size and
CAMELYON17 category (:mod:`.staging`), and the slide's label and score they give.

Conventions (``s`` = the map's stride, ``mpp`` = level-0 microns per pixel):

* a lesion is a connected region of map pixels ``>= threshold`` under 8-connectivity (pixels touching at a corner
  are one region, as the Camelyon16 evaluation joins its regions);
* map pixel (i, j) stands for the level-0 block ``[j s, (j + 1) s) x [i s, (i + 1) s)``
  (:mod:`~metastasis.inference.geometry`); the map's last row and column of blocks reach past the slide when its
  size is not a multiple of ``s``, and are cut at the slide's edge here (a lesion never lies outside its slide);
* ``contour``: the outer boundary of the region's blocks traced exactly along their edges (not the half-pixel
  iso-line of ``skimage.measure.find_contours``): its vertices are block corners, level-0 ``(x, y) = (j s, i s)``,
  one vertex per corner where the boundary turns. A single pixel (i, j) is the square ``(j s, i s), ((j + 1) s,
  i s), ((j + 1) s, (i + 1) s), (j s, (i + 1) s)``. The ring starts at the top-left corner of the region's first
  pixel in raster order, runs first to the right (along the top edge), and keeps the region on its right as seen on
  the slide (y down): clockwise on screen, a positive shoelace area in the numbers (counter-clockwise by GeoJSON's
  right-hand rule). The first vertex is not repeated. Holes inside a region are not traced (the outline is its
  outer boundary); where two pixels of the region touch only at a corner the ring passes that corner twice;
* ``area_um2``: the region's pixels (holes excluded), each its block's area on the slide, ``(s mpp)^2`` away from
  the slide's edge;
* ``longest_diameter_um``: the largest distance between two points of the region, i.e. the maximum over pairs of
  its blocks' corners, taken over the vertices of their convex hull (``scipy.spatial.ConvexHull`` of the contour's
  vertices, which include every extreme corner), times ``mpp``; a single pixel's is ``s sqrt(2) mpp``;
* ``centroid``: the level-0 centre of mass of the region's blocks.

Only the bounding box of each region is visited (one ``scipy.ndimage.label`` of the whole map, then
``find_objects``), so a 100k x 200k slide's map at stride 32 (3125 x 6250 pixels, mostly zero) costs one labelling
pass and work in proportion to its lesions.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from medcore.errors import UserError
from medcore.files import write_json

from .staging import lesion_category, slide_label

__all__ = ["Lesion", "map_mpp", "find_lesions", "slide_result", "lesions_record", "write_lesions_json"]

#: Direction steps (dx, dy) on the vertex grid: right, down, left, up (y down, as on the slide).
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))
#: The 2 x 2 pixels around a vertex as bits: top-left, top-right, bottom-left, bottom-right.
_TL, _TR, _BL, _BR = 1, 2, 4, 8
#: Codes where the boundary passes a vertex straight (or does not pass it): not polygon vertices.
_STRAIGHT = (0, 15, _TL | _TR, _BL | _BR, _TL | _BL, _TR | _BR)
#: Codes where the region's pixels touch only at the vertex: the boundary passes it twice.
_SADDLES = (_TL | _BR, _TR | _BL)


def _out_direction(code: int) -> int:
    """The direction the boundary (region on its right) leaves a vertex of a non-saddle ``code``."""
    has = [bool(code & bit) for bit in (_TL, _TR, _BL, _BR)]
    tl, tr, bl, br = has
    options = [d for d, ok in enumerate((br and not tr, bl and not br, tl and not bl, tr and not tl)) if ok]
    return options[0] if len(options) == 1 else -1


_OUT = [_out_direction(code) for code in range(16)]


@dataclasses.dataclass
class Lesion:
    """One connected region of a probability map (the module docstring gives every convention).

    ``contour``: float (N, 2) level-0 ``(x, y)`` of the outline's vertices (a closed ring, first vertex not
    repeated); ``centroid``: level-0 ``(x, y)``; ``category``: :func:`~metastasis.evaluation.staging.lesion_category`
    of the longest diameter; ``pixels``: the number of map pixels.
    """

    contour: np.ndarray
    max_probability: float
    mean_probability: float
    area_um2: float
    longest_diameter_um: float
    category: str
    centroid: tuple[float, float]
    pixels: int

    def to_dict(self) -> dict:
        """Plain values for JSON (coordinates in level-0 pixels)."""
        return {"category": self.category, "longest_diameter_um": self.longest_diameter_um,
                "area_um2": self.area_um2, "max_probability": self.max_probability,
                "mean_probability": self.mean_probability, "pixels": self.pixels,
                "centroid": [float(c) for c in self.centroid], "contour": self.contour.tolist()}


def map_mpp(meta: dict, mpp: float | None = None, source: str | Path | None = None) -> float:
    """The level-0 microns per pixel to measure a map with: ``mpp`` when given (for slides without resolution
    metadata), else the map's record of its slide's (``meta["mpp"]``).

    Raises:
        UserError: neither (naming ``source``, the map, else its slide), saying to pass ``--mpp``.
        ValueError: an ``mpp`` that is not a positive finite number.
    """
    if mpp is not None:
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
        return float(mpp)
    if meta.get("mpp") is None:
        raise UserError(f"{source or meta.get('slide', 'the map')}: the map does not record its slide's pixel size "
                        "(mpp), so lesion sizes cannot be measured; pass --mpp (level-0 microns per pixel)")
    return float(meta["mpp"])


def _trace(codes: np.ndarray) -> list[tuple[int, int]]:
    """The outer boundary of the one region in a box: ``codes`` (rows + 1, cols + 1) are the 2 x 2 pixel codes of
    its vertices (x = column, y = row of the vertex grid, pixels outside the box not in the region). Returns the
    ring's corner vertices ``(x, y)`` from the top-left corner of its first pixel, region on the right."""
    rows, cols = np.nonzero(~np.isin(codes, _STRAIGHT))  # corners, in raster order
    kinds = codes[rows, cols]
    n = len(rows)
    index = np.arange(n)
    same_row = np.append(rows[1:] == rows[:-1], False)
    by_column = np.lexsort((rows, cols))
    same_col = np.append(cols[by_column][1:] == cols[by_column][:-1], False)
    # the next corner along each direction (-1: none); a straight run of boundary ends at the first one
    nxt = np.full((4, n), -1, np.int64)
    nxt[0, same_row] = index[same_row] + 1
    nxt[2, index[1:][same_row[:-1]]] = index[:-1][same_row[:-1]]
    down = by_column[:-1][same_col[:-1]]
    nxt[1, down] = by_column[1:][same_col[:-1]]
    nxt[3, by_column[1:][same_col[:-1]]] = down
    nxt, kinds, xs, ys = nxt.tolist(), kinds.tolist(), cols.tolist(), rows.tolist()
    ring = [(xs[0], ys[0])]
    here, heading = 0, _OUT[kinds[0]]  # the first corner is a top-left pixel corner: the ring leaves it rightward
    for _ in range(2 * n + 1):
        here = nxt[heading][here]
        if here <= 0:
            if here == 0:
                return ring
            raise AssertionError("the boundary walk lost its way")  # pragma: no cover - a bug, not an input
        kind = kinds[here]
        # at a saddle, turn left (as seen on the slide): the two diagonal pixels stay one region (8-connectivity)
        heading = (heading + 3) % 4 if kind in _SADDLES else _OUT[kind]
        ring.append((xs[here], ys[here]))
    raise AssertionError("the boundary walk did not close")  # pragma: no cover - a bug, not an input


def _diameter(points: np.ndarray) -> float:
    """The largest distance between two of ``points`` (N >= 3, not all on a line), over their convex hull."""
    hull = points[ConvexHull(points).vertices]
    return float(pdist(hull).max())


def find_lesions(probs: np.ndarray, meta: dict, threshold: float = 0.5, mpp: float | None = None,
                 source: str | Path | None = None) -> list[Lesion]:
    """The lesions of a probability map (the module docstring gives the conventions), largest longest diameter
    first (ties in the raster order of their first pixel).

    Args:
        probs: the map (rows, cols), as :func:`~metastasis.inference.maps.load_map` returns it.
        meta: its description (``stride``, ``shape``, ``level0_size`` and ``mpp`` are used).
        threshold: pixels ``>= threshold`` are lesion, in (0, 1] (compared in the map's float type).
        mpp: level-0 microns per pixel, overriding the map's (:func:`map_mpp`).
        source: the map's file, named in errors (default: its slide).

    Raises:
        UserError: no pixel size, neither ``mpp`` nor the map's (:func:`map_mpp`).
        ValueError: a threshold outside (0, 1], or a map whose shape is not its description's.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    if probs.ndim != 2 or list(probs.shape) != list(meta["shape"]):
        raise ValueError(f"a map of shape {probs.shape}, its description says {meta['shape']}")
    um = map_mpp(meta, mpp, source)
    stride = int(meta["stride"])
    width, height = (int(v) for v in meta["level0_size"])
    # compared in the map's precision: --threshold 0.7 counts a pixel stored as float32(0.7), which is below 0.7
    labels, _ = ndimage.label(probs >= np.asarray(threshold, probs.dtype), structure=np.ones((3, 3), bool))
    lesions = []
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:  # pragma: no cover - labels are consecutive
            continue
        region = labels[box] == number
        values = probs[box][region]
        i0, j0 = box[0].start, box[1].start
        padded = np.pad(region, 1)
        codes = (padded[:-1, :-1] * _TL + padded[:-1, 1:] * _TR + padded[1:, :-1] * _BL
                 + padded[1:, 1:] * _BR).astype(np.uint8)
        ring = np.array(_trace(codes), np.float64)
        contour = np.column_stack([np.minimum((ring[:, 0] + j0) * stride, width),
                                   np.minimum((ring[:, 1] + i0) * stride, height)])
        rows, cols = np.nonzero(region)
        left, top = (cols + j0) * stride, (rows + i0) * stride
        right, bottom = np.minimum(left + stride, width), np.minimum(top + stride, height)
        areas = (right - left).astype(np.float64) * (bottom - top)
        total = float(areas.sum())
        diameter = _diameter(contour) * um
        lesions.append(Lesion(
            contour=contour, max_probability=float(values.max()),
            mean_probability=float(values.mean(dtype=np.float64)), area_um2=total * um * um,
            longest_diameter_um=diameter, category=lesion_category(diameter),
            centroid=(float((areas * (left + right)).sum() / (2 * total)),
                      float((areas * (top + bottom)).sum() / (2 * total))),
            pixels=int(region.sum())))
    lesions.sort(key=lambda lesion: -lesion.longest_diameter_um)  # stable: ties stay in raster order
    return lesions


def slide_result(lesions: Sequence[Lesion]) -> tuple[str, float]:
    """A slide's CAMELYON17 label (:func:`~metastasis.evaluation.staging.slide_label` of its lesions' longest
    diameters) and score (the highest lesion maximum, 0 without lesions)."""
    return (slide_label(lesion.longest_diameter_um for lesion in lesions),
            max((lesion.max_probability for lesion in lesions), default=0.0))


def lesions_record(lesions: Sequence[Lesion], meta: dict, threshold: float, mpp: float,
                   map_path: str | Path | None = None) -> dict:
    """What ``NAME_lesions.json`` holds: the map and slide it came from, the threshold and pixel size used, the
    slide's label and score (:func:`slide_result`) and every lesion (:meth:`Lesion.to_dict`), largest first."""
    label, score = slide_result(lesions)
    return {"slide": meta.get("slide"), "map": str(Path(map_path).resolve()) if map_path is not None else None,
            "threshold": threshold, "mpp": mpp, "map_mpp": meta.get("mpp"), "stride": meta["stride"],
            "connectivity": 8, "coordinates": "level-0 pixels, x to the right, y down",
            "label": label, "score": score, "n_lesions": len(lesions),
            "lesions": [lesion.to_dict() for lesion in lesions]}


def write_lesions_json(path: str | Path, lesions: Sequence[Lesion], meta: dict, threshold: float, mpp: float,
                       map_path: str | Path | None = None) -> Path:
    """Write :func:`lesions_record` as JSON, atomically."""
    return write_json(path, lesions_record(lesions, meta, threshold, mpp, map_path))
