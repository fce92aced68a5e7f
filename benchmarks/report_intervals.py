"""Benchmark: what the cross-site report's bootstrap intervals cost.

Synthetic results shaped like real ones (per-item scores drawn at random; only their number matters here):
* BraTS: Clara's split, 36 + 7 test cases, the four models of a federated job (final, best, two local bests),
  Dice and HD95 per region; the report's intervals and one paired comparison;
* metastasis: one site, the three models of a job, N validation patches (patch accuracy, AUC, sensitivity,
  specificity), for several N.
2,000 resamples (the default). Timings on this machine; they go next to inference's (minutes per slide, seconds
per case).

Run: .venv/bin/python benchmarks/report_intervals.py
Writes benchmarks/results/report_intervals.json and .md.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from brats_fl.report import BRATS_REPORT
from medflare.crosssite import build_report, compare_models
from metastasis.report import METASTASIS_REPORT

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2")


def brats_results(rng: np.random.Generator, cases: dict[str, int]) -> dict:
    out = {}
    for site, n in cases.items():
        out[site] = {}
        for model in MODELS:
            items = {r: rng.beta(7, 3, n).tolist() for r in ("TC", "WT", "ET")}
            items["mean"] = np.mean([items[r] for r in ("TC", "WT", "ET")], axis=0).tolist()
            items.update({f"HD95_{r}": rng.gamma(2, 5, n).tolist() for r in ("TC", "WT", "ET")})
            out[site][model] = {**{k: float(np.mean(v)) for k, v in items.items()}, "n_cases": n, "items": items}
    return out


def metastasis_results(rng: np.random.Generator, patches: int) -> dict:
    per_model = {}
    for model in MODELS[:3]:
        label = (np.arange(patches) % 2).astype(int)
        probability = np.clip(rng.normal(0.3 + 0.4 * label, 0.25), 0, 1)
        predicted = (probability >= 0.5).astype(int)
        items = {"probability": probability.round(6).tolist(), "label": label.tolist(),
                 "predicted": predicted.tolist()}
        per_model[model] = {"val_accuracy": float(np.mean(predicted == label)), "val_auc": 0.5,
                            "val_sensitivity": 0.5, "val_specificity": 0.5, "n": patches, "items": items}
    return {"site-1": per_model}


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return round(time.perf_counter() - start, 2)


def main() -> int:
    rng = np.random.default_rng(0)
    brats = brats_results(rng, {"site-1": 36, "site-2": 7})
    record = {"platform": platform.platform(), "resamples": 2000,
              "brats_36_7": {"report_seconds": timed(lambda: build_report(brats, BRATS_REPORT)),
                             "compare_seconds": timed(lambda: compare_models(
                                 brats, BRATS_REPORT, MODELS[0], MODELS[1], {"site-1": 36, "site-2": 7}))},
              "metastasis": {}}
    for patches in (1000, 10_000, 40_000):
        results = metastasis_results(rng, patches)
        record["metastasis"][patches] = {"report_seconds": timed(lambda: build_report(results, METASTASIS_REPORT))}
        print(patches, record["metastasis"][patches], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_intervals.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# What the report's intervals cost", "",
             f"{record['platform']}, 2,000 resamples, synthetic per-item scores.", "",
             "| results | report with intervals (s) | paired comparison (s) |", "| --- | --- | --- |",
             f"| BraTS, 4 models, 36 + 7 test cases, Dice and HD95 | {record['brats_36_7']['report_seconds']} | "
             f"{record['brats_36_7']['compare_seconds']} |"]
    lines += [f"| metastasis, 3 models, {n:,} validation patches | {r['report_seconds']} | |"
              for n, r in record["metastasis"].items()]
    (RESULTS / "report_intervals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
