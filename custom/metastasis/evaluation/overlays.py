"""Lesions as files a slide viewer opens over the slide: QuPath's GeoJSON and ASAP's XML, in level-0 pixels.

* ``NAME_lesions.geojson`` (QuPath: File > Import objects, or drag it onto the slide): a ``FeatureCollection``,
  one ``Feature`` per lesion (:class:`~metastasis.evaluation.lesions.Lesion`), largest first, whose ``geometry`` is
  a ``Polygon`` of one closed ring (the lesion's contour, its first point repeated last) and whose ``properties``
  are QuPath's: ``objectType`` ``"annotation"``, ``name`` (``Lesion 1``, ...), ``classification`` (the category's
  name and colour, :data:`CLASSES`) and ``measurements`` (maximum and mean probability, area in square microns,
  longest diameter in microns).
* ``NAME_lesions.xml`` (ASAP): the contours as ASAP polygons, grouped by category (the groups of
  :data:`CLASSES`, in their colours); ``read_asap_xml(path, groups=LESION_GROUPS)`` reads them back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from medcore.files import write_json

from ..data.annotations import Annotation, read_asap_xml, write_asap_xml
from .lesions import Lesion

__all__ = ["CLASSES", "LESION_GROUPS", "lesions_geojson", "write_lesions_geojson", "write_lesions_xml",
           "read_lesions_xml"]

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
