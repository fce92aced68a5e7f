"""Benchmark: the BraTS seed recipe at the real data set's scale, on this machine.

A BraTS root with the 2018 training release's counts (210 HGG + 75 LGG cases of 240x240x155 voxels) is split as
the seed's datalists. Each site then runs in its own process, as a real site does, and builds its datasets the
way the job's learner does: the training and validation splits cached in compact form.

What it measures:

* **Cache.** Seconds and RSS per cached case, and the bytes the cache holds.
* **Training step** at the seed crop (224x224x144), with bf16 autocast and in fp32, and the share of the step
  spent waiting for data.
* **Validation per case.** One window of the crop centred on the brain (``val_window`` ``brain``, the default)
  against sliding windows of the crop over the whole volume at overlap 0.5 (the seed's).
* **Peak RSS of the site process** over caching, training and validation, and the size of the model message.

From these it projects the time of one round and of the seed's 600 rounds on this machine. With ``--model`` it
also scores a trained checkpoint both ways on the cases named by ``--agreement-cases`` and reports the
per-region Dice agreement.

Run:
    .venv/bin/python benchmarks/brats_real_scale.py --data /path/to/brats [--model ckpt.pt]
(about 25 minutes on 2 cores, after the data set is generated: about 25 minutes more, 2.3 GB of disk.)
Writes benchmarks/results/brats_real_scale.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RELEASE = {"HGG": 210, "LGG": 75}
SEED_ROUNDS = 600


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2 ** 20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def site_run(root: str, datalist: str, steps: int, val_cases: int, sliding_cases: int) -> dict:
    """One site's process: cache its training and validation splits as the learner does, then time training
    steps at the seed crop (bf16, the recipe on CPU) and validation per case (brain window and sliding windows),
    and last fp32 training steps (after the recipe's peak memory is read)."""
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.datalist import read_datalist
    from brats_fl.engine import Trainer, eval_dataset, evaluate, train_dataset
    from brats_fl.model import BratsSegResNet
    from brats_fl.transforms import compact_nbytes

    splits = read_datalist(datalist, root, check=False)
    config = TrainConfig(num_workers=2)
    out: dict = {"cases": {k: len(v) for k, v in splits.items()}}
    base = _rss_mb()
    start = time.perf_counter()
    training = train_dataset(splits["training"], config)
    validation = eval_dataset(splits["validation"], config.cache_rate)
    seconds = time.perf_counter() - start
    cached = len(splits["training"]) + len(splits["validation"])
    held = sum(compact_nbytes(c) for c in training._cache) + sum(compact_nbytes(c) for c in validation.data._cache)
    rss = _rss_mb()
    out["cache"] = {"cases": cached, "seconds": round(seconds, 1), "seconds_per_case": round(seconds / cached, 2),
                    "held_mb": round(held / 2 ** 20), "held_mb_per_case": round(held / 2 ** 20 / cached, 1),
                    "rss_growth_mb": round(rss - base), "rss_mb_per_case": round((rss - base) / cached, 1),
                    "rss_after_mb": round(rss)}
    torch.manual_seed(0)
    model = BratsSegResNet(crop=config.crop)
    out["model_message_mb"] = round(sum(v.numel() * 4 for v in model.state_dict().values()) / 2 ** 20, 2)
    out["train_step"] = {}

    def train_steps(name: str, amp: bool) -> None:
        trainer = Trainer(model, TrainConfig.from_dict({**config.to_dict(), "amp": amp}), torch.device("cpu"))
        trainer.train_epoch(torch.utils.data.Subset(training, [0]))  # warm-up
        stats = trainer.train_epoch(torch.utils.data.Subset(training, list(range(1, steps + 1))))
        out["train_step"][name] = {"steps": stats.steps, "seconds_per_step": round(stats.seconds / stats.steps, 2),
                                   "data_share": round(stats.data_seconds / stats.seconds, 4)}

    if steps:
        train_steps("bf16", True)  # the recipe's precision on CPU
    out["validation"] = {}
    for window, n in (("brain", val_cases), ("sliding", sliding_cases)):
        if not n:
            continue
        subset = torch.utils.data.Subset(validation, list(range(min(n, len(validation)))))
        start = time.perf_counter()
        evaluate(model, subset, TrainConfig(val_window=window), torch.device("cpu"))
        out["validation"][window] = {"cases": len(subset),
                                     "seconds_per_case": round((time.perf_counter() - start) / len(subset), 1)}
    out["peak_rss_mb"] = round(_peak_mb())  # caching, bf16 training and validation: what the job does on CPU
    if steps:
        train_steps("fp32", False)
        out["peak_rss_mb_with_fp32_training"] = round(_peak_mb())
    out["threads"] = torch.get_num_threads()
    return out


def agreement(root: str, datalist: str, model_path: str, cases: int) -> dict:
    """Per-case Dice of a trained checkpoint with the brain window and with the seed's sliding windows."""
    import torch

    from brats_fl.config import TrainConfig
    from brats_fl.datalist import read_datalist
    from brats_fl.engine import eval_dataset, evaluate
    from brats_fl.metrics import REGIONS
    from brats_fl.model import load_checkpoint

    entries = read_datalist(datalist, root, check=False)["validation"][:cases]
    model, _ = load_checkpoint(model_path)
    data = eval_dataset(entries)
    scores, seconds = {}, {}
    for window in ("brain", "sliding"):
        start = time.perf_counter()
        scores[window] = evaluate(model, data, TrainConfig(val_window=window), torch.device("cpu"))
        seconds[window] = round((time.perf_counter() - start) / len(entries), 1)
    diffs = {r: [abs(a[r] - b[r]) for a, b in zip(scores["brain"], scores["sliding"])] for r in REGIONS}
    return {"model": Path(model_path).name, "cases": len(entries), "seconds_per_case": seconds,
            "per_case": [{"name": a["name"], **{f"{r}_brain": round(a[r], 4) for r in REGIONS},
                          **{f"{r}_sliding": round(b[r], 4) for r in REGIONS}}
                         for a, b in zip(scores["brain"], scores["sliding"])],
            "max_abs_dice_difference": {r: round(max(v), 4) for r, v in diffs.items()}}


def simulate(data: Path, cases: int, work: Path, rounds: int = 2) -> dict:
    """The committed job (the seed's recipe, crop 224x224x144) for ``rounds`` rounds in the simulator on the first
    ``cases`` HGG and LGG cases of ``data``, both clients at once (``-t 2``, ``num_threads`` 1 each on this
    machine's cores): wall time per round and peak RSS of every process, sampled every half second."""
    import datetime as dt
    import re
    import shutil

    import psutil

    from brats_fl.datalist import write_datalists
    from brats_fl.job import make_job

    if work.exists():
        shutil.rmtree(work)
    root = work / "brats"
    for grade in RELEASE:
        (root / grade).mkdir(parents=True)
        for case in sorted(p for p in (data / grade).iterdir() if p.is_dir())[:cases]:
            (root / grade / case.name).symlink_to(case.resolve())
    lists = write_datalists(root, check=False)
    job = make_job(work / "job", rounds=rounds, data_root=str(root), datalist_dir=str(lists["site-1"].parent),
                   train={"num_threads": 1})
    log_path = work / "simulator.log"
    start = time.time()
    with open(log_path, "w") as log:
        run = subprocess.Popen([str(Path(sys.executable).parent / "nvflare"), "simulator", str(job), "-w",
                                str(work / "ws"), "-n", "2", "-t", "2"], stdout=log, stderr=subprocess.STDOUT)
        parent = psutil.Process(run.pid)
        peaks: dict[int, tuple[float, str]] = {}
        while run.poll() is None:
            try:
                procs = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2 ** 20
                    role = next((w for w in ("site-1", "site-2") if w in " ".join(proc.cmdline())), "simulator/server")
                except psutil.Error:
                    continue
                if rss > peaks.get(proc.pid, (0.0, ""))[0]:
                    peaks[proc.pid] = (rss, role)
            time.sleep(0.5)
    wall = time.time() - start
    text = log_path.read_text()
    if run.returncode or "cross_val_results" not in "".join(str(p) for p in (work / "ws").rglob("*.json")):
        raise SystemExit(f"simulator run failed (rc {run.returncode}); log: {log_path}")
    stamp = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"

    def when(t: str) -> float:
        return dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    starts = [when(t) for t, _ in re.findall(stamp + r" - INFO - Round (\d+) started", text)]
    finished = [when(t) for t in re.findall(stamp + r" - INFO - Finished ScatterAndGather Training", text)]
    bounds = starts + finished[:1]
    local: dict[str, dict[str, list[float]]] = {}
    for site, task, seconds in re.findall(r"(site-\d+) timing: (\w+) ([\d.]+) s", text):
        local.setdefault(site, {}).setdefault(task, []).append(round(float(seconds), 1))
    by_role: dict[str, float] = {}
    for rss, role in peaks.values():
        by_role[role] = max(by_role.get(role, 0.0), rss)
    return {"cases_per_grade": cases, "rounds": rounds,
            "splits": {site: {k: len(v) for k, v in json.loads(path.read_text()).items()}
                       for site, path in lists.items()},
            "wall_s": round(wall), "round_s": [round(b - a) for a, b in zip(bounds, bounds[1:])],
            "local_task_s": local, "peak_rss_mb_by_role": {k: round(v) for k, v in sorted(by_role.items())},
            "processes": len(peaks)}


def _shape(root: Path) -> list[int]:
    """Voxel shape of the first case's T1 (all cases are checked to share their own shapes, not one)."""
    import nibabel as nib

    return [int(n) for n in nib.load(str(next(root.glob("HGG/*/*_t1.nii.gz")))).shape]


def _in_process(data: Path, *argv: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--data", str(data), *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def project(site: dict) -> dict:
    """Time of one federated round on this site (one local epoch, the seed's validation of the global and of the
    local model on the validation split) and of the seed's 600 rounds."""
    step = site["train_step"]["bf16"]["seconds_per_step"]
    val = site["validation"]["brain"]["seconds_per_case"]
    train_s = site["cases"]["training"] * step
    val_s = 2 * site["cases"]["validation"] * val
    sliding = site["validation"].get("sliding", {}).get("seconds_per_case")
    out = {"train_s": round(train_s), "validation_s": round(val_s), "round_h": round((train_s + val_s) / 3600, 2),
           "seed_600_rounds_days": round(SEED_ROUNDS * (train_s + val_s) / 86400, 1)}
    if sliding:
        out["validation_s_with_sliding_windows"] = round(2 * site["cases"]["validation"] * sliding)
    return out


def markdown(result: dict) -> str:
    lines = ["# BraTS at the release's scale on this machine", "",
             f"torch {result['machine']['torch']}, {result['machine']['threads']} threads, "
             f"{result['machine']['platform']}; data: {result['data']['HGG']} HGG + {result['data']['LGG']} LGG "
             f"cases of {'x'.join(map(str, result['data']['shape']))} voxels, the seed's split.", "",
             "| site | cached cases | cache held MB/case | RSS MB/case | s/case to cache | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, site in result["sites"].items():
        c = site["cache"]
        lines.append(f"| {name} | {c['cases']} | {c['held_mb_per_case']} | {c['rss_mb_per_case']} | "
                     f"{c['seconds_per_case']} | {site['peak_rss_mb'] / 1024:.1f} |")
    lines += ["", "Peak RSS: the site's process caching its splits, training at the seed crop (bf16) and validating."]
    if "peak_rss_mb_with_fp32_training" in result["sites"]["site-1"]:
        lines[-1] += (f" With fp32 training steps as well (no autocast): "
                      f"{result['sites']['site-1']['peak_rss_mb_with_fp32_training'] / 1024:.1f} GB on site-1.")
    s1 = result["sites"]["site-1"]
    lines += ["", "Site-1, seed crop 224x224x144, batch 1:", "", "| | s/step | waiting for data |",
              "| --- | --- | --- |"]
    lines += [f"| {k} | {v['seconds_per_step']} | {100 * v['data_share']:.1f}% |"
              for k, v in s1["train_step"].items()]
    names = {"brain": "one 224x224x144 window on the brain", "sliding": "sliding windows 224x224x144, overlap 0.5"}
    lines += ["", "| validation of one case | s/case |", "| --- | --- |"]
    lines += [f"| {names[k]} | {v['seconds_per_case']} |" for k, v in s1["validation"].items()]
    p = result["projection_site1"]
    lines += ["", f"Model message: {s1['model_message_mb']} MB (float32 weights).", "",
              f"Projected round on site-1 (144 training steps, 2 x 30 validations): train {p['train_s']} s + "
              f"validation {p['validation_s']} s = **{p['round_h']} h**; the seed's 600 rounds: "
              f"**{p['seed_600_rounds_days']} days** on this CPU."]
    if "validation_s_with_sliding_windows" in p:
        lines.append(f"With the seed's sliding windows the validation alone would take "
                     f"{p['validation_s_with_sliding_windows']} s per round.")
    if "agreement" in result:
        a = result["agreement"]
        lines += ["", f"Dice agreement on {a['cases']} full-size validation cases of a model that segments "
                  f"({a['model']}, trained by benchmarks/brats_agreement_model.py): max |brain - sliding| "
                  + ", ".join(f"{k} {v}" for k, v in a["max_abs_dice_difference"].items())
                  + f"; seconds per case {a['seconds_per_case']}."]
    if "simulator" in result:
        r = result["simulator"]
        lines += ["", f"The committed job, {r['rounds']} rounds in the simulator on {r['cases_per_grade']} HGG + "
                  f"{r['cases_per_grade']} LGG full-size cases (splits {r['splits']}), both clients at once with "
                  f"1 thread each: {r['wall_s']} s in all, rounds of {r['round_s']} s (the last span includes "
                  "nothing after training). Peak RSS per process (MB): "
                  + ", ".join(f"{k} {v}" for k, v in r["peak_rss_mb_by_role"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path,
                        help="BraTS root (generated with the release's counts here when it does not exist)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per precision (default: 2)")
    parser.add_argument("--val-cases", type=int, default=2, help="cases timed with the brain window")
    parser.add_argument("--sliding-cases", type=int, default=1, help="cases timed with sliding windows")
    parser.add_argument("--model", help="trained checkpoint for the Dice agreement of the two validation passes")
    parser.add_argument("--agreement-cases", type=int, default=3, help="validation cases for the agreement")
    parser.add_argument("--simulate", type=int, metavar="N", default=0,
                        help="also run the committed job for 2 rounds in the simulator on N HGG + N LGG cases "
                             "(default: 0, skip)")
    parser.add_argument("--only-simulate", action="store_true", help="run only --simulate, merging its result into "
                        "an existing results file")
    parser.add_argument("--work", type=Path, default=Path("brats_real_scale_work"),
                        help="scratch folder for --simulate (replaced; default: ./brats_real_scale_work)")
    parser.add_argument("--site", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--agreement", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.site:  # one site per process, so peak memory is that site's own
        print(json.dumps(site_run(*args.site, args.steps, args.val_cases, args.sliding_cases)))
        return
    if args.agreement:
        print(json.dumps(agreement(*args.agreement, args.model, args.agreement_cases)))
        return
    import torch

    from brats_fl.datalist import CLARA_SITES, write_datalists
    from demodata.brats import generate_dataset

    if not args.data.exists():
        generate_dataset(args.data, RELEASE["HGG"], RELEASE["LGG"], seed=2018)
    if args.only_simulate:
        result = json.loads((RESULTS / "brats_real_scale.json").read_text())
        result["simulator"] = simulate(args.data, args.simulate, args.work)
        _write(result)
        return
    lists = write_datalists(args.data, args.data / "datalists", check=False)
    result = {"machine": {"threads": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__},
              "data": {**{g: sum(1 for p in (args.data / g).iterdir() if p.is_dir()) for g in RELEASE},
                       "shape": _shape(args.data)}, "sites": {}}
    for site in CLARA_SITES:
        steps, val, sliding = (args.steps, args.val_cases, args.sliding_cases) if site.name == "site-1" else (0, 0, 0)
        result["sites"][site.name] = _in_process(args.data, "--site", str(args.data), str(lists[site.name]), "--steps",
                                                 str(steps), "--val-cases", str(val), "--sliding-cases", str(sliding))
        print(site.name, json.dumps(result["sites"][site.name]), flush=True)
    result["projection_site1"] = project(result["sites"]["site-1"])
    if args.model:
        result["agreement"] = _in_process(args.data, "--agreement", str(args.data), str(lists["site-1"]), "--model",
                                          args.model, "--agreement-cases", str(args.agreement_cases))
    if args.simulate:
        result["simulator"] = simulate(args.data, args.simulate, args.work)
    _write(result)


def _write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "brats_real_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "brats_real_scale.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
