"""The training recipe: one dataclass whose defaults are Clara's recipe, read from a dict (job configuration,
command line) with a clear error for unknown or malformed keys."""

from __future__ import annotations

import dataclasses

from medcore.errors import SettingError
from medcore.settings import setting
from medcore.training import TrainingSettings, with_default

__all__ = ["TrainConfig", "VAL_WINDOWS"]

#: How validation covers a volume (``TrainConfig.val_window``).
VAL_WINDOWS = ("brain", "sliding")


@dataclasses.dataclass(frozen=True)
class TrainConfig(TrainingSettings):
    """Client-side recipe. Defaults reproduce Clara's (Myronenko 2018 SegResNet on BraTS 2018); the settings every
    task shares (rounds' local epochs, FedProx, AMP, workers, threads, seed, device) are
    :class:`~medcore.training.TrainingSettings`'.

    Attributes:
        crop: random training crop (x, y, z) in voxels; also the sliding-window ROI for validation and inference.
            Each size must be divisible by 8 (SegResNet downsamples three times).
        lr, weight_decay: Adam optimiser settings.
        epochs: epochs of centralised training on the pooled data (``brats-fl train``; Clara's 600 rounds).
        batch_size: crops per training step.
        vae: add the variational auto-encoder regularisation branch of the paper (loss weight ``vae_weight``).
        val_window: how validation and inference cover a volume. ``brain``: one window of ``crop`` voxels
            centred on the brain (the nonzero voxels; BraTS is skull-stripped), nothing predicted outside it, and
            the sliding windows when the brain does not fit in the crop. On a full-size case it is one pass
            instead of 8 and scores the Dice of the sliding windows to within 0.003 per region
            (``benchmarks/results/brats_real_scale.md``). ``sliding``: Clara's sliding windows of ``crop``
            voxels over the whole volume.
        val_overlap, sw_batch_size: sliding-window settings.
        cache_rate: share of decoded, normalised cases kept in memory (1.0: every NIfTI is decoded once per run).
    """

    crop: tuple[int, int, int] = setting((224, 224, 144), above=0)
    lr: float = setting(1e-4, above=0)
    weight_decay: float = setting(1e-5, minimum=0)
    epochs: int = with_default(TrainingSettings, "epochs", 600)
    batch_size: int = setting(1, minimum=1)
    vae: bool = False
    vae_weight: float = setting(0.1, minimum=0)
    val_window: str = setting("brain", check=lambda v: None if v in VAL_WINDOWS else "brain or sliding")
    val_overlap: float = setting(0.5, minimum=0, below=1)
    sw_batch_size: int = setting(1, minimum=1, runtime=True)
    cache_rate: float = setting(1.0, minimum=0, maximum=1, runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(c % 8 for c in self.crop):
            raise SettingError(f"setting crop: each size must be divisible by 8 (SegResNet downsamples three "
                               f"times), got {list(self.crop)}")
