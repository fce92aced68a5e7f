"""The server's model persistor, storing the job's recipe with every global model it saves.

FLARE's ``PTFileModelPersistor`` writes ``{"model": weights, "train_conf": {"train": {"model": CLASS}}}``: the
global models (``FL_global_model.pt``, ``best_FL_global_model.pt``) do not say how they were trained. Inference needs
that (the patch size, and the stain normalisation the sites applied to every patch), and the sites' local models
carry it already. :class:`TrainConfPersistor` stores the job's ``train`` block (the sites' recipe, written into
both sides' configuration by :class:`medflare.recipe.TaskRecipe`) as the global models' ``train_conf``.
"""

from __future__ import annotations

from typing import Any, Mapping

from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

__all__ = ["TrainConfPersistor"]


class TrainConfPersistor(PTFileModelPersistor):
    """``PTFileModelPersistor`` whose saved models carry ``train_conf`` (the job's recipe).

    Args:
        train_conf: the sites' recipe (the learner's ``train`` block); every other argument is
            ``PTFileModelPersistor``'s.
    """

    def __init__(self, *args: Any, train_conf: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_conf = dict(train_conf or {})  # under its own name: FLARE's job API exports it

    def load_model(self, fl_ctx: FLContext):
        learnable = super().load_model(fl_ctx)
        if self.train_conf and self.persistence_manager is not None:
            # The job's recipe, not whatever a restored checkpoint carried: the global model is trained by it now.
            self.persistence_manager.train_conf = dict(self.train_conf)
        return learnable
