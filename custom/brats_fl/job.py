"""The BraTS job folder: where it is, what code it ships, and derived jobs with other settings.

The committed job (``jobs/brats_fl``) carries the seed's recipe. Users (and ``make demo``) change knobs without
editing it: :func:`make_job` copies the job, applies overrides to its two configuration files and ships the code
into it (:mod:`medcore.jobs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medcore.jobs import CLIENT_CONFIG, SERVER_CONFIG, find_component, load_job_configs, ship_code, write_job

from .config import TrainConfig

__all__ = ["DEFAULT_JOB", "JOB_PACKAGES", "ship_code", "load_job_configs", "make_job"]

#: The committed job folder (repository checkout).
DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "brats_fl"

#: The packages the BraTS job runs on the server and the sites.
JOB_PACKAGES: tuple[str, ...] = ("brats_fl", "medcore")


def make_job(out_dir: str | Path, template: str | Path = DEFAULT_JOB, rounds: int | None = None,
             train: Mapping[str, Any] | None = None, data_root: str | None = None,
             datalist_dir: str | None = None, resume_from: str | None = None) -> Path:
    """Write a copy of ``template`` to ``out_dir`` with the given overrides and return ``out_dir``.

    Args:
        rounds: federated rounds (ScatterAndGather ``num_rounds``).
        train: :class:`~brats_fl.config.TrainConfig` settings to change (e.g. ``{"crop": [64, 64, 48]}``); the
            server's model arguments (``crop``, ``vae``) follow, so both sides build the same network.
        data_root, datalist_dir: where the sites find their data (default: the template's, ``$BRATS_DATA_ROOT``).
        resume_from: id of an interrupted run of this job to go on from (same server and site workspaces;
            :mod:`medcore.resume`).
    """
    template = Path(template)
    server, client = load_job_configs(template)
    learner = find_component(client, "learner", template / CLIENT_CONFIG)["args"]
    merged = {**learner.get("train", {}), **dict(train or {})}
    config = TrainConfig.from_dict(merged)  # validates names and values before anything is written
    learner["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in merged.items()}
    if data_root is not None:
        learner["data_root"] = data_root
    if datalist_dir is not None:
        learner["datalist_dir"] = datalist_dir
    model_args = find_component(server, "persistor", template / SERVER_CONFIG)["args"]["model"]["args"]
    model_args.update({"vae": config.vae, "crop": list(config.crop)})
    return write_job(out_dir, template, server, client, JOB_PACKAGES, rounds=rounds, resume_from=resume_from)
