"""Benchmark: does a metastasis detector trained on one centre's slides hold up on another centre's?

Camelyon16 mixes two hospitals whose staining and scanners differ. This benchmark makes two centres' data with
the generator (``metastasis make-data --centre A|B --difficulty D``: stain hue and strength, glass colour, focus,
noise, JPEG quality; mimics and artefacts), trains the patch classifier with ``metastasis train`` in several
setups, and scores every model on held-out slides of both centres:

* ``baseline``: trained on centre A with the seed's augmentations only (``stain_variation=0``, ``hed_jitter=0``);
* ``hed``: trained on centre A with Tellez's HED-light stain jitter as well (``hed_jitter=0.05``: the default
  recipe);
* ``macenko``: trained on centre A with Macenko stain normalisation (``stain_normalization=macenko``, no stain
  augmentation; inference normalises each test slide with its own stain vectors, as the checkpoint records);
* ``variation``: trained on centre A with another centre's look as augmentation (``stain_variation=0.5``) and the
  HED jitter;
* ``ab_baseline``: the baseline trained on centres A and B together (what pooling both centres gives);
* ``fl_ab``: the baseline trained federated, centre A and centre B as two sites of one FLARE job (``metastasis
  make-job --sites 2``, each site reading its own centre's patch list), one local epoch per round, as many rounds
  as the others' epochs; scored with the server's best global model.

For the models trained on centre A alone, a diagnosis of which of B's appearance factors moves them
(:func:`factor_diagnosis`). Per model and test centre: patch accuracy and AUC on every patch of the test slides
(``metastasis validate``), and the Camelyon16 FROC and slide-level AUC (``metastasis infer``, ``detect``,
``evaluate``). Every step runs the command line in its own process and skips what an earlier run already finished,
so an interrupted run resumes.

Run: .venv/bin/python benchmarks/centre_shift.py --work DIR [--difficulty 1.0] [--epochs 5] ...
(the committed results: ``--patch-size 128 --epochs 12``).
Writes benchmarks/results/centre_shift.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CENTRES = ("A", "B")
# Every setup names all its stain settings, so that the table keeps its meaning when the recipe's defaults change.
_PLAIN = {"stain_variation": 0.0, "hed_jitter": 0.0, "stain_normalization": "none"}
SETUPS = {  # name: (training centres, recipe settings)
    "baseline": (("A",), _PLAIN),
    "hed": (("A",), {**_PLAIN, "hed_jitter": 0.05}),
    "macenko": (("A",), {**_PLAIN, "stain_normalization": "macenko"}),
    "ab_baseline": (("A", "B"), _PLAIN),
    "fl_ab": (("A", "B"), _PLAIN),
    "variation": (("A",), {**_PLAIN, "stain_variation": 0.5, "hed_jitter": 0.05}),
}
#: The setup whose settings are the recipe's defaults (checked at start).
DEFAULT_SETUP = "hed"
FEDERATED = {"fl_ab"}


def cli(*argv: str) -> None:
    """Run one ``metastasis`` command in its own process (its output goes to this one's)."""
    print(f"[{time.strftime('%H:%M:%S')}] metastasis {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, "-c", "import sys; from metastasis.cli import main; sys.exit(main(sys.argv[1:]))",
                    *argv], check=True)


