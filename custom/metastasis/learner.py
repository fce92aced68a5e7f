"""The FLARE client component of the single-site metastasis job: :class:`~medflare.learner.EngineLearner` (task
handling, state on disk, local best model) around the plain-Python patch-classifier engine.

Each round is ``local_epochs`` epochs over the site's training patches; the server selects the global best model on
``val_accuracy`` (patch accuracy of the received global model on the site's validation patches), and cross-site
validation scores the final and best models on those validation patches.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medcore.distributed import all_gather_shards
from medcore.errors import UserError
from medcore.files import resolve_path
from medflare.crosssite import ITEMS
from medflare.learner import EngineLearner

from .config import TrainConfig
from .engine import Trainer, patch_datasets, patch_scores, predict
from .model import PatchClassifier
from .data.patch_lists import read_patch_list
from .task import TASK

__all__ = ["MetastasisLearner", "KEY_METRIC"]

#: Name of the validation metric the server's IntimeModelSelector selects on.
KEY_METRIC = TASK.key_metric


class MetastasisLearner(EngineLearner):
    """Trains and validates Clara's ResNet18 patch classifier on one site's patch list.

    Args:
        data_root: folder the patch list's slide paths are relative to (environment variables are expanded:
            ``CAMELYON_DATA_ROOT``; ``{site}`` becomes the site's name).
        patch_list: the site's patch list JSON (``{"training": [...], "validation": [...]}``; expanded alike).
        train: :class:`~metastasis.config.TrainConfig` settings; defaults are Clara's recipe. ``pretrained`` is
            not read here: the server's first global model carries those weights.

    The other arguments are :class:`~medflare.learner.EngineLearner`'s.
    """

    task = TASK
    config: TrainConfig
    _always_serialize_args = ("data_root", "patch_list")

    def __init__(self, data_root: str = "$CAMELYON_DATA_ROOT", patch_list: str = "$CAMELYON_DATA_ROOT/patches.json",
                 train: Mapping[str, Any] | None = None, analytic_sender_id: str = "analytic_sender",
                 resume_from_job: str = "",
                 send_weight_diff: bool = False) -> None:
        super().__init__(train, analytic_sender_id, resume_from_job, send_weight_diff)
        self.data_root = data_root
        self.patch_list = patch_list

    def setup(self, fl_ctx: FLContext) -> None:
        root = resolve_path(self.data_root, "data_root", self.site)
        patch_list = resolve_path(self.patch_list, "patch_list", self.site)
        patches = read_patch_list(patch_list, root, check=True)
        self.counts = {split: len(patches.get(split, [])) for split in ("training", "validation")}
        self.log_info(fl_ctx, f"{self.site}: {patch_list} with " + ", ".join(
            f"{n} {k} patches" for k, n in self.counts.items()) + f" under {root}")
        if not self.counts["training"] or not self.counts["validation"]:
            raise UserError(f"{patch_list}: the site needs training and validation patches")
        # Data-parallel: this rank's share of each split (all of it in one process).
        self.datasets = patch_datasets({**patches, **{k: self.rank.shard(patches[k]) for k in self.counts}},
                                       self.config)
        # No pretrained weights here: the server builds the first global model with them (metastasis.job), and it
        # replaces these initial weights before any training, so the sites need not hold the file.
        self.start_engine(lambda: PatchClassifier(self.config.patch_size, seed=self.config.seed), Trainer)

    def dataset(self, split: str):
        return self.datasets[split]

    def score_split(self, split: str, abort_signal: Signal, items: bool = False) -> dict:
        predicted = predict(self.model, self.datasets[split], self.config, self.device,
                            abort=lambda: abort_signal.triggered)
        # Every rank's patches, back in the list's order (the scores do not depend on the ranks).
        shard = self.rank.shard(range(self.counts[split]))
        probabilities, labels = (np.array(all_gather_shards(shard, list(values))) for values in predicted)
        scores = patch_scores(probabilities, labels, self.config.threshold)
        summary = {f"val_{k}" if k in ("accuracy", "auc", "loss", "sensitivity", "specificity") else k: v
                   for k, v in scores.items()}
        if items:  # per patch, for the report's intervals (:func:`metastasis.report.patch_columns`)
            summary[ITEMS] = {"probability": [round(float(p), 6) for p in probabilities],
                              "label": [int(y) for y in labels],
                              "predicted": [int(p >= self.config.threshold) for p in probabilities]}
        return summary

    def score_cross_site(self, abort_signal: Signal) -> dict:
        return self.score_split(self.cross_site_split, abort_signal, items=True)

    def format_scores(self, summary: dict) -> str:
        return (f"accuracy {summary['val_accuracy']:.4f} AUC {summary['val_auc']:.4f} "
                f"sensitivity {summary['val_sensitivity']:.4f} specificity {summary['val_specificity']:.4f} "
                f"({summary['n']} patches)")

    def initial_metrics(self, summary: dict) -> dict[str, float]:
        return {KEY_METRIC: summary[KEY_METRIC], "val_auc": summary["val_auc"], "val_loss": summary["val_loss"]}
