"""The training workflow: resuming an interrupted federated run from its last completed round, and the final global
model as a candidate for the best one (:class:`ResumableScatterAndGather`).

FLARE's own mechanism for this (run snapshots) is gone in nvflare 2.9: ``ServerEngine.persist_components`` is a
no-op, and a restarted server does not restore the job that was running (its record just stays ``RUNNING``). What
survives a crash is the run folders on disk. This module makes them enough to go on:

* :class:`ResumableScatterAndGather` (server) is FLARE's ``ScatterAndGather`` that, after every round, writes a
  round checkpoint in its run folder (``round_checkpoint.pt``: the global model, the round, the best global
  validation score so far) in one atomic step. Given ``resume_from_job``, it starts at the round after that job's
  last checkpoint, from its global model, with its best model and best score, and trains up to the same last round.
* :class:`~medflare.learner.EngineLearner` (sites), given the same ``resume_from_job``, takes over the interrupted
  run's local state (optimiser and grad-scaler state, epochs, local best model and score) from the site's run folder
  of that job.

A resumed job is the same job submitted again with ``resume_from_job`` set to the interrupted job's id on both
sides (``--resume-from JOB_ID`` of either tool's ``job`` and ``make-job``, :class:`medflare.recipe.TaskRecipe`), run
by the same server and site workspaces. The resumed run writes round checkpoints of its own, so it can be resumed in
turn.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.controller_spec import Task
from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from medcore.errors import UserError
from medcore.files import atomic_path, load_torch

__all__ = ["CHECKPOINT_NAME", "FINAL_MODEL_HEADER", "RoundCheckpoint", "save_round_checkpoint", "load_round_checkpoint",
           "ResumableScatterAndGather"]

#: File name of the round checkpoint in the server's app folder of a run.
CHECKPOINT_NAME = "round_checkpoint.pt"
#: Header of the ``validate`` task that asks the sites to score the final global model as in-time selection scores
#: every other global model (the key metric on their validation split; :class:`~medflare.learner.EngineLearner`).
FINAL_MODEL_HEADER = "medflare.final_global_model"


@dataclass
class RoundCheckpoint:
    """The server's state after a completed round.

    Attributes:
        round: the last completed round (0-based, as FLARE counts).
        end_round: the round the run stops before (``start_round + num_rounds`` of the controller).
        weights: the global model after that round, name -> array.
        best_metric: the best global validation score so far (``-inf`` if none yet).
        job_id: the run that wrote it.
    """

    round: int
    end_round: int
    weights: dict[str, np.ndarray]
    best_metric: float
    job_id: str


def save_round_checkpoint(path: str | Path, checkpoint: RoundCheckpoint) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (a crash mid-write leaves the previous round's file)."""
    with atomic_path(path) as tmp:
        torch.save({"round": checkpoint.round, "end_round": checkpoint.end_round,
                    "best_metric": float(checkpoint.best_metric), "job_id": checkpoint.job_id,
                    "model": {k: torch.as_tensor(np.asarray(v)) for k, v in checkpoint.weights.items()}}, tmp)
    return Path(path)