def make_data(work: Path, args: argparse.Namespace) -> None:
    """Per centre: a training set and a test set (other seed), in the training layout (slides, XML), with
    tissue masks and patch lists; the test list holds every patch of its slides under 'validation'."""
    for centre in CENTRES:
        for split, seed, tumour, normal in (("train", 10, args.train_tumour, args.train_normal),
                                            ("test", 20, args.test_tumour, args.test_normal)):
            root = work / f"{split}_{centre}"
            common = ["--width", str(args.size[0]), "--height", str(args.size[1]), "--centre", centre,
                      "--difficulty", str(args.difficulty), "--workers", "2"]
            # The same seed for both centres would give both the same tissue: centres get their own.
            cli("make-data", "--out", str(root), "--tumor", str(tumour), "--normal", str(normal),
                "--seed", str(seed + (centre == "B")), *common)
            patches = root / "patches.json"
            if not patches.is_file():
                cli("patches", "--data-root", str(root), "--masks", str(root / "tissue_masks"), "--out", str(patches),
                    "--tumor-per-slide", str(args.patches_per_slide), "--patch-size", str(args.patch_size),
                    "--validation-fraction", "0.25")
            if split == "test" and not (root / "test_patches.json").is_file():
                listed = json.loads(patches.read_text())
                listed["validation"] = listed.get("training", []) + listed.get("validation", [])
                listed["training"] = []
                (root / "test_patches.json").write_text(json.dumps(listed))


def pooled_patches(work: Path, centres: tuple[str, ...]) -> Path:
    """The training patch list of one centre, or both centres' lists joined (slide paths made absolute)."""
    if len(centres) == 1:
        return work / f"train_{centres[0]}" / "patches.json"
    out = work / f"train_{''.join(centres)}_patches.json"
    if not out.is_file():
        joined: dict = {}
        for centre in centres:
            root = work / f"train_{centre}"
            listed = json.loads((root / "patches.json").read_text())
            joined["patch_size"] = listed["patch_size"]
            for split in ("training", "validation"):
                joined.setdefault(split, []).extend(
                    {**entry, "image": str((root / entry["image"]).resolve())} for entry in listed.get(split, []))
        out.write_text(json.dumps(joined))
    return out


def train(work: Path, setup: str, args: argparse.Namespace) -> Path:
    centres, settings = SETUPS[setup]
    out = work / "models" / setup
    sets = [f"{k}={v}" for k, v in {"patch_size": args.patch_size, "num_workers": 0, "seed": args.seed,
                                     **settings}.items()]
    if setup in FEDERATED:
        return train_federated(work, out, centres, sets, args)
    if not (out / "done").is_file():
        cli("train", "--patches", str(pooled_patches(work, centres)), "--out", str(out), "--epochs", str(args.epochs),
            *[a for s in sets for a in ("--set", s)])
        (out / "done").write_text("")
    return out / "best_model.pt"


def train_federated(work: Path, out: Path, centres: tuple[str, ...], sets: list[str], args: argparse.Namespace) -> Path:
    """One FLARE job, one site per centre (site-1 = the first centre), in the simulator; the best global model."""
    best = out / "simulation/server/simulate_job/app_server/best_FL_global_model.pt"
    if (out / "done").is_file():
        return best
    sites = work / "sites"
    sites.mkdir(exist_ok=True)
    for index, centre in enumerate(centres, start=1):
        link = sites / f"site-{index}"
        if not link.is_symlink():
            link.symlink_to(work / f"train_{centre}", target_is_directory=True)
    cli("make-job", "--out", str(out / "job"), "--rounds", str(args.epochs), "--sites", str(len(centres)),
        "--data-root", str(sites / "{site}"), "--patch-list", str(sites / "{site}" / "patches.json"),
        *[a for s in sets + ["num_threads=1"] for a in ("--set", s)])
    print(f"[{time.strftime('%H:%M:%S')}] nvflare simulator {out / 'job'} -n {len(centres)}", flush=True)
    subprocess.run([str(Path(sys.executable).with_name("nvflare")), "simulator", str(out / "job"), "-w",
                    str(out / "simulation"), "-n", str(len(centres)), "-t", str(len(centres))], check=True)
    (out / "done").write_text("")
    return best


