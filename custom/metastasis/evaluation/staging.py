"""CAMELYON17 clinical staging: lesion sizes to slide labels, slide labels to a patient's pN stage, the challenge's
CSV files, and the quadratic weighted kappa it ranks submissions by.

Sources: P. Bandi et al., "From detection of individual metastases to classification of lymph node status at the
patient level: the CAMELYON17 challenge", IEEE TMI 38(2), 2019 (the rules, the label and stage names, the file
format and the kappa), and the AJCC Cancer Staging Manual, 8th edition, breast, pathological N (pN) classification
(the size limits, and that nodes holding isolated tumour cells only are not counted as positive nodes).

Conventions:

* sizes are a lesion's longest diameter in microns (level-0 pixels times the slide's microns per pixel);
* CAMELYON17 has one slide per lymph node (``patient_XXX_node_Y.tif``, five nodes per patient); a patient is
  ``patient_XXX`` (``patient_XXX.zip`` in the CSV files);
* names are kept as written, without ``.zip`` / ``.tif`` (``.tiff``); stage and label strings are read
  case-insensitively, as the challenge's evaluation script does, and kept in the spelling of :data:`PN_STAGES`
  and :data:`SLIDE_LABELS`;
* stages are ordinal in the order of :data:`PN_STAGES`; the kappa weighs a disagreement by its squared distance on
  that scale.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from medcore.errors import UserError
from medcore.files import read_user_text, write_csv

__all__ = ["ITC_MAX_UM", "MICRO_MAX_UM", "SLIDE_LABELS", "PN_STAGES", "lesion_category", "slide_label",
           "pn_stage", "patient_of", "stage_patients", "read_patient_map", "read_stage_csv", "write_stage_csv",
           "quadratic_weighted_kappa", "StagingResult", "evaluate_staging"]

#: The largest isolated tumour cell cluster, in microns (AJCC: ITC "no larger than 0.2 mm").
ITC_MAX_UM = 200.0
#: The largest micro-metastasis, in microns (AJCC: larger than 0.2 mm, "none larger than 2.0 mm").
MICRO_MAX_UM = 2000.0
#: CAMELYON17's slide labels, from no tumour to the largest lesion class.
SLIDE_LABELS = ("negative", "itc", "micro", "macro")
#: CAMELYON17's patient stages; this order is the ordinal scale of :func:`quadratic_weighted_kappa`.
PN_STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")

_LABEL_BY_LOWER = {label.lower(): label for label in SLIDE_LABELS}
_STAGE_BY_LOWER = {stage.lower(): stage for stage in PN_STAGES}
_SLIDE_NAME = re.compile(r"(patient_\d+)_node_\d+(\.\w+)?")
_SLIDE_SUFFIXES = (".tif", ".tiff")
_PATIENT_SUFFIX = ".zip"
#: How many missing names an error message lists before "and N more".
_SHOWN = 5


def lesion_category(longest_diameter_um: float) -> str:
    """The class of one lesion by its longest diameter in microns (AJCC 8th edition, as CAMELYON17 uses it).

    * ``"itc"`` (isolated tumour cells): at most 200 um (0.2 mm), 200 um itself included;
    * ``"micro"`` (micro-metastasis): above 200 um and at most 2000 um (2.0 mm), 2000 um itself included;
    * ``"macro"`` (macro-metastasis): above 2000 um.

    AJCC's other criterion, more than about 200 cells in one cross-section making a micro-metastasis whatever its
    size, cannot be judged from a diameter and is not applied.

    Raises:
        ValueError: a negative, NaN or infinite diameter.
    """
    value = float(longest_diameter_um)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a lesion's longest diameter must be a finite number of microns >= 0, got "
                         f"{longest_diameter_um!r}")
    if value <= ITC_MAX_UM:
        return "itc"
    return "micro" if value <= MICRO_MAX_UM else "macro"


def slide_label(longest_diameters_um: Iterable[float]) -> str:
    """A slide's CAMELYON17 label (one of :data:`SLIDE_LABELS`): the class (:func:`lesion_category`) of its largest
    lesion, ``"negative"`` for a slide without lesions. Every diameter is checked (a NaN among them raises)."""
    rank = 0  # "negative"
    for diameter in longest_diameters_um:
        rank = max(rank, SLIDE_LABELS.index(lesion_category(diameter)))
    return SLIDE_LABELS[rank]


def pn_stage(slide_labels: Iterable[str]) -> str:
    """One patient's pN stage (one of :data:`PN_STAGES`) from the labels of their lymph nodes, one slide per node.

    CAMELYON17's rules (Bandi et al. 2019, after AJCC 8th edition):

    * ``pN0``: no micro-metastases, macro-metastases or ITCs found;
    * ``pN0(i+)``: only ITCs found;
    * ``pN1mi``: micro-metastases found, but no macro-metastases (whatever the number of nodes: AJCC's pN2 and
      CAMELYON17's both need a macro-metastasis, so four nodes with micro-metastases only are pN1mi);
    * ``pN1``: metastases found in 1-3 lymph nodes, of which at least one is a macro-metastasis;
    * ``pN2``: metastases found in 4-9 lymph nodes, of which at least one is a macro-metastasis.

    A positive node is one labelled ``"micro"`` or ``"macro"``: nodes with ITCs only are not counted (AJCC), so
    three macro nodes and two ITC nodes are pN1. Ten or more positive nodes with a macro-metastasis (AJCC's pN3a)
    never occur in CAMELYON17 (five nodes per patient), and its scale ends at pN2 (its evaluation script accepts no
    stage beyond): they are ``pN2`` here, the rule read as "4 or more".

    Raises:
        ValueError: a label not in :data:`SLIDE_LABELS` (named; the spelling must be exact), or no labels at all
            (no node examined is AJCC's pNX, not on CAMELYON17's scale).
    """
    if isinstance(slide_labels, str):
        raise ValueError(f"expected one label per lymph node, got the string {slide_labels!r}")
    counts = dict.fromkeys(SLIDE_LABELS, 0)
    for label in slide_labels:
        if label not in counts:
            raise ValueError(f"unknown slide label {label!r} (expected one of {', '.join(SLIDE_LABELS)})")
        counts[label] += 1
    if not sum(counts.values()):
        raise ValueError("no lymph nodes: a patient's stage needs at least one slide label")
    positive = counts["micro"] + counts["macro"]
    if counts["macro"]:
        return "pN1" if positive <= 3 else "pN2"
    if counts["micro"]:
        return "pN1mi"
    return "pN0(i+)" if counts["itc"] else "pN0"


def _bare(name: str, suffixes: Sequence[str]) -> str:
    """``name`` without the first of ``suffixes`` it ends with (case ignored)."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix):
            return name[:-len(suffix)]
    return name


def patient_of(slide_name: str) -> str:
    """The patient of a CAMELYON17 slide name: ``"patient_004_node_2.tif"`` and ``"patient_004_node_2"`` are
    ``"patient_004"`` (any one extension is accepted).

    Raises:
        ValueError: a name not of the form ``patient_<digits>_node_<digits>[.ext]`` (give a patient map instead:
            :func:`read_patient_map`).
    """
    match = _SLIDE_NAME.fullmatch(slide_name)
    if match is None:
        raise ValueError(f"{slide_name!r}: not a CAMELYON17 slide name (patient_XXX_node_Y.tif); give a patient map "
                         "(a CSV 'slide,patient') for other names")
    return match.group(1)


def _patient_lookup(patient_map: Mapping[str, str] | None):
    """A function from a slide name (no extension) to its patient: ``patient_map`` when given (every slide must
    be in it), else :func:`patient_of`."""
    if patient_map is None:
        return patient_of

    def lookup(slide: str) -> str:
        try:
            return patient_map[slide]
        except KeyError:
            raise ValueError(f"slide {slide!r} is not in the patient map") from None

    return lookup


def stage_patients(slide_labels: Mapping[str, str], patient_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every patient's pN stage (:func:`pn_stage`) from slide labels keyed by slide name (no extension); slides
    are grouped by ``patient_map`` (slide -> patient, e.g. :func:`read_patient_map`) or else by name
    (:func:`patient_of`). Returns ``{patient: stage}`` sorted by patient.

    Raises:
        ValueError: an unknown label, or a slide whose patient cannot be told.
    """
    lookup = _patient_lookup(patient_map)
    nodes: dict[str, list[str]] = {}
    for slide, label in slide_labels.items():
        nodes.setdefault(lookup(slide), []).append(label)
    return {patient: pn_stage(labels) for patient, labels in sorted(nodes.items())}


def _csv_rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` of a CSV file's non-blank rows (empty cells at a row's end dropped, as
    a spreadsheet writes them); a file that is not CSV (a quote never closed, text after a closing quote) or a
    quoted value over several lines is a :class:`UserError` naming the file and line."""
    reader = csv.reader(io.StringIO(read_user_text(path, what)), strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise UserError(f"{path}:{reader.line_num}: not a valid CSV line ({err})") from None
        cells = [cell.strip() for cell in row]
        if any("\n" in cell or "\r" in cell for cell in cells):
            raise UserError(f"{path}:{reader.line_num}: a quoted value spans lines (names and stages are one line)")
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            yield reader.line_num, cells


def read_patient_map(path: str | Path) -> dict[str, str]:
    """Slides' patients from a CSV file with the header ``slide,patient`` (other columns, in any order, are
    ignored): ``{slide: patient}``, slides without ``.tif``/``.tiff`` and patients without ``.zip``.

    Raises:
        UserError: naming the file (and line): missing or unreadable, no header with both columns, a row without
            a slide or patient, or one slide given two different patients (the same pair twice is accepted).
    """
    path = Path(path)
    columns: dict[str, int] | None = None
    mapping: dict[str, str] = {}
    first: dict[str, int] = {}
    for number, cells in _csv_rows(path, "patient map"):
        if columns is None:
            names = [cell.lower() for cell in cells]
            missing = [name for name in ("slide", "patient") if name not in names]
            if missing:
                raise UserError(f"{path}:{number}: expected a header with the columns 'slide' and 'patient', got "
                                f"{','.join(cells)!r} (no {' and no '.join(repr(m) for m in missing)})")
            columns = {name: names.index(name) for name in ("slide", "patient")}
            continue
        slide = _bare(cells[columns["slide"]], _SLIDE_SUFFIXES) if columns["slide"] < len(cells) else ""
        patient = _bare(cells[columns["patient"]], (_PATIENT_SUFFIX,)) if columns["patient"] < len(cells) else ""
        if not slide or not patient:
            raise UserError(f"{path}:{number}: a row needs a slide and its patient, got {','.join(cells)!r}")
        if slide in mapping and mapping[slide] != patient:
            raise UserError(f"{path}:{number}: slide {slide} given patient {patient}, but patient {mapping[slide]} "
                            f"on line {first[slide]}")
        mapping[slide] = patient
        first.setdefault(slide, number)
    if columns is None:
        raise UserError(f"{path}: empty patient map (expected the header 'slide,patient' and a row per slide)")
    return mapping


def read_stage_csv(path: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """A CAMELYON17 stage CSV (the challenge's ``stage_labels.csv`` and a submission have the same format).

    The header is ``patient,stage``; each row is a patient, ``patient_000.zip,pN0``, or a slide,
    ``patient_000_node_0.tif,negative``, told apart by the name's extension (``.zip``; ``.tif`` or ``.tiff``).

    Returns:
        ``(patient_stages, slide_labels)``: stages (:data:`PN_STAGES`) keyed by patient name without ``.zip``,
        labels (:data:`SLIDE_LABELS`) keyed by slide name without its extension, in the file's order.

    Raises:
        UserError: one line naming the file, the line number and the problem: missing or unreadable file, no
            header, a row that is not two columns, a name that is neither a patient nor a slide, an unknown stage
            or label, or a name listed twice.
    """
    path = Path(path)
    stages: dict[str, str] = {}
    labels: dict[str, str] = {}
    first: dict[tuple[str, str], int] = {}
    header = False
    for number, cells in _csv_rows(path, "stage CSV"):
        if not header:
            if [cell.lower() for cell in cells] != ["patient", "stage"]:
                raise UserError(f"{path}:{number}: expected the header 'patient,stage', got {','.join(cells)!r}")
            header = True
            continue
        if len(cells) != 2 or not cells[0]:
            raise UserError(f"{path}:{number}: expected 'NAME,STAGE' (two columns), got {','.join(cells)!r}")
        name, value = cells
        lower = name.lower()
        if lower.endswith(_PATIENT_SUFFIX):
            key, table, known, kind = _bare(name, (_PATIENT_SUFFIX,)), stages, _STAGE_BY_LOWER, "patient"
        elif lower.endswith(_SLIDE_SUFFIXES):
            key, table, known, kind = _bare(name, _SLIDE_SUFFIXES), labels, _LABEL_BY_LOWER, "slide"
        else:
            raise UserError(f"{path}:{number}: {name!r} is neither a patient (NAME.zip) nor a slide (NAME.tif)")
        if not key:
            raise UserError(f"{path}:{number}: {name!r} has no name before its extension")
        if value.lower() not in known:
            what = "stage" if kind == "patient" else "slide label"
            raise UserError(f"{path}:{number}: unknown {what} {value!r} for {kind} {key} (expected one of "
                            f"{', '.join(known.values())})")
        if key in table:
            raise UserError(f"{path}:{number}: {kind} {key} listed twice (first on line {first[kind, key]})")
        table[key] = known[value.lower()]
        first[kind, key] = number
    if not header:
        raise UserError(f"{path}: empty stage CSV (expected the header 'patient,stage' and a row per patient and "
                        "slide)")
    return stages, labels


def write_stage_csv(path: str | Path, patient_stages: Mapping[str, str], slide_labels: Mapping[str, str],
                    patient_map: Mapping[str, str] | None = None) -> Path:
    """Write a CAMELYON17 stage CSV atomically: the header ``patient,stage``, then each patient (sorted by name) as
    ``NAME.zip,STAGE`` followed by their slides (sorted) as ``NAME.tif,LABEL``, as the challenge's files are laid
    out. Slides belong to the patient ``patient_map`` gives or else their name tells (:func:`patient_of`); slides of
    a patient without a stage are written in that patient's place, those whose patient cannot be told last.
    Names may be given with or without ``.zip`` / ``.tif``. :func:`read_stage_csv` reads back the same dicts.

    Raises:
        ValueError: an empty name, or a stage or label not in :data:`PN_STAGES` / :data:`SLIDE_LABELS` (exact).
    """
    stages = {_bare(name, (_PATIENT_SUFFIX,)): stage for name, stage in patient_stages.items()}
    labels = {_bare(name, _SLIDE_SUFFIXES): label for name, label in slide_labels.items()}
    for name, value, allowed in [*((n, s, PN_STAGES) for n, s in stages.items()),
                                 *((n, s, SLIDE_LABELS) for n, s in labels.items())]:
        if not name:
            raise ValueError("an empty patient or slide name")
        if value not in allowed:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    if len(stages) != len(patient_stages) or len(labels) != len(slide_labels):
        raise ValueError("a patient or slide is given twice (with and without its extension)")

    def patient_key(slide: str) -> tuple[int, str]:
        try:
            return 0, (patient_map[slide] if patient_map is not None and slide in patient_map else patient_of(slide))
        except ValueError:
            return 1, ""  # after every patient

    entries = [((0, patient), 0, patient) for patient in stages]
    entries += [(patient_key(slide), 1, slide) for slide in labels]
    rows = [[f"{name}{_PATIENT_SUFFIX}", stages[name]] if is_slide == 0 else [f"{name}.tif", labels[name]]
            for _, is_slide, name in sorted(entries)]
    return write_csv(path, rows, header=("patient", "stage"))


def _confusion(reference: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Counts (k, k) int64: row = reference class, column = predicted class, both in the order of ``classes``."""
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference labels but {len(predicted)} predictions")
    index = {name: i for i, name in enumerate(classes)}
    for value in (*reference, *predicted):
        if value not in index:
            raise ValueError(f"unknown class {value!r} (expected one of {', '.join(classes)})")
    counts = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(counts, ([index[v] for v in reference], [index[v] for v in predicted]), 1)
    return counts


def quadratic_weighted_kappa(reference: Sequence[str], predicted: Sequence[str],
                             classes: Sequence[str] = PN_STAGES) -> float:
    """Cohen's kappa with quadratic weights, the CAMELYON17 score (over patients' pN stages).

    With ``k = len(classes)`` ordered classes, ``O`` the confusion counts (row: reference, column: prediction),
    ``E = outer(row sums, column sums) / n`` (the counts chance would give with the same marginals) and
    ``W[i, j] = (i - j)^2 / (k - 1)^2``::

        kappa = 1 - sum(W * O) / sum(W * E)

    1 is perfect agreement, 0 what chance gives, negative worse than chance. It equals scikit-learn's
    ``cohen_kappa_score(reference, predicted, labels=classes, weights="quadratic")`` (what the challenge's
    evaluation script calls), computed here with numpy alone.

    ``sum(W * E)`` is zero only when the reference and the predictions all hold one and the same class (any other
    pair of marginals puts chance counts off the diagonal); the predictions then equal the reference, and the
    formula's 0/0 is taken as perfect agreement, 1.0 (scikit-learn returns NaN there by default).

    Raises:
        ValueError: lists of different lengths, empty lists, a value not in ``classes`` (named), or fewer than two
            distinct classes.
    """
    classes = tuple(classes)
    k = len(classes)
    if k < 2 or len(set(classes)) != k:
        raise ValueError(f"the kappa needs at least two distinct classes, got {classes!r}")
    observed = _confusion(list(reference), list(predicted), classes).astype(np.float64)
    n = observed.sum()
    if n == 0:
        raise ValueError("no labels to compare: the kappa of empty lists is undefined")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    chance = float((weights * expected).sum())
    if chance == 0.0:  # one class throughout, in both: the predictions are the reference
        return 1.0
    return 1.0 - float((weights * observed).sum()) / chance


@dataclasses.dataclass
class StagingResult:
    """A CAMELYON17 evaluation (:func:`evaluate_staging`).

    Confusion matrices count reference classes in rows and predicted classes in columns, both in the order of
    ``patient_classes`` (:data:`PN_STAGES`, 5 x 5) and ``slide_classes`` (:data:`SLIDE_LABELS`, 4 x 4).
    ``slide_accuracy`` is None when the reference lists no slides. ``extra_patients`` / ``extra_slides``: names the
    prediction gives beyond the reference, not scored (the challenge's script ignores them too).
    """

    kappa: float
    patient_accuracy: float
    slide_accuracy: float | None
    patient_confusion: np.ndarray
    slide_confusion: np.ndarray
    n_patients: int
    n_slides: int
    extra_patients: list[str] = dataclasses.field(default_factory=list)
    extra_slides: list[str] = dataclasses.field(default_factory=list)
    patient_classes: tuple[str, ...] = PN_STAGES
    slide_classes: tuple[str, ...] = SLIDE_LABELS

    def summary(self) -> str:
        """One line: the kappa over patients and the slide accuracy."""
        slides = f"{self.slide_accuracy:.4f} over {self.n_slides} slides" if self.slide_accuracy is not None \
            else "not scored (no slides in the reference)"
        return (f"quadratic weighted kappa {self.kappa:.4f} over {self.n_patients} patients; slide-label accuracy "
                f"{slides}")

    def to_dict(self) -> dict:
        """Plain values for JSON."""
        return {"kappa": self.kappa, "kappa_kind": "quadratic weighted, over patients, on the scale "
                + " < ".join(self.patient_classes),
                "patient_accuracy": self.patient_accuracy, "slide_accuracy": self.slide_accuracy,
                "n_patients": self.n_patients, "n_slides": self.n_slides,
                "patient_confusion": {"classes": list(self.patient_classes), "rows": "reference",
                                      "columns": "predicted", "counts": self.patient_confusion.tolist()},
                "slide_confusion": {"classes": list(self.slide_classes), "rows": "reference",
                                    "columns": "predicted", "counts": self.slide_confusion.tolist()},
                "extra_patients": list(self.extra_patients), "extra_slides": list(self.extra_slides)}


def _check_complete(reference: Mapping[str, str], predicted: Mapping[str, str], kind: str, reference_csv: Path,
                    predicted_csv: Path) -> None:
    missing = sorted(set(reference) - set(predicted))
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else "")
        raise UserError(f"{predicted_csv}: {len(missing)} of the {len(reference)} {kind} of {reference_csv} "
                        f"missing: {shown}")


def evaluate_staging(reference_csv: str | Path, predicted_csv: str | Path) -> StagingResult:
    """Score a CAMELYON17 prediction against a reference, both stage CSVs (:func:`read_stage_csv`): the quadratic
    weighted kappa (:func:`quadratic_weighted_kappa`) over the reference's patients, the slide-label accuracy over
    its slides and both confusion matrices.

    Raises:
        UserError: either file malformed (:func:`read_stage_csv`), a reference without patients, or a patient or
            slide of the reference missing from the prediction (naming the first few).
    """
    reference_csv, predicted_csv = Path(reference_csv), Path(predicted_csv)
    ref_stages, ref_labels = read_stage_csv(reference_csv)
    pred_stages, pred_labels = read_stage_csv(predicted_csv)
    if not ref_stages:
        raise UserError(f"{reference_csv}: no patients (rows 'patient_XXX.zip,STAGE') to score")
    _check_complete(ref_stages, pred_stages, "patients", reference_csv, predicted_csv)
    _check_complete(ref_labels, pred_labels, "slides", reference_csv, predicted_csv)
    patients = sorted(ref_stages)
    truth, guess = [ref_stages[p] for p in patients], [pred_stages[p] for p in patients]
    patient_confusion = _confusion(truth, guess, PN_STAGES)
    slides = sorted(ref_labels)
    slide_confusion = _confusion([ref_labels[s] for s in slides], [pred_labels[s] for s in slides], SLIDE_LABELS)
    return StagingResult(
        kappa=quadratic_weighted_kappa(truth, guess, PN_STAGES),
        patient_accuracy=float(np.trace(patient_confusion)) / len(patients),
        slide_accuracy=float(np.trace(slide_confusion)) / len(slides) if slides else None,
        patient_confusion=patient_confusion, slide_confusion=slide_confusion,
        n_patients=len(patients), n_slides=len(slides),
        extra_patients=sorted(set(pred_stages) - set(ref_stages)),
        extra_slides=sorted(set(pred_labels) - set(ref_labels)))
