"""Confidence intervals by the bootstrap: resample the evaluated items (cases, slides) with replacement, recompute
the statistic on each resample, and report the central 95% of those values (the percentile interval).

Resampling is *stratified*: each stratum (e.g. tumour and normal slides) is resampled within itself, keeping its
size, so every resample has the mix of the original (a FROC needs lesions, an AUC both classes). A statistic that is
undefined on a resample (NaN) is left out, and the number of such resamples is reported. The generator is seeded,
so the same inputs give the same interval.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["Interval", "stratified_bootstrap"]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A bootstrap interval of ``estimate`` (None bounds: no interval, e.g. one item only; ``reason`` says why)."""

    estimate: float
    low: float | None
    high: float | None
    level: float = 0.95
    resamples: int = 0
    undefined: int = 0  # resamples on which the statistic was undefined (left out)
    method: str = "percentile"
    seed: int = 0
    reason: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self, digits: int = 4) -> str:
        """``0.8123 (95% CI 0.7100-0.9000)``, or the estimate with the reason there is no interval."""
        if self.low is None or self.high is None:
            return f"{self.estimate:.{digits}f} (no interval: {self.reason})"
        return f"{self.estimate:.{digits}f} ({100 * self.level:g}% CI {self.low:.{digits}f}-{self.high:.{digits}f})"


def stratified_bootstrap(statistic: Callable[[np.ndarray], float], strata: Sequence[int], *, resamples: int = 2000,
                         seed: int = 0, level: float = 0.95) -> Interval:
    """The percentile bootstrap interval of ``statistic`` over items resampled within their strata.

    Args:
        statistic: of an index array into the items (with repeats), the value; called once on ``arange(n)`` for
            the estimate and once per resample.
        strata: each item's stratum (any integers); items are resampled within their stratum.
        resamples: number of resamples (at least 2,000 for a 95% interval's tails).
        seed: seed of the resampling.

    Returns:
        The estimate and the ``level`` percentile interval (linear interpolation between order statistics). With
        fewer than two items in every stratum there is nothing to resample: no interval.
    """
    strata = np.asarray(strata)
    estimate = float(statistic(np.arange(len(strata))))
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    if not len(strata) or all(len(g) < 2 for g in groups):
        return Interval(estimate, None, None, level, 0, 0, seed=seed,
                        reason="fewer than two items to resample")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        values.append(float(statistic(drawn)))
    values = np.asarray(values)
    defined = values[~np.isnan(values)]
    if not defined.size:
        return Interval(estimate, None, None, level, resamples, resamples, seed=seed,
                        reason="undefined on every resample")
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    if math.isnan(estimate):
        return Interval(estimate, None, None, level, resamples, int(values.size - defined.size), seed=seed,
                        reason="the estimate itself is undefined")
    return Interval(estimate, float(low), float(high), level, resamples, int(values.size - defined.size), seed=seed)
