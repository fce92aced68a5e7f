"""Cross-site validation reports: FLARE's ``cross_val_results.json`` arranged per model and site, the weighted
average across sites, text / Markdown / CSV / JSON output, and the training curves from the TensorBoard events
FLARE streams to the server.

Input: ``cross_site_val/cross_val_results.json``, shaped ``{data_site: {model_owner: {metric: value}}}``, where
the server's models are ``SRV_FL_global_model.pt`` (the final global model) and ``SRV_best_FL_global_model.pt``
(the best global model by in-time selection), and each site's local best model is listed under the site's name.
What a job's results hold (metric names, the count to weigh sites by) is a :class:`ReportSpec`.

Every cell (a model on a site) and every AVE gets a 95% bootstrap interval when the results carry their per-item
scores (``items``: one entry per test case or validation patch, in the order the site scored them): the
percentile interval of :mod:`medcore.bootstrap` over the site's items, and for the AVE a stratified bootstrap that
resamples each site's items within the site and keeps the AVE's site weights. ``compare`` gives the paired
difference of two models on the same items, its interval and p-value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from medcore.bootstrap import Comparison, Interval, bootstrap_columns, compare_columns
from medcore.errors import UserError
from medcore.files import atomic_path, claim_output_dir, read_json, write_csv, write_json, write_text

__all__ = ["SERVER_PREFIX", "SERVER_FINAL", "SERVER_BEST", "ITEMS", "ReportError", "EmptyResults", "ReportSpec",
           "CrossSiteReport", "item_lists", "find_results", "load_results", "build_report", "compare_models",
           "format_comparison",
           "format_text", "format_markdown", "write_report", "plot_curves", "report_command"]

#: How FLARE's cross-site evaluation names the server's models.
SERVER_PREFIX = "SRV_"
SERVER_FINAL = "SRV_FL_global_model.pt"
SERVER_BEST = "SRV_best_FL_global_model.pt"
#: The key of a result's per-item scores: ``{name: [one value per case or patch]}``, lists of equal length.
ITEMS = "items"


class ReportError(UserError):
    """Results that cannot be reported; the message names the file and the problem."""


class EmptyResults(ReportError):
    """A results file that holds no result at all (``{}``): the run ended before any model was scored."""


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    """What a job's cross-site results hold.

    Attributes:
        required: metrics every (site, model) result must have.
        columns: metrics shown, in order (``mean`` may be derived: the mean of ``required`` when absent).
        count_key: metric holding how many items a result was computed on (sites are weighted by it).
        count_name: what those items are, for the report's heading ("test cases", "validation patches").
        split_name: the data the models were scored on ("testing splits").
        curves: TensorBoard scalars to plot: (tag, title, x-axis label).
        distances: metrics shown after ``columns`` when every result has them (e.g. Hausdorff distances in mm:
            non-negative, not bounded by 1, lower is better).
        item_statistics: given a result's :data:`ITEMS` as arrays, the statistic the intervals resample: of an
            index array into the items (with repeats), ``{column: value}`` for the columns and distances (a
            factory, so that what does not change between resamples, e.g. a sort, is done once).
        item_strata: each item's stratum within a site (e.g. a patch's label, so every resample keeps both
            classes); None: one.
    """

    required: tuple[str, ...]
    columns: tuple[str, ...]
    count_key: str
    count_name: str
    split_name: str
    curves: tuple[tuple[str, str, str], ...] = ()
    distances: tuple[str, ...] = ()
    item_statistics: Callable[[Mapping[str, np.ndarray]], Callable[[np.ndarray], Mapping[str, float]]] | None = None
    item_strata: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class CrossSiteReport:
    """Scores per model and site, the site weights and the weighted average per model."""

    spec: ReportSpec
    models: list[str]
    sites: list[str]
    scores: dict[str, dict[str, dict[str, float]]]  # model -> site -> column -> value
    weights: dict[str, float]
    weights_source: str
    average: dict[str, dict[str, float]]  # model -> column -> value
    columns: tuple[str, ...]  # the spec's columns, then the distances every result has
    extra_models: tuple[str, ...] = ()  # models outside the federation, scored by the report command
    #: model -> site or "AVE" -> column -> 95% interval; empty where the results carry no per-item scores
    intervals: dict[str, dict[str, dict[str, Interval]]] = dataclasses.field(default_factory=dict)
    resamples: int = 0
    seed: int = 0

    @property
    def missing(self) -> list[str]:
        """What a complete cross-site matrix would hold and these results lack, as sentences (a site whose result
        never reached the server, a training job without a best global model), so a failed part of a run is not
        read as a finished one."""
        notes = [f"{model} was not scored on {site}" for model in self.models for site in self.sites
                 if site not in self.scores[model]]
        if SERVER_FINAL in self.models and SERVER_BEST not in self.models:
            notes.append(f"there is no best global model ({SERVER_BEST}): no global model was scored in training")
        return notes

    def format(self, column: str, value: float) -> str:
        """A value as the report shows it: scores to 4 decimals, distances to 2."""
        return f"{value:.2f}" if column in self.spec.distances else f"{value:.4f}"

    def cell(self, model: str, row: str, column: str, value: float) -> str:
        """A value with its interval, ``0.8790 [0.8500, 0.9000]``, where it has one."""
        interval = self.intervals.get(model, {}).get(row, {}).get(column)
        if interval is None or interval.low is None:
            return self.format(column, value)
        return (f"{self.format(column, value)} [{self.format(column, interval.low)}, "
                f"{self.format(column, interval.high)}]")

    @property
    def interval_note(self) -> str:
        """How the intervals were computed, or why there are none."""
        if not self.intervals:
            return "No intervals: the results carry no per-item scores (a run of an older version)" \
                if self.resamples else "No intervals (resamples 0)."
        return (f"[low, high]: 95% percentile bootstrap intervals over each site's {self.spec.count_name} "
                f"({self.resamples} resamples, seed {self.seed}); the AVE's resample each site's "
                f"{self.spec.count_name} within the site and keep the weights. A value without one has no per-item "
                "scores or fewer than two items.")

    def title(self, model: str) -> str:
        if model == SERVER_FINAL:
            return "Global model at the end of federated training"
        if model == SERVER_BEST:
            return "Global best model selected via IntimeModelSelector"
        if model in self.extra_models:
            return f"Model {model!r} (not from this federation) scored on the same {self.spec.split_name}"
        if model.startswith(SERVER_PREFIX):  # a federated evaluation's checkpoint (medflare.evaluation)
            return f"Model {model[len(SERVER_PREFIX):]!r} sent to every site and scored there (federated evaluation)"
        return f"{model.capitalize()} best model selected via {model} local validation"


def find_results(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the single ``cross_site_val/cross_val_results.json`` below it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ReportError(f"{path}: no such file or folder")
    found = sorted(path.rglob("cross_site_val/cross_val_results.json"))
    if not found:
        raise ReportError(f"{path}: no cross_site_val/cross_val_results.json below this folder")
    if len(found) > 1:
        raise ReportError(f"{path}: several results below this folder, pass one: " + ", ".join(map(str, found)))
    return found[0]


def load_results(path: str | Path, spec: ReportSpec) -> dict:
    """Read and check a ``cross_val_results.json``."""
    path = Path(path)
    results = read_json(path, "cross-site results", ReportError)
    if results == {}:
        raise EmptyResults(f"{path}: holds no results: the run ended before any model was scored on a site (did a "
                          "site fail to start? its error_log.txt says why)")
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise ReportError(f"{path}: expected {{data_site: {{model_owner: {{metric: value}}}}}}")
    for site, per_model in results.items():
        for model, metrics in per_model.items():
            if not isinstance(metrics, dict) or any(not isinstance(metrics.get(c), (int, float))
                                                    or isinstance(metrics.get(c), bool) for c in spec.required):
                raise ReportError(f"{path}: model {model!r} on site {site!r} lacks numeric "
                                  f"{', '.join(spec.required)} (got {metrics!r}); did validation fail on that site?")
            # Every reported metric is a score in [0, 1]; NaN (e.g. an AUC of one class) is shown as such.
            wrong = [c for c in spec.columns if isinstance(metrics.get(c), (int, float))
                     and not math.isnan(metrics[c]) and not 0 <= metrics[c] <= 1]
            if wrong:
                raise ReportError(f"{path}: model {model!r} on site {site!r} has {wrong[0]} = {metrics[wrong[0]]!r}, "
                                  "outside [0, 1]")
            _check_items(path, site, model, metrics)
            negative = [c for c in spec.distances if isinstance(metrics.get(c), (int, float)) and metrics[c] < 0]
            if negative:
                raise ReportError(f"{path}: model {model!r} on site {site!r} has {negative[0]} = "
                                  f"{metrics[negative[0]]!r}, a negative distance")
    return results


def item_lists(per_item: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """Per-item scores as results carry them (:data:`ITEMS`): each numeric score's values, in item order."""
    if not per_item:
        return {}
    keys = [k for k, v in per_item[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: [float(item[k]) for item in per_item] for k in keys}


def _check_items(path: Path, site: str, model: str, metrics: Mapping) -> None:
    """A result's per-item scores, if any: a mapping of equally long lists of numbers."""
    items = metrics.get(ITEMS)
    if items is None:
        return
    lengths = {len(v) for v in items.values() if isinstance(v, list)} if isinstance(items, dict) else set()
    if not isinstance(items, dict) or not items or len(lengths) != 1 or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in items.values()):
        raise ReportError(f"{path}: model {model!r} on site {site!r} has {ITEMS!r} that are not lists of numbers of "
                          "one length")


