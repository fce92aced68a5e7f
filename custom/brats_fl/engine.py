"""Training and evaluation as plain Python (no FLARE): the learner, the ``train``, ``validate`` and ``infer`` commands
and the benchmarks all call these."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.transforms import Compose
from torch.utils.data import DataLoader

from medcore.device import autocast, select_device
from medcore.distributed import all_gather_shards, current_rank, rank_device
from medcore.errors import UserError, user_error_in, user_errors_unwrapped
from medcore.progress import Progress
from medcore.provenance import digest
from medcore.standalone import fit, save_checkpoint
from medcore.training import EpochStats, EpochTrainer

from .config import TrainConfig
from .datalist import SPLITS, read_datalist
from .metrics import REGIONS, region_scores
from .model import BratsSegResNet
from .transforms import (LoadCased, brain_box, compact_transforms, eval_transforms, frame_window,
                         restore_transforms, train_transforms)

__all__ = ["EpochStats", "Trainer", "train_dataset", "eval_dataset", "read_ahead", "predict_regions", "evaluate",
           "summarize", "pooled_splits", "train"]

logger = logging.getLogger(__name__)


def train_dataset(entries: Sequence[dict], config: TrainConfig) -> CacheDataset:
    """Training cases cached in compact form (decoded once per run, about 27 MB per full-size case, see
    :mod:`brats_fl.transforms`), a random crop of ``config.crop`` and the augmentations made per sample."""
    transform = train_transforms(config.crop)
    transform.set_random_state(seed=config.seed)
    return _cached(entries, transform, config.cache_rate)


def eval_dataset(entries: Sequence[dict], cache_rate: float = 1.0, cached: bool = True) -> Dataset:
    """Whole labelled volumes for validation.

    ``cached``: the cases are kept in compact form (decoded once, for the validation every round) and each whole
    volume is rebuilt when read; otherwise nothing is kept and cases stream from disk (:func:`read_ahead`
    overlaps the reading with the work), so memory does not grow with the number of cases.
    """
    if not cached:
        return Dataset(list(entries), transform=eval_transforms())
    return Dataset(_cached(entries, Compose(compact_transforms()), cache_rate), transform=restore_transforms())


class _Failed:
    """What a reader process returns for an item whose input was the user's error (sent back, then raised)."""

    def __init__(self, error: UserError) -> None:
        self.error = error


class _Carrying(torch.utils.data.Dataset):
    """``dataset`` whose user errors (a NaN in a file, a foreign label) come back as :class:`_Failed` items: a
    loader's worker would otherwise hand the main process its error as a traceback in a ``RuntimeError``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except Exception as err:
            found = user_error_in(err)
            if found is None:
                raise
            return _Failed(found)


class read_ahead:
    """``dataset``'s items in order, each read by a worker process while the one before is worked on (one item
    ahead, so memory stays at about two items); a user error raised reading an item is raised as itself. torch's
    loader, not MONAI's: items go through uncollated."""

    def __init__(self, dataset: Dataset) -> None:
        self.loader = DataLoader(_Carrying(dataset), batch_size=None, shuffle=False, num_workers=1, prefetch_factor=1,
                                 persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for item in self.loader:
            if isinstance(item, _Failed):
                raise item.error
            yield item


def _cached(entries: Sequence[dict], transform, cache_rate: float) -> CacheDataset:
    """A cache of ``entries``' deterministic prefix, filled now: each case decoded once, its values checked as it
    is (:class:`~brats_fl.transforms.LoadCased`). The cases a ``cache_rate`` below 1 leaves out are decoded anew
    every epoch, in the loader's worker processes: their values are checked here, up front, instead."""
    # One caching thread: MONAI's NibabelReader keeps the file names of its last read on the instance, so
    # threads sharing one LoadImaged mix cases up (seen as a 1-channel image when a label read interleaves).
    # No copy of a cached case per access (copy_cache=False): what follows the cached prefix, the crop or the
    # restore, builds new tensors and never writes into the cached ones.
    entries = list(entries)
    with user_errors_unwrapped():
        cache = CacheDataset(entries, transform=transform, cache_rate=cache_rate, num_workers=1, progress=False,
                             copy_cache=False)
        for entry in entries[cache.cache_num:]:
            LoadCased(["image", "label"] if "label" in entry else ["image"])(entry)
    return cache


class Trainer(EpochTrainer):
    """Adam + Dice loss (on sigmoid outputs) with automatic mixed precision, one epoch at a time.

    The loss is MONAI's ``DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0, smooth_dr=1e-5)`` over the TC, WT
    and ET channels (Clara's loss), plus ``vae_weight`` times the VAE loss when the model has that branch.
    """

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: torch.device | None = None) -> None:
        device = device or select_device(config.device)
        super().__init__(model, torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
                         device, amp=config.amp, batch_size=config.batch_size, num_workers=config.num_workers,
                         seed=config.seed, proximal_mu=config.fedprox_mu)
        self.config = config
        self.loss_fn = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        image = batch["image"].to(self.device)
        label = batch["label"].to(self.device)
        loss = self.loss_fn(self.network(image).float(), label)
        vae_loss = getattr(self.model, "vae_loss", None)
        if vae_loss is not None:
            loss = loss + self.config.vae_weight * vae_loss.float()
        return loss, image.shape[0]


