"""The single-site metastasis task as the FLARE layer and the shared sub-commands see it
(:class:`medflare.task.TaskSpec`)."""

from __future__ import annotations

from medflare.task import TaskSpec

from .config import TrainConfig
from .report import METASTASIS_REPORT

__all__ = ["TASK"]

TASK = TaskSpec(
    name="pathology_metastasis",
    packages=("metastasis", "medcore", "medflare"),
    data_variable="CAMELYON_DATA_ROOT",
    clients=1,
    rounds=20,  # Clara's
    settings=TrainConfig,
    report=METASTASIS_REPORT,
    key_metric="val_accuracy",  # patch accuracy on the site's validation patches
)
