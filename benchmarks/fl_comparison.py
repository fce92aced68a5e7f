"""Benchmark: central training against FedAvg, FedProx, FedOpt and FedAvg with the SVT privacy filter, on the same
data and budget, the way NVFlare's BraTS 2018 example compares central, FedAvg and FedAvg + SVT.

Data: the demo's (``make demo``: 28 HGG + 28 LGG synthetic cases of 96x96x64, site-1 HGG, site-2 LGG, the seed's
split proportions). Recipe: the demo's (whole-volume crop, lr 5e-4, one PyTorch thread per site). Each federated
run is ``brats-fl make-job`` with its options and ``nvflare simulator -n 2 -t 2`` for ROUNDS rounds of one local
epoch; central training is ``brats-fl train`` on the pooled training splits for ROUNDS epochs with 2 threads (one
epoch stands for one round, the same number of passes over every case and the same cores).

Every run is scored the same way: its best model (the global best by in-time selection, or central training's best
validation epoch, sent to the sites by federated evaluation; the committed results scored it with ``report
--extra``, the same scorer run in one process, which gives the same numbers: tests/test_federated_evaluation.py)
on each site's testing split, the sites averaged weighted by their test cases (the cross-site
report's AVE). Per run the results keep per-site and AVE TC/WT/ET/mean Dice and HD95, ``ave_mean_dice``, the wall
time and the curves PNG.

Which differences are real: the sites score every model on the same test cases and keep each case's scores, so
each run's best model is compared with FedAvg's of the same seed case by case
(:func:`medflare.crosssite.compare_models`: the paired difference of the AVE mean Dice, its 95% percentile bootstrap
interval over the test cases, resampled within each site with the AVE's weights, and a two-sided p-value; 2,000
resamples, seed 0). The interval is over test cases for the trained models at hand; how much a training seed moves
a run is the spread between seeds, a separate thing.

Run: .venv/bin/python benchmarks/fl_comparison.py --work DIR [--rounds 30] [--seeds 0 1] [--runs ...]
[--name fl_comparison] (about 30 minutes per federated run at 30 rounds on 2 cores, central training a little
longer). Runs already done in DIR are kept and skipped, so several sessions can fill one table. A seed fixes a run
(:mod:`medcore.seeding`): the same seed and code give the same numbers. Writes benchmarks/results/NAME.json and .md,
and the curves under benchmarks/results/fl_comparison/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
DEMO = {"hgg": 28, "lgg": 28, "shape": [96, 96, 64]}
SETTINGS = ["--set", "num_workers=0", "--set", "num_threads=1", "--set", "lr=5e-4"]
#: Run name -> make-job options (central: none, it is not a federation).
RUNS: dict[str, list[str]] = {
    "central": [],
    "fedavg": [],
    "fedprox": ["--fedprox-mu", "0.01"],
    "fedopt": ["--server-opt", "avgm"],
    "fedavg_svt": ["--privacy", "svt"],
}
SERVER_BEST = "SRV_best_FL_global_model.pt"


def _run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; returns its wall time (raises with the log's tail on failure)."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); last lines of {log}:\n"
                           + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    return seconds


def _data(work: Path) -> Path:
    root = work / "brats"
    if not (root / "datalists").is_dir():
        _run([str(BIN / "brats-fl"), "make-data", "--out", str(root), "--hgg", str(DEMO["hgg"]), "--lgg",
              str(DEMO["lgg"]), "--shape", *map(str, DEMO["shape"])], work / "make_data.log")
        _run([str(BIN / "brats-fl"), "datalist", str(root)], work / "datalist.log")
    return root


def _results_file(folder: Path) -> str:
    """The cross-site results file below a run's workspace (its per-case scores make the paired comparison)."""
    from medflare.crosssite import find_results

    return str(find_results(folder))


def _scores(report_json: Path, model: str) -> dict:
    report = json.loads(report_json.read_text())["models"][model]
    return {"sites": report["sites"], "ave": report["AVE"], "ave_mean_dice": report["AVE"]["mean"]}


def federated(name: str, options: list[str], root: Path, run_dir: Path, rounds: int, seed: int) -> dict:
    job, ws = run_dir / "job", run_dir / "simulation"
    _run([str(BIN / "brats-fl"), "make-job", "--out", str(job), "--rounds", str(rounds), "--crop",
          *map(str, DEMO["shape"]), "--data-root", str(root), "--datalist-dir", str(root / "datalists"),
          *SETTINGS, "--set", f"seed={seed}", *options], run_dir / "make_job.log")
    shutil.rmtree(ws, ignore_errors=True)
    seconds = _run([str(BIN / "nvflare"), "simulator", str(job), "-w", str(ws), "-n", "2", "-t", "2"],
                   run_dir / "simulator.log")
    _run([str(BIN / "brats-fl"), "report", str(ws), "--out", str(run_dir / "report")], run_dir / "report.log")
    return {**_scores(run_dir / "report/report.json", SERVER_BEST), "seconds": round(seconds, 1),
            "model": SERVER_BEST, "options": options, "curves": run_dir / "report/training_curves.png",
            "results": _results_file(ws)}


