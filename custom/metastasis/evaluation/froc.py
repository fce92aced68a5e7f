"""Camelyon16 evaluation: lesion-level FROC (challenge task 2) and slide-level ROC AUC (task 1).

The rules, as the challenge defines them and its published evaluation code (``Evaluation_FROC.py``) computes them:

* ground truth is a tumour mask at pyramid level 5 (``level``): pixel size ``mpp * 2**level`` microns;
* evaluation regions: the mask grown by 75 um in total (pixels whose Euclidean distance to tumour is below
  ``75 / 2`` um), holes filled, 8-connected components labelled; lesions closer than 75 um merge into one region;
* isolated tumour cells (ITC): regions whose major axis (of the ellipse with the region's second moments) is below
  275 um; a detection on an ITC is neither a true nor a false positive, and ITCs are not counted as lesions;
* a detection at level-0 (x, y) hits the region at mask pixel ``(int(y / 2**level), int(x / 2**level))``;
  detections outside every region, and all detections on normal slides, are false positives; a lesion counts once,
  with the highest probability among its hits;
* FROC: sensitivity against mean false positives per slide over all thresholds; the score is the mean sensitivity
  at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide, interpolated linearly along the curve.

Two corner-case conventions of that code (and of MONAI's ``LesionFROC``) are on by default, so scores compare with
the leaderboard; ``reference_conventions=False`` turns both off:

1. the pooled true-positive probabilities hold a 0 for every missed lesion and every ITC, and the lowest pooled
   value is never used as a threshold (if every lesion is found and there is no ITC, the lowest-scoring hit is
   dropped from the curve);
2. true-positive probabilities are float32 and false-positive ones float64, so a tie at a value float32 cannot hold
   exactly (e.g. 0.7) splits into two thresholds.

Every evaluation keeps what its numbers come from (each slide's lesion hits, ITC flags, false-positive
probabilities, slide score and label, in ``froc.json``), so two evaluations of the same slides compare slide by
slide (:func:`compare_froc`: the paired bootstrap difference of FROC and AUC) without recomputing the ground truth.

Speed: the distance transform and hole filling run only in boxes around the tumour (a normal slide needs no
morphology at all), with exactly the whole-mask result (:func:`evaluation_regions` with ``whole_mask=True`` is
the literal whole-mask computation, kept as the reference).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage import measure

from medcore.bootstrap import Comparison, Interval, compare_columns, stratified_bootstrap
from medcore.errors import UserError
from medcore.files import atomic_path, claim_output_dir, read_json, write_csv, write_json

from .detection import Detections
from ..metrics import roc_auc

__all__ = ["EVAL_FP_RATES", "Regions", "evaluation_regions", "SlideResult", "score_slide",
           "froc_curve", "froc_score", "EvalCase", "FROC_KIND", "SlideScores", "FrocResult", "evaluate_froc",
           "write_froc", "read_slide_scores", "compare_froc"]

EVAL_FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
GROW_UM = 75.0
ITC_UM = 200.0


@dataclasses.dataclass
class Regions:
    """Labelled evaluation regions of one slide (``labels`` 0 outside, 1..n inside) and the ITC labels."""

    labels: np.ndarray
    n: int
    itc: set[int]


def _boxes(mask: np.ndarray, margin: int) -> list[tuple[slice, slice]]:
    """Boxes around the tumour, grown by ``margin`` and merged until no two overlap or touch."""
    labelled, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = [[s[0].start - margin, s[0].stop + margin, s[1].start - margin, s[1].stop + margin]
             for s in ndimage.find_objects(labelled) if s is not None]
    merged = True
    while merged:  # few boxes per slide: a quadratic merge is fine
        merged = False
        out: list[list[int]] = []
        for box in boxes:
            for other in out:
                if box[0] <= other[1] and other[0] <= box[1] and box[2] <= other[3] and other[2] <= box[3]:
                    other[:] = [min(box[0], other[0]), max(box[1], other[1]), min(box[2], other[2]),
                                max(box[3], other[3])]
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    h, w = mask.shape
    return [(slice(max(b[0], 0), min(b[1], h)), slice(max(b[2], 0), min(b[3], w))) for b in boxes]


def _grow_fill_label(mask: np.ndarray, threshold: float) -> np.ndarray:
    distance = ndimage.distance_transform_edt(~mask)
    filled = ndimage.binary_fill_holes(distance < threshold)
    return measure.label(filled, connectivity=2)


def evaluation_regions(mask: np.ndarray, pixel_um: float, whole_mask: bool = False) -> Regions:
    """Evaluation regions and ITCs of a tumour mask (any nonzero value is tumour) with ``pixel_um`` pixels."""
    mask = np.asarray(mask) > 0
    threshold = GROW_UM / (pixel_um * 2)
    itc_threshold = (ITC_UM + GROW_UM) / pixel_um
    if whole_mask:
        labels = _grow_fill_label(mask, threshold) if mask.any() else np.zeros(mask.shape, np.int32)
    else:
        labels = np.zeros(mask.shape, np.int32)
        # Grown regions reach < threshold pixels from tumour: a box that much (+1) larger holds each with
        # background all around, so hole filling and labelling inside it equal the whole-mask result.
        n = 0
        for rows, cols in _boxes(mask, int(np.ceil(threshold)) + 2):
            local = _grow_fill_label(mask[rows, cols], threshold)
            labels[rows, cols] = np.where(local > 0, local + n, 0)
            n += int(local.max())
    props = measure.regionprops(labels)
    itc = {p.label for p in props if p.axis_major_length < itc_threshold}
    return Regions(labels, len(props), itc)


@dataclasses.dataclass
class SlideResult:
    """One slide's share of the FROC: its false-positive probabilities and, per region, the best hit."""

    name: str
    is_tumor: bool
    itc: np.ndarray  # bool per region: an isolated tumour cell region
    hit: np.ndarray  # bool per region: hit by at least one detection
    best: np.ndarray  # float64 per region: highest probability among its hits (0 if none)
    fp_probs: np.ndarray  # float64, one per false positive
    itc_hits: int  # detections on ITCs (neither TP nor FP)

    @property
    def lesions(self) -> int:
        return int((~self.itc).sum())

    def row(self) -> dict:
        return {"slide": self.name, "tumor": self.is_tumor, "regions": len(self.itc), "itcs": int(self.itc.sum()),
                "lesions": self.lesions, "lesions_hit": int((self.hit & ~self.itc).sum()),
                "itc_detections": self.itc_hits, "false_positives": len(self.fp_probs)}

    def record(self) -> dict:
        """Everything the FROC takes from this slide, as JSON (floats round-trip exactly)."""
        return {"slide": self.name, "itc": self.itc.tolist(), "hit": self.hit.tolist(), "best": self.best.tolist(),
                "false_positive_probabilities": self.fp_probs.tolist(), "itc_detections": self.itc_hits}

    @classmethod
    def from_record(cls, record: dict) -> "SlideResult":
        """The inverse of :meth:`record` (KeyError, TypeError or ValueError when it is not one)."""
        itc, hit = np.array(record["itc"], bool), np.array(record["hit"], bool)
        best = np.array(record["best"], np.float64)
        if not itc.shape == hit.shape == best.shape or itc.ndim != 1:
            raise ValueError("per-region lists of different lengths")
        return cls(str(record["slide"]), len(itc) > 0, itc, hit, best,
                   np.array(record["false_positive_probabilities"], np.float64).reshape(-1),
                   int(record["itc_detections"]))


