"""Benchmark: whole-slide inference at stride 32, tissue-restricted patch-by-patch vs tiled fully convolutional,
on the same slide and checkpoint: outputs per second, where the time goes, peak memory, and how closely the maps
agree; the tiled mode at several tile sizes.

Run (on the pathology demo's first test slide and best global model, or any slide and checkpoint):
    .venv/bin/python benchmarks/slide_inference.py --slide S.tif --checkpoint M.pt [--tiles 48 64 96] [--label L]
``--code DIR`` measures another checkout's ``custom/`` (the "before" of a change). About 5 minutes on 2 cores
(the patch mode is the slow one). Each run is its own process, so each peak memory figure is that run's own; the
tiled runs go twice and report the second (warm) pass, as a folder of slides sees it after its first slide.
Merges the run into benchmarks/results/slide_inference.json under its label and writes the .md.

The tiled mode's cost per output is set by the level-0 pixels it reads and convolves per tissue output: 1024
(32 x 32) would be no overlap and no glass; tiles add the 192-pixel margin every tile needs around its outputs
and the glass inside each tile's tissue box; the patch mode convolves 224 x 224 = 50,176 pixels per output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from metastasis.config import DEFAULT_TILE_OUTPUTS

RESULTS = Path(__file__).resolve().parent / "results"
DEMO = Path(__file__).resolve().parents[1] / "demo_workspace" / "pathology"


def run_mode(slide: str, checkpoint: str, mode: str, stride: int, out: str, threads: int, tile: int) -> dict:
    import torch

    from metastasis.inference.run import probability_map
    from metastasis.model import load_checkpoint
    from metastasis.data.tissue import compute_tissue_mask

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    tissue = compute_tissue_mask(slide)[0]
    options = {"tile_outputs": tile} if mode == "tiled" else {}
    probs, info = probability_map(slide, model, stride, tissue, mode, **options)
    if mode == "tiled":  # the first call builds oneDNN kernels for the tile shapes: report a warm run too
        cold = info["seconds"]
        probs, info = probability_map(slide, model, stride, tissue, mode, **options)
        info["first_call_seconds"] = cold
    np.save(out, probs)
    info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return info


def agreement_of(tiled: np.ndarray, patch: np.ndarray) -> dict:
    on = (tiled > 0) | (patch > 0)
    diff = np.abs(tiled - patch)[on]
    return {
        "outputs_compared": int(on.sum()), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
        "p99_abs_diff": float(np.quantile(diff, 0.99)),
        "correlation": float(np.corrcoef(tiled[on], patch[on])[0, 1]),
        "same_side_of_0.5": float(((tiled[on] >= 0.5) == (patch[on] >= 0.5)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", default=str(DEMO / "camelyon16/testing/images/test_001.tif"),
                        help="slide to run on (default: the pathology demo's test_001)")
    parser.add_argument("--checkpoint",
                        default=str(DEMO / "simulation/pathology_metastasis/server/simulate_job/app_server/"
                                              "best_FL_global_model.pt"),
                        help="trained checkpoint (default: the pathology demo's best global model)")
    parser.add_argument("--stride", type=int, default=32, help="map stride in level-0 pixels (default: 32)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default: 2)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[DEFAULT_TILE_OUTPUTS], help="tiled mode: map "
                        "pixels per tile side to measure; the first is compared with the patch mode's map (default: "
                        f"{DEFAULT_TILE_OUTPUTS}, the command's)")
    parser.add_argument("--label", default="current", help="name of this run in the results (default: current)")
    parser.add_argument("--code", type=Path, help="the custom/ folder to measure (default: the installed code)")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "TILE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, tile, out = args.worker
        print(json.dumps(run_mode(args.slide, args.checkpoint, mode, args.stride, out, args.threads, int(tile))))
        return
    for path in (args.slide, args.checkpoint):
        if not Path(path).is_file():
            sys.exit(f"{path} missing: run `make pathology-demo` first or pass --slide/--checkpoint")
    env = dict(os.environ, **({"PYTHONPATH": str(args.code.resolve())} if args.code else {}))
    tiled, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, tile in [("tiled", t) for t in args.tiles] + [("patch", 0)]:  # 0: unused by the patch mode
            out = str(Path(tmp) / f"{mode}{tile}.npy")
            text = subprocess.run([sys.executable, __file__, "--slide", args.slide, "--checkpoint", args.checkpoint,
                                   "--stride", str(args.stride), "--threads", str(args.threads), "--worker", mode,
                                   str(tile), out], capture_output=True, text=True, check=True, env=env).stdout
            info = json.loads(text.strip().splitlines()[-1])
            if mode == "tiled":
                tiled[str(tile)] = info
            else:
                patch = info
            maps[mode, tile] = np.load(out)
            print(mode, tile or "", info, flush=True)
    import torch

    run = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
           "slide": args.slide, "checkpoint": args.checkpoint, "stride": args.stride, "patch": patch,
           "tiled": tiled, "speedup": {t: round(i["outputs_per_second"] / patch["outputs_per_second"], 1)
                                       for t, i in tiled.items()},
           "agreement": {"tile_outputs": args.tiles[0], **agreement_of(maps["tiled", args.tiles[0]],
                                                                         maps["patch", 0])}}
    path = RESULTS / "slide_inference.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    runs = results.get("runs", {})
    runs[args.label] = run
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    md = ["# Whole-slide inference: patch by patch vs tiled fully convolutional", ""]
    for label, r in runs.items():
        w, h = r["patch"]["level0_size"]
        md += [f"## {label}", "",
               f"Generated {w}x{h} slide ({Path(r['slide']).name}), stride {r['stride']}, bf16 autocast on "
               f"{r['machine']['threads']} CPU threads; torch {r['machine']['torch']}, {r['machine']['platform']}.",
               "", "| mode | tile outputs | tissue outputs | seconds | outputs/s | x patch mode | read s | network s "
               "| pixels read per output | peak RSS MB |", "| --- " * 10 + "|"]
        for name, tile, info in [("patch", "", r["patch"])] + [("tiled", t, i) for t, i in r["tiled"].items()]:
            md.append(f"| {name} | {tile} | {info['tissue_outputs']} | {info['seconds']} | "
                      f"{info['outputs_per_second']} | {r['speedup'].get(tile, 1.0)} | "
                      f"{info.get('read_seconds', '')} | {info.get('network_seconds', '')} | "
                      f"{info.get('pixels_read_per_output', '')} | {info['peak_rss_mb']} |")
        a = r["agreement"]
        md += ["", f"Tiled ({a['tile_outputs']} outputs per tile side) vs patch over {a['outputs_compared']} tissue "
               f"outputs: mean |difference| {a['mean_abs_diff']:.4f}, 99th percentile {a['p99_abs_diff']:.4f}, max "
               f"{a['max_abs_diff']:.4f}; correlation {a['correlation']:.4f}; same side of 0.5 for "
               f"{100 * a['same_side_of_0.5']:.2f}% of outputs (the border effect: a lone patch sees zero padding "
               "where a tile has real neighbours).", ""]
    (RESULTS / "slide_inference.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
