"""The federated BraTS task as the FLARE layer and the shared sub-commands see it (:class:`medflare.task.TaskSpec`)."""

from __future__ import annotations

from medflare.task import TaskSpec

from .config import TrainConfig
from .report import BRATS_REPORT

__all__ = ["TASK"]

TASK = TaskSpec(
    name="brats_fl",
    packages=("brats_fl", "medcore", "medflare"),
    data_variable="BRATS_DATA_ROOT",
    clients=2,
    rounds=600,  # Clara's
    settings=TrainConfig,
    report=BRATS_REPORT,
    key_metric="val_dice",  # mean Dice over TC, WT and ET on the site's validation split
    bundle_key_prefix="net.",  # BratsSegResNet holds MONAI's SegResNet as .net
)
