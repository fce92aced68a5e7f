"""Federated algorithms beyond FedAvg: what a job's server optimiser and the sites' privacy filter are.

* **FedProx** (Li et al. 2020) is client-side: the recipe's ``fedprox_mu`` adds ``mu / 2 * ||w - w_global||^2`` to
  the local loss (:class:`medcore.training.EpochTrainer`); nothing changes on the server.
* **FedOpt** (Reddi et al. 2021): the server treats the sites' averaged change as a pseudo-gradient and applies an
  optimiser to the global model: Adam (``adam``, FedAdam) or SGD with momentum (``avgm``, FedAvgM, Hsu et al.
  2019). nvflare's ``PTFedOptModelShareableGenerator`` does the step; the optimiser acts on the trainable
  parameters, buffers (batch-norm statistics) are averaged as in FedAvg.
* **Privacy filters** on the sites' results (nvflare's ``SVTPrivacy``, the sparse vector technique, and
  ``PercentilePrivacy``, Shokri and Shmatikov 2015): each site's update is sparsified, clipped and (SVT) noised
  before it leaves the site. This protects the update a site sends, round by round. It is not sample-level
  differential privacy of the training: no accounting over rounds bounds what a model reveals about one case.

FedOpt and the filters work on changes of the weights, not the weights themselves: the job then
makes the sites send ``WEIGHT_DIFF`` (the learner's ``send_weight_diff``) and the aggregator expect it
(:class:`medflare.recipe.TaskRecipe` builds the job from a :class:`FederatedAlgorithm`).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from typing import Any, Mapping

from medcore.errors import UserError
from medcore.settings import out_of_range


__all__ = ["SERVER_OPTIMIZERS", "PRIVACY_FILTERS", "MODEL_ID", "FederatedAlgorithm", "privacy_filter_class"]

#: Server optimisers for FedOpt: torch optimiser, its default arguments. Adam's betas and epsilon are Reddi et al.'s
#: (beta2 0.99, tau 1e-3 is their adaptivity floor); FedAvgM's momentum and lr are NVFlare's FedOpt example's.
SERVER_OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("torch.optim.Adam", {"lr": 1e-3, "betas": [0.9, 0.99], "eps": 1e-3}),
    "avgm": ("torch.optim.SGD", {"lr": 1.0, "momentum": 0.6}),
}

#: Privacy filters: nvflare class, default arguments. SVT's are those of NVFlare's BraTS 2018 example (fraction 0.9,
#: epsilon 0.001, noise_var 1.0, gamma 1e-4; tau stays nvflare's 1e-6); the percentile filter's are nvflare's.
PRIVACY_FILTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "svt": ("nvflare.app_common.filters.svt_privacy.SVTPrivacy",
            {"fraction": 0.9, "epsilon": 0.001, "noise_var": 1.0, "gamma": 1e-4}),
    "percentile": ("nvflare.app_common.filters.percentile_privacy.PercentilePrivacy",
                   {"percentile": 10, "gamma": 0.01}),
}

#: Ranges of the filters' numeric settings (nvflare's docstrings: a fraction of the entries, privacy budgets and
#: noise that must be positive, a clipping bound gamma > 0, a percentile in 0..100), checked as keyword bounds of
#: :func:`medcore.settings.out_of_range`; a setting not listed is passed on unchecked.
_PRIVACY_RANGES: dict[str, dict[str, dict[str, float]]] = {
    "svt": {"fraction": {"above": 0, "maximum": 1}, "epsilon": {"above": 0}, "noise_var": {"above": 0},
            "gamma": {"above": 0}, "tau": {"minimum": 0}, "epsilon_threshold": {"above": 0},
            "epsilon_query": {"above": 0}, "epsilon_release": {"above": 0}},
    "percentile": {"percentile": {"minimum": 0, "maximum": 100}, "gamma": {"above": 0}},
}

#: Id of the server's model component that the persistor and the FedOpt optimiser share.
MODEL_ID = "model"


def privacy_filter_class(kind: str) -> type:
    """The nvflare filter class of a :data:`PRIVACY_FILTERS` kind."""
    module, _, name = PRIVACY_FILTERS[kind][0].rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class FederatedAlgorithm:
    """The server optimiser and the sites' privacy filter of a job (FedProx lives in the recipe).

    Attributes:
        server_opt: ``""`` (FedAvg: the global model is the sites' weighted average) or a :data:`SERVER_OPTIMIZERS`
            key.
        server_lr, server_momentum: the server optimiser's learning rate and (``avgm``) momentum; ``None`` keeps
            the defaults of :data:`SERVER_OPTIMIZERS`.
        privacy: ``""`` or a :data:`PRIVACY_FILTERS` key.
        privacy_args: the filter's arguments to change (names as in the nvflare class).
    """

    server_opt: str = ""
    server_lr: float | None = None
    server_momentum: float | None = None
    privacy: str = ""
    privacy_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.server_opt and self.server_opt not in SERVER_OPTIMIZERS:
            raise UserError(f"server optimiser {self.server_opt!r}: expected one of {sorted(SERVER_OPTIMIZERS)}")
        if self.server_lr is not None and not self.server_lr > 0:
            raise UserError(f"server learning rate must be > 0, got {self.server_lr}")
        if self.server_momentum is not None and not 0 <= self.server_momentum < 1:
            raise UserError(f"server momentum must be >= 0 and < 1, got {self.server_momentum}")
        if (self.server_lr is not None or self.server_momentum is not None) and not self.server_opt:
            raise UserError("a server learning rate or momentum needs a server optimiser (--server-opt)")
        if self.server_momentum is not None and self.server_opt != "avgm":
            raise UserError(f"server momentum applies to avgm, not {self.server_opt}")
        if self.privacy and self.privacy not in PRIVACY_FILTERS:
            raise UserError(f"privacy filter {self.privacy!r}: expected one of {sorted(PRIVACY_FILTERS)}")
        if self.privacy_args and not self.privacy:
            raise UserError("privacy filter settings need a filter (--privacy)")
        if self.privacy_args:
            accepted = set(inspect.signature(privacy_filter_class(self.privacy).__init__).parameters) - {
                "self", "data_kinds"}
            unknown = sorted(set(self.privacy_args) - accepted)
            if unknown:
                raise UserError(f"privacy filter {self.privacy}: unknown setting(s) {unknown}; known: "
                                f"{sorted(accepted)}")
            for name, value in self.privacy_args.items():
                bounds = _PRIVACY_RANGES[self.privacy].get(name)
                if bounds is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise UserError(f"privacy filter {self.privacy}: setting {name}: expected a number, got {value!r}")
                if (problem := out_of_range(value, **bounds)) is not None:
                    raise UserError(f"privacy filter {self.privacy}: setting {name}: {problem}, got {value!r}")

    @property
    def sends_weight_diff(self) -> bool:
        return bool(self.server_opt or self.privacy)

    def optimizer(self) -> dict[str, Any]:
        """The FedOpt ``optimizer_args`` (``{"path": ..., "args": ..., "config_type": "dict"}``: FLARE's configuration
        reader would build a nested ``path`` entry itself, without the ``params`` the generator adds)."""
        path, defaults = SERVER_OPTIMIZERS[self.server_opt]
        args = dict(defaults)
        if self.server_lr is not None:
            args["lr"] = float(self.server_lr)
        if self.server_momentum is not None:
            args["momentum"] = float(self.server_momentum)
        return {"path": path, "args": args, "config_type": "dict"}

    def shareable_generator(self) -> Any:
        """FedOpt's server step (nvflare's ``PTFedOptModelShareableGenerator``) on the model component
        :data:`MODEL_ID`."""
        from nvflare.app_opt.pt.fedopt import PTFedOptModelShareableGenerator

        return PTFedOptModelShareableGenerator(optimizer_args=self.optimizer(), source_model=MODEL_ID)

    def privacy_settings(self) -> dict[str, Any]:
        """The privacy filter's arguments: its defaults of :data:`PRIVACY_FILTERS`, then :attr:`privacy_args`."""
        return {**PRIVACY_FILTERS[self.privacy][1], **dict(self.privacy_args)}

    def privacy_filter(self) -> Any:
        """The sites' privacy filter (an nvflare ``Filter``) with :meth:`privacy_settings`."""
        return privacy_filter_class(self.privacy)(**self.privacy_settings())