def score(work: Path, setup: str, checkpoint: Path, centre: str, args: argparse.Namespace) -> dict:
    """Patch accuracy / AUC on every test patch of ``centre``, and the FROC and slide AUC on its test slides."""
    root = work / f"test_{centre}"
    out = work / "scores" / setup / centre
    result_file = out / "scores.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "patches.csv"
    cli("validate", "--checkpoint", str(checkpoint), "--patches", str(root / "test_patches.json"), "--data-root",
        str(root), "--split", "validation", "--csv", str(csv), "--num-workers", "0")
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    labels = [int(r[3]) for r in rows]
    probabilities = [float(r[4]) for r in rows]
    from metastasis.metrics import classification_scores  # the project's own definitions, as validate prints them

    patch = classification_scores(probabilities, labels, 0.5)
    slides = str(root / "training")
    cli("infer", slides, "--checkpoint", str(checkpoint), "--masks", str(root / "tissue_masks"), "--out",
        str(out / "maps"), "--stride", str(args.stride))
    cli("detect", str(out / "maps"), "--out", str(out / "detections"))
    cli("evaluate", slides, "--detections", str(out / "detections"), "--annotations",
        str(root / "training/lesion_annotations"), "--maps", str(out / "maps"), "--out", str(out / "froc"))
    froc = json.loads((out / "froc/froc.json").read_text())
    result = {"patch_accuracy": patch["accuracy"], "patch_auc": patch["auc"], "patches": len(rows),
              "froc": froc["froc_score"], "slide_auc": froc["slide_auc"], "slides": froc["n_slides"],
              "lesions": froc["n_lesions"]}
    result_file.write_text(json.dumps(result, indent=1))
    return result


FACTORS = ("none", "stain", "glass", "blur", "noise", "jpeg", "all")


