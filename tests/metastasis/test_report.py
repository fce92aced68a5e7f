"""The metastasis cross-site report's intervals: patch metrics of resampled patches, both classes kept."""

import numpy as np
import pytest

from medflare.crosssite import build_report
from metastasis.metrics import classification_scores, roc_auc
from metastasis.report import METASTASIS_REPORT, patch_statistics


def _result(probability, label, threshold=0.5):
    predicted = [int(p >= threshold) for p in probability]
    items = {"probability": probability, "label": label, "predicted": predicted}
    columns = patch_statistics({k: np.asarray(v, float) for k, v in items.items()})(np.arange(len(label)))
    return {**columns, "n": len(label), "items": items}


def test_patch_statistics_by_hand_and_as_the_metrics_compute_them():
    items = {"probability": np.array([0.9, 0.6, 0.4, 0.2, 0.7]), "label": np.array([1, 1, 1, 0, 0]),
             "predicted": np.array([1, 1, 0, 0, 1])}
    statistic = patch_statistics(items)
    # TP 2 (0.9, 0.6), FN 1 (0.4), TN 1 (0.2), FP 1 (0.7); AUC: of the 6 tumour-normal pairs 4 are ordered right
    assert statistic(np.arange(5)) == pytest.approx({"val_accuracy": 3 / 5, "val_auc": 4 / 6,
                                                     "val_sensitivity": 2 / 3, "val_specificity": 1 / 2})
    assert statistic(np.array([0, 0, 3]))["val_accuracy"] == 1.0  # indices with repeats
    # With ties and repeats, every value is what the metrics give on the drawn patches themselves.
    rng = np.random.default_rng(1)
    many = {"probability": rng.integers(0, 20, 300) / 20, "label": rng.integers(0, 2, 300)}
    many["predicted"] = (many["probability"] >= 0.5).astype(int)
    statistic = patch_statistics(many)
    for _ in range(5):
        drawn = rng.integers(0, 300, 300)
        expected = classification_scores(many["probability"][drawn], many["label"][drawn], 0.5)
        assert statistic(drawn) == pytest.approx({
            "val_accuracy": expected["accuracy"], "val_sensitivity": expected["sensitivity"],
            "val_specificity": expected["specificity"],
            "val_auc": roc_auc(many["probability"][drawn], many["label"][drawn])})


def test_every_resample_keeps_both_classes_so_the_auc_is_always_defined():
    rng = np.random.default_rng(0)
    label = [1] * 3 + [0] * 40  # few tumour patches: an unstratified resample would often draw none
    probability = [round(float(p), 4) for p in rng.uniform(0, 1, 43)]
    report = build_report({"site-1": {"site-1": _result(probability, label)}}, METASTASIS_REPORT, resamples=500)
    auc = report.intervals["site-1"]["site-1"]["val_auc"]
    assert auc.undefined == 0 and auc.low <= report.scores["site-1"]["site-1"]["val_auc"] <= auc.high
    assert report.intervals["site-1"]["AVE"]["val_auc"].low == pytest.approx(auc.low)
