"""The FLARE job: derived job folders, and end-to-end simulator runs on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_fl import cli
from brats_fl.datalist import write_datalists
from brats_fl.job import make_job
from brats_fl.task import TASK
from medcore.files import OUTPUT_MARKER, listed_outputs
from medflare.recipe import package_dir
from medflare.workflow import CHECKPOINT_NAME, load_round_checkpoint
from metastasis.task import TASK as METASTASIS

from tests.support import JOBS, TINY_BRATS_SHAPE, component, load_job_configs

NVFLARE = str(Path(sys.executable).parent / "nvflare")


def test_committed_job_is_the_seed_recipe():
    server, client = load_job_configs(JOBS / TASK.name)
    assert component(server, "scatter_and_gather")["args"]["num_rounds"] == 600
    assert json.loads((JOBS / TASK.name / "meta.json").read_text())["min_clients"] == 2
    learner = component(client, "learner")["args"]
    assert learner["train"]["crop"] == [224, 224, 144] and learner["train"]["lr"] == 1e-4
    assert learner["datalists"] == {"site-1": "seg_brats18_datalist_client_a.json",
                                    "site-2": "seg_brats18_datalist_client_b.json"}
    assert learner["data_root"] == "$BRATS_DATA_ROOT"
    persistor = component(server, "persistor")["args"]
    assert persistor["model"] == {"path": "brats_fl.model.BratsSegResNet",
                                  "args": {"vae": False, "crop": [224, 224, 144], "seed": 0}}
    assert persistor["train_conf"] == learner["train"]  # the global models carry the sites' recipe


@pytest.mark.parametrize("task", ["brats_fl", "pathology_metastasis"])
def test_committed_jobs_are_their_exports(task, tmp_path):
    """`jobs/<task>` is exactly what `job.py --export` writes with the defaults: the same files in git (the
    configuration), the project's packages in app/custom (build output, not in git) byte for byte; exporting
    over an earlier export keeps its job.py."""
    script = JOBS / task / "job.py"
    result = subprocess.run([sys.executable, str(script), "--export", "--export-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / task
    files = sorted(str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file())
    config = [f for f in files if not f.startswith("app/custom/")]
    assert config == ["app/config/config_fed_client.json", "app/config/config_fed_server.json", "meta.json"]
    tracked = subprocess.run(["git", "ls-files", f"jobs/{task}"], capture_output=True, text=True,
                             cwd=JOBS.parent).stdout.split()
    for rel in config:  # as git holds it (`make setup` rewrites the working tree's copy with its own export)
        committed = subprocess.run(["git", "show", f":jobs/{task}/{rel}"], capture_output=True, cwd=JOBS.parent
                                   ).stdout if tracked else (JOBS / task / rel).read_bytes()
        assert exported.joinpath(rel).read_bytes() == committed, f"jobs/{task}/{rel} is not its export"
    if tracked:  # a checkout (CI's clean clone): git holds the configuration and job.py, nothing else
        assert sorted(str(Path(t).relative_to(f"jobs/{task}")) for t in tracked) == sorted(config + ["job.py"])
    shipped = [f for f in files if f.startswith("app/custom/")]
    packages = {"brats_fl": TASK.packages, "pathology_metastasis": METASTASIS.packages}[task]
    modules = sorted(f"app/custom/{pkg}/{p.relative_to(package_dir(pkg))}" for pkg in packages
                     for p in package_dir(pkg).rglob("*.py"))
    assert shipped == sorted(modules + [f"app/custom/{pkg}/{OUTPUT_MARKER}" for pkg in packages])
    assert all((exported / f).read_bytes() == (package_dir(f.split("/")[2]) / f.split("/", 3)[3]).read_bytes()
               for f in modules)
    for pkg in packages:  # each copy lists its modules, so a later version's export may replace them
        listed = listed_outputs(exported / "app/custom" / pkg)
        assert {f"app/custom/{pkg}/{rel}" for rel in listed} == {m for m in modules if m.split("/")[2] == pkg}
    (tmp_path / task / "job.py").write_text("kept")
    assert subprocess.run([sys.executable, str(script), "--export", "--export-dir", str(tmp_path)],
                          capture_output=True, timeout=300).returncode == 0
    assert (tmp_path / task / "job.py").read_text() == "kept"


def test_make_job_applies_overrides(tmp_path):
    out = make_job(tmp_path / "job", rounds=3, train={"crop": [64, 64, 48], "vae": True, "lr": 3e-4},
                   data_root="/data/brats")
    server, client = load_job_configs(out)
    assert component(server, "scatter_and_gather")["args"]["num_rounds"] == 3
    learner = component(client, "learner")["args"]
    assert learner["train"]["crop"] == [64, 64, 48] and learner["train"]["lr"] == 3e-4
    assert learner["data_root"] == "/data/brats" and learner["datalist_dir"] == "/data/brats/datalists"
    model_args = component(server, "persistor")["args"]["model"]["args"]
    assert model_args == {"vae": True, "crop": [64, 64, 48], "seed": 0}  # server builds what clients train
    custom = out / "app/custom/brats_fl"
    assert custom.is_dir() and not custom.is_symlink() and (custom / "learner.py").is_file()
    assert not list(out.rglob("__pycache__"))
    with pytest.raises(ValueError, match="unknown training setting"):
        make_job(tmp_path / "bad", train={"rounds": 2})
    assert not (tmp_path / "bad").exists()


def test_tracking_option_adds_flares_mlflow_receiver(tmp_path):
    server, _ = load_job_configs(make_job(tmp_path / "job", tracking="mlflow"))
    receivers = [c["path"].rsplit(".", 1)[1] for c in server["components"] if c["path"].endswith("Receiver")]
    assert receivers == ["TBAnalyticsReceiver", "MLflowReceiver"]  # the report plots TensorBoard's events
    server, _ = load_job_configs(make_job(tmp_path / "plain"))
    assert not any(c["path"].endswith("MLflowReceiver") for c in server["components"])
    with pytest.raises(ValueError, match="tracking 'wandb': expected one of tensorboard, mlflow"):
        make_job(tmp_path / "bad", tracking="wandb")


def _simulate(job, workspace, threads, env=None):
    cmd = [NVFLARE, "simulator", str(job), "-w", str(workspace), "-n", "2"] + (["-t", str(threads)] if threads else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_simulator_end_to_end_and_reproducible(brats_root, tmp_path):
    """2 clients, 2 rounds, tiny volumes, with -t 2 and without -t (the simulator then rebuilds the clients for
    every task): global, best and local models exist, every model x site pair has finite Dice in
    cross_val_results.json, and both runs end with bit-identical global models (the seed fixes the first global
    model and every epoch's draws; the local training state outlives a rebuilt client)."""
    lists = write_datalists(brats_root, tmp_path / "lists")
    job = make_job(tmp_path / "job", rounds=2, data_root=str(brats_root), datalist_dir=str(lists["site-1"].parent),
                   train={"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1})
    finals = [_check_simulation(job, tmp_path / f"threads_{threads}", threads) for threads in (2, None)]
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def _check_simulation(job, out, threads) -> dict:
    ws = out / "ws"
    result = _simulate(job, ws, threads)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = ws / "server/simulate_job"
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        state = torch.load(run / "app_server" / name, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # The round checkpoint a resumed run would start from: the last round's global model.
    checkpoint = load_round_checkpoint(run / "app_server" / CHECKPOINT_NAME)
    assert (checkpoint.round, checkpoint.end_round, checkpoint.job_id) == (1, 2, "simulate_job")
    final = torch.load(run / "app_server/FL_global_model.pt", weights_only=True)["model"]
    assert all(np.array_equal(checkpoint.weights[k], final[k].numpy()) for k in final)
    for site in ("site-1", "site-2"):
        assert (ws / site / "simulate_job/models/local_best_model.pt").is_file()
    results = json.loads((run / "cross_site_val/cross_val_results.json").read_text())
    assert set(results) == {"site-1", "site-2"}
    for site, per_model in results.items():
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
        for metrics in per_model.values():
            assert all(0 <= metrics[k] <= 1 for k in ("TC", "WT", "ET", "mean")) and metrics["n_cases"] == 1
            assert metrics["items"]["mean"] == [metrics["mean"]]  # the per-case scores behind the intervals
    # TensorBoard events streamed to the server; the report command reads all of it.
    assert {p.name for p in (run / "tb_events").iterdir()} == {"site-1", "site-2"}
    assert cli.main(["report", str(ws), "--out", str(out / "report")]) == 0
    assert (out / "report/training_curves.png").stat().st_size > 10_000
    assert "AVE" in (out / "report/report.txt").read_text()
    return final


@pytest.mark.slow
def test_one_round_job_has_a_best_global_model(brats_root, tmp_path):
    """In-time selection scores a global model when the sites validate it before the next round, so the last
    aggregate was never scored and a 1-round job had no best model (nvflare issue 790). The workflow now has the
    sites score the final model: a 1-round job ends with a best global model and the full cross-site matrix."""
    lists = write_datalists(brats_root, tmp_path / "lists")
    job = make_job(tmp_path / "job", rounds=1, data_root=str(brats_root), datalist_dir=str(lists["site-1"].parent),
                   train={"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1}, tracking="mlflow")
    ws = tmp_path / "ws"
    result = _simulate(job, ws, 2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = ws / "server/simulate_job"
    final = torch.load(run / "app_server/FL_global_model.pt", weights_only=True)["model"]
    best = torch.load(run / "app_server/best_FL_global_model.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], best[k]) for k in final)  # the only scored global model is the best
    server_log = (ws / "server/log.txt").read_text()
    assert "final global model: val_dice" in server_log
    for site in ("site-1", "site-2"):
        assert "final global model on " + site in (ws / site / "log.txt").read_text()
    checkpoint = load_round_checkpoint(run / "app_server" / CHECKPOINT_NAME)
    assert checkpoint.round == 0 and 0 <= checkpoint.best_metric <= 1
    results = json.loads((run / "cross_site_val/cross_val_results.json").read_text())
    for per_model in results.values():
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
    # --tracking mlflow: an MLflow run per site in the job folder's SQLite store, every round's metrics in it (the
    # global model's validation before round 1 at step 0, the final model's at step 1; the local model's and the
    # training loss at epoch 1)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_site = {r.data.tags.get("site", r.info.run_name): r for r in runs}
    assert len(runs) == 2, [r.info.run_name for r in runs]
    for r in runs:
        steps = {name: sorted(m.step for m in client.get_metric_history(r.info.run_id, name))
                 for name in ("val_dice", "local_val_dice", "train_loss")}
        assert steps == {"val_dice": [0, 1], "local_val_dice": [1], "train_loss": [1]}, (by_site, steps)


@pytest.mark.slow
def test_committed_job_without_data_fails_clearly(tmp_path):
    """`nvflare simulator jobs/brats_fl -n 2` as users type it: custom code deploys from the job, and a missing
    data location stops the run with a message that says what to set."""
    env = {k: v for k, v in os.environ.items() if k != "BRATS_DATA_ROOT"}
    ws = tmp_path / "ws"
    result = subprocess.run([NVFLARE, "simulator", str(JOBS / TASK.name), "-w", str(ws), "-n", "2", "-t", "2"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "BRATS_DATA_ROOT" in result.stdout + result.stderr
    shipped = ws / "site-1/simulate_job/app_site-1/custom/brats_fl/learner.py"
    assert shipped.is_file() and not shipped.is_symlink()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedprox_svt", "fedopt_percentile"])
def test_simulator_with_federated_algorithms(brats_root, tmp_path, algorithm):
    """FedProx + SVT, and FedAdam + the percentile filter: 2 rounds in the simulator, with the full cross-site
    matrix; the sites' logs show the filter at work on what they send."""
    from medflare.algorithms import FederatedAlgorithm

    lists = write_datalists(brats_root, tmp_path / "lists")
    train = {"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1}
    if algorithm == "fedprox_svt":
        train["fedprox_mu"] = 0.01
        chosen = FederatedAlgorithm(privacy="svt")
    else:
        chosen = FederatedAlgorithm(server_opt="adam", privacy="percentile")
    job = make_job(tmp_path / "job", rounds=2, data_root=str(brats_root), datalist_dir=str(lists["site-1"].parent),
                   train=train, algorithm=chosen)
    ws = tmp_path / "ws"
    result = _simulate(job, ws, 2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = result.stdout + result.stderr + "".join(p.read_text(errors="replace") for p in ws.rglob("log.txt"))
    assert ("SVT acceptance completed" if algorithm == "fedprox_svt" else "cutoff:") in logs
    if algorithm == "fedprox_svt":  # what the filter spent, in the sites' logs (nvflare's accountant)
        assert "SVT privacy accountant: call epsilon 4.23201e+06" in logs
    if algorithm == "fedopt_percentile":
        assert "FedOpt (torch.optim.Adam" in logs
    run = ws / "server/simulate_job"
    results = json.loads((run / "cross_site_val/cross_val_results.json").read_text())
    assert set(results) == {"site-1", "site-2"}
    for per_model in results.values():
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
        assert all(0 <= m[k] <= 1 for m in per_model.values() for k in ("TC", "WT", "ET", "mean"))
    final = torch.load(run / "app_server/FL_global_model.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in final.values() if v.is_floating_point())


@pytest.mark.slow
def test_simulator_with_two_processes_per_site(tmp_path):
    """`processes=2`: each site trains and scores data-parallel in 2 CPU processes (gloo), its FLARE client rank 0
    of them, the only one that talks to FLARE. 2 rounds complete with the full cross-site matrix, each test case
    scored once (the ranks' shares gathered), and the other ranks stop with the job."""
    from demodata.brats import generate_dataset

    root = tmp_path / "brats"
    generate_dataset(root, 12, 4, shape=TINY_BRATS_SHAPE, seed=1)
    lists = write_datalists(root, tmp_path / "lists")
    assert len(json.loads(lists["site-1"].read_text())["testing"]) >= 2  # so that both ranks score test cases
    job = make_job(tmp_path / "job", rounds=2, data_root=str(root), datalist_dir=str(lists["site-1"].parent),
                   train={"crop": list(TINY_BRATS_SHAPE), "num_workers": 0, "num_threads": 1, "processes": 2})
    ws = tmp_path / "ws"
    result = _simulate(job, ws, 2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((ws / "server/simulate_job/cross_site_val/cross_val_results.json").read_text())
    assert set(results) == {"site-1", "site-2"}
    for site, per_model in results.items():
        testing = json.loads(lists[site].read_text())["testing"]
        assert set(per_model) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
        for metrics in per_model.values():
            assert metrics["n_cases"] == len(metrics["items"]["mean"]) == len(testing)
        log = (ws / site / "log.txt").read_text()
        assert f"{site}: training data-parallel in 2 processes" in log
    assert (ws / "site-1/simulate_job/models/local_best_model.pt").is_file()
