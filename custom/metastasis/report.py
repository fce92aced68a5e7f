"""The metastasis job's cross-site validation report: patch accuracy, AUC, sensitivity and specificity of the
final global, best global and local best models on the site's validation patches, and the training curves.
Each value's 95% interval resamples the site's validation patches within each class (:func:`patch_statistics`).
The machinery is :mod:`medflare.crosssite`; this module says what the metastasis results hold."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from medflare.crosssite import ReportSpec


__all__ = ["METASTASIS_REPORT", "patch_statistics"]


def patch_statistics(items: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], dict[str, float]]:
    """Of the per-patch ``probability``, ``label`` and ``predicted`` (0/1 at the recipe's threshold) the results
    carry, the statistic "a report cell's values on the patches ``drawn``" (indices, with repeats).

    The same values as :func:`~metastasis.metrics.classification_scores` and :func:`~metastasis.metrics.roc_auc`
    on the drawn patches (tested), computed from how often each patch is drawn: the scores are sorted once, and a
    resample's AUC is the Mann-Whitney count (ties one half) over the sorted distinct scores, O(n) per resample.
    """
    labels = np.asarray(items["label"]).astype(int)
    positive, predicted = labels == 1, np.asarray(items["predicted"]) > 0
    distinct, group = np.unique(np.asarray(items["probability"], np.float64), return_inverse=True)

    def statistic(drawn: np.ndarray) -> dict[str, float]:
        times = np.bincount(drawn, minlength=labels.size).astype(np.float64)
        tumour = np.bincount(group, weights=times * positive, minlength=distinct.size)
        normal = np.bincount(group, weights=times * ~positive, minlength=distinct.size)
        n_tumour, n_normal = tumour.sum(), normal.sum()
        below = np.cumsum(normal) - normal  # normal patches scored lower than each distinct score
        auc = float((tumour * (below + 0.5 * normal)).sum() / (n_tumour * n_normal)) if n_tumour and n_normal \
            else math.nan
        right = times @ (predicted == positive)
        found, cleared = times @ (predicted & positive), times @ (~predicted & ~positive)
        return {"val_accuracy": float(right / times.sum()), "val_auc": auc,
                "val_sensitivity": float(found / n_tumour) if n_tumour else math.nan,
                "val_specificity": float(cleared / n_normal) if n_normal else math.nan}

    return statistic


METASTASIS_REPORT = ReportSpec(
    required=("val_accuracy", "val_auc"),
    columns=("val_accuracy", "val_auc", "val_sensitivity", "val_specificity"),
    count_key="n", count_name="validation patches", split_name="validation patches",
    item_statistics=patch_statistics, item_strata=lambda items: items["label"].astype(int),
    curves=(("train_loss", "training loss (BCE)", "local epoch"),
            ("val_accuracy", "validation accuracy of the global model", "round"),
            ("local_val_accuracy", "validation accuracy of the local model", "local epoch")),
)
