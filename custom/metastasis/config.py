"""The patch classifier's training recipe: one dataclass whose defaults are the seed's, read from a dict (job
configuration, ``--set`` options) with a clear error for unknown keys."""

from __future__ import annotations

import dataclasses

from medcore.settings import Settings

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Recipe of the Clara seed (ResNet18 with a 1x1-convolution head on Camelyon16 patches).

    Attributes:
        patch_size: patch side in level-0 pixels (224, the seed's input), a multiple of 32.
        batch_size: patches per optimiser step.
        lr, weight_decay: Novograd settings (the seed: lr 1e-3).
        epochs: epochs of a standalone run (``metastasis train``); under FLARE the server's rounds count instead.
        local_epochs: epochs per federated round (the seed's single-client job: 1).
        amp: mixed precision (fp16 + grad scaler on CUDA, bf16 autocast on CPU), chosen automatically.
        augment: the seed's training augmentations (colour jitter, flips, 90-degree rotations, zoom, intensity
            scaling); off gives plain patches (for benchmarks).
        threshold: probability at or above which a patch counts as tumour for accuracy.
        num_workers: DataLoader processes reading and augmenting patches (each keeps its own slide handles).
        num_threads: CPU threads for PyTorch; 0 keeps PyTorch's default.
        pretrained: optional local file with ResNet18 weights (torchvision's ImageNet ``resnet18-*.pth`` layout)
            to start from; empty: random initialisation.
        seed: seed for initialisation, shuffling and augmentation.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:n]``.
    """

    patch_size: int = 224
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    local_epochs: int = 1
    amp: bool = True
    augment: bool = True
    threshold: float = 0.5
    num_workers: int = 2
    num_threads: int = 0
    pretrained: str = ""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.patch_size < 32 or self.patch_size % 32:
            raise ValueError(f"patch_size must be a positive multiple of 32, got {self.patch_size}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.local_epochs < 1 \
                or not 0 < self.threshold < 1 or self.num_workers < 0 or self.num_threads < 0:
            raise ValueError(f"invalid training settings: {self}")
