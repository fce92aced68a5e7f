"""Benchmark: is bfloat16 autocast worth it on this CPU? Training steps in float32 and under bfloat16 autocast.

``medcore.device`` uses bfloat16 autocast on a CPU only where oneDNN computes bfloat16 natively (AVX-512 or AMX
on x86, BF16 on Arm): elsewhere it is emulated. This measures both on this machine, for the pathology ResNet18
(a batch of 16 patches of 128 pixels) and the BraTS SegResNet (one 4-channel crop of 64 x 64 x 48): seconds per
training step (forward, backward, optimiser), the median of ``--steps`` steps after one warm-up, and records what
``medcore.device`` chooses here.

Run: .venv/bin/python benchmarks/cpu_amp.py [--steps 3] [--threads 2]
Writes benchmarks/results/cpu_amp.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from brats_fl.model import BratsSegResNet
from medcore.device import amp_dtype, cpu_has_native_bf16
from metastasis.model import PatchClassifier

RESULTS = Path(__file__).resolve().parent / "results"


def step_seconds(model: torch.nn.Module, batch: torch.Tensor, bf16: bool, steps: int) -> float:
    """Median seconds of one training step (forward under autocast or not, backward, SGD step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        loss = (out[0] if isinstance(out, tuple) else out).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = {"ResNet18, 16 x 128 px": (PatchClassifier(128), torch.randn(16, 3, 128, 128)),
             "SegResNet, 1 x 64x64x48": (BratsSegResNet(), torch.randn(1, 4, 64, 64, 48))}
    rows = {}
    for name, (model, batch) in cases.items():
        fp32 = step_seconds(model, batch, False, args.steps)
        bf16 = step_seconds(model, batch, True, args.steps)
        rows[name] = {"float32_s": round(fp32, 3), "bfloat16_autocast_s": round(bf16, 3),
                      "bf16_over_fp32": round(bf16 / fp32, 2)}
        print(name, rows[name], flush=True)
    chosen = amp_dtype(torch.device("cpu"))
    record = {"cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
              "native_bf16": cpu_has_native_bf16(), "chosen": str(chosen or torch.float32),
              "torch": torch.__version__, "threads": args.threads, "steps": args.steps, "cases": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_amp.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# bfloat16 autocast against float32 on this CPU", "",
             f"{record['cpu']} ({record['capability']}; native bfloat16: {record['native_bf16']}), torch "
             f"{record['torch']}, {args.threads} threads; median of {args.steps} training steps after a warm-up. "
             f"`medcore.device` chooses {record['chosen']} here.", "",
             "| model, batch | float32 (s) | bfloat16 autocast (s) | bfloat16 / float32 |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['float32_s']} | {r['bfloat16_autocast_s']} | {r['bf16_over_fp32']} |")
    (RESULTS / "cpu_amp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
