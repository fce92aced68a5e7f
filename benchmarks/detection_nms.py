"""Benchmark: the disc maximum behind ``metastasis detect``, as scipy's footprint filter (before) and as one running
maximum per disc row (:func:`metastasis.evaluation.detection._disc_maximum`, after), on maps of real Camelyon16 size.

A 100k x 200k slide's map at stride 32 is 3125 x 6250 pixels; the default suppression radius of 150 um at
0.243 um/px is 19.3 map pixels (9.6 at stride 64). Each case checks that both give the same array, then times each
``--repeats`` times (the best run counts). The maps are uniform noise with glass (zeros) over 40% of them, the
footprint filter's cost does not depend on the values.

Run: .venv/bin/python benchmarks/detection_nms.py [--repeats 2]   (about 3 minutes on 2 cores)
Writes benchmarks/results/detection_nms.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))
from metastasis.evaluation.detection import _disc_maximum  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [  # (name, map shape, radius in map pixels)
    ("100k x 200k slide, stride 32, 150 um", (3125, 6250), 150 / (0.243 * 32)),
    ("100k x 200k slide, stride 64, 150 um", (1563, 3125), 150 / (0.243 * 64)),
    ("100k x 200k slide, stride 32, 400 um", (3125, 6250), 400 / (0.243 * 32)),
]


def _footprint_maximum(probs: np.ndarray, radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.maximum_filter(probs, footprint=xx ** 2 + yy ** 2 <= radius ** 2, mode="constant", cval=-np.inf)


def _best_seconds(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name, shape, radius in CASES:
        probs = np.random.default_rng(0).random(shape, dtype=np.float32)
        probs[probs < 0.4] = 0
        before, expected = _best_seconds(lambda: _footprint_maximum(probs, radius), args.repeats)
        after, got = _best_seconds(lambda: _disc_maximum(probs, radius), args.repeats)
        rows.append({"case": name, "map": list(shape), "radius_px": round(radius, 2), "equal": bool(
            np.array_equal(expected, got)), "footprint_s": round(before, 2), "rows_s": round(after, 2),
            "speedup": round(before / after, 1)})
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detection_nms.json").write_text(json.dumps({"platform": platform.platform(), "rows": rows},
                                                           indent=2) + "\n")
    lines = ["# Disc maximum of `metastasis detect`: footprint filter (before) vs running maximum per row (after)", "",
             f"{platform.platform()}, numpy {np.__version__}; best of {args.repeats} runs; same output in every case.",
             "", "| case | map | radius (px) | same output | footprint filter | per row | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['map'][0]} x {r['map'][1]} | {r['radius_px']} | {r['equal']} | "
              f"{r['footprint_s']} s | {r['rows_s']} s | {r['speedup']}x |" for r in rows]
    (RESULTS / "detection_nms.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
