"""Stain colour: HED augmentation for training and Macenko normalisation for training and inference.

Slides from two hospitals differ in the hue and strength of their haematoxylin (H, nuclei) and eosin (E,
cytoplasm) and in their scanners' colour; a classifier that has seen one centre's colours may fail on the other's.
Two standard answers and a stronger augmentation, all configurable in the recipe
(:class:`~metastasis.config.TrainConfig`) and recorded in the checkpoint so that inference applies what training
applied:

* :class:`HEDJitter` (augmentation): Tellez et al.'s "HED-light" (2018, 2019). The image in the
  haematoxylin-eosin-DAB colour space of Ruifrok & Johnston (2001), with stain amounts in Beer-Lambert optical
  density (``-ln(rgb)``, 0 is glass), each of H and E scaled by a factor in ``[1 - s, 1 + s]`` and, on tissue only,
  shifted by ``[-s, s]``; DAB, which H&E slides do not have, and glass stay as they are. At ``s = 0.05`` a tissue
  pixel changes by about one per cent.
* :class:`StainVariation` (augmentation): in the same space, each stain's amount scaled by up to 2x, its colour
  tilted towards the other's, and the scanner's white balance changed: another centre rather than another batch.
  Both augmentations are one linear stain map (:func:`map_stains`), neither clips negative amounts, so that zero
  strength is the identity.
* :class:`StainNormalizer` (Macenko et al., 2009): every pixel's optical density is deconvolved into H and E
  concentrations with the *slide's* stain vectors, the concentrations scaled so that their 99th percentiles match
  the target's, and recomposed with the target's vectors. The slide's vectors are estimated once
  (:func:`slide_stain_vectors`: MONAI's ``ExtractHEStains`` on 64 windows sampled over the slide's tissue mask at
  level 0, the windows' medians taken), not per patch or tile: all of a slide's tiles then get the same linear map in
  optical density, so tiles join without seams and a training patch looks as it does in the whole-slide map. The
  map is one 3 x 3 matrix per slide.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .augmentation import RandomAugmentation
from .slide import Slide, SlideError, read_rgb
from .tissue import TissueMask, compute_tissue_mask

__all__ = ["RGB_FROM_HED", "map_stains", "tissue_weight", "HEDJitter", "StainVariation", "StainVectors",
           "MACENKO_TARGET", "estimate_stain_vectors", "overview_downsample", "slide_stain_vectors", "StainNormalizer"]

#: Stain optical densities (rows H, E, DAB; columns R, G, B) of Ruifrok & Johnston, as in scikit-image.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Mean optical density (over R, G, B) up to which a pixel is glass and from which it is tissue, for the stain
# jitter's shift (:func:`tissue_weight`).
_GLASS_OD, _TISSUE_OD = 0.1, 0.2

_TLI = 240.0  # transmitted light intensity of Macenko's optical density (MONAI's and HEnorm_python's default)
# Optical density below which a pixel counts as glass (in all three channels). Macenko's 0.15 drops eosin-only
# pixels, which absorb little red (red OD about 0.07 in pale cytoplasm), and then eosin cannot be found; with the
# glass white-balanced to read 240, glass stays well below 0.05.
_BETA = 0.05


def map_stains(image: torch.Tensor, matrix: np.ndarray, offset: np.ndarray | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` (3, H, W) in [0, 1] with its HED stain amounts ``c`` replaced by ``c @ matrix + weight * offset``;
    not clipped.

    ``c`` (rows: pixels; columns: H, E, DAB) are Ruifrok & Johnston's stain amounts in Beer-Lambert optical density,
    ``od = -ln(rgb)`` (0 is white glass; a tissue's haematoxylin spans about 0 to 2, Macenko's 99th percentile
    1.97): ``od = c @ RGB_FROM_HED``. ``offset`` (3,) is in the same units; ``weight`` (H, W) scales it per pixel
    (None: 1 everywhere). One linear map of optical density plus the weighted offset, without clipping negative
    amounts, so the identity matrix with no offset returns the image.
    """
    od_map = _HED_FROM_RGB @ np.asarray(matrix) @ RGB_FROM_HED
    od = -torch.log(image.clamp(min=1e-6))
    od = torch.einsum("ij,ihw->jhw", torch.as_tensor(od_map, dtype=od.dtype), od)
    if offset is not None:
        shift = torch.as_tensor(np.asarray(offset) @ RGB_FROM_HED, dtype=od.dtype).view(3, 1, 1)
        od += shift if weight is None else shift * weight
    return torch.exp(-od)


