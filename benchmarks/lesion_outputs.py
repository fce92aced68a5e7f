"""Benchmark: the lesion step and the viewer files at Camelyon16's scale: a 100,000 x 200,000 slide's map at stride
32 (3125 x 6250 pixels) with lesions of every class, through ``find_lesions`` and each writer, then the whole
``metastasis lesions`` command in its own process.

Run:
    .venv/bin/python benchmarks/lesion_outputs.py [--lesions 60] [--seed 0] [--label L]

The map is drawn, not inferred: ``--lesions`` blobs (a third ITC-sized, a third micro-, a third macro-metastases)
at random places, with probabilities 0.5-1 inside and weak noise (0-0.4, below the threshold) over a third of the
slide, as tissue. Each step's seconds and its peak of traced memory (``tracemalloc``: NumPy's arrays included)
are recorded; the command's peak RSS comes from ``wait4``. Merges the run into
benchmarks/results/lesion_outputs.json under ``--label`` and writes the .md.
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
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STRIDE, MPP, SLIDE = 32, 0.243, (100_000, 200_000)


def make_map(n_lesions: int, seed: int) -> np.ndarray:
    """The drawn map (rows, cols) float32; lesion radii in map pixels by class."""
    rows, cols = -(-SLIDE[1] // STRIDE), -(-SLIDE[0] // STRIDE)
    rng = np.random.default_rng(seed)
    probs = np.zeros((rows, cols), np.float32)
    probs[: rows // 3] = rng.uniform(0, 0.4, (rows // 3, cols)).astype(np.float32)  # tissue, below the threshold
    pixel_um = STRIDE * MPP
    radii_um = {"itc": (30, 90), "micro": (150, 900), "macro": (1100, 3000)}
    for k in range(n_lesions):
        low, high = radii_um[("itc", "micro", "macro")[k % 3]]
        r = rng.uniform(low, high) / pixel_um
        cy, cx = rng.uniform(r + 1, rows - r - 1), rng.uniform(r + 1, cols - r - 1)
        y0, y1, x0, x1 = int(cy - r - 1), int(cy + r + 2), int(cx - r - 1), int(cx + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        angle = np.arctan2(yy - cy, xx - cx)
        inside = np.hypot(yy - cy, xx - cx) <= r * (1 + 0.2 * np.sin(3 * angle + k))  # a lobed blob
        probs[y0:y1, x0:x1][inside] = rng.uniform(0.5, 1.0, int(inside.sum())).astype(np.float32)
    return probs


def step(name: str, fn, record: dict):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    record[name] = {"seconds": round(seconds, 3), "peak_traced_mb": round(peak / 2**20, 1)}
    print(name, record[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lesions", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="this machine")
    args = parser.parse_args()

    from metastasis.evaluation.lesions import find_lesions, write_lesions_json
    from metastasis.evaluation.overlays import write_heatmap_tiff, write_lesions_geojson, write_lesions_xml
    from metastasis.inference.geometry import MapGeometry

    probs = make_map(args.lesions, args.seed)
    meta = {**MapGeometry(STRIDE, 224, SLIDE).to_dict(), "slide": "/slides/big.tif", "mpp": MPP,
            "max_probability": float(probs.max())}
    steps: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        lesions = step("find_lesions", lambda: find_lesions(probs, meta), steps)
        step("GeoJSON", lambda: write_lesions_geojson(out / "a_lesions.geojson", lesions), steps)
        step("ASAP XML", lambda: write_lesions_xml(out / "a_lesions.xml", lesions), steps)
        step("lesions JSON", lambda: write_lesions_json(out / "a_lesions.json", lesions, meta, 0.5, MPP,
                                                        out / "a.npy"), steps)
        step("heatmap TIFF", lambda: write_heatmap_tiff(out / "a_heatmap.tif", probs, STRIDE, MPP), steps)
        sizes = {p.name: round(p.stat().st_size / 2**20, 2) for p in sorted(out.iterdir())}
        maps = out / "maps"
        maps.mkdir()
        np.save(maps / "patient_000_node_0.npy", probs)
        (maps / "patient_000_node_0.json").write_text(json.dumps(meta))
        start = time.perf_counter()
        proc = subprocess.Popen([str(Path(sys.executable).with_name("metastasis")), "lesions", str(maps), "--out",
                                 str(out / "lesions")], stdout=subprocess.PIPE, text=True)
        printed = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"metastasis lesions failed:\n{printed}")
        command = {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
        print("command", command, printed.splitlines()[0], flush=True)
    classes = {c: sum(lesion.category == c for lesion in lesions) for c in ("itc", "micro", "macro")}
    result = {"map": list(probs.shape), "lesions": len(lesions), "classes": classes, "steps": steps,
              "file_mb": sizes, "command": command,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    path = RESULTS / "lesion_outputs.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.label] = result
    path.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Lesions and viewer files at Camelyon16's scale", "",
             "`benchmarks/lesion_outputs.py`: a 100,000 x 200,000 slide's map at stride 32 (3125 x 6250), drawn "
             "lesions of every class, weak noise over a third of it.", ""]
    for label, r in results.items():
        lines += [f"## {label}", "", f"{r['lesions']} lesions ({r['classes']}); {r['machine']}", "",
                  "| step | seconds | peak traced MB |", "| --- | --- | --- |"]
        lines += [f"| {name} | {s['seconds']} | {s['peak_traced_mb']} |" for name, s in r["steps"].items()]
        lines += [f"| `metastasis lesions` (whole command, own process) | {r['command']['seconds']} | "
                  f"peak RSS {r['command']['peak_rss_mb']} |", "",
                  "Files (MB): " + ", ".join(f"{k} {v}" for k, v in r["file_mb"].items()), ""]
    path.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
