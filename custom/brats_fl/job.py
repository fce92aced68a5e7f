"""Derived BraTS jobs: the committed job (``jobs/brats_fl``, the seed's recipe) with other rounds, recipe settings
or data location, and the code shipped into it (:func:`medflare.jobs.derive_job`; ``make demo`` uses one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medflare.algorithms import FederatedAlgorithm
from medflare.jobs import derive_job

from .task import TASK

__all__ = ["make_job"]


def make_job(out_dir: str | Path, template: str | Path | None = None, rounds: int | None = None,
             train: Mapping[str, Any] | None = None, data_root: str | None = None,
             datalist_dir: str | None = None, resume_from: str | None = None,
             algorithm: FederatedAlgorithm | None = None) -> Path:
    """Write a copy of ``template`` (default: the committed job) to ``out_dir`` with the given overrides.

    Args:
        rounds: federated rounds (ScatterAndGather ``num_rounds``).
        train: :class:`~brats_fl.config.TrainConfig` settings to change (e.g. ``{"crop": [64, 64, 48]}``); the
            server's model arguments (``crop``, ``vae``) follow, so both sides build the same network.
        data_root, datalist_dir: where the sites find their data (default: the template's, ``$BRATS_DATA_ROOT``).
        resume_from: id of an interrupted run of this job to go on from (same server and site workspaces;
            :mod:`medflare.workflow`).
        algorithm: FedOpt's server optimiser and a privacy filter (:class:`medflare.algorithms.FederatedAlgorithm`;
            FedProx is the recipe's ``fedprox_mu``), or ``None`` for FedAvg.
    """
    return derive_job(out_dir, template or TASK.job_template(), TASK.recipe, TASK.packages, rounds=rounds,
                      train=train, learner_args={"data_root": data_root, "datalist_dir": datalist_dir},
                      model_args=lambda config: {"vae": config.vae, "crop": list(config.crop), "seed": config.seed},
                      resume_from=resume_from, algorithm=algorithm)
