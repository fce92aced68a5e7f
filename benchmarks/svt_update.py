"""Benchmark: what nvflare's privacy filters do to one real site update, to explain what FedAvg + SVT costs in
``fl_comparison``.

One site's round is trained as in the federation (the demo's data and recipe: site-1's training split, one local
epoch, lr 5e-4, one thread) from a global model. Its update (local - global weights, with its optimiser steps, as
the learner sends it) is passed through nvflare's ``SVTPrivacy`` at NVFlare's BraTS example settings, at larger
``gamma`` and at larger ``noise_var``, and through ``PercentilePrivacy`` at its job defaults. Per filter: the share
of the update's entries sent (non-zero), the share of entries whose per-step change exceeds ``gamma`` (the filter
clips those), the cosine similarity of what is sent with the true update, and the norm ratio. The SVT filter, as
nvflare 2.9 implements it, divides each entry's change by the round's steps, clips it to +-gamma, adds Laplace
noise of scale ``2 * gamma / noise_var`` and multiplies back by the steps; the entries sent are drawn with
replacement.

Two starting points: the seeded first global model (round 1) and a trained global model (``--model``, e.g. the
FedAvg run's best; its Adam moments start afresh here, while a site's persist between rounds).

Run: .venv/bin/python benchmarks/svt_update.py --data DIR [--model CKPT] (DIR: a ``fl_comparison`` work folder's
``brats``, or ``brats-fl make-data`` + ``datalist`` output; a few minutes on 2 cores). Writes
benchmarks/results/svt_update.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
from nvflare.app_common.filters.svt_privacy import SVTPrivacy

from brats_fl.config import TrainConfig
from brats_fl.datalist import read_datalist
from brats_fl.engine import Trainer, train_dataset
from brats_fl.model import BratsSegResNet, load_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
#: SVT's fixed settings, and (gamma, noise_var) pairs: NVFlare's BraTS example (this project's ``--privacy svt``
#: defaults) first, then larger clips, then less release noise (a larger release epsilon, ``n_upload * noise_var``).
SVT = {"fraction": 0.9, "epsilon": 0.001}
SVT_VARIANTS = [(1e-4, 1.0), (5e-4, 1.0), (2e-3, 1.0), (1e-4, 10.0), (5e-4, 10.0)]
PERCENTILE = {"percentile": 10, "gamma": 0.01}  # ``--privacy percentile`` defaults


def site_update(model: BratsSegResNet, config: TrainConfig, cases: list[dict]) -> tuple[dict, int, float]:
    """One local epoch from ``model``'s weights: the update as the learner sends it ({name: local - global}, float32
    numpy), its optimiser steps and seconds."""
    before = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    trainer = Trainer(model, config)  # the recipe's device (auto)
    stats = trainer.train_epoch(train_dataset(cases, config))
    after = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return {k: after[k] - before[k].astype(after[k].dtype) for k in after}, stats.steps, stats.seconds


def filtered(filter_, update: dict, steps: int) -> dict:
    dxo = DXO(data_kind=DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in update.items()},
              meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
    return filter_.process_dxo(dxo, Shareable(), FLContext()).data


def compare(update: dict, sent: dict, steps: int, gamma: float | None) -> dict:
    true = np.concatenate([np.asarray(update[k], np.float64).ravel() for k in sorted(update)])
    out = np.concatenate([np.asarray(sent[k], np.float64).ravel() for k in sorted(update)])
    row = {"sent_share": float(np.mean(out != 0)),
           "cosine": float(true @ out / max(np.linalg.norm(true) * np.linalg.norm(out), 1e-30)),
           "norm_ratio": float(np.linalg.norm(out) / max(np.linalg.norm(true), 1e-30))}
    if gamma is not None:
        row["clipped_share"] = float(np.mean(np.abs(true / steps) > gamma))
    return row


def measure(start: str, model: BratsSegResNet, config: TrainConfig, cases: list[dict]) -> dict:
    update, steps, seconds = site_update(model, config, cases)
    per_step = np.abs(np.concatenate([v.ravel() for v in update.values()]).astype(np.float64)) / steps
    result = {"start": start, "steps": steps, "train_seconds": round(seconds, 1),
              "per_step_change_percentiles": {p: float(np.percentile(per_step, p)) for p in (50, 90, 99, 100)},
              "filters": {}}
    np.random.seed(0)  # the filters draw from numpy's global generator; seeded here so the table reproduces
    for gamma, noise_var in SVT_VARIANTS:
        name = f"svt gamma {gamma:g}, noise_var {noise_var:g}"
        svt = SVTPrivacy(**SVT, gamma=gamma, noise_var=noise_var)
        result["filters"][name] = compare(update, filtered(svt, update, steps), steps, gamma)
        print(f"  {start}: {name}: {result['filters'][name]}", flush=True)
    name = f"percentile {PERCENTILE['percentile']} gamma {PERCENTILE['gamma']:g}"
    result["filters"][name] = compare(update, filtered(PercentilePrivacy(**PERCENTILE), update, steps), steps, None)
    print(f"  {start}: {name}: {result['filters'][name]}", flush=True)
    return result


def write(results: list[dict]) -> None:
    (RESULTS / "svt_update.json").write_text(json.dumps({"svt": SVT, "percentile": PERCENTILE,
                                                         "results": results}, indent=1) + "\n")
    lines = ["# What the privacy filters do to one site update", "",
             "Site-1, one local epoch of the demo recipe (lr 5e-4); the update passed through nvflare's filters "
             f"(SVT: fraction {SVT['fraction']}, epsilon {SVT['epsilon']}; the first row NVFlare's BraTS example "
             "settings). "
             "Cosine: of what is sent with the true update.", ""]
    for r in results:
        p = r["per_step_change_percentiles"]
        lines += [f"## Start: {r['start']} ({r['steps']} steps)", "",
                  "Per-step change |update| / steps: median {:.2e}, 90th percentile {:.2e}, 99th {:.2e}, max {:.2e}"
                  .format(p[50], p[90], p[99], p[100]), "",
                  "| filter | entries sent | entries clipped | cosine with the update | norm ratio |",
                  "| --- | --- | --- | --- | --- |"]
        for name, f in r["filters"].items():
            clipped = f"{f['clipped_share']:.1%}" if "clipped_share" in f else "-"
            lines.append(f"| {name} | {f['sent_share']:.1%} | {clipped} | {f['cosine']:.3f} | "
                         f"{f['norm_ratio']:.2f} |")
        lines.append("")
    (RESULTS / "svt_update.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="demo BraTS data folder with datalists/")
    parser.add_argument("--model", type=Path, help="a trained global model to start from as well (optional)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first global model and the epoch")
    args = parser.parse_args()
    config = TrainConfig.from_dict({"crop": [96, 96, 64], "lr": 5e-4, "num_workers": 0, "num_threads": 1,
                                    "seed": args.seed})
    torch.set_num_threads(1)
    datalists = sorted((args.data / "datalists").glob("*.json"))
    if not datalists:
        parser.error(f"{args.data / 'datalists'}: no datalist JSON files (run brats-fl make-data and datalist)")
    datalist = datalists[0]
    cases = read_datalist(datalist, args.data)["training"]
    print(f"[{time.strftime('%H:%M:%S')}] {datalist.name}: {len(cases)} training cases", flush=True)
    results = [measure("round 1 (seeded first global model)",
                       BratsSegResNet(crop=config.crop, seed=args.seed), config, cases)]
    if args.model:
        results.append(measure(f"trained global model ({args.model.name})", load_checkpoint(args.model)[0],
                               config, cases))
    write(results)
    print((RESULTS / "svt_update.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
