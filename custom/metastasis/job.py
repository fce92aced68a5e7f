"""The single-site metastasis job folder: where it is, what code it ships, and derived jobs with other settings.

The committed job (``jobs/pathology_metastasis``) carries the seed's recipe (20 rounds of one epoch, Novograd
lr 1e-3, 224-pixel patches, batch 32). :func:`make_job` writes a copy with other settings and the code shipped
into it (:mod:`medcore.jobs`); the CPU-sized demo is such a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medcore.jobs import CLIENT_CONFIG, SERVER_CONFIG, find_component, load_job_configs, write_job

from .config import TrainConfig

__all__ = ["DEFAULT_JOB", "JOB_PACKAGES", "make_job"]

#: The committed job folder (repository checkout).
DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "pathology_metastasis"

#: The packages the job runs on the server and the site.
JOB_PACKAGES: tuple[str, ...] = ("metastasis", "medcore")


def make_job(out_dir: str | Path, template: str | Path = DEFAULT_JOB, rounds: int | None = None,
             train: Mapping[str, Any] | None = None, data_root: str | None = None,
             patch_list: str | None = None, resume_from: str | None = None) -> Path:
    """Write a copy of ``template`` to ``out_dir`` with the given overrides and return ``out_dir``.

    Args:
        rounds: federated rounds (ScatterAndGather ``num_rounds``), one local epoch each by default.
        train: :class:`~metastasis.config.TrainConfig` settings to change; the server's model follows
            ``patch_size``.
        data_root, patch_list: where the site finds slides and its patch list (default: the template's,
            ``$CAMELYON_DATA_ROOT`` and ``$CAMELYON_DATA_ROOT/patches.json``).
        resume_from: id of an interrupted run of this job to go on from (same server and site workspaces;
            :mod:`medcore.resume`).
    """
    template = Path(template)
    server, client = load_job_configs(template)
    learner = find_component(client, "learner", template / CLIENT_CONFIG)["args"]
    merged = {**learner.get("train", {}), **dict(train or {})}
    config = TrainConfig.from_dict(merged)  # validates names and values before anything is written
    learner["train"] = config.to_dict()
    if data_root is not None:
        learner["data_root"] = data_root
    if patch_list is not None:
        learner["patch_list"] = patch_list
    find_component(server, "persistor", template / SERVER_CONFIG)["args"]["model"]["args"] = \
        {"patch_size": config.patch_size}
    return write_job(out_dir, template, server, client, JOB_PACKAGES, rounds=rounds, resume_from=resume_from)
