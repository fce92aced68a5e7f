"""The metastasis job (:class:`MetastasisRecipe`): Clara's single-site recipe by default (20 rounds of one epoch,
Novograd lr 1e-3, 224-pixel patches, batch 32), with other settings, more sites (e.g. one per hospital, each
reading its own patch list through ``{site}`` in the paths) or a federated algorithm as arguments; :func:`make_job`
writes one as a job folder (the CPU-sized demo is such a job).

``jobs/pathology_metastasis/job.py`` runs it or exports it; the committed ``jobs/pathology_metastasis`` is its export
with the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medflare.algorithms import FederatedAlgorithm
from medflare.recipe import EvaluationRecipe, Polling, TaskRecipe, export_job

from .config import TrainConfig
from .learner import MetastasisLearner
from .model import PatchClassifier
from .task import TASK

__all__ = ["MetastasisRecipe", "MetastasisEvaluation", "make_job"]


class MetastasisRecipe(TaskRecipe):
    """Sites train Clara's ResNet18 patch classifier on their patch lists; ScatterAndGather with in-time selection
    of the global best model (validation patch accuracy), then cross-site validation on every site's validation
    patches.

    Args:
        rounds: federated rounds, one local epoch each by default (default: Clara's 20).
        train: :class:`~metastasis.config.TrainConfig` settings to change; the server's model follows
            ``patch_size``, ``seed`` and ``pretrained`` (the first global model starts from those weights).
        data_root, patch_list: where a site finds slides and its patch list (default: ``$CAMELYON_DATA_ROOT`` and
            its ``patches.json``); ``{site}`` in them becomes each site's name (``site-1``, ``site-2``, ...).
        sites: number of sites (default: Clara's one); cross-site validation then scores every site's and the
            server's models on every site's validation patches.
        resume_from, algorithm, name, polling, tracking: as in :class:`medflare.recipe.TaskRecipe` (FedProx is the
            recipe's ``fedprox_mu``).
    """

    def __init__(self, *, rounds: int = TASK.rounds, train: Mapping[str, Any] | None = None,
                 data_root: str = "$CAMELYON_DATA_ROOT", patch_list: str = "$CAMELYON_DATA_ROOT/patches.json",
                 sites: int = TASK.clients, resume_from: str = "", algorithm: FederatedAlgorithm | None = None,
                 name: str = TASK.name, polling: Polling = Polling(), tracking: str = "tensorboard") -> None:
        config = TrainConfig.from_dict(train)
        algorithm = algorithm or FederatedAlgorithm()
        learner = MetastasisLearner(data_root=data_root, patch_list=patch_list, train=config.to_dict(),
                                    resume_from_job=resume_from, send_weight_diff=algorithm.sends_weight_diff)
        model = (PatchClassifier, {"patch_size": config.patch_size, "seed": config.seed,
                                   **({"pretrained": config.pretrained} if config.pretrained else {})})
        super().__init__(TASK, learner, model, config.to_dict(), rounds=rounds, sites=sites, algorithm=algorithm,
                         resume_from=resume_from, name=name, polling=polling,
                         tracking=tracking)


class MetastasisEvaluation(EvaluationRecipe):
    """Federated evaluation of patch classifiers: each checkpoint is sent to every site and scored on its
    validation patches (patch accuracy and AUC, as in cross-site validation), the slides never leaving the sites.

    Args:
        checkpoints: model name -> checkpoint file.
        train: :class:`~metastasis.config.TrainConfig` settings of the scoring (``patch_size`` and
            ``stain_normalization`` must be the checkpoints'; default: Clara's).
        data_root, patch_list, sites: as in :class:`MetastasisRecipe`.
        name: the job's name.
    """

    def __init__(self, checkpoints: Mapping[str, str | Path], *, train: Mapping[str, Any] | None = None,
                 data_root: str = "$CAMELYON_DATA_ROOT", patch_list: str = "$CAMELYON_DATA_ROOT/patches.json",
                 sites: int = TASK.clients, name: str = f"{TASK.name}_evaluation") -> None:
        learner = MetastasisLearner(data_root=data_root, patch_list=patch_list,
                                    train=TrainConfig.from_dict(train).to_dict())
        super().__init__(TASK, learner, checkpoints, sites=sites, name=name)


def make_job(out_dir: str | Path, rounds: int | None = None, train: Mapping[str, Any] | None = None,
             data_root: str | None = None, patch_list: str | None = None, resume_from: str | None = None,
             sites: int | None = None, algorithm: FederatedAlgorithm | None = None,
             tracking: str = "tensorboard") -> Path:
    """Write a :class:`MetastasisRecipe` as the job folder ``out_dir`` (:func:`medflare.recipe.export_job`); ``None``
    keeps a default."""
    given = {"rounds": rounds, "data_root": data_root, "patch_list": patch_list, "resume_from": resume_from,
             "sites": sites}
    recipe = MetastasisRecipe(train=train, algorithm=algorithm, tracking=tracking,
                   **{k: v for k, v in given.items() if v is not None})
    return export_job(recipe, out_dir)
