"""Checkpoints applied to data, outside FLARE: per-case validation of any model on any datalist split, and
segmentation of a single case into a BraTS label map in the input's exact geometry.

Validation can share a split's cases out over processes (one GPU each on CUDA, or CPU processes;
:mod:`medcore.distributed`): each case is scored once, by one process, and the scores come back in the datalist's
order, so the CSV and the means are those of one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from medcore.device import select_device
from medcore.distributed import current_rank, rank_device, run_processes
from medcore.errors import UserError, user_errors_unwrapped
from medcore.files import atomic_path, check_replaceable, first_line_is, write_csv

from .config import TrainConfig
from .data import MODALITIES, check_files
from .datalist import read_datalist
from .engine import eval_dataset, evaluate, predict_regions, read_ahead, summarize
from .metrics import REGIONS, regions_to_labels
from .model import load_checkpoint
from .transforms import infer_transforms

__all__ = ["VALIDATION_COLUMNS", "LABEL_MAP_DESCRIPTION", "score_checkpoint", "validate_checkpoint",
           "segment_case"]

logger = logging.getLogger(__name__)

#: Columns of the per-case CSV of :func:`validate_checkpoint` (also how a re-run recognises its earlier output).
VALIDATION_COLUMNS = ("name", *REGIONS, "mean", *(f"HD95_{r}" for r in REGIONS))
#: Written into the header (``descrip``) of every label map :func:`segment_case` writes.
LABEL_MAP_DESCRIPTION = "brats-fl infer label map"


def _is_label_map(path: Path) -> bool:
    try:
        descrip = bytes(nib.load(str(path)).header["descrip"]).split(b"\0")[0]
    except Exception:  # not a NIfTI: not ours
        return False
    return descrip.decode(errors="replace") == LABEL_MAP_DESCRIPTION


def _score_cases(checkpoint: str | Path, cases: list[dict], config: TrainConfig | None) -> list[tuple[int, dict]]:
    """This rank's share of ``cases`` scored: (index in ``cases``, the case's scores) pairs."""
    model, extras = load_checkpoint(checkpoint)
    if config is None:
        conf = extras.get("train_conf") if isinstance(extras.get("train_conf"), dict) else {}
        config = TrainConfig.from_dict({k: conf[k] for k in ("crop", "val_window", "val_overlap") if k in conf})
    rank = current_rank()
    indices = rank.shard(range(len(cases)))
    device = rank_device(select_device(config.device), rank)
    model.to(device)
    # Streamed, one case read ahead: memory does not grow with the number of cases.
    scores = evaluate(model, read_ahead(eval_dataset([cases[i] for i in indices], cached=False)), config, device,
                      spacing=True, progress_logger=logger)
    return list(zip(indices, scores))


def score_checkpoint(checkpoint: str | Path, datalist: str | Path, data_root: str | Path, split: str,
                     config: TrainConfig | None = None, processes: int = 1) -> list[dict]:
    """Per-case Dice and HD95 (mm) of ``checkpoint`` on one split of a datalist (:func:`~brats_fl.engine.evaluate`
    with each case's voxel size), in the datalist's order. ``config`` ``None``: the window settings the
    checkpoint was trained with (``crop``, ``val_window``, ``val_overlap`` of its ``train_conf``; Clara's where it
    has none). ``processes``: the cases shared out over that many processes (:func:`medcore.distributed.
    run_processes`; the datalist and every case's headers are checked here first)."""
    cases = read_datalist(datalist, data_root, splits=[split])[split]
    processes = max(1, min(processes, len(cases)))
    if processes > 1:
        load_checkpoint(checkpoint)  # a bad checkpoint is one error here, not one per process
    shares = run_processes(processes, _score_cases, checkpoint, cases, config)
    return [scores for _, scores in sorted(pair for share in shares.values() for pair in share)]


def validate_checkpoint(checkpoint: str | Path, datalist: str | Path, data_root: str | Path, split: str,
                        out_csv: str | Path, config: TrainConfig, processes: int = 1) -> dict[str, float]:
    """Score ``checkpoint`` on one split of a datalist, writing per-case Dice and HD95 (mm) to ``out_csv``.

    The CSV has a row per case (``name, TC, WT, ET, mean, HD95_TC, HD95_WT, HD95_ET``) and a last ``MEAN`` row;
    the means are returned. An existing ``out_csv`` is replaced only if it is such a CSV.
    """
    check_replaceable(out_csv, "validation CSV", first_line_is(",".join(VALIDATION_COLUMNS)))
    per_case = score_checkpoint(checkpoint, datalist, data_root, split, config, processes)
    summary = summarize(per_case)
    columns = VALIDATION_COLUMNS
    rows = [[case["name"], *(f"{case[c]:.6f}" for c in columns[1:])] for case in per_case]
    rows.append(["MEAN", *(f"{summary[c]:.6f}" for c in columns[1:])])
    write_csv(out_csv, rows, header=columns, lineterminator="\r\n")
    return summary


def segment_case(checkpoint: str | Path, files: Mapping[str, str | Path], out_path: str | Path,
                 config: TrainConfig) -> Path:
    """Segment one case: four contrasts in, a BraTS label NIfTI (uint8, labels 0/1/2/4) out.

    ``files`` maps ``t1ce, t1, t2, flair`` to NIfTI paths (checked first from their headers: readable, same shape
    and affine; their values where they are decoded). The
    output takes the T1c's shape, affine and header (voxel order untouched by the pipeline), so it overlays the
    input in any viewer. An existing ``out_path`` is replaced only if it is a label map this function wrote.
    """
    missing = [m for m in MODALITIES if m not in files]
    if missing:
        raise UserError(f"missing input contrast(s) {missing}; need {', '.join(MODALITIES)}")
    paths = {m: Path(files[m]) for m in MODALITIES}
    check_replaceable(out_path, "label map", _is_label_map)
    device = select_device(config.device)
    check_files(paths, name=paths["t1ce"].name, read_data=False)
    model, _ = load_checkpoint(checkpoint)
    model.to(device)
    with user_errors_unwrapped():
        item = infer_transforms()({"image": [str(paths[m]) for m in MODALITIES]})
    regions = predict_regions(model, item["image"], config, device)
    labels = regions_to_labels(regions)
    reference = nib.load(str(paths["t1ce"]))
    if labels.shape != reference.shape:
        raise RuntimeError(f"prediction shape {labels.shape} differs from the input {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    header["scl_slope"], header["scl_inter"] = 1, 0
    header["descrip"] = LABEL_MAP_DESCRIPTION.encode()
    image = nib.Nifti1Image(labels, reference.affine, header)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        nib.save(image, str(tmp))
    logger.info("%s: %s", out_path, ", ".join(f"label {v}: {int((labels == v).sum())} voxels" for v in (1, 2, 4)))
    return out_path
