"""Training and validation of the patch classifier as plain Python (no FLARE): the ``metastasis train`` command,
the FLARE learner and the benchmarks all call these."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from monai.data import DataLoader
from monai.optimizers import Novograd

from medcore.device import autocast, select_device
from medcore.distributed import all_gather_shards, current_rank, rank_device
from medcore.errors import UserError
from medcore.files import check_replaceable, first_line_is, write_csv
from medcore.provenance import digest
from medcore.standalone import fit, save_checkpoint
from medcore.training import EpochStats, EpochTrainer

from .config import TrainConfig
from .metrics import classification_scores
from .model import PatchClassifier, load_checkpoint
from .data.dataset import PatchDataset
from .data.patch_lists import read_patch_list
from .data.transforms import train_augmentation

__all__ = ["EpochStats", "Trainer", "build_model", "patch_datasets", "predict", "evaluate", "PROBABILITY_COLUMNS",
           "validate_checkpoint", "train"]


def build_model(config: TrainConfig) -> PatchClassifier:
    """The network for ``config``, seeded, with the pretrained backbone when ``config.pretrained`` names one."""
    return PatchClassifier(config.patch_size, seed=config.seed, pretrained=config.pretrained)


def patch_datasets(patches: Mapping, config: TrainConfig) -> dict[str, PatchDataset]:
    """Training (augmented when ``config.augment``) and validation datasets of a patch list (both stain-normalised
    when the recipe says so)."""
    if int(patches.get("patch_size", config.patch_size)) != config.patch_size:
        raise UserError(f"{patches.get('source', 'the patch list')}: the patch list was made for "
                        f"{patches['patch_size']}-pixel patches, the recipe trains on {config.patch_size} "
                        f"(set patch_size={patches['patch_size']})")
    augment = train_augmentation(config.seed, config.hed_jitter, config.stain_variation) if config.augment else None
    normalize = config.stain_normalization == "macenko"
    return {"training": PatchDataset(patches.get("training", []), config.patch_size, augment,
                                     normalize_stains=normalize),
            "validation": PatchDataset(patches.get("validation", []), config.patch_size, normalize_stains=normalize)}


class Trainer(EpochTrainer):
    """Novograd + ``BCEWithLogitsLoss`` on one tumour logit per patch (Clara's recipe), automatic AMP."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, device: torch.device | None = None) -> None:
        device = device or select_device(config.device)
        optimizer = Novograd(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(model, optimizer, device, amp=config.amp, batch_size=config.batch_size,
                         num_workers=config.num_workers, seed=config.seed, proximal_mu=config.fedprox_mu)
        self.config = config
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        image, label = (t.to(self.device) for t in batch)
        return self.loss_fn(self.network(image).flatten(1).float(), label), image.shape[0]


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: PatchDataset, config: TrainConfig, device: torch.device,
            abort: Callable[[], bool] = lambda: False) -> tuple[np.ndarray, np.ndarray]:
    """Tumour probabilities and labels of every patch of ``dataset`` (in order)."""
    model.eval()
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers)
    probabilities, labels = [], []
    for image, label in loader:
        if abort():
            break
        with autocast(device, config.amp):
            logits = model(image.to(device)).flatten(1).float()
        probabilities.append(torch.sigmoid(logits).cpu().numpy().ravel())
        labels.append(label.numpy().ravel())
    if not probabilities:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(probabilities), np.concatenate(labels).astype(int)


