"""Derived metastasis jobs: the committed single-site job (``jobs/pathology_metastasis``, the seed's recipe: 20
rounds of one epoch, Novograd lr 1e-3, 224-pixel patches, batch 32) with other settings, more sites (e.g. one per
hospital, each reading its own patch list through ``{site}`` in the paths) and the code shipped into it
(:func:`medflare.jobs.derive_job`); the CPU-sized demo is such a copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medflare.algorithms import FederatedAlgorithm
from medflare.jobs import derive_job

from .task import TASK

__all__ = ["make_job"]


def make_job(out_dir: str | Path, template: str | Path | None = None, rounds: int | None = None,
             train: Mapping[str, Any] | None = None, data_root: str | None = None,
             patch_list: str | None = None, resume_from: str | None = None, sites: int | None = None,
             algorithm: FederatedAlgorithm | None = None) -> Path:
    """Write a copy of ``template`` (default: the committed job) to ``out_dir`` with the given overrides.

    Args:
        rounds: federated rounds (ScatterAndGather ``num_rounds``), one local epoch each by default.
        train: :class:`~metastasis.config.TrainConfig` settings to change; the server's model follows
            ``patch_size``, ``seed`` and ``pretrained`` (the first global model starts from those weights).
        data_root, patch_list: where the site finds slides and its patch list (default: the template's,
            ``$CAMELYON_DATA_ROOT`` and ``$CAMELYON_DATA_ROOT/patches.json``); ``{site}`` in them becomes each
            site's name (``site-1``, ``site-2``, ...).
        sites: number of sites (default: the template's one); cross-site validation then scores every site's and
            the server's models on every site's validation patches.
        resume_from: id of an interrupted run of this job to go on from (same server and site workspaces;
            :mod:`medflare.workflow`).
        algorithm: FedOpt's server optimiser and a privacy filter (:class:`medflare.algorithms.FederatedAlgorithm`;
            FedProx is the recipe's ``fedprox_mu``), or ``None`` for FedAvg.
    """
    return derive_job(out_dir, template or TASK.job_template(), TASK.recipe, TASK.packages, rounds=rounds,
                      train=train, learner_args={"data_root": data_root, "patch_list": patch_list},
                      model_args=lambda config: {"patch_size": config.patch_size, "seed": config.seed,
                                                 **({"pretrained": config.pretrained} if config.pretrained else {})},
                      resume_from=resume_from, sites=sites, algorithm=algorithm)
