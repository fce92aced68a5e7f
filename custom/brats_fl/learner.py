"""The BraTS FLARE client component: :class:`~medflare.learner.EngineLearner` (task handling, state on disk, local
best model) around the plain-Python SegResNet engine.

Cross-site validation scores every model on the site's ``testing`` split (Dice and Hausdorff 95 distance per
region); the server selects the global best model on ``val_dice``, the mean Dice over TC, WT and ET of the received
global model on the site's validation split.
"""

from __future__ import annotations

from typing import Any, Mapping

from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from medcore.distributed import all_gather_shards
from medcore.errors import UserError
from medcore.files import resolve_path
from medflare.crosssite import ITEMS, item_lists
from medflare.learner import EngineLearner

from .config import TrainConfig
from .datalist import CLARA_SITES, read_datalist
from .engine import Trainer, eval_dataset, evaluate, summarize, train_dataset
from .metrics import REGIONS
from .model import BratsSegResNet
from .task import TASK

__all__ = ["BratsLearner", "KEY_METRIC"]

#: Name of the validation metric the server's IntimeModelSelector selects on (mean Dice over TC, WT, ET).
KEY_METRIC = TASK.key_metric


class BratsLearner(EngineLearner):
    """Trains and validates Clara's SegResNet on one site's BraTS datalist.

    Args:
        data_root: folder the datalist paths are relative to (environment variables are expanded, so each site can
            point at its own data with ``BRATS_DATA_ROOT``).
        datalist_dir: folder holding the site datalists.
        datalists: site name -> datalist file name; defaults to Clara's (site-1 -> ``..._client_a.json``,
            site-2 -> ``..._client_b.json``).
        train: :class:`~brats_fl.config.TrainConfig` settings; defaults are Clara's recipe.

    The other arguments are :class:`~medflare.learner.EngineLearner`'s.
    """

    task = TASK
    config: TrainConfig
    _always_serialize_args = ("data_root", "datalist_dir")
    cross_site_split = "testing"

    def __init__(self, data_root: str = "$BRATS_DATA_ROOT", datalist_dir: str = "$BRATS_DATA_ROOT/datalists",
                 datalists: Mapping[str, str] | None = None, train: Mapping[str, Any] | None = None,
                 analytic_sender_id: str = "analytic_sender", resume_from_job: str = "",
                 send_weight_diff: bool = False) -> None:
        super().__init__(train, analytic_sender_id, resume_from_job, send_weight_diff)
        self.data_root = data_root
        self.datalist_dir = datalist_dir
        self.datalists = dict(datalists or {s.name: s.datalist for s in CLARA_SITES})

    def setup(self, fl_ctx: FLContext) -> None:
        if self.site not in self.datalists:
            raise UserError(f"no datalist configured for site {self.site!r}; configured: {sorted(self.datalists)}")
        root = resolve_path(self.data_root, "data_root")
        datalist = resolve_path(self.datalist_dir, "datalist_dir") / self.datalists[self.site]
        self.splits = read_datalist(datalist, root, check=True)  # headers now, values where they are decoded
        self.log_info(fl_ctx, f"{self.site}: {datalist} with "
                              + ", ".join(f"{len(v)} {k}" for k, v in self.splits.items()) + f" cases under {root}")
        config = self.config
        self.start_engine(lambda: BratsSegResNet(vae=config.vae, crop=config.crop, seed=config.seed), Trainer)
        self._datasets: dict[str, Any] = {}

    def dataset(self, split: str):
        """The split's cases of this rank (all of them in one process)."""
        if split not in self._datasets:
            entries = self.rank.shard(self.splits[split])
            self._datasets[split] = train_dataset(entries, self.config) if split == "training" else \
                eval_dataset(entries, self.config.cache_rate)
        return self._datasets[split]

    def score_split(self, split: str, abort_signal: Signal, hd95: bool = False, items: bool = False) -> dict:
        per_case = evaluate(self.model, self.dataset(split), self.config, self.device, spacing=hd95,
                            abort=lambda: abort_signal.triggered)
        # Data-parallel: every rank's cases, back in the split's order (the summary does not depend on the ranks).
        per_case = all_gather_shards(self.rank.shard(range(len(self.splits[split]))), per_case)
        return {**summarize(per_case), **({ITEMS: item_lists(per_case)} if items else {})}

    def score_cross_site(self, abort_signal: Signal) -> dict:
        # HD95 (in mm, each case's voxel size) only here: Dice alone decides the best models round by round. The
        # per-case scores go with the means, for the report's intervals (no case names leave the site).
        return self.score_split(self.cross_site_split, abort_signal, hd95=True, items=True)

    def key_score(self, summary: dict) -> float:
        return float(summary["mean"])

    def format_scores(self, summary: dict) -> str:
        text = " ".join(f"{r} {summary[r]:.4f}" for r in REGIONS) + f" mean {summary['mean']:.4f}"
        return text + f" ({summary['n_cases']} cases)"

    def initial_metrics(self, summary: dict) -> dict[str, float]:
        return {KEY_METRIC: summary["mean"], **{f"val_dice_{r}": summary[r] for r in REGIONS}}
