"""The FLARE client component: a thin :class:`~nvflare.app_common.abstract.learner_spec.Learner` around the plain
Python engine.

Why the Learner API (with FLARE's ``LearnerExecutor``) rather than the Client API: this job needs exactly the four
hooks the Learner API defines and wires into the stock workflows: validation of the received global model before
each round's training (its metric goes into the train result as ``initial_metrics`` for the server's
``IntimeModelSelector``), training, validation of any model for ``CrossSiteModelEval`` (with the model owner in
the header), and ``submit_model`` returning the site's local best model. The Client API would need all of that
re-implemented in a script.

State that must outlive a client process (the simulator without ``-t`` rebuilds the client for every task) lives
on disk in the site's run folder, under ``models/``:

* ``local_best_model.pt``: the site's model after local training that scored best on the site's validation
  split (mean Dice), as the seed keeps it; what the site submits for cross-site validation;
* ``local_state.pt``: optimiser and grad-scaler state, epochs trained, and the best validation Dice so far.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

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
from medcore.files import atomic_path, write_json

from .config import TrainConfig
from .datalist import SEED_SITES, read_datalist
from .engine import Trainer, eval_dataset, evaluate, summarize, train_dataset
from .metrics import REGIONS
from .model import BratsSegResNet

__all__ = ["BratsLearner", "KEY_METRIC"]

#: Name of the validation metric the server's IntimeModelSelector selects on (mean Dice over TC, WT, ET).
KEY_METRIC = "val_dice"


def _resolve(path: str, what: str) -> Path:
    """Expand ``$VARS`` and ``~``; an unset variable is an error that says which one to set."""
    expanded = os.path.expanduser(os.path.expandvars(path))
    if "$" in expanded:
        raise ValueError(f"{what} {path!r}: environment variable not set (e.g. export BRATS_DATA_ROOT=/data/brats18)")
    return Path(expanded)


class BratsLearner(Learner):
    """Trains and validates the seed's SegResNet on one site's BraTS datalist.

    Args:
        data_root: folder the datalist paths are relative to (environment variables are expanded, so each site can
            point at its own data with ``BRATS_DATA_ROOT``).
        datalist_dir: folder holding the site datalists.
        datalists: site name -> datalist file name; defaults to the seed's (site-1 -> ``..._client_a.json``,
            site-2 -> ``..._client_b.json``).
        train: :class:`~brats_fl.config.TrainConfig` settings; defaults are the seed's recipe.
        analytic_sender_id: id of the TensorBoard writer component (``TBWriter``), or ``""`` for none.
    """

    def __init__(self, data_root: str = "$BRATS_DATA_ROOT", datalist_dir: str = "$BRATS_DATA_ROOT/datalists",
                 datalists: Mapping[str, str] | None = None, train: Mapping[str, Any] | None = None,
                 analytic_sender_id: str = "analytic_sender") -> None:
        super().__init__()
        self.data_root = data_root
        self.datalist_dir = datalist_dir
        self.datalists = dict(datalists or {s.name: s.datalist for s in SEED_SITES})
        self.config = TrainConfig.from_dict(train)
        self.analytic_sender_id = analytic_sender_id

    # -- set-up ------------------------------------------------------------------------------------------------
    def initialize(self, parts: dict, fl_ctx: FLContext) -> None:
        self.site = fl_ctx.get_identity_name()
        if self.site not in self.datalists:
            raise ValueError(f"no datalist configured for site {self.site!r}; configured: {sorted(self.datalists)}")
        root = _resolve(self.data_root, "data_root")
        datalist = _resolve(self.datalist_dir, "datalist_dir") / self.datalists[self.site]
        job_id = fl_ctx.get_job_id()
        self.state_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(job_id)) / "models"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.splits = self._checked_splits(datalist, root)
        self.log_info(fl_ctx, f"{self.site}: {datalist} with "
                              + ", ".join(f"{len(v)} {k}" for k, v in self.splits.items()) + f" cases under {root}")
        self.device = select_device(self.config.device)
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        torch.manual_seed(self.config.seed)
        self.model = BratsSegResNet(vae=self.config.vae, crop=self.config.crop)
        self.trainer = Trainer(self.model, self.config, self.device)
        self.best_metric = -np.inf
        state_file = self.state_dir / "local_state.pt"
        if state_file.is_file():
            state = torch.load(state_file, map_location=self.device, weights_only=True)
            self.trainer.load_state_dict(state["trainer"])
            self.best_metric = float(state["best_metric"])
            self.log_info(fl_ctx, f"resumed local state: {self.trainer.epochs} epochs, best {KEY_METRIC} "
                                  f"{self.best_metric:.4f}")
        self.writer = parts.get(self.analytic_sender_id) if self.analytic_sender_id else None
        self._datasets: dict[str, Any] = {}

    def _checked_splits(self, datalist: Path, root: Path) -> dict:
        """The site's splits, every case checked before any training (a broken datalist never starts a run).

        The full check reads every file; its result is remembered in the run folder with the files' sizes and
        modification times, so a client rebuilt for the next task (simulator without ``-t``) skips it unless a
        file changed.
        """
        record = self.state_dir / "checked_cases.json"
        splits = read_datalist(datalist, root, check=False)
        files = [datalist] + [Path(p) for cases in splits.values() for case in cases
                              for p in (*case["image"], *([case["label"]] if "label" in case else []))]
        signature = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else None for p in files}
        if record.is_file() and json.loads(record.read_text()) == signature:
            return splits
        splits = read_datalist(datalist, root, check=True)
        write_json(record, signature)
        return splits

    def _dataset(self, split: str):
        if split not in self._datasets:
            entries = self.splits[split]
            self._datasets[split] = train_dataset(entries, self.config) if split == "training" else \
                eval_dataset(entries, self.config.cache_rate)
        return self._datasets[split]

    # -- weights in and out ------------------------------------------------------------------------------------
    def _load_weights(self, data: Shareable) -> None:
        dxo = from_shareable(data)
        if dxo.data_kind != DataKind.WEIGHTS:
            raise ValueError(f"expected model weights, got {dxo.data_kind}")
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in dxo.data.items()}
        self.model.load_state_dict(state, strict=True)

    def _weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

    def _save_state(self) -> None:
        with atomic_path(self.state_dir / "local_state.pt") as tmp:
            torch.save({"trainer": self.trainer.state_dict(), "best_metric": self.best_metric}, tmp)

    def _log_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    # -- tasks -------------------------------------------------------------------------------------------------
    def train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        start = time.perf_counter()
        result = self._train(data, fl_ctx, abort_signal)
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

    def _train(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        self._load_weights(data)
        current_round = data.get_header(AppConstants.CURRENT_ROUND, 0)
        total_rounds = data.get_header(AppConstants.NUM_ROUNDS, 0)
        steps = 0
        for _ in range(self.config.local_epochs):
            stats = self.trainer.train_epoch(self._dataset("training"), abort=lambda: abort_signal.triggered)
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            steps += stats.steps
            self._log_scalar("train_loss", stats.loss, self.trainer.epochs)
            self.log_info(fl_ctx, f"round {current_round + 1}/{total_rounds} epoch {self.trainer.epochs}: "
                                  f"loss {stats.loss:.4f}, {stats.steps} steps in {stats.seconds:.1f} s "
                                  f"({100 * stats.data_seconds / max(stats.seconds, 1e-9):.1f}% waiting for data)")
        # Local validation of the locally trained model: it decides the site's local best model.
        summary = self._validate_split("validation", abort_signal)
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self._log_scalar("local_val_dice", summary["mean"], self.trainer.epochs)
        self.log_info(fl_ctx, f"round {current_round + 1}: local model on {self.site} validation: "
                              + self._format(summary))
        if summary["mean"] > self.best_metric:
            self.best_metric = summary["mean"]
            with atomic_path(self.state_dir / "local_best_model.pt") as tmp:
                torch.save({"model": self.model.state_dict(), "round": current_round, KEY_METRIC: summary["mean"],
                            "train_conf": self.config.to_dict()}, tmp)
            self.log_info(fl_ctx, f"new local best model ({KEY_METRIC} {self.best_metric:.4f})")
        self._save_state()
        dxo = DXO(data_kind=DataKind.WEIGHTS, data=self._weights(), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
        return dxo.to_shareable()

    def _validate_split(self, split: str, abort_signal: Signal) -> dict:
        return summarize(evaluate(self.model, self._dataset(split), self.config, self.device,
                                  abort=lambda: abort_signal.triggered))

    @staticmethod
    def _format(summary: dict) -> str:
        return " ".join(f"{r} {summary[r]:.4f}" for r in REGIONS) + f" mean {summary['mean']:.4f}"

    def _validate(self, data: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        validate_type = data.get_header(AppConstants.VALIDATE_TYPE)
        owner = data.get_header(AppConstants.MODEL_OWNER, "global model")
        self._load_weights(data)
        if validate_type == ValidateType.BEFORE_TRAIN_VALIDATE:
            summary = self._validate_split("validation", abort_signal)
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            current_round = data.get_header(AppConstants.CURRENT_ROUND, 0)
            for name in REGIONS:
                self._log_scalar(f"val_dice_{name}", summary[name], current_round)
            self._log_scalar(KEY_METRIC, summary["mean"], current_round)
            self.log_info(fl_ctx, f"round {current_round + 1}: global model on {self.site} validation: "
                                  + self._format(summary))
            metrics = {KEY_METRIC: summary["mean"], **{f"val_dice_{r}": summary[r] for r in REGIONS}}
            return DXO(data_kind=DataKind.METRICS, data={MetaKey.INITIAL_METRICS: metrics}).to_shareable()
        if validate_type == ValidateType.MODEL_VALIDATE:
            summary = self._validate_split("testing", abort_signal)
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            self.log_info(fl_ctx, f"model of {owner} on {self.site} testing ({summary['n_cases']} cases): "
                                  + self._format(summary))
            return DXO(data_kind=DataKind.METRICS, data=summary).to_shareable()
        return make_reply(ReturnCode.VALIDATE_TYPE_UNKNOWN)

    def get_model_for_validation(self, model_name: str, fl_ctx: FLContext) -> Shareable:
        path = self.state_dir / "local_best_model.pt"
        if model_name != ModelName.BEST_MODEL or not path.is_file():
            self.log_error(fl_ctx, f"no local best model to submit ({path} missing or model {model_name!r} unknown)")
            return make_reply(ReturnCode.EMPTY_RESULT)
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        return DXO(data_kind=DataKind.WEIGHTS, data={k: v.numpy() for k, v in state.items()}).to_shareable()
