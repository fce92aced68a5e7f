"""Benchmark: FLARE's overhead per round in the simulator (round time minus the clients' local work), with
nvflare's default timing settings and with the job's.

The demo configuration of the Makefile (2 sites, 28 HGG + 28 LGG cases of 96x96x64 voxels, about 20 training
cases per site, -t 2, one PyTorch thread per client) runs for a few rounds per setting; the learner logs how long each task's local work took, the server logs when each
round starts. Overhead share = 1 - sum over rounds of the slowest site's local work / sum of round times
(round 0 and the last round left out: start-up and cross-site validation).

Run: .venv/bin/python benchmarks/flare_overhead.py   (about 10 minutes on 2 cores) [--name NAME]
Writes benchmarks/results/NAME.json and .md (default: flare_overhead). The job is built as users build it
(brats_fl.job.BratsRecipe, exported), each setting as the recipe's ``polling``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NVFLARE = str(Path(sys.executable).parent / "nvflare")
STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"

# (server task_request_interval, ScatterAndGather / CrossSiteModelEval task_check_period); None: the job's own
# (medflare.recipe.Polling's defaults, what jobs/brats_fl holds)
SETTINGS = {
    "nvflare defaults": (2.0, 0.5),
    "job (jobs/brats_fl)": None,
    "tighter": (0.02, 0.01),
}


def _time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(log: str, sites: int = 2) -> dict:
    starts = {int(r): _time(t) for t, r in re.findall(STAMP + r" - INFO - Round (\d+) started", log)}
    local: dict[str, list[float]] = {}
    for site, task, seconds in re.findall(r"(site-\d+) timing: (\w+) ([\d.]+) s", log):
        local.setdefault(site, []).append((task, float(seconds)))
    # Per site: one before_train_validate + one train per round, in order.
    per_round: dict[str, list[float]] = {}
    for site, tasks in local.items():
        work, pending = [], 0.0
        for task, seconds in tasks:
            if task == "before_train_validate":
                pending = seconds
            elif task == "train":
                work.append(pending + seconds)
                pending = 0.0
        per_round[site] = work
    rounds = sorted(starts)[1:-1]  # round r spans starts[r] .. starts[r + 1]
    rounds = [r for r in rounds if r + 1 in starts and all(len(w) > r for w in per_round.values())]
    round_s = [starts[r + 1] - starts[r] for r in rounds]
    work_s = [max(w[r] for w in per_round.values()) for r in rounds]
    total_round, total_work = sum(round_s), sum(work_s)
    return {"rounds_measured": len(rounds), "mean_round_s": round(total_round / len(rounds), 3),
            "mean_local_work_s": round(total_work / len(rounds), 3),
            "mean_overhead_s": round((total_round - total_work) / len(rounds), 3),
            "overhead_share": round(1 - total_work / total_round, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per setting (default: 5)")
    parser.add_argument("--from-log", metavar="LOG", help="measure an existing simulator log (e.g. the output of "
                        "`make demo`) instead of running the settings; writes results/flare_overhead_from_log.json")
    parser.add_argument("--cases", type=int, default=28, help="HGG and LGG cases each (default: 28, as make demo)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="volume and crop size "
                        "(default: 96 96 64, as make demo)")
    parser.add_argument("--name", default="flare_overhead", help="results file name (default: flare_overhead)")
    args = parser.parse_args()
    if args.from_log:
        result = measure(Path(args.from_log).read_text())
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "flare_overhead_from_log.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    from brats_fl.datalist import write_datalists
    from brats_fl.job import BratsRecipe
    from demodata.brats import generate_dataset
    from medflare.recipe import Polling, export_job

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "brats", args.cases, args.cases, shape=tuple(args.shape), seed=0)
        lists = write_datalists(tmp / "brats")
        for name, setting in SETTINGS.items():
            polling = Polling(*setting) if setting else Polling()
            job = export_job(BratsRecipe(rounds=args.rounds, data_root=str(tmp / "brats"),
                                         datalist_dir=str(lists["site-1"].parent), polling=polling,
                                         train={"crop": list(args.shape), "num_workers": 0, "num_threads": 1}),
                             tmp / "job")
            interval, period = polling.task_request_interval, polling.task_check_period
            run = subprocess.run([NVFLARE, "simulator", str(job), "-w", str(tmp / f"ws-{len(results)}"), "-n", "2",
                                  "-t", "2"], capture_output=True, text=True, timeout=1200)
            if run.returncode:
                raise SystemExit(f"simulator failed for {name}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            results[name] = {"task_request_interval": interval, "task_check_period": period,
                             **measure(run.stdout + run.stderr)}
            print(name, results[name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [f"# FLARE overhead per round (simulator, -n 2 -t 2, {args.cases}+{args.cases} cases of "
          f"{'x'.join(map(str, args.shape))}, {args.rounds} rounds per setting)", "",
          "| setting | task_request_interval s | task_check_period s | round s | local work s | overhead s | share |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        md.append(f"| {name} | {r['task_request_interval']} | {r['task_check_period']} | {r['mean_round_s']} | "
                  f"{r['mean_local_work_s']} | {r['mean_overhead_s']} | {100 * r['overhead_share']:.1f}% |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