def _items(metrics: Mapping) -> dict[str, np.ndarray] | None:
    items = metrics.get(ITEMS)
    return None if not items else {k: np.asarray(v, dtype=np.float64) for k, v in items.items()}


def _strata(spec: ReportSpec, items: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each of a result's items' stratum within its site (one stratum when the spec has none)."""
    return np.asarray(spec.item_strata(items)) if spec.item_strata else np.zeros(len(next(iter(items.values()))))


def _cell_statistics(spec: ReportSpec, items: Mapping[str, np.ndarray], columns: Sequence[str]):
    """The report's ``columns`` of a subset of one result's items, as a bootstrap statistic."""
    statistic = spec.item_statistics(items)

    def columns_of(drawn: np.ndarray) -> dict[str, float]:
        values = statistic(drawn)
        return {c: float(values.get(c, math.nan)) for c in columns}

    return columns_of


def _pooled(spec: ReportSpec, per_site: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float],
            columns: Sequence[str]):
    """The AVE over ``per_site`` items as a bootstrap statistic of indices into their concatenation, and the
    strata that keep each site's items (and each site's own strata) apart."""
    sites = list(per_site)
    sizes = [len(next(iter(per_site[s].values()))) for s in sites]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    site_of = np.repeat(np.arange(len(sites)), sizes)
    within = np.concatenate([_strata(spec, per_site[s]) for s in sites]).astype(np.int64)
    strata = site_of * (int(within.max(initial=0)) + 1) + within
    total = sum(weights[s] for s in sites)
    per_site_statistics = [_cell_statistics(spec, per_site[s], columns) for s in sites]

    def statistic(drawn: np.ndarray) -> dict[str, float]:
        out = dict.fromkeys(columns, 0.0)
        for k, site in enumerate(sites):
            values = per_site_statistics[k](drawn[site_of[drawn] == k] - offsets[k])
            for c in columns:
                out[c] += weights[site] * values[c] / total
        return out

    return statistic, strata


def _intervals(results: Mapping, spec: ReportSpec, models: Sequence[str], sites: Sequence[str],
               weights: Mapping[str, float], columns: Sequence[str], resamples: int,
               seed: int) -> dict[str, dict[str, dict[str, Interval]]]:
    """model -> site or ``AVE`` -> column -> interval, for the results that carry per-item scores."""
    if not resamples or spec.item_statistics is None:
        return {}
    out: dict[str, dict[str, dict[str, Interval]]] = {}
    for model in models:
        per_site = {s: _items(results[s][model]) for s in sites if model in results[s]}
        if not per_site or any(v is None for v in per_site.values()):
            continue  # the AVE needs every site's items
        rows = {}
        for site, items in per_site.items():
            rows[site] = bootstrap_columns(_cell_statistics(spec, items, columns), _strata(spec, items),
                                           resamples=resamples, seed=seed)
        if len(per_site) == 1:  # the AVE of one site is that site's value, and so is its interval
            rows["AVE"] = next(iter(rows.values()))
        else:
            statistic, strata = _pooled(spec, per_site, weights, columns)
            rows["AVE"] = bootstrap_columns(statistic, strata, resamples=resamples, seed=seed)
        out[model] = rows
    return out


def _model_order(models: set[str], extra: Sequence[str] = ()) -> list[str]:
    server = [m for m in (SERVER_FINAL, SERVER_BEST) if m in models]
    return server + sorted(models - set(server) - set(extra)) + [m for m in extra if m in models]


def build_report(results: Mapping[str, Mapping[str, Mapping[str, float]]], spec: ReportSpec,
                 weights: Mapping[str, float] | None = None, extra_models: Sequence[str] = (),
                 resamples: int = 2000, seed: int = 0) -> CrossSiteReport:
    """Arrange results per model and compute the weighted cross-site average, with 95% bootstrap intervals
    (``resamples``, ``seed``; 0 resamples: none) where the results carry per-item scores.

    Weights: ``weights`` if given (every site needs one), else each site's ``spec.count_key`` (must agree across
    the models evaluated there), else equal weights. ``extra_models``: models in ``results`` that did not come
    from the federation (e.g. a centrally trained baseline), listed last.
    """
    sites = sorted(results)
    models = _model_order({m for per_model in results.values() for m in per_model}, extra_models)
    distances = tuple(c for c in spec.distances
                      if all(isinstance(m.get(c), (int, float)) for per in results.values() for m in per.values()))
    columns = (*spec.columns, *distances)
    scores: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    for site in sites:
        for model, metrics in results[site].items():
            values = {c: float(metrics[c]) for c in (*spec.required, *distances)}
            for column in spec.columns:
                if column not in values:
                    values[column] = float(metrics[column]) if column in metrics else \
                        sum(values[c] for c in spec.required) / len(spec.required)
            scores[model][site] = {c: values[c] for c in columns}
    if weights is not None:
        missing = [s for s in sites if s not in weights]
        if missing:
            raise ReportError(f"no weight given for site(s) {missing}")
        used = {s: float(weights[s]) for s in sites}
        source = "given weights"
    else:
        counts = {s: {m.get(spec.count_key) for m in results[s].values()} for s in sites}
        if all(len(c) == 1 and isinstance(next(iter(c)), (int, float)) for c in counts.values()):
            used = {s: float(next(iter(counts[s]))) for s in sites}
            source = f"number of {spec.count_name}"
        else:
            used = {s: 1.0 for s in sites}
            source = f"equal (results carry no consistent {spec.count_key})"
    if any(w < 0 for w in used.values()) or sum(used.values()) <= 0:
        raise ReportError(f"site weights must be non-negative with a positive sum, got {used}")
    average = {}
    for model in models:
        present = [s for s in sites if s in scores[model]]
        total = sum(used[s] for s in present)
        average[model] = {c: (sum(scores[model][s][c] * used[s] for s in present) / total if total else math.nan)
                          for c in columns}
    intervals = _intervals(results, spec, models, sites, used, columns, resamples, seed)
    return CrossSiteReport(spec, models, sites, scores, used, source, average, columns, tuple(extra_models),
                           intervals, resamples, seed)


def compare_models(results: Mapping[str, Mapping[str, Mapping]], spec: ReportSpec, model_a: str, model_b: str,
                   weights: Mapping[str, float], resamples: int = 2000,
                   seed: int = 0) -> dict[str, dict[str, Comparison]]:
    """Model A against model B on the same items: site or ``AVE`` -> column -> the paired difference ``A - B``,
    its 95% bootstrap interval and p-value (:func:`medcore.bootstrap.compare_columns`); the AVE's resampling is
    stratified by site, with the report's site weights.

    Both models need per-item scores on every site, of the same length (each site scores its items in one order
    for every model); else :class:`ReportError`.
    """
    columns = (*spec.columns, *spec.distances)
    per_model = {}
    for model in (model_a, model_b):
        sites = [s for s in sorted(results) if model in results[s]]
        if not sites:
            raise ReportError(f"no model named {model!r} in the results (models: "
                              f"{sorted({m for per in results.values() for m in per})})")
        items = {s: _items(results[s][model]) for s in sites}
        lacking = [s for s, v in items.items() if v is None]
        if lacking:
            raise ReportError(f"model {model!r} has no per-item scores on {lacking} (results of an older version): "
                              "no paired comparison")
        per_model[model] = items
    a, b = per_model[model_a], per_model[model_b]
    if set(a) != set(b):
        raise ReportError(f"{model_a!r} was scored on {sorted(a)}, {model_b!r} on {sorted(b)}: compare them on the "
                          "same sites")
    for site in a:
        sizes = {len(next(iter(a[site].values()))), len(next(iter(b[site].values())))}
        if len(sizes) != 1:
            raise ReportError(f"{model_a!r} and {model_b!r} were scored on different numbers of items on {site!r} "
                              f"({sorted(sizes)}): not the same {spec.count_name}")
    columns = [c for c in columns if all(c in spec.item_statistics(a[s])(np.arange(1)) for s in a)]
    out = {}
    for site in a:
        out[site] = compare_columns(_cell_statistics(spec, a[site], columns), _cell_statistics(spec, b[site], columns),
                                    _strata(spec, a[site]), resamples=resamples, seed=seed)
    pooled_a, strata = _pooled(spec, a, weights, columns)
    pooled_b, _ = _pooled(spec, b, weights, columns)
    out["AVE"] = compare_columns(pooled_a, pooled_b, strata, resamples=resamples, seed=seed)
    return out


def format_comparison(comparison: Mapping[str, Mapping[str, Comparison]], model_a: str, model_b: str,
                      spec: ReportSpec) -> str:
    """The comparison as text: per site and AVE, each column's ``A - B`` with its interval and p-value."""
    lines = [f"{model_a} minus {model_b}, paired on the same {spec.count_name} (95% bootstrap intervals, "
             "two-sided bootstrap p-values):"]
    for row, per_column in comparison.items():
        lines.append(f"  {(row.capitalize() if row != 'AVE' else row) + ':':8s}")
        lines += [f"    {c}: {v.text(2 if c in spec.distances else 4)}" for c, v in per_column.items()]
    return "\n".join(lines)


