"""Site datalists: the BraTS release split into the two federated sites, in MONAI's datalist format.

The Clara federation puts the high-grade cases at site-1 and the low-grade cases at site-2 and splits each site
into training / validation / testing. On the real release (210 HGG, 75 LGG) the split sizes are Clara's:
site-1 144 / 30 / 36 and site-2 56 / 12 / 7. Other case counts are split in the same per-site proportions.

A datalist file (``seg_brats18_datalist_client_a.json`` for site-1, ``..._client_b.json`` for site-2)::

    {"training":   [{"image": ["HGG/<case>/<case>_t1ce.nii.gz", "..._t1.nii.gz", "..._t2.nii.gz",
                               "..._flair.nii.gz"],
                     "label": "HGG/<case>/<case>_seg.nii.gz"}, ...],
     "validation": [...],
     "testing":    [...]}

with paths relative to the data root (``monai.data.load_decathlon_datalist(path, base_dir=root)`` reads it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from medcore.errors import UserError
from medcore.files import claim_output_dir, read_json, write_json
from medcore.progress import Progress

from .data import MODALITIES, CaseError, case_files, check_case, check_files, find_cases

__all__ = ["SPLITS", "SiteSpec", "CLARA_SITES", "split_sizes", "build_datalists", "write_datalists",
           "read_datalist", "datalist_files"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("training", "validation", "testing")


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """One federated site: which grade it holds, its datalist file name and Clara's split of the release."""

    name: str
    grade: str
    datalist: str
    clara_split: tuple[int, int, int]  # training, validation, testing cases of the real release


CLARA_SITES: tuple[SiteSpec, ...] = (
    SiteSpec("site-1", "HGG", "seg_brats18_datalist_client_a.json", (144, 30, 36)),
    SiteSpec("site-2", "LGG", "seg_brats18_datalist_client_b.json", (56, 12, 7)),
)


def split_sizes(n_cases: int, clara_split: Sequence[int]) -> tuple[int, int, int]:
    """Training, validation and testing sizes for ``n_cases`` in the proportions of ``clara_split``.

    Validation and testing get ``round(n * share)`` cases (at least one each; ``n >= 3``), training the rest,
    so Clara's own counts come back exactly for the release's case numbers.
    """
    if n_cases < 3:
        raise UserError(f"{n_cases} cases are too few to split into training, validation and testing (need 3)")
    total = sum(clara_split)
    val = max(1, int(round(n_cases * clara_split[1] / total)))
    test = max(1, int(round(n_cases * clara_split[2] / total)))
    return n_cases - val - test, val, test


def _entry(case_dir: Path, root: Path) -> dict:
    files = case_files(case_dir)
    return {"image": [files[m].relative_to(root).as_posix() for m in MODALITIES],
            "label": files["seg"].relative_to(root).as_posix()}


def build_datalists(root: str | Path, seed: int = 0, check: bool = True,
                    sites: Sequence[SiteSpec] = CLARA_SITES) -> dict[str, dict[str, list[dict]]]:
    """Split a BraTS root into per-site datalists ``{site: {"training": [...], "validation": [...], ...}}``.

    The split is a seeded shuffle of the case names, so it is the same on every machine for a seed. With
    ``check`` every case is checked first (:func:`~brats_fl.data.check_case`) and the first bad case raises
    :class:`~brats_fl.data.CaseError`, so a broken data set never produces datalists.
    """
    root = Path(root)
    cases = find_cases(root)
    if check:
        all_cases = [c for site in sites for c in cases[site.grade]]
        progress = Progress(len(all_cases), "cases checked", logger)
        for case_dir in all_cases:
            info = check_case(case_dir)
            progress.step(f"{info.name} {info.shape} labels {list(info.labels)}")
    lists = {}
    for index, site in enumerate(sites):
        names = sorted(cases[site.grade], key=lambda p: p.name)
        if not names:
            raise CaseError(f"{root / site.grade}: no cases for {site.name}")
        order = np.random.default_rng([seed, index]).permutation(len(names))
        shuffled = [names[i] for i in order]
        n_train, n_val, _ = split_sizes(len(shuffled), site.clara_split)
        parts = (shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:])
        lists[site.name] = {split: [_entry(c, root) for c in sorted(part)] for split, part in zip(SPLITS, parts)}
    return lists


def write_datalists(root: str | Path, out_dir: str | Path | None = None, seed: int = 0, check: bool = True,
                    sites: Sequence[SiteSpec] = CLARA_SITES) -> dict[str, Path]:
    """Build the datalists and write one JSON per site (default folder: ``ROOT/datalists``); return their paths."""
    out = Path(out_dir) if out_dir is not None else Path(root) / "datalists"
    lists = build_datalists(root, seed=seed, check=check, sites=sites)
    claim_output_dir(out, "datalists", [site.datalist for site in sites])
    paths = {}
    for site in sites:
        paths[site.name] = write_json(out / site.datalist, lists[site.name])
        sizes = "/".join(str(len(lists[site.name][s])) for s in SPLITS)
        logger.info("%s (%s): %s training/validation/testing -> %s", site.name, site.grade, sizes,
                    paths[site.name])
    return paths


def datalist_files(entry: dict, root: str | Path) -> dict[str, Path]:
    """The NIfTI paths of one datalist entry, keyed like :func:`~brats_fl.data.case_files`."""
    root = Path(root)
    files = {m: root / p for m, p in zip(MODALITIES, entry["image"])}
    if "label" in entry:
        files["seg"] = root / entry["label"]
    return files


def read_datalist(path: str | Path, root: str | Path, splits: Sequence[str] = SPLITS,
                  check: bool = True) -> dict[str, list[dict]]:
    """Read a site datalist, resolve its paths against ``root`` and (by default) check every case it names from its
    files' headers (:func:`~brats_fl.data.check_files`: present, readable, one shape and affine); the values are
    checked where the cases are decoded for use (:class:`~brats_fl.transforms.LoadCased`), so no file is decoded
    twice.

    Returns ``{split: [{"image": [4 absolute paths], "label": absolute path, "name": case}, ...]}`` for the
    requested splits. Raises :class:`~brats_fl.data.CaseError` naming the datalist or the case file at fault.
    """
    path = Path(path)
    content = read_json(path, "datalist file", CaseError)
    if not isinstance(content, dict):
        raise CaseError(f"{path}: expected an object with {', '.join(SPLITS)} lists")
    result = {}
    for split in splits:
        entries = content.get(split)
        if not isinstance(entries, list) or not entries:
            raise CaseError(f"{path}: the {split!r} list is missing or empty")
        resolved = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), list) or \
                    len(entry["image"]) != len(MODALITIES) or not all(isinstance(p, str) for p in entry["image"]) \
                    or not isinstance(entry.get("label"), str):
                raise CaseError(f"{path}: {split}[{i}] must be {{'image': [t1ce, t1, t2, flair], 'label': seg}} "
                                f"with file paths, got {json.dumps(entry)[:200]}")
            files = datalist_files(entry, root)
            name = Path(entry["image"][0]).parent.name or f"{split}[{i}]"
            if check:
                check_files(files, name, read_data=False)
            resolved.append({"image": [str(files[m]) for m in MODALITIES], "name": name,
                             **({"label": str(files["seg"])} if "seg" in files else {})})
        result[split] = resolved
    return result
