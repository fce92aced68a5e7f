"""Benchmark: synthetic Camelyon16-format slide generation, time and peak memory against slide size.

Peak memory must stay flat as slides grow (tiles are rendered and written one at a time); time grows with the
tissue area. Each size runs in its own process so its peak RSS is its own.

Run: .venv/bin/python benchmarks/slide_generation.py   (about 5 minutes on 2 cores)
Writes benchmarks/results/slide_generation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def one(width: int, height: int, workers: int) -> dict:
    from demodata.camelyon import make_scene, pyramid_shapes, verify_slide, write_slide

    scene = make_scene("bench", width, height, True, seed=0, index=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.tif"
        start = time.perf_counter()
        write_slide(scene, path, workers=workers)
        seconds = time.perf_counter() - start
        verify_slide(scene, path, None)
        size_mb = path.stat().st_size / 2 ** 20
    tiles = sum(-(-w // 512) * -(-h // 512) for w, h in pyramid_shapes(width, height))
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return {"width": width, "height": height, "workers": workers, "seconds": round(seconds, 1),
            "tiles": tiles, "tiles_per_s": round(tiles / seconds, 1),
            "megapixels_per_s": round(width * height / 1e6 / seconds, 2), "file_mb": round(size_mb, 1),
            "peak_rss_mb": round(rss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4096x4096", "16384x16384", "32768x32768"],
                        help="slide sizes WIDTHxHEIGHT (default: 4096x4096 16384x16384 32768x32768)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default: 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        w, h = map(int, args.worker.split("x"))
        print(json.dumps(one(w, h, args.workers)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--worker", size, "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slide_generation.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = [f"# Synthetic slide generation ({args.workers} workers, JPEG q90, 512 px tiles, tumour slide)", "",
          "| level-0 size | tiles (all levels) | s | tiles/s | Mpx/s | file MB | peak RSS MB (largest process) |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['width']}x{r['height']} | {r['tiles']} | {r['seconds']} | {r['tiles_per_s']} | "
           f"{r['megapixels_per_s']} | {r['file_mb']} | {r['peak_rss_mb']} |" for r in rows]
    (RESULTS / "slide_generation.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
