"""Benchmark: does a metastasis detector trained on one centre's slides hold up on another centre's?

Camelyon16 mixes two hospitals whose staining and scanners differ. This benchmark makes two centres' data with
the generator (``metastasis make-data --centre A|B --difficulty D``: stain hue and strength, glass colour, focus,
noise, JPEG quality; mimics and artefacts), trains the patch classifier with ``metastasis train`` in several
setups, and scores every model on held-out slides of both centres:

* ``baseline``: trained on one centre (A, or ``--train-centre B``) with the seed's augmentations only
  (``stain_variation=0``, ``hed_jitter=0``: the default recipe since this benchmark chose it);
* ``hed``: trained on that centre with Tellez's HED-light stain jitter as well (``hed_jitter=0.05``; the default
  recipe until 2026-12-04);
* ``macenko``: trained on that centre with Macenko stain normalisation (``stain_normalization=macenko``, no stain
  augmentation; inference normalises each test slide with its own stain vectors, as the checkpoint records);
* ``variation``: trained on that centre with another centre's look as augmentation (``stain_variation=0.5``) and
  the HED jitter;
* ``ab_baseline``: the baseline trained on centres A and B together (what pooling both centres gives);
* ``fl_ab``: the baseline trained federated, centre A and centre B as two sites of one FLARE job (``metastasis
  make-job --sites 2``, each site reading its own centre's patch list), one local epoch per round, as many rounds
  as the others' epochs; scored with the server's best global model.

Every setup is trained once per training seed (``--seeds``); the table gives each number's mean over the seeds
and its range. For the models trained on centre A alone, seed 0, a diagnosis of which of B's appearance factors
moves them (:func:`factor_diagnosis`). Per model and test centre: patch accuracy and AUC on every patch of the test
slides (``metastasis validate``), and the Camelyon16 FROC and slide-level AUC (``metastasis infer``, ``detect``,
``evaluate``). Every step runs the command line in its own process and skips what an earlier run already finished,
so an interrupted run resumes.

Run: .venv/bin/python benchmarks/centre_shift.py --work DIR [--difficulty 1.0] [--epochs 5] ...
The committed results: ``centre_shift`` (``--patch-size 128 --epochs 8``: ``--setups baseline hed --seeds 0 1 2 3``
and ``--setups variation --seeds 0 1`` in the same ``--work``, then ``--report-only`` with all of them; bfloat16
training on a CPU with native bfloat16), ``centre_shift_float32`` (the first run of the fixed jitter, ``--seeds 0 1
--setups baseline hed``, float32 training on an AVX2-only CPU) and the check on data made with settings the recipe
was not tuned on, ``centre_shift_untuned`` (``--name centre_shift_untuned --train-centre B --difficulty 0.6
--data-seed 100 --setups baseline hed --seeds 0 1 2 3``, otherwise the same; bfloat16), whose first run
(``--test-tumour 3 --test-normal 3 --seeds 0 1``, float32) is ``centre_shift_untuned_float32``.
Writes benchmarks/results/NAME.json and .md (``--name``, default ``centre_shift``).
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
ONE, BOTH = "one", "both"  # trained on the training centre alone, or on both centres
SETUPS = {  # name: (training centres, recipe settings)
    "baseline": (ONE, _PLAIN),
    "hed": (ONE, {**_PLAIN, "hed_jitter": 0.05}),
    "macenko": (ONE, {**_PLAIN, "stain_normalization": "macenko"}),
    "ab_baseline": (BOTH, _PLAIN),
    "fl_ab": (BOTH, _PLAIN),
    "variation": (ONE, {**_PLAIN, "stain_variation": 0.5, "hed_jitter": 0.05}),
}
#: The setup whose settings are the recipe's defaults (checked at start).
DEFAULT_SETUP = "baseline"
FEDERATED = {"fl_ab"}


def cli(*argv: str) -> None:
    """Run one ``metastasis`` command in its own process (its output goes to this one's)."""
    print(f"[{time.strftime('%H:%M:%S')}] metastasis {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, "-c", "import sys; from metastasis.cli import main; sys.exit(main(sys.argv[1:]))",
                    *argv], check=True)


