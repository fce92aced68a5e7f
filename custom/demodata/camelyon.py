"""Synthetic H&E lymph-node whole-slide images in the Camelyon16 formats.

Real Camelyon16 slides cannot be downloaded here, so the demo and the tests run on slides made by this module:

* a pyramidal, tiled, JPEG-compressed RGB TIFF (every level its own IFD, downsample 2 per level, resolution tags
  giving 0.243 um/px at level 0) that OpenSlide opens as ``generic-tiff``, like the Radboud/Utrecht scans;
* for tumour slides, an ASAP XML file with the lesion outlines as level-0 polygons in the Camelyon16 schema
  (group ``Tumor``, and ``_2`` exclusions of normal tissue inside a lesion);
* the release's folder layout (``training/tumor``, ``training/normal``, ``training/lesion_annotations``, or
  ``testing/images``, ``testing/lesion_annotations`` and ``testing/reference.csv``), or CAMELYON17's patients of
  five lymph nodes with their pN stages (``camelyon17/patient_XXX_node_Y.tif``, ``lesion_annotations`` and
  ``stage_labels.csv``: :func:`generate_camelyon17`).

The scene is procedural in level-0 coordinates: tissue sections are smooth random blobs on white glass; normal
lymph-node tissue is dense small dark lymphocyte nuclei in pink cytoplasm; metastases are sheets of large, pale,
pleomorphic nuclei with nucleoli. Lesions come in several sizes: isolated tumour cells (< 200 um), micro- and (on
large slides) macro-metastases. Every tile is rendered from the scene on its own (nuclei come from a hash of their
cell, not from a stored image), so slides of 100k x 200k pixels are written tile by tile in bounded memory, and
any region can be re-rendered for checks.

Two knobs make harder data (both off by default, which keeps the demo's slides as they were): a *centre*
(:mod:`demodata.centres`: one lab's stain and one scanner's colour, focus, noise and JPEG quality) and a
*difficulty* (tumour cells closer to lymphocytes; benign mimics such as germinal centres, histiocyte clusters and
sinuses; artefacts such as pen marks, folds, air bubbles and out-of-focus areas).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import multiprocessing
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tifffile
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist, squareform

from medcore.errors import UserError
from medcore.files import atomic_path, check_replaceable, first_line_is, write_text
from medcore.progress import Progress
from medcore.provenance import check_made_with
from metastasis.data.annotations import Annotation, rasterize, read_asap_xml, write_asap_xml
from metastasis.data.slide import SlideError, open_slide, read_rgb, slide_mpp
from metastasis.evaluation.staging import (PN_STAGES, SLIDE_LABELS, lesion_category, read_stage_csv, slide_label,
                                           stage_patients, write_stage_csv)

from .centres import CENTRES, REFERENCE_GLASS, Appearance, blur_margin, reference_stains
from .random_fields import item_rng, smooth_field

__all__ = ["CAMELYON_MPP", "REFERENCE_STAINS", "LESION_DIAMETERS_UM", "CAMELYON17_NODES", "SlideScene",
           "NoRoomError", "make_scene", "longest_diameter_um", "write_slide", "generate_dataset", "camelyon17_plan",
           "generate_camelyon17", "pyramid_shapes"]

logger = logging.getLogger(__name__)

CAMELYON_MPP = 0.243  # um per level-0 pixel of the Radboud / Utrecht scanners
_DESIGN_STEP = 64  # level-0 pixels per cell of the tissue design grid

# Colours (RGB) of the stains; per-slide factors vary them like stain batches do.
_CYTOPLASM_NORMAL = np.array([222.0, 162.0, 206.0])
_CYTOPLASM_TUMOUR = np.array([230.0, 168.0, 198.0])
_NUCLEUS_NORMAL = np.array([72.0, 42.0, 132.0])
_NUCLEUS_TUMOUR = np.array([146.0, 104.0, 182.0])
_NUCLEOLUS = np.array([84.0, 40.0, 118.0])


@dataclasses.dataclass(frozen=True)
class _CellGrid:
    """Nuclei on a jittered grid: one candidate nucleus per ``cell`` x ``cell`` level-0 pixels."""

    cell: float  # grid step (level-0 px)
    radius: tuple[float, float]  # nucleus radius range (level-0 px)
    density: float  # probability that a cell holds a nucleus
    elongation: float  # max axis ratio - 1
    salt: int

    def mean_coverage(self) -> float:
        """Expected share of area covered by nuclei (for rendering at low resolution)."""
        r_mean_sq = (self.radius[0] ** 2 + self.radius[0] * self.radius[1] + self.radius[1] ** 2) / 3
        return min(1.0, self.density * math.pi * r_mean_sq / self.cell ** 2)


# Lymphocytes: nuclei ~6-7 um across, ~8 um apart. Tumour cells: nuclei 10-16 um, ~20 um apart.
_LYMPHOCYTES = _CellGrid(cell=34.0, radius=(11.0, 15.0), density=0.85, elongation=0.15, salt=11)
_TUMOUR_CELLS = _CellGrid(cell=80.0, radius=(20.0, 33.0), density=0.95, elongation=0.5, salt=23)


@dataclasses.dataclass(frozen=True)
class _Tissue:
    """One kind of tissue: its nuclei and its colours (reference stain)."""

    grid: _CellGrid
    cytoplasm: np.ndarray
    nucleus: np.ndarray
    nucleoli: bool = False


_NORMAL = _Tissue(_LYMPHOCYTES, _CYTOPLASM_NORMAL, _NUCLEUS_NORMAL)

#: Benign structures of a lymph node that look partly like tumour (the ``difficulty`` knob adds them):
#: germinal centres (larger, paler, looser nuclei), histiocyte clusters (abundant pale cytoplasm, oval nuclei),
#: sinuses (sparse cells in pale, nearly empty space).
_MIMICS = {
    "germinal_centre": _Tissue(_CellGrid(cell=46.0, radius=(14.0, 19.0), density=0.8, elongation=0.3, salt=31),
                               np.array([226.0, 170.0, 206.0]), np.array([118.0, 82.0, 166.0])),
    "histiocytes": _Tissue(_CellGrid(cell=60.0, radius=(10.0, 14.0), density=0.7, elongation=0.7, salt=37),
                           np.array([236.0, 192.0, 216.0]), np.array([128.0, 94.0, 170.0])),
    "sinus": _Tissue(_CellGrid(cell=100.0, radius=(10.0, 14.0), density=0.3, elongation=0.3, salt=41),
                     np.array([240.0, 222.0, 234.0]), np.array([90.0, 60.0, 140.0])),
}


def _tumour_tissue(difficulty: float) -> _Tissue:
    """Tumour cells, closer to lymphocytes in size, spacing and colour as ``difficulty`` goes from 0 to 1."""
    if difficulty == 0:
        return _Tissue(_TUMOUR_CELLS, _CYTOPLASM_TUMOUR, _NUCLEUS_TUMOUR, nucleoli=True)
    contrast = 1.0 - 0.6 * difficulty
    grid = dataclasses.replace(_TUMOUR_CELLS, cell=80.0 - 25.0 * difficulty,
                               radius=(20.0 - 6.0 * difficulty, 33.0 - 10.0 * difficulty))
    return _Tissue(grid, _CYTOPLASM_NORMAL + contrast * (_CYTOPLASM_TUMOUR - _CYTOPLASM_NORMAL),
                   _NUCLEUS_NORMAL + contrast * (_NUCLEUS_TUMOUR - _NUCLEUS_NORMAL), nucleoli=True)


#: Artefacts of slide making (the ``difficulty`` knob adds them): ink of pen marks (optical density per RGB
#: channel, on glass and tissue alike), tissue folds (double thickness), air bubbles (thinner mount, dark rim),
#: out-of-focus areas (blur of this many level-0 pixels).
_INKS = (np.array([0.7, 0.2, 0.5]), np.array([0.6, 0.45, 0.12]), np.array([0.9, 0.9, 0.85]))  # green, blue, black
_FOLD_DENSITY = 1.9
_BUBBLE_DENSITY, _BUBBLE_RIM, _RIM = 0.6, 0.5, 12.0  # density factor inside, rim density, rim width (level-0 px)
_FOCUS_BLUR = 6.0

#: The generator's reference stain rows (:func:`~demodata.centres.reference_stains`).
REFERENCE_STAINS = reference_stains(_NUCLEUS_NORMAL, _CYTOPLASM_NORMAL)
_REFERENCE_LOOK = Appearance("reference", haematoxylin=tuple(REFERENCE_STAINS[0]), eosin=tuple(REFERENCE_STAINS[1]))


@dataclasses.dataclass
class SlideScene:
    """Everything that defines one synthetic slide; :meth:`render` draws any region of it at any downsample."""

    name: str
    width: int
    height: int
    seed: int
    tissue_field: np.ndarray  # design grid (rows, cols), tissue where > 0; cell (i, j) at level-0 (j, i) * step
    annotations: list[Annotation]
    stain: np.ndarray  # (2,) multiplicative factors: hematoxylin, eosin
    mpp: float = CAMELYON_MPP
    appearance: Appearance | None = None  # a centre's look; None: the reference colours
    tumour: _Tissue = dataclasses.field(default_factory=lambda: _tumour_tissue(0.0))
    mimics: list[tuple[str, Annotation]] = dataclasses.field(default_factory=list)  # (kind, outline)
    artefacts: list[tuple[str, Annotation, int]] = dataclasses.field(default_factory=list)  # (kind, outline, ink)

    def render(self, origin: tuple[int, int], size: tuple[int, int], downsample: float) -> np.ndarray:
        """RGB float (height, width, 3) in 0-255 of the region whose top-left level-0 pixel is ``origin``.

        Output pixel (i, j) shows level-0 area ``[x0 + j * d, x0 + (j + 1) * d)`` (rows alike). Downsamples of 2
        and 4 are rendered from 2x2 sub-samples per pixel; from 8 on, nuclei are blended in at their mean
        coverage (they are smaller than a pixel there), which avoids aliasing and keeps the mean colour. Artefacts
        and the centre's appearance come last; what blurs is rendered with a margin, so any tiling gives the same
        pixels.
        """
        if self.appearance is None and not self.artefacts:
            return self._tissue_colours(origin, size, downsample)
        look = self.appearance or _REFERENCE_LOOK
        focus = [a for kind, a, _ in self.artefacts if kind == "focus"]
        m = max(look.margin(downsample), blur_margin(_FOCUS_BLUR, downsample) if focus else 0)
        x0, y0 = origin[0] - m * downsample, origin[1] - m * downsample
        width, height = int(size[0]) + 2 * m, int(size[1]) + 2 * m
        rgb = self._tissue_colours((x0, y0), (width, height), downsample)
        tissue_od = -np.log(np.clip(rgb, 1.0, None) / REFERENCE_GLASS)
        ink = np.zeros_like(rgb)
        for kind, outline, colour in self.artefacts:
            inside = rasterize([outline], (x0, y0), (width, height), downsample).astype(bool)
            if not inside.any():
                continue
            if kind == "pen":
                ink[inside] += _INKS[colour]
            elif kind == "fold":
                tissue_od[inside] *= _FOLD_DENSITY
            elif kind == "bubble":  # the rim: the outline shrunk by a few microns, drawn geometrically (no seams)
                centre = outline.points.mean(axis=0)
                radius = float(np.linalg.norm(outline.points - centre, axis=1).mean())
                core = Annotation(kind, "Tumor", centre + (outline.points - centre) * max(0.0, 1 - _RIM / radius))
                rim = inside & ~rasterize([core], (x0, y0), (width, height), downsample).astype(bool)
                tissue_od[inside] *= _BUBBLE_DENSITY
                tissue_od[rim] += _BUBBLE_RIM
        rgb = look.apply(REFERENCE_GLASS * np.exp(-tissue_od), REFERENCE_STAINS, (x0, y0), downsample, ink)
        if focus:
            blurred = rasterize(focus, (x0, y0), (width, height), downsample).astype(bool)
            if blurred.any():
                sigma = _FOCUS_BLUR / downsample
                rgb[blurred] = ndimage.gaussian_filter(rgb, (sigma, sigma, 0), mode="nearest")[blurred]
        return rgb[m:m + int(size[1]), m:m + int(size[0])]

    def border_patches(self, count: int, size: int = 224, min_pixels: int = 1000) -> list[np.ndarray]:
        """Up to ``count`` level-0 RGB patches (size, size, 3) in 0-255 centred on the tissue's border, each
        holding at least ``min_pixels`` pixels of tissue (mean optical density above 0.25) and of glass (below
        0.08): for measuring what a colour change does to each. Taken at evenly spaced border points of a 1/32
        overview, so the same scene gives the same patches."""
        def mean_od(rgb: np.ndarray) -> np.ndarray:
            return -np.log(np.clip(rgb, 1, 255) / 255).mean(axis=2)

        tissue = mean_od(self.render((0, 0), (self.width // 32, self.height // 32), 32.0)) > 0.25
        inner = tissue & np.roll(tissue, 2, 0) & np.roll(tissue, -2, 0) & np.roll(tissue, 2, 1) & np.roll(tissue, -2, 1)
        rows, cols = np.nonzero(tissue & ~inner)
        patches = []
        for i in np.linspace(0, len(rows) - 1, min(len(rows), 4 * count)).astype(int):
            rgb = self.render((int(cols[i]) * 32 + 16 - size // 2, int(rows[i]) * 32 + 16 - size // 2), (size, size),
                              1.0)
            od = mean_od(rgb)
            if (od > 0.25).sum() >= min_pixels and (od < 0.08).sum() >= min_pixels:  # some borders are pale tissue
                patches.append(rgb)
                if len(patches) == count:
                    break
        return patches

    def _tissue_colours(self, origin: tuple[float, float], size: tuple[int, int], downsample: float) -> np.ndarray:
        """The tissue (normal, mimics, tumour) in the reference colours, before artefacts and appearance."""
        width, height = int(size[0]), int(size[1])
        x0, y0 = origin
        sub = 2 if 2 <= downsample < 8 else 1
        step = downsample / sub
        xs = x0 + (np.arange(width * sub, dtype=np.float64) + 0.5) * step
        ys = y0 + (np.arange(height * sub, dtype=np.float64) + 0.5) * step
        tissue = ndimage.map_coordinates(
            self.tissue_field, np.meshgrid(ys / _DESIGN_STEP, xs / _DESIGN_STEP, indexing="ij"), order=1,
            mode="nearest",
        ) > 0
        tumour = rasterize(self.annotations, (x0, y0), (width * sub, height * sub), step).astype(bool) & tissue
        kinds = []
        normal = tissue & ~tumour
        for name, outline in self.mimics:
            inside = rasterize([outline], (x0, y0), (width * sub, height * sub), step).astype(bool) & normal
            if inside.any():
                kinds.append((_MIMICS[name], inside))
                normal &= ~inside
        kinds = [(_NORMAL, normal), *kinds, (self.tumour, tumour)]
        rgb = np.broadcast_to(REFERENCE_GLASS, (*tissue.shape, 3)).copy()
        hema, eosin = self.stain
        for kind, in_grid in kinds:
            grid, cyto, nucleus = kind.grid, kind.cytoplasm, kind.nucleus
            if not in_grid.any():
                continue
            cyto_c = 255 - (255 - cyto) * eosin
            nuc_c = 255 - (255 - nucleus) * hema
            if downsample >= 8:
                cover = grid.mean_coverage()
                rgb[in_grid] = cover * nuc_c + (1 - cover) * cyto_c
                continue
            cover, shade, nucleolus = (a[in_grid] for a in self._nuclei(grid, xs, ys))
            colour = nuc_c * shade[:, None]
            if kind.nucleoli:
                colour = np.where(nucleolus[:, None], 255 - (255 - _NUCLEOLUS) * hema, colour)
            rgb[in_grid] = cover[:, None] * colour + (1 - cover[:, None]) * cyto_c
        if sub > 1:
            rgb = rgb.reshape(height, sub, width, sub, 3).mean(axis=(1, 3))
        return rgb

    def _nuclei(self, grid: _CellGrid, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coverage (0..1, anti-aliased edge), shade and nucleolus flag of the nuclei over the sample grid.

        ``xs`` (W,) and ``ys`` (H,) are the ascending level-0 coordinates of the sample columns and rows. Each
        nucleus is drawn into its own bounding box only (a few hundred small boxes per tile instead of every pixel
        against every neighbouring cell); where nuclei overlap, the one covering a pixel more wins, ties going to
        the earlier cell in row-major order, so a pixel's colour does not depend on how the slide is tiled.
        """
        cover = np.zeros((len(ys), len(xs)), np.float32)
        shade = np.ones_like(cover)
        nucleolus = np.zeros(cover.shape, bool)
        # A nucleus stays within one cell of its own (centre offset <= 0.85 cell, radius x aspect < 0.65 cell).
        cx, cy = np.meshgrid(np.arange(np.floor(xs[0] / grid.cell) - 1, np.floor(xs[-1] / grid.cell) + 2),
                             np.arange(np.floor(ys[0] / grid.cell) - 1, np.floor(ys[-1] / grid.cell) + 2))
        cx, cy = cx.ravel().astype(np.int64), cy.ravel().astype(np.int64)
        u = _hash_uniform(cx, cy, self.seed, grid.salt, 6)
        centre_x = (cx + 0.15 + 0.7 * u[0]) * grid.cell
        centre_y = (cy + 0.15 + 0.7 * u[1]) * grid.cell
        radius = grid.radius[0] + u[2] * (grid.radius[1] - grid.radius[0])
        aspect = 1.0 + grid.elongation * u[3]
        cos, sin = np.cos(u[4] * math.pi), np.sin(u[4] * math.pi)
        reach = radius * aspect + 1.0
        present = u[5] < grid.density
        j0s = np.searchsorted(xs, centre_x - reach)
        j1s = np.searchsorted(xs, centre_x + reach)
        i0s = np.searchsorted(ys, centre_y - reach)
        i1s = np.searchsorted(ys, centre_y + reach)
        for k in np.nonzero(present & (j1s > j0s) & (i1s > i0s))[0]:
            i0, i1, j0, j1 = i0s[k], i1s[k], j0s[k], j1s[k]
            ddx = (xs[j0:j1] - centre_x[k])[None, :]
            ddy = (ys[i0:i1] - centre_y[k])[:, None]
            along = (ddx * cos[k] + ddy * sin[k]) / aspect[k]
            across = (ddy * cos[k] - ddx * sin[k]) * aspect[k]
            dist = np.sqrt(along ** 2 + across ** 2)
            c = np.clip(radius[k] - dist + 0.5, 0.0, 1.0)
            box = cover[i0:i1, j0:j1]
            better = c > box
            box[better] = c[better]
            shade[i0:i1, j0:j1][better] = 0.85 + 0.3 * u[0][k]
            nucleolus[i0:i1, j0:j1][better] = (dist < 0.22 * radius[k])[better]
        return cover, shade, nucleolus