def _rows(report: CrossSiteReport, model: str) -> list[tuple[str, str, dict[str, float]]]:
    """(shown name, site or ``AVE``, values) of a model's rows."""
    rows = [(site.capitalize(), site, report.scores[model][site]) for site in report.sites
            if site in report.scores[model]]
    return rows + [("AVE", "AVE", report.average[model])]


def format_text(report: CrossSiteReport) -> str:
    """Clara's plain-text layout (``Site-1: TC: 0.8790 WT: 0.9180 ET: 0.8064`` ... ``AVE: ...``)."""
    weights = " + ".join(f"{s} x {report.weights[s]:g}" for s in report.sites)
    lines = [f"Cross-site validation ({report.spec.split_name}). AVE = ({weights}) / "
             f"{sum(report.weights.values()):g}, weights: {report.weights_source}.", ""]
    for model in report.models:
        lines.append(f"{report.title(model)} [{model}]:")
        for name, row, values in _rows(report, model):
            lines.append(f"  {name + ':':8s}" + " ".join(f"{c}: {report.cell(model, row, c, values[c])}"
                                                     for c in report.columns))
        lines.append("")
    lines.append(report.interval_note)
    lines += [f"Incomplete: {note}; its AVE is over the sites that scored it." if " on " in note else
              f"Incomplete: {note}." for note in report.missing]
    return "\n".join(lines)


