"""The training recipe: one dataclass whose defaults are the seed's recipe, read from a dict (job configuration,
command line) with a clear error for unknown or malformed keys."""

from __future__ import annotations

import dataclasses

from medcore.settings import Settings

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Client-side recipe. Defaults reproduce the Clara seed (Myronenko 2018 SegResNet on BraTS 2018).

    Attributes:
        crop: random training crop (x, y, z) in voxels; also the sliding-window ROI for validation and inference.
            Each size must be divisible by 8 (SegResNet downsamples three times).
        lr, weight_decay: Adam optimiser settings.
        local_epochs: passes over the site's training split per federated round.
        batch_size: crops per training step.
        vae: add the variational auto-encoder regularisation branch of the paper (loss weight ``vae_weight``).
        amp: mixed precision (fp16 + grad scaler on CUDA, bf16 autocast on CPU), chosen automatically.
        val_overlap, sw_batch_size: sliding-window inference settings for validation and inference.
        cache_rate: share of decoded, normalised cases kept in memory (1.0: every NIfTI is decoded once per run).
        num_workers: DataLoader worker processes for the random augmentation.
        num_threads: CPU threads for this site's PyTorch work; 0 keeps PyTorch's default (all cores). When several
            clients share one machine (the simulator with ``-t``, a POC), give each ``cores / clients``:
            oversubscribed OpenMP threads spin against each other and slow training down by 10x and more.
        seed: seed for the crops and augmentations of this site.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:n]``.
    """

    crop: tuple[int, int, int] = (224, 224, 144)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    local_epochs: int = 1
    batch_size: int = 1
    vae: bool = False
    vae_weight: float = 0.1
    amp: bool = True
    val_overlap: float = 0.5
    sw_batch_size: int = 1
    cache_rate: float = 1.0
    num_workers: int = 2
    num_threads: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        crop = tuple(int(c) for c in self.crop)
        if len(crop) != 3 or any(c <= 0 or c % 8 for c in crop):
            raise ValueError(f"crop must be three positive sizes divisible by 8, got {self.crop}")
        object.__setattr__(self, "crop", crop)
        if self.lr <= 0 or self.local_epochs < 1 or self.batch_size < 1 or not 0 <= self.cache_rate <= 1 \
                or not 0 <= self.val_overlap < 1 or self.num_workers < 0 or self.num_threads < 0:
            raise ValueError(f"invalid training settings: {self}")
