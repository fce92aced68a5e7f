"""The metastasis job's cross-site validation report: patch accuracy, AUC, sensitivity and specificity of the
final global, best global and local best models on the site's validation patches, and the training curves.
The machinery is :mod:`medflare.crosssite`; this module says what the metastasis results hold."""

from __future__ import annotations

from medflare.crosssite import ReportSpec

__all__ = ["METASTASIS_REPORT"]

METASTASIS_REPORT = ReportSpec(
    required=("val_accuracy", "val_auc"),
    columns=("val_accuracy", "val_auc", "val_sensitivity", "val_specificity"),
    count_key="n", count_name="validation patches", split_name="validation patches",
    curves=(("train_loss", "training loss (BCE)", "local epoch"),
            ("val_accuracy", "validation accuracy of the global model", "round"),
            ("local_val_accuracy", "validation accuracy of the local model", "local epoch")),
)