def format_markdown(report: CrossSiteReport) -> str:
    """One Markdown table: a row per model and site (and AVE), a column per metric."""
    columns = report.columns
    out = ["| model | site | " + " | ".join(columns) + " |",
           "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]
    for model in report.models:
        for name, row, values in _rows(report, model):
            out.append(f"| {report.title(model)} | {name} | " + " | ".join(report.cell(model, row, c, values[c])
                                                                           for c in columns) + " |")
    out += ["", report.interval_note]
    out += [""] + [f"Incomplete: {note}." for note in report.missing] if report.missing else []
    return "\n".join(out) + "\n"


def write_report(report: CrossSiteReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.txt``, ``report.md``, ``report.csv`` and ``report.json`` (atomically) to ``out_dir``."""
    out = Path(out_dir)
    columns = report.columns
    rows = []

    def bounds(model: str, row: str) -> list[str]:
        found = report.intervals.get(model, {}).get(row, {})
        return [f"{v:.6f}" if v is not None else "" for c in columns
                for v in ((found[c].low, found[c].high) if c in found else (None, None))]

    for model in report.models:
        for site in report.sites:
            if site in report.scores[model]:
                rows.append([model, site, *(f"{report.scores[model][site][c]:.6f}" for c in columns),
                             report.weights[site], *bounds(model, site)])
        rows.append([model, "AVE", *(f"{report.average[model][c]:.6f}" for c in columns), "", *bounds(model, "AVE")])
    header = ["model", "site", *columns, "weight", *(f"{c}_{end}" for c in columns for end in ("low", "high"))]
    return {
        "txt": write_text(out / "report.txt", format_text(report)),
        "md": write_text(out / "report.md", format_markdown(report)),
        "csv": write_csv(out / "report.csv", rows, header=header, lineterminator="\r\n"),
        "json": write_json(out / "report.json", {
            "weights": report.weights, "weights_source": report.weights_source, "missing": report.missing,
            "intervals_method": report.interval_note,
            "models": {m: {"title": report.title(m), "sites": report.scores[m], "AVE": report.average[m],
                           "intervals": {row: {c: v.to_dict() for c, v in per.items()}
                                         for row, per in report.intervals.get(m, {}).items()}}
                       for m in report.models}}),
    }


def plot_curves(path: str | Path, out_png: str | Path, curves: Sequence[tuple[str, str, str]]) -> Path | None:
    """Plot per-site TensorBoard scalars (``curves``: tag, title, x label) that FLARE streamed to the server.

    ``path``: a simulator workspace, a downloaded job or a ``tb_events`` folder. Returns the PNG path, or ``None``
    when there are no events below ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every event file it scans
    path = Path(path)
    roots = [path] if path.name == "tb_events" else sorted(path.rglob("tb_events"))
    site_dirs = sorted({d for root in roots for d in root.iterdir() if d.is_dir()})
    if not site_dirs or not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    axes = axes[0]
    for site_dir in site_dirs:
        events = EventAccumulator(str(site_dir))
        events.Reload()
        tags = events.Tags().get("scalars", [])
        for ax, (tag, title, xlabel) in zip(axes, curves):
            if tag in tags:
                points = events.Scalars(tag)
                ax.plot([p.step for p in points], [p.value for p in points], marker=".", label=site_dir.name)
            ax.set_title(title)
            ax.set_xlabel(xlabel)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out_png


def _merge(results: dict, results_path: Path, other_path: Path, spec: ReportSpec) -> None:
    """Add the models of another results file of the same sites to ``results`` (in place)."""
    other = load_results(other_path, spec)
    if set(other) != set(results):
        raise ReportError(f"{other_path}: its sites {sorted(other)} are not those of {results_path} "
                          f"({sorted(results)})")
    for site, per_model in other.items():
        for model, metrics in per_model.items():
            if model in results[site]:
                raise ReportError(f"{other_path}: model {model!r} is in {results_path} already")
            results[site][model] = metrics


def report_command(path: str | Path, spec: ReportSpec, weights: Mapping[str, float] | None = None,
                   markdown: bool = False, out: str | Path | None = None, plot: bool = True,
                   added: Sequence[str | Path] = (),
                   extra: Callable[[Sequence[str]], Mapping[str, Mapping[str, Mapping[str, float]]]] | None = None,
                   check: Callable[[CrossSiteReport], None] | None = None, resamples: int = 2000, seed: int = 0,
                   compare: Sequence[str] = ()) -> int:
    """The ``report`` sub-command of both tools: print the report; with ``out`` write its files and the curves.

    ``added``: further results files of the same sites (e.g. a federated evaluation's, :mod:`medflare.evaluation`),
    whose models become rows of their own.
    ``extra``: given the results' sites, scores of further models ``{model: {site: metrics}}`` (e.g. a centrally
    trained baseline scored on each site's data), added as rows of their own.
    ``check``: called with the report once it is printed and written (e.g. to fail an incomplete run).
    ``resamples``, ``seed``: of the 95% bootstrap intervals (0 resamples: none).
    ``compare``: two models, A and B: their paired difference is printed (and written as ``comparison.json``).
    """
    results_path = find_results(path)
    try:
        results = load_results(results_path, spec)
    except EmptyResults:
        if not Path(path).is_dir():
            raise
        from .outcome import failure_reasons  # a run's workspace: its participants' logs say why

        raise ReportError(f"{results_path}: holds no results, the run ended before any model was scored on a site: "
                          f"{failure_reasons(path)}") from None
    for other in added:  # e.g. a federated evaluation of the same sites
        _merge(results, results_path, find_results(other), spec)
    added = dict(extra(sorted(results))) if extra else {}
    for model, per_site in added.items():
        clash = [site for site in per_site if model in results[site]]
        if clash:
            raise ReportError(f"{results_path}: a model named {model!r} is in the results already; name the extra "
                              "model otherwise")
        for site, metrics in per_site.items():
            results[site][model] = dict(metrics)
    report = build_report(results, spec, weights=weights, extra_models=list(added), resamples=resamples, seed=seed)
    print(format_markdown(report) if markdown else format_text(report))
    comparison = None
    if compare:
        comparison = compare_models(results, spec, *compare, report.weights, resamples=resamples or 2000, seed=seed)
        print("\n" + format_comparison(comparison, *compare, spec))
    if out:
        claim_output_dir(out, "report", [f"report.{e}" for e in ("txt", "md", "csv", "json")]
                         + ["training_curves.png", "comparison.json"])
        written = write_report(report, out)
        if comparison is not None:
            written["comparison"] = write_json(Path(out) / "comparison.json", {
                "a": compare[0], "b": compare[1], "difference": "a - b",
                "rows": {row: {c: v.to_dict() for c, v in per.items()} for row, per in comparison.items()}})
        events_root = Path(path) if Path(path).is_dir() else results_path.parent.parent
        png = plot_curves(events_root, Path(out) / "training_curves.png", spec.curves) if plot else None
        print(f"wrote {', '.join(str(p) for p in written.values())}" + (f", {png}" if png else ""))
    if check is not None:
        check(report)
    return 0