def score_slide(name: str, detections: Detections, regions: Regions | None, level: int = 5) -> SlideResult:
    """Split a slide's detections into hits and false positives (``regions`` None or empty: a normal slide).

    A detection whose mask pixel lies outside the mask (a mask cropped at the slide edge) hits no region.
    """
    n = regions.n if regions is not None else 0
    labels = np.zeros(len(detections), np.int64)
    if n:
        scale = 2 ** level
        rows, cols = detections.y // scale, detections.x // scale
        inside = (rows < regions.labels.shape[0]) & (cols < regions.labels.shape[1])
        labels[inside] = regions.labels[rows[inside], cols[inside]]
    itc = np.zeros(n, bool)
    if n:
        itc[[k - 1 for k in regions.itc]] = True
    on_itc = np.zeros(len(labels), bool)
    on_itc[labels > 0] = itc[labels[labels > 0] - 1]
    hit = np.zeros(n, bool)
    best = np.zeros(n, np.float64)
    for label, p in zip(labels[(labels > 0) & ~on_itc], detections.probability[(labels > 0) & ~on_itc]):
        hit[label - 1] = True
        best[label - 1] = max(best[label - 1], p)
    return SlideResult(name, n > 0, itc, hit, best, detections.probability[labels == 0].astype(np.float64),
                       int(on_itc.sum()))


