"""A task's federated training job, defined once in Python on FLARE's job API (``nvflare.job_config.api.FedJob``,
wrapped in an ``nvflare.recipe.Recipe``).

The job is Clara's: the sites run the task's :class:`~medflare.learner.EngineLearner` under FLARE's
``LearnerExecutor``; the server runs ScatterAndGather (:class:`~medflare.workflow.ResumableScatterAndGather`) with
in-time selection of the global best model (``IntimeModelSelector`` on the task's key metric), then cross-site
validation of every model on every site's data (``CrossSiteModelEval``, whose ``cross_val_results.json``
:mod:`medflare.crosssite` reports). FedOpt and a privacy filter come from a
:class:`~medflare.algorithms.FederatedAlgorithm`.

:class:`EvaluationRecipe` is the other job a task has: federated evaluation of given checkpoints, no training.

A recipe runs where FLARE's recipes run (``recipe.run(SimEnv(...) | PocEnv(...) | ProdEnv(...))``) and
:func:`export_job` writes it as a job folder (``meta.json``, ``app/config``, and ``app/custom`` holding the task's
packages, which FLARE ships to the sites with the job). The committed ``jobs/<task>`` folders are such exports with
the defaults (``jobs/<task>/job.py --export --export-dir jobs``; a test compares them).
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.executors.learner_executor import LearnerExecutor
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector
from nvflare.app_common.widgets.validation_json_generator import ValidationJsonGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_opt.pt.file_model_locator import PTFileModelLocator
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

# nvflare.recipe.spec strips --export/--export-dir from sys.argv when imported, and warns that it did; our command
# line has read them already (medflare.cli), with the same meaning.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="NVFlare reserves '--export'", category=UserWarning)
    from nvflare.recipe.spec import Recipe

from medcore.errors import UserError, first_line
from medcore.files import (OUTPUT_MARKER, atomic_directory, check_replaceable, is_byte_code_cache, listed_outputs,
                           mark_output, read_json, writing_into)

from .algorithms import MODEL_ID, FederatedAlgorithm
from .bundle import BUNDLE_WEIGHTS
from .evaluation import CheckpointLocator, checkpoint_weights
from .outcome import failure_reasons
from .persistor import TrainConfPersistor
from .task import TaskSpec, is_job_id
from .workflow import ResumableScatterAndGather

__all__ = ["JOB_OUTPUT", "TASKS", "ModelSpec", "Polling", "TaskRecipe", "EvaluationRecipe", "package_dir",
           "export_job", "poc_env", "run_recipe"]

#: What an exported job folder is called in messages about replacing one.
JOB_OUTPUT = "FLARE job folder"
#: The tasks the sites run (``train``: a round; ``validate``: another model on the site's data; ``submit_model``:
#: the site's local best model for cross-site validation).
TASKS = ["train", "submit_model", "validate"]
#: Where the sites' metrics can go (:class:`TaskRecipe`'s ``tracking``).
TRACKING = ("tensorboard", "mlflow")
#: A file next to an exported job that the export keeps (the job's own script, ``jobs/<task>/job.py``).
JOB_SCRIPT = "job.py"

#: The server's model: ``(class, constructor arguments)``, built by the persistor from ``{"path", "args"}``.
ModelSpec = tuple[type, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Polling:
    """How often FLARE's server and workflows look for work, in seconds. FLARE's defaults (2.0 and 0.5) cost about
    1.4 s more per round than these in the simulator (benchmarks/results/flare_overhead_small_rounds.md).

    Attributes:
        task_request_interval: how long the server tells a site to wait before asking for a task again.
        task_check_period: how often the workflows check their tasks for results.
    """

    task_request_interval: float = 0.1
    task_check_period: float = 0.05


def _stated(component: Any, *names: str) -> Any:
    """``component``, whose arguments ``names`` FLARE's job API exports even when they equal the class's defaults
    (it leaves defaults out otherwise): the settings a reader of the job looks for."""
    component._always_serialize_args = (*getattr(component, "_always_serialize_args", ()), *names)
    return component


def _add_server_settings(job: FedJob, polling: Polling) -> None:
    """The server's own settings: a site may be silent for long (a round of 3D training), and asks for its next task
    soon."""
    job.to_server({"server": {"heart_beat_timeout": 600, "task_request_interval": polling.task_request_interval}})


def package_dir(name: str) -> Path:
    """The folder Python imports package ``name`` from."""
    return Path(importlib.import_module(name).__file__).parent


class _TaskJob(Recipe):
    """A recipe of one task's job: its name and sites, and the task's packages shipped with it."""

    def __init__(self, task: TaskSpec, job: FedJob, *, name: str, sites: int) -> None:
        self.task, self.name, self.sites = task, name, int(sites)
        for package in task.packages:  # the whole packages: the sites import more than the job's classes
            job.add_file_to_clients(str(package_dir(package)), dest_dir=package)
        super().__init__(job)


class TaskRecipe(_TaskJob):
    """One task's federated training job (FedAvg by default), as a FLARE recipe.

    Args:
        task: the task (its packages, key metric, report).
        learner: the sites' learner, built with the job's recipe (its ``train`` block).
        model: the server's model class and arguments; the persistor builds the first global model from them
            (the same network the sites build from the recipe).
        train_conf: the job's recipe (the learner's ``train`` block), stored with every global model.
        rounds: federated rounds.
        sites: sites the job needs (``min_clients``).
        algorithm: FedOpt and a privacy filter, or ``None`` for FedAvg (FedProx is the recipe's ``fedprox_mu``).
        resume_from: id of an interrupted run of this job to go on from (:mod:`medflare.workflow`), or ``""``.
        name: the job's name (``meta.json``; the simulator's run folder).
        polling: how often the server and the workflows look for work.
        tracking: where the sites' metrics go besides TensorBoard's event files on the server (which the report
            plots): ``"tensorboard"`` (nowhere else) or ``"mlflow"`` (also an MLflow run per site, through FLARE's
            ``add_experiment_tracking``, in ``mlflow.db`` (SQLite) in the server's job folder).
    """

    def __init__(self, task: TaskSpec, learner: Any, model: ModelSpec, train_conf: Mapping[str, Any], *,
                 rounds: int, sites: int, algorithm: FederatedAlgorithm | None = None, resume_from: str = "",
                 name: str, polling: Polling = Polling(), tracking: str = "tensorboard") -> None:
        if rounds < 1:
            raise UserError(f"rounds must be at least 1, got {rounds}")
        if sites < 1:
            raise UserError(f"sites must be at least 1, got {sites}")
        if resume_from and not is_job_id(resume_from):
            raise UserError(f"resume: {resume_from!r} is not a job id (the id FLARE gave the interrupted job)")
        algorithm = algorithm or FederatedAlgorithm()
        self.rounds = int(rounds)
        job = FedJob(name=name, min_clients=sites)
        self.task, self.sites = task, int(sites)  # read by _add_server before the base class sets them
        self._add_server(job, model, train_conf, algorithm, resume_from, polling)
        self._add_clients(job, learner, algorithm)
        super().__init__(task, job, name=name, sites=sites)
        if tracking not in TRACKING:
            raise UserError(f"tracking {tracking!r}: expected one of {', '.join(TRACKING)}")
        if tracking == "mlflow":
            from nvflare.recipe import add_experiment_tracking

            try:
                add_experiment_tracking(self, "mlflow")
            except ValueError as err:  # FLARE's word for "mlflow is not installed"
                raise UserError(f"--tracking mlflow: {err} (or: pip install 'clara-open[tracking]')") from None

    def _add_server(self, job: FedJob, model: ModelSpec, train_conf: Mapping[str, Any],
                    algorithm: FederatedAlgorithm, resume_from: str, polling: Polling) -> None:
        _add_server_settings(job, polling)
        model_class, model_args = model
        described = {"path": f"{model_class.__module__}.{model_class.__qualname__}", "args": dict(model_args)}
        if algorithm.server_opt:  # the persistor and FedOpt's optimiser share one model component
            job.to_server(_stated(model_class(**model_args), *model_args), id=MODEL_ID)
            generator = _stated(algorithm.shareable_generator(), "source_model", "optimizer_args")
        else:
            generator = FullModelShareableGenerator()
        job.to_server(TrainConfPersistor(model=MODEL_ID if algorithm.server_opt else described,
                                           train_conf=dict(train_conf)), id="persistor")
        job.to_server(generator, id="shareable_generator")
        job.to_server(_stated(InTimeAccumulateWeightedAggregator(
            expected_data_kind="WEIGHT_DIFF" if algorithm.sends_weight_diff else "WEIGHTS"), "expected_data_kind"),
            id="aggregator")
        job.to_server(_stated(IntimeModelSelector(key_metric=self.task.key_metric, weigh_by_local_iter=True),
                              "key_metric"), id="model_selector")
        job.to_server(PTFileModelLocator(pt_persistor_id="persistor"), id="model_locator")
        job.to_server(ValidationJsonGenerator(), id="json_generator")
        job.to_server(TBAnalyticsReceiver(events=["fed.analytix_log_stats"]), id="tb_receiver")
        job.to_server(ResumableScatterAndGather(
            min_clients=self.sites, num_rounds=self.rounds, start_round=0, wait_time_after_min_received=0,
            aggregator_id="aggregator", persistor_id="persistor", shareable_generator_id="shareable_generator",
            train_task_name="train", train_timeout=0, task_check_period=polling.task_check_period,
            resume_from_job=resume_from),
            id="scatter_and_gather")
        job.to_server(CrossSiteModelEval(model_locator_id="model_locator", submit_model_timeout=600,
                                         validation_timeout=6000, task_check_period=polling.task_check_period,
                                         cleanup_models=False), id="cross_site_model_eval")

    @staticmethod
    def _add_clients(job: FedJob, learner: Any, algorithm: FederatedAlgorithm) -> None:
        job.to_clients(LearnerExecutor(learner_id="learner"), tasks=TASKS)
        job.to_clients(learner, id="learner")
        job.to_clients(TBWriter(), id="analytic_sender")
        job.to_clients(ConvertToFedEvent(events_to_convert=["analytix_log_stats"], fed_event_prefix="fed."),
                       id="event_to_fed")
        if algorithm.privacy:
            job.to_clients(_stated(algorithm.privacy_filter(), *algorithm.privacy_settings()),
                           filter_type=FilterType.TASK_RESULT, tasks=["train"])


#: Where an evaluation job carries its checkpoints, inside ``app/custom``.
MODELS_DIR = "models"


class EvaluationRecipe(_TaskJob):
    """Federated evaluation: every checkpoint is sent to every site and scored there as cross-site validation scores
    a model (the task learner's cross-site split and metrics); no training. ``cross_val_results.json`` has the shape
    of a training job's, each checkpoint as ``SRV_<name>``, so ``report`` reads it (and puts it beside a training
    job's rows with ``--add``).

    Args:
        task: the task.
        learner: the sites' learner (its recipe's validation settings score every checkpoint).
        checkpoints: model name -> checkpoint file or MONAI bundle folder this project exported; the files (a
            bundle's weights) travel inside the job (its one app, which FLARE deploys to the server and the sites
            alike; the server's locator reads them).
        sites: sites the job needs.
        name: the job's name.
    """

    def __init__(self, task: TaskSpec, learner: Any, checkpoints: Mapping[str, str | Path], *, sites: int,
                 name: str) -> None:
        if not checkpoints:
            raise UserError("federated evaluation needs at least one checkpoint (NAME=CHECKPOINT)")
        if sites < 1:
            raise UserError(f"sites must be at least 1, got {sites}")
        job = FedJob(name=name, min_clients=sites)
        shipped, prefixes = {}, {}
        for model_name, path in checkpoints.items():
            if not model_name or not all(c.isalnum() or c in "-_." for c in model_name) or model_name[0] == ".":
                raise UserError(f"model name {model_name!r}: use letters, digits, '-', '_' and '.'")
            path = Path(path)
            checkpoint_weights(path)  # a missing, corrupt or weightless file fails here, not at the server
            if path.is_dir():  # a bundle: its weights are MONAI's network, inside the task's model by a prefix
                path, prefixes[model_name] = path / BUNDLE_WEIGHTS, task.bundle_key_prefix
            job.add_file_to_server(str(path), dest_dir=f"{MODELS_DIR}/{model_name}")
            shipped[model_name] = f"{MODELS_DIR}/{model_name}/{path.name}"
        _add_server_settings(job, Polling())
        job.to_server(CheckpointLocator(checkpoints=shipped, key_prefixes=prefixes), id="model_locator")
        job.to_server(ValidationJsonGenerator(), id="json_generator")
        job.to_server(_stated(CrossSiteModelEval(model_locator_id="model_locator", submit_model_task_name="",
                                                 validation_timeout=6000,
                                                 task_check_period=Polling().task_check_period),
                              "submit_model_task_name"), id="cross_site_model_eval")
        job.to_clients(LearnerExecutor(learner_id="learner"), tasks=["validate"])
        job.to_clients(learner, id="learner")
        super().__init__(task, job, name=name, sites=sites)


def _names_job(folder: Path, name: str) -> bool:
    """Whether ``folder`` is a job folder whose ``meta.json`` names job ``name``."""
    try:
        meta = read_json(folder / "meta.json", "job meta.json")
    except UserError:
        return False
    return isinstance(meta, dict) and meta.get("name") == name


#: Modules the shipped packages held before they were laid out by pipeline step, when an export's copy of a package
#: did not list its files yet: an export replaces an older export's copy of them.
FORMER_MODULES = {"metastasis": {"annotations.py", "centres.py", "detection.py", "froc.py", "inference.py",
                                 "patches.py", "slide.py", "stain.py", "synthetic.py", "testset.py", "tissue.py",
                                 "transforms.py"},
                  "brats_fl": {"synthetic.py"}, "medcore": {"random_fields.py"}}
#: What an export marks each shipped package's copy as, listing its files (:func:`medcore.files.mark_output`).
SHIPPED_PACKAGE = "package shipped with a FLARE job"


def _foreign_file(folder: Path, packages: tuple[str, ...]) -> Path | None:
    """The first file in job folder ``folder`` that an export does not write: anything but ``meta.json``, the two
    configurations, modules of ``packages`` in ``app/custom`` (or those an older copy listed as its own, or one of
    the :data:`FORMER_MODULES`), byte-code caches of them, markers, and the job's script. The committed
    ``jobs/<task>`` folders carry no marker: their shape is what makes them replaceable."""
    allowed = {"meta.json", JOB_SCRIPT, OUTPUT_MARKER, "app/config/config_fed_server.json",
               "app/config/config_fed_client.json", "app/custom/README.md"}  # the README: older checkouts'
    sources = {str(p.relative_to(folder)) for p in folder.rglob("*.py")}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() and not path.is_symlink() or str(rel) in allowed or is_byte_code_cache(folder, rel, sources):
            continue
        parts = rel.parts
        if len(parts) > 3 and parts[:3] == ("app", "custom", MODELS_DIR):  # an evaluation job's checkpoints
            continue
        if len(parts) > 3 and parts[:2] == ("app", "custom") and parts[2] in packages:
            inner = Path(*parts[3:])  # a module of the package, or a file an older copy of it listed as its own
            if inner.suffix == ".py" and (package_dir(parts[2]) / inner).is_file() or inner == Path(OUTPUT_MARKER) \
                    or str(inner) in listed_outputs(folder / "app" / "custom" / parts[2]) \
                    or str(inner) in FORMER_MODULES.get(parts[2], ()):
                continue
        return rel
    return None


def export_job(recipe: _TaskJob, out_dir: str | Path) -> Path:
    """Write ``recipe`` as the job folder ``out_dir`` (atomically: a failed export leaves the old folder as it was).

    ``out_dir`` may be missing, empty, or an earlier export of the same job (nothing in it but what an export
    writes, and ``job.py``, which is kept); any other existing path is refused with a
    :class:`~medcore.errors.UserError` naming the file that is not the project's, before anything is written.
    Byte-code caches of the shipped packages are left out.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not out_dir.is_symlink() and _names_job(out_dir, recipe.name):
        foreign = _foreign_file(out_dir, recipe.task.packages)
        if foreign is not None:
            raise UserError(f"{out_dir / foreign}: not written by this project, inside the {JOB_OUTPUT} {out_dir}; "
                            "refusing to replace the folder (move the file away first)")
    else:
        check_replaceable(out_dir, JOB_OUTPUT)
    script = out_dir / JOB_SCRIPT
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with writing_into(out_dir), tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.export-",
                                                            dir=out_dir.parent) as tmp:
        recipe.export(tmp)
        exported = Path(tmp) / recipe.name
        for cache in sorted(exported.rglob("__pycache__"), reverse=True):
            shutil.rmtree(cache)
        for package in recipe.task.packages:  # a later version's export knows the copy's files as the project's
            if (exported / "app" / "custom" / package).is_dir():
                mark_output(exported / "app" / "custom" / package, SHIPPED_PACKAGE, manifest=True)
        with atomic_directory(out_dir) as staged:
            for child in exported.iterdir():  # not the folder itself: FLARE made it private (mkdtemp)
                (shutil.copytree if child.is_dir() else shutil.copy2)(child, staged / child.name)
            if script.is_file():
                shutil.copy2(script, staged / JOB_SCRIPT)
    return out_dir


#: What :func:`run_recipe` marks a simulation workspace as, so that a later run may replace it.
SIMULATION_OUTPUT = "FLARE simulation workspace"
COMPLETED = "FINISHED:COMPLETED"


def poc_env(recipe: _TaskJob, project: str | Path | None = None) -> Any:
    """FLARE's ``PocEnv`` for ``recipe``: the project file's clients and admin (not FLARE's defaults, ``site-N`` and
    ``admin@nvidia.com``), or FLARE's POC project with as many sites as the job."""
    from nvflare.recipe import PocEnv

    if not project:
        return PocEnv(num_clients=recipe.sites)
    from .deploy import read_project

    named = read_project(project)
    if len(named.clients) < recipe.sites or not named.admin:
        raise UserError(f"{project}: the job needs {recipe.sites} site(s) and an admin; the project file names "
                        f"clients {list(named.clients)} and admin {named.admin or 'none'}")
    return PocEnv(num_clients=len(named.clients), clients=list(named.clients), project_conf_path=str(project),
                  username=named.admin)


def run_recipe(recipe: _TaskJob, env: str = "sim", workspace: str | Path = "workspace",
               startup_kit: str | Path | None = None, project: str | Path | None = None,
               timeout: float = 0.0) -> tuple[Path, Path | None]:
    """Run ``recipe`` in FLARE's simulator (``sim``), a POC federation (``poc``) or a provisioned one (``prod``);
    return the folder holding its results (``cross_site_val/cross_val_results.json`` below it) and the folder
    holding the participants' logs (None for ``prod``: they are on the sites' machines).

    Args:
        workspace: ``sim``: the simulator's workspace root; the run folder is ``workspace/<job name>``, which may be
            new or an earlier run's (it is replaced; any other folder is refused before the run).
        startup_kit: ``prod``: the admin's startup kit folder (``nvflare provision`` output).
        project: ``poc``: a project file for ``nvflare poc prepare`` (default: FLARE's, ``site-1``...``site-N``).
        timeout: ``poc``/``prod``: seconds to wait for the job (0: no limit).

    Raises:
        UserError: a bad option, or the job ended otherwise than ``FINISHED:COMPLETED``.
    """
    from nvflare.recipe import ProdEnv, SimEnv

    if env == "sim":
        run_dir = Path(workspace) / recipe.name
        check_replaceable(run_dir, SIMULATION_OUTPUT)
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        mark_output(run_dir, SIMULATION_OUTPUT)
        try:
            recipe.run(SimEnv(num_clients=recipe.sites, workspace_root=str(Path(workspace).resolve())))
        except RuntimeError as err:  # SimEnv's message: the return code and where the logs are
            raise UserError(f"{recipe.name}: the simulation failed ({first_line(err)}): "
                            f"{failure_reasons(run_dir)}") from None
        return run_dir, run_dir
    if env == "poc":
        exec_env = poc_env(recipe, project)
    elif env == "prod":
        if not startup_kit:
            raise UserError("--env prod needs the admin's startup kit (--startup-kit)")
        exec_env = ProdEnv(startup_kit_location=str(startup_kit))
    else:
        raise UserError(f"env {env!r}: expected sim, poc or prod")
    run = recipe.run(exec_env)
    # POC: keep FLARE's POC workspace after the run (clean_up=False): the downloaded results live in it.
    result = run.get_result(timeout=timeout, clean_up=False) if env == "poc" else run.get_result(timeout=timeout)
    if env == "poc":
        from .deploy import wait_for_poc_stop

        for folder in wait_for_poc_stop(exec_env.poc_workspace):
            warnings.warn(f"{folder}: this POC participant is still running after the job; stop it with "
                          f"`nvflare poc stop` (NVFLARE_POC_WORKSPACE={exec_env.poc_workspace})")
    status = run.get_status()
    if status != COMPLETED or not result:
        where = f"; the sites' logs: {exec_env.poc_workspace}/*/prod_00/<site>/log.txt" if env == "poc" else ""
        raise UserError(f"job {run.get_job_id()} ({recipe.name}) ended {status or 'with an unknown status'}, not "
                        f"{COMPLETED}" + (f"; its results: {result}" if result else "") + where)
    return Path(result), Path(exec_env.poc_workspace) if env == "poc" else None
