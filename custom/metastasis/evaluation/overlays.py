"""Lesions as files a slide viewer opens over the slide: QuPath's GeoJSON and ASAP's XML, in level-0 pixels.

* ``NAME_lesions.geojson`` (QuPath: File > Import objects, or drag it onto the slide): a ``FeatureCollection``,
  one ``Feature`` per lesion (:class:`~metastasis.evaluation.lesions.Lesion`), largest first, whose ``geometry`` is
  a ``Polygon`` of one closed ring (the lesion's contour, its first point repeated last) and whose ``properties``
  are QuPath's: ``objectType`` ``"annotation"``, ``name`` (``Lesion 1``, ...), ``classification`` (the category's
  name and colour, :data:`CLASSES`) and ``measurements`` (maximum and mean probability, area in square microns,
  longest diameter in microns).
* ``NAME_lesions.xml`` (ASAP): the contours as ASAP polygons, grouped by category (the groups of
  :data:`CLASSES`, in their colours); ``read_asap_xml(path, groups=LESION_GROUPS)`` reads them back.
* ``NAME_heatmap.tif`` (any viewer of pyramidal TIFFs: OpenSlide, QuPath, ASAP): the probability map as a tiled,
  pyramidal 8-bit grayscale TIFF (:func:`write_heatmap_tiff`), its pixel size in the resolution tags.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile

from medcore.files import atomic_path, write_json

from ..data.annotations import Annotation, read_asap_xml, write_asap_xml
from .lesions import Lesion

__all__ = ["CLASSES", "LESION_GROUPS", "lesions_geojson", "write_lesions_geojson", "write_lesions_xml",
           "read_lesions_xml", "write_heatmap_tiff"]

#: Each lesion category's (:func:`~metastasis.evaluation.staging.lesion_category`) class in the viewers: its name
#: (QuPath's classification, ASAP's group) and fixed colour (RGB).
CLASSES = {"itc": ("ITC", (255, 215, 0)), "micro": ("Micro-metastasis", (255, 128, 0)),
           "macro": ("Macro-metastasis", (220, 20, 60))}
#: The ASAP groups of the lesion XML files, smallest category first.
LESION_GROUPS = tuple(name for name, _ in CLASSES.values())


def _feature(number: int, lesion: Lesion) -> dict:
    name, color = CLASSES[lesion.category]
    ring = lesion.contour.tolist()
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
            "properties": {"objectType": "annotation", "name": f"Lesion {number}",
                           "classification": {"name": name, "color": list(color)},
                           "measurements": {"Max probability": lesion.max_probability,
                                            "Mean probability": lesion.mean_probability,
                                            "Area \u00b5m^2": lesion.area_um2,
                                            "Longest diameter \u00b5m": lesion.longest_diameter_um}}}


def lesions_geojson(lesions: Sequence[Lesion]) -> dict:
    """The lesions as a QuPath GeoJSON ``FeatureCollection`` (the module docstring gives its layout)."""
    return {"type": "FeatureCollection",
            "features": [_feature(number, lesion) for number, lesion in enumerate(lesions, start=1)]}


def write_lesions_geojson(path: str | Path, lesions: Sequence[Lesion]) -> Path:
    """Write :func:`lesions_geojson` atomically."""
    return write_json(path, lesions_geojson(lesions))


def write_lesions_xml(path: str | Path, lesions: Sequence[Lesion], comment: str | None = None) -> Path:
    """Write the lesions' contours as an ASAP XML file (atomically), one polygon per lesion named ``Lesion N
    (D um)`` after its longest diameter, grouped by category. ``comment``: an XML comment, e.g. the map it came
    from."""
    annotations = [Annotation(name=f"Lesion {number} ({lesion.longest_diameter_um:.0f} um)",
                              group=CLASSES[lesion.category][0], points=lesion.contour)
                   for number, lesion in enumerate(lesions, start=1)]
    colors = {name: "#{:02X}{:02X}{:02X}".format(*color) for name, color in CLASSES.values()}
    # "--" may not appear inside an XML comment (a file name may hold it)
    comment = re.sub(r"-(?=-)", "- ", comment) if comment else comment
    return write_asap_xml(path, annotations, comment=comment, colors=colors)


def read_lesions_xml(path: str | Path) -> list[Annotation]:
    """The polygons of a lesion XML file (:func:`write_lesions_xml`), their groups the categories' names."""
    return read_asap_xml(path, groups=LESION_GROUPS)


def _max_halved(image: np.ndarray) -> np.ndarray:
    """``image`` at half size (rounded up), each pixel the maximum of its 2 x 2 block."""
    padded = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2)))
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).max(axis=(1, 3))


def write_heatmap_tiff(path: str | Path, probs: np.ndarray, stride: int, mpp: float, slide: str = "",
                       tile: int = 256) -> Path:
    """Write a probability map (rows, cols) as a pyramidal tiled TIFF that OpenSlide and tifffile open at every
    level (atomically).

    Level 0 is the map itself: pixel (x, y) holds ``round(255 p)`` of map pixel (row y, column x), whose window is
    centred on the slide's level-0 block ``[x s, (x + 1) s) x [y s, (y + 1) s)`` (``s`` = ``stride``;
    :mod:`~metastasis.inference.geometry`), so level 0 lies on the slide scaled by ``s`` from the slide's
    top-left corner. The resolution tags give its pixel size, ``s * mpp`` microns, which is what QuPath and ASAP
    scale an overlay by. Each further level halves the one before, taking each 2 x 2 block's maximum (a small
    lesion stays visible when zoomed out), down to at most 256 pixels a side. Lossless (zlib) 8-bit grayscale; the
    ImageDescription of level 0 is JSON stating the slide, stride and pixel convention.
    """
    if probs.ndim != 2 or stride < 1 or not mpp > 0:
        raise ValueError(f"expected a 2-d map, a stride >= 1 and a pixel size > 0, got {probs.shape}, {stride}, {mpp}")
    level = np.rint(np.clip(probs, 0.0, 1.0) * 255).astype(np.uint8)
    pixel_um = stride * mpp
    description = json.dumps({"heatmap_of": slide, "stride": stride, "pixel_um": pixel_um,
                              "value": "round(255 x tumour probability); 0 off tissue",
                              "level0_pixel": "(x, y) is the slide's level-0 block [x stride, (x + 1) stride) x "
                                              "[y stride, (y + 1) stride)",
                              "levels": "each further level the 2 x 2 maximum of the one before"})
    res = 1e4 / pixel_um  # pixels per centimetre
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=level.size > 2 ** 31) as tif:
        first = True
        while True:
            tif.write(level, tile=(tile, tile), photometric="minisblack", compression="zlib",
                      resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=0 if first else 1,
                      metadata=None, description=description if first else None)
            if max(level.shape) <= 256:
                break
            level, first, res = _max_halved(level), False, res / 2
    return Path(path)