def central(root: Path, run_dir: Path, rounds: int, seed: int, fedavg_dir: Path) -> dict:
    """Pooled training, then its best model scored at the sites by federated evaluation (``brats-fl fed-eval``, the
    training recipe's window settings) and added as a row of the FedAvg run's report (the same sites, splits and
    weights)."""
    lists = sorted((root / "datalists").glob("seg_brats18_datalist_client_*.json"))
    settings = ["--set", f"crop={json.dumps(DEMO['shape'])}", "--set", "num_workers=0", "--set", "lr=5e-4"]
    seconds = _run([str(BIN / "brats-fl"), "train", "--datalist", *map(str, lists), "--data-root", str(root),
                    "--out", str(run_dir / "train"), "--epochs", str(rounds), *settings, "--set", "num_threads=2",
                    "--set", f"seed={seed}"], run_dir / "train.log")
    _run([str(BIN / "brats-fl"), "fed-eval", f"central={run_dir / 'train/best_model.pt'}", "--workspace",
          str(run_dir / "evaluation"), "--data-root", str(root), *settings, "--set", "num_threads=1"],
         run_dir / "evaluation.log")
    _run([str(BIN / "brats-fl"), "report", str(fedavg_dir / "simulation"), "--add", str(run_dir / "evaluation"),
          "--out", str(run_dir / "report"), "--no-plot"], run_dir / "report.log")
    return {**_scores(run_dir / "report/report.json", "SRV_central"), "seconds": round(seconds, 1),
            "model": "train/best_model.pt", "options": [], "curves": central_curves(run_dir),
            "results": _results_file(run_dir / "evaluation"), "scored_as": "SRV_central"}


def central_curves(run_dir: Path) -> Path | None:
    """The central run's TensorBoard scalars plotted like a federation's (one "site" named central)."""
    from brats_fl.report import BRATS_REPORT
    from medflare.crosssite import plot_curves

    events = run_dir / "curves/tb_events"
    events.mkdir(parents=True, exist_ok=True)
    if not (events / "central").exists():
        (events / "central").symlink_to((run_dir / "train/tensorboard").resolve())
    return plot_curves(events, run_dir / "report/training_curves.png", BRATS_REPORT.curves)


