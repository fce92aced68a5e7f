"""How a hospital's lab and scanner render the same tissue: appearance profiles for the synthetic slides.

Camelyon16 mixes slides from two centres (Radboud UMC and UMC Utrecht) whose staining and scanners differ; a
detector trained on one centre's colours can fail on the other's. The generator (:mod:`demodata.camelyon`)
draws tissue in reference colours; an :class:`Appearance` then turns them into one centre's look, the way labs and
scanners differ:

* **stain**: each pixel's optical density (relative to the reference glass) is split into haematoxylin, eosin
  and a residual along the reference stain vectors, each stain's amount scaled (``strength``) and varied
  smoothly over the slide (``unevenness``: uneven staining and section thickness, each stain on its own), and the
  pixel recomposed along the centre's own stain vectors (another haematoxylin or eosin batch, another protocol);
* **background**: the scanner's white balance (glass colour), which tints every pixel (transmitted light);
* **focus**: a Gaussian blur of ``blur`` level-0 pixels (scaled down on the reduced levels);
* **noise** and **JPEG quality** of the scanner's sensor and compression.

Everything is pointwise except the blur, which :meth:`Appearance.margin` lets the renderer pad for, so tiles
still join without seams. ``CENTRES`` holds the two profiles of the demo's two-centre data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Appearance", "CENTRES", "REFERENCE_GLASS", "reference_stains", "blur_margin"]

#: Glass colour (RGB) of the generator's reference rendering.
REFERENCE_GLASS = np.array([242.0, 241.0, 244.0])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def reference_stains(nucleus: np.ndarray, cytoplasm: np.ndarray) -> np.ndarray:
    """(3, 3) optical-density unit vectors (rows: haematoxylin, eosin, residual) of the reference colours: a
    lymphocyte nucleus stands for haematoxylin, cytoplasm for eosin, the residual is orthogonal to both."""
    h = _unit(-np.log(nucleus / REFERENCE_GLASS))
    e = _unit(-np.log(cytoplasm / REFERENCE_GLASS))
    return np.stack([h, e, _unit(np.cross(h, e))])


def blur_margin(sigma: float, downsample: float) -> int:
    """Pixels a region needs on each side so that a blur of ``sigma`` level-0 pixels, applied to the region at
    ``downsample``, equals the blur of the whole slide there (scipy truncates the kernel at 4 sigma)."""
    sigma = sigma / downsample
    return int(4.0 * sigma + 0.5) + 1 if sigma > 0.05 else 0


@dataclasses.dataclass(frozen=True)
class Appearance:
    """One centre's look.

    Attributes:
        name: the centre's name (``A``, ``B``).
        haematoxylin, eosin: the centre's stain optical-density directions (RGB), any length.
        strength: (haematoxylin, eosin) amount factors.
        background: glass RGB of the scanner.
        blur: Gaussian sigma of the focus, in level-0 pixels (0: sharp).
        noise: standard deviation of the sensor noise, grey levels.
        jpeg_quality: quality of the TIFF tiles' JPEG compression.
        unevenness: each stain's amount varies by up to this fraction, smoothly over 40-300 um (it also gives
            stain estimation the independent spread of the two stains that real tissue has).
    """

    name: str
    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    strength: tuple[float, float] = (1.0, 1.0)
    background: tuple[float, float, float] = tuple(REFERENCE_GLASS)
    blur: float = 0.0
    noise: float = 3.0
    jpeg_quality: int = 90
    unevenness: float = 0.0

    def margin(self, downsample: float) -> int:
        """Pixels a region needs on each side so that its focus blur equals the whole slide's."""
        return blur_margin(self.blur, downsample)

    def apply(self, rgb: np.ndarray, reference: np.ndarray, origin: tuple[float, float], downsample: float,
              extra_density: np.ndarray | None = None) -> np.ndarray:
        """Reference-coloured float RGB (H, W, 3) -> this centre's colours (float, 0-255, before noise and JPEG).

        ``reference``: the (3, 3) stain rows of :func:`reference_stains`. ``origin``: level-0 (x, y) of the
        region's top-left pixel. ``extra_density``: optional optical density (H, W, 3) added after the stain
        change (ink on the slide keeps its colour whatever the stain). The blur (if any) is applied here too: pass
        a region padded by :meth:`margin` and crop it afterwards.
        """
        od = -np.log(np.clip(rgb, 1.0, None) / REFERENCE_GLASS)
        amounts = od @ np.linalg.inv(reference)  # (H, W, 3): haematoxylin, eosin, residual
        if self.unevenness:
            height, width = rgb.shape[:2]
            xs = origin[0] + (np.arange(width) + 0.5) * downsample
            ys = origin[1] + (np.arange(height) + 0.5) * downsample
            for stain in (0, 1):
                amounts[..., stain] *= 1.0 + self.unevenness * self._waves(stain, xs, ys)
        od = amounts @ self.stain_matrix(reference)
        if extra_density is not None:
            od = od + extra_density
        out = np.asarray(self.background) * np.exp(-od)
        sigma = self.blur / downsample
        if self.margin(downsample):
            from scipy import ndimage  # here: the command line imports this module for the centres' names

            out = ndimage.gaussian_filter(out, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
        return out

    def stain_matrix(self, reference: np.ndarray) -> np.ndarray:
        """(3, 3) optical density per unit amount (rows: haematoxylin, eosin, residual): the centre's stain
        directions times their strengths, and the reference residual."""
        target = np.stack([_unit(self.haematoxylin), _unit(self.eosin), reference[2]])
        return target * np.array([[self.strength[0]], [self.strength[1]], [1.0]])

    def restain(self, rgb: np.ndarray, source: "Appearance", reference: np.ndarray, glass: bool = True) -> np.ndarray:
        """Float RGB (..., 3) of ``source``'s stain and glass (before blur, noise and JPEG) -> this centre's
        (float, 0-255): the same stain amounts along this centre's stain matrix, seen on this centre's glass
        (``glass=False`` keeps the source's). Unevenness is not undone: each centre's own field stays."""
        od = -np.log(np.clip(rgb, 1.0, None) / np.asarray(source.background))
        od = od @ np.linalg.inv(source.stain_matrix(reference)) @ self.stain_matrix(reference)
        return np.asarray(self.background if glass else source.background) * np.exp(-od)

    def _waves(self, stain: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """A smooth field in [-1, 1] over level-0 coordinates (a pure function of them, so tiles join): eight
        plane waves of 40-300 um in random directions (no visible stripes), fixed per centre and stain."""
        rng = np.random.default_rng([sum(map(ord, self.name)), stain])
        field = np.zeros((len(ys), len(xs)))
        for wavelength_um in np.geomspace(40.0, 300.0, 8):
            angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            k = 2 * np.pi * 0.243 / wavelength_um  # radians per level-0 pixel at Camelyon16's 0.243 um/px
            field += np.sin(k * (np.cos(angle) * xs[None, :] + np.sin(angle) * ys[:, None]) + phase)
        return np.clip(field / 4, -1.0, 1.0)  # sum of 8 unit sines: std 2


# Two centres that differ as scanners and labs do: A stains haematoxylin strongly and bluish on a cool, sharp
# scanner with good JPEGs; B stains it weakly and redder (with more, pinker eosin) on a warm, softer scanner that
# compresses harder. Both differ from the generator's reference look.
CENTRES = {
    "A": Appearance("A", haematoxylin=(0.50, 0.80, 0.33), eosin=(0.17, 0.90, 0.40), strength=(1.1, 0.95),
                    background=(236.0, 239.0, 247.0), blur=0.4, noise=3.0, jpeg_quality=90, unevenness=0.7),
    "B": Appearance("B", haematoxylin=(0.62, 0.74, 0.26), eosin=(0.10, 0.86, 0.50), strength=(0.8, 1.25),
                    background=(247.0, 238.0, 226.0), blur=1.2, noise=4.5, jpeg_quality=75, unevenness=0.7),
}