def load_round_checkpoint(path: str | Path) -> RoundCheckpoint:
    """Read a round checkpoint, with an error that names the file for a missing or unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no round checkpoint (the run ended before its first round, or was not "
                                "run by this workspace)")
    data = load_torch(path, "round checkpoint", unreadable="not a readable round checkpoint")
    try:
        return RoundCheckpoint(round=int(data["round"]), end_round=int(data["end_round"]),
                               weights={k: v.numpy() for k, v in data["model"].items()},
                               best_metric=float(data["best_metric"]), job_id=str(data["job_id"]))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: not a round checkpoint ({type(err).__name__}: {err})") from err


#: What this module relies on inside nvflare's ``ScatterAndGather`` (2.9), which has no public way to move the first
#: round after start-up or to replace the global model: the attributes its ``__init__`` sets for the round range,
#: the global model and the shareable generator (FedOpt's holds a model of its own). Only the accessor methods below
#: touch them; ``tests/test_resume.py`` checks them against the pinned nvflare, so an upgrade that renames them fails
#: there rather than in a federation.
SCATTER_AND_GATHER_INTERNALS = ("_start_round", "_num_rounds", "_min_clients", "_global_weights", "shareable_gen")


class ResumableScatterAndGather(ScatterAndGather):
    """``ScatterAndGather`` that checkpoints every round, can go on from another run's last checkpoint, and makes the
    last aggregate a candidate for the best global model.

    In-time selection (``IntimeModelSelector``) scores the global model of round r through the sites' validation
    before they train in round r + 1, so the model after the last round was never scored, and a 1-round job had no
    best global model (nvflare issue 790). After the last round this workflow sends the final global model to the
    sites as a ``validate`` task (:data:`FINAL_MODEL_HEADER`), weighs their key metric as the selector weighs it (by
    each site's steps in the last round), and when it beats the selector's best, the selector's best score becomes
    it and the persistor saves the final model as the best one (``GLOBAL_BEST_MODEL_AVAILABLE``).

    Args:
        resume_from_job: id of an interrupted job of the same server workspace to resume, or ``""`` for a fresh
            run. The resumed run starts at the round after the checkpoint's and ends where this job's
            configuration (``start_round + num_rounds``) says.
        model_selector_id: the ``IntimeModelSelector`` whose best score is checkpointed and restored (``""``: none).
        **kwargs: ``ScatterAndGather``'s arguments.
    """

    #: Exported by FLARE's job API even when they are ScatterAndGather's defaults: what a reader of the job looks for.
    _always_serialize_args = ("min_clients", "num_rounds", "resume_from_job")

    def __init__(self, *args, resume_from_job: str = "", model_selector_id: str = "model_selector", **kwargs) -> None:
        # ``*args`` as well: FLARE's job API reads ScatterAndGather's parameters only through a (*args, **kwargs)
        # constructor, and would export none of them otherwise.
        super().__init__(*args, **kwargs)
        self.resume_from_job = resume_from_job
        self.model_selector_id = model_selector_id
        self._site_steps: dict[str, float] = {}  # each site's steps in the latest round: the selector's weights
        self._last_done_round: int | None = None

    # -- the only code that touches ScatterAndGather's internals (SCATTER_AND_GATHER_INTERNALS) ------------------
    def _round_range(self) -> tuple[int, int]:
        """(first round, rounds to run) of this run."""
        return self._start_round, self._num_rounds

    def _set_round_range(self, start: int, count: int) -> None:
        self._start_round, self._num_rounds = start, count

    def _global_model(self):
        return self._global_weights

    def _set_global_model(self, learnable) -> None:
        self._global_weights = learnable

    def _generator(self):
        return self.shareable_gen

    def _sites_needed(self) -> int:
        return self._min_clients

    # ----------------------------------------------------------------------------------------------------------
    def _end_round(self) -> int:
        start, count = self._round_range()
        return start + count

    def _app_dir(self, fl_ctx: FLContext, job_id: str) -> Path:
        return Path(fl_ctx.get_engine().get_workspace().get_app_dir(job_id))

    def _selector(self, fl_ctx: FLContext):
        return fl_ctx.get_engine().get_component(self.model_selector_id) if self.model_selector_id else None

    def start_controller(self, fl_ctx: FLContext) -> None:
        checkpoint = None
        if self.resume_from_job:
            old_dir = self._app_dir(fl_ctx, self.resume_from_job)
            try:
                if not old_dir.is_dir():
                    raise FileNotFoundError(
                        f"{old_dir} missing: a job that ended (e.g. aborted when a site died) has its run folder "
                        "archived in the job store; download it (nvflare job download / download_job_result) and "
                        f"unpack its workspace/ as {old_dir.parent} on the server")
                checkpoint = load_round_checkpoint(old_dir / CHECKPOINT_NAME)
            except (OSError, ValueError) as err:
                self.system_panic(f"cannot resume job {self.resume_from_job}: {err}", fl_ctx)
                return
            end_round = self._end_round()
            self._set_round_range(checkpoint.round + 1, max(end_round - checkpoint.round - 1, 0))
        super().start_controller(fl_ctx)
        if checkpoint is not None:
            self._restore(checkpoint, old_dir, fl_ctx)

    def _restore(self, checkpoint: RoundCheckpoint, old_dir: Path, fl_ctx: FLContext) -> None:
        self._set_global_model(make_model_learnable(checkpoint.weights, {}))
        fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_model(), private=True, sticky=True)
        if self.persistor:
            # The persistor saves the best model from its own copy of the global model: give it the restored one.
            self.persistor.save(self._global_model(), fl_ctx)
            best_name = getattr(self.persistor, "best_global_model_file_name", None)
            if best_name and (old_dir / best_name).is_file():
                with atomic_path(self._app_dir(fl_ctx, fl_ctx.get_job_id()) / best_name) as tmp:
                    shutil.copyfile(old_dir / best_name, tmp)
        server_model = getattr(self._generator(), "model", None)
        if isinstance(server_model, torch.nn.Module):
            # FedOpt steps its own model object from round to round: it must hold the restored global model. Its
            # optimiser state (Adam's moments, momentum) is not checkpointed and starts afresh.
            server_model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in checkpoint.weights.items()})
            self.log_warning(fl_ctx, "the server optimiser's state (moments, momentum) starts afresh on resume")
        selector = self._selector(fl_ctx)
        if selector is not None and hasattr(selector, "best_val_metric"):
            selector.best_val_metric = checkpoint.best_metric
        self.log_info(fl_ctx, f"resuming job {checkpoint.job_id} after its round {checkpoint.round}: rounds "
                              f"{self._round_range()[0]}..{self._end_round() - 1} to go, best global "
                              f"score so far {checkpoint.best_metric:.4f}")

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        super().control_flow(abort_signal, fl_ctx)
        if not abort_signal.triggered and self._last_done_round == self._end_round() - 1:
            self._score_final_model(abort_signal, fl_ctx)

    def _score_final_model(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """The sites score the final global model; it becomes the best one when it beats the best so far."""
        selector = self._selector(fl_ctx)
        if selector is None or not hasattr(selector, "best_val_metric"):
            return
        data = self._generator().learnable_to_shareable(self._global_model(), fl_ctx)
        data.set_header(FINAL_MODEL_HEADER, True)
        data.set_header(AppConstants.CURRENT_ROUND, self._end_round())
        task = Task(name="validate", data=data, props={}, timeout=0)
        self.log_info(fl_ctx, "scoring the final global model at the sites (a candidate for the best one)")
        self.broadcast_and_wait(task=task, fl_ctx=fl_ctx, min_responses=self._sites_needed(),
                                abort_signal=abort_signal)
        weighted, weights = 0.0, 0.0
        for client_task in task.client_tasks:
            name = client_task.client.name
            try:
                metrics = from_shareable(client_task.result).data[MetaKey.INITIAL_METRICS]
                value = float(metrics[selector.key_metric] if isinstance(metrics, dict) else metrics)
            except Exception as err:  # a site without a score is left out, as the selector leaves it out
                self.log_warning(fl_ctx, f"no score of the final global model from {name}: {err}")
                continue
            if math.isfinite(value):
                weight = self._site_steps.get(name, 1.0)
                weighted, weights = weighted + weight * value, weights + weight
        if not weights:
            return
        score = weighted / weights
        best = float(selector.best_val_metric)
        self.log_info(fl_ctx, f"final global model: {selector.key_metric} {score:.4f} (best so far {best:.4f})")
        if score > best:
            selector.best_val_metric = score
            fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, self._global_model(), private=True, sticky=True)
            fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, score, private=True, sticky=False)
            self.fire_event(AppEventType.GLOBAL_BEST_MODEL_AVAILABLE, fl_ctx)
            self._save_checkpoint(fl_ctx, self._end_round() - 1)

    def _save_checkpoint(self, fl_ctx: FLContext, done_round: int) -> None:
        selector = self._selector(fl_ctx)
        best = float(getattr(selector, "best_val_metric", -np.inf)) if selector is not None else -np.inf
        job_id = fl_ctx.get_job_id()
        save_round_checkpoint(self._app_dir(fl_ctx, job_id) / CHECKPOINT_NAME, RoundCheckpoint(
            round=done_round, end_round=self._end_round(), weights=self._global_model()[ModelLearnableKey.WEIGHTS],
            best_metric=best, job_id=job_id))

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.BEFORE_TRAIN_TASK:
            # FLARE puts the rounds of this run in the task; the sites log "round r/total" of the whole training.
            task_data = fl_ctx.get_prop(AppConstants.TRAIN_SHAREABLE)
            if task_data is not None:
                task_data.set_header(AppConstants.NUM_ROUNDS, self._end_round())
        elif event_type == AppEventType.BEFORE_CONTRIBUTION_ACCEPT:
            peer = fl_ctx.get_peer_context()
            try:  # what the selector weighs this site's validation score by (weigh_by_local_iter)
                steps = from_shareable(peer.get_prop(FLContextKey.SHAREABLE)).get_meta_prop(
                    MetaKey.NUM_STEPS_CURRENT_ROUND, 1.0)
                self._site_steps[peer.get_identity_name()] = float(steps)
            except Exception:  # not a DXO: the aggregator rejects it and reports why
                pass
        elif event_type == AppEventType.ROUND_DONE:
            self._last_done_round = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND))
            self._save_checkpoint(fl_ctx, self._last_done_round)
