"""Benchmark: how training patches are fed at scale, by DataLoader worker count and OpenSlide tile cache.

A site trains on hundreds of slides, patches shuffled across all of them. Each DataLoader worker keeps up to
64 slides open. OpenSlide gives every open slide its own 32 MiB decoded-tile cache unless slides share one, so a
worker's memory could grow with the number of slides it has touched. This benchmark measures, on a list over 270
slide files (links to 4 generated 8192 x 6144 slides, as in patch_list_scale.py):

* patches per second of the training input pipeline (read + augment + normalise, batch 32, shuffled) with
  0, 1, 2 ... workers (``--workers``; 4, 8 and 16 on a many-core GPU machine);
* the memory each worker adds (its unique set size, USS, at the end of the pass), with the slides sharing one
  32 MiB cache per worker (the project's default) and with OpenSlide's cache per slide.

Each configuration runs in a fresh process. Run: .venv/bin/python benchmarks/patch_reading.py [--workers 0 1 2]
(about 4 minutes on 2 cores). Merges into benchmarks/results/patch_reading.json and writes the .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CACHES = {"shared 32 MiB": 32, "per slide (OpenSlide default)": None}


def one_pass(patch_list: str, root: str, workers: int, cache: str, batches: int) -> dict:
    """In this (fresh) process: ``batches`` shuffled training batches through a DataLoader."""
    import psutil
    import torch

    from metastasis.config import TrainConfig
    from metastasis.engine import patch_datasets
    from metastasis.data.patch_lists import read_patch_list

    torch.set_num_threads(1)  # the workers' own torch ops (augmentation) use one thread each, as in training
    patches = read_patch_list(patch_list, root)
    dataset = patch_datasets(patches, TrainConfig(augment=True, num_workers=workers))["training"]
    dataset.cache_mb = CACHES[cache]
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    me = psutil.Process()
    base = me.memory_full_info().uss
    it = iter(loader)
    next(it)  # workers started, first batch read: timing starts warm
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    kids = me.children()
    uss = [p.memory_full_info().uss for p in kids] if workers else [me.memory_full_info().uss - base]
    return {"workers": workers, "cache": cache, "patches": batches * 32, "seconds": round(seconds, 2),
            "patches_per_second": round(batches * 32 / seconds, 1),
            "uss_per_worker_mb": round(sum(uss) / len(uss) / 2 ** 20) if uss else 0,
            "open_slides_per_worker": "up to 64"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts (default: 0 1 2)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of 32 per run (default: 60)")
    parser.add_argument("--work", type=Path, help="keep the slides and list here (default: a temporary folder)")
    parser.add_argument("--label", default=f"{os.cpu_count()} cores", help="machine name in the results")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        patch_list, root, workers, cache = args.run
        print(json.dumps(one_pass(patch_list, root, int(workers), cache, args.batches)))
        return
    from patch_list_scale import build

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        patch_list = root / "patches.json"
        if not patch_list.is_file():
            root.mkdir(parents=True, exist_ok=True)
            build(root, 20_000, 270)
        configs = [(w, "shared 32 MiB") for w in args.workers]
        configs.append((min(w for w in args.workers if w > 0), "per slide (OpenSlide default)"))
        for workers, cache in configs:
            out = subprocess.run([sys.executable, __file__, "--batches", str(args.batches), "--run",
                                  str(patch_list), str(root), str(workers), cache],
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    path = args.out / "patch_reading.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.label] = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "patch_reading.md")


def write_markdown(results: dict, path: Path) -> None:
    """One table per machine label of ``patch_reading.json``."""
    lines = ["# Feeding the patch classifier: DataLoader workers and OpenSlide's tile cache", "",
             "Training input pipeline (OpenSlide read of a 224 px level-0 patch, augmentation, normalisation), batch "
             "32, shuffled over 270 slide files; USS is the memory a worker holds on its own.", ""]
    for label, result in results.items():
        lines += [f"## {label} ({result['machine']}, {result['cpu_count']} cores)", "",
                  "| workers | tile cache | patches/s | USS per worker MB |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['workers']} | {r['cache']} | {r['patches_per_second']} | {r['uss_per_worker_mb']} |"
                  for r in result["runs"]]
        lines.append("")
    path.write_text("\n".join(lines))

if __name__ == "__main__":
    main()
