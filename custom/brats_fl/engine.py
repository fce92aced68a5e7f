"""Training and evaluation as plain Python (no FLARE): the learner, the ``validate`` and ``infer`` commands and the
benchmarks all call these."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss

from medcore.device import autocast, select_device
from medcore.progress import Progress
from medcore.training import EpochStats, EpochTrainer

from .config import TrainConfig
from .metrics import REGIONS, region_scores
from .transforms import eval_transforms, train_transforms

__all__ = ["EpochStats", "Trainer", "train_dataset", "eval_dataset", "predict_regions", "evaluate", "summarize"]

logger = logging.getLogger(__name__)


def train_dataset(entries: Sequence[dict], config: TrainConfig) -> CacheDataset:
    """Training cases with the deterministic prefix cached in memory (decoded once), random crops per epoch."""
    transform = train_transforms(config.crop)
    transform.set_random_state(seed=config.seed)
    return _cached(entries, transform, config.cache_rate)


def eval_dataset(entries: Sequence[dict], cache_rate: float = 1.0) -> Dataset:
    """Whole labelled volumes for validation (cached like training data)."""
    return _cached(entries, eval_transforms(), cache_rate)


def _cached(entries: Sequence[dict], transform, cache_rate: float) -> CacheDataset:
    # One caching thread: MONAI's NibabelReader keeps the file names of its last read on the instance, so
    # threads sharing one LoadImaged mix cases up (seen as a 1-channel image when a label read interleaves).
    return CacheDataset(list(entries), transform=transform, cache_rate=cache_rate, num_workers=1, progress=False)


class Trainer(EpochTrainer):
    """Adam + Dice loss (on sigmoid outputs) with automatic mixed precision, one epoch at a time.

    The loss is MONAI's ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)`` over the TC, WT
    and ET channels (the seed's loss), plus ``vae_weight`` times the VAE loss when the model has that branch.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: torch.device | None = None) -> None:
        device = device or select_device(config.device)
        super().__init__(model, torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
                         device, amp=config.amp, batch_size=config.batch_size, num_workers=config.num_workers,
                         seed=config.seed)
        self.config = config
        self.loss_fn = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        image = batch["image"].to(self.device)
        label = batch["label"].to(self.device)
        loss = self.loss_fn(self.model(image).float(), label)
        vae_loss = getattr(self.model, "vae_loss", None)
        if vae_loss is not None:
            loss = loss + self.config.vae_weight * vae_loss.float()
        return loss, image.shape[0]


@torch.no_grad()
def predict_regions(model: torch.nn.Module, image: torch.Tensor, config: TrainConfig,
                    device: torch.device) -> np.ndarray:
    """Sliding-window prediction of one volume: image (4, X, Y, Z) -> boolean (3, X, Y, Z) TC, WT, ET masks.

    Windows of ``config.crop`` voxels overlapping by ``config.val_overlap`` (Gaussian-free constant blending, as
    in the seed), sigmoid, threshold 0.5.
    """
    model.eval()
    batch = torch.as_tensor(image)[None].to(device)
    with autocast(device, config.amp):
        logits = sliding_window_inference(batch, roi_size=config.crop, sw_batch_size=config.sw_batch_size,
                                          predictor=model, overlap=config.val_overlap)
    return (torch.sigmoid(logits.float())[0] > 0.5).cpu().numpy()


def evaluate(model: torch.nn.Module, dataset: Iterable[dict], config: TrainConfig, device: torch.device,
             spacing: bool = False, abort: Callable[[], bool] = lambda: False,
             progress_logger: logging.Logger | None = None) -> list[dict]:
    """Per-case scores on labelled volumes: ``{"name", "TC", "WT", "ET", "mean"}`` (+ ``HD95_*`` in mm with
    ``spacing``, using each case's voxel size)."""
    progress = Progress(len(dataset), "cases", progress_logger) if progress_logger and hasattr(dataset, "__len__") \
        else None
    results = []
    for item in dataset:
        if abort():
            break
        pred = predict_regions(model, item["image"], config, device)
        truth = item["label"].numpy().astype(bool) if torch.is_tensor(item["label"]) else item["label"] > 0
        voxel = None
        if spacing:
            affine = np.asarray(item["image"].affine) if hasattr(item["image"], "affine") else np.eye(4)
            voxel = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        scores = region_scores(pred, truth, voxel)
        name = item.get("name", f"case {len(results)}")
        results.append({"name": name, **scores})
        if progress:
            progress.step(f"{name}: " + " ".join(f"{r} {scores[r]:.3f}" for r in REGIONS))
    return results


def summarize(per_case: Sequence[dict]) -> dict[str, float]:
    """Mean of every numeric score over cases, plus ``n_cases``."""
    if not per_case:
        return {"n_cases": 0}
    keys = [k for k, v in per_case[0].items() if isinstance(v, (int, float))]
    summary = {k: float(np.mean([case[k] for case in per_case])) for k in keys}
    summary["n_cases"] = len(per_case)
    return summary