def tissue_weight(image: torch.Tensor) -> torch.Tensor:
    """(H, W) in [0, 1]: how much each pixel of ``image`` (3, H, W) in [0, 1] is stained tissue rather than glass.

    0 where the mean optical density over R, G and B is at most 0.1 (every glass the generator's centres or
    Camelyon16's scanners show reads brighter than 0.9), 1 from 0.2 on (the palest cytoplasm), linear between, so
    an image changed in proportion to it has no edge at the tissue's border.
    """
    od = -torch.log(image.clamp(min=1e-6)).mean(dim=0)
    return ((od - _GLASS_OD) / (_TISSUE_OD - _GLASS_OD)).clamp(0, 1)


class _StainAugmentation(RandomAugmentation):
    """A random stain change of strength ``strength`` (0: the identity, up to ``maximum``), applied with probability
    ``prob``; ``name`` is what its errors call it."""

    def __init__(self, name: str, strength: float, prob: float, maximum: float = np.inf) -> None:
        if not 0 <= strength <= maximum:
            bounds = f"between 0 and {maximum:g}" if np.isfinite(maximum) else "at least 0"
            raise ValueError(f"{name} strength must be {bounds}, got {strength}")
        super().__init__(prob)
        self.strength = strength

    @property
    def identity(self) -> bool:
        return self.strength == 0


def _he_only(he: np.ndarray) -> np.ndarray:
    """The (3, 3) stain matrix that maps H and E by the (2, 2) ``he`` and leaves DAB as it is: H&E slides have no
    DAB, and what Ruifrok's deconvolution puts there is the residual of the other two."""
    matrix = np.eye(3)
    matrix[:2, :2] = he
    return matrix


class HEDJitter(_StainAugmentation):
    """HED-light stain jitter (Tellez et al. 2018, 2019) of a (3, H, W) RGB image in [0, 1].

    Per image, for haematoxylin and eosin (DAB is left as it is: H&E slides have none), a factor
    ``alpha ~ U(1 - s, 1 + s)`` and a shift ``beta ~ U(-s, s)``; each pixel's stain amount becomes
    ``alpha * c + beta * w``, where ``c`` is in Beer-Lambert optical density (:func:`map_stains`: 0 is glass, a
    tissue's haematoxylin spans about 0 to 2) and ``w`` is the pixel's :func:`tissue_weight` (0 on glass), so glass
    stays glass. ``s = 0.05`` is Tellez's "HED-light": each stain's amount varies by up to 5% and shifts by up to
    0.05 optical density, which dims or brightens a tissue pixel's channels by at most ``1 - exp(-0.05)``, 5%.

    Size in pixels (``benchmarks/stain_augmentation.py``: 16 generated H&E patches of both centres, 224 pixels,
    200 draws): at ``s = 0.05`` the median absolute change per pixel and channel is 0.008 on tissue and 0.0005 on
    glass, on the 0-1 scale (median over draws; 90th percentile 0.016 and 0.003). The jitter as first written
    (shift in scikit-image's units, 13.8 times optical density, on glass and DAB too) changed them by 0.116 and
    0.076.
    Output clipped to [0, 1]; ``s = 0`` returns the image unchanged. Applied with probability ``prob``
    (:class:`~metastasis.data.augmentation.RandomAugmentation`).
    """

    def __init__(self, strength: float = 0.05, prob: float = 1.0) -> None:
        super().__init__("HED jitter", strength, prob)
        self.alpha = np.ones(2)
        self.beta = np.zeros(2)

    def draw(self) -> None:
        s = self.strength
        self.alpha = self.R.uniform(1 - s, 1 + s, 2)
        self.beta = self.R.uniform(-s, s, 2)

    def apply_drawn(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.alpha, self.beta)

    @staticmethod
    def apply(image: torch.Tensor, alpha: np.ndarray, beta: np.ndarray) -> torch.Tensor:
        """``image`` (3, H, W) in [0, 1] with the H and E factors ``alpha`` (2,) and shifts ``beta`` (2,, optical
        density) applied (:func:`map_stains` with ``diag(alpha)``, DAB left alone, and ``beta`` weighted by
        :func:`tissue_weight`), clipped to [0, 1]."""
        offset = np.append(np.asarray(beta, dtype=np.float64), 0.0)
        return map_stains(image, _he_only(np.diag(alpha)), offset, tissue_weight(image)).clamp(0, 1)


