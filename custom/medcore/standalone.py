"""Training outside FLARE (``metastasis train``, ``brats-fl train``): epochs with validation after each, the best
model kept, a history users can open, TensorBoard events, and a run that resumes where it stopped.

What a run folder holds (never written over a user's files of these names, :func:`medcore.files.claim_output_dir`):

* ``best_model.pt``: the model of the epoch with the highest validation score (ties: the earlier epoch);
* ``last_model.pt``: the model after the last epoch;
* ``trainer_state.pt``: model, optimiser and scaler state and the history, to resume;
* ``metrics.csv`` / ``metrics.json``: one row per epoch;
* ``tensorboard/``: the rows' scalars as TensorBoard events.

In a data-parallel run (:mod:`medcore.distributed`) every rank runs the epochs and rank 0 alone writes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .distributed import current_rank
from .errors import UserError, first_line
from .files import atomic_path, claim_output_dir, load_torch, mark_output, write_csv, write_json
from .provenance import check_made_with
from .settings import Settings
from .training import EpochTrainer

__all__ = ["RUN_FILES", "save_checkpoint", "fit"]

logger = logging.getLogger(__name__)

#: The files and folders :func:`fit` writes into its run folder.
RUN_FILES = ("best_model.pt", "last_model.pt", "trainer_state.pt", "metrics.csv", "metrics.json", "tensorboard")


def save_checkpoint(path: Path, model: torch.nn.Module, config: Settings, **meta: float | int | str) -> Path:
    """``{"model": state_dict, "train_conf": recipe, **meta}``, written atomically (what ``validate``, ``infer``
    and the report read the recipe back from)."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "train_conf": config.to_dict(), **meta}, tmp)
    return path


def fit(trainer: EpochTrainer, epochs: int, run_epoch: Callable[[], dict], out_dir: str | Path, *, key: str,
        save_model: Callable[[Path, dict], object], fields: Sequence[str], output: str,
        scalars: Sequence[str] = (), describe: Callable[[dict], str] = str, resume: bool = True,
        made_with: Mapping[str, Any] | None = None) -> dict:
    """Run epochs until ``trainer.epochs`` reaches ``epochs``; returns the best epoch's row.

    Args:
        run_epoch: trains one epoch and validates; returns the epoch's row (with ``epoch`` and ``key``).
        key: the row's validation score that decides the best model (higher is better).
        save_model: writes a model file for a row (``best_model.pt`` and ``last_model.pt``), atomically.
        fields: the history's columns (``metrics.csv``).
        output: what the run folder is marked as (:func:`medcore.files.mark_output`).
        scalars: row keys written to TensorBoard (NaN values are left out).
        describe: a row as one log line.
        resume: continue from ``trainer_state.pt`` when the folder holds one (else start afresh).
        made_with: what decides the run's result (the recipe without its runtime settings, the data's
            fingerprint), recorded in the state: a resume that asks for anything else is refused, naming it, rather
            than continuing with a mix (:mod:`medcore.provenance`).
    """
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    rank = current_rank()
    history: list[dict] = []
    state_path = out_dir / "trainer_state.pt"
    if resume and state_path.is_file():
        state = load_torch(state_path, "training state", map_location=trainer.device)
        if made_with is not None:
            check_made_with(state_path, state.get("made_with") if isinstance(state, dict) else None, made_with,
                            "pass --restart to start over with this run's settings, or choose another --out")
        try:
            trainer.model.load_state_dict(state["model"])
            trainer.load_state_dict(state["trainer"])
            history = list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"{state_path}: not a training state of this recipe ({type(err).__name__}: "
                            f"{first_line(err, empty='')}); pass --restart to start over, or "
                            "choose another --out") from None
        logger.info("resumed from %s after epoch %d", state_path, trainer.epochs)
        if rank.main:
            mark_output(out_dir, output)  # a state this recipe loads is this command's own output
    elif rank.main:
        claim_output_dir(out_dir, output, RUN_FILES)
    rank.barrier()  # the folder is claimed before any rank trains
    best = max(history, key=lambda row: row[key], default=None)
    writer = SummaryWriter(str(out_dir / "tensorboard")) if rank.main else None
    try:
        while trainer.epochs < epochs:
            row = run_epoch()  # the same row on every rank: losses averaged, validation gathered
            history.append(row)
            if best is None or row[key] > best[key]:
                best = row
                if rank.main:
                    save_model(out_dir / "best_model.pt", row)
                    logger.info("new best model (%s %.4f)", key, row[key])
            if not rank.main:
                continue
            for name in scalars:
                if not math.isnan(row[name]):
                    writer.add_scalar(name, row[name], row["epoch"])
            logger.info("epoch %d/%d: %s", row["epoch"], epochs, describe(row))
            save_model(out_dir / "last_model.pt", row)
            with atomic_path(state_path) as tmp:
                torch.save({"model": trainer.model.state_dict(), "trainer": trainer.state_dict(),
                            "history": history, **({"made_with": dict(made_with)} if made_with else {})}, tmp)
            write_json(out_dir / "metrics.json", list(history))
            write_csv(out_dir / "metrics.csv", ([r.get(f, "") for f in fields] for r in history), header=fields)
        rank.barrier()  # every file is written when any rank returns
    finally:
        if writer is not None:
            writer.close()
    return dict(best or {})
