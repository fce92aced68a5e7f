"""Whole-slide image access through OpenSlide (generic pyramidal TIFF and the vendor formats OpenSlide reads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from medcore.errors import UserError


__all__ = ["SlideError", "open_slide", "slide_mpp", "read_rgb"]


class SlideError(UserError):
    """A slide that cannot be opened or a request it cannot serve; the message names the file."""


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a slide with OpenSlide, or raise :class:`SlideError` naming the file and why."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: slide file missing")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
        raise SlideError(f"{path}: OpenSlide cannot open this file ({err})") from err


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