@torch.no_grad()
def predict_regions(model: torch.nn.Module, image: torch.Tensor, config: TrainConfig,
                    device: torch.device) -> np.ndarray:
    """Prediction of one volume: image (4, X, Y, Z) -> boolean (3, X, Y, Z) TC, WT, ET masks (sigmoid > 0.5).

    ``config.val_window`` ``brain``: one window of ``config.crop`` voxels centred on the brain's bounding box
    (zero beyond the volume), nothing predicted outside it; when the brain does not fit in the crop, and for
    ``sliding``: windows of ``config.crop`` voxels over the volume overlapping by ``config.val_overlap``
    (Gaussian-free constant blending, as in Clara's).
    """
    model.eval()
    image = torch.as_tensor(image)
    if config.val_window == "brain":
        start, stop = brain_box(image)
        if all(b - a <= c for a, b, c in zip(start, stop, config.crop)):
            corner = [(a + b) // 2 - c // 2 for a, b, c in zip(start, stop, config.crop)]
            window = frame_window(image, (0, 0, 0), corner, config.crop, torch.float32)
            with autocast(device, config.amp):
                logits = model(window[None].to(device))
            return frame_window(_masks(logits), corner, (0, 0, 0), image.shape[1:], torch.bool).numpy()
    with autocast(device, config.amp):
        logits = sliding_window_inference(image[None].to(device), roi_size=config.crop,
                                          sw_batch_size=config.sw_batch_size, predictor=model,
                                          overlap=config.val_overlap)
    return _masks(logits).numpy()


def _masks(logits: torch.Tensor) -> torch.Tensor:
    """Logits (1, 3, ...) -> boolean TC, WT, ET masks (3, ...) on the CPU: sigmoid > 0.5."""
    return (torch.sigmoid(logits.float())[0] > 0.5).cpu()


def evaluate(model: torch.nn.Module, dataset: Iterable[dict], config: TrainConfig, device: torch.device,
             spacing: bool = False, abort: Callable[[], bool] = lambda: False,
             progress_logger: logging.Logger | None = None) -> list[dict]:
    """Per-case scores on labelled volumes: ``{"name", "TC", "WT", "ET", "mean"}`` (+ ``HD95_*`` in mm with
    ``spacing``, using each case's voxel size)."""
    progress = Progress(len(dataset), "cases", progress_logger) if progress_logger and hasattr(dataset, "__len__") \
        else None
    results = []
    if hasattr(dataset, "__len__") and not len(dataset):  # a rank's empty share (MONAI's datasets fail on it)
        return results
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


def pooled_splits(datalists: Sequence[str | Path], root: str | Path, check: bool = True) -> dict[str, list[dict]]:
    """The splits of several site datalists pooled (the data a central server would hold if the sites shared it),
    each case checked; the same case named twice is an error (it would be trained on twice, or tested on after
    training)."""
    pooled: dict[str, list[dict]] = {split: [] for split in SPLITS}
    seen: dict[str, str] = {}
    for datalist in datalists:
        for split, cases in read_datalist(datalist, root, check=check).items():
            for case in cases:
                label = str(Path(case["label"]).resolve())
                if label in seen:
                    raise UserError(f"{datalist}: case {case['name']} ({split}) is also in {seen[label]}; pooled "
                                    "datalists must not share cases")
                seen[label] = f"{datalist} ({split})"
                pooled[split].append(case)
    return pooled


#: What :func:`train` marks its folder as (:mod:`medcore.standalone` lists the files).
TRAINING_OUTPUT = "brats-fl training run"
_HISTORY_FIELDS = ("epoch", "train_loss", "val_dice", *(f"val_dice_{r}" for r in REGIONS), "seconds",
                   "data_wait_percent")


def train(splits: Mapping[str, Sequence[dict]], config: TrainConfig, out_dir: str | Path,
          resume: bool = True) -> dict:
    """Centralised training, the baseline federated results are compared with: ``config.epochs`` epochs over the
    ``training`` cases, the mean Dice over TC, WT and ET on the ``validation`` cases after each deciding the best
    model (:func:`medcore.standalone.fit`: ``best_model.pt``, ``last_model.pt``, ``trainer_state.pt``,
    ``metrics.csv`` / ``.json``, TensorBoard events). The same engine and recipe as a site's training, one epoch
    standing for one federated round. Returns the best epoch's row."""
    if not splits.get("training") or not splits.get("validation"):
        raise UserError("centralised training needs cases in both the training and the validation splits")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    rank = current_rank()  # data-parallel: each rank caches and trains on its share, validates its share
    device = rank_device(select_device(config.device), rank)
    model = BratsSegResNet(vae=config.vae, crop=config.crop, seed=config.seed)
    trainer = Trainer(model, config, device)
    validating = rank.shard(range(len(splits["validation"])))
    training = train_dataset(rank.shard(splits["training"]), config)
    validation = eval_dataset([splits["validation"][i] for i in validating], config.cache_rate)

    def run_epoch() -> dict:
        stats = trainer.train_epoch(training)
        scores = summarize(all_gather_shards(validating, evaluate(model, validation, config, device)))
        return {"epoch": trainer.epochs, "train_loss": stats.loss, "val_dice": scores["mean"],
                **{f"val_dice_{r}": scores[r] for r in REGIONS}, "seconds": stats.seconds,
                "data_wait_percent": 100 * stats.data_seconds / max(stats.seconds, 1e-9)}

    def describe(row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f}, validation mean Dice {row['val_dice']:.4f} ("
                + " ".join(f"{r} {row[f'val_dice_{r}']:.4f}" for r in REGIONS) + f"), {row['seconds']:.1f} s")

    return fit(trainer, config.epochs, run_epoch, out_dir, key="val_dice",
               save_model=lambda path, row: save_checkpoint(path, model, config, epoch=row["epoch"],
                                                            val_dice=row["val_dice"]),
               fields=_HISTORY_FIELDS, output=TRAINING_OUTPUT, scalars=("train_loss", "val_dice"),
               describe=describe, resume=resume,
               made_with={**config.made_with(), "cases": digest({split: sorted(case["name"] for case in cases)
                                                                 for split, cases in splits.items()})})
