"""Classification scores of tumour probabilities: patch accuracy, confusion counts and ROC AUC.

ROC AUC is the Mann-Whitney statistic: the probability that a random positive scores above a random negative,
ties counting one half (the area under the ROC curve with ties drawn as diagonal segments, as scikit-learn's
``roc_auc_score`` computes it). It is undefined (NaN) when only one class is present.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = ["roc_auc", "classification_scores"]


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 positive); NaN with a single class."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)  # midranks: ties share the mean rank
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def classification_scores(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray,
                          threshold: float = 0.5) -> dict[str, float]:
    """Accuracy (probability >= ``threshold`` means tumour), AUC, confusion counts, sensitivity, specificity."""
    p = np.asarray(probabilities, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(int)
    if p.size == 0:
        raise ValueError("no predictions to score")
    predicted = p >= threshold
    tp = int((predicted & (y == 1)).sum())
    tn = int((~predicted & (y == 0)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    return {
        "accuracy": (tp + tn) / p.size,
        "auc": roc_auc(p, y),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn, "n": int(p.size),
    }
