"""Patch transforms: the network input convention and Clara's training augmentations.

Convention: the network takes RGB patches as float tensors (3, H, W), scaled to [0, 1] and then normalised with
the ImageNet mean and standard deviation (so torchvision's ImageNet ResNet18 weights start from the statistics
they were trained on). :func:`to_input` is the one place this happens, for training, validation and inference.

Training augmentations: another centre's staining and white balance (:class:`~metastasis.data.stain.StainVariation`)
and stain jitter in HED colour space (:class:`~metastasis.data.stain.HEDJitter`), for slides from other centres, then
Clara's list: colour jitter, random flips, random 90-degree rotations, random zoom,
random intensity scaling. Spatial and intensity steps are MONAI transforms; the colour jitter (MONAI has none for
RGB) follows torchvision's ``ColorJitter`` definitions for brightness, contrast and saturation, and turns hue by a
rotation in YIQ colour space.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, RandFlip, RandRotate90, RandScaleIntensity, RandZoom

from .augmentation import RandomAugmentation, RandomAugmentationd
from .stain import HEDJitter, StainVariation

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_unit", "normalize", "to_input", "ColorJitter", "ColorJitterd",
           "HEDJitterd", "StainVariationd", "train_augmentation"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# RGB <-> YIQ (NTSC): hue is the angle in the I-Q plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def to_unit(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (N, H, W, 3) -> float32 (3, H, W) or (N, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(rgb) if not isinstance(rgb, torch.Tensor) else rgb)
    if x.shape[-1] != 3 or x.ndim not in (3, 4):
        raise ValueError(f"expected RGB images (..., H, W, 3), got shape {tuple(x.shape)}")
    return x.movedim(-1, -3).float().div_(255.0)


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet channel means and deviations, shaped (3, 1, 1) to broadcast over (..., 3, H, W)."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (..., 3, H, W) -> ImageNet-normalised network input."""
    mean, std = _mean_std(x.device)
    return (x - mean) / std


def to_input(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (N, H, W, 3) -> network input (3, H, W) or (N, 3, H, W), channels last in memory.

    The same values as ``normalize(to_unit(rgb))``, computed in place on the one float32 copy (a whole-slide tile
    of 4000 x 4000 pixels is 190 MB per copy).
    """
    x = to_unit(rgb)
    mean, std = _mean_std(x.device)
    return x.sub_(mean).div_(std)


class ColorJitter(RandomAugmentation):
    """Random brightness, contrast, saturation and hue of a (3, H, W) image in [0, 1] (clipped back into [0, 1]).

    Factors are drawn uniformly: brightness and contrast and saturation in ``[1 - v, 1 + v]``, the hue turn in
    ``[-hue, hue]`` of a full turn. Defaults are Clara's (brightness 64/255, contrast 0.75, saturation 0.25,
    hue 0.04). Applied with probability ``prob`` (:class:`~metastasis.data.augmentation.RandomAugmentation`).
    """

    def __init__(self, brightness: float = 64 / 255, contrast: float = 0.75, saturation: float = 0.25,
                 hue: float = 0.04, prob: float = 1.0) -> None:
        super().__init__(prob)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.factors = (1.0, 1.0, 1.0, 0.0)

    def draw(self) -> None:
        r = self.R.uniform
        self.factors = (r(1 - self.brightness, 1 + self.brightness), r(1 - self.contrast, 1 + self.contrast),
                        r(1 - self.saturation, 1 + self.saturation), r(-self.hue, self.hue))

    def apply_drawn(self, image: torch.Tensor) -> torch.Tensor:
        brightness, contrast, saturation, hue = self.factors
        x = image * brightness
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).clamp(0, 1)
        x = (grey.mean() + contrast * (x.clamp(0, 1) - grey.mean())).clamp(0, 1)
        grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        x = (grey + saturation * (x - grey)).clamp(0, 1)
        if hue:
            angle = 2 * np.pi * hue
            c, s = float(np.cos(angle)), float(np.sin(angle))
            turn = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
            matrix = _YIQ_TO_RGB @ turn @ _RGB_TO_YIQ
            x = torch.einsum("ij,jhw->ihw", matrix, x).clamp(0, 1)
        return x


class ColorJitterd(RandomAugmentationd):
    """Dictionary form of :class:`ColorJitter`: one draw for all ``keys``, with probability ``prob``."""

    def __init__(self, keys, prob: float = 1.0, allow_missing_keys: bool = False, **factors: float) -> None:
        super().__init__(keys, ColorJitter(**factors), prob, allow_missing_keys)


class HEDJitterd(RandomAugmentationd):
    """Dictionary form of :class:`~metastasis.data.stain.HEDJitter`: one draw for all ``keys``, with probability
    ``prob``."""

    def __init__(self, keys, strength: float = 0.05, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, HEDJitter(strength), prob, allow_missing_keys)


class StainVariationd(RandomAugmentationd):
    """Dictionary form of :class:`~metastasis.data.stain.StainVariation`: one draw for all ``keys``, with
    probability ``prob``."""

    def __init__(self, keys, strength: float = 1.0, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, StainVariation(strength), prob, allow_missing_keys)


def train_augmentation(seed: int = 0, hed_jitter: float = 0.0, stain_variation: float = 0.0) -> Compose:
    """The training chain for (3, H, W) float images in [0, 1], before :func:`to_input`'s normalisation: another
    centre's stain and white balance (``stain_variation``: :class:`~metastasis.data.stain.StainVariation`'s strength),
    the stain jitter in HED space (``hed_jitter``: its strength), each left out at 0, then Clara's
    augmentations."""
    chain = Compose([
        *([StainVariation(stain_variation)] if stain_variation else []),
        *([HEDJitter(hed_jitter)] if hed_jitter else []),
        ColorJitter(),
        RandFlip(prob=0.5, spatial_axis=0),
        RandFlip(prob=0.5, spatial_axis=1),
        RandRotate90(prob=0.5, max_k=3),
        RandZoom(prob=0.5, min_zoom=0.9, max_zoom=1.1, keep_size=True, mode="bilinear", padding_mode="reflect"),
        RandScaleIntensity(prob=0.5, factors=0.1),
    ])
    chain.set_random_state(seed=seed)
    return chain