def factor_diagnosis(work: Path, setup: str, checkpoint: Path, per_class: int = 200) -> dict:
    """Which of centre B's differences moves a model trained on centre A: a balanced sample of A's test patches,
    scored as they are and with one of B's appearance factors at a time applied (its stain vectors and strengths,
    its glass colour, the extra focus blur, sensor noise and JPEG quality that B has over A), then all of them.
    The stain and glass change is exact for the generator (:meth:`~metastasis.centres.Appearance.restain`): the
    same stain amounts seen through B. Setups with stain normalisation are skipped (each slide's own estimate would
    have to be redone on the changed pixels)."""
    out = work / "scores" / setup / "factors.json"
    if out.is_file():
        return json.loads(out.read_text())
    import io

    import numpy as np
    import torch
    from PIL import Image
    from scipy import ndimage

    from metastasis.centres import CENTRES as LOOKS
    from metastasis.metrics import classification_scores
    from metastasis.model import load_checkpoint
    from metastasis.patches import PatchDataset
    from metastasis.synthetic import REFERENCE_STAINS
    from metastasis.transforms import to_input

    model, meta = load_checkpoint(checkpoint)
    if meta["train_conf"].get("stain_normalization", "none") != "none":
        return {}
    model.eval()
    root = work / "test_A"
    listed = json.loads((root / "test_patches.json").read_text())["validation"]
    rng = np.random.default_rng(0)
    picks = []
    for label in (1, 0):
        same = [e for e in listed if e["label"] == label]
        picks += [{**same[i], "image": str(root / same[i]["image"])}
                  for i in sorted(rng.choice(len(same), min(per_class, len(same)), replace=False))]
    patches = PatchDataset(picks, int(meta["train_conf"]["patch_size"]))
    raw = [patches.read(i).astype(np.float64) for i in range(len(picks))]
    labels = np.array([e["label"] for e in picks])
    a, b = LOOKS["A"], LOOKS["B"]
    noise = np.random.default_rng(1)

    def jpeg(rgb):
        buffer = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=b.jpeg_quality)
        return np.asarray(Image.open(buffer), dtype=np.float64)

    steps = {
        "stain": lambda x: b.restain(x, a, REFERENCE_STAINS, glass=False),
        "glass": lambda x: x * (np.asarray(b.background) / np.asarray(a.background)),
        "blur": lambda x: ndimage.gaussian_filter(x, (np.sqrt(b.blur ** 2 - a.blur ** 2),) * 2 + (0,), mode="nearest"),
        "noise": lambda x: x + noise.normal(0, np.sqrt(b.noise ** 2 - a.noise ** 2), x.shape),
        "jpeg": jpeg,
    }
    result = {}
    for factor in FACTORS:
        chain = [] if factor == "none" else list(steps) if factor == "all" else [factor]
        images = []
        for rgb in raw:
            for step in chain:
                rgb = steps[step](rgb)
            images.append(np.clip(rgb, 0, 255).round().astype(np.uint8))
        with torch.no_grad():
            probabilities = np.concatenate([torch.sigmoid(model(to_input(np.stack(images[i:i + 64]))).flatten(1))
                                            .numpy().ravel() for i in range(0, len(images), 64)])
        scores = classification_scores(probabilities, labels, 0.5)
        result[factor] = {k: round(float(scores[k]), 4) for k in ("accuracy", "auc", "sensitivity", "specificity")}
        print(f"[{time.strftime('%H:%M:%S')}] {setup}: A test patches with B's {factor}: {result[factor]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def stain_costs(work: Path) -> dict | None:
    """What Macenko normalisation cost in the ``macenko`` setup's tiled inference: seconds per tile (in the reader
    thread) against the network's seconds per tile, over all its test slides' maps."""
    maps = [json.loads(p.read_text()) for p in sorted((work / "scores" / "macenko").glob("*/maps/*.json"))]
    maps = [m for m in maps if "stain_seconds" in m and m.get("tiles")]
    if not maps:
        return None
    tiles = sum(m["tiles"] for m in maps)
    return {"slides": len(maps), "tiles": tiles, "tile_outputs": maps[0]["tile_outputs"],
            "stain_seconds_per_tile": round(sum(m["stain_seconds"] for m in maps) / tiles, 4),
            "network_seconds_per_tile": round(sum(m["network_seconds"] for m in maps) / tiles, 4),
            "read_seconds_per_tile": round(sum(m["read_seconds"] for m in maps) / tiles, 4)}


def write_results(work: Path, args: argparse.Namespace, runs: dict, factors: dict, seconds: dict) -> None:
    import torch

    record = {
        "machine": f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.platform()}",
        "data": {"centres": list(CENTRES), "difficulty": args.difficulty, "slide_size": list(args.size),
                 "train_slides_per_centre": {"tumour": args.train_tumour, "normal": args.train_normal},
                 "test_slides_per_centre": {"tumour": args.test_tumour, "normal": args.test_normal},
                 "tumour_patches_per_slide": args.patches_per_slide, "patch_size": args.patch_size},
        "training": {"epochs": args.epochs, "seed": args.seed, "default_setup": DEFAULT_SETUP, "setups": {
            name: {"centres": list(c), "settings": s, "federated": name in FEDERATED}
            for name, (c, s) in SETUPS.items() if name in runs}},
        "inference_stride": args.stride,
        "runs": runs,
        "factor_diagnosis": factors,
        "stain_normalization_cost": stain_costs(work),
        "seconds": seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "centre_shift.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Centre shift: trained on centre A (or A+B), tested on held-out slides of A and B", "",
             f"{record['machine']}. Generated data at difficulty {args.difficulty}: {args.train_tumour} tumour + "
             f"{args.train_normal} normal training slides and {args.test_tumour} + {args.test_normal} test slides "
             f"per centre, {args.size[0]}x{args.size[1]} pixels; {args.patch_size}-pixel patches, "
             f"{args.patches_per_slide} tumour patches per tumour slide; {args.epochs} epochs, seed {args.seed}; "
             f"FROC from tiled inference at stride {args.stride}.", "",
             "| setup | trained on | test centre | patch accuracy | patch AUC | FROC | slide AUC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_centre in runs.items():
        trained_on = "+".join(SETUPS[name][0]) + (" (FL)" if name in FEDERATED else "")
        for centre, r in by_centre.items():
            lines.append(f"| {name} | {trained_on} | {centre} | {r['patch_accuracy']:.3f} | {r['patch_auc']:.3f} | "
                         f"{r['froc']:.3f} | {r['slide_auc']:.3f} |")
    factors = {name: by for name, by in factors.items() if by}
    if factors:
        lines += ["", "Which of centre B's differences moves the models trained on A: a balanced sample of A's test "
                  "patches (200 tumour, 200 normal) as they are and with one of B's factors applied; patch accuracy "
                  "/ specificity / AUC.", "",
                  "| setup | " + " | ".join(FACTORS) + " |", "| --- |" + " --- |" * len(FACTORS)]
        for name, by in factors.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{by[f]['accuracy']:.2f} / {by[f]['specificity']:.2f} / {by[f]['auc']:.2f}" for f in FACTORS) + " |")
    lines += ["", "FROC gap (A minus B) per setup: " + ", ".join(
        f"{name} {by['A']['froc'] - by['B']['froc']:+.3f}" for name, by in runs.items() if {"A", "B"} <= set(by)),
        "", "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    cost = record["stain_normalization_cost"]
    if cost:
        lines += ["", f"Macenko normalisation in tiled inference ({cost['slides']} slides, {cost['tiles']} tiles of "
                  f"{cost['tile_outputs']} outputs a side): {cost['stain_seconds_per_tile']:.3f} s per tile in the "
                  f"reader thread, next to {cost['read_seconds_per_tile']:.3f} s reading and "
                  f"{cost['network_seconds_per_tile']:.3f} s in the network."]
    (RESULTS / "centre_shift.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, models, maps)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="the generator's difficulty (default: 1)")
    parser.add_argument("--size", type=int, nargs=2, default=(8192, 6144), metavar=("W", "H"),
                        help="slide size in pixels (default: 8192 6144)")
    parser.add_argument("--train-tumour", type=int, default=4, help="training tumour slides per centre (default: 4)")
    parser.add_argument("--train-normal", type=int, default=2, help="training normal slides per centre (default: 2)")
    parser.add_argument("--test-tumour", type=int, default=3, help="test tumour slides per centre (default: 3)")
    parser.add_argument("--test-normal", type=int, default=3, help="test normal slides per centre (default: 3)")
    parser.add_argument("--patches-per-slide", type=int, default=200,
                        help="tumour patches per tumour slide (as many normal ones; default: 200)")
    parser.add_argument("--patch-size", type=int, default=224, help="patch size (default: the seed's 224)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per setup (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--stride", type=int, default=64, help="inference stride (default: 64, NCRF's)")
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=list(SETUPS),
                        help="setups to train and score (default: all)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Seconds of each stage as first measured (a resumed run finds finished stages in a second: keep the first).
    seconds_file = work / "seconds.json"
    seconds: dict[str, float] = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}

    def timed(stage: str, start: float) -> None:
        seconds.setdefault(stage, round(time.perf_counter() - start, 1))
        seconds_file.write_text(json.dumps(seconds, indent=1))

    from metastasis.config import TrainConfig

    defaults = TrainConfig().to_dict()
    if any(defaults[k] != v for k, v in SETUPS[DEFAULT_SETUP][1].items()):
        print(f"note: setup {DEFAULT_SETUP} is no longer the recipe's default", flush=True)
    start = time.perf_counter()
    make_data(work, args)
    timed("data", start)
    runs: dict[str, dict] = {}
    factors: dict[str, dict] = {}
    for setup in args.setups:
        start = time.perf_counter()
        checkpoint = train(work, setup, args)
        timed(f"train_{setup}", start)
        start = time.perf_counter()
        runs[setup] = {centre: score(work, setup, checkpoint, centre, args) for centre in CENTRES}
        if SETUPS[setup][0] == ("A",):
            factors[setup] = factor_diagnosis(work, setup, checkpoint)
        timed(f"score_{setup}", start)
        write_results(work, args, runs, factors, seconds)  # after every setup: a partial run leaves its numbers
    print((RESULTS / "centre_shift.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
