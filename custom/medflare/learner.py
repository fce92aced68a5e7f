"""The FLARE client side both jobs share: a thin :class:`~nvflare.app_common.abstract.learner_spec.Learner` that
turns FLARE tasks into calls of a plain-Python engine.

Why the Learner API (with FLARE's ``LearnerExecutor``) rather than the Client API: these jobs need exactly the four
hooks the Learner API defines and wires into the stock workflows: validation of the received global model before
each round's training (its metric goes into the train result as ``initial_metrics`` for the server's
``IntimeModelSelector``), training, validation of any model for ``CrossSiteModelEval`` (with the model owner in
the header), and ``submit_model`` returning the site's local best model. The Client API would need all of that
re-implemented in a script.

State that must outlive a client process (the simulator without ``-t`` rebuilds the client for every task) lives
on disk in the site's run folder, under ``models/``:

* ``local_best_model.pt``: the site's model after local training that scored best on the site's validation
  split, what the site submits for cross-site validation;
* ``local_state.pt``: optimiser and grad-scaler state, epochs trained, and the best validation score so far.

A subclass builds its model and trainer in :meth:`setup` and says how to train a round and score a split.

Data-parallel sites (the ``processes`` setting, :class:`~medcore.training.TrainingSettings`): the learner's process
is rank 0 and starts the other ranks (:class:`~medcore.distributed.HelperRanks`), each a copy of this learner built
from the same arguments on its shard of the site's data (:attr:`EngineLearner.rank`). Only rank 0 talks to FLARE:
it receives the global model, passes the weights and every step of the task to the others (:meth:`everywhere`),
gathers their scores, keeps the state on disk and sends the result. The others stop with the job (``finalize``).
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.learner_spec import Learner
from nvflare.app_common.app_constant import AppConstants, ModelName, ValidateType

from medcore.device import select_device
from medcore.distributed import HelperRanks, Rank, broadcast_object, broadcast_tensors, current_rank, rank_device, \
    resolve_processes
from medcore.files import atomic_path, load_torch
from medcore.training import EpochStats, EpochTrainer, TrainingSettings

from .task import TaskSpec
from .workflow import FINAL_MODEL_HEADER

__all__ = ["EngineLearner"]

#: Stands for the task's abort signal in a step sent to the other ranks (which are never aborted on their own).
_ABORT = "<abort signal>"


class EngineLearner(Learner):
    """FLARE task handling around an :class:`~medcore.training.EpochTrainer` (set by :meth:`setup`).

    Subclasses define:

    * :attr:`task`: the task (:class:`~medflare.task.TaskSpec`), whose training settings the learner's ``train``
      block is read into (:attr:`config`, stored with the local best model, :meth:`train_config`) and whose key
      metric the server selects the global best model on (:attr:`key_metric`, sent in ``initial_metrics``);
    * :attr:`cross_site_split`: the split other sites' models are scored on in cross-site validation (default:
      ``validation``);
    * ``_always_serialize_args``: the arguments FLARE's job API exports even when they are the defaults (where the
      data are: what a site checks first);
    * :meth:`setup`: read the site's data, then call :meth:`start_engine` with the model and its trainer;
    * :meth:`score_split`: a summary dict of the current model on a split (:meth:`key_score` picks the
      :attr:`key_metric` out of it);
    * :meth:`format_scores`: one log line for such a summary.

    Args:
        train: the site's training settings (the task's :class:`~medcore.training.TrainingSettings` subclass, as a
            mapping; missing keys take its defaults).
        analytic_sender_id: id of the TensorBoard writer component (``TBWriter``), or ``""`` for none.
        resume_from_job: id of an interrupted job whose local state (in this site's workspace) this run takes over,
            or ``""`` (:mod:`medflare.workflow`).
        send_weight_diff: return a round's result as the change from the received global model (``WEIGHT_DIFF``)
            instead of the weights themselves. FedOpt's server optimiser and the privacy filters work on changes;
            the server's aggregator must expect the same kind (:mod:`medflare.algorithms` sets both).
    """

    task: TaskSpec
    cross_site_split = "validation"

    def __init__(self, train: Mapping[str, Any] | None = None, analytic_sender_id: str = "analytic_sender",
                 resume_from_job: str = "", send_weight_diff: bool = False) -> None:
        super().__init__()
        self.config: TrainingSettings = self.task.settings.from_dict(train)
        self._train = self.config.to_dict()  # what FLARE's job API exports as ``train``
        self.analytic_sender_id = analytic_sender_id
        self.resume_from_job = resume_from_job
        self.send_weight_diff = bool(send_weight_diff)
        self.model: torch.nn.Module | None = None
        self.trainer: EpochTrainer | None = None
        self.local_epochs = 1
        self.rank = Rank()  # this process's rank; data-parallel datasets are its shard (Rank.shard)
        self.ranks: HelperRanks | None = None  # on rank 0 of a data-parallel site, the other ranks
        self._ranks_lost: str | None = None  # why the other ranks were ended before the job's end

    @property
    def key_metric(self) -> str:
        """The score the server selects the global best model on (the task's)."""
        return self.task.key_metric

    # -- to implement --------------------------------------------------------------------------------------------
    def setup(self, fl_ctx: FLContext) -> None:
        raise NotImplementedError

    def score_split(self, split: str, abort_signal: Signal) -> dict:
        raise NotImplementedError

    def score_cross_site(self, abort_signal: Signal) -> dict:
        """What cross-site validation reports for a model: by default :meth:`score_split` on
        :attr:`cross_site_split` (a subclass may add metrics too costly for every round's validation, and the
        per-item scores behind the report's intervals, :data:`~medflare.crosssite.ITEMS`)."""
        return self.score_split(self.cross_site_split, abort_signal)

    def key_score(self, summary: dict) -> float:
        """The :attr:`key_metric` value of a :meth:`score_split` summary."""
        return float(summary[self.key_metric])

    def format_scores(self, summary: dict) -> str:
        return f"{self.key_metric} {self.key_score(summary):.4f}"

    def train_config(self) -> dict:
        """The recipe stored with the local best model."""
        return self.config.to_dict()

    def start_engine(self, build_model: Callable[[], torch.nn.Module],
                     trainer: Callable[[torch.nn.Module, Any, torch.device], EpochTrainer]) -> None:
        """Device and CPU threads from ``self.config``, then the model and its trainer (in :meth:`setup`)."""
        self.device = rank_device(select_device(self.config.device), self.rank)
        threads = self.config.num_threads or (max(1, (os.cpu_count() or 1) // self.rank.world)
                                              if self.rank.world > 1 else 0)
        if threads:
            torch.set_num_threads(threads)
        self.model = build_model()
        self.trainer = trainer(self.model, self.config, self.device)
        self.local_epochs = self.config.local_epochs

    def train_epoch(self, abort_signal: Signal) -> EpochStats:
        """One local epoch; the default trains on :meth:`dataset` ``("training")``."""
        return self.trainer.train_epoch(self.dataset("training"), abort=lambda: abort_signal.triggered)

    def dataset(self, split: str) -> Any:
        raise NotImplementedError

    # -- set-up ------------------------------------------------------------------------------------------------
    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        self.site = fl_ctx.get_identity_name()
        job_id = fl_ctx.get_job_id()
        workspace = fl_ctx.get_engine().get_workspace()
        self.state_dir = Path(workspace.get_run_dir(job_id)) / "models"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state_file = self.state_dir / "local_state.pt"
        if self.resume_from_job and not state_file.is_file():
            self._take_over_state(Path(workspace.get_run_dir(self.resume_from_job)) / "models", fl_ctx)
        processes = resolve_processes(self.config.processes or "auto", self.config.device)
        if processes > 1:
            cuda = select_device(self.config.device).type == "cuda"
            self.ranks = HelperRanks(processes, "nccl" if cuda else "gloo", _follow,
                                     (type(self), self._arguments(), self.site, str(self.state_dir)))
            self.log_info(fl_ctx, f"{self.site}: training data-parallel in {processes} processes")
        self.rank = current_rank()
        self.setup(fl_ctx)
        self._load_state(fl_ctx)
        self.writer = parts.get(self.analytic_sender_id) if self.analytic_sender_id else None

    def _arguments(self) -> dict[str, Any]:
        """The arguments this learner was made with (each kept as an attribute ``_name`` or ``name``, the convention
        FLARE's job API exports them by; ``_name`` first: ``train`` is also a method): what the other ranks build
        their copy from."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, "_" + n) if hasattr(self, "_" + n) else getattr(self, n) for n in names}

    def _load_state(self, fl_ctx: FLContext | None) -> None:
        """The local training state a resumed job left (optimiser, epochs trained, best score), if any."""
        self.best_metric = -np.inf
        state_file = self.state_dir / "local_state.pt"
        if state_file.is_file():
            state = load_torch(state_file, "local training state", map_location=self.trainer.device)
            self.trainer.load_state_dict(state["trainer"])
            self.best_metric = float(state["best_metric"])
            self.log_info(fl_ctx, f"resumed local state: {self.trainer.epochs} epochs, best {self.key_metric} "
                                  f"{self.best_metric:.4f}")

    def finalize(self, fl_ctx: FLContext) -> None:
        if self.ranks is not None:  # the job ends: the other ranks stop
            self.ranks.close()
            self.ranks = None

    def everywhere(self, step: str, *args: Any, **kwargs: Any) -> Any:
        """This learner's method ``step(*args, **kwargs)`` on every rank of a data-parallel site (rank 0 sends it to
        the others first; an abort signal among ``args`` reaches them as one of their own), else here alone.
        Returns this rank's result. A rank that fails makes the task fail, naming it."""
        if self._ranks_lost is not None:  # one rank's shard alone would give silently wrong results
            raise RuntimeError(f"{self.site}: {self._ranks_lost}; this job cannot go on at this site")
        if self.ranks is None:
            return getattr(self, step)(*args, **kwargs)
        try:
            broadcast_object((step, [_ABORT if isinstance(a, Signal) else a for a in args], kwargs))
            return getattr(self, step)(*args, **kwargs)
        except Exception as err:
            failed = self.ranks.failed()
            if failed is None:
                raise
            self._end_ranks(f"data-parallel training stopped: {failed}")
            raise RuntimeError(f"{self.site}: data-parallel training stopped: {failed}") from err

    def share_weights(self) -> None:
        """Rank 0's model weights (as just received from FLARE) on every rank."""
        broadcast_tensors(self.model.state_dict().values())

    def set_anchor(self) -> None:
        """The current weights as the FedProx anchor of this round (:meth:`EpochTrainer.set_anchor`)."""
        self.trainer.set_anchor()

    def _take_over_state(self, old_state_dir: Path, fl_ctx: FLContext) -> None:
        """Copy an interrupted run's local state into this run's (the state file last: it marks a complete copy)."""
        if not (old_state_dir / "local_state.pt").is_file():
            self.log_warning(fl_ctx, f"job {self.resume_from_job} left no local state on {self.site} "
                                     f"({old_state_dir / 'local_state.pt'} missing): local training state "
                                     "starts afresh")
            return
        for name in ("local_best_model.pt", "local_state.pt"):
            if (old_state_dir / name).is_file():
                with atomic_path(self.state_dir / name) as tmp:
                    shutil.copyfile(old_state_dir / name, tmp)
        self.log_info(fl_ctx, f"took over the local state of job {self.resume_from_job} from {old_state_dir}")

    # -- weights in and out ------------------------------------------------------------------------------------
    def _load_weights(self, data: Shareable) -> dict[str, np.ndarray]:
        """Load the task's model into ``self.model``; returns its weights as received."""
        dxo = from_shareable(data)
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError(f"expected model weights, got {dxo.data_kind}")
        received = {k: np.asarray(v) for k, v in dxo.data.items()}
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in received.items()}, strict=True)
        return received

    def _weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def _save_state(self) -> None:
        with atomic_path(self.state_dir / "local_state.pt") as tmp:
            torch.save({"trainer": self.trainer.state_dict(), "best_metric": self.best_metric}, tmp)

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    # -- tasks -------------------------------------------------------------------------------------------------
    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        start = time.perf_counter()
        result = self._train_round(data, fl_ctx, abort_signal)
        self._log_timing(fl_ctx, "train", start)
        return result

    def validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        start = time.perf_counter()
        result = self._validate(data, fl_ctx, abort_signal)
        self._log_timing(fl_ctx, data.get_header(AppConstants.VALIDATE_TYPE, "validate"), start)
        return result

    def _log_timing(self, fl_ctx: FLContext, task: str, start: float) -> None:
        # Machine-readable: benchmarks/flare_overhead.py subtracts this local work from the round time.
        self.log_info(fl_ctx, f"{self.site} timing: {task} {time.perf_counter() - start:.3f} s")

    def _train_round(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        received = self._load_weights(data)
        self.everywhere("share_weights")
        self.everywhere("set_anchor")  # FedProx pulls this round's local training towards the global model
        current_round = data.get_header(AppConstants.CURRENT_ROUND, 0)
        total_rounds = data.get_header(AppConstants.NUM_ROUNDS, 0)
        steps = 0
        for _ in range(self.local_epochs):
            stats = self.everywhere("train_epoch", abort_signal)
            if abort_signal.triggered:
                return self._aborted()
            steps += stats.steps
            self.log_scalar("train_loss", stats.loss, self.trainer.epochs)
            self.log_info(fl_ctx, f"round {current_round + 1}/{total_rounds} epoch {self.trainer.epochs}: "
                                  f"loss {stats.loss:.4f}, {stats.steps} steps in {stats.seconds:.1f} s "
                                  f"({100 * stats.data_seconds / max(stats.seconds, 1e-9):.1f}% waiting for data)")
        # Local validation of the locally trained model: it decides the site's local best model.
        summary = self.everywhere("score_split", "validation", abort_signal)
        if abort_signal.triggered:
            return self._aborted()
        score = self.key_score(summary)
        self.log_scalar(f"local_{self.key_metric}", score, self.trainer.epochs)
        self.log_info(fl_ctx, f"round {current_round + 1}: local model on {self.site} validation: "
                              + self.format_scores(summary))
        if score > self.best_metric:
            self.best_metric = score
            with atomic_path(self.state_dir / "local_best_model.pt") as tmp:
                torch.save({"model": self.model.state_dict(), "round": current_round,
                            self.key_metric: score, "train_conf": self.train_config()}, tmp)
            self.log_info(fl_ctx, f"new local best model ({self.key_metric} {self.best_metric:.4f})")
        self._save_state()
        weights, kind = self._weights(), DataKind.WEIGHTS
        if self.send_weight_diff:
            weights, kind = {k: v - received[k].astype(v.dtype) for k, v in weights.items()}, DataKind.WEIGHT_DIFF
        return DXO(data_kind=kind, data=weights, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps}).to_shareable()

    def initial_metrics(self, summary: dict) -> dict[str, float]:
        """What goes to the server with a round's result (``initial_metrics``) and to TensorBoard."""
        return {self.key_metric: self.key_score(summary)}

    def _validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        validate_type = data.get_header(AppConstants.VALIDATE_TYPE)
        owner = data.get_header(AppConstants.MODEL_OWNER, "global model")
        self._load_weights(data)
        self.everywhere("share_weights")
        # The final global model, scored as every other global model is scored for in-time selection (FLARE's
        # LearnerExecutor marks every validate task MODEL_VALIDATE, so the workflow says it in a header of its own).
        if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE or data.get_header(FINAL_MODEL_HEADER):
            summary = self.everywhere("score_split", "validation", abort_signal)
            if abort_signal.triggered:
                return self._aborted()
            current_round = data.get_header(AppConstants.CURRENT_ROUND, 0)
            metrics = self.initial_metrics(summary)
            for name, value in metrics.items():
                self.log_scalar(name, value, current_round)
            which = "final global model" if data.get_header(FINAL_MODEL_HEADER) else \
                f"round {current_round + 1}: global model"
            self.log_info(fl_ctx, f"{which} on {self.site} validation: " + self.format_scores(summary))
            return DXO(data_kind=DataKind.METRICS, data={MetaKey.INITIAL_METRICS: metrics}).to_shareable()
        if validate_type == ValidateType.MODEL_VALIDATE:
            summary = self.everywhere("score_cross_site", abort_signal)
            if abort_signal.triggered:
                return self._aborted()
            self.log_info(fl_ctx, f"model of {owner} on {self.site} {self.cross_site_split}: "
                                  + self.format_scores(summary))
            return DXO(data_kind=DataKind.METRICS, data=summary).to_shareable()
        return make_reply(ReturnCode.VALIDATE_TYPE_UNKNOWN)

    def _aborted(self) -> Shareable:
        """The reply to an aborted task; the other ranks, stopped mid-step, are ended."""
        if self.ranks is not None:
            self._end_ranks("the data-parallel ranks were ended when a task was aborted")
        return make_reply(ReturnCode.TASK_ABORTED)

    def _end_ranks(self, why: str) -> None:
        self.ranks.close(graceful=False)
        self.ranks, self._ranks_lost = None, why

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        path = self.state_dir / "local_best_model.pt"
        if model_name != ModelName.BEST_MODEL or not path.is_file():
            self.log_error(fl_ctx, f"no local best model to submit ({path} missing or model {model_name!r} unknown)")
            return make_reply(ReturnCode.EMPTY_RESULT)
        state = load_torch(path, "local best model")["model"]
        return DXO(data_kind=DataKind.WEIGHTS, data={k: v.numpy() for k, v in state.items()}).to_shareable()


def _follow(kind: type[EngineLearner], arguments: dict[str, Any], site: str, state_dir: str) -> None:
    """A data-parallel site's rank other than 0: a copy of rank 0's learner on this rank's shard of the data, doing
    each step rank 0 sends (:meth:`EngineLearner.everywhere`) until the job ends."""
    learner = kind(**arguments)
    learner.site, learner.state_dir, learner.rank, learner.writer = site, Path(state_dir), current_rank(), None
    learner.setup(None)
    learner._load_state(None)
    while (step := broadcast_object()) is not None:
        name, args, kwargs = step
        getattr(learner, name)(*[Signal() if isinstance(a, str) and a == _ABORT else a for a in args], **kwargs)
