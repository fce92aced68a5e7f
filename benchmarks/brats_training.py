"""Benchmark: SegResNet training step on this machine's CPU, float32 vs bf16 autocast, and the share of an epoch
spent waiting for data with the cached pipeline vs decoding every NIfTI every epoch.

Run: .venv/bin/python benchmarks/brats_training.py   (about 4 minutes on 2 cores)
Writes benchmarks/results/brats_training.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def step_times(size: int, amp: bool, steps: int) -> dict:
    """Median seconds per train step (after one warm-up step) and peak RSS of this process."""
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.engine import Trainer
    from brats_fl.model import BratsSegResNet

    torch.manual_seed(0)
    config = TrainConfig(crop=(size, size, size), amp=amp, num_workers=0, device="cpu")
    trainer = Trainer(BratsSegResNet(crop=config.crop), config, torch.device("cpu"))
    image = torch.randn(1, 4, size, size, size)
    label = (torch.rand(1, 3, size, size, size) > 0.9).float()
    dataset = [{"image": image[0], "label": label[0]}] * (steps + 1)
    times = []
    for item in dataset:
        start = time.perf_counter()
        trainer.train_epoch([item])
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "amp": amp, "median_step_s": statistics.median(times[1:]), "steps": steps,
            "peak_rss_mb": round(peak_mb)}


def data_share(cases: int, crop: int) -> dict:
    """One epoch over release-geometry cases with the cached pipeline (decode once) and with plain decoding."""
    import torch
    from monai.data import Dataset

    from brats_fl.config import TrainConfig
    from brats_fl.datalist import read_datalist, write_datalists
    from brats_fl.engine import Trainer, train_dataset
    from brats_fl.model import BratsSegResNet
    from demodata.brats import generate_dataset
    from brats_fl.transforms import train_transforms

    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, cases + 2, 3, seed=0)  # 240 x 240 x 155, as the release
        lists = write_datalists(tmp, check=False)
        entries = read_datalist(lists["site-1"], tmp, check=False)["training"][:cases]
        config = TrainConfig(crop=(crop,) * 3, num_workers=0, device="cpu")
        trainer = Trainer(BratsSegResNet(crop=config.crop), config, torch.device("cpu"))
        start = time.perf_counter()
        cached = train_dataset(entries, config)
        cache_s = time.perf_counter() - start
        epochs = [trainer.train_epoch(cached) for _ in range(2)]
        plain = trainer.train_epoch(Dataset(entries, transform=train_transforms(config.crop)))
    out = {"cases": cases, "crop": crop, "cache_build_s": round(cache_s, 2)}
    for name, stats in (("cached_epoch_2", epochs[1]), ("decode_every_epoch", plain)):
        out[name] = {"epoch_s": round(stats.seconds, 2), "data_wait_s": round(stats.data_seconds, 2),
                     "data_share": round(stats.data_seconds / stats.seconds, 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="cubic crop for the step benchmark (default: 128)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default: 3)")
    parser.add_argument("--cases", type=int, default=4, help="cases in the data-loading epoch (default: 4)")
    parser.add_argument("--worker", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one precision per process, so peak memory is that mode's own
        print(json.dumps(step_times(args.size, args.worker == "bf16", args.steps)))
        return
    import torch

    modes = {}
    for mode in ("fp32", "bf16"):
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--size", str(args.size), "--steps",
                              str(args.steps)], capture_output=True, text=True, check=True).stdout
        modes[mode] = json.loads(out.strip().splitlines()[-1])
    result = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "train_step": modes,
        "bf16_speedup": round(modes["fp32"]["median_step_s"] / modes["bf16"]["median_step_s"], 2),
        "data_loading": data_share(args.cases, args.size),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "brats_training.json").write_text(json.dumps(result, indent=2) + "\n")
    d = result["data_loading"]
    md = [
        "# SegResNet training on this CPU", "",
        f"torch {result['machine']['torch']}, {result['machine']['cpu_threads']} threads, {result['machine']['platform']}",
        "", f"| train step {args.size}^3, batch 1 | median s/step | peak RSS MB |", "| --- | --- | --- |",
        *[f"| {m} | {modes[m]['median_step_s']:.2f} | {modes[m]['peak_rss_mb']} |" for m in modes],
        "", f"bf16 autocast speed-up over fp32: **{result['bf16_speedup']}x**", "",
        f"Data loading, {d['cases']} cases of 240x240x155 (4 contrasts), crop {d['crop']}^3:", "",
        "| pipeline | epoch s | waiting for data s | share |", "| --- | --- | --- | --- |",
        *[f"| {k} | {d[k]['epoch_s']} | {d[k]['data_wait_s']} | {100 * d[k]['data_share']:.1f}% |"
          for k in ("cached_epoch_2", "decode_every_epoch")],
        "", f"Building the cache (decoding each case once) took {d['cache_build_s']} s.", "",
    ]
    (RESULTS / "brats_training.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
