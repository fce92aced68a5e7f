"""The patches of a patch list (:mod:`~metastasis.data.patch_lists`) as a PyTorch dataset."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import numpy as np
import openslide
import torch

from .slide import Slide, read_rgb
from .stain import StainNormalizer, slide_stain_vectors
from .transforms import normalize, to_unit

__all__ = ["PatchDataset"]


class PatchDataset(torch.utils.data.Dataset):
    """Patches of a patch list as ``(image (3, P, P) float32, label (1,) float32)``.

    Slides are opened lazily and kept open per process (DataLoader workers each keep their own handles, at most
    ``max_open`` of them, least recently used closed first), so a slide is opened once per worker, not per patch.
    The open slides of a process share one decoded-tile cache of ``cache_mb`` MiB (``None``: OpenSlide's own
    32 MiB per slide, which over 64 open slides is 2 GiB per worker; shuffled patches seldom hit a cache anyway).
    ``transform`` maps a [0, 1] (3, P, P) tensor to another (e.g. the training augmentation); the result is
    normalised with :func:`~metastasis.data.transforms.normalize`. With ``normalize_stains``, each patch is first
    Macenko-normalised with its slide's stain vectors (:func:`~metastasis.data.stain.slide_stain_vectors`, estimated
    once per slide and process), as whole-slide inference does.
    """

    def __init__(self, entries: Sequence[Mapping], patch_size: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, max_open: int = 64,
                 cache_mb: int | None = 32, normalize_stains: bool = False) -> None:
        self.entries = list(entries)
        self.normalize_stains = normalize_stains
        self.patch_size = int(patch_size)
        self.transform = transform
        self.max_open = max_open
        self.cache_mb = cache_mb
        self._slides: OrderedDict = OrderedDict()
        self._cache: openslide.OpenSlideCache | None = None
        self._normalizers: dict[str, StainNormalizer] = {}  # a few floats per slide: kept for every slide
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def _slide(self, image: str) -> Slide:
        if self._pid != os.getpid():  # a forked worker must not share its parent's OpenSlide handles
            self._slides, self._cache, self._pid = OrderedDict(), None, os.getpid()
        if self._cache is None and self.cache_mb is not None:
            self._cache = openslide.OpenSlideCache(self.cache_mb * 2 ** 20)
        if image in self._slides:
            self._slides.move_to_end(image)
        else:
            self._slides[image] = Slide(image, self._cache)
            while len(self._slides) > self.max_open:
                self._slides.popitem(last=False)[1].close()
        return self._slides[image]

    def read(self, index: int) -> np.ndarray:
        """The raw uint8 RGB patch (P, P, 3) of entry ``index``."""
        entry = self.entries[index]
        y, x = entry["location"]
        half = self.patch_size // 2
        return read_rgb(self._slide(entry["image"]).handle, (x - half, y - half), 0,
                        (self.patch_size, self.patch_size), entry["image"])

    def normalizer(self, image: str) -> StainNormalizer:
        """The stain normaliser of slide ``image`` (its vectors estimated on first use)."""
        if image not in self._normalizers:
            slide = self._slide(image)
            self._normalizers[image] = StainNormalizer(slide_stain_vectors(slide))
            slide.release_views()  # the overview served the estimate; up to max_open slides stay open
        return self._normalizers[image]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = self.read(index)
        if self.normalize_stains:
            rgb = self.normalizer(self.entries[index]["image"])(rgb)
        image = to_unit(rgb)
        if self.transform is not None:
            image = torch.as_tensor(self.transform(image)).clamp(0, 1)
            image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = torch.tensor([float(self.entries[index]["label"])])
        return normalize(image).contiguous(), label
