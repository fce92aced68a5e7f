"""Benchmark: how close is a slide's Macenko estimate to the stains it was made with, and what does it read?

On generated slides of both centres (``demodata.camelyon``: each centre's haematoxylin and eosin directions are
known, :data:`demodata.centres.CENTRES`), at several difficulties (pen marks, folds, bubbles and mimics from 0.5
on) and seeds, the slide's stain vectors are estimated with
:func:`metastasis.data.stain.slide_stain_vectors` and compared with the truth: the angle in degrees between the
estimated and the true haematoxylin and eosin directions, and the spread of the 99th-percentile concentrations
between slides of one centre. Also measured: seconds per estimate and OpenSlide ``read_region`` pixels read.

The estimate is the slide's own (its tissue from the slide's tissue mask at 1/32, computed on the open slide, as
``infer`` has it), unless the installed code is older than the mask-based estimate (then it finds its own
overview and tissue: the code before this benchmark, for the comparison).

Run: .venv/bin/python benchmarks/stain_estimate.py --work DIR [--label NAME]
Writes benchmarks/results/stain_estimate_NAME.json and .md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import openslide

from demodata.camelyon import make_scene, write_slide
from demodata.centres import CENTRES
from metastasis.data import stain
from metastasis.data.slide import Slide

RESULTS = Path(__file__).resolve().parent / "results"


def degrees(a: np.ndarray, b) -> float:
    cosine = abs(float(np.dot(a, b))) / np.linalg.norm(a) / np.linalg.norm(b)
    return float(np.degrees(np.arccos(min(1.0, cosine))))


def slides(work: Path, size: tuple[int, int], seeds: list[int], difficulties: list[float]) -> list[dict]:
    """Generated tumour slides, one per centre x difficulty x seed (written once, reused by later runs)."""
    out = []
    for centre in sorted(CENTRES):
        for difficulty in difficulties:
            for seed in seeds:
                name = f"{centre}_d{difficulty:g}_s{seed}"
                path = work / f"{name}.tif"
                if not path.is_file():
                    write_slide(make_scene(name, *size, True, seed, 0, centre=centre, difficulty=difficulty), path)
                out.append({"name": name, "path": path, "centre": centre, "difficulty": difficulty, "seed": seed})
    return out


def estimate(path: Path) -> stain.StainVectors:
    """The slide's stain vectors by the installed code (its tissue mask computed on the open slide when the
    estimate takes one)."""
    if "tissue" in inspect.signature(stain.slide_stain_vectors).parameters:
        from metastasis.data.tissue import compute_tissue_mask

        with Slide(path) as slide:
            return stain.slide_stain_vectors(slide, compute_tissue_mask(slide)[0])
    handle = openslide.OpenSlide(str(path))  # the code before the mask-based estimate
    try:
        return stain.slide_stain_vectors(handle, path)
    finally:
        handle.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the generated slides (kept, reused)")
    parser.add_argument("--label", default="current", help="names the results files (default: current)")
    parser.add_argument("--size", type=int, nargs=2, default=(8192, 6144), metavar=("W", "H"),
                        help="slide size in level-0 pixels (default: 8192 6144)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="slide seeds (default: 0 1)")
    parser.add_argument("--difficulties", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help="generator difficulties (default: 0 0.5 1)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    read_pixels = [0]
    original = openslide.OpenSlide.read_region

    def counting(self, location, level, size):
        read_pixels[0] += size[0] * size[1]
        return original(self, location, level, size)

    openslide.OpenSlide.read_region = counting
    for item in slides(args.work, tuple(args.size), args.seeds, args.difficulties):
        read_pixels[0] = 0
        start = time.perf_counter()
        vectors = estimate(item["path"])
        seconds = time.perf_counter() - start
        truth = CENTRES[item["centre"]]
        rows.append({"slide": item["name"], "centre": item["centre"], "difficulty": item["difficulty"],
                     "seed": item["seed"], "h_degrees": round(degrees(vectors.he[:, 0], truth.haematoxylin), 2),
                     "e_degrees": round(degrees(vectors.he[:, 1], truth.eosin), 2),
                     "max_concentration": np.round(vectors.max_concentration, 3).tolist(),
                     "seconds": round(seconds, 3), "megapixels_read": round(read_pixels[0] / 1e6, 2)})
        print(json.dumps(rows[-1]), flush=True)
    openslide.OpenSlide.read_region = original
    summary = {}
    for centre in sorted(CENTRES):
        mine = [r for r in rows if r["centre"] == centre]
        conc = np.array([r["max_concentration"] for r in mine])
        summary[centre] = {"h_degrees_mean": round(float(np.mean([r["h_degrees"] for r in mine])), 2),
                           "h_degrees_max": round(float(np.max([r["h_degrees"] for r in mine])), 2),
                           "e_degrees_mean": round(float(np.mean([r["e_degrees"] for r in mine])), 2),
                           "e_degrees_max": round(float(np.max([r["e_degrees"] for r in mine])), 2),
                           # max / min over the centre's slides: 1 would be the same estimate on every slide
                           "concentration_spread": np.round(conc.max(0) / conc.min(0), 3).tolist()}
    record = {"label": args.label, "size": list(args.size), "seeds": args.seeds, "difficulties": args.difficulties,
              "slides": rows, "by_centre": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"stain_estimate_{args.label}.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Slide stain estimates against the generator's stains ({args.label})", "",
             f"Generated tumour slides of {args.size[0]}x{args.size[1]} pixels, centres A and B, difficulties "
             f"{', '.join(f'{d:g}' for d in args.difficulties)}, seeds {', '.join(map(str, args.seeds))}. Angles "
             "in degrees between the estimated and true stain directions; the concentration spread is the largest "
             "over the smallest 99th-percentile concentration (H, E) among a centre's slides.", "",
             "| slide | H degrees | E degrees | 99th pct (H, E) | seconds | megapixels read |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['slide']} | {r['h_degrees']:.2f} | {r['e_degrees']:.2f} | {r['max_concentration']} | "
              f"{r['seconds']:.2f} | {r['megapixels_read']:.2f} |" for r in rows]
    lines += ["", "| centre | H degrees mean / max | E degrees mean / max | concentration spread (H, E) |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {s['h_degrees_mean']:.2f} / {s['h_degrees_max']:.2f} | {s['e_degrees_mean']:.2f} / "
              f"{s['e_degrees_max']:.2f} | {s['concentration_spread']} |" for c, s in summary.items()]
    (RESULTS / f"stain_estimate_{args.label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
