"""GPU check: everything CUDA-specific in both jobs, in one short run (about 5 minutes on one GPU).

Sections, each timed, each allowed to fail without hiding the others (its traceback goes into the results):

* ``environment``: torch and CUDA versions, the GPU and its memory.
* ``brats_train``: SegResNet training steps at the seed crop 224x224x144 with the recipe's automatic precision
  (fp16 autocast + GradScaler on CUDA), seconds per step and peak GPU memory (the seed asks for 16 GB or more).
* ``brats_validation``: one full-size generated case (240x240x155) validated with the brain window and with the
  seed's sliding windows: seconds and peak GPU memory of each.
* ``brats_simulator``: the committed job for 2 rounds in the FLARE simulator, both clients on the one GPU, on
  6 + 6 generated full-size cases: wall time and whether cross-site validation completed.
* ``pathology_train``: ResNet18 patch classifier steps (batch 64, 224 px, fp16 + GradScaler): patches per second.
* ``pathology_inference``: tiled whole-slide inference at stride 32 on a generated slide: outputs per second,
  projected to slides per hour at Camelyon16's 100,000 x 200,000 pixels with the slide's tissue share.
* ``brats_torchscript``, ``pathology_torchscript``: each bundle's TorchScript against the checkpoint's network on
  the device (largest logit difference).
* ``pathology_input``: the patch input pipeline with 4, 8 and 16 DataLoader workers (patches per second, memory
  per worker), written to OUT/patch_reading.json and .md.
* ``multi_gpu_training``: on a machine with several GPUs, SegResNet trained data-parallel at 1, 2 and all GPUs:
  samples per second, speed-up and peak GPU memory per rank (skipped with one GPU).

Run on a GPU machine:  python benchmarks/gpu_check.py --out DIR   (writes DIR/gpu_check.json and .md)
``--quick`` runs every section at toy sizes (a check of the script itself, e.g. on CPU with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
# The venv's console script, else one on PATH (packages installed with pip --target put it beside them).
NVFLARE = next((str(p) for p in (Path(sys.executable).parent / "nvflare", shutil.which("nvflare")) if p and
                Path(p).is_file()), "nvflare")
CAMELYON_SIZE = (100_000, 200_000)


def _peak_gpu_mb(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device, args) -> dict:
    import monai
    import torch

    out = {"torch": torch.__version__, "monai": monai.__version__, "cuda_available": torch.cuda.is_available(),
           "device": str(device), "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return out


def brats_train(device, args) -> dict:
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.engine import Trainer
    from brats_fl.model import BratsSegResNet

    crop = (32, 32, 32) if args.quick else (224, 224, 144)
    config = TrainConfig(crop=crop, num_workers=0)
    torch.manual_seed(0)
    trainer = Trainer(BratsSegResNet(crop=crop), config, device)
    item = {"image": torch.randn(4, *crop), "label": (torch.rand(3, *crop) > 0.9).float()}
    trainer.train_epoch([item])  # warm-up: kernels and cuDNN autotuning
    _reset_peak(device)
    steps = 2 if args.quick else 6
    stats = trainer.train_epoch([item] * steps)
    _sync(device)
    return {"crop": list(crop), "steps": stats.steps, "seconds_per_step": round(stats.seconds / stats.steps, 3),
            "loss": round(stats.loss, 4), "grad_scaler": trainer.scaler.is_enabled(),
            "peak_gpu_mb": _peak_gpu_mb(device)}


def brats_validation(device, args) -> dict:
    from brats_fl.config import TrainConfig
    from brats_fl.data import MODALITIES, case_files, find_cases
    from brats_fl.engine import eval_dataset, evaluate
    from brats_fl.model import BratsSegResNet
    from demodata.brats import RELEASE_SHAPE, generate_dataset

    shape, crop = ((48, 48, 32), (32, 32, 32)) if args.quick else (RELEASE_SHAPE, (224, 224, 144))
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, 1, 0, shape=shape, seed=7)
        files = case_files(find_cases(tmp)["HGG"][0])
        entries = [{"image": [str(files[m]) for m in MODALITIES], "label": str(files["seg"]), "name": "case"}]
        data = eval_dataset(entries)
        model = BratsSegResNet(crop=crop).to(device)
        out = {"shape": list(shape)}
        for window in ("brain", "sliding"):
            config = TrainConfig(crop=crop, val_window=window)
            evaluate(model, data, config, device)  # warm-up
            _reset_peak(device)
            start = time.perf_counter()
            scores = evaluate(model, data, config, device)[0]
            _sync(device)
            out[window] = {"seconds": round(time.perf_counter() - start, 3), "peak_gpu_mb": _peak_gpu_mb(device),
                           "mean_dice_untrained": round(scores["mean"], 4)}
    return out


def brats_torchscript(device, args) -> dict:
    """The exported bundle's TorchScript (models/model.ts) against the checkpoint's network on this device: the
    largest difference of their logits on a generated case (issue 28)."""
    import torch

    from brats_fl.bundle import export_bundle
    from brats_fl.data import MODALITIES, case_files, find_cases
    from brats_fl.model import BratsSegResNet, load_checkpoint
    from brats_fl.transforms import infer_transforms
    from demodata.brats import generate_dataset

    crop = [32, 32, 32] if args.quick else [128, 128, 128]
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, 1, 0, shape=(48, 48, 32) if args.quick else (160, 160, 128), seed=7)
        files = case_files(find_cases(tmp)["HGG"][0])
        image = infer_transforms()({"image": [str(files[m]) for m in MODALITIES]})["image"].as_tensor()
        image = image[None, :, : crop[0], : crop[1], : crop[2]].to(device)
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model": BratsSegResNet(crop=crop, seed=1).state_dict(), "train_conf": {"crop": crop}}, checkpoint)
        bundle = export_bundle(checkpoint, Path(tmp) / "bundle")
        model = load_checkpoint(checkpoint)[0].to(device).eval()
        scripted = torch.jit.load(str(bundle / "models/model.ts"), map_location=device)
        with torch.no_grad():
            expected, got = model(image), scripted(image)
        return {"device": str(device), "max_abs_difference": float((expected - got).abs().max()),
                "max_abs_logit": float(expected.abs().max())}


def pathology_torchscript(device, args) -> dict:
    """The pathology bundle's TorchScript against the checkpoint's network on this device, on a whole tile of a
    generated slide: the largest difference of their logit maps (issue 28)."""
    import numpy as np
    import torch

    from demodata.camelyon import generate_dataset
    from metastasis.bundle import export_bundle
    from metastasis.data.slide import Slide
    from metastasis.data.transforms import to_input
    from metastasis.model import PatchClassifier, load_checkpoint

    side = 224 + 32 * (7 if args.quick else 63)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, 1, 0, 4096, 4096, seed=7)
        with Slide(next(Path(tmp).rglob("tumor_*.tif"))) as slide:
            rgb = np.asarray(slide.handle.read_region((0, 0), 0, (side, side)))[..., :3].copy()
        checkpoint = Path(tmp) / "model.pt"
        torch.save({"model": PatchClassifier(224, seed=1).state_dict(), "train_conf": {"patch_size": 224}}, checkpoint)
        bundle = export_bundle(checkpoint, Path(tmp) / "bundle")
        model = load_checkpoint(checkpoint)[0].to(device).eval()
        scripted = torch.jit.load(str(bundle / "models/model.ts"), map_location=device)
        x = to_input(rgb[None]).to(device)
        with torch.no_grad():
            expected, got = model(x), scripted(x)
        return {"device": str(device), "tile": side, "max_abs_difference": float((expected - got).abs().max()),
                "max_abs_logit": float(expected.abs().max())}


def brats_simulator(device, args) -> dict:
    from brats_fl.datalist import write_datalists
    from brats_fl.job import make_job
    from demodata.brats import RELEASE_SHAPE, generate_dataset

    shape = (48, 48, 32) if args.quick else RELEASE_SHAPE
    train = {"num_workers": 2, "device": str(device)}
    if args.quick:
        train.update(crop=[32, 32, 32], num_threads=1, num_workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "brats", 6, 6, shape=shape, seed=3)
        lists = write_datalists(tmp / "brats", check=False)
        job = make_job(tmp / "job", rounds=2, data_root=str(tmp / "brats"),
                       datalist_dir=str(lists["site-1"].parent), train=train)
        start = time.perf_counter()
        run = subprocess.run([NVFLARE, "simulator", str(job), "-w", str(tmp / "ws"), "-n", "2", "-t", "2"],
                             capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
        results = list((tmp / "ws").rglob("cross_val_results.json"))
        out = {"shape": list(shape), "rounds": 2, "seconds": round(seconds, 1), "returncode": run.returncode,
               "cross_site_results": json.loads(results[0].read_text()) if results else None}
        if run.returncode or not results:
            out["log_tail"] = (run.stdout + run.stderr)[-3000:]
    return out


def pathology_train(device, args) -> dict:
    import torch

    from metastasis.config import TrainConfig
    from metastasis.engine import Trainer, build_model

    size, batch = (64, 8) if args.quick else (224, 64)
    config = TrainConfig(patch_size=size, batch_size=batch, num_workers=0)
    model = build_model(config)
    trainer = Trainer(model, config, device)
    items = [(torch.rand(3, size, size), torch.tensor([float(i % 2)])) for i in range(batch)]
    trainer.train_epoch(items)  # warm-up
    _reset_peak(device)
    steps = 2 if args.quick else 20
    stats = trainer.train_epoch(items * steps)
    _sync(device)
    return {"patch_size": size, "batch_size": batch, "steps": stats.steps,
            "patches_per_second": round(stats.samples / stats.seconds, 1), "grad_scaler": trainer.scaler.is_enabled(),
            "peak_gpu_mb": _peak_gpu_mb(device)}


def pathology_inference(device, args) -> dict:
    from metastasis.config import TrainConfig
    from metastasis.engine import build_model
    from metastasis.inference.run import probability_map
    from demodata.camelyon import generate_dataset

    side = 2048 if args.quick else 16384
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(tmp, 1, 0, side, side, seed=1, split="testing", workers=4)
        slide = next(Path(tmp).rglob("*.tif"))
        model = build_model(TrainConfig()).to(device)
        probability_map(slide, model, stride=32, mode="tiled", device=device)  # warm-up: kernel selection
        _reset_peak(device)
        probs, info = probability_map(slide, model, stride=32, mode="tiled", device=device)
    tissue_share = info["tissue_outputs"] / max(probs.size, 1)
    outputs = CAMELYON_SIZE[0] // 32 * CAMELYON_SIZE[1] // 32 * tissue_share
    return {"slide_side": side, "outputs_per_second": info["outputs_per_second"], "seconds": info["seconds"],
            "tissue_share": round(tissue_share, 3), "peak_gpu_mb": _peak_gpu_mb(device),
            "projected_slides_per_hour_100k_x_200k": round(3600 * info["outputs_per_second"] / max(outputs, 1), 2)}


def pathology_input(device, args) -> dict:
    """Patches per second of the training input pipeline with 4, 8 and 16 DataLoader workers (a GPU machine's
    cores), and the memory each worker holds: benchmarks/patch_reading.py, its results beside this check's."""
    workers = ["0", "2"] if args.quick else ["4", "8", "16"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(Path(__file__).with_name("patch_reading.py")), "--work", tmp,
                        "--out", str(args.out), "--label", "gpu machine", "--batches", "3" if args.quick else "40",
                        "--workers", *workers], check=True, capture_output=True, text=True)
    return json.loads((args.out / "patch_reading.json").read_text())["gpu machine"]


