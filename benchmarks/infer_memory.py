"""Benchmark: peak memory of `metastasis infer` over a folder of slides, slide after slide.

Peak memory must not grow with the number of slides. This runs ``infer_slides`` (what ``metastasis infer`` runs)
over a folder of generated 12,288 x 16,384 slides in a fresh process and records the process's peak and current
RSS when each slide's map is written.

Run: .venv/bin/python benchmarks/infer_memory.py --checkpoint M.pt [--slides DIR] [--label L] [--code DIR]
(8 slides, about 3 minutes on 2 cores; the slides are generated into --work first when --slides is not given).
``--code DIR`` measures another checkout's ``custom/`` (the "before" of a change). Merges the run into
benchmarks/results/infer_memory.json under its label and writes the .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (12_288, 16_384)


def _status_mb() -> dict:
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = round(int(value.split()[0]) / 1024)
    return {"peak_rss_mb": fields["VmHWM"], "rss_mb": fields["VmRSS"]}


def measure(slides: list[str], checkpoint: str, out: str, tile: int) -> list[dict]:
    """In this (fresh) process: infer_slides over ``slides``, with the RSS when each slide is done."""
    import torch

    from metastasis.inference.run import infer_slides
    from metastasis.model import load_checkpoint

    torch.set_num_threads(2)
    per_slide = [{"slide": "(start)", **_status_mb()}]

    class AtEachSlide(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "outputs in" in message:
                per_slide.append({"slide": message.split(":")[0].split()[-1], **_status_mb()})

    logger = logging.getLogger("metastasis.inference.run")
    logger.setLevel(logging.INFO)
    logger.addHandler(AtEachSlide())
    model, _ = load_checkpoint(checkpoint)
    infer_slides(slides, model, out, tile_outputs=tile)
    return per_slide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained patch classifier")
    parser.add_argument("--slides", type=Path, help="folder of slides (default: 8 generated into --work)")
    parser.add_argument("--work", type=Path, help="where to generate the slides (default: a temporary folder)")
    parser.add_argument("--tile-outputs", type=int, default=0, help="tile size (default: the command's default)")
    parser.add_argument("--label", default="current", help="name of this run in the results (default: current)")
    parser.add_argument("--code", type=Path, help="the custom/ folder to measure (default: the installed code)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        slides, out = args.worker
        import inspect

        from metastasis.inference.run import infer_slides

        tile = args.tile_outputs or inspect.signature(infer_slides).parameters["tile_outputs"].default
        print(json.dumps({"tile_outputs": tile, "per_slide": measure(json.loads(slides), args.checkpoint, out,
                                                                      tile)}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.slides
        if folder is None:
            from demodata.camelyon import generate_dataset

            root = args.work or Path(tmp)
            generate_dataset(root, 4, 4, *SIZE, seed=3, split="testing", workers=2)
            folder = root / "testing/images"
        slides = sorted(str(p) for p in folder.glob("*.tif"))
        env = dict(os.environ, **({"PYTHONPATH": str(args.code.resolve())} if args.code else {}))
        text = subprocess.run([sys.executable, __file__, "--checkpoint", args.checkpoint, "--tile-outputs",
                               str(args.tile_outputs), "--worker", json.dumps(slides), str(Path(tmp) / "maps")],
                              capture_output=True, text=True, check=True, env=env).stdout
    run = json.loads(text.strip().splitlines()[-1])
    run["slides"] = len(slides)
    print(json.dumps(run, indent=1))
    path = RESULTS / "infer_memory.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() else {}
    runs[args.label] = run
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    md = ["# `metastasis infer` over a folder: memory slide after slide", "",
          f"Generated {SIZE[0]:,} x {SIZE[1]:,} slides (about a third tissue), stride 32, bf16 on 2 CPU threads, "
          "one process; peak and current RSS in MB when each slide's map is written.", ""]
    for label, r in runs.items():
        md += [f"## {label} (tile outputs {r['tile_outputs']})", "", "| after | peak RSS MB | RSS MB |",
               "| --- | --- | --- |"]
        md += [f"| {s['slide']} | {s['peak_rss_mb']} | {s['rss_mb']} |" for s in r["per_slide"]]
        md.append("")
    (RESULTS / "infer_memory.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