class StainVariation(_StainAugmentation):
    """Another lab's staining and another scanner's white balance for a (3, H, W) RGB image in [0, 1].

    :class:`HEDJitter` varies each stain's amount by a few per cent; centres differ by more, and in ways a per-stain
    scale cannot show: each stain's amount by up to 2x, its hue (another haematoxylin or eosin batch), and the glass
    colour. With strength ``s`` (0 to 1), per image and in the same HED space as :class:`HEDJitter`, the pixels'
    H and E amounts ``c`` become ``c @ M`` (DAB left as it is), where ``M``'s (2 x 2) diagonal holds each stain's
    factor, drawn log-uniformly from ``[1 / (1 + s), 1 + s]``, and its off-diagonal entries ``~ U(-s / 10, s / 10)``
    tilt each stain's colour towards the other's; then each RGB channel is multiplied by ``U(1 - s / 10, 1 + s / 10)``
    (the scanner's white balance, which tints glass and tissue alike: the only change to glass).

    Size in pixels (``benchmarks/stain_augmentation.py``, as for :class:`HEDJitter`): at ``s = 0.5`` the median
    absolute change per pixel and channel is 0.031 on tissue and 0.025 on glass (the white balance); at ``s = 1``
    0.055 and 0.040. Output clipped to [0, 1]; ``s = 0`` returns the image unchanged. Applied with probability
    ``prob``.
    """

    def __init__(self, strength: float = 1.0, prob: float = 1.0) -> None:
        super().__init__("stain variation", strength, prob, maximum=1.0)
        self.matrix = np.eye(2)
        self.balance = np.ones(3)

    def draw(self) -> None:
        s = self.strength
        scale = np.exp(self.R.uniform(-np.log1p(s), np.log1p(s), 2))
        self.matrix = np.diag(scale) + (1 - np.eye(2)) * self.R.uniform(-s / 10, s / 10, (2, 2))
        self.balance = self.R.uniform(1 - s / 10, 1 + s / 10, 3)

    def apply_drawn(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image, self.matrix, self.balance)

    @staticmethod
    def apply(image: torch.Tensor, matrix: np.ndarray, balance: np.ndarray) -> torch.Tensor:
        """``image`` (3, H, W) in [0, 1] with H and E mapped by ``matrix`` (2, 2; rows: from H, E; see
        :func:`map_stains`), DAB left alone, and then channel gains ``balance`` (3,) applied, clipped to [0, 1]."""
        gains = torch.as_tensor(np.asarray(balance), dtype=image.dtype).view(3, 1, 1)
        return (map_stains(image, _he_only(matrix)) * gains).clamp(0, 1)


@dataclasses.dataclass(frozen=True)
class StainVectors:
    """A slide's (or the target's) H and E optical-density unit vectors and their 99th-percentile concentrations.

    Attributes:
        he: (3, 2): column 0 haematoxylin, column 1 eosin; rows R, G, B.
        max_concentration: (2,) the 99th percentile of each stain's concentration over the sampled pixels.
        background: (3,) RGB of the slide's glass, which optical densities are relative to (scanners differ in
            white balance; Macenko's fixed 240 would count a tinted glass as stain).
    """

    he: np.ndarray
    max_concentration: np.ndarray
    background: np.ndarray = dataclasses.field(default_factory=lambda: np.full(3, _TLI))

    def to_dict(self) -> dict:
        return {"he": np.round(self.he, 4).tolist(), "max_concentration": np.round(self.max_concentration, 4).tolist(),
                "background": np.round(self.background, 1).tolist()}


