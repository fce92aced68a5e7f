"""Camelyon16 lesion annotations: ASAP XML polygons in level-0 pixel coordinates, and their rasterisation.

The Camelyon16 XML schema (written by ASAP)::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
          <Coordinates>
            <Coordinate Order="0" X="65426.5" Y="110176" />
            ...
      <AnnotationGroups>
        <Group Name="Tumor" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>

Groups ``Tumor``, ``_0`` and ``_1`` outline tumour; ``_2`` outlines non-tumour regions inside a tumour outline
(exclusions). Coordinates are level-0 pixels, x to the right, y down.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medcore.errors import UserError
from medcore.files import atomic_path, require_file

__all__ = [
    "TUMOR_GROUPS",
    "EXCLUSION_GROUPS",
    "AnnotationError",
    "Annotation",
    "check_inside",
    "read_asap_xml",
    "write_asap_xml",
    "rasterize",
]

TUMOR_GROUPS: tuple[str, ...] = ("Tumor", "_0", "_1")
EXCLUSION_GROUPS: tuple[str, ...] = ("_2",)
_GROUP_COLORS = {"Tumor": "#F4FA58", "_0": "#F4FA58", "_1": "#F4FA58", "_2": "#64FE2E"}


class AnnotationError(UserError):
    """An annotation file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Annotation:
    """One polygon: ``points`` is a float array (N, 2) of level-0 (x, y), N >= 3, in drawing order."""

    name: str
    group: str
    points: np.ndarray

    @property
    def is_exclusion(self) -> bool:
        return self.group in EXCLUSION_GROUPS


def check_inside(annotations: Sequence[Annotation], size: tuple[int, int], source: str | Path) -> None:
    """Refuse annotations that do not fit a ``size`` = (width, height) slide (a polygon of another slide, or
    coordinates at another level), naming ``source`` and the annotation: a region outside the slide could never be
    found, so it would silently count as missed or not count at all."""
    width, height = size
    for ann in annotations:
        (x0, y0), (x1, y1) = ann.points.min(0), ann.points.max(0)
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise AnnotationError(f"{source}: annotation {ann.name!r} spans x {x0:g}..{x1:g}, y {y0:g}..{y1:g}, "
                                  f"outside the {width}x{height} slide")


def read_asap_xml(path: str | Path, groups: Sequence[str] | None = None) -> list[Annotation]:
    """Parse an ASAP XML file into polygons (tumour and exclusion groups).

    ``groups``: the groups accepted, for files of another schema (the lesion outlines that
    :mod:`metastasis.evaluation.overlays` writes are grouped by clinical category); default: Camelyon16's.

    Raises:
        AnnotationError: the file is missing or not well-formed XML, has no ``Annotations`` element, an annotation
            has fewer than 3 coordinates or a coordinate that is not a finite number, or a group is not a
            Camelyon16 group (not one of ``groups``, when given).
    """
    path = Path(path)
    require_file(path, "annotation file", AnnotationError)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise AnnotationError(f"{path}: malformed XML ({err})") from err
    container = root.find("Annotations")
    if root.tag != "ASAP_Annotations" or container is None:
        raise AnnotationError(f"{path}: not an ASAP annotation file (expected <ASAP_Annotations><Annotations>)")
    annotations = []
    for index, node in enumerate(container.findall("Annotation")):
        name = node.get("Name", f"Annotation {index}")
        group = node.get("PartOfGroup", "")
        if groups is None and group not in TUMOR_GROUPS + EXCLUSION_GROUPS:
            raise AnnotationError(
                f"{path}: annotation {name!r} is in group {group!r}; Camelyon16 groups are "
                f"{', '.join(TUMOR_GROUPS)} (tumour) and {', '.join(EXCLUSION_GROUPS)} (exclusion)"
            )
        if groups is not None and group not in groups:
            raise AnnotationError(f"{path}: annotation {name!r} is in group {group!r}; expected one of "
                                  f"{', '.join(groups)}")
        coords = node.findall("Coordinates/Coordinate")
        try:
            ordered = sorted(coords, key=lambda c: int(float(c.get("Order", "0"))))
            points = np.array([[float(c.get("X")), float(c.get("Y"))] for c in ordered], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise AnnotationError(f"{path}: annotation {name!r} has a coordinate that is not a number ({err})") from err
        if len(points) < 3:
            raise AnnotationError(f"{path}: annotation {name!r} has {len(points)} coordinates, a polygon needs 3")
        if not np.isfinite(points).all():
            raise AnnotationError(f"{path}: annotation {name!r} has a non-finite coordinate")
        annotations.append(Annotation(name=name, group=group, points=points))
    return annotations


def write_asap_xml(path: str | Path, annotations: Sequence[Annotation], comment: str | None = None,
                   colors: Mapping[str, str] | None = None) -> Path:
    """Write polygons as an ASAP XML file in the Camelyon16 schema (atomically) and return the path.

    ``comment``: an XML comment put first inside the root element (readers ignore it), e.g. the file's origin.
    ``colors``: ``#RRGGBB`` by group, for groups other than Camelyon16's (default: Camelyon16's tumour colour).
    """
    palette = {**_GROUP_COLORS, **(colors or {})}
    root = ET.Element("ASAP_Annotations")
    if comment:
        root.append(ET.Comment(f" {comment} "))
    container = ET.SubElement(root, "Annotations")
    for ann in annotations:
        node = ET.SubElement(container, "Annotation", Name=ann.name, Type="Polygon", PartOfGroup=ann.group,
                             Color=palette.get(ann.group, "#F4FA58"))
        coords = ET.SubElement(node, "Coordinates")
        for order, (x, y) in enumerate(ann.points):
            ET.SubElement(coords, "Coordinate", Order=str(order), X=f"{x:.4f}".rstrip("0").rstrip("."),
                          Y=f"{y:.4f}".rstrip("0").rstrip("."))
    groups = ET.SubElement(root, "AnnotationGroups")
    for group in dict.fromkeys(a.group for a in annotations):
        node = ET.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color=palette.get(group, "#F4FA58"))
        ET.SubElement(node, "Attributes")
    ET.indent(root, space="\t")
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return Path(path)


