"""Benchmark: the pathology MONAI bundle's inference (``python -m monai.bundle run``, in a process that cannot
import this project) against ``metastasis infer --no-amp`` on the same generated slide and checkpoint: seconds,
peak RSS of each process (``wait4``) and the largest difference of the maps.

Run:
    .venv/bin/python benchmarks/bundle_inference.py [--size 24576 16384] [--seed 3] [--work DIR]

The slide is made with ``metastasis make-data`` (a tumour slide of the generator's default look); the checkpoint
is an untrained 224-pixel PatchClassifier (seed 1), whose maps are as costly as a trained one's. Both runs are
tiled at stride 32, one PyTorch thread pool of the machine's cores, float32. Merges the run into
benchmarks/results/bundle_inference.json under ``--label`` and writes the .md.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))

from tests.support import _ISOLATED  # noqa: E402  the same isolated runner the tests use


def timed(argv: list[str]) -> dict:
    """Run ``argv``; its seconds and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv[:3])} failed:\n{output[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs=2, type=int, default=[24576, 16384], metavar=("W", "H"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, help="folder for the slide and outputs (default: a temporary one)")
    parser.add_argument("--label", default="this machine")
    args = parser.parse_args()

    import torch

    from metastasis.bundle import export_bundle
    from metastasis.model import PatchClassifier

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        slides = work / "slides"
        slide = slides / "tumor_001.tif"
        if not slide.is_file():
            generate = timed([str(Path(sys.executable).with_name("metastasis")), "make-data", "--out",
                              str(work / "data"), "--tumor", "1", "--normal", "0", "--width", str(args.size[0]),
                              "--height", str(args.size[1]), "--seed", str(args.seed)])
            slides.mkdir(parents=True, exist_ok=True)
            slide.symlink_to(next((work / "data").rglob("tumor_001.tif")))
            print(f"generated {slide} in {generate['seconds']} s", flush=True)
        checkpoint = work / "model.pt"
        torch.save({"model": PatchClassifier(224, seed=1).state_dict(), "train_conf": {"patch_size": 224}},
                   checkpoint)
        bundle = export_bundle(checkpoint, work / "bundle")
        runs = {}
        for name, argv in (
                ("metastasis infer --no-amp", [str(Path(sys.executable).with_name("metastasis")), "infer",
                                               str(slides), "--checkpoint", str(checkpoint), "--out",
                                               str(work / "own"), "--no-amp", "--overwrite"]),
                ("bundle (monai.bundle run)", [sys.executable, "-c", _ISOLATED, str(bundle / "configs/inference.json"),
                                               str(bundle), str(slides), str(work / "bundle_maps")])):
            runs[name] = timed(argv)
            print(name, runs[name], flush=True)
        own, theirs = np.load(work / "own/tumor_001.npy"), np.load(work / "bundle_maps/tumor_001.npy")
        meta = json.loads((work / "own/tumor_001.json").read_text())
        result = {"slide": list(args.size), "seed": args.seed, "tissue_outputs": meta["tissue_outputs"],
                  "runs": runs, "max_abs_difference": float(np.abs(own - theirs).max()),
                  "same_tissue_pixels": bool(np.array_equal(own > 0, theirs > 0)),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"}
    path = RESULTS / "bundle_inference.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.label] = result
    path.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Pathology bundle inference vs `metastasis infer`", "",
             "`benchmarks/bundle_inference.py`: one generated tumour slide, an untrained 224-pixel classifier, tiled "
             "at stride 32, float32.", "",
             "| machine | slide | tissue outputs | run | seconds | peak RSS MB | max abs map difference |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        for name, run in r["runs"].items():
            lines.append(f"| {label} | {r['slide'][0]}x{r['slide'][1]} (seed {r['seed']}) | {r['tissue_outputs']} | "
                         f"{name} | {run['seconds']} | {run['peak_rss_mb']} | {r['max_abs_difference']:.2e} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
