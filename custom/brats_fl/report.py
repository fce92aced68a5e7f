"""The BraTS cross-site validation report users read, as Clara prints it, and the training curves.

For every model (final global, best global, each site's local best) the report lists each site's TC / WT / ET
Dice on its testing split and their average across sites weighted by the number of test cases: with Clara's
split, AVE = (site-1 x 30 + site-2 x 12) / 42. (Clara's card names 30 and 12 "testing" cases while its
datalists hold 36 and 7 testing cases and 30 / 12 validation cases; our learner reports the number of cases it
evaluated, ``n_cases``, and the report weights by it. ``weights`` reproduces any other weighting, e.g. Clara's
``{"site-1": 30, "site-2": 12}``.) After the Dice columns come the Hausdorff 95 distances per region in mm
(``HD95_TC``, ``HD95_WT``, ``HD95_ET``, lower is better), the mean over each site's cases, when the results carry
them. Each value's 95% interval resamples the site's test cases (:func:`case_means` of the per-case scores the
results carry). The machinery is :mod:`medflare.crosssite`; this module says what BraTS results hold.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from medflare.crosssite import ReportSpec

from .metrics import REGIONS

__all__ = ["BRATS_REPORT", "case_means"]


def case_means(items: Mapping[str, np.ndarray]) -> Callable[[np.ndarray], dict[str, float]]:
    """Of the per-case scores ``items``, the statistic "each score's mean over the cases ``drawn`` (indices, with
    repeats)": a report cell's values."""
    names, table = list(items), np.stack([np.asarray(v, np.float64) for v in items.values()])
    return lambda drawn: dict(zip(names, table[:, drawn].mean(axis=1).tolist()))


BRATS_REPORT = ReportSpec(
    required=REGIONS, columns=(*REGIONS, "mean"), count_key="n_cases", count_name="test cases",
    split_name="testing splits", distances=tuple(f"HD95_{r}" for r in REGIONS), item_statistics=case_means,
    curves=(("train_loss", "training loss (Dice loss)", "local epoch"),
            ("val_dice", "validation mean Dice of the global model", "round"),
            ("local_val_dice", "validation mean Dice of the local model", "local epoch")),
)