def rasterize(annotations: Sequence[Annotation], origin: tuple[float, float], size: tuple[int, int],
              downsample: float) -> np.ndarray:
    """Tumour mask (uint8 0/1, indexed [y, x]) of a region at a given downsample.

    Output pixel (row i, column j) covers level-0 ``[x0 + j * d, x0 + (j + 1) * d) x [y0 + i * d, y0 + (i + 1) * d)``
    with ``(x0, y0) = origin``, ``(width, height) = size`` and ``d = downsample``. It is tumour when its centre
    lies inside a tumour polygon (even-odd rule, edges half-open so a centre on a shared edge counts once) and
    outside every exclusion polygon. The whole-slide mask at pyramid level k is
    ``rasterize(anns, (0, 0), (ceil(W / 2**k), ceil(H / 2**k)), 2**k)``.
    """
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0 or downsample <= 0:
        raise ValueError(f"size and downsample must be positive, got size={size}, downsample={downsample}")
    mask = np.zeros((height, width), np.uint8)
    # Exclusions are drawn after every tumour polygon, so they cut holes whatever the file order.
    for value, exclusion in ((1, False), (0, True)):
        for ann in annotations:
            if ann.is_exclusion == exclusion:
                _fill_polygon(mask, (ann.points - (origin[0], origin[1])) / downsample, value)
    return mask


def _fill_polygon(mask: np.ndarray, pts: np.ndarray, value: int, rows_per_block: int = 1024) -> None:
    """Set ``mask`` pixels whose centres lie inside polygon ``pts`` (pixel units, pixel j spans [j, j + 1))."""
    height, width = mask.shape
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first = max(0, int(np.ceil(y0.min() - 0.5)))
    last = min(height - 1, int(np.floor(y0.max() - 0.5)))
    if first > last or x0.max() < 0 or x0.min() > width:
        return
    slope = np.divide(x1 - x0, y1 - y0, out=np.zeros_like(x0), where=y1 != y0)
    for start in range(first, last + 1, rows_per_block):
        rows = np.arange(start, min(start + rows_per_block, last + 1))
        yc = rows[:, None] + 0.5
        crosses = ((y0 <= yc) & (y1 > yc)) | ((y1 <= yc) & (y0 > yc))
        xs = np.where(crosses, x0 + (yc - y0) * slope, np.inf)
        xs.sort(axis=1)
        counts = crosses.sum(axis=1)
        for row, xr, n in zip(rows, xs, counts):
            # Columns j with xa <= j + 0.5 < xb for each (xa, xb) pair of sorted crossings.
            for xa, xb in zip(xr[0:n:2], xr[1:n:2]):
                ja = max(0, int(np.ceil(xa - 0.5)))
                jb = min(width, int(np.ceil(xb - 0.5)))
                if jb > ja:
                    mask[row, ja:jb] = value
