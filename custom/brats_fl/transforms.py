"""MONAI transform chains for training, evaluation and inference, and the compact form cases are cached in.

Each chain works on dictionaries ``{"image": [t1ce, t1, t2, flair paths], "label": seg path}`` and yields
``image`` float32 (4, X, Y, Z) in the files' own voxel order (no reorientation, so predictions map back onto the
input exactly) and ``label`` float32 (3, X, Y, Z) TC, WT, ET masks.

What a cache keeps of a case (the deterministic prefix, :func:`compact_transforms`) is the **compact case**: the
brain's bounding box only (BraTS volumes are skull-stripped, background exactly 0, so the box loses nothing), the
normalised image as float16 and the label as its uint8 BraTS labels (0/1/2/4), plus ``box_start``,
``full_shape`` and ``affine`` to put it back. A full-size case (240x240x155) takes about 27 MB instead of the
about 250 MB of a float32 image and 3-channel float32 label. Samples are made from it per access:
:class:`RandCropFullFramed` cuts the training crop exactly where a random crop of the whole (zero-padded) volume
would, and :class:`RestoreFullFramed` rebuilds the whole volume for validation. float16 rounds the normalised
intensities by at most 1 part in 2048. On data whose background is not exactly 0 (not skull-stripped) the box is
the whole volume: nothing is lost either, the case only takes about 80 MB, and validation's brain window falls
back to sliding windows (:func:`brats_fl.engine.predict_regions`).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from .data import check_image_values, check_label_values

__all__ = ["LoadCased", "brain_box", "frame_window", "compact_transforms", "CropToBraind", "RandCropFullFramed",
           "RestoreFullFramed", "restore_transforms", "train_transforms", "eval_transforms", "infer_transforms",
           "compact_nbytes"]

#: Keys a compact case holds besides ``image`` and ``label``.
BOX_KEYS = ("box_start", "full_shape", "affine")


class LoadCased(mt.MapTransform):
    """Decode a case: ``image`` (the four contrasts' paths) to float32 (4, X, Y, Z) and ``label`` (the
    segmentation's path, when present) to (1, X, Y, Z), with MONAI's ``LoadImaged`` (NibabelReader, channel
    first), and check the decoded values where they are decoded (:func:`~brats_fl.data.check_image_values`,
    :func:`~brats_fl.data.check_label_values`): a NaN or a foreign label is a :class:`~brats_fl.data.CaseError`
    naming its file, and no file is decoded a second time to check it. MONAI wraps what a transform raises; the
    callers unwrap it (:func:`medcore.errors.user_errors_unwrapped`)."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(keys=keys)
        self.load = mt.Compose([mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
                                mt.EnsureChannelFirstd(keys=keys), mt.EnsureTyped(keys="image", dtype=torch.float32)])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        files = {key: data[key] for key in self.keys}
        out = self.load(data)
        image = out["image"].as_tensor() if isinstance(out["image"], MetaTensor) else out["image"]
        for channel, path in enumerate(files["image"]):  # plain tensors: a MetaTensor's ops copy its metadata
            check_image_values(path, image[channel])
        if "label" in files:
            label = out["label"]
            check_label_values(files["label"], label.as_tensor() if isinstance(label, MetaTensor) else label)
        return out


def _load(keys: Sequence[str]) -> list:
    return [LoadCased(keys)]


def _normalise() -> mt.Transform:
    """Zero mean, unit standard deviation over the nonzero (brain) voxels of each channel, Clara's
    preprocessing; background stays 0."""
    return mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)


