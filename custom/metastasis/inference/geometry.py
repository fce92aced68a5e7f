"""Where a probability map lies on its slide, and the tiles that compute it.

Map pixel (row i, column j) is the tumour probability of the ``patch_size`` window centred at level-0
``(origin_x + j * stride, origin_y + i * stride)``, with ``origin = (stride / 2, stride / 2)``: map pixel (i, j)
sits over the level-0 block ``[j s, (j + 1) s) x [i s, (i + 1) s)``, so the map is the slide at 1/stride
(``ceil(W / s) x ceil(H / s)``). Only map pixels whose window centre lies on tissue are computed
(:func:`tissue_pixels`); :func:`tile_plan` lays the fully convolutional tiles over them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from ..data.tissue import TissueMask

__all__ = ["MapGeometry", "tissue_pixels", "tile_plan"]


@dataclasses.dataclass(frozen=True)
class MapGeometry:
    """Where a probability map's pixels lie on the slide (see the module docstring)."""

    stride: int
    patch_size: int
    level0_size: tuple[int, int]  # slide (width, height)

    @property
    def origin(self) -> tuple[float, float]:
        """Level-0 (x, y) of the centre of map pixel (0, 0)."""
        return self.stride / 2, self.stride / 2

    @property
    def shape(self) -> tuple[int, int]:
        """Map (rows, columns)."""
        width, height = self.level0_size
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of the window centres of map pixels (rows, cols)."""
        ox, oy = self.origin
        return ox + np.asarray(cols) * self.stride, oy + np.asarray(rows) * self.stride

    def to_dict(self) -> dict:
        return {"stride": self.stride, "patch_size": self.patch_size, "level0_size": list(self.level0_size),
                "origin": list(self.origin), "shape": list(self.shape)}


def tissue_pixels(geometry: MapGeometry, tissue: TissueMask) -> np.ndarray:
    """Boolean (rows, cols) map of the pixels whose window centre is on tissue (built row and column-wise: no
    per-pixel arrays)."""
    n_rows, n_cols = geometry.shape
    xs, ys = geometry.centres(np.zeros(1), np.arange(n_cols))[0], geometry.centres(np.arange(n_rows), np.zeros(1))[1]
    cols = np.floor(xs / tissue.downsample).astype(np.int64)
    rows = np.floor(ys / tissue.downsample).astype(np.int64)
    col_ok = (cols >= 0) & (cols < tissue.mask.shape[1])
    row_ok = (rows >= 0) & (rows < tissue.mask.shape[0])
    todo = np.zeros(geometry.shape, bool)
    todo[np.ix_(row_ok, col_ok)] = tissue.mask[np.ix_(rows[row_ok], cols[col_ok])]
    return todo


def tile_plan(todo: np.ndarray, tile_outputs: int, tile_side: Callable[[int], int],
              smallest: int = 8) -> list[tuple[int, int, int, int]]:
    """Boxes ``(row, col, rows, cols)`` of map pixels that cover every ``todo`` pixel, each computed as one tile.

    The map is cut into blocks of ``tile_outputs`` x ``tile_outputs`` pixels. A block is shrunk to its tissue's
    bounding box, then split into quarters (recursively, down to ``smallest``) when the quarters' tiles, each
    shrunk to its own tissue, cost fewer input pixels in all: every tile pays a margin of ``patch - 32`` pixels
    around its outputs, so splitting pays only where it leaves enough glass out. ``tile_side(n)`` is the input side
    of a tile of ``n`` map pixels. A tile is never larger than a block, which bounds memory.
    """
    def cost(box: tuple[int, int, int, int]) -> int:
        return tile_side(box[2]) * tile_side(box[3])

    def plan(i0: int, j0: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
        block = todo[i0:i0 + rows, j0:j0 + cols]
        on_rows, on_cols = np.flatnonzero(block.any(1)), np.flatnonzero(block.any(0))
        if not len(on_rows):
            return []
        whole = [(int(i0 + on_rows[0]), int(j0 + on_cols[0]), int(on_rows[-1] - on_rows[0] + 1),
                  int(on_cols[-1] - on_cols[0] + 1))]
        if max(rows, cols) <= smallest or block.all():
            return whole
        r, c = (rows + 1) // 2, (cols + 1) // 2
        quarters = ((0, 0, r, c), (0, c, r, cols - c), (r, 0, rows - r, c), (r, c, rows - r, cols - c))
        parts = [box for di, dj, h, w in quarters if h and w for box in plan(i0 + di, j0 + dj, h, w)]
        return parts if sum(map(cost, parts)) < cost(whole[0]) else whole

    n_rows, n_cols = todo.shape
    return [box for i0 in range(0, n_rows, tile_outputs) for j0 in range(0, n_cols, tile_outputs)
            for box in plan(i0, j0, min(tile_outputs, n_rows - i0), min(tile_outputs, n_cols - j0))]
