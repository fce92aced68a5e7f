"""Lesions as files a slide viewer opens over the slide: QuPath's GeoJSON and ASAP's XML, in level-0 pixels.

* ``NAME_lesions.geojson`` (QuPath: File > Import objects, or drag it onto the slide): a ``FeatureCollection``,
  one ``Feature`` per lesion (:class:`~metastasis.evaluation.lesions.Lesion`), largest first, whose ``geometry`` is
  a ``Polygon`` of one closed ring (the lesion's contour, its first point repeated last) and whose ``properties``
  are QuPath's: ``objectType`` ``"annotation"``, ``name`` (``Lesion 1``, ...), ``classification`` (the category's
  name and colour, :data:`CLASSES`) and ``measurements`` (maximum and mean probability, area in square microns,
  longest diameter in microns). The geometry is valid in the simple-features sense (:func:`lesion_geometry`).
  Optionally the Camelyon16 detections follow as ``Point`` features of class ``Detection``
  (:func:`read_geojson_detections` reads them back).
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

from medcore.errors import UserError
from medcore.files import atomic_path, read_json, write_json

from ..data.annotations import Annotation, read_asap_xml, write_asap_xml
from .detection import Detections
from .lesions import Lesion

__all__ = ["CLASSES", "DETECTION_CLASS", "LESION_GROUPS", "lesion_geometry", "lesions_geojson",
           "read_geojson_detections", "write_lesions_geojson", "write_lesions_xml",
           "read_lesions_xml", "write_heatmap_tiff"]

#: Each lesion category's (:func:`~metastasis.evaluation.staging.lesion_category`) class in the viewers: its name
#: (QuPath's classification, ASAP's group) and fixed colour (RGB).
CLASSES = {"itc": ("ITC", (255, 215, 0)), "micro": ("Micro-metastasis", (255, 128, 0)),
           "macro": ("Macro-metastasis", (220, 20, 60))}
#: The ASAP groups of the lesion XML files, smallest category first.
LESION_GROUPS = tuple(name for name, _ in CLASSES.values())


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring (N, 2), positive for the outline's own orientation (region on the right, y down)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _simple_rings(ring: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """``ring`` cut at every vertex it passes twice (where pixels of the region touch only at a corner) into rings
    that pass no vertex twice."""
    seen: dict[tuple[float, float], int] = {}
    for k, vertex in enumerate(ring):
        if vertex in seen:  # the loop between the two visits is a ring of its own; the rest goes on without it
            first = seen[vertex]
            return _simple_rings(ring[first:k]) + _simple_rings(ring[:first] + ring[k:])
        seen[vertex] = k
    return [ring]


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    """Whether ``point`` lies inside ``ring`` (ray casting; ``point`` not on its edges)."""
    x, y = point
    x0, y0, x1, y1 = ring[:, 0], ring[:, 1], np.roll(ring[:, 0], -1), np.roll(ring[:, 1], -1)
    crosses = (y0 > y) != (y1 > y)
    xs = x0[crosses] + (y - y0[crosses]) * (x1[crosses] - x0[crosses]) / (y1[crosses] - y0[crosses])
    return bool(np.count_nonzero(xs > x) % 2)


def lesion_geometry(contour: np.ndarray) -> dict:
    """A lesion's outline as a valid GeoJSON geometry (OGC simple features, as shapely checks them).

    The traced outline passes a vertex twice where the region's pixels touch only at a corner, which a viewer
    draws but the simple-features rules forbid. It is cut there into simple rings: those of the outline's own
    orientation are the parts (a ``MultiPolygon`` when there are several, touching at corners), the others are
    background enclosed through such a corner, each a hole of the part it lies in. Rings are closed (the first
    point repeated last), parts counter-clockwise and holes clockwise as seen in GeoJSON's x-right, y-up axes
    (RFC 7946's right-hand rule)."""
    rings = [np.asarray(r, np.float64) for r in _simple_rings([tuple(v) for v in contour.tolist()])]
    shells = [r for r in rings if _signed_area(r) > 0]
    holes = [r for r in rings if _signed_area(r) < 0]
    parts = [[shell] for shell in shells]
    for hole in holes:
        corners = {tuple(v) for shell in shells for v in shell.tolist()}
        probe = next((v for v in hole if tuple(v.tolist()) not in corners), hole[0])
        probe = probe + 0.25 * np.sign(hole.mean(axis=0) - probe)  # just inside the hole: off every edge
        owner = next((part for part in parts if _inside(probe, part[0])), parts[0])
        owner.append(hole)

    def closed(ring: np.ndarray) -> list[list[float]]:
        # a positive shoelace area is counter-clockwise in GeoJSON's x-right, y-up axes: parts already are, holes
        # (negative) clockwise
        return ring.tolist() + ring[:1].tolist()

    polygons = [[closed(ring) for ring in part] for part in parts]
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def _feature(number: int, lesion: Lesion) -> dict:
    name, color = CLASSES[lesion.category]
    return {"type": "Feature",
            "geometry": lesion_geometry(lesion.contour),
            "properties": {"objectType": "annotation", "name": f"Lesion {number}",
                           "classification": {"name": name, "color": list(color)},
                           "measurements": {"Max probability": lesion.max_probability,
                                            "Mean probability": lesion.mean_probability,
                                            "Area \u00b5m^2": lesion.area_um2,
                                            "Longest diameter \u00b5m": lesion.longest_diameter_um}}}


#: QuPath's class of the Camelyon16 detection points in the GeoJSON, and its colour.
DETECTION_CLASS = ("Detection", (0, 160, 255))


def _point(number: int, probability: float, x: float, y: float) -> dict:
    name, color = DETECTION_CLASS
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
            "properties": {"objectType": "annotation", "name": f"Detection {number}",
                           "classification": {"name": name, "color": list(color)},
                           "measurements": {"Probability": float(probability)}}}


def lesions_geojson(lesions: Sequence[Lesion], detections: Detections | None = None) -> dict:
    """The lesions as a QuPath GeoJSON ``FeatureCollection`` (the module docstring gives its layout), and the
    Camelyon16 detections as ``Point`` features of class ``Detection`` (their probability the one measurement)
    when given."""
    features = [_feature(number, lesion) for number, lesion in enumerate(lesions, start=1)]
    if detections is not None:
        features += [_point(n, p, x, y) for n, (p, x, y) in enumerate(
            zip(detections.probability, detections.x, detections.y), start=1)]
    return {"type": "FeatureCollection", "features": features}


def write_lesions_geojson(path: str | Path, lesions: Sequence[Lesion], detections: Detections | None = None) -> Path:
    """Write :func:`lesions_geojson` atomically."""
    return write_json(path, lesions_geojson(lesions, detections))


def read_geojson_detections(path: str | Path) -> Detections:
    """The detection points of a lesion GeoJSON (:func:`write_lesions_geojson`), as written (highest first)."""
    collection = read_json(path, "lesion GeoJSON")
    points = [f for f in collection.get("features", []) if isinstance(f, dict) and f.get("geometry", {}).get("type")
              == "Point" and f.get("properties", {}).get("classification", {}).get("name") == DETECTION_CLASS[0]] \
        if isinstance(collection, dict) else None
    if points is None:
        raise UserError(f"{path}: not a GeoJSON FeatureCollection")
    try:
        rows = [(float(f["properties"]["measurements"]["Probability"]), *map(float, f["geometry"]["coordinates"]))
                for f in points]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: a detection point without a position or probability ({err})") from None
    return Detections(*(np.array(column) for column in zip(*rows))) if rows else \
        Detections(np.zeros(0), np.zeros(0), np.zeros(0))


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