def evaluate(model: torch.nn.Module, dataset: PatchDataset, config: TrainConfig, device: torch.device,
             abort: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Patch-level scores (:func:`~metastasis.metrics.classification_scores`) plus the mean BCE ``loss``."""
    return patch_scores(*predict(model, dataset, config, device, abort), config.threshold)


def patch_scores(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    if probabilities.size == 0:
        raise UserError("no validation patches to evaluate")
    scores = classification_scores(probabilities, labels, threshold)
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    scores["loss"] = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return scores


#: Columns of the per-patch CSV of :func:`validate_checkpoint` (also how a re-run recognises its earlier output).
PROBABILITY_COLUMNS = ("image", "y", "x", "label", "probability")


def validate_checkpoint(checkpoint: str | Path, patch_list: str | Path, data_root: str | Path | None, split: str,
                        csv_path: str | Path | None = None, num_workers: int = 2, num_threads: int = 0,
                        device: str = "auto") -> dict[str, float]:
    """Score a checkpoint on one split of a patch list (its recipe's threshold, no augmentation) and return the
    scores; with ``csv_path`` also write each patch's probability (``image, y, x, label, probability``), replacing
    only such a CSV."""
    if csv_path:
        check_replaceable(csv_path, "patch probability CSV", first_line_is(",".join(PROBABILITY_COLUMNS)))
    torch_device = select_device(device)
    model, meta = load_checkpoint(checkpoint, torch_device)
    config = TrainConfig.from_dict({**meta.get("train_conf", {}), "num_workers": num_workers, "augment": False})
    if num_threads:
        torch.set_num_threads(num_threads)
    dataset = patch_datasets(read_patch_list(patch_list, data_root, check=True), config)[split]
    probabilities, labels = predict(model, dataset, config, torch_device)
    if csv_path:
        write_csv(csv_path, ([entry["image"], *entry["location"], entry["label"], f"{p:.6f}"]
                             for entry, p in zip(dataset.entries, probabilities)), header=PROBABILITY_COLUMNS)
    return patch_scores(probabilities, labels, config.threshold)


_HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "val_sensitivity",
                   "val_specificity", "seconds", "patches_per_second", "data_wait_percent")


#: What :func:`train` marks its folder as (:mod:`medcore.standalone` lists the files).
TRAINING_OUTPUT = "metastasis training run"


def train(patches: Mapping, config: TrainConfig, out_dir: str | Path, resume: bool = True) -> dict:
    """Standalone training (:func:`medcore.standalone.fit`): ``config.epochs`` epochs, validation accuracy after
    each deciding the best model; ``best_model.pt``, ``last_model.pt``, ``trainer_state.pt``, ``metrics.csv`` /
    ``.json`` and TensorBoard events in ``out_dir``. Returns the best epoch's row."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if not patches.get("training") or not patches.get("validation"):
        raise UserError(f"{patches.get('source', 'the patch list')}: training needs patches in both 'training' and "
                        "'validation'")
    rank = current_rank()  # data-parallel: each rank trains on its share of the patches and predicts its share
    device = rank_device(select_device(config.device), rank)
    model = build_model(config)
    validating = rank.shard(range(len(patches["validation"])))
    datasets = patch_datasets({**patches, "training": rank.shard(patches["training"]),
                               "validation": [patches["validation"][i] for i in validating]}, config)
    trainer = Trainer(model, config, device)

    def run_epoch() -> dict:
        stats = trainer.train_epoch(datasets["training"])
        predicted = predict(model, datasets["validation"], config, device)
        scores = patch_scores(*(np.array(all_gather_shards(validating, list(values))) for values in predicted),
                              config.threshold)
        return {"epoch": trainer.epochs, "train_loss": stats.loss, "val_loss": scores["loss"],
                "val_accuracy": scores["accuracy"], "val_auc": scores["auc"],
                "val_sensitivity": scores["sensitivity"], "val_specificity": scores["specificity"],
                "seconds": stats.seconds, "patches_per_second": stats.samples / max(stats.seconds, 1e-9),
                "data_wait_percent": 100 * stats.data_seconds / max(stats.seconds, 1e-9)}

    def describe(row: dict) -> str:
        return (f"train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, val accuracy "
                f"{row['val_accuracy']:.4f}, val AUC {row['val_auc']:.4f} ({row['patches_per_second']:.1f} "
                f"patches/s, {row['data_wait_percent']:.1f}% waiting for data)")

    return fit(trainer, config.epochs, run_epoch, out_dir, key="val_accuracy",
               save_model=lambda path, row: save_checkpoint(path, model, config, epoch=row["epoch"],
                                                            val_accuracy=row["val_accuracy"], val_auc=row["val_auc"]),
               fields=_HISTORY_FIELDS, output=TRAINING_OUTPUT,
               scalars=("train_loss", "val_loss", "val_accuracy", "val_auc"), describe=describe, resume=resume,
               made_with={**config.made_with(), "patches": digest(
                   {split: [[Path(p["image"]).name, p["location"], p["label"]] for p in patches.get(split, [])]
                    for split in ("training", "validation")})})