def _commit() -> str:
    """The project's commit a run was made with (runs of several sessions share one table)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def paired_with_fedavg(per_seed_runs: dict[int, dict[str, dict]]) -> dict[int, dict[str, dict]]:
    """Per seed, each run's best model against FedAvg's, case by case: ``{seed: {run: {column: comparison}}}``
    with the AVE's difference (run - FedAvg), its 95% interval and p-value per column. Runs whose results carry no
    per-case scores (made before the sites kept them) are left out."""
    from brats_fl.report import BRATS_REPORT
    from medflare.crosssite import ReportError, build_report, compare_models, load_results

    out: dict[int, dict[str, dict]] = {}
    for seed, runs in sorted(per_seed_runs.items()):
        if not runs.get("fedavg", {}).get("results"):
            continue
        combined: dict[str, dict[str, dict]] = {}
        for name, result in runs.items():
            if result.get("results"):
                for site, per_model in load_results(result["results"], BRATS_REPORT).items():
                    combined.setdefault(site, {})[name] = per_model[result.get("scored_as", SERVER_BEST)]
        weights = build_report(combined, BRATS_REPORT, resamples=0).weights
        for name in runs:
            if name == "fedavg" or not runs[name].get("results"):
                continue
            try:
                ave = compare_models(combined, BRATS_REPORT, name, "fedavg", weights)["AVE"]
            except ReportError as err:  # results of an older version, without per-case scores
                print(f"  no paired comparison of {name} (seed {seed}): {err}")
                continue
            out.setdefault(seed, {})[name] = {c: v.to_dict() for c, v in ave.items()}
    return out


def write_results(runs: dict, rounds: int, stem: str = "fl_comparison") -> None:
    """The table of ``runs`` ({name: {seed: result}}): per run, the mean over its seeds (each seed's AVE listed)."""
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    out_dir = RESULTS / "fl_comparison"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    paired = paired_with_fedavg({seed: {run: per_seed[seed] for run, per_seed in runs.items() if seed in per_seed}
                                 for seed in {s for per_seed in runs.values() for s in per_seed}})
    for name, per_seed in runs.items():
        for seed, result in per_seed.items():
            if result.get("curves"):
                shutil.copyfile(result["curves"], out_dir / f"{name}_r{rounds}_seed{seed}.png")
                result["curves"] = f"fl_comparison/{name}_r{rounds}_seed{seed}.png"
        table[name] = {"ave_mean_dice": _mean([r["ave_mean_dice"] for r in per_seed.values()]),
                       "ave": {k: _mean([r["ave"][k] for r in per_seed.values()]) for k in
                               next(iter(per_seed.values()))["ave"]},
                       "seconds": _mean([r["seconds"] for r in per_seed.values()]),
                       "seeds": {str(s): r for s, r in per_seed.items()}}
    meta = {"data": {**DEMO, "sites": "site-1 HGG, site-2 LGG (brats-fl datalist)"}, "rounds": rounds,
            "seeds": seeds, "local_epochs": 1, "settings": SETTINGS, "runs_options": RUNS,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU",
            "scoring": "best model of each run on each site's testing split; AVE weighted by test cases"}
    meta["paired_with_fedavg"] = {str(seed): per_run for seed, per_run in paired.items()}
    meta["paired_method"] = ("each run's best model minus FedAvg's of the same seed on the same test cases: paired "
                             "95% percentile bootstrap over the cases, within sites, AVE weights (2,000 resamples, "
                             "seed 0), two-sided p-value")
    (RESULTS / f"{stem}.json").write_text(json.dumps({"runs": table, **meta}, indent=1, default=str) + "\n")
    lines = [f"# Central vs federated, {rounds} rounds (epochs for central), seeds {seeds}", "",
             f"Demo data ({DEMO['hgg']} HGG + {DEMO['lgg']} LGG cases of {'x'.join(map(str, DEMO['shape']))}), "
             "best model of each run scored on each site's testing split, AVE weighted by test cases; each row the "
             "mean over its seeds.", "",
             "| run | options | seeds | site-1 mean Dice | site-2 mean Dice | AVE TC | AVE WT | AVE ET | AVE mean Dice "
             "| per seed | AVE HD95 WT (mm) | wall time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        first = next(iter(row["seeds"].values()))
        sites = {s: _mean([r["sites"][s]["mean"] for r in row["seeds"].values()]) for s in first["sites"]}
        hd = row["ave"].get("HD95_WT", float("nan"))
        per_seed = " / ".join(f"{r['ave_mean_dice']:.3f}" for r in row["seeds"].values())
        lines.append(f"| {name} | {' '.join(first['options']) or '-'} | {', '.join(row['seeds'])} | "
                     f"{sites.get('site-1', float('nan')):.4f} | {sites.get('site-2', float('nan')):.4f} | "
                     f"{row['ave']['TC']:.4f} | {row['ave']['WT']:.4f} | {row['ave']['ET']:.4f} | "
                     f"**{row['ave_mean_dice']:.4f}** | {per_seed} | {hd:.2f} | {row['seconds']:.0f} |")
    if paired:
        lines += ["", "Each run's best model against FedAvg's of the same seed, paired on the same test cases: the "
                  "difference in AVE mean Dice (run - FedAvg) with its 95% bootstrap interval over the cases "
                  "(resampled within each site, AVE weights; 2,000 resamples) and a two-sided p-value. Significant "
                  "at 5%: the interval excludes 0. The interval is over test cases for these trained models, not "
                  "over training seeds.", "",
                  "| run | seed | AVE mean Dice - FedAvg | 95% interval | p | significant at 5% |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for seed, per_run in paired.items():
            for run, columns in per_run.items():
                diff, p = columns["mean"]["difference"], columns["mean"]["p_value"]
                low, high = diff["low"], diff["high"]
                real = "-" if low is None else ("yes" if low > 0 or high < 0 else "no")
                bounds = "-" if low is None else f"[{low:+.4f}, {high:+.4f}]"
                p_text = "-" if p is None else f"< {1 / diff['resamples']:.2g}" if p == 0 else f"{p:.3g}"
                lines.append(f"| {run} | {seed} | {diff['estimate']:+.4f} | {bounds} | {p_text} | {real} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path, help="working folder (data, jobs, runs)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds, and epochs of central training (default 30)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="runs (default: all)")
    parser.add_argument("--name", default="fl_comparison",
                        help="results file name under benchmarks/results (default fl_comparison: the README's table)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = _data(args.work)
    done_file = args.work / "runs.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    order = ["fedavg"] + [r for r in args.runs if r != "fedavg"]  # central is scored against FedAvg's report
    for seed in args.seeds:
        for name in order:
            key = f"{name}/r{args.rounds}/s{seed}"
            if key in done:
                continue
            run_dir = args.work / f"{name}_r{args.rounds}_s{seed}"
            run_dir.mkdir(exist_ok=True)
            print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
            commit = _commit()
            fedavg_dir = args.work / f"fedavg_r{args.rounds}_s{seed}"
            result = central(root, run_dir, args.rounds, seed, fedavg_dir) if name == "central" else \
                federated(name, RUNS[name], root, run_dir, args.rounds, seed)
            done[key] = {**result, "curves": str(result["curves"]) if result["curves"] else None,
                         "commit": commit}
            done_file.write_text(json.dumps(done, indent=1))
            print(f"  AVE mean Dice {result['ave_mean_dice']:.4f} in {result['seconds']:.0f} s", flush=True)
    # The table holds every run finished at these rounds in the work folder, whatever this call asked for, so a
    # later call can add a seed or a run without losing the others.
    found: dict[str, dict] = {}
    for key, result in done.items():
        name, rounds, seed = key.split("/")
        if rounds == f"r{args.rounds}" and name in RUNS:
            found.setdefault(name, {})[int(seed[1:])] = result
    write_results({name: dict(sorted(found[name].items())) for name in RUNS if name in found}, args.rounds, args.name)
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
