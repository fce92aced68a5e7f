"""MONAI's shape for the project's own random image augmentations: an array transform with ``prob``, and its
dictionary wrapper.

:class:`RandomAugmentation` is the array form (``RandomizableTransform``): ``__call__(image, randomize=True)`` on a
(3, H, W) image in [0, 1], applied with probability ``prob``, its parameters drawn by :meth:`draw` from the
transform's own random state. :class:`RandomAugmentationd` is the dictionary form: one draw per call, applied alike
to every key (an image and its copies stay in register), as MONAI's ``RandScaleIntensityd`` does.

With ``prob`` 1 (every default here) no coin is tossed: a seeded chain draws the same parameters it drew before
these transforms had a ``prob``, so a recipe trains on the same augmented patches as before.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandomAugmentation", "RandomAugmentationd"]


def _toss(transform: RandomizableTransform) -> None:
    """Whether ``transform`` applies this time: a coin of probability ``prob``, not tossed at 1 (see the module
    docstring)."""
    if transform.prob < 1:
        RandomizableTransform.randomize(transform, None)
    else:
        transform._do_transform = True


class RandomAugmentation(RandomizableTransform):
    """A random change of (3, H, W) images in [0, 1], applied with probability ``prob``.

    Subclasses draw their parameters in :meth:`draw` (from ``self.R``) and apply them in :meth:`apply_drawn`;
    ``identity`` (True: the transform is off, e.g. at strength 0) returns images unchanged, as float32 tensors.
    """

    def __init__(self, prob: float = 1.0) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be between 0 and 1, got {prob}")
        RandomizableTransform.__init__(self, prob)

    @property
    def identity(self) -> bool:
        return False

    def draw(self) -> None:
        raise NotImplementedError

    def apply_drawn(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def randomize(self, data: Any = None) -> None:
        _toss(self)
        if self._do_transform:
            self.draw()

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """``image`` changed by a new draw (``randomize``) or by the last one (False: as a dictionary wrapper
        applies one draw to several keys)."""
        if randomize:
            self.randomize()
        x = torch.as_tensor(image).float()
        return x if self.identity or not self._do_transform else self.apply_drawn(x)


class RandomAugmentationd(RandomizableTransform, MapTransform):
    """The dictionary form of a :class:`RandomAugmentation` ``augmentation``: with probability ``prob``, one draw
    of it applied to each of ``keys`` (the wrapped transform's own ``prob`` should stay 1)."""

    def __init__(self, keys, augmentation: RandomAugmentation, prob: float = 1.0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be between 0 and 1, got {prob}")
        RandomizableTransform.__init__(self, prob)
        self.augmentation = augmentation

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> "RandomAugmentationd":
        super().set_random_state(seed, state)
        self.augmentation.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        _toss(self)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize()
        if self._do_transform:
            self.augmentation.randomize()
        for key in self.key_iterator(d):
            d[key] = self.augmentation(d[key], randomize=False) if self._do_transform \
                else torch.as_tensor(d[key]).float()
        return d
