"""Job folders: ship the project's code into a job, and derive jobs with other settings from ``jobs/brats_fl``.

FLARE ships a job's ``app/custom`` folder to every site (bring-your-own-code), so the sites need only nvflare and
the dependencies. The code itself lives once, in ``custom/``; :func:`ship_code` copies the packages a job needs
into its ``app/custom`` (``make`` does this for the committed jobs; the copies are build output, not in git).
FLARE does not follow symbolic links when it packs a job, so real copies it must be.

The committed job carries the seed's recipe. Users (and ``make demo``) change knobs without editing it:
:func:`make_job` copies the job, applies overrides to its two configuration files and ships the code into it.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from medcore.files import atomic_directory, write_json

from .config import TrainConfig

__all__ = ["DEFAULT_JOB", "JOB_PACKAGES", "ship_code", "load_job_configs", "make_job"]

#: The committed job folder (repository checkout).
DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "brats_fl"

#: The packages the BraTS job runs on the server and the sites.
JOB_PACKAGES: tuple[str, ...] = ("brats_fl", "medcore")

_SERVER = Path("app/config/config_fed_server.json")
_CLIENT = Path("app/config/config_fed_client.json")


def _component(config: dict, component_id: str, path: Path) -> dict:
    for section in ("components", "workflows"):
        for comp in config.get(section, []):
            if comp.get("id") == component_id:
                return comp
    for executor in config.get("executors", []):
        if executor.get("executor", {}).get("id") == component_id:
            return executor["executor"]
    raise ValueError(f"{path}: no component with id {component_id!r}")


def ship_code(custom_dir: str | Path, packages: tuple[str, ...] = JOB_PACKAGES) -> Path:
    """Copy ``packages`` (from where Python imports them) into ``custom_dir``, replacing older copies."""
    custom_dir = Path(custom_dir)
    for name in packages:
        source = Path(importlib.import_module(name).__file__).parent
        with atomic_directory(custom_dir / name) as staged:
            shutil.copytree(source, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return custom_dir


def load_job_configs(job_dir: str | Path) -> tuple[dict, dict]:
    """The server and client configuration of a job folder, with a clear error for a missing or broken file."""
    job_dir = Path(job_dir)
    configs = []
    for rel in (_SERVER, _CLIENT):
        path = job_dir / rel
        if not path.is_file():
            raise ValueError(f"{path}: missing (is {job_dir} a brats_fl job folder?)")
        try:
            configs.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    return configs[0], configs[1]


def make_job(out_dir: str | Path, template: str | Path = DEFAULT_JOB, rounds: int | None = None,
             train: Mapping[str, Any] | None = None, data_root: str | None = None,
             datalist_dir: str | None = None) -> Path:
    """Write a copy of ``template`` to ``out_dir`` with the given overrides and return ``out_dir``.

    Args:
        rounds: federated rounds (ScatterAndGather ``num_rounds``).
        train: :class:`~brats_fl.config.TrainConfig` settings to change (e.g. ``{"crop": [64, 64, 48]}``); the
            server's model arguments (``crop``, ``vae``) follow, so both sides build the same network.
        data_root, datalist_dir: where the sites find their data (default: the template's, ``$BRATS_DATA_ROOT``).
    """
    template = Path(template)
    server, client = load_job_configs(template)
    learner = _component(client, "learner", template / _CLIENT)["args"]
    merged = {**learner.get("train", {}), **dict(train or {})}
    config = TrainConfig.from_dict(merged)  # validates names and values before anything is written
    learner["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in merged.items()}
    if data_root is not None:
        learner["data_root"] = data_root
    if datalist_dir is not None:
        learner["datalist_dir"] = datalist_dir
    model_args = _component(server, "persistor", template / _SERVER)["args"]["model"]["args"]
    model_args.update({"vae": config.vae, "crop": list(config.crop)})
    if rounds is not None:
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        server["num_rounds"] = int(rounds)

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staged:
        shutil.copytree(template, staged, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *JOB_PACKAGES))
        write_json(staged / _SERVER, server)
        write_json(staged / _CLIENT, client)
        ship_code(staged / "app" / "custom")
    return out_dir
