"""Lesion detections from a probability map, in the Camelyon16 submission format.

A detection is a local maximum of the map at or above ``threshold``; maxima closer than ``radius_um`` to a higher
one are suppressed (greedy non-maximum suppression, highest first, ties broken by position). Each detection is the
level-0 centre of its map pixel (:class:`~metastasis.inference.geometry.MapGeometry`), written as one CSV per slide with
rows ``probability,x,y`` (level-0 pixels, no header), as the challenge's evaluation code reads them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medcore.errors import UserError
from medcore.files import read_user_text, write_csv

__all__ = ["Detections", "find_detections", "write_detections", "read_detections"]


class Detections:
    """Detections of one slide: ``probability``, level-0 ``x`` and ``y`` (equal-length arrays, highest first)."""

    def __init__(self, probability: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        self.probability = np.asarray(probability, np.float64)
        self.x = np.asarray(x, np.int64)
        self.y = np.asarray(y, np.int64)
        if not self.probability.shape == self.x.shape == self.y.shape:
            raise ValueError("probability, x and y must have the same length")

    def __len__(self) -> int:
        return len(self.probability)


def find_detections(probs: np.ndarray, stride: int, origin: tuple[float, float], mpp: float,
                    threshold: float = 0.5, radius_um: float = 150.0) -> Detections:
    """Local maxima of a probability map with non-maximum suppression over ``radius_um`` microns.

    Args:
        probs: map (rows, cols); pixel (i, j) sits at level-0 ``origin + (j, i) * stride``.
        mpp: level-0 microns per pixel of the slide.
    """
    if probs.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {probs.shape}")
    if stride <= 0 or mpp <= 0 or radius_um < 0:
        raise ValueError(f"stride, mpp must be positive and radius_um non-negative (got {stride}, {mpp}, {radius_um})")
    radius = radius_um / (mpp * stride)  # in map pixels
    peaks = (probs >= threshold) & (probs == _disc_maximum(probs, radius))
    rows, cols = np.nonzero(peaks)
    values = probs[rows, cols].astype(np.float64)
    order = np.lexsort((cols, rows, -values))  # highest first; ties in raster order
    rows, cols, values = rows[order], cols[order], values[order]
    keep = np.ones(len(rows), bool)
    if len(rows) > 1 and radius > 0:
        tree = cKDTree(np.column_stack([rows, cols]))
        for index in range(len(rows)):
            if keep[index]:
                for other in tree.query_ball_point((rows[index], cols[index]), radius):
                    if other > index:
                        keep[other] = False
    x = np.round(origin[0] + cols[keep] * stride).astype(np.int64)
    y = np.round(origin[1] + rows[keep] * stride).astype(np.int64)
    return Detections(values[keep], x, y)


def _disc_maximum(probs: np.ndarray, radius: float) -> np.ndarray:
    """The maximum of ``probs`` over the disc of ``radius`` pixels around each pixel (pixels ``(dy, dx)`` with
    ``dx^2 + dy^2 <= radius^2``; outside the map counts as -inf).

    The same as ``ndimage.maximum_filter`` with that disc as footprint, computed as one running maximum along the
    rows per disc row (``O(pixels x rows of the disc)`` time and one map of extra memory, where the footprint costs
    ``O(pixels x radius^2)``): a radius of millions of pixels (``--radius-um 1e12``) is the map's maximum.
    """
    rows, cols = probs.shape
    if not probs.size:
        return probs.copy()
    if radius >= math.hypot(rows - 1, cols - 1):  # every disc covers the whole map
        return np.full_like(probs, probs.max())
    out = np.full(probs.shape, -np.inf, dtype=probs.dtype)
    for dy in range(min(int(math.floor(radius)), rows - 1) + 1):  # the disc rows dy and -dy share their width
        half = int(math.floor(math.sqrt(max(radius ** 2 - dy * dy, 0.0))))
        while half >= 0 and half * half + dy * dy > radius ** 2:  # the square root's rounding, either way
            half -= 1
        while (half + 1) ** 2 + dy * dy <= radius ** 2:
            half += 1
        if half < 0:
            continue
        across = ndimage.maximum_filter1d(probs, size=2 * min(half, cols) + 1, axis=1, mode="constant",
                                          cval=-np.inf)
        np.maximum(out[:rows - dy], across[dy:], out=out[:rows - dy])  # the row dy below each pixel
        if dy:
            np.maximum(out[dy:], across[:rows - dy], out=out[dy:])  # and dy above
    return out


def write_detections(path: str | Path, detections: Detections) -> Path:
    """One ``probability,x,y`` row per detection, no header (atomically)."""
    return write_csv(path, ([f"{p:.6f}", int(x), int(y)]
                            for p, x, y in zip(detections.probability, detections.x, detections.y)))


def _is_header(row: list[str]) -> bool:
    """A first line naming the columns (``probability,x,y``, ``Confidence,X coordinate,Y coordinate``, ...)."""
    words = [v.strip().lower() for v in row]
    return len(words) == 3 and words[0].startswith(("p", "conf", "score")) and words[1].startswith("x") \
        and words[2].startswith("y")


#: Level-0 coordinates beyond any slide (the largest Camelyon16 slides are about 10^5 x 2 x 10^5 pixels).
_MAX_COORDINATE = 10 ** 7


def read_detections(path: str | Path) -> Detections:
    """Read a Camelyon16 detection CSV (``probability,x,y`` rows; an empty file is no detections; a header line
    is skipped). Errors name the file and line."""
    path = Path(path)
    probs, xs, ys = [], [], []
    text = read_user_text(path, "detection file")
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) != 3:  # a fourth column is another format (or a shifted one): never guess which is which
                raise ValueError
            p, x, y = (float(v) for v in row)
        except ValueError:
            if number == 1 and _is_header(row):
                continue
            raise UserError(f"{path}:{number}: expected 'probability,x,y' (three columns), got {','.join(row)!r}") \
                from None
        if not (math.isfinite(p) and 0 <= x < _MAX_COORDINATE and 0 <= y < _MAX_COORDINATE) or not 0 <= p <= 1:
            raise UserError(f"{path}:{number}: expected a probability in [0, 1] and level-0 coordinates from 0 to "
                            f"{_MAX_COORDINATE:.0e}, got {','.join(row)!r}")
        probs.append(p)
        xs.append(int(x))
        ys.append(int(y))
    return Detections(np.array(probs), np.array(xs, np.int64), np.array(ys, np.int64))
