"""BraTS evaluation regions and metrics, with the challenge's conventions.

Regions (channels in this order everywhere in the package; the pipeline makes them from labels with MONAI's
``ConvertToMultiChannelBasedOnBratsClasses``):

* TC, tumour core = labels 1 and 4;
* WT, whole tumour = labels 1, 2 and 4;
* ET, enhancing tumour = label 4.

Conventions for empty masks (as the BraTS challenge scores them):

* Dice: empty prediction on empty ground truth = 1; anything predicted on empty ground truth = 0.
* Hausdorff 95: both empty = 0; exactly one empty = 373.13 mm (the diagonal of the 240 x 240 x 155 mm volume,
  the value BraTS assigns).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["REGIONS", "HD95_EMPTY", "regions_to_labels", "dice", "hd95", "region_scores"]

REGIONS: tuple[str, ...] = ("TC", "WT", "ET")
HD95_EMPTY = float(np.sqrt(240.0 ** 2 + 240.0 ** 2 + 155.0 ** 2))


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """Boolean (3, X, Y, Z) TC, WT, ET masks -> BraTS labels (uint8): WT -> 2, inside TC -> 1, inside ET -> 4.

    The nesting ET within TC within WT is imposed in this order, so the labels always overlay as the challenge
    defines them.
    """
    tc, wt, et = (np.asarray(r, dtype=bool) for r in regions)
    labels = np.zeros(wt.shape, np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[et] = 4
    return labels


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks with the BraTS empty-mask convention (see module docstring)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, grown by one voxel on every side (within the array)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, mask.shape[axis])))
    return tuple(box)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of two boolean masks.

    The larger of the two directed 95th percentiles (surface voxels of one mask to the nearest surface voxel of
    the other), as MONAI's ``compute_hausdorff_distance(percentile=95)`` computes it; empty masks per the BraTS
    convention.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return HD95_EMPTY
    # Only the box around both masks matters, with one voxel of margin so that the erosion finds the same
    # surfaces (outside the volume counts as background either way): every surface voxel, and so every nearest
    # one, lies inside. The same distances, for the work of the tumour's box rather than the whole head's.
    box = _box(pred | truth)
    pred, truth = pred[box], truth[box]
    sp, st = _surface(pred), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def region_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Dice per region and their mean (``TC, WT, ET, mean``) for boolean (3, ...) masks; with ``spacing`` also
    ``HD95_TC, HD95_WT, HD95_ET``."""
    scores = {name: dice(pred[i], truth[i]) for i, name in enumerate(REGIONS)}
    scores["mean"] = float(np.mean([scores[r] for r in REGIONS]))
    if spacing is not None:
        for i, name in enumerate(REGIONS):
            scores[f"HD95_{name}"] = hd95(pred[i], truth[i], spacing)
    return scores
