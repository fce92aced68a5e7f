"""Benchmark: data parallelism (issue 31), N processes x T threads against one process using the same cores.

Measures, as users run the commands, on generated data:

* a BraTS training epoch: ``brats-fl train --epochs 1`` (training and the epoch's validation) on demo-sized cases
  (96 x 96 x 64 crop), 1 process x C threads against C processes x 1 thread;
* a folder of slides: ``metastasis infer`` over generated test slides with an untrained checkpoint,
  1 process x C threads against C processes x 1 thread (C: this machine's cores);
* the pathology ResNet18's batch normalisation with per-rank statistics: ``metastasis train`` in 1 process
  (batch 32) and in 2 (batch 16 each), validation accuracy and AUC per epoch (SyncBatchNorm, the alternative,
  runs on GPUs only).

:func:`training_steps` (SegResNet steps in DistributedDataParallel on in-memory batches, samples per second and
peak GPU memory per rank) is what ``benchmarks/gpu_check.py`` runs at 1, 2 and all GPUs of a machine with several.

Run: .venv/bin/python benchmarks/data_parallel.py   (about 12 minutes on 2 cores)
Writes benchmarks/results/data_parallel.json and .md.
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
BIN = Path(sys.executable).parent


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(run.stdout + run.stderr)[-3000:]}")
    return round(time.perf_counter() - start, 1)


def brats_epoch(work: Path, processes: int, threads: int, cases: int, shape: list[int]) -> float:
    """Wall seconds of ``brats-fl train --epochs 1`` (data generated once under ``work``)."""
    root = work / "brats"
    if not root.is_dir():
        _timed([str(BIN / "brats-fl"), "make-data", "--out", str(root), "--hgg", str(cases), "--lgg", "3",
                "--shape", *map(str, shape)])
        _timed([str(BIN / "brats-fl"), "datalist", str(root)])
    from brats_fl.datalist import CLARA_SITES

    out = work / f"train_{processes}x{threads}"
    return _timed([str(BIN / "brats-fl"), "train", "--datalist", str(root / "datalists" / CLARA_SITES[0].datalist),
                   "--data-root", str(root), "--out", str(out), "--epochs", "1", "--processes", str(processes),
                   "--set", "num_workers=0", "--set", f"num_threads={threads}", "--set", f"crop={json.dumps(shape)}"])


def slide_folder(work: Path, processes: int, threads: int, slides: int, side: int) -> float:
    """Wall seconds of ``metastasis infer`` over a folder of ``slides`` generated test slides."""
    root = work / "camelyon16"
    checkpoint = work / "untrained.pt"
    if not root.is_dir():
        import torch

        from demodata.camelyon import generate_dataset
        from metastasis.model import PatchClassifier

        generate_dataset(root, slides // 2, slides - slides // 2, side, side, seed=3, split="testing", workers=2)
        torch.save({"model": PatchClassifier(224, seed=0).state_dict(), "train_conf": {"patch_size": 224}},
                   checkpoint)
    out = work / f"maps_{processes}x{threads}"
    return _timed([str(BIN / "metastasis"), "infer", str(root / "testing/images"), "--checkpoint", str(checkpoint),
                   "--out", str(out), "--processes", str(processes), "--num-threads", str(threads)])


def batchnorm_runs(work: Path, epochs: int, batch: int) -> dict:
    """The pathology ResNet18's batch normalisation under data parallelism: ``metastasis train`` for ``epochs``
    epochs in 1 process with batch ``batch`` and in 2 processes with ``batch / 2`` each (the same global batch;
    each rank normalises with its own batch's statistics): validation accuracy and AUC per epoch of each."""
    root = work / "camelyon16_train"
    if not root.is_dir():
        _timed([str(BIN / "metastasis"), "make-data", "--out", str(root), "--tumor", "2", "--normal", "2", "--width",
                "6144", "--height", "6144", "--workers", "2"])
        _timed([str(BIN / "metastasis"), "tissue", str(root / "training"), "--out", str(root / "masks")])
        _timed([str(BIN / "metastasis"), "patches", "--data-root", str(root), "--masks", str(root / "masks"),
                "--tumor-per-slide", "100", "--validation-fraction", "0.25", "--out", str(root / "patches.json")])
    runs = {}
    for processes in (1, 2):
        out = work / f"bn_{processes}"
        _timed([str(BIN / "metastasis"), "train", "--patches", str(root / "patches.json"), "--data-root", str(root),
                "--out", str(out), "--epochs", str(epochs), "--processes", str(processes), "--set", "num_workers=0",
                "--set", f"batch_size={batch // processes}", "--set", f"num_threads={2 // processes or 1}"])
        metrics = json.loads((out / "metrics.json").read_text())
        runs[f"{processes} x batch {batch // processes}"] = [
            {"epoch": m["epoch"], "val_accuracy": round(m["val_accuracy"], 4), "val_auc": round(m["val_auc"], 4)}
            for m in metrics]
    return runs


def _steps(crop: list[int], steps: int, device: str) -> dict:
    """One rank's part of :func:`training_steps`."""
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.engine import Trainer
    from brats_fl.model import BratsSegResNet
    from medcore.device import select_device
    from medcore.distributed import all_gather, current_rank, rank_device

    rank = current_rank()
    target = rank_device(select_device(device), rank)
    config = TrainConfig(crop=tuple(crop), num_workers=0)
    trainer = Trainer(BratsSegResNet(crop=tuple(crop)), config, target)
    item = {"image": torch.randn(4, *crop), "label": (torch.rand(3, *crop) > 0.9).float()}
    trainer.train_epoch([item])  # warm-up: kernels, cuDNN autotuning, DDP buckets
    if target.type == "cuda":
        torch.cuda.synchronize(target)
        torch.cuda.reset_peak_memory_stats(target)
    stats = trainer.train_epoch([item] * steps)
    peak = round(torch.cuda.max_memory_allocated(target) / 2 ** 20) if target.type == "cuda" else None
    return {"seconds": stats.seconds, "peak_gpu_mb_per_rank": all_gather(peak)}


def training_steps(processes: int, device: str, crop: list[int], steps: int) -> dict:
    """SegResNet training in ``processes`` data-parallel ranks (one GPU each on CUDA), each taking ``steps`` steps
    of batch 1: samples per second over all ranks, and each rank's peak GPU memory."""
    from medcore.distributed import data_parallel

    result = data_parallel(processes, device, _steps, crop, steps, device)
    return {"processes": processes, "crop": crop, "steps_per_rank": steps,
            "samples_per_second": round(processes * steps / result["seconds"], 2),
            "peak_gpu_mb_per_rank": result["peak_gpu_mb_per_rank"]}


def markdown(result: dict) -> str:
    lines = ["# Data parallelism on this machine", "",
             f"{result['machine']}, {result['cores']} cores. Wall seconds of each command as users run it; "
             "P x T: P processes of T PyTorch threads each.", "",
             "| work | " + " | ".join(result["layouts"]) + " | ratio |", "| --- | --- | --- | --- |"]
    for name, row in result["runs"].items():
        times = [row[layout] for layout in result["layouts"]]
        lines.append(f"| {name} | " + " | ".join(f"{t} s" for t in times) + f" | {times[0] / times[1]:.2f} |")
    lines += ["", "ratio: the first column's time over the second's (above 1: the processes were faster).", ""]
    if result.get("batchnorm"):
        lines += ["## The ResNet18's batch normalisation, per-rank statistics", "",
                  "`metastasis train` on the same patches and global batch, in one process and in two (each "
                  "normalising with its own half batch):", "", "| run | epoch | val accuracy | val AUC |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {m['epoch']} | {m['val_accuracy']} | {m['val_auc']} |"
                  for name, epochs in result["batchnorm"].items() for m in epochs]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--cases", type=int, default=12, help="HGG cases generated for the BraTS epoch (default 12)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="their shape and the training "
                        "crop (default: the demo's 96 96 64)")
    parser.add_argument("--slides", type=int, default=4, help="test slides in the folder (default 4)")
    parser.add_argument("--side", type=int, default=6144, help="their side in pixels (default 6144)")
    parser.add_argument("--bn-epochs", type=int, default=3, help="epochs of the batch-norm comparison (default 3; "
                        "0 skips it)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    layouts = {f"1 x {cores}": (1, cores), f"{cores} x 1": (cores, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        runs = {"BraTS training epoch": {}, "metastasis infer, folder": {}}
        for layout, (processes, threads) in layouts.items():
            runs["BraTS training epoch"][layout] = brats_epoch(work, processes, threads, args.cases, args.shape)
            runs["metastasis infer, folder"][layout] = slide_folder(work, processes, threads, args.slides,
                                                                    args.side)
            print(layout, {k: v[layout] for k, v in runs.items()}, flush=True)
        batchnorm = batchnorm_runs(work, args.bn_epochs, 32) if args.bn_epochs else {}
    result = {"machine": platform.platform(), "cores": cores, "layouts": list(layouts), "runs": runs,
              "batchnorm": batchnorm,
              "settings": {"cases": args.cases, "shape": args.shape, "slides": args.slides, "side": args.side}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_parallel.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "data_parallel.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
