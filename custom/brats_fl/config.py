"""The training recipe: one dataclass whose defaults are the seed's recipe, read from a dict (job configuration,
command line) with a clear error for unknown or malformed keys."""

from __future__ import annotations

import dataclasses

from medcore.device import check_device_name
from medcore.errors import SettingError
from medcore.settings import MAX_PARALLEL, Settings, setting

__all__ = ["TrainConfig", "VAL_WINDOWS"]

#: How validation covers a volume (``TrainConfig.val_window``).
VAL_WINDOWS = ("brain", "sliding")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
    """Client-side recipe. Defaults reproduce the Clara seed (Myronenko 2018 SegResNet on BraTS 2018).

    Attributes:
        crop: random training crop (x, y, z) in voxels; also the sliding-window ROI for validation and inference.
            Each size must be divisible by 8 (SegResNet downsamples three times).
        lr, weight_decay: Adam optimiser settings.
        local_epochs: passes over the site's training split per federated round.
        epochs: epochs of centralised training on the pooled data (``brats-fl train``; the seed's 600 rounds);
            under FLARE the server's rounds count instead.
        fedprox_mu: FedProx's proximal weight ``mu`` (:class:`~medcore.training.EpochTrainer`): local training
            minimises the loss plus ``mu / 2 * ||w - w_global||^2``; 0 (the default) is plain FedAvg training.
        batch_size: crops per training step.
        vae: add the variational auto-encoder regularisation branch of the paper (loss weight ``vae_weight``).
        amp: mixed precision (fp16 + grad scaler on CUDA, bf16 autocast on CPU), chosen automatically.
        val_window: how validation and inference cover a volume. ``brain``: one window of ``crop`` voxels
            centred on the brain (the nonzero voxels; BraTS is skull-stripped), nothing predicted outside it, and
            the sliding windows when the brain does not fit in the crop. On a full-size case it is one pass
            instead of 8 and scores the Dice of the sliding windows to within 0.003 per region
            (``benchmarks/results/brats_real_scale.md``). ``sliding``: the seed's sliding windows of ``crop``
            voxels over the whole volume.
        val_overlap, sw_batch_size: sliding-window settings.
        cache_rate: share of decoded, normalised cases kept in memory (1.0: every NIfTI is decoded once per run).
        num_workers: DataLoader worker processes for the random augmentation.
        num_threads: CPU threads for this site's PyTorch work; 0 keeps PyTorch's default (all cores). When several
            clients share one machine (the simulator with ``-t``, a POC), give each ``cores / clients``:
            oversubscribed OpenMP threads spin against each other and slow training down by 10x and more.
        seed: seed of the initial weights (in a federation: the first global model, which the server builds) and of
            every epoch's shuffling, crops, augmentations and dropout (:mod:`medcore.seeding`).
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:n]``.
    """

    crop: tuple[int, int, int] = setting((224, 224, 144), above=0)
    lr: float = setting(1e-4, above=0)
    weight_decay: float = setting(1e-5, minimum=0)
    local_epochs: int = setting(1, minimum=1)
    epochs: int = setting(600, minimum=1, runtime=True)
    fedprox_mu: float = setting(0.0, minimum=0)
    batch_size: int = setting(1, minimum=1)
    vae: bool = False
    vae_weight: float = setting(0.1, minimum=0)
    amp: bool = True
    val_window: str = setting("brain", check=lambda v: None if v in VAL_WINDOWS else "brain or sliding")
    val_overlap: float = setting(0.5, minimum=0, below=1)
    sw_batch_size: int = setting(1, minimum=1, runtime=True)
    cache_rate: float = setting(1.0, minimum=0, maximum=1, runtime=True)
    num_workers: int = setting(2, minimum=0, maximum=MAX_PARALLEL, runtime=True)
    num_threads: int = setting(0, minimum=0, maximum=MAX_PARALLEL, runtime=True)
    seed: int = setting(0, minimum=0)
    device: str = setting("auto", check=check_device_name, runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(c % 8 for c in self.crop):
            raise SettingError(f"setting crop: each size must be divisible by 8 (SegResNet downsamples three "
                               f"times), got {list(self.crop)}")