def training_centres(setup: str, args: argparse.Namespace) -> tuple[str, ...]:
    """The centres a setup trains on: the training centre, or both (the training centre first)."""
    if SETUPS[setup][0] == ONE:
        return (args.train_centre,)
    return (args.train_centre, *[c for c in CENTRES if c != args.train_centre])


def make_data(work: Path, args: argparse.Namespace) -> None:
    """Per centre: a training set (when a setup trains on it) and a test set (other seed), in the training layout
    (slides, XML), with tissue masks and patch lists; the test list holds every patch of its slides under
    'validation'."""
    trained = {centre for setup in args.setups for centre in training_centres(setup, args)}
    for centre in CENTRES:
        for split, seed, tumour, normal in (("train", args.data_seed + 10, args.train_tumour, args.train_normal),
                                            ("test", args.data_seed + 20, args.test_tumour, args.test_normal)):
            if split == "train" and centre not in trained:
                continue
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


def run_name(setup: str, seed: int) -> str:
    return f"{setup}/seed{seed}"


def train(work: Path, setup: str, seed: int, args: argparse.Namespace) -> Path:
    centres, settings = training_centres(setup, args), SETUPS[setup][1]
    out = work / "models" / run_name(setup, seed)
    sets = [f"{k}={v}" for k, v in {"patch_size": args.patch_size, "num_workers": 0, "seed": seed,
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
    sites = work / f"sites_{''.join(centres)}"
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


def patch_probabilities(csv_path: Path) -> list[tuple[str, int, float]]:
    """``metastasis validate --csv``'s rows as (slide name, label, probability)."""
    import csv

    from metastasis.engine import PROBABILITY_COLUMNS

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or tuple(rows[0]) != PROBABILITY_COLUMNS:
        raise ValueError(f"{csv_path}: not a patch probability CSV of metastasis validate")
    return [(Path(r["image"]).stem, int(r["label"]), float(r["probability"])) for r in rows]


def score(work: Path, run: str, checkpoint: Path, centre: str, args: argparse.Namespace) -> dict:
    """Patch accuracy / AUC on every test patch of ``centre``, and the FROC and slide AUC on its test slides."""
    root = work / f"test_{centre}"
    out = work / "scores" / run / centre
    result_file = out / "scores.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "patches.csv"
    cli("validate", "--checkpoint", str(checkpoint), "--patches", str(root / "test_patches.json"), "--data-root",
        str(root), "--split", "validation", "--csv", str(csv), "--num-workers", "0")
    rows = patch_probabilities(csv)
    from metastasis.metrics import classification_scores  # the project's own definitions, as validate prints them

    patch = classification_scores([p for _, _, p in rows], [label for _, label, _ in rows], 0.5)
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


def factor_diagnosis(work: Path, run: str, checkpoint: Path, per_class: int = 200) -> dict:
    """Which of centre B's differences moves a model trained on centre A: a balanced sample of A's test patches,
    scored as they are and with one of B's appearance factors at a time applied (its stain vectors and strengths,
    its glass colour, the extra focus blur, sensor noise and JPEG quality that B has over A), then all of them.
    The stain and glass change is exact for the generator (:meth:`~demodata.centres.Appearance.restain`): the
    same stain amounts seen through B. Setups with stain normalisation are skipped (each slide's own estimate would
    have to be redone on the changed pixels)."""
    out = work / "scores" / run / "factors.json"
    if out.is_file():
        return json.loads(out.read_text())
    import io

    import numpy as np
    import torch
    from PIL import Image
    from scipy import ndimage

    from demodata.centres import CENTRES as LOOKS
    from metastasis.metrics import classification_scores
    from metastasis.model import load_checkpoint
    from metastasis.data.dataset import PatchDataset
    from demodata.camelyon import REFERENCE_STAINS
    from metastasis.data.transforms import to_input

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
        print(f"[{time.strftime('%H:%M:%S')}] {run}: A test patches with B's {factor}: {result[factor]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def stain_costs(work: Path) -> dict | None:
    """What Macenko normalisation cost in the ``macenko`` setup's tiled inference: seconds per tile (in the reader
    thread) against the network's seconds per tile, over all its test slides' maps."""
    maps = [json.loads(p.read_text()) for p in sorted((work / "scores" / "macenko").glob("*/*/maps/*.json"))]
    maps = [m for m in maps if "stain_seconds" in m and m.get("tiles")]
    if not maps:
        return None
    tiles = sum(m["tiles"] for m in maps)
    return {"slides": len(maps), "tiles": tiles, "tile_outputs": maps[0]["tile_outputs"],
            "stain_seconds_per_tile": round(sum(m["stain_seconds"] for m in maps) / tiles, 4),
            "network_seconds_per_tile": round(sum(m["network_seconds"] for m in maps) / tiles, 4),
            "read_seconds_per_tile": round(sum(m["read_seconds"] for m in maps) / tiles, 4)}


METRICS = ("patch_accuracy", "patch_auc", "froc", "slide_auc")
RESAMPLES = 2000


class CentreScores:
    """One model's scores on one centre's test slides, per slide (in name order), from what :func:`score` left in
    ``work``: each slide's patches (probabilities and labels, from ``validate``'s CSV) and its FROC share and slide
    score (``evaluate``'s ``froc.json``). The statistics take an index array into the slides, so that the bootstrap
    resamples slides: the patches of one slide are not independent of each other."""

    def __init__(self, folder: Path):
        import numpy as np

        from metastasis.evaluation.froc import SlideScores, read_slide_scores

        slides, _ = read_slide_scores(folder / "froc")
        order = sorted(range(len(slides.results)), key=lambda i: slides.results[i].name)
        self.slides = SlideScores([slides.results[i] for i in order], slides.slide_scores[order],
                                  slides.labels[order], slides.reference_conventions)
        self.names = [r.name for r in self.slides.results]
        per_slide: dict[str, tuple[list, list]] = {name: ([], []) for name in self.names}
        for slide, label, probability in patch_probabilities(folder / "patches.csv"):
            probabilities, labels = per_slide[slide]
            probabilities.append(probability)
            labels.append(label)
        self.patches = [(np.array(per_slide[n][0]), np.array(per_slide[n][1])) for n in self.names]

    def statistics(self, drawn) -> dict[str, float]:
        """The four numbers of the table on the slides ``drawn`` (repeats allowed)."""
        import numpy as np

        from metastasis.metrics import classification_scores

        p = np.concatenate([self.patches[i][0] for i in drawn])
        y = np.concatenate([self.patches[i][1] for i in drawn])
        patch = classification_scores(p, y, 0.5)
        return {"patch_accuracy": patch["accuracy"], "patch_auc": patch["auc"], "froc": self.slides.froc(drawn),
                "slide_auc": self.slides.auc(drawn)}


def seed_mean(models: list[CentreScores]):
    """The statistics averaged over the seeds' models, each scored on the same drawn slides."""
    if any(m.names != models[0].names for m in models):
        raise ValueError("the seeds' models were scored on different test slides")

    def statistics(drawn) -> dict[str, float]:
        each = [m.statistics(drawn) for m in models]
        return {k: sum(e[k] for e in each) / len(each) for k in METRICS}

    return statistics


def intervals(work: Path, runs: dict, centres: tuple[str, str]) -> dict:
    """95% percentile bootstrap intervals over the test slides (stratified: tumour and normal slides resampled
    apart), of each setup's numbers averaged over its seeds; and each setup's paired difference from the
    ``baseline`` (the same slides drawn for both, seeds matched), with its two-sided bootstrap p-value. The training
    seed is not resampled: the intervals say how much the few test slides leave open, the per-seed table how much
    the seed moves a model."""
    from medcore.bootstrap import bootstrap_columns, compare_columns

    models = {(name, centre): {seed: CentreScores(work / "scores" / run_name(name, int(seed)) / centre)
                               for seed in by_seed} for name, by_seed in runs.items() for centre in centres}
    out: dict = {"intervals": {}, "versus_baseline": {}, "paired_seeds": {}}
    for (name, centre), scored in models.items():
        strata = next(iter(scored.values())).slides.labels.astype(int)
        out["intervals"].setdefault(name, {})[centre] = bootstrap_columns(seed_mean(list(scored.values())), strata,
                                                                          resamples=RESAMPLES)
        base = models.get(("baseline", centre), {})
        shared = [seed for seed in scored if seed in base]  # paired on the seeds both setups ran
        if name != "baseline" and shared:
            out["versus_baseline"].setdefault(name, {})[centre] = compare_columns(
                seed_mean([scored[s] for s in shared]), seed_mean([base[s] for s in shared]), strata,
                resamples=RESAMPLES)
            out["paired_seeds"][name] = shared
    return out


def summarise(by_seed: dict[str, dict]) -> dict:
    """One setup's scores at one test centre over its seeds: each metric's mean, minimum and maximum."""
    out = {}
    for metric in METRICS:
        values = [r[metric] for r in by_seed.values()]
        out[metric] = {"mean": round(sum(values) / len(values), 4), "min": round(min(values), 4),
                       "max": round(max(values), 4)}
    return out


def write_results(work: Path, args: argparse.Namespace, runs: dict, factors: dict, seconds: dict) -> None:
    """``runs``: {setup: {seed: {test centre: scores}}}; the JSON keeps every seed's scores, their means and ranges,
    and the bootstrap intervals over test slides (:func:`intervals`); the tables show them."""
    import torch

    other = next(c for c in CENTRES if c != args.train_centre)
    summary = {name: {centre: summarise({seed: by_centre[centre] for seed, by_centre in by_seed.items()})
                      for centre in (args.train_centre, other)} for name, by_seed in runs.items()}
    uncertainty = intervals(work, runs, (args.train_centre, other))
    record = {
        "machine": f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.platform()}",
        "data": {"centres": list(CENTRES), "difficulty": args.difficulty, "slide_size": list(args.size),
                 "data_seed": args.data_seed,
                 "train_slides_per_centre": {"tumour": args.train_tumour, "normal": args.train_normal},
                 "test_slides_per_centre": {"tumour": args.test_tumour, "normal": args.test_normal},
                 "tumour_patches_per_slide": args.patches_per_slide, "patch_size": args.patch_size},
        "training": {"epochs": args.epochs, "seeds": args.seeds, "train_centre": args.train_centre,
                     "default_setup": DEFAULT_SETUP, "setups": {
                         name: {"centres": list(training_centres(name, args)), "settings": SETUPS[name][1],
                                "federated": name in FEDERATED} for name in runs}},
        "inference_stride": args.stride,
        "runs": runs,
        "summary": summary,
        "bootstrap": {"resamples": RESAMPLES, "method": "percentile", "level": 0.95,
                      "resampled": "test slides, tumour and normal apart (a slide's patches together)",
                      "seeds": "each number averaged over the seeds on the same drawn slides; seeds not resampled",
                      "intervals": {name: {c: {m: i.to_dict() for m, i in by.items()} for c, by in cs.items()}
                                    for name, cs in uncertainty["intervals"].items()},
                      "versus_baseline": {name: {c: {m: d.to_dict() for m, d in by.items()} for c, by in cs.items()}
                                          for name, cs in uncertainty["versus_baseline"].items()},
                      "paired_seeds": uncertainty["paired_seeds"]},
        "factor_diagnosis": factors,
        "stain_normalization_cost": stain_costs(work),
        "seconds": seconds,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"# Centre shift: trained on centre {args.train_centre} (or both), tested on held-out slides of both",
             "",
             f"{record['machine']}. Generated data at difficulty {args.difficulty} (data seed {args.data_seed}): "
             f"{args.train_tumour} tumour + {args.train_normal} normal training slides and {args.test_tumour} + "
             f"{args.test_normal} test slides per centre, {args.size[0]}x{args.size[1]} pixels; "
             f"{args.patch_size}-pixel "
             f"patches, {args.patches_per_slide} tumour patches per tumour slide; {args.epochs} epochs, training seeds "
             f"{seeds}; FROC (all slides, challenge rules) from tiled inference at stride {args.stride}. Each cell: "
             f"the mean over the seeds, and in brackets its 95% percentile bootstrap interval over the test slides "
             f"({RESAMPLES} resamples of the slides, tumour and normal apart, each slide with all its patches; every "
             "seed's model scored on the same drawn slides). The interval leaves out the training seed: the "
             "per-seed table below shows what the seed moves.", "",
             "| setup | trained on | test centre | seeds | patch accuracy | patch AUC | FROC | slide AUC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(i) -> str:
        return f"{i.estimate:.3f}" if i.low is None else f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]"

    for name, by_centre in uncertainty["intervals"].items():
        trained_on = "+".join(training_centres(name, args)) + (" (FL)" if name in FEDERATED else "")
        for centre, r in by_centre.items():
            lines.append(f"| {name} | {trained_on} | {centre} | {len(runs[name])} | "
                         + " | ".join(cell(r[m]) for m in METRICS) + " |")
    if uncertainty["versus_baseline"]:
        lines += ["", "Each setup minus the baseline, paired on the same test slides and seeds: the difference of the "
                  "seed means, its 95% bootstrap interval over the test slides and the two-sided bootstrap p-value "
                  "(`*`: the interval excludes 0).", "",
                  "| setup | seeds | test centre | patch accuracy | patch AUC | FROC | slide AUC |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, by_centre in uncertainty["versus_baseline"].items():
            for centre, r in by_centre.items():
                lines.append(f"| {name} | {', '.join(uncertainty['paired_seeds'][name])} | {centre} | " + " | ".join(
                    f"{r[m].difference.estimate:+.3f} [{r[m].difference.low:+.3f}, {r[m].difference.high:+.3f}], "
                    f"p {r[m].p_text}" + (" *" if r[m].difference.low > 0 or r[m].difference.high < 0 else "")
                    if r[m].difference.low is not None else f"{r[m].difference.estimate:+.3f}" for m in METRICS)
                    + " |")
    lines += ["", "Per seed (patch accuracy / patch AUC / FROC / slide AUC):", "",
              "| setup | seed | " + " | ".join(f"test centre {c}" for c in (args.train_centre, other)) + " |",
              "| --- | --- | --- | --- |"]
    for name, by_seed in runs.items():
        for seed, by_centre in by_seed.items():
            lines.append(f"| {name} | {seed} | " + " | ".join(
                " / ".join(f"{by_centre[c][m]:.3f}" for m in METRICS) for c in (args.train_centre, other)) + " |")
    factors = {name: by for name, by in factors.items() if by}
    if factors:
        lines += ["", "Which of centre B's differences moves the models trained on A (seed 0): a balanced sample of "
                  "A's test patches (200 tumour, 200 normal) as they are and with one of B's factors applied; patch "
                  "accuracy / specificity / AUC.", "",
                  "| setup | " + " | ".join(FACTORS) + " |", "| --- |" + " --- |" * len(FACTORS)]
        for name, by in factors.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{by[f]['accuracy']:.2f} / {by[f]['specificity']:.2f} / {by[f]['auc']:.2f}" for f in FACTORS) + " |")
    lines += ["", f"FROC gap ({args.train_centre} minus {other}, mean over seeds) per setup: " + ", ".join(
        f"{name} {by[args.train_centre]['froc']['mean'] - by[other]['froc']['mean']:+.3f}"
        for name, by in summary.items()),
        "", "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())]
    cost = record["stain_normalization_cost"]
    if cost:
        lines += ["", f"Macenko normalisation in tiled inference ({cost['slides']} slides, {cost['tiles']} tiles of "
                  f"{cost['tile_outputs']} outputs a side): {cost['stain_seconds_per_tile']:.3f} s per tile in the "
                  f"reader thread, next to {cost['read_seconds_per_tile']:.3f} s reading and "
                  f"{cost['network_seconds_per_tile']:.3f} s in the network."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, models, maps)")
    parser.add_argument("--name", default="centre_shift",
                        help="results file name in benchmarks/results (default: centre_shift)")
    parser.add_argument("--difficulty", type=float, default=1.0, help="the generator's difficulty (default: 1)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="offset of the generator's seeds (training slides: 10 + it, test slides: 20 + it, "
                             "centre B one more; default: 0)")
    parser.add_argument("--train-centre", choices=CENTRES, default="A",
                        help="the centre the one-centre setups train on (default: A)")
    parser.add_argument("--size", type=int, nargs=2, default=(8192, 6144), metavar=("W", "H"),
                        help="slide size in pixels (default: 8192 6144)")
    parser.add_argument("--train-tumour", type=int, default=4, help="training tumour slides per centre (default: 4)")
    parser.add_argument("--train-normal", type=int, default=2, help="training normal slides per centre (default: 2)")
    parser.add_argument("--test-tumour", type=int, default=5, help="test tumour slides per centre (default: 5)")
    parser.add_argument("--test-normal", type=int, default=5, help="test normal slides per centre (default: 5)")
    parser.add_argument("--patches-per-slide", type=int, default=200,
                        help="tumour patches per tumour slide (as many normal ones; default: 200)")
    parser.add_argument("--patch-size", type=int, default=224, help="patch size (default: the seed's 224)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per setup (default: 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    parser.add_argument("--stride", type=int, default=64, help="inference stride (default: 64, NCRF's)")
    parser.add_argument("--setups", nargs="+", choices=sorted(SETUPS), default=list(SETUPS),
                        help="setups to train and score (default: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="train and score nothing: write the results of the setups and seeds already scored "
                             "in --work (runs made by calls with other --setups or --seeds together)")
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
    runs: dict[str, dict] = {}
    factors: dict[str, dict] = {}
    if args.report_only:
        for setup in args.setups:
            for seed in args.seeds:
                files = [work / "scores" / run_name(setup, seed) / centre / "scores.json" for centre in CENTRES]
                if all(f.is_file() for f in files):
                    runs.setdefault(setup, {})[str(seed)] = {c: json.loads(f.read_text())
                                                             for c, f in zip(CENTRES, files)}
            diagnosis = work / "scores" / run_name(setup, args.seeds[0]) / "factors.json"
            if diagnosis.is_file():
                factors[setup] = json.loads(diagnosis.read_text())
        write_results(work, args, runs, factors, seconds)
        print((RESULTS / f"{args.name}.md").read_text())
        return 0
    start = time.perf_counter()
    make_data(work, args)
    timed("data", start)
    for seed in args.seeds:  # every setup at the first seed before any at the next: a partial run compares setups
        for setup in args.setups:
            run = run_name(setup, seed)
            start = time.perf_counter()
            checkpoint = train(work, setup, seed, args)
            timed(f"train_{run}", start)
            start = time.perf_counter()
            runs.setdefault(setup, {})[str(seed)] = {centre: score(work, run, checkpoint, centre, args)
                                                     for centre in CENTRES}
            if seed == args.seeds[0] and training_centres(setup, args) == ("A",):
                factors[setup] = factor_diagnosis(work, run, checkpoint)
            timed(f"score_{run}", start)
            write_results(work, args, runs, factors, seconds)  # after every run: a partial run leaves its numbers
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
