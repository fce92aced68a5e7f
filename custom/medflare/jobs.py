"""FLARE job folders: ship the project's code into a job, read and rewrite a job's two configuration files.

FLARE ships a job's ``app/custom`` folder to every site (bring-your-own-code), so the sites need only nvflare and
the dependencies. The code itself lives once, in ``custom/``; :func:`ship_code` copies the packages a job needs
into its ``app/custom`` (``make`` does this for the committed jobs; the copies are build output, not in git).
FLARE does not follow symbolic links when it packs a job, so real copies it must be.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from medcore.errors import UserError
from medcore.files import atomic_directory, check_replaceable, is_byte_code_cache, mark_output, read_json, write_json
from medcore.settings import Settings

if TYPE_CHECKING:
    from .algorithms import FederatedAlgorithm

__all__ = ["SERVER_CONFIG", "CLIENT_CONFIG", "ship_code", "load_job_configs", "find_component", "set_resume",
           "write_job", "derive_job"]

SERVER_CONFIG = Path("app/config/config_fed_server.json")
CLIENT_CONFIG = Path("app/config/config_fed_client.json")
#: The server persistor that stores the job's recipe with the global models (imported by name: nvflare's torch
#: persistor is not needed to write a job).
RECIPE_PERSISTOR = "medflare.persistor.RecipeModelPersistor"
#: What :func:`write_job` marks its output folders as (:func:`medcore.files.mark_output`).
JOB_OUTPUT = "FLARE job folder"


def ship_code(custom_dir: str | Path, packages: Sequence[str]) -> Path:
    """Copy ``packages`` (from where Python imports them) into ``custom_dir``, replacing older copies."""
    custom_dir = Path(custom_dir)
    sources = {name: Path(importlib.import_module(name).__file__).parent for name in packages}
    for name, source in sources.items():  # an older copy must hold no file a user put there
        check_replaceable(custom_dir / name, f"copy of the {name} package",
                          lambda old, source=source: _only_package_files(old, source))
    for name, source in sources.items():
        with atomic_directory(custom_dir / name) as staged:
            shutil.copytree(source, staged, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            mark_output(staged, f"copy of the {name} package", manifest=True)
    return custom_dir


def _only_package_files(copy: Path, source: Path) -> bool:
    """Whether folder ``copy`` (an unmarked copy from before copies were marked) holds nothing but Python modules
    of the package at ``source`` (and caches)."""
    modules = {str(path.relative_to(copy)) for path in copy.rglob("*.py")}
    for path in copy.rglob("*"):
        rel = path.relative_to(copy)
        if (path.is_dir() and not path.is_symlink()) or is_byte_code_cache(copy, rel, modules):
            continue
        if path.suffix != ".py" or not (source / rel).is_file():
            return False
    return True


def load_job_configs(job_dir: str | Path) -> tuple[dict, dict]:
    """The server and client configuration of a job folder, with a clear error for a missing or broken file."""
    job_dir = Path(job_dir)
    configs = []
    for rel in (SERVER_CONFIG, CLIENT_CONFIG):
        path = job_dir / rel
        if not path.is_file():
            raise UserError(f"{path}: missing (is {job_dir} a job folder?)")
        configs.append(read_json(path, "job configuration"))
        if not isinstance(configs[-1], dict):
            raise UserError(f"{path}: expected a FLARE configuration object")
    return configs[0], configs[1]


def find_component(config: dict, component_id: str, path: Path | str) -> dict:
    """The component, workflow or executor with ``component_id`` in a FLARE configuration."""
    for section in ("components", "workflows"):
        for comp in config.get(section, []):
            if comp.get("id") == component_id:
                return comp
    for executor in config.get("executors", []):
        if executor.get("executor", {}).get("id") == component_id:
            return executor["executor"]
    raise UserError(f"{path}: no component with id {component_id!r}")


def set_resume(server: dict, client: dict, job_id: str, job_dir: str | Path,
               workflow_id: str = "scatter_and_gather", learner_id: str = "learner") -> None:
    """Make a job's configurations (in place) go on from interrupted job ``job_id`` (:mod:`medflare.workflow`): the
    server's training workflow and the sites' learner both get ``resume_from_job``."""
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise UserError(f"resume: {job_id!r} is not a job id (the id FLARE gave the interrupted job)")
    workflow = find_component(server, workflow_id, Path(job_dir) / SERVER_CONFIG)
    if not workflow.get("path", "").endswith("ResumableScatterAndGather"):
        raise UserError(f"{Path(job_dir) / SERVER_CONFIG}: workflow {workflow_id!r} is {workflow.get('path')!r}, "
                         "which cannot resume; use medflare.workflow.ResumableScatterAndGather")
    learner = find_component(client, learner_id, Path(job_dir) / CLIENT_CONFIG)
    for component in (workflow, learner):
        component.setdefault("args", {})["resume_from_job"] = job_id


def write_job(out_dir: str | Path, template: str | Path, server: dict, client: dict, packages: Sequence[str],
              rounds: int | None = None, resume_from: str | None = None, sites: int | None = None) -> Path:
    """Write ``template`` with the given configurations and a fresh copy of ``packages`` to ``out_dir``
    (atomically: a failed write leaves no half job).

    ``out_dir`` may be missing, empty or a job this function wrote before (it carries a marker); any other
    existing path is refused with a :class:`~medcore.errors.UserError` before anything is written.

    Args:
        rounds: federated rounds (the server's ``num_rounds``), or ``None`` to keep ``server``'s.
        resume_from: id of an interrupted run to go on from (:func:`set_resume`), or ``None``.
        sites: sites the job waits for (``min_clients`` of the job and of its workflows), or ``None`` to keep
            the template's.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, JOB_OUTPUT)
    if rounds is not None:
        if rounds < 1:
            raise UserError(f"rounds must be at least 1, got {rounds}")
        server["num_rounds"] = int(rounds)
    if resume_from is not None:
        set_resume(server, client, resume_from, template)
    meta = read_json(Path(template) / "meta.json", "job meta.json")
    if sites is not None:
        if sites < 1:
            raise UserError(f"sites must be at least 1, got {sites}")
        meta["min_clients"] = int(sites)
        for workflow in server.get("workflows", []):
            if "min_clients" in workflow.get("args", {}):
                workflow["args"]["min_clients"] = int(sites)
    with atomic_directory(out_dir) as staged:
        shutil.copytree(template, staged, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *packages))
        write_json(staged / "meta.json", meta)
        write_json(staged / SERVER_CONFIG, server)
        write_json(staged / CLIENT_CONFIG, client)
        ship_code(staged / "app" / "custom", packages)
        mark_output(staged, JOB_OUTPUT, manifest=True)
    return out_dir


