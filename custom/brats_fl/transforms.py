"""MONAI transform chains for training, evaluation and inference.

Each chain works on dictionaries ``{"image": [t1ce, t1, t2, flair paths], "label": seg path}`` and yields
``image`` float32 (4, X, Y, Z) in the files' own voxel order (no reorientation, so predictions map back onto the
input exactly) and ``label`` float32 (3, X, Y, Z) TC, WT, ET masks. The deterministic prefix (load, convert,
normalise) is what :class:`monai.data.CacheDataset` keeps, so each NIfTI is decoded once per run.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai import transforms as mt

__all__ = ["deterministic_transforms", "train_transforms", "eval_transforms", "infer_transforms"]


def deterministic_transforms(with_label: bool = True) -> list:
    """Load the 4 contrasts as channels (and the label as TC/WT/ET), normalise each channel over the brain.

    Normalisation is zero mean, unit standard deviation over the nonzero (brain) voxels of each channel, the
    seed's preprocessing; background stays 0.
    """
    keys = ["image", "label"] if with_label else ["image"]
    chain = [
        mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.EnsureTyped(keys="image", dtype=torch.float32),
    ]
    if with_label:
        chain += [
            mt.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
            # A bool label breaks DiceLoss(squared_pred=True); float32 it is.
            mt.EnsureTyped(keys="label", dtype=torch.float32),
        ]
    chain.append(mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True))
    return chain


def train_transforms(crop: Sequence[int]) -> mt.Compose:
    """The seed's training chain: random crop of ``crop`` voxels, random flip on each axis, random intensity
    scale and shift of 0.1 (volumes smaller than the crop are zero-padded first)."""
    keys = ["image", "label"]
    return mt.Compose(deterministic_transforms() + [
        mt.SpatialPadd(keys=keys, spatial_size=tuple(crop)),
        mt.RandSpatialCropd(keys=keys, roi_size=tuple(crop), random_size=False),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ])


def eval_transforms() -> mt.Compose:
    """Whole volumes with labels, for validation."""
    return mt.Compose(deterministic_transforms(with_label=True))


def infer_transforms() -> mt.Compose:
    """Whole volumes without labels, for inference."""
    return mt.Compose(deterministic_transforms(with_label=False))
