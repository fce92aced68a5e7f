"""Benchmark: one Camelyon16-size slide (100,000 x 200,000 pixels at level 0) through the whole pathology chain.

Stages, each run through the ``metastasis`` command line in its own process:

1. ``generate``: ``make-data`` writes the slide (testing layout, one tumour slide, its ASAP XML, reference.csv);
2. ``tissue``: the 1/32 tissue mask;
3. ``patches``: a training patch list from the slide and its XML (the slide linked into a training layout; its
   tissue mask computed again there; 2,000 tumour and 2,000 normal patches);
4. ``infer_s32``: tiled inference at stride 32, with the heatmap (``infer_s64``, last: the same at NCRF's stride 64);
5. ``detect``: detections from the stride-32 map;
6. ``evaluate``: the Camelyon16 FROC of those detections against the XML.

For each stage it records the seconds, the peak RSS of the stage's largest process (``wait4``) and the disk its
outputs take, and the largest region any OpenSlide read asked for (so that "no level is ever read whole" is a
measurement, not a promise). Slides per hour are projected from the stride-32 map's tissue outputs per second and
the tissue share of this slide.

Stages already measured are kept in WORK/stages.json and skipped, so the hour-long generation runs once.

Run: .venv/bin/python benchmarks/wsi_real_scale.py --work DIR --checkpoint MODEL.pt [--stages ...]
(generation about an hour on 2 cores, each inference pass about half an hour). Writes
benchmarks/results/wsi_real_scale.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (100_000, 200_000)  # level-0 (width, height), the size of the larger Camelyon16 slides
SEED = 1  # the generator's seed: 32% tissue, a macro-metastasis, micro-metastases and an ITC cluster
STAGES = ("generate", "tissue", "patches", "infer_s32", "detect", "evaluate", "infer_s64")


def stage_argv(stage: str, work: Path, checkpoint: str) -> list[str]:
    """The ``metastasis`` command line of one stage."""
    data = work / "data"
    slide = str(data / "testing/images/test_001.tif")
    if stage == "generate":
        return ["make-data", "--out", str(data), "--split", "testing", "--tumor", "1", "--normal", "0",
                "--width", str(SIZE[0]), "--height", str(SIZE[1]), "--workers", "2", "--seed", str(SEED)]
    if stage == "tissue":
        return ["tissue", slide, "--out", str(work / "masks")]
    if stage == "patches":
        train = work / "train_root"
        for sub, name, target in (("training/tumor", "test_001.tif", slide),
                                  ("training/lesion_annotations", "test_001.xml",
                                   str(data / "testing/lesion_annotations/test_001.xml"))):
            (train / sub).mkdir(parents=True, exist_ok=True)
            if not (train / sub / name).exists():
                (train / sub / name).symlink_to(target)
        return ["patches", "--data-root", str(train), "--out", str(work / "patches.json"),
                "--tumor-per-slide", "2000", "--validation-fraction", "0"]
    if stage.startswith("infer_s"):
        stride = stage[len("infer_s"):]
        return ["infer", slide, "--checkpoint", checkpoint, "--masks", str(work / "masks"), "--stride", stride,
                "--out", str(work / f"maps_s{stride}")]
    if stage == "detect":
        return ["detect", str(work / "maps_s32"), "--out", str(work / "detections")]
    if stage == "evaluate":
        return ["evaluate", slide, "--detections", str(work / "detections"),
                "--annotations", str(data / "testing/lesion_annotations"), "--maps", str(work / "maps_s32"),
                "--reference", str(data / "testing/reference.csv"), "--out", str(work / "froc")]
    raise ValueError(stage)


STAGE_OUTPUTS = {"generate": "data", "tissue": "masks", "patches": "patches.json", "infer_s32": "maps_s32",
                 "infer_s64": "maps_s64", "detect": "detections", "evaluate": "froc"}


def disk_mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2 ** 20, 1)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2 ** 20, 1)


def worker(argv: list[str], record: str) -> int:
    """Run the CLI in this process, recording the largest region OpenSlide is asked to read."""
    import openslide

    largest = {"pixels": 0, "size": None, "level": None, "level_size": None}
    read_region = openslide.OpenSlide.read_region

    def recording(self, location, level, size):
        if size[0] * size[1] > largest["pixels"]:
            largest.update(pixels=int(size[0] * size[1]), size=list(size), level=level,
                           level_size=list(self.level_dimensions[level]))
        return read_region(self, location, level, size)

    openslide.OpenSlide.read_region = recording
    from metastasis.cli import main

    code = main(argv)
    Path(record).write_text(json.dumps(largest))
    return code


def run_stage(stage: str, work: Path, checkpoint: str) -> dict:
    record = work / f".{stage}_reads.json"
    argv = stage_argv(stage, work, checkpoint)
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: metastasis {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(record), "--", *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"stage {stage} failed (exit {os.waitstatus_to_exitcode(status)})")
    reads = json.loads(record.read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "disk_mb": disk_mb(work / STAGE_OUTPUTS[stage]), "largest_read": reads}


def summarise(work: Path, stages: dict) -> dict:
    """The results file: stages plus the throughput and the slides-per-hour projection."""
    out: dict = {"level0_size": list(SIZE), "seed": SEED, "stages": stages,
                 "machine": f"{os.cpu_count()} CPU cores, torch CPU bf16, {platform.platform()}"}
    map_json = work / "maps_s32/test_001.json"
    if map_json.is_file():
        info = json.loads(map_json.read_text())
        rows, cols = info["shape"]
        out["tissue_outputs"] = info["tissue_outputs"]
        out["tissue_share"] = round(info["tissue_outputs"] / (rows * cols), 4)
        out["outputs_per_second"] = info["outputs_per_second"]
        out["map_costs"] = {k: info[k] for k in ("read_seconds", "network_seconds", "pixels_read_per_output",
                                                  "tile_outputs") if k in info}
        per_slide = sum(stages[s]["seconds"] for s in ("tissue", "infer_s32", "detect") if s in stages)
        out["seconds_per_slide"] = round(per_slide, 1)
        out["slides_per_hour"] = round(3600 / per_slide, 2)
    froc = work / "froc/froc.json"
    if froc.is_file():
        result = json.loads(froc.read_text())
        out["froc"] = {k: result[k] for k in ("froc_score", "slide_auc", "n_lesions", "sensitivity_at_fp_rate")
                       if k in result}
        out["detections"] = sum(1 for _ in (work / "detections/test_001.csv").open()) - 1
    return out


def write_md(result: dict, path: Path) -> None:
    w, h = result["level0_size"]
    lines = [f"# One {w:,} x {h:,} slide through the pathology chain", "",
             f"Generated with seed {result['seed']}; {result['machine']}.", "",
             "| stage | seconds | peak RSS MB | disk MB | largest OpenSlide read (pixels, level) |",
             "| --- | --- | --- | --- | --- |"]
    for name, s in result["stages"].items():
        read = s["largest_read"]
        shown = f"{read['size'][0]}x{read['size'][1]} at level {read['level']} (level {read['level_size'][0]}x" \
                f"{read['level_size'][1]})" if read["size"] else "none"
        lines.append(f"| {name} | {s['seconds']} | {s['peak_rss_mb']} | {s['disk_mb']} | {shown} |")
    notes = [f"- {name}: {s['note']}" for name, s in result["stages"].items() if s.get("note")]
    if notes:
        lines += ["", *notes]
    if "slides_per_hour" in result:
        lines += ["", f"Tissue outputs at stride 32: {result['tissue_outputs']:,} ({100 * result['tissue_share']:.1f}% "
                  f"of the map), {result['outputs_per_second']:.0f} outputs/s. Tissue mask + stride-32 map + "
                  f"detections take {result['seconds_per_slide']:.0f} s: **{result['slides_per_hour']} slides per "
                  "hour** on this CPU for a slide of this size and tissue share."]
    if "map_costs" in result:
        c = result["map_costs"]
        lines += ["", f"Where the stride-32 map's time went: {c['network_seconds']:.0f} s in the network, "
                  f"{c['read_seconds']:.0f} s reading and decoding in the reader thread (overlapped with the "
                  f"network); {c['pixels_read_per_output']:.0f} level-0 pixels read per tissue output at "
                  f"{c['tile_outputs']} outputs per tile side."]
    if "froc" in result:
        f = result["froc"]
        lines += ["", f"FROC of the stride-32 detections ({result['detections']}) against the slide's XML "
                  f"({f['n_lesions']} lesions): {f['froc_score']:.4f}; the slide AUC is undefined for one slide. "
                  "The checkpoint is a briefly trained model of the demo's recipe: the stage measures the chain's "
                  "time and memory at this size, not accuracy."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (the slide alone takes about 5 GB)")
    parser.add_argument("--checkpoint", default="", help="trained patch classifier for the inference stages")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to run (those already in WORK/stages.json are skipped; default: all)")
    parser.add_argument("--redo", action="store_true", help="re-run the chosen stages even if measured")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        sys.exit(worker([a for a in rest if a != "--"], args.worker))
    if args.work is None:
        parser.error("--work is required")
    args.work.mkdir(parents=True, exist_ok=True)
    state_path = args.work / "stages.json"
    stages = json.loads(state_path.read_text()) if state_path.is_file() else {}
    for stage in STAGES:
        if stage not in args.stages or stage in stages and not args.redo:
            continue
        if stage.startswith("infer") and not Path(args.checkpoint).is_file():
            sys.exit("--checkpoint: a trained model file is needed for the inference stages")
        stages[stage] = run_stage(stage, args.work, args.checkpoint)
        print(stage, stages[stage], flush=True)
        state_path.write_text(json.dumps(stages, indent=2))
    result = summarise(args.work, {s: stages[s] for s in STAGES if s in stages})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wsi_real_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    write_md(result, RESULTS / "wsi_real_scale.md")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