def derive_job(out_dir: str | Path, template: str | Path, recipe: type[Settings], packages: Sequence[str],
               rounds: int | None = None, train: Mapping[str, Any] | None = None,
               learner_args: Mapping[str, Any] | None = None,
               model_args: Callable[[Settings], Mapping[str, Any]] = lambda config: {},
               resume_from: str | None = None, sites: int | None = None,
               algorithm: FederatedAlgorithm | None = None) -> Path:
    """Write a copy of job ``template`` to ``out_dir`` with overrides and return ``out_dir``.

    Args:
        recipe: the learner's recipe class; the merged ``train`` block (the template's, then ``train``) is checked
            with it before anything is written, and the job keeps exactly that merged block.
        learner_args: other arguments of the ``learner`` component to set (``None`` values are left alone).
        model_args: the server persistor's model arguments for a recipe, so both sides build the same network
            (a :class:`~medflare.persistor.RecipeModelPersistor` also gets the merged ``train`` block).
        rounds, resume_from, sites: as in :func:`write_job`.
        algorithm: a server optimiser and a privacy filter (:class:`~medflare.algorithms.FederatedAlgorithm`), or
            ``None`` for the template's FedAvg.
    """
    template = Path(template)
    server, client = load_job_configs(template)
    learner = find_component(client, "learner", template / CLIENT_CONFIG).setdefault("args", {})
    merged = {**learner.get("train", {}), **dict(train or {})}
    config = recipe.from_dict(merged)  # validates names and values before anything is written
    learner["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in merged.items()}
    learner.update({k: v for k, v in (learner_args or {}).items() if v is not None})
    persistor = find_component(server, "persistor", template / SERVER_CONFIG)
    model = persistor.setdefault("args", {}).setdefault("model", {})
    if isinstance(model, str):  # the model is a component of its own (a FedOpt job as the template)
        model = find_component(server, model, template / SERVER_CONFIG)
    model.setdefault("args", {}).update(model_args(config))
    if persistor.get("path") == RECIPE_PERSISTOR:  # the global models carry the sites' recipe
        persistor["args"]["train_conf"] = learner["train"]
    if algorithm is not None:
        algorithm.apply(server, client, template)
    return write_job(out_dir, template, server, client, packages, rounds=rounds, resume_from=resume_from,
                     sites=sites)