def froc_curve(results: Sequence[SlideResult], reference_conventions: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean false positives per slide and sensitivity at every threshold, from high to low FP rate.

    As the challenge code: one point per distinct pooled probability (all but the lowest with the reference
    conventions), a detection counting at a threshold when its probability is at or above it, then a final (0, 0).
    """
    n_slides = len(results)
    n_lesions = sum(r.lesions for r in results)
    if n_slides == 0:
        raise UserError("no slides to evaluate")
    if n_lesions == 0:
        with_regions = sum(len(r.itc) > 0 for r in results)
        raise UserError(f"no lesions (non-ITC tumour regions) in the ground truth of the {n_slides} slides "
                        f"({with_regions} with tumour regions, all of ITC size): sensitivity is undefined (are the "
                        "annotations or masks given those of these slides?)")
    fps = np.concatenate([r.fp_probs for r in results])
    if reference_conventions:
        # One float32 value per region: the best hit of a lesion, 0 for a missed lesion and for every ITC.
        tps = np.concatenate([np.where(r.itc, 0, r.best).astype(np.float32) for r in results]).astype(np.float64)
        thresholds = np.unique(np.concatenate([fps, tps]).astype(np.float64))[1:]
    else:
        tps = np.concatenate([r.best[r.hit & ~r.itc] for r in results])
        thresholds = np.unique(np.concatenate([fps, tps]).astype(np.float64))
    fps_sorted, tps_sorted = np.sort(fps), np.sort(tps)
    total_fp = len(fps_sorted) - np.searchsorted(fps_sorted, thresholds, side="left")  # values >= threshold
    total_tp = len(tps_sorted) - np.searchsorted(tps_sorted, thresholds, side="left")
    return np.append(total_fp, 0) / float(n_slides), np.append(total_tp, 0) / float(n_lesions)


def froc_score(fp_rate: np.ndarray, sensitivity: np.ndarray,
               rates: Sequence[float] = EVAL_FP_RATES) -> tuple[float, list[float]]:
    """Mean sensitivity at the given FP rates (linear interpolation along the curve) and the sensitivities."""
    at = np.interp(rates, fp_rate[::-1], sensitivity[::-1])
    return float(np.mean(at)), [float(v) for v in at]


@dataclasses.dataclass
class EvalCase:
    """One test slide: its detections, ground-truth mask at ``level`` (None: a normal slide), mask pixel size,
    slide-level score (task 1) and slide label (1 tumour)."""

    name: str
    detections: Detections
    mask: np.ndarray | None
    pixel_um: float
    slide_score: float
    label: int


#: How this FROC is computed, said wherever it is shown: over every slide with normal slides counting false
#: positives, as the challenge ranked it; a FROC over tumour slides only (MONAI's bundle reports 0.72 so) is another
#: number.
FROC_KIND = "all slides (challenge rules)"
#: The strata of the slide bootstrap (:func:`medcore.bootstrap.stratified_bootstrap`).
BOOTSTRAP_STRATA = {"froc_score": "slides with lesions / the others", "slide_auc": "tumour / normal slides"}


@dataclasses.dataclass
class SlideScores:
    """What an evaluation's two numbers are computed from, per slide: its FROC share, slide score and label. The
    statistics take an index array into the slides (repeats allowed), so the bootstrap resamples them."""

    results: list[SlideResult]
    slide_scores: np.ndarray
    labels: np.ndarray
    reference_conventions: bool = True

    def froc(self, idx: np.ndarray) -> float:
        return froc_score(*froc_curve([self.results[i] for i in idx], self.reference_conventions))[0]

    def auc(self, idx: np.ndarray) -> float:
        return roc_auc(self.slide_scores[idx], self.labels[idx])

    def strata(self, statistic: str) -> np.ndarray:
        """Each slide's stratum for a statistic's bootstrap (:data:`BOOTSTRAP_STRATA`)."""
        if statistic == "froc_score":
            return np.array([int(r.lesions > 0) for r in self.results])
        return self.labels.astype(int)

    def intervals(self, resamples: int, seed: int) -> dict[str, Interval]:
        """95% bootstrap intervals of the FROC score and the slide AUC over slides, stratified."""
        return {"froc_score": stratified_bootstrap(self.froc, self.strata("froc_score"), resamples=resamples,
                                                   seed=seed),
                "slide_auc": stratified_bootstrap(self.auc, self.strata("slide_auc"), resamples=resamples, seed=seed)}


@dataclasses.dataclass
class FrocResult:
    """Everything the evaluation reports; ``intervals``: 95% bootstrap intervals of the FROC score and the slide
    AUC over slides (:func:`evaluate_froc`); ``excluded``: slides left out of the evaluation by name."""

    score: float
    sensitivities: dict[str, float]
    fp_rate: np.ndarray
    sensitivity: np.ndarray
    slides: list[dict]
    slide_auc: float
    n_lesions: int
    reference_conventions: bool
    intervals: dict[str, Interval] = dataclasses.field(default_factory=dict)
    excluded: list[str] = dataclasses.field(default_factory=list)
    scores: SlideScores | None = None

    def summary(self) -> str:
        """One line: the FROC (with its kind) and the slide AUC, each with its interval, and any exclusions."""
        froc = self.intervals["froc_score"].text() if "froc_score" in self.intervals else f"{self.score:.4f}"
        auc = self.intervals["slide_auc"].text() if "slide_auc" in self.intervals else f"{self.slide_auc:.4f}"
        left_out = f"; excluded: {', '.join(self.excluded)}" if self.excluded else ""
        return (f"FROC score {froc}, {FROC_KIND}, over {len(self.slides)} slides and {self.n_lesions} lesions; "
                f"slide-level AUC {auc}{left_out}")

    def to_dict(self) -> dict:
        return {"froc_score": self.score, "froc_kind": FROC_KIND, "sensitivity_at_fp_rate": self.sensitivities,
                "slide_auc": self.slide_auc, "n_slides": len(self.slides), "n_lesions": self.n_lesions,
                "excluded_slides": self.excluded, "reference_conventions": self.reference_conventions,
                "intervals": {key: {**value.to_dict(), "strata": BOOTSTRAP_STRATA[key]}
                              for key, value in self.intervals.items()},
                "curve": {"fp_per_slide": self.fp_rate.tolist(), "sensitivity": self.sensitivity.tolist()},
                "slides": self.slides,
                "per_slide": [] if self.scores is None else [r.record() for r in self.scores.results]}


def evaluate_froc(cases: Sequence[EvalCase], level: int = 5, reference_conventions: bool = True,
                  whole_mask: bool = False, resamples: int = 2000, seed: int = 0,
                  excluded: Sequence[str] = ()) -> FrocResult:
    """Lesion FROC over all slides (normal ones count for false positives) and the slide-level ROC AUC, each with
    a 95% percentile bootstrap interval over slides (``resamples`` resamples, ``seed``; 0 resamples: none) as in
    the Camelyon16 results paper: the FROC resampled within slides with lesions and the others (every resample
    has lesions), the AUC within tumour and normal slides. ``excluded``: names of slides the caller left out,
    recorded in the result."""
    if not cases:
        raise UserError("no slides to evaluate")
    results = []
    for case in cases:
        regions = evaluation_regions(case.mask, case.pixel_um, whole_mask) if case.mask is not None \
            and case.mask.any() else None
        result = score_slide(case.name, case.detections, regions, level)
        results.append(result)
    fp_rate, sensitivity = froc_curve(results, reference_conventions)
    score, at = froc_score(fp_rate, sensitivity)
    slides = [{**r.row(), "slide_score": c.slide_score, "label": c.label} for r, c in zip(results, cases)]
    scores = SlideScores(results, np.array([c.slide_score for c in cases], np.float64),
                         np.array([c.label for c in cases]), reference_conventions)
    auc = scores.auc(np.arange(len(cases)))
    intervals = scores.intervals(resamples, seed) if resamples else {}
    return FrocResult(score, {f"{rate:g}": v for rate, v in zip(EVAL_FP_RATES, at)}, fp_rate, sensitivity, slides,
                      auc, sum(r.lesions for r in results), reference_conventions, intervals, list(excluded), scores)


def write_froc(result: FrocResult, out_dir: str | Path) -> dict[str, Path]:
    """``froc.json`` (everything), ``froc_slides.csv`` (per-slide table) and ``froc.png`` (the curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = claim_output_dir(out_dir, "FROC evaluation", ["froc.json", "froc_slides.csv", "froc.png"])
    fields = list(result.slides[0])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(result.fp_rate[::-1], result.sensitivity[::-1], drawstyle="default", marker=".", ms=3)
    ax.plot(EVAL_FP_RATES, list(result.sensitivities.values()), "o", label="the six FP rates")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, max(8.5, float(result.fp_rate.max()) if result.fp_rate.size else 8.5))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(f"FROC score {result.score:.4f} ({FROC_KIND}), slide AUC {result.slide_auc:.4f}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = out / "froc.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return {"json": write_json(out / "froc.json", result.to_dict()),
            "csv": write_csv(out / "froc_slides.csv", ([row[f] for f in fields] for row in result.slides),
                             header=fields), "png": png}


def read_slide_scores(path: str | Path) -> tuple[SlideScores, list[str]]:
    """An evaluation's per-slide scores and its excluded slides, from its ``froc.json`` (or the folder holding
    it), checked; an evaluation of an older version, which kept no per-slide scores, is a one-line error."""
    path = Path(path)
    if path.is_dir():
        path = path / "froc.json"
    record = read_json(path, "FROC evaluation")
    if not isinstance(record, dict) or not isinstance(record.get("slides"), list):
        raise UserError(f"{path}: not a FROC evaluation (metastasis evaluate's froc.json)")
    if not record.get("per_slide"):
        raise UserError(f"{path}: keeps no per-slide scores (an evaluation of an older version): run "
                        "metastasis evaluate again to compare it")
    try:
        results = [SlideResult.from_record(r) for r in record["per_slide"]]
        rows = {str(row["slide"]): row for row in record["slides"]}
        slide_scores = np.array([float(rows[r.name]["slide_score"]) for r in results], np.float64)
        labels = np.array([int(rows[r.name]["label"]) for r in results])
        reference = bool(record["reference_conventions"])
        excluded = [str(name) for name in record.get("excluded_slides", [])]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed per-slide scores ({type(err).__name__}: {err})") from None
    if len(rows) != len(results) or not np.isfinite(slide_scores).all() or not np.isin(labels, (0, 1)).all():
        raise UserError(f"{path}: its per-slide scores do not match its slides (an edited file?)")
    return SlideScores(results, slide_scores, labels, reference), excluded


def compare_froc(a: SlideScores, b: SlideScores, *, resamples: int = 2000,
                 seed: int = 0) -> dict[str, Comparison]:
    """Evaluation A against B of the same slides and ground truth (two models' detections, say): the differences
    ``A - B`` of the FROC score and of the slide AUC, each with its paired 95% bootstrap interval and p-value. Each
    resample draws slides (stratified as each number's own interval, :data:`BOOTSTRAP_STRATA`) and scores both
    evaluations on the same draw. B's slides are matched to A's by name; different slides, ground truth, labels or
    conventions are a :class:`~medcore.errors.UserError`."""
    by_name = {r.name.lower(): i for i, r in enumerate(b.results)}
    names_a = [r.name for r in a.results]
    if sorted(n.lower() for n in names_a) != sorted(by_name):
        only_a = sorted({n.lower() for n in names_a} - set(by_name))
        only_b = sorted(set(by_name) - {n.lower() for n in names_a})
        raise UserError(f"the evaluations are of different slides (only in A: {only_a[:5] or 'none'}; only in B: "
                        f"{only_b[:5] or 'none'}): a paired comparison needs the same slides")
    order = np.array([by_name[n.lower()] for n in names_a], dtype=int)
    b = SlideScores([b.results[i] for i in order], b.slide_scores[order], b.labels[order], b.reference_conventions)
    if a.reference_conventions != b.reference_conventions:
        raise UserError("one evaluation used the reference conventions and the other did not: not comparable")
    for ra, rb, la, lb in zip(a.results, b.results, a.labels, b.labels):
        if not np.array_equal(ra.itc, rb.itc) or la != lb:
            raise UserError(f"slide {ra.name}: its ground truth differs between the evaluations ({len(ra.itc)} vs "
                            f"{len(rb.itc)} regions, label {la} vs {lb}): not the same test set")
    out = {}
    for key, stat_a, stat_b in (("froc_score", a.froc, b.froc), ("slide_auc", a.auc, b.auc)):
        out[key] = compare_columns(lambda d: {key: stat_a(d)}, lambda d: {key: stat_b(d)}, a.strata(key),
                                   resamples=resamples, seed=seed)[key]
    return out