#: The reference of Macenko's method in HEnorm_python and MONAI's ``NormalizeHEStains``.
MACENKO_TARGET = StainVectors(np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]),
                              np.array([1.9705, 1.0308]))


def _optical_density(rgb: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Macenko's optical density (N, 3) of RGB pixels (N, 3): ``-ln(min(rgb + 1, tli) / tli)``, the pixels first
    white-balanced so that ``background`` (glass) reads ``tli``."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if background is not None:
        rgb = rgb * (_TLI / np.asarray(background, dtype=np.float32))
    return -np.log(np.minimum(rgb + 1.0, _TLI) / _TLI)


def _macenko_vectors(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(3, 2) Macenko H and E unit vectors (haematoxylin first) of uint8 RGB ``pixels`` (..., 3), optical densities
    relative to the glass RGB ``background``; ``ValueError`` when no pixel is stained."""
    from monai.apps.pathology.transforms import ExtractHEStains  # here: monai.apps costs seconds to import

    background = np.asarray(background, dtype=np.float64)
    balanced = np.clip(np.asarray(pixels, dtype=np.float64).reshape(-1, 1, 3) * (_TLI / background), 0, 255)
    he = ExtractHEStains(tli=_TLI, beta=_BETA)(balanced.astype(np.float32)).astype(np.float64)
    # MONAI 1.6 orders the two vectors by red/blue ratio the other way round from its own target (for H&E like the
    # target's it returns eosin first); order them as Macenko's reference code does: haematoxylin absorbs more red.
    return he[:, ::-1].copy() if he[0, 0] < he[0, 1] else he


def estimate_stain_vectors(pixels: np.ndarray, background: np.ndarray | None = None) -> StainVectors:
    """Macenko stain vectors of uint8 RGB ``pixels`` (..., 3) (MONAI's ``ExtractHEStains``) and the 99th-percentile
    concentrations (least squares on every pixel, as MONAI's ``NormalizeHEStains`` does), with optical densities
    relative to ``background`` (the glass RGB; None: Macenko's 240 grey).

    Raises ``ValueError`` when no pixel is stained above the glass threshold.
    """
    background = np.full(3, _TLI) if background is None else np.asarray(background, dtype=np.float64)
    he = _macenko_vectors(pixels, background)
    od = _optical_density(np.asarray(pixels).reshape(-1, 3), background).T.astype(np.float64)
    concentration = np.linalg.lstsq(he, od, rcond=None)[0]
    return StainVectors(he, np.percentile(concentration, 99, axis=1), background)


def overview_downsample(slide: Slide) -> float:
    """The downsample at which a slide's longest side is about 1024 pixels (at least 32, a tissue mask's own): the
    overview a stain estimate finds tissue on when it is given no tissue mask."""
    return max(32.0, max(slide.dimensions) / 1024)


def slide_stain_vectors(slide: Slide, tissue: TissueMask | None = None, regions: int = 64,
                        size: int = 256) -> StainVectors:
    """A slide's stain vectors from ``regions`` level-0 windows of ``size`` pixels spread over its tissue.

    ``tissue``: the slide's tissue mask (``infer`` passes the one its map is restricted to); None: one computed on
    the slide's overview (:func:`overview_downsample`, what training does: a mask at 1/32 took 16 s for a
    100k x 200k slide in ``benchmarks/results/wsi_real_scale.md``, and the overview of such a slide is read from a
    level of about 1/16 of those pixels; not measured at that size). The glass colour is the median of the brightest 2% of the open slide's
    view at the mask's downsample (the thumbnail the mask was computed from, and the heatmap is painted on, when
    they share it); the windows are centred on evenly spaced tissue pixels of the mask (in row-major order), so the
    estimate is deterministic, does not depend on how the slide is tiled, and reads about 4 megapixels of level 0
    whatever the slide's size. 64 windows: with the mask's tissue the estimate's error and its spread between
    slides of one centre are those the earlier overview-based estimate had with 32 (``benchmarks/stain_estimate.py``,
    20 generated slides of two centres, two sets of seeds and difficulties); 32 let one hard slide's eosin vector
    tilt by 19 degrees.

    The estimate is robust to a minority of windows on artefacts: each window gets its own Macenko vectors and
    the slide's are their element-wise median (renormalised); each window's 99th-percentile concentrations (with
    the slide's vectors) give the slide's as their median. Pooling all pixels instead lets a pen mark or fold in a
    few windows set the extreme angles and percentiles that Macenko's method reads: on the generator's two centres
    that tilted a slide's vectors by up to 30 degrees and moved its haematoxylin percentile by 2x between slides
    of one centre (``benchmarks/centre_shift.py``'s diagnosis in docs/metastasis.md).
    """
    if tissue is None:
        tissue = compute_tissue_mask(slide, overview_downsample(slide))[0]
    if tuple(tissue.level0_size) != tuple(slide.dimensions):
        raise SlideError(f"{slide.path}: the tissue mask is for a {tissue.level0_size} slide, the slide is "
                         f"{slide.dimensions}")
    pixels = slide.downsampled(tissue.downsample)[0].reshape(-1, 3).astype(np.float64)
    brightness = pixels.mean(axis=1)
    background = np.median(pixels[brightness >= np.percentile(brightness, 98)], axis=0)
    on_tissue = np.argwhere(tissue.mask)
    if not len(on_tissue):
        raise SlideError(f"{slide.path}: no tissue in its tissue mask to estimate the stain vectors from")
    picks = on_tissue[np.unique(np.linspace(0, len(on_tissue) - 1, regions).round().astype(int))]
    ds, half = tissue.downsample, size // 2
    windows = [read_rgb(slide.handle, (int((col + 0.5) * ds) - half, int((row + 0.5) * ds) - half), 0, (size, size),
                        slide.path, pad_outside=True) for row, col in picks]
    vectors = []
    for window in windows:
        try:
            he = _macenko_vectors(window, background)
        except ValueError:  # a window on glass or a tissue edge: the others decide
            continue
        if np.isfinite(he).all():
            vectors.append(he)
    if not vectors:
        raise SlideError(f"{slide.path}: cannot estimate the stain vectors (no window on its tissue has stained "
                         "pixels)")
    he = np.median(np.stack(vectors), axis=0)
    he /= np.linalg.norm(he, axis=0, keepdims=True)
    percentiles = []
    for window in windows:
        od = _optical_density(window.reshape(-1, 3), background).astype(np.float64)
        od = od[(od > _BETA).all(axis=1)]
        if len(od) >= 100:  # enough stained pixels for a 99th percentile
            percentiles.append(np.percentile(np.linalg.lstsq(he, od.T, rcond=None)[0], 99, axis=1))
    if not percentiles:
        raise SlideError(f"{slide.path}: cannot estimate the stain concentrations (too few stained pixels)")
    return StainVectors(he, np.median(np.stack(percentiles), axis=0), background)


class StainNormalizer:
    """Macenko normalisation of a slide's pixels to ``target``, one linear map of optical density.

    ``od' = target.he @ diag(target.max / source.max) @ pinv(source.he) @ od`` (``od`` relative to the source's
    glass), then ``rgb' = tli * exp(-od')``, rounded and clipped to uint8: for a source with Macenko's 240 grey
    glass, what MONAI's ``NormalizeHEStains`` computes for a patch whose own estimate were ``source`` (it
    estimates per image; this estimates per slide).
    """

    def __init__(self, source: StainVectors, target: StainVectors = MACENKO_TARGET) -> None:
        self.source, self.target = source, target
        scale = np.asarray(target.max_concentration) / np.asarray(source.max_concentration)
        self.matrix = np.asarray(target.he) @ np.diag(scale) @ np.linalg.pinv(np.asarray(source.he))
        self.balance = torch.as_tensor(_TLI / np.asarray(source.background), dtype=torch.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (..., 3) -> normalised uint8 RGB of the same shape (computed in float32 with torch's threads)."""
        x = torch.from_numpy(np.array(rgb, dtype=np.float32, copy=True))
        x.mul_(self.balance).add_(1.0).clamp_(max=_TLI).div_(_TLI).log_()  # -od
        x = x @ torch.as_tensor(self.matrix.T, dtype=torch.float32)  # -od'
        x.exp_().mul_(_TLI).round_().clamp_(0, 255)
        return x.to(torch.uint8).numpy()
