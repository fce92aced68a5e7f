"""Whole-slide image access through OpenSlide (generic pyramidal TIFF and the vendor formats OpenSlide reads)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import openslide

from medcore.errors import UserError
from medcore.files import require_file


__all__ = ["SlideError", "check_slide_file", "open_slide", "slide_mpp", "read_rgb", "read_downsampled", "Slide",
           "opened"]

_BLOCK = 4096  # level pixels per side read at once: at most 64 MB of RGBA, whatever the slide size


class SlideError(UserError):
    """A slide that cannot be opened or a request it cannot serve; the message names the file."""


def check_slide_file(path: str | Path) -> Path:
    """``path``, checked from its header alone to be a slide OpenSlide reads (a command checks all its slides this
    way before any work, and opens each once when its turn comes); else :class:`SlideError` naming the file."""
    path = require_file(path, "slide file", SlideError)
    try:
        known = openslide.OpenSlide.detect_format(str(path))
    except (OSError, openslide.OpenSlideError) as err:
        raise SlideError(f"{path}: OpenSlide cannot open this file ({err})") from err
    if known is None:
        raise SlideError(f"{path}: OpenSlide cannot open this file (an unknown format, or a damaged slide)")
    return path


def open_slide(path: str | Path, cache: openslide.OpenSlideCache | None = None) -> openslide.OpenSlide:
    """Open a slide with OpenSlide, or raise :class:`SlideError` naming the file and why.

    ``cache``: a decoded-tile cache shared with other open slides (OpenSlide otherwise gives every handle its own
    32 MiB cache, so memory grows with the number of slides kept open).
    """
    path = Path(path)
    require_file(path, "slide file", SlideError)
    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
        raise SlideError(f"{path}: OpenSlide cannot open this file ({err})") from err
    if cache is not None:
        slide.set_cache(cache)
    return slide


def slide_mpp(slide: openslide.OpenSlide, path: str | Path = "") -> float:
    """Level-0 microns per pixel (x), from the slide's resolution metadata."""
    value = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    if value is None:
        raise SlideError(f"{path}: the slide has no resolution metadata (microns per pixel)")
    return float(value)


def read_rgb(slide: openslide.OpenSlide, location: tuple[int, int], level: int, size: tuple[int, int],
             path: str | Path = "", pad_outside: bool = False) -> np.ndarray:
    """Read a region as a uint8 RGB array (height, width, 3).

    ``location`` is the level-0 (x, y) of the region's top-left pixel, ``size`` its (width, height) in pixels of
    ``level``. Requests outside the slide raise :class:`SlideError` (OpenSlide would silently pad them), unless
    ``pad_outside``: then the parts outside the slide are white glass (windows centred near a slide's edge).
    """
    if not 0 <= level < slide.level_count:
        raise SlideError(f"{path}: level {level} requested, the slide has levels 0..{slide.level_count - 1}")
    x, y = location
    width, height = size
    scale = slide.level_downsamples[level]
    full_w, full_h = slide.dimensions
    if width <= 0 or height <= 0 or not pad_outside and (
            x < 0 or y < 0 or x + width * scale > full_w + scale or y + height * scale > full_h + scale):
        raise SlideError(
            f"{path}: region at level-0 ({x}, {y}) of {width}x{height} pixels at level {level} lies outside the "
            f"slide ({full_w}x{full_h} at level 0)"
        )
    try:
        region = slide.read_region((int(x), int(y)), level, (int(width), int(height)))
    except openslide.OpenSlideError as err:
        raise SlideError(f"{path}: cannot read region at ({x}, {y}) level {level} ({err})") from err
    rgba = np.asarray(region)
    # Transparent pixels (no data) are white glass, as the slide scanners show them.
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


def read_downsampled(slide, downsample: float, path: str | Path = "") -> tuple[np.ndarray, float, int]:
    """The whole slide as an RGB array at ``1/downsample`` of level 0, read in bounded memory.

    Reads the pyramid level closest below ``downsample`` in blocks and averages ``factor x factor`` pixels so
    that a slide without the right level (or with level 0 only) never needs a whole level in memory.
    Returns ``(rgb, effective_downsample, level)``; the effective downsample is the level's times the integer
    averaging factor (equal to ``downsample`` on a power-of-two pyramid).
    """
    if downsample < 1:
        raise SlideError(f"downsample must be at least 1, got {downsample}")
    level = slide.get_best_level_for_downsample(downsample)
    level_ds = float(slide.level_downsamples[level])
    factor = max(1, int(round(downsample / level_ds)))
    level_w, level_h = slide.level_dimensions[level]
    out = np.empty((math.ceil(level_h / factor), math.ceil(level_w / factor), 3), np.uint8)
    block = max(factor, _BLOCK // factor * factor)
    for top in range(0, level_h, block):
        for left in range(0, level_w, block):
            w, h = min(block, level_w - left), min(block, level_h - top)
            rgb = read_rgb(slide, (int(round(left * level_ds)), int(round(top * level_ds))), level, (w, h), path)
            if factor > 1:  # edge-pad to whole blocks, then average each factor x factor block
                ph, pw = -h % factor, -w % factor
                rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge").astype(np.float32)
                rgb = rgb.reshape(rgb.shape[0] // factor, factor, rgb.shape[1] // factor, factor, 3).mean((1, 3))
                rgb = np.round(rgb).astype(np.uint8)
            out[top // factor: top // factor + rgb.shape[0], left // factor: left // factor + rgb.shape[1]] = rgb
    return out, level_ds * factor, level


class Slide:
    """A whole-slide image opened once: its OpenSlide handle and the downsampled views its users share.

    ``with Slide(path) as slide:`` (``cache``: see :func:`open_slide`); :meth:`downsampled` reads the whole slide at
    ``1/downsample`` once (in bounded memory) and serves the same view to every later caller, e.g. the tissue mask,
    the stain estimate and the heatmap at 1/32.
    """

    def __init__(self, path: str | Path, cache: openslide.OpenSlideCache | None = None) -> None:
        self.path = Path(path)
        self.handle = open_slide(self.path, cache)
        self._views: dict[float, tuple[np.ndarray, float, int]] = {}

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.handle.close()
        self.release_views()

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return tuple(self.handle.dimensions)

    @property
    def mpp(self) -> float:
        """Level-0 microns per pixel."""
        return slide_mpp(self.handle, self.path)

    def release_views(self) -> None:
        """Let go of the downsampled views read so far (a slide kept open for its patches needs none of them)."""
        self._views.clear()

    def downsampled(self, downsample: float) -> tuple[np.ndarray, float, int]:
        """:func:`read_downsampled` of this slide, read once per ``downsample``."""
        if downsample not in self._views:
            self._views[downsample] = read_downsampled(self.handle, downsample, self.path)
        return self._views[downsample]


@contextlib.contextmanager
def opened(slide: str | Path | Slide) -> Iterator[Slide]:
    """``slide`` itself when it is a :class:`Slide` (left open), else that file opened for the block."""
    if isinstance(slide, Slide):
        yield slide
    else:
        with Slide(slide) as own:
            yield own
