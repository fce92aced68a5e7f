"""Federated evaluation: checkpoints sent to every site and scored there, the data never leaving the sites.

:class:`CheckpointLocator` is the server's model locator of an evaluation job
(:class:`medflare.recipe.EvaluationRecipe`): FLARE's ``CrossSiteModelEval`` sends each checkpoint it names to every
site, each site scores it as cross-site validation scores a model (the task learner's ``validate``: its
cross-site split, e.g. BraTS's testing split with Dice and HD95), and ``cross_val_results.json`` holds the scores
in the shape of a training job's, each checkpoint as ``SRV_<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from medcore.errors import UserError
from medcore.files import load_torch, state_dict_of

__all__ = ["CheckpointLocator", "checkpoint_weights"]


def checkpoint_weights(path: str | Path, key_prefix: str = "") -> dict[str, np.ndarray]:
    """The weights of a checkpoint this project writes (``{"model": state_dict, ...}``), of a bare state dict or of
    a MONAI bundle folder this project exported, as arrays, each name after ``key_prefix``; a
    :class:`~medcore.errors.UserError` naming the file for anything else."""
    if Path(path).is_dir():
        from .bundle import read_bundle

        state = read_bundle(path)[0]
    else:
        state = state_dict_of(load_torch(path, "checkpoint"), path)
    return {key_prefix + str(k): v.detach().cpu().numpy() for k, v in state.items()}


class CheckpointLocator(ModelLocator):
    """The models an evaluation job sends to the sites.

    Args:
        checkpoints: model name -> checkpoint file; a relative path is inside the job's ``app/custom`` (where the
            job puts the files it ships), an absolute one (``$VARS`` expanded) is a file on the server.
        key_prefixes: model name -> what to put before each weight's name (a bundle's network inside the task's
            model, :attr:`medflare.task.TaskSpec.bundle_key_prefix`); none for the others.
    """

    def __init__(self, checkpoints: Mapping[str, str], key_prefixes: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.checkpoints = dict(checkpoints)
        self.key_prefixes = dict(key_prefixes or {})

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return list(self.checkpoints)

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        path = Path(os.path.expandvars(self.checkpoints[model_name]))
        if not path.is_absolute():
            path = Path(fl_ctx.get_engine().get_workspace().get_app_custom_dir(fl_ctx.get_job_id())) / path
        try:
            weights = checkpoint_weights(path, self.key_prefixes.get(model_name, ""))
        except UserError as err:  # the workflow stops the run on a missing model, and says so
            self.log_error(fl_ctx, f"model {model_name!r}: {err}")
            return None
        self.log_info(fl_ctx, f"model {model_name!r}: {path} ({len(weights)} tensors)")
        return DXO(data_kind=DataKind.WEIGHTS, data=weights)
