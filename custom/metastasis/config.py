"""The patch classifier's training recipe: one dataclass whose defaults are Clara's, read from a dict (job
configuration, ``--set`` options) with a clear error for unknown keys."""

from __future__ import annotations

import dataclasses

from medcore.errors import SettingError
from medcore.settings import setting
from medcore.training import TrainingSettings, with_default

__all__ = ["TrainConfig", "DEFAULT_TILE_OUTPUTS", "DEFAULT_TILE_PIXELS", "default_tile_outputs", "STAIN_NORMALIZATIONS"]


#: Values of the recipe's ``stain_normalization``.
STAIN_NORMALIZATIONS = ("none", "macenko")


def _normalization(value: str) -> str | None:
    return None if value in STAIN_NORMALIZATIONS else " or ".join(STAIN_NORMALIZATIONS)


@dataclasses.dataclass(frozen=True)
class TrainConfig(TrainingSettings):
    """Clara's recipe (ResNet18 with a 1x1-convolution head on Camelyon16 patches); the settings every task shares
    (rounds' local epochs, FedProx, AMP, workers, threads, seed, device) are
    :class:`~medcore.training.TrainingSettings`'.

    Attributes:
        patch_size: patch side in level-0 pixels (224, Clara's input), a multiple of 32.
        batch_size: patches per optimiser step.
        lr, weight_decay: Novograd settings (Clara's: lr 1e-3).
        epochs: epochs of a standalone run (``metastasis train``; Clara's 20 rounds).
        augment: Clara's training augmentations (colour jitter, flips, 90-degree rotations, zoom, intensity
            scaling) and the stain augmentations set below; off gives plain patches (for benchmarks).
        hed_jitter: strength of the stain augmentation in HED colour space (:class:`~metastasis.data.stain.HEDJitter`:
            H and E each scaled by up to +-s and, on tissue, shifted by up to +-s optical density; glass and DAB
            untouched; 0.05 is Tellez et al.'s "HED-light", about 1% change on tissue pixels). 0 (off) by default,
            as in Clara's recipe: ``benchmarks/centre_shift.py`` (4 seeds, intervals over the test slides) found 0.05
            below no jitter at both centres on one generated data set and no better on another.
        stain_variation: strength (0 to 1) of another centre's look in training
            (:class:`~metastasis.data.stain.StainVariation`: at 1 each stain's amount scaled by 0.5-2x, its hue tilted,
            the white balance changed by up to 10%; 0: off). Measured in ``benchmarks/centre_shift.py``.
        stain_normalization: ``none``, or ``macenko``: every slide's pixels mapped to a reference H&E stain
            (:class:`~metastasis.data.stain.StainNormalizer`, vectors estimated once per slide), in training and,
            read from the checkpoint, in inference.
        threshold: probability at or above which a patch counts as tumour for accuracy.
        pretrained: optional local file with ResNet18 weights (torchvision's ImageNet ``resnet18-*.pth`` layout)
            to start from; empty: random initialisation.

    The DataLoader workers (``num_workers``) each keep their own slide handles.
    """

    patch_size: int = setting(224, minimum=32)
    batch_size: int = setting(32, minimum=1)
    lr: float = setting(1e-3, above=0)
    weight_decay: float = setting(0.0, minimum=0)
    epochs: int = with_default(TrainingSettings, "epochs", 20)
    augment: bool = True
    hed_jitter: float = setting(0.0, minimum=0, maximum=1)
    stain_variation: float = setting(0.0, minimum=0, maximum=1)
    stain_normalization: str = setting("none", check=_normalization)
    threshold: float = setting(0.5, above=0, below=1)
    pretrained: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_size % 32:
            raise SettingError(f"setting patch_size: must be a positive multiple of 32, got {self.patch_size}")


#: Map pixels per tile side in whole-slide inference's tiled mode at stride 32 with 224-pixel patches. Measured on CPU
#: over a 12k x 16k slide: 64 (2240-pixel tiles) peaked at 1.17 GB, 96 at 1.5 GB for 1% fewer pixels read, 48 reads
#: 4% more.
DEFAULT_TILE_OUTPUTS = 64
#: The level-0 side of that tile. A tile's memory is that of its pixels (the network's activations grow with them),
#: so other strides and patch sizes get as many outputs as fit this side (:func:`default_tile_outputs`): at stride 64,
#: 64 outputs would make 4256-pixel tiles, and the 100k x 200k slide's map peaked at 2.7 GB with them.
DEFAULT_TILE_PIXELS = 224 + 32 * (DEFAULT_TILE_OUTPUTS - 1)


def default_tile_outputs(stride: int, patch_size: int = 224) -> int:
    """Map pixels per tile side whose tile (``patch_size + stride * (n - 1)`` pixels) fits :data:`DEFAULT_TILE_PIXELS`
    (at least 1): 64 at stride 32, 32 at stride 64, with 224-pixel patches."""
    return max(1, 1 + (DEFAULT_TILE_PIXELS - patch_size) // stride)
