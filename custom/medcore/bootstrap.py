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
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["Interval", "bootstrap_columns", "stratified_bootstrap", "Comparison", "compare_columns",
           "paired_difference", "stratified_mean"]


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
        """``0.8123 (95% CI 0.7100 to 0.9000)``, or the estimate with the reason there is no interval."""
        if self.low is None or self.high is None:
            return f"{self.estimate:.{digits}f} (no interval: {self.reason})"
        return f"{self.estimate:.{digits}f} ({100 * self.level:g}% CI {self.low:.{digits}f} to {self.high:.{digits}f})"


def _draws(strata: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """``resamples`` index arrays, each item drawn with replacement within its stratum (strata sizes kept)."""
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])


def _interval(estimate: float, values: np.ndarray, level: float, resamples: int, seed: int) -> Interval:
    """The percentile interval of one statistic's resampled ``values`` (NaN: undefined on that resample)."""
    defined = values[~np.isnan(values)]
    undefined = int(values.size - defined.size)
    if not defined.size:
        return Interval(estimate, None, None, level, resamples, undefined, seed=seed,
                        reason="undefined on every resample")
    if math.isnan(estimate):
        return Interval(estimate, None, None, level, resamples, undefined, seed=seed,
                        reason="the estimate itself is undefined")
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), level, resamples, undefined, seed=seed)


def _resampled(statistics: Callable[[np.ndarray], Mapping[str, float]], strata: np.ndarray, resamples: int,
               seed: int) -> tuple[dict[str, float], np.ndarray | None]:
    """The statistics on all items, and on each resample as rows of an array (None: nothing to resample, fewer
    than two items in every stratum)."""
    estimates = {k: float(v) for k, v in statistics(np.arange(len(strata))).items()}
    if not len(strata) or all(np.count_nonzero(strata == s) < 2 for s in np.unique(strata)):
        return estimates, None
    values = np.array([[float(v) for v in statistics(drawn).values()] for drawn in _draws(strata, resamples, seed)])
    return estimates, values.reshape(resamples, len(estimates))


def bootstrap_columns(statistics: Callable[[np.ndarray], Mapping[str, float]], strata: Sequence[int], *,
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Interval]:
    """The percentile bootstrap interval of each of several statistics of the same items, all from the same
    resamples (so the intervals of, say, a model's TC, WT and ET Dice come from one set of resampled cases).

    Args:
        statistics: of an index array into the items (with repeats), a mapping name -> value; called once on
            ``arange(n)`` for the estimates and once per resample.
        strata: each item's stratum (any integers); items are resampled within their stratum, keeping its size.
        resamples: number of resamples (at least 2,000 for a 95% interval's tails).
        seed: seed of the resampling.

    Returns:
        name -> :class:`Interval` (linear interpolation between order statistics). With fewer than two items in
        every stratum there is nothing to resample: no interval.
    """
    estimates, values = _resampled(statistics, np.asarray(strata), resamples, seed)
    if values is None:
        return {k: Interval(v, None, None, level, 0, 0, seed=seed, reason="fewer than two items to resample")
                for k, v in estimates.items()}
    return {k: _interval(estimates[k], values[:, i], level, resamples, seed) for i, k in enumerate(estimates)}


def stratified_bootstrap(statistic: Callable[[np.ndarray], float], strata: Sequence[int], *, resamples: int = 2000,
                         seed: int = 0, level: float = 0.95) -> Interval:
    """The percentile bootstrap interval of one ``statistic`` (of an index array into the items, the value) over
    items resampled within their strata: :func:`bootstrap_columns` of a single statistic."""
    return bootstrap_columns(lambda drawn: {"value": statistic(drawn)}, strata, resamples=resamples, seed=seed,
                             level=level)["value"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Model A against model B on the same items: the statistic's difference ``A - B`` with its paired bootstrap
    interval, and the two-sided bootstrap p-value of "no difference" (twice the share of resampled differences on
    the far side of 0, at most 1; None without an interval)."""

    difference: Interval
    p_value: float | None

    def to_dict(self) -> dict:
        return {"difference": self.difference.to_dict(), "p_value": self.p_value}

    @property
    def p_text(self) -> str:
        """The p-value as text; 0 (no resample on the far side of 0) is below one in the number of resamples."""
        if self.p_value is None:
            return "-"
        return f"< {1 / self.difference.resamples:.2g}" if self.p_value == 0 else f"{self.p_value:.3g}"

    def text(self, digits: int = 4) -> str:
        p = "" if self.p_value is None else f", p {'= ' if self.p_value else ''}{self.p_text}"
        return f"{self.difference.estimate:+.{digits}f}" + self.difference.text(digits)[
            len(f"{self.difference.estimate:.{digits}f}"):] + p


def compare_columns(statistics_a: Callable[[np.ndarray], Mapping[str, float]],
                    statistics_b: Callable[[np.ndarray], Mapping[str, float]], strata: Sequence[int], *,
                    resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Comparison]:
    """Paired bootstrap comparison of two models scored on the same items: each resample of the items (within
    their strata) is scored with both models' statistics, so the interval is of the difference on shared items
    (a per-case difference, or a difference of AUCs on the same patches)."""

    def difference(drawn: np.ndarray) -> dict[str, float]:
        a, b = statistics_a(drawn), statistics_b(drawn)
        return {k: float(a[k]) - float(b[k]) for k in a}

    estimates, values = _resampled(difference, np.asarray(strata), resamples, seed)
    out = {}
    for i, k in enumerate(estimates):
        if values is None:
            out[k] = Comparison(Interval(estimates[k], None, None, level, 0, 0, seed=seed,
                                         reason="fewer than two items to resample"), None)
            continue
        interval = _interval(estimates[k], values[:, i], level, resamples, seed)
        defined = values[:, i][~np.isnan(values[:, i])]
        p_value = None if interval.low is None else \
            min(1.0, 2 * min(float(np.mean(defined <= 0)), float(np.mean(defined >= 0))))
        out[k] = Comparison(interval, p_value)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], strata: Sequence[int] | None = None, *,
                      weights: Mapping[int, float] | None = None, resamples: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Comparison:
    """Compare two models' per-item scores (``a[i]`` and ``b[i]`` of item ``i``): the mean difference, or with
    ``strata`` (a site's cases within the site) the ``weights``-weighted mean over strata of each stratum's mean
    (default weights: the strata's sizes, i.e. the mean over all items)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two equally long lists, got {a.shape} and {b.shape}")
    strata = np.zeros(len(a), dtype=int) if strata is None else np.asarray(strata)
    mean_a, mean_b = stratified_mean(a, strata, weights), stratified_mean(b, strata, weights)
    return compare_columns(lambda d: {"mean": mean_a(d)}, lambda d: {"mean": mean_b(d)}, strata,
                           resamples=resamples, seed=seed, level=level)["mean"]


def stratified_mean(values: Sequence[float], strata: Sequence[int],
                    weights: Mapping[int, float] | None = None) -> Callable[[np.ndarray], float]:
    """The statistic "weighted mean over strata of each stratum's mean of ``values``" of an index array (default
    weights: the strata's sizes), e.g. a cross-site AVE weighted by each site's number of cases."""
    values, strata = np.asarray(values, dtype=np.float64), np.asarray(strata)
    names = np.unique(strata)
    used = {s: float(np.count_nonzero(strata == s)) if weights is None else float(weights[s]) for s in names}
    total = sum(used.values())

    def statistic(drawn: np.ndarray) -> float:
        picked, where = values[drawn], strata[drawn]
        return sum(used[s] * float(np.mean(picked[where == s])) for s in names) / total

    return statistic
