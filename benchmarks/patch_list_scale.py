"""Benchmark: a patch list of the seed's size, read, checked and trained on.

The seed's patch lists (NCRF's coordinate files) hold hundreds of thousands of patch centres over about 270
training slides. This benchmark builds a list of that size:

* 400,000 entries over 270 slide files, each a link to one of 4 generated 8192 x 6144 slides;
* 216 slides for training and 54 for validation;
* centres uniform inside each slide, labels alternating.

It then measures, in a fresh process, the steps a site takes before its first training step:

1. reading and checking the list: ``read_patch_list(check=True)`` parses the JSON, checks every entry, opens
   every slide once and checks that every patch lies inside its slide;
2. building the datasets;
3. one training step at batch 32.

For each step it records the seconds and the growth of RSS. Run it with ``--code DIR`` pointed at another
checkout's ``custom/`` to measure that code instead (the "before" of a change).

Run: .venv/bin/python benchmarks/patch_list_scale.py [--label after] [--code custom]
(about 3 minutes on 2 cores). Merges its run into benchmarks/results/patch_list_scale.json and writes the .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (8192, 6144)


def build(root: Path, entries: int, slides: int, seed: int = 0) -> Path:
    """The slides, links and patch list under ``root``; returns the patch list's path."""
    import numpy as np

    from medcore.files import write_json
    from demodata.camelyon import generate_dataset

    files = generate_dataset(root, 2, 2, *SIZE, seed=seed, workers=2)
    many = root / "many"
    many.mkdir()
    names = []
    for i in range(slides):
        link = many / f"slide_{i:03d}.tif"
        link.symlink_to(files[i % len(files)].resolve())
        names.append(str(link))
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, slides, entries)
    ys = rng.integers(112, SIZE[1] - 112, entries)
    xs = rng.integers(112, SIZE[0] - 112, entries)
    training_slides = int(slides * 0.8)
    patches: dict = {"patch_size": 224, "training": [], "validation": []}
    for n, (s, y, x) in enumerate(zip(owner.tolist(), ys.tolist(), xs.tolist())):
        split = "training" if s < training_slides else "validation"
        patches[split].append({"image": names[s], "location": [y, x], "label": n % 2})
    # Written directly: write_patch_list would resolve the links to the 4 files they point to.
    return write_json(root / "patches.json", patches)


def site_start(patch_list: str, root: str) -> dict:
    """In this (fresh) process: read and check the list, build the datasets, run one training step."""
    import psutil
    import torch

    from metastasis.config import TrainConfig
    from metastasis.engine import Trainer, build_model, patch_datasets
    from metastasis.data.patch_lists import read_patch_list

    proc = psutil.Process()
    base = proc.memory_info().rss
    out = {}
    start = time.perf_counter()
    patches = read_patch_list(patch_list, root, check=True)
    out["read_and_check_s"] = round(time.perf_counter() - start, 2)
    out["entries"] = sum(len(patches[s]) for s in ("training", "validation"))
    out["rss_after_read_mb"] = round((proc.memory_info().rss - base) / 2 ** 20)
    config = TrainConfig(batch_size=32, num_workers=0)
    t = time.perf_counter()
    datasets = patch_datasets(patches, config)
    out["datasets_s"] = round(time.perf_counter() - t, 2)
    trainer = Trainer(build_model(config), config, torch.device("cpu"))
    t = time.perf_counter()
    trainer.train_epoch(torch.utils.data.Subset(datasets["training"], list(range(32))))
    out["first_step_s"] = round(time.perf_counter() - t, 2)
    out["to_first_step_s"] = round(time.perf_counter() - start, 2)
    out["rss_growth_mb"] = round((proc.memory_info().rss - base) / 2 ** 20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=400_000, help="patch centres (default: 400000)")
    parser.add_argument("--slides", type=int, default=270, help="slide files (default: 270)")
    parser.add_argument("--label", default="after", help="name of this run in the results (default: after)")
    parser.add_argument("--code", type=Path, help="the custom/ folder whose code the site process runs "
                        "(default: the installed code)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds the site process may take")
    parser.add_argument("--work", type=Path, help="build the list here and keep it (default: a temporary folder)")
    parser.add_argument("--site", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.site:
        print(json.dumps(site_start(*args.site)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        patch_list = root / "patches.json"
        if not patch_list.is_file():
            root.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            build(root, args.entries, args.slides)
            print(f"built {patch_list} ({patch_list.stat().st_size / 2 ** 20:.0f} MB) in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        env = dict(os.environ)
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve())
        try:
            run = subprocess.run([sys.executable, __file__, "--site", str(patch_list), str(root)], env=env,
                                 capture_output=True, text=True, timeout=args.timeout)
            result = json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else \
                {"error": run.stderr[-2000:]}
        except subprocess.TimeoutExpired:
            result = {"error": f"did not reach its first training step within {args.timeout} s"}
        result.update(list_mb=round(patch_list.stat().st_size / 2 ** 20), slides=args.slides)
    path = RESULTS / "patch_list_scale.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else {}
    runs[args.label] = result
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    lines = ["# A patch list of the seed's size on this machine", "",
             f"{args.entries} entries over {args.slides} slide files (8192 x 6144, links to 4 generated slides), "
             "one fresh process each run.", "",
             "| run | read + check s | datasets s | first step s | to first step s | RSS after read MB | RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in runs.items():
        if "error" in r:
            lines.append(f"| {label} | {r['error'].strip().splitlines()[-1]} | | | | | |")
            continue
        lines.append(f"| {label} | {r['read_and_check_s']} | {r['datasets_s']} | {r['first_step_s']} | "
                     f"{r['to_first_step_s']} | {r['rss_after_read_mb']} | {r['rss_growth_mb']} |")
    (RESULTS / "patch_list_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
