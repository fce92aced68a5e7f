"""Smooth random fields and reproducible per-item random generators for the synthetic-data generators."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["smooth_field", "item_rng"]


def smooth_field(shape: Sequence[int], rng: np.random.Generator, cells: int | Sequence[int]) -> np.ndarray:
    """A smooth random field of ``shape`` with zero mean and unit standard deviation (float32).

    White noise on a coarse grid of ``cells`` points per axis (about one independent value per cell) is
    interpolated (cubic) to ``shape``. Few cells give slowly varying fields (bias fields, organ outlines), many cells
    give fine texture. Works for any number of dimensions.
    """
    shape = tuple(int(s) for s in shape)
    cells_t = (int(cells),) * len(shape) if np.isscalar(cells) else tuple(int(c) for c in cells)
    coarse_shape = tuple(max(2, min(c, s)) + 2 for c, s in zip(cells_t, shape))  # +2: margin so edges are smooth too
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    # Map output index i to coarse coordinate 1 + i * (n_cells - 1) / (n - 1) (inside the margin).
    axes = [
        1.0 + np.arange(s, dtype=np.float32) * ((cs - 3) / max(s - 1, 1)) for s, cs in zip(shape, coarse_shape)
    ]
    field = _separable_cubic(coarse, axes)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _separable_cubic(coarse: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Cubic-spline interpolation of ``coarse`` at the outer product of ``axes``, one axis at a time.

    Each axis is a small (len(coords) x n_coarse) interpolation matrix applied with ``tensordot``: exact tensor-product
    spline interpolation at a fraction of the cost of ``map_coordinates`` over the full output grid.
    """
    out = coarse
    for dim, coords in enumerate(axes):
        n = coarse.shape[dim]
        basis = ndimage.spline_filter1d(np.eye(n, dtype=np.float64), order=3, axis=0, mode="mirror")
        weights = np.stack(
            [ndimage.map_coordinates(basis[:, j], [coords], order=3, prefilter=False, mode="mirror") for j in range(n)],
            axis=1,
        ).astype(np.float32)
        out = np.moveaxis(np.tensordot(weights, out, axes=([1], [dim])), 0, dim)
    return np.ascontiguousarray(out)


def item_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one item (case, slide, tile) that depends only on ``seed`` and the item's keys.

    Items can then be generated in any order, or alone, and still come out identical.
    """
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])