def multi_gpu_training(device, args) -> dict:
    """SegResNet trained data-parallel (DistributedDataParallel, one GPU per process) at 1, 2 and all GPUs:
    samples per second, the speed-up over one GPU, and each rank's peak GPU memory (benchmarks/data_parallel.py).
    Skipped on a machine with one GPU; ``--device cpu`` runs it with 1 and 2 CPU processes."""
    import torch

    from data_parallel import training_steps

    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if gpus < 2:
            return {"skipped": f"{gpus} GPU visible: the speed-up needs 2 or more"}
        counts, name = sorted({1, 2, gpus}), "cuda"
    else:
        counts, name = [1, 2], "cpu"
    crop, steps = ([32, 32, 32], 2) if args.quick else ([224, 224, 144], 10)
    runs = [training_steps(n, name, crop, steps) for n in counts]
    for run in runs:
        run["speed_up"] = round(run["samples_per_second"] / runs[0]["samples_per_second"], 2)
    return {"runs": runs}


SECTIONS: dict[str, Callable] = {"environment": environment, "brats_train": brats_train,
                                 "brats_validation": brats_validation, "brats_torchscript": brats_torchscript,
                                 "brats_simulator": brats_simulator,
                                 "pathology_train": pathology_train, "pathology_inference": pathology_inference,
                                 "pathology_torchscript": pathology_torchscript,
                                 "pathology_input": pathology_input, "multi_gpu_training": multi_gpu_training}


