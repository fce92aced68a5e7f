"""Benchmark: the metastasis patch classifier's input pipeline alone vs its training step, on this machine's CPU.

The question: is reading and augmenting patches (OpenSlide reads of 224x224 level-0 regions, colour jitter, flips,
rotations, zoom, intensity scaling) fast enough that the training step, not the input, bounds training speed?

Measures, on generated Camelyon16-format slides (2 tumour + 2 normal, 8192 x 6144):
* input pipeline alone: patches/s of a DataLoader over the training patches (batch 32) with 0, 1 and 2 worker
  processes, with and without augmentation;
* training step alone (batches already in memory): patches/s, float32 vs bf16 autocast;
* real epochs (reading + augmenting in 0, 1 or 2 worker processes while training): patches/s and the share of the
  epoch spent waiting for data.

Run: .venv/bin/python benchmarks/patch_training.py   (about 5 minutes on 2 cores)
Writes benchmarks/results/patch_training.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def prepare(root: Path, per_slide: int) -> dict:
    from metastasis.data.sampling import find_training_slides, generate_patch_list
    from demodata.camelyon import generate_dataset

    generate_dataset(root, 2, 2, 8192, 6144, seed=0, workers=2)
    sources = find_training_slides(root, root / "tissue_masks")
    return generate_patch_list(sources, tumor_per_slide=per_slide, validation_fraction=0.5, seed=0)


def pipeline_rate(patches: dict, workers: int, augment: bool, batch: int) -> float:
    """Patches per second of one pass of a DataLoader over the training patches (no model)."""
    from monai.data import DataLoader

    from metastasis.config import TrainConfig
    from metastasis.engine import patch_datasets

    config = TrainConfig(augment=augment, num_workers=workers)
    dataset = patch_datasets(patches, config)["training"]
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    count = sum(images.shape[0] for images, _ in loader)
    return count / (time.perf_counter() - start)


def step_rate(amp: bool, batch: int, steps: int) -> dict:
    """Patches per second of optimiser steps on batches already in memory (median step after a warm-up)."""
    import torch

    from metastasis.config import TrainConfig
    from metastasis.engine import Trainer, build_model

    config = TrainConfig(amp=amp, batch_size=batch, num_workers=0, device="cpu")
    trainer = Trainer(build_model(config), config, torch.device("cpu"))
    torch.manual_seed(0)
    batch_data = [(torch.randn(3, 224, 224), torch.tensor([float(i % 2)])) for i in range(batch)]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        trainer.train_epoch(batch_data)
        times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    return {"amp": amp, "median_step_s": round(median, 3), "patches_per_s": round(batch / median, 1)}


def epoch_rate(patches: dict, workers: int, batch: int) -> dict:
    """The second of two real training epochs (the first pays for warm-up)."""
    import torch

    from metastasis.config import TrainConfig
    from metastasis.engine import Trainer, build_model, patch_datasets

    config = TrainConfig(batch_size=batch, num_workers=workers, device="cpu")
    trainer = Trainer(build_model(config), config, torch.device("cpu"))
    dataset = patch_datasets(patches, config)["training"]
    trainer.train_epoch(dataset)
    stats = trainer.train_epoch(dataset)
    return {"num_workers": workers, "patches": stats.samples, "epoch_s": round(stats.seconds, 2),
            "patches_per_s": round(stats.samples / stats.seconds, 1),
            "data_wait_share": round(stats.data_seconds / stats.seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-slide", type=int, default=200, help="tumour patches per tumour slide (default: 200)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default: 32, the recipe's)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per precision (default: 4)")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        patches = prepare(Path(tmp), args.per_slide)
        n_train = len(patches["training"])
        pipeline = {f"{'augmented' if augment else 'plain'}_{workers}_workers":
                    round(pipeline_rate(patches, workers, augment, args.batch), 1)
                    for augment in (True, False) for workers in ((0, 1, 2) if augment else (0,))}
        steps = {"fp32": step_rate(False, args.batch, args.steps), "bf16": step_rate(True, args.batch, args.steps)}
        epochs = [epoch_rate(patches, workers, args.batch) for workers in (0, 1, 2)]
    result = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "training_patches": n_train, "batch_size": args.batch, "input_pipeline_patches_per_s": pipeline,
        "train_step": steps, "epochs": epochs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "patch_training.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Patch classifier: input pipeline vs training step on this CPU", "",
        f"torch {result['machine']['torch']}, {result['machine']['cpu_threads']} threads, "
        f"{result['machine']['platform']}; {n_train} training patches of 224x224 from 4 generated slides "
        f"(8192x6144), batch {args.batch}.", "",
        "| input pipeline alone (DataLoader, no model) | patches/s |", "| --- | --- |",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in pipeline.items()], "",
        "| training step alone (batches in memory) | s/step | patches/s |", "| --- | --- | --- |",
        *[f"| {k} | {v['median_step_s']} | {v['patches_per_s']} |" for k, v in steps.items()], "",
        "| real training epoch (bf16, second epoch) | s | patches/s | waiting for data |",
        "| --- | --- | --- | --- |",
        *[f"| {e['num_workers']} DataLoader workers | {e['epoch_s']} | {e['patches_per_s']} | "
          f"{100 * e['data_wait_share']:.1f}% |" for e in epochs], "",
        f"Peak RSS of the benchmark process: {result['peak_rss_mb']} MB.", "",
    ]
    (RESULTS / "patch_training.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