def brain_box(image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[list[int], list[int]]:
    """``(start, stop)`` per spatial axis of the voxels where any channel of ``image`` (C, X, Y, Z), or of
    ``label``, is nonzero; the whole extent when none is."""
    nonzero = (torch.as_tensor(image) != 0).any(0)
    if label is not None:
        nonzero |= (torch.as_tensor(label) != 0).any(0)
    start, stop = [0, 0, 0], [int(n) for n in nonzero.shape]
    if bool(nonzero.any()):
        for axis in range(3):
            hits = torch.nonzero(nonzero.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
            start[axis], stop[axis] = int(hits[0]), int(hits[-1]) + 1
    return start, stop


class CropToBraind(mt.MapTransform):
    """Crop ``image`` (C, X, Y, Z) and ``label`` (1, X, Y, Z) to the bounding box of the voxels where any channel
    of either is nonzero, as copies (the whole volume is not kept alive), and add ``box_start``
    (3 ints), ``full_shape`` (3 ints) and ``affine`` (4x4 float64) so the box can be put back. A volume with no
    nonzero voxel keeps its whole extent."""

    def __init__(self) -> None:
        super().__init__(keys=["image", "label"], allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d["image"]
        full = tuple(int(n) for n in image.shape[1:])
        start, stop = brain_box(image, d.get("label"))
        box = (slice(None), *(slice(a, b) for a, b in zip(start, stop)))
        affine = np.asarray(image.affine if isinstance(image, MetaTensor) else np.eye(4), dtype=np.float64)
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key])[box].clone()
        d.update(box_start=start, full_shape=list(full), affine=affine)
        return d


def compact_transforms(with_label: bool = True) -> list:
    """The deterministic prefix a cache keeps: load, crop to the brain, normalise, store compactly (see the
    module docstring)."""
    keys = ["image", "label"] if with_label else ["image"]
    chain = _load(keys) + [CropToBraind(), _normalise(), mt.EnsureTyped(keys="image", dtype=torch.float16)]
    if with_label:
        chain.append(mt.EnsureTyped(keys="label", dtype=torch.uint8))
    return chain


def frame_window(array: torch.Tensor, box_start: Sequence[int], window_start: Sequence[int],
                 window_size: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """The part of the frame ``[window_start, window_start + window_size)`` (per spatial axis, in whole-volume
    coordinates, possibly reaching outside the volume) of a volume that is zero except for ``array`` (C, ...)
    placed at ``box_start``: a (C, *window_size) tensor of ``dtype``. With ``box_start`` 0 it cuts a window out of
    a volume; with ``window_start`` 0 and the volume's size it pastes ``array`` back into one."""
    out = torch.zeros((array.shape[0], *window_size), dtype=dtype)
    src, dst = [slice(None)], [slice(None)]
    for box0, size, win0, win in zip(box_start, array.shape[1:], window_start, window_size):
        lo, hi = max(box0, win0), min(box0 + size, win0 + win)
        if hi <= lo:
            return out
        src.append(slice(lo - box0, hi - box0))
        dst.append(slice(lo - win0, hi - win0))
    out[tuple(dst)] = array[tuple(src)].to(dtype)
    return out


def _expand(d: dict, window_start: Sequence[int], window_size: Sequence[int]) -> dict:
    """``d`` with ``image`` (float32) and ``label`` (uint8 BraTS labels) as that window of the whole volume, the
    box keys dropped."""
    out = {k: v for k, v in d.items() if k not in BOX_KEYS}
    out["image"] = frame_window(d["image"], d["box_start"], window_start, window_size, torch.float32)
    if "label" in d:
        out["label"] = frame_window(d["label"], d["box_start"], window_start, window_size, torch.uint8)
    return out


class RandCropFullFramed(mt.Randomizable, mt.MapTransform):
    """A random ``roi`` crop of a compact case, exactly as ``SpatialPadd(roi)`` then
    ``RandSpatialCropd(roi, random_size=False)`` cut it from the whole volume: the volume is zero-padded
    symmetrically up to ``roi`` where smaller, and the crop's corner is uniform over every position."""

    def __init__(self, roi: Sequence[int]) -> None:
        mt.MapTransform.__init__(self, keys=["image", "label"], allow_missing_keys=True)
        self.roi = tuple(int(r) for r in roi)
        self._corner: list[int] = []

    def randomize(self, full_shape: Sequence[int]) -> None:
        self._corner = [int(self.R.randint(0, max(n, r) - r + 1)) for n, r in zip(full_shape, self.roi)]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        full = data["full_shape"]
        self.randomize(full)
        pad_before = [max(r - n, 0) // 2 for n, r in zip(full, self.roi)]
        return _expand(dict(data), [c - p for c, p in zip(self._corner, pad_before)], self.roi)


class RestoreFullFramed(mt.MapTransform):
    """The whole volume of a compact case: ``image`` float32 (C, *full_shape) as a MetaTensor with the case's
    affine (so voxel sizes are known), ``label`` as uint8 BraTS labels."""

    def __init__(self) -> None:
        super().__init__(keys=["image", "label"], allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        out = _expand(dict(data), [0, 0, 0], data["full_shape"])
        out["image"] = MetaTensor(out["image"], affine=torch.as_tensor(data["affine"]))
        return out


def compact_nbytes(case: Mapping) -> int:
    """Bytes of array data a compact case holds (what a cache spends on it)."""
    return sum(v.nbytes for v in case.values() if isinstance(v, (torch.Tensor, np.ndarray)))


def _regions() -> list:
    """BraTS labels -> TC/WT/ET channels as float32 (a bool label breaks ``DiceLoss(squared_pred=True)``)."""
    return [mt.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),
            mt.EnsureTyped(keys="label", dtype=torch.float32)]


def train_transforms(crop: Sequence[int]) -> mt.Compose:
    """Clara's training chain on compact cases: random crop of ``crop`` voxels (volumes smaller than the crop
    zero-padded first), random flip on each axis, random intensity scale and shift of 0.1."""
    keys = ["image", "label"]
    return mt.Compose(compact_transforms() + [RandCropFullFramed(crop)] + _regions() + [
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
    ])


def restore_transforms() -> mt.Compose:
    """Compact case -> whole labelled volume (float32 image, float32 TC/WT/ET label), for validation."""
    return mt.Compose([RestoreFullFramed()] + _regions())


def eval_transforms() -> mt.Compose:
    """Files -> whole labelled volume for validation, through the compact form (so a cached and a streamed
    validation see the same values)."""
    return mt.Compose(compact_transforms() + list(restore_transforms().transforms))


def infer_transforms() -> mt.Compose:
    """Files -> whole normalised float32 image (4, X, Y, Z), for inference."""
    return mt.Compose(_load(["image"]) + [_normalise()])