def markdown(result: dict) -> str:
    lines = ["# GPU check", "", f"`{json.dumps(result['sections']['environment'].get('result', {}))}`", "",
             "| section | seconds | result |", "| --- | --- | --- |"]
    for name, section in result["sections"].items():
        if name == "environment":
            continue
        shown = section.get("result") or section.get("error", "").strip().splitlines()[-1:]
        if isinstance(shown, dict):
            shown = {k: v for k, v in shown.items() if k not in ("cross_site_results", "log_tail")}
        lines.append(f"| {name} | {section['seconds']} | {'FAILED: ' if 'error' in section else ''}"
                     f"`{json.dumps(shown)}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu_check.json and .md "
                        "(default: benchmarks/results)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    from medcore.device import select_device

    device = select_device(args.device)
    result = {"quick": args.quick, "sections": {}}
    for name, section in SECTIONS.items():
        if args.only and name not in args.only and name != "environment":
            continue
        start = time.perf_counter()
        entry: dict = {}
        try:
            entry["result"] = section(device, args)
        except Exception:  # noqa: BLE001 - one failing section must not hide the others' results
            entry["error"] = traceback.format_exc()
        entry["seconds"] = round(time.perf_counter() - start, 1)
        result["sections"][name] = entry
        print(name, json.dumps(entry)[:600], flush=True)
        # Written after every section: a run stopped at a time limit keeps what it measured.
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