def _hash_uniform(cx: np.ndarray, cy: np.ndarray, seed: int, salt: int, count: int) -> list[np.ndarray]:
    """``count`` uniform [0, 1) values per integer cell (cx, cy), a pure function of the cell, seed and salt."""
    with np.errstate(over="ignore"):
        h = (cx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ \
            (cy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
        h ^= np.uint64((seed * 0x165667B1 + salt * 0x27D4EB2F) & 0xFFFFFFFFFFFFFFFF)
        out = []
        for k in range(count):
            z = h + np.uint64(k + 1) * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            out.append((z >> np.uint64(11)).astype(np.float64) / float(1 << 53))
    return out


def make_scene(name: str, width: int, height: int, tumour: bool, seed: int, index: int, centre: str | None = None,
               difficulty: float = 0.0, classes: Sequence[str] | None = None) -> SlideScene:
    """Design one slide: tissue sections and, for tumour slides, lesions of several sizes.

    The scene depends only on (width, height, tumour, seed, index, centre, difficulty, classes). Tumour slides get
    one or two isolated-tumour-cell clusters (< 200 um), one or two micro-metastases (0.25-2 mm) and, when the
    tissue is large enough, a macro-metastasis (> 2 mm); some lesions carry a ``_2`` exclusion of normal tissue.

    ``classes``: instead, exactly one lesion per entry, of that CAMELYON17 class (``"itc"``, ``"micro"``,
    ``"macro"``; a tumour slide only), each outline's longest diameter drawn within :data:`LESION_DIAMETERS_UM`
    (checked after placing), on one tissue section (room for large lesions on small slides); a lesion that does
    not fit raises a :class:`NoRoomError` (:func:`generate_camelyon17` makes such slides larger). None (the
    default) leaves the scene exactly as without the argument.

    ``centre``: a key of :data:`~demodata.centres.CENTRES` (that centre's stain, scanner colour, focus, noise
    and JPEG quality), or None for the reference look. ``difficulty`` (0 to 1) makes tumour cells look more like
    lymphocytes, and adds benign mimics (germinal centres, histiocyte clusters, sinuses) and artefacts (pen marks,
    folds, air bubbles, out-of-focus areas), more of them the higher it is. At 0 and without a
    centre, slides are those of earlier versions of the generator, pixel for pixel.
    """
    if width < 512 or height < 512:
        raise UserError(f"slides must be at least 512 x 512 pixels, got {width} x {height}")
    if centre is not None and centre not in CENTRES:
        raise UserError(f"unknown centre {centre!r} (known: {', '.join(CENTRES)})")
    if not 0 <= difficulty <= 1:
        raise UserError(f"difficulty must be between 0 and 1, got {difficulty}")
    if classes is not None and (not tumour or not classes or any(c not in LESION_DIAMETERS_UM for c in classes)):
        raise UserError(f"lesion classes must be a non-empty list of {', '.join(LESION_DIAMETERS_UM)} on a tumour "
                        f"slide, got {list(classes)!r}{'' if tumour else ' on a slide without tumour'}")
    rng = item_rng(seed, 1 if tumour else 0, index)
    rows, cols = math.ceil(height / _DESIGN_STEP) + 1, math.ceil(width / _DESIGN_STEP) + 1
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64) * _DESIGN_STEP
    field = np.full((rows, cols), -1.0)
    n_sections = int(rng.integers(1, 4))
    # with lesion classes, one section nearly as large as the slide, its axes nearly along the slide's: room for
    # the largest lesions a slide of that size can hold
    fill, turn = ((0.28, 0.4), (0, math.pi)) if classes is None else ((0.46, 0.5), (-0.1, 0.1))
    if classes is not None:
        n_sections = 1
    for k in range(n_sections):
        # Sections side by side along the long axis, each an irregular ellipse.
        t = (k + 0.5) / n_sections
        cx = width * (t if width >= height else rng.uniform(0.4, 0.6))
        cy = height * (t if height > width else rng.uniform(0.4, 0.6))
        rx = (width / (n_sections if width >= height else 1)) * rng.uniform(*fill)
        ry = (height / (n_sections if height > width else 1)) * rng.uniform(*fill)
        angle = rng.uniform(*turn)
        dx, dy = xx - cx, yy - cy
        u = (dx * math.cos(angle) + dy * math.sin(angle)) / rx
        v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ry
        field = np.maximum(field, 1.0 - np.sqrt(u ** 2 + v ** 2))
    field += 0.12 * smooth_field(field.shape, rng, (max(2, rows // 12), max(2, cols // 12)))
    field = field.astype(np.float32)

    annotations: list[Annotation] = []
    if tumour:
        annotations = _lesions(field, width, height, rng, classes)
    stain = rng.uniform(0.92, 1.08, 2)
    mimics, artefacts = _difficulties(field, width, height, annotations, difficulty, item_rng(seed, 7, index))
    return SlideScene(name=name, width=width, height=height, seed=int(seed) * 100003 + index,
                      tissue_field=field, annotations=annotations, stain=stain,
                      appearance=CENTRES[centre] if centre else None, tumour=_tumour_tissue(difficulty),
                      mimics=mimics, artefacts=artefacts)


#: Mimics: expected number per mm^2 of tissue at difficulty 1, (kind, rate, diameter range in um, elongation range).
_MIMIC_RATES = (("germinal_centre", 1.0, (150, 500), (1.0, 1.3)), ("histiocytes", 1.0, (80, 300), (1.0, 1.6)),
                ("sinus", 0.7, (150, 600), (2.5, 4.0)))
#: Artefacts: expected number per slide at difficulty 1 (a slide has a few, whatever its size).
_ARTEFACT_RATES = (("pen", 1.0), ("fold", 0.7), ("bubble", 0.7), ("focus", 1.0))


def _difficulties(field: np.ndarray, width: int, height: int, lesions: list[Annotation], difficulty: float,
                  rng: np.random.Generator) -> tuple[list, list]:
    """Mimics (on tissue, apart from the lesions) and artefacts of a slide, their numbers drawn (Poisson) from
    the rates above times ``difficulty`` (mimics: times the tissue area, at least 1 mm^2)."""
    if difficulty == 0:
        return [], []
    um = 1.0 / CAMELYON_MPP
    side = min(width, height)
    tissue_mm2 = max(1.0, float((field > 0).sum()) * (_DESIGN_STEP * CAMELYON_MPP / 1000) ** 2)
    inner = np.argwhere(field > 0.05)
    lesion_boxes = [(a.points.min(0), a.points.max(0)) for a in lesions if not a.is_exclusion]
    mimics = []
    for kind, rate, (d_min, d_max), (e_min, e_max) in _MIMIC_RATES:
        for _ in range(rng.poisson(rate * difficulty * tissue_mm2)):
            for _attempt in range(20):
                i, j = inner[rng.integers(len(inner))]
                cx, cy = (j + rng.uniform(-0.5, 0.5)) * _DESIGN_STEP, (i + rng.uniform(-0.5, 0.5)) * _DESIGN_STEP
                radius = rng.uniform(d_min, d_max) * um / 2
                if all(cx + radius < lo[0] or cx - radius > hi[0] or cy + radius < lo[1] or cy - radius > hi[1]
                       for lo, hi in lesion_boxes):
                    outline = _turn(_blob(0.0, 0.0, radius, rng) * (rng.uniform(e_min, e_max), 1.0),
                                    rng.uniform(0, math.pi)) + (cx, cy)
                    mimics.append((kind, Annotation(kind, "Tumor", outline)))
                    break
    artefacts = []
    for kind, rate in _ARTEFACT_RATES:
        for _ in range(rng.poisson(rate * difficulty)):
            i, j = inner[rng.integers(len(inner))]
            cx, cy = (j + 0.5) * _DESIGN_STEP, (i + 0.5) * _DESIGN_STEP
            angle = rng.uniform(0, math.pi)
            if kind == "pen":  # a stroke a quarter to half the slide's shorter side long, often onto the glass
                length = rng.uniform(0.25, 0.5) * side
                thick = length / rng.uniform(5, 8)
                outline = _turn(_blob(0.0, 0.0, thick / 2, rng) * (length / thick, 1.0), angle) + (cx, cy)
            elif kind == "fold":  # a narrow band of double thickness 1-3 mm long
                length, thick = rng.uniform(1000, 3000) * um, rng.uniform(60, 200) * um
                outline = _turn(_blob(0.0, 0.0, thick / 2, rng) * (length / thick, 1.0), angle) + (cx, cy)
            elif kind == "bubble":
                outline = _circle(cx, cy, rng.uniform(150, 700) * um / 2)
            else:  # focus: an out-of-focus patch 0.3-1.5 mm across
                outline = _blob(cx, cy, rng.uniform(300, 1500) * um / 2, rng)
            artefacts.append((kind, Annotation(kind, "Tumor", outline), int(rng.integers(len(_INKS)))))
    return mimics, artefacts


def _turn(points: np.ndarray, angle: float) -> np.ndarray:
    """Points (N, 2) turned by ``angle`` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _circle(cx: float, cy: float, radius: float) -> np.ndarray:
    theta = np.linspace(0, 2 * math.pi, int(np.clip(radius / 4, 24, 256)), endpoint=False)
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


#: Longest diameters (um) of the lesions of scenes made with lesion ``classes`` (:func:`make_scene`), per
#: CAMELYON17 class: well inside its limits (ITC up to 200 um, micro-metastasis up to 2 mm, macro-metastasis above),
#: farther from them than measuring a lesion on a probability map can err (a map pixel's diagonal, 11 um at stride
#: 32), so that a perfect map gives every lesion the class it was made with.
LESION_DIAMETERS_UM = {"itc": (40.0, 150.0), "micro": (300.0, 1500.0), "macro": (2200.0, 3000.0)}


class NoRoomError(UserError):
    """A lesion of a requested class does not fit the slide's tissue (:func:`make_scene` with ``classes``)."""


def longest_diameter_um(points: np.ndarray, mpp: float = CAMELYON_MPP) -> float:
    """A polygon's longest diameter in microns: the largest distance between two of its level-0 vertices (N, 2),
    as CAMELYON17 measures a lesion (:func:`metastasis.evaluation.staging.lesion_category`)."""
    points = np.asarray(points, np.float64)
    i, j = _farthest_pair(points)
    return float(np.hypot(*(points[i] - points[j]))) * mpp


def _farthest_pair(points: np.ndarray) -> tuple[int, int]:
    """Indices of the two points (N >= 2, 2) farthest apart (over the convex hull's vertices)."""
    try:
        index = ConvexHull(points).vertices if len(points) > 3 else np.arange(len(points))
    except QhullError:  # all on a line: every point
        index = np.arange(len(points))
    distances = squareform(pdist(points[index]))
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    return int(index[i]), int(index[j])


def _lesions(field: np.ndarray, width: int, height: int, rng: np.random.Generator,
             classes: Sequence[str] | None = None) -> list[Annotation]:
    """Lesion polygons of several sizes (or one per entry of ``classes``, see :func:`make_scene`), placed well
    inside tissue and apart from each other."""
    um = 1.0 / CAMELYON_MPP  # level-0 pixels per micron
    inner = np.argwhere(field > 0.12)  # design cells deep inside tissue
    if len(inner) == 0:
        raise UserError("the slide has no tissue deep enough to place lesions; make it larger")
    depth_um = float(field.max()) * min(width, height) * 0.3 / um  # rough size of the tissue, in microns
    if classes is None:
        sizes = [("itc", rng.uniform(40, 150)) for _ in range(int(rng.integers(1, 3)))]
        sizes += [("micro", rng.uniform(250, max(260.0, min(2000.0, depth_um))))
                  for _ in range(int(rng.integers(1, 3)))]
        if depth_um > 2500:
            sizes.append(("macro", rng.uniform(2100, min(6000.0, depth_um))))
        smallest_um = {"itc": 20.0, "micro": 210.0, "macro": 2010.0}  # keep each lesion in its class when shrinking
    else:  # longest diameters, each in its class's range and, where it allows, below 0.8 of the widest tissue disc
        rows, cols = np.indices(field.shape) * _DESIGN_STEP
        tissue = (field > 0.02) & (rows < height) & (cols < width)
        clearance = ndimage.distance_transform_edt(np.pad(tissue, 1))[1:-1, 1:-1] * _DESIGN_STEP  # level-0 px
        room_um = 1.6 * float(clearance.max()) / um
        bounds = [LESION_DIAMETERS_UM[kind] for kind in classes]
        sizes = [(kind, rng.uniform(lo, max(lo, min(hi, room_um)))) for kind, (lo, hi) in zip(classes, bounds)]
        smallest_um = {kind: lo for kind, (lo, _) in zip(classes, bounds)}
    # lesions keep apart by this factor of their radii plus a gap; with classes, outlines are scaled to their
    # longest diameter (no point farther than 1.08 radius from the centre) and kept just far enough apart not to
    # touch in a probability map (50 um: 6 map pixels at stride 32)
    spread, gap_um = (1.5, 120.0) if classes is None else (1.1, 50.0)
    placed: list[tuple[float, float, float]] = []
    annotations = []
    for kind, diameter_um in sorted(sizes, key=lambda s: -s[1]):
        radius = diameter_um * um / 2
        centres = inner
        for attempt in range(300):
            if attempt and attempt % 50 == 0:  # no room: try a smaller lesion of the same class
                radius = max(radius * 0.85, smallest_um[kind] * um / 2)
            if classes is not None:  # centres far enough from the tissue's edge (every point of a scaled outline
                # lies 0.46 to 1.08 radius from its centre)
                centres = inner[clearance[inner[:, 0], inner[:, 1]] >= 0.46 * radius - _DESIGN_STEP]
                if len(centres) == 0:
                    continue
            i, j = centres[rng.integers(len(centres))]
            cx, cy = (j + rng.uniform(-0.5, 0.5)) * _DESIGN_STEP, (i + rng.uniform(-0.5, 0.5)) * _DESIGN_STEP
            outline = _blob(cx, cy, radius, rng)
            if classes is not None:  # scaled about its centre to a longest diameter of 2 radius exactly, that
                # diameter turned to within 0.25 rad of the slide's longer side (room for large lesions)
                a, b = outline[list(_farthest_pair(outline))]
                along = 0.0 if width >= height else math.pi / 2
                turn = along + rng.uniform(-0.25, 0.25) - math.atan2(b[1] - a[1], b[0] - a[0])
                scale = 2 * radius / float(np.hypot(*(b - a)))

                def shape(points: np.ndarray) -> np.ndarray:
                    return _turn((points - (cx, cy)) * scale, turn) + (cx, cy)

                outline = shape(outline)
            apart = all(math.hypot(cx - px, cy - py) > spread * (radius + pr) + gap_um * um
                        for px, py, pr in placed)
            if apart and _inside_tissue(outline, field, width, height):
                break
        else:
            if classes is not None:
                raise NoRoomError(f"no room for a {kind} lesion of {smallest_um[kind]:g} um or more on the {width} x "
                                  f"{height} slide's tissue; make the slide larger")
            continue  # no room for this lesion on a small slide
        placed.append((cx, cy, radius))
        annotations.append(Annotation(f"Annotation {len(annotations)}", "Tumor", outline))
        if classes is not None:  # the class a user measures
            measured, (lo, hi) = longest_diameter_um(outline), LESION_DIAMETERS_UM[kind]
            if not lo * 0.999 <= measured <= hi * 1.001 or lesion_category(measured) != kind:  # pragma: no cover
                raise AssertionError(f"a {kind} lesion measures {measured:.1f} um")  # a bug, not an input
        if kind != "itc" and rng.random() < 0.5:
            hole = _blob(cx + radius * 0.15, cy - radius * 0.1, radius * 0.2, rng)
            if classes is not None:  # where it lies in the outline without classes
                hole = shape(hole)
            annotations.append(Annotation(f"Annotation {len(annotations)}", "_2", hole))
    return annotations


def _inside_tissue(outline: np.ndarray, field: np.ndarray, width: int, height: int) -> bool:
    """Whether a polygon lies on the slide and its whole outline on tissue."""
    if outline[:, 0].min() < 0 or outline[:, 1].min() < 0 or outline[:, 0].max() >= width or \
            outline[:, 1].max() >= height:
        return False
    values = ndimage.map_coordinates(field, [outline[:, 1] / _DESIGN_STEP, outline[:, 0] / _DESIGN_STEP], order=1)
    return bool((values > 0.02).all())


def _blob(cx: float, cy: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular closed outline (N, 2) around (cx, cy) with mean radius ``radius``."""
    n = int(np.clip(radius / 8, 16, 96))
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 6):
        r += rng.uniform(0, 0.16 / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    stretch = rng.uniform(0.75, 1.25)
    return np.stack([cx + radius * r * np.cos(theta) * stretch, cy + radius * r * np.sin(theta) / stretch], axis=1)


def pyramid_shapes(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level: halved (rounded up) until the larger side is at most 256."""
    shapes = [(width, height)]
    while max(shapes[-1]) > 256:
        w, h = shapes[-1]
        shapes.append(((w + 1) // 2, (h + 1) // 2))
    return shapes


_WORKER_SCENE: SlideScene | None = None


def _init_worker(scene: SlideScene) -> None:
    global _WORKER_SCENE
    _WORKER_SCENE = scene


def _render_tile(args: tuple[int, int, int, int]) -> np.ndarray:
    """One tile of the pyramid; (x, y) is its top-left pixel in the level's own pixels."""
    level, x, y, tile = args
    scene = _WORKER_SCENE
    assert scene is not None
    d = 2 ** level
    rgb = scene.render((x * d, y * d), (tile, tile), d)
    sigma = scene.appearance.noise if scene.appearance else 3.0
    noise = item_rng(scene.seed, level, x, y).normal(0.0, sigma, rgb.shape)
    return np.clip(np.rint(rgb + noise), 0, 255).astype(np.uint8)


def write_slide(scene: SlideScene, path: str | Path, tile: int = 512, quality: int | None = None,
                workers: int = 1, made_with: Mapping[str, Any] | None = None) -> Path:
    """Write ``scene`` as a pyramidal tiled JPEG TIFF at ``path`` (atomically), tile by tile.

    ``quality``: JPEG quality; None: the scene's centre's (90 without a centre). ``made_with``: the generator's
    settings, recorded in the slide's description (:func:`slide_made_with` reads them back).

    Each level is its own IFD (level 0 first, then reduced-resolution subfiles), so OpenSlide reads it as a
    ``generic-tiff`` pyramid. Memory stays bounded by a few tiles per worker whatever the slide size.
    """
    if tile <= 0 or tile % 16:
        raise UserError(f"TIFF tile size must be a positive multiple of 16, got {tile}")
    shapes = pyramid_shapes(scene.width, scene.height)
    n_tiles = sum(math.ceil(w / tile) * math.ceil(h / tile) for w, h in shapes)
    progress_every = max(1, n_tiles // 10)
    res = 1e4 / scene.mpp  # pixels per centimetre
    if quality is None:
        quality = scene.appearance.jpeg_quality if scene.appearance else 90
    done = 0

    def tiles(level: int, pool) -> Iterator[np.ndarray]:
        nonlocal done
        w, h = shapes[level]
        # Tile coordinates here are in this level's pixels; the renderer wants level-0 origins.
        specs = [(level, tx * tile, ty * tile, tile) for ty in range(math.ceil(h / tile))
                 for tx in range(math.ceil(w / tile))]
        results = pool.imap(_render_tile, specs, chunksize=4) if pool else map(_render_tile, specs)
        for rgb in results:
            done += 1
            if done % progress_every == 0 or done == n_tiles:
                logger.info("%s: %d/%d tiles (%.0f%%)", scene.name, done, n_tiles, 100.0 * done / n_tiles)
            yield rgb

    _init_worker(scene)
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (scene,)) if workers > 1 else None
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for level, (w, h) in enumerate(shapes):
                tif.write(
                    tiles(level, pool), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                    compression="jpeg", compressionargs={"level": quality}, resolution=(res, res),
                    resolutionunit="CENTIMETER", subfiletype=1 if level else 0, metadata=None,
                    description=(f"{SYNTHETIC_DESCRIPTION} {scene.name}" + (
                        f" {_MADE_WITH}{json.dumps(dict(made_with), sort_keys=True)}" if made_with else ""))
                    if level == 0 else None,
                )
    finally:
        if pool:
            pool.close()
            pool.join()
    return Path(path)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where the Camelyon16 release keeps slides and annotations, per split (and CAMELYON17's, ``camelyon17``)."""

    split: str

    def slide(self, name: str, tumour: bool) -> Path:
        if self.split == "testing":
            return Path("testing/images") / f"{name}.tif"
        if self.split == "camelyon17":
            return Path("camelyon17") / f"{name}.tif"
        return Path("training") / ("tumor" if tumour else "normal") / f"{name}.tif"

    def annotation(self, name: str) -> Path:
        return Path(self.split) / "lesion_annotations" / f"{name}.xml"


def _names(split: str, n_tumour: int, n_normal: int, seed: int) -> list[tuple[str, bool]]:
    if split == "training":
        return [(f"tumor_{i + 1:03d}", True) for i in range(n_tumour)] + \
               [(f"normal_{i + 1:03d}", False) for i in range(n_normal)]
    # The test set mixes tumour and normal slides under neutral names.
    kinds = [True] * n_tumour + [False] * n_normal
    item_rng(seed, 4242).shuffle(kinds)
    return [(f"test_{i + 1:03d}", t) for i, t in enumerate(kinds)]


#: Marks what the generator writes (the slide's TIFF description, a comment in its XML, the header of
#: reference.csv), so that a later run replaces only its own files and never a real slide of the same name.
SYNTHETIC_DESCRIPTION = "synthetic Camelyon16-format slide"
_REFERENCE_HEADER = "name,class"


def is_synthetic_slide(path: Path) -> bool:
    """Whether ``path`` is a slide this generator wrote (its first TIFF page's description says so)."""
    try:
        with tifffile.TiffFile(path) as tif:
            return (tif.pages[0].description or "").startswith(SYNTHETIC_DESCRIPTION)
    except Exception:  # not a TIFF, unreadable: not ours
        return False


#: Where a slide's description records the generator's settings (after the name).
_MADE_WITH = "made_with="


def slide_made_with(path: Path) -> dict | None:
    """The settings a synthetic slide records (:func:`write_slide`), or None (not recorded, not ours)."""
    try:
        with tifffile.TiffFile(path) as tif:
            description = tif.pages[0].description or ""
    except Exception:  # not a TIFF, unreadable: nothing recorded
        return None
    if not description.startswith(SYNTHETIC_DESCRIPTION) or _MADE_WITH not in description:
        return None
    try:
        recorded = json.loads(description.split(_MADE_WITH, 1)[1])
    except ValueError:
        return None
    return recorded if isinstance(recorded, dict) else None


def _is_synthetic_xml(path: Path) -> bool:
    with open(path, "rb") as handle:
        return SYNTHETIC_DESCRIPTION.encode() in handle.read(512)


def generate_dataset(root: str | Path, n_tumour: int, n_normal: int, width: int, height: int, seed: int = 0,
                     split: str = "training", tile: int = 512, workers: int = 1,
                     overwrite: bool = False, centre: str | None = None, difficulty: float = 0.0) -> list[Path]:
    """Write Camelyon16-format slides (and annotations) under ``root`` in the release layout; return slide paths.

    ``split="training"`` writes ``training/tumor/tumor_NNN.tif``, ``training/normal/normal_NNN.tif`` and
    ``training/lesion_annotations/tumor_NNN.xml``; ``split="testing"`` writes ``testing/images/test_NNN.tif``,
    ``testing/lesion_annotations/test_NNN.xml`` for the tumour slides and ``testing/reference.csv``
    (``name,class``). Each slide is verified by reading it back with OpenSlide (levels, size, resolution and
    pixels against the scene) before the next one starts. Existing slides are kept unless ``overwrite``. Only
    files this generator wrote are ever replaced: a slide, annotation or ``reference.csv`` of the same name that it
    did not write (a real data set) stops the run before anything is written. ``centre`` and ``difficulty``: see
    :func:`make_scene`. CAMELYON17's layout (patients, lymph nodes, pN stages): :func:`generate_camelyon17`.
    """
    if split not in ("training", "testing"):
        raise UserError(f"split must be 'training' or 'testing', got {split!r}")
    names = _names(split, n_tumour, n_normal, seed)
    if not names:
        raise UserError("nothing to generate: no tumour and no normal slides requested")
    root = Path(root)
    layout = _Layout(split)

    def made_with(tumour: bool) -> dict:
        """What decides a slide: a kept slide must have been made with the same (the seed and the counts decide
        which test slides have tumour, so a rerun could otherwise keep a normal slide its reference calls Tumor)."""
        return {"width": width, "height": height, "seed": seed, "centre": centre, "difficulty": difficulty,
                "tumour": tumour}

    jobs = [_Job(name, root / layout.slide(name, tumour), root / layout.annotation(name), tumour, made_with(tumour),
                 functools.partial(make_scene, name, width, height, tumour, seed, index, centre, difficulty))
            for index, (name, tumour) in enumerate(names)]
    reference = root / "testing" / "reference.csv"
    paths = _write_slides(jobs, tile, workers, overwrite,
                          [(reference, "synthetic reference.csv", first_line_is(_REFERENCE_HEADER))]
                          if split == "testing" else [])
    if split == "testing":
        rows = "".join(f"{name},{'Tumor' if t else 'Normal'}\n" for name, t in names)
        write_text(reference, f"{_REFERENCE_HEADER}\n" + rows)
    return paths


@dataclasses.dataclass(frozen=True)
class _Job:
    """One slide to write: its name, files, settings record (:func:`write_slide`'s ``made_with``) and design."""

    name: str
    path: Path
    xml: Path
    tumour: bool
    made_with: dict
    design: Callable[[], SlideScene]


def _write_slides(jobs: Sequence[_Job], tile: int, workers: int, overwrite: bool,
                  also: Sequence[tuple[Path, str, Callable[[Path], bool]]] = ()) -> list[Path]:
    """Write each job's slide (then its annotations, or remove a stale XML of ours), verify it, and return the
    slide paths. Existing slides made with the same settings are kept unless ``overwrite``; before anything is
    written, every file to replace, and each ``(path, what, recognise)`` of ``also`` (files the caller writes
    afterwards), must be this generator's (:func:`~medcore.files.check_replaceable`)."""
    todo = []
    for job in jobs:
        keep = job.path.is_file() and not overwrite and (job.xml.is_file() or not job.tumour)
        if keep:
            check_made_with(job.path, slide_made_with(job.path), job.made_with,
                            "pass --overwrite to regenerate the slides, or choose another --out")
        else:
            check_replaceable(job.path, "synthetic slide", is_synthetic_slide)
            check_replaceable(job.xml, "synthetic annotation file", _is_synthetic_xml)
        todo.append((job, keep))
    for path, what, recognise in also:
        check_replaceable(path, what, recognise)
    progress = Progress(len(todo), "slides", logger)
    for job, keep in todo:
        if keep:
            progress.step(f"kept existing {job.path.name}")
            continue
        scene = job.design()
        write_slide(scene, job.path, tile=tile, workers=workers, made_with=job.made_with)  # first: an interrupted
        # slide leaves no orphan XML
        if scene.annotations:
            write_asap_xml(job.xml, scene.annotations, comment=f"{SYNTHETIC_DESCRIPTION} {job.name}")
        elif job.xml.is_file():  # the generator's own (checked above) XML of a slide that had tumour before
            job.xml.unlink()
        verify_slide(scene, job.path, job.xml if scene.annotations else None)
        lesions = sum(not a.is_exclusion for a in scene.annotations)
        progress.step(f"wrote {job.path.name} {scene.width}x{scene.height}, {lesions} lesion(s)")
    return [job.path for job in jobs]


#: CAMELYON17's lymph nodes per patient (one slide each).
CAMELYON17_NODES = 5


def camelyon17_plan(patients: int, nodes: int = CAMELYON17_NODES, seed: int = 0) -> list[tuple[str, str, list]]:
    """What :func:`generate_camelyon17` makes: per patient ``(name, planned pN stage, [(node slide name, lesion
    classes), ...])``, a node without classes being negative.

    Patient ``k`` (``patient_XXX``, from 000) is planned the stage ``k`` modulo 5 on CAMELYON17's scale
    (:data:`~metastasis.evaluation.staging.PN_STAGES`: pN0, pN0(i+), pN1mi, pN1, pN2; pN2 needs four nodes or more
    and is skipped with fewer), so any five patients in a row hold every stage. Its nodes' labels are drawn (from
    ``seed`` and ``k``) to realise it: pN0(i+) 1-3 nodes with ITCs; pN1mi 1 to all nodes with micro-metastases;
    pN1 1-3 and pN2 4 or more positive nodes, one of them with a macro-metastasis and the others with
    micro-metastases; the remaining nodes of pN1mi, pN1 and pN2 patients are negative or (30 %) hold ITCs. A node
    holds one lesion of its label's class: a macro-metastasis alone (it fills the node's tissue), a
    micro-metastasis sometimes (50 %) beside an ITC, and an ITC node one or two ITCs.
    """
    if patients < 1 or nodes < 1:
        raise UserError(f"nothing to generate: {patients} patients of {nodes} lymph nodes each requested")
    stages = [stage for stage in PN_STAGES if stage != "pN2" or nodes >= 4]
    plan = []
    for k in range(patients):
        stage = stages[k % len(stages)]
        rng = item_rng(seed, 1717, k)
        order = [int(i) for i in rng.permutation(nodes)]
        labels = ["negative"] * nodes
        if stage == "pN0(i+)":
            for i in order[:int(rng.integers(1, min(3, nodes) + 1))]:
                labels[i] = "itc"
        elif stage != "pN0":
            low, high = {"pN1mi": (1, nodes), "pN1": (1, min(3, nodes)), "pN2": (4, nodes)}[stage]
            positive = int(rng.integers(low, high + 1))
            for rank, i in enumerate(order):
                if rank < positive:
                    labels[i] = "macro" if rank == 0 and stage != "pN1mi" else "micro"
                elif rng.random() < 0.3:
                    labels[i] = "itc"
        name = f"patient_{k:03d}"
        node_classes = []
        for j, label in enumerate(labels):
            if label == "negative":
                classes: tuple[str, ...] = ()
            elif label == "itc":
                classes = ("itc",) * int(rng.integers(1, 3))
            elif label == "micro":
                classes = ("micro",) + (("itc",) if rng.random() < 0.5 else ())
            else:  # alone: a macro-metastasis fills the node's section
                classes = ("macro",)
            node_classes.append((f"{name}_node_{j}", classes))
        plan.append((name, stage, node_classes))
    return plan


def _node_scene(name: str, width: int, height: int, seed: int, index: int, centre: str | None, difficulty: float,
                classes: tuple[str, ...]) -> SlideScene:
    """A lymph node's scene: ``width`` x ``height`` or, when its lesions do not fit there, larger (both sides
    grown alike: first to about what its largest lesion class needs, then by a sixteenth at a time)."""
    if not classes:
        return make_scene(name, width, height, False, seed, index, centre, difficulty)
    longest = max(LESION_DIAMETERS_UM[kind][0] for kind in classes) / CAMELYON_MPP  # level-0 pixels
    grow = max(1.0, longest / (0.9 * max(width, height)))
    for _ in range(80):
        try:
            return make_scene(name, round(width * grow), round(height * grow), True, seed, index, centre,
                              difficulty, classes)
        except NoRoomError:
            grow *= 1.0625
    raise AssertionError(f"{name}: no room for lesions {classes} on slides up to {round(width * grow)} x "
                         f"{round(height * grow)}")  # pragma: no cover - a bug, not an input


def _xml_label(xml: Path) -> str:
    """A node's CAMELYON17 label measured from its annotation file, as a user would: the class of its largest
    tumour polygon's longest diameter (``negative`` without a file)."""
    if not xml.is_file():
        return "negative"
    return slide_label(longest_diameter_um(a.points) for a in read_asap_xml(xml) if not a.is_exclusion)


def _is_synthetic_stage_csv(path: Path) -> bool:
    """A ``stage_labels.csv`` this generator wrote: CAMELYON17's format (its header is the challenge's too), and
    every slide it lists, beside it, a synthetic slide."""
    try:
        _, labels = read_stage_csv(path)
    except UserError:
        return False
    return bool(labels) and all(is_synthetic_slide(path.parent / f"{name}.tif") for name in labels)


def generate_camelyon17(root: str | Path, patients: int, width: int, height: int, seed: int = 0,
                        nodes: int = CAMELYON17_NODES, tile: int = 512, workers: int = 1, overwrite: bool = False,
                        centre: str | None = None, difficulty: float = 0.0) -> list[Path]:
    """Write a CAMELYON17-format set under ``root``: ``patients`` patients of ``nodes`` lymph nodes, one slide each,
    with pN stages (:func:`camelyon17_plan`); return the slide paths.

    Writes ``camelyon17/patient_XXX_node_Y.tif``, ``camelyon17/lesion_annotations/patient_XXX_node_Y.xml`` for
    the nodes with lesions (ASAP XML, as CAMELYON17's annotations) and ``camelyon17/stage_labels.csv`` in
    CAMELYON17's format (:func:`~metastasis.evaluation.staging.write_stage_csv`: ``patient,stage``, then each
    ``patient_XXX.zip,<pN stage>`` and its ``patient_XXX_node_Y.tif,<label>`` rows). The labels there are measured
    from the written XML, each lesion's class by its polygon's longest diameter
    (:func:`~metastasis.evaluation.staging.slide_label`), and the stages follow from them
    (:func:`~metastasis.evaluation.staging.stage_patients`); both are checked against the plan. Lesions are made
    with :func:`make_scene`'s ``classes``, their longest diameters within :data:`LESION_DIAMETERS_UM`.

    Slides are ``width`` x ``height``, except nodes whose lesions need more tissue: those are made larger, both
    sides alike, until the lesions fit (at 4:3, a macro-metastasis needs about 100 megapixels, 10000 x 7500 to
    13600 x 10200; a micro-metastasis 1500 x 1100 to 2300 x 1700). Slides are written, verified, kept and never
    replaced unless this generator wrote them, as by :func:`generate_dataset` (a kept slide must have been made
    with the same ``width``, ``height``, ``seed``, ``nodes``, ``centre`` and ``difficulty``, which its settings
    record holds). A kept node whose annotations no longer measure its planned label is an error.
    """
    plan = camelyon17_plan(patients, nodes, seed)
    root = Path(root)
    layout = _Layout("camelyon17")
    jobs = []
    for k, (_, _, node_classes) in enumerate(plan):
        for j, (name, classes) in enumerate(node_classes):
            made_with = {"layout": "camelyon17", "width": width, "height": height, "seed": seed, "nodes": nodes,
                         "centre": centre, "difficulty": difficulty, "lesions": list(classes)}
            jobs.append(_Job(name, root / layout.slide(name, bool(classes)), root / layout.annotation(name),
                             bool(classes), made_with,
                             functools.partial(_node_scene, name, width, height, seed, k * nodes + j, centre,
                                               difficulty, classes)))
    csv_path = root / "camelyon17" / "stage_labels.csv"
    paths = _write_slides(jobs, tile, workers, overwrite,
                          [(csv_path, "synthetic stage_labels.csv", _is_synthetic_stage_csv)])
    labels = {job.name: _xml_label(job.xml) for job in jobs}
    stages = stage_patients(labels)
    for patient, stage, node_classes in plan:
        for name, classes in node_classes:
            planned = max(classes, key=SLIDE_LABELS.index, default="negative")
            if labels[name] != planned:  # a kept node's XML edited since
                where = root / layout.annotation(name)
                raise UserError(f"{where}: its lesions measure {labels[name]}, the node was made {planned}; pass "
                                "--overwrite to regenerate the slides, or choose another --out")
        if stages[patient] != stage:  # pragma: no cover - a bug, not an input
            raise AssertionError(f"{patient}: planned {stage}, its nodes' labels give {stages[patient]}")
    write_stage_csv(csv_path, stages, labels)
    return paths


def verify_slide(scene: SlideScene, path: str | Path, xml: str | Path | None, samples: int = 3) -> None:
    """Read a written slide back with OpenSlide (and its XML) and check it against its scene.

    Checks the pyramid (level count, sizes, downsample 2 per level), the resolution, a few level-0 regions and one
    reduced level against the scene rendering (JPEG differs by a few grey levels), and that the XML gives back the
    polygons. Raises :class:`SlideError` on any mismatch.
    """
    slide = open_slide(path)
    try:
        shapes = pyramid_shapes(scene.width, scene.height)
        if tuple(slide.level_dimensions) != tuple(shapes):
            raise SlideError(f"{path}: levels {slide.level_dimensions} read back, {shapes} written")
        if abs(slide_mpp(slide, path) - scene.mpp) > 1e-3:
            raise SlideError(f"{path}: {slide_mpp(slide, path)} um/px read back, {scene.mpp} written")
        rng = item_rng(scene.seed, 99)
        size = 128
        checks = [(0, int(rng.integers(0, scene.width - size)), int(rng.integers(0, scene.height - size)))
                  for _ in range(samples)]
        low = min(2, len(shapes) - 1)
        checks.append((low, 0, 0))
        for level, x, y in checks:
            d = 2 ** level
            w, h = min(size, shapes[level][0]), min(size, shapes[level][1])
            read = read_rgb(slide, (x, y), level, (w, h), path).astype(np.float64)
            expected = scene.render((x, y), (w, h), d)
            error = np.abs(read - expected).mean()
            if error > 10:
                raise SlideError(f"{path}: level {level} region at ({x}, {y}) differs from the scene by {error:.1f}")
    finally:
        slide.close()
    if xml is not None:
        back = read_asap_xml(xml)
        if len(back) != len(scene.annotations) or any(
                a.group != b.group or not np.allclose(a.points, b.points, atol=1e-3)
                for a, b in zip(back, scene.annotations)):
            raise SlideError(f"{xml}: annotations read back differ from the ones written")
