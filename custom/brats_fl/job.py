"""The federated BraTS job (:class:`BratsRecipe`): Clara's recipe by default, with other rounds, recipe settings,
data location or federated algorithm as arguments; :func:`make_job` writes one as a job folder.

``jobs/brats_fl/job.py`` runs it (the simulator, a POC federation or a provisioned one) or exports it; the committed
``jobs/brats_fl`` is its export with the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medflare.algorithms import FederatedAlgorithm
from medflare.recipe import EvaluationRecipe, Polling, TaskRecipe, export_job

from .config import TrainConfig
from .learner import BratsLearner
from .model import BratsSegResNet
from .task import TASK

__all__ = ["BratsRecipe", "BratsEvaluation", "make_job"]


class BratsRecipe(TaskRecipe):
    """Two sites train Clara's SegResNet on their BraTS datalists; ScatterAndGather with in-time selection of the
    global best model (mean validation Dice), then cross-site validation on every site's testing split.

    Args:
        rounds: federated rounds (default: Clara's 600).
        train: :class:`~brats_fl.config.TrainConfig` settings to change (e.g. ``{"crop": [64, 64, 48]}``); the
            server's model follows ``crop``, ``vae`` and ``seed``, so both sides build the same network.
        data_root, datalist_dir: where the sites find their data (default: ``$BRATS_DATA_ROOT``, expanded on each
            site) and their datalists (default: ``data_root``'s ``datalists`` folder).
        datalists: site name -> datalist file (default: Clara's two).
        resume_from, algorithm, name, polling, tracking: as in :class:`medflare.recipe.TaskRecipe` (FedProx is the
            recipe's ``fedprox_mu``).
    """

    def __init__(self, *, rounds: int = TASK.rounds, train: Mapping[str, Any] | None = None,
                 data_root: str = "$BRATS_DATA_ROOT", datalist_dir: str | None = None,
                 datalists: Mapping[str, str] | None = None, resume_from: str = "",
                 algorithm: FederatedAlgorithm | None = None, name: str = TASK.name, polling: Polling = Polling(),
                 tracking: str = "tensorboard") -> None:
        config = TrainConfig.from_dict(train)
        algorithm = algorithm or FederatedAlgorithm()
        learner = _learner(config, data_root, datalist_dir, datalists, resume_from_job=resume_from,
                           send_weight_diff=algorithm.sends_weight_diff)
        model = (BratsSegResNet, {"vae": config.vae, "crop": list(config.crop), "seed": config.seed})
        super().__init__(TASK, learner, model, config.to_dict(), rounds=rounds, sites=len(learner.datalists),
                         algorithm=algorithm, resume_from=resume_from, name=name, polling=polling,
                         tracking=tracking)


class BratsEvaluation(EvaluationRecipe):
    """Federated evaluation of BraTS checkpoints: each is sent to both sites and scored on their testing splits
    (Dice and HD95 per region, as in cross-site validation), the data never leaving the sites.

    Args:
        checkpoints: model name -> checkpoint file (e.g. ``{"central": "central/best_model.pt"}``).
        train: :class:`~brats_fl.config.TrainConfig` settings of the scoring (the validation window and overlap,
            ``device``, ``num_threads``; default: Clara's).
        data_root, datalist_dir, datalists: as in :class:`BratsRecipe`.
        name: the job's name.
    """

    def __init__(self, checkpoints: Mapping[str, str | Path], *, train: Mapping[str, Any] | None = None,
                 data_root: str = "$BRATS_DATA_ROOT", datalist_dir: str | None = None,
                 datalists: Mapping[str, str] | None = None, name: str = f"{TASK.name}_evaluation") -> None:
        learner = _learner(TrainConfig.from_dict(train), data_root, datalist_dir, datalists)
        super().__init__(TASK, learner, checkpoints, sites=len(learner.datalists), name=name)


def _learner(config: TrainConfig, data_root: str, datalist_dir: str | None, datalists: Mapping[str, str] | None,
             **kwargs: Any) -> BratsLearner:
    """The sites' learner; the datalists are in ``data_root``'s ``datalists`` folder unless told otherwise."""
    return BratsLearner(data_root=data_root, datalist_dir=datalist_dir or f"{data_root}/datalists",
                        datalists=datalists, train=config.to_dict(), **kwargs)


def make_job(out_dir: str | Path, rounds: int | None = None, train: Mapping[str, Any] | None = None,
             data_root: str | None = None, datalist_dir: str | None = None, resume_from: str | None = None,
             algorithm: FederatedAlgorithm | None = None, tracking: str = "tensorboard") -> Path:
    """Write a :class:`BratsRecipe` as the job folder ``out_dir`` (:func:`medflare.recipe.export_job`); ``None``
    keeps a default."""
    given = {"rounds": rounds, "data_root": data_root, "datalist_dir": datalist_dir, "resume_from": resume_from}
    recipe = BratsRecipe(train=train, algorithm=algorithm, tracking=tracking,
                   **{k: v for k, v in given.items() if v is not None})
    return export_job(recipe, out_dir)
