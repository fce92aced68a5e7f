"""The single-site metastasis FLARE job: the committed recipe, derived jobs, and a simulator run end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nvflare.fuel.utils.class_utils import instantiate_class

from metastasis import cli
from metastasis.config import TrainConfig
from metastasis.job import make_job
from metastasis.model import PatchClassifier
from metastasis.task import TASK

NVFLARE = str(Path(sys.executable).parent / "nvflare")

from tests.support import JOBS, component, load_job_configs


def _learner(client):
    return next(c for c in client["components"] if c["id"] == "learner")["args"]


def test_committed_job_is_the_seed_recipe():
    server, client = load_job_configs(JOBS / TASK.name)
    train = _learner(client)["train"]
    assert (train["patch_size"], train["lr"], train["batch_size"], train["local_epochs"]) == (224, 1e-3, 32, 1)
    assert train["amp"] and train["augment"]
    assert json.loads((JOBS / TASK.name / "meta.json").read_text())["min_clients"] == 1
    workflow = server["workflows"][0]["args"]
    assert workflow["min_clients"] == 1 and component(server, "scatter_and_gather")["args"]["num_rounds"] == 20
    selector = next(c for c in server["components"] if c["id"] == "model_selector")
    assert selector["args"]["key_metric"] == "val_accuracy"
    persistor = next(c for c in server["components"] if c["id"] == "persistor")
    assert persistor["args"]["model"] == {"path": "metastasis.model.PatchClassifier",
                                          "args": {"patch_size": 224, "seed": 0}}
    # The whole recipe, defaults included, on both sides: the global models carry what the sites trained with.
    assert train == persistor["args"]["train_conf"] == TrainConfig().to_dict()


def test_make_job_applies_overrides(tmp_path):
    out = make_job(tmp_path / "job", rounds=3, train={"patch_size": 96, "lr": 5e-4}, data_root="/data/c16",
                   patch_list="/data/c16/patches.json")
    server, client = load_job_configs(out)
    learner = _learner(client)
    assert component(server, "scatter_and_gather")["args"]["num_rounds"] == 3 and learner["train"]["lr"] == 5e-4
    assert learner["data_root"] == "/data/c16" and learner["patch_list"] == "/data/c16/patches.json"
    persistor = next(c for c in server["components"] if c["id"] == "persistor")
    assert persistor["args"]["model"]["args"] == {"patch_size": 96, "seed": 0}  # the server builds the same network
    assert persistor["args"]["train_conf"] == learner["train"] and learner["train"]["patch_size"] == 96
    assert json.loads((out / "meta.json").read_text())["min_clients"] == 1  # the seed's
    two = make_job(tmp_path / "two", sites=2, patch_list="/data/{site}/patches.json")
    server, client = load_job_configs(two)
    assert json.loads((two / "meta.json").read_text())["min_clients"] == 2
    assert server["workflows"][0]["args"]["min_clients"] == 2 and _learner(client)["patch_list"].endswith(
        "{site}/patches.json")
    with pytest.raises(ValueError, match="sites must be at least 1"):
        make_job(tmp_path / "none", sites=0)
    assert (out / "app/custom/metastasis/learner.py").is_file() and (out / "app/custom/medflare/learner.py").is_file()
    with pytest.raises(ValueError, match="unknown training setting"):
        make_job(tmp_path / "bad", train={"learning_rate": 1})
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        make_job(tmp_path / "bad", rounds=0)
    assert not (tmp_path / "bad").exists()


def test_first_global_model_starts_from_pretrained_weights(tmp_path):
    """With ``pretrained`` the server's persistor builds the first global model from the file (as FLARE's
    component builder does), so round 1 sends the sites those weights."""
    weights = tmp_path / "resnet18.pth"
    state = PatchClassifier(seed=5).state_dict()
    torch.save(state, weights)
    server, _ = load_job_configs(make_job(tmp_path / "job", train={"pretrained": str(weights)}))
    model = next(c for c in server["components"] if c["id"] == "persistor")["args"]["model"]
    assert model["args"] == {"patch_size": 224, "seed": 0, "pretrained": str(weights)}
    built = instantiate_class(model["path"], model["args"])
    assert all(torch.equal(v, state[k]) for k, v in built.state_dict().items())


@pytest.mark.slow
def test_simulator_end_to_end(camelyon_root, tmp_path):
    """Data preparation by the CLI, then 2 rounds of the job (``job.py`` in the simulator) on 64-pixel patches,
    starting from pretrained weights, the site training data-parallel in 2 CPU processes (``processes=2``: its
    FLARE client rank 0, the only one talking to FLARE): global, best and local models exist, cross_val_results.json
    scores all three on every one of the site's validation patches (both ranks' shares, gathered in the list's
    order), and the report reads it."""
    masks, patch_list = tmp_path / "masks", tmp_path / "patches.json"
    assert cli.main(["tissue", str(camelyon_root / "training"), "--out", str(masks)]) == 0
    assert cli.main(["patches", "--data-root", str(camelyon_root), "--masks", str(masks), "--out", str(patch_list),
                     "--tumor-per-slide", "20", "--patch-size", "64", "--validation-fraction", "0.5"]) == 0
    weights = tmp_path / "resnet18.pth"  # the first global model starts from these
    torch.save(PatchClassifier(64, seed=5).state_dict(), weights)
    # jobs/pathology_metastasis/job.py as users run it: FLARE's simulator (SimEnv), then the cross-site report
    ws = tmp_path / "workspace"
    # num_workers=0: with 1, one whole-suite run (2026-12-04) hung here: a DataLoader worker forked by the helper
    # rank deadlocked in CPython 3.11's after-fork clean-up, on the runtime's thread-state lock, which another thread
    # of that process held while it was starting (gdb); an open bug of forking loader workers in multi-threaded
    # processes (the ranks, a FLARE client), to be fixed in the loaders, not here.
    result = subprocess.run([sys.executable, str(JOBS / TASK.name / "job.py"), "--workspace", str(ws), "--rounds", "2",
                             "--data-root", str(camelyon_root), "--patch-list", str(patch_list), "--set",
                             "patch_size=64", "--set", "num_workers=0", "--set", "batch_size=16", "--set",
                             f"pretrained={weights}", "--set", "processes=2"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Global best model selected via IntimeModelSelector" in result.stdout
    ws = ws / TASK.name  # the run folder
    run = ws / "server/simulate_job"
    # The server built the first global model from the weights; the site did not read them.
    assert f"loaded pretrained weights from {weights}" in (ws / "server/log.txt").read_text()
    assert "loaded pretrained weights" not in (ws / "site-1/log.txt").read_text()
    assert "site-1: training data-parallel in 2 processes" in (ws / "site-1/log.txt").read_text()
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        saved = torch.load(run / "app_server" / name, weights_only=True)
        assert saved["model"]["fc.weight"].shape == (1, 512, 1, 1)
        assert saved["train_conf"]["patch_size"] == 64  # inference reads the recipe from the global model too
    local = torch.load(ws / "site-1/simulate_job/models/local_best_model.pt", weights_only=True)
    assert local["train_conf"]["patch_size"] == 64 and 0 <= local["val_accuracy"] <= 1
    results = json.loads((run / "cross_site_val/cross_val_results.json").read_text())
    assert set(results) == {"site-1"}
    assert set(results["site-1"]) == {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1"}
    for metrics in results["site-1"].values():
        assert 0 <= metrics["val_accuracy"] <= 1 and 0 <= metrics["val_auc"] <= 1 and metrics["n"] == 40
        assert len(metrics["items"]["probability"]) == 40 and sorted(set(metrics["items"]["label"])) == [0, 1]
    assert {p.name for p in (run / "tb_events").iterdir()} == {"site-1"}
    assert cli.main(["report", str(ws), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report/report.txt").read_text()
    assert "Global best model selected via IntimeModelSelector" in text
    assert "95% percentile bootstrap intervals over each site's validation patches" in text
    assert (tmp_path / "report/training_curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_two_sites_each_with_its_own_patch_list(camelyon_root, tmp_path):
    """One job, two sites (as two hospitals), each reading its own patch list through {site}: 2 rounds in the
    simulator give the full cross-site matrix (both sites' local models and the server's two models, each scored on
    both sites' validation patches), and the global models carry the recipe (here with stain normalisation)."""
    from metastasis.data.patch_lists import write_patch_list
    from metastasis.data.sampling import find_training_slides, generate_patch_list

    sources = find_training_slides(camelyon_root, tmp_path / "masks")
    n_validation = {}
    for n, site in enumerate(("site-1", "site-2")):
        patches = generate_patch_list(sources, tumor_per_slide=10 + 5 * n, patch_size=64, validation_fraction=0.5)
        write_patch_list(tmp_path / site / "patches.json", patches, camelyon_root)
        n_validation[site] = len(patches["validation"])
    assert cli.main(["make-job", "--out", str(tmp_path / "job"), "--rounds", "2", "--sites", "2",
                     "--data-root", str(camelyon_root), "--patch-list", str(tmp_path / "{site}/patches.json"),
                     "--set", "patch_size=64", "--set", "num_workers=0", "--set", "batch_size=16",
                     "--set", "num_threads=1", "--set", "stain_normalization=macenko"]) == 0
    meta = json.loads((tmp_path / "job/meta.json").read_text())
    assert meta["min_clients"] == 2
    ws = tmp_path / "ws"
    result = subprocess.run([NVFLARE, "simulator", str(tmp_path / "job"), "-w", str(ws), "-n", "2", "-t", "2"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = ws / "server/simulate_job"
    results = json.loads((run / "cross_site_val/cross_val_results.json").read_text())
    models = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt", "site-1", "site-2"}
    assert set(results) == {"site-1", "site-2"} and all(set(results[s]) == models for s in results)
    assert all(results[s][m]["n"] == n_validation[s] for s in results for m in models)  # each on its own patches
    best = torch.load(run / "app_server/best_FL_global_model.pt", weights_only=True)
    assert best["train_conf"]["stain_normalization"] == "macenko" and best["train_conf"]["patch_size"] == 64
    assert cli.main(["report", str(ws), "--out", str(tmp_path / "report")]) == 0


def test_site_set_up_errors_name_the_problem(tmp_path, monkeypatch):
    """What a site without its data sees: the variable to set, or the missing patch list's path."""
    from metastasis.learner import MetastasisLearner
    from metastasis.data.patch_lists import PatchListError

    monkeypatch.delenv("CAMELYON_DATA_ROOT", raising=False)
    learner = MetastasisLearner()
    learner.site = "site-1"
    with pytest.raises(ValueError, match="data_root '\\$CAMELYON_DATA_ROOT': environment variable not set"):
        learner.setup(None)
    monkeypatch.setenv("CAMELYON_DATA_ROOT", str(tmp_path))
    with pytest.raises(PatchListError, match=f"{tmp_path}/patches.json: patch list missing"):
        learner.setup(None)
    learner = MetastasisLearner(data_root="$CAMELYON_DATA_ROOT/{site}", patch_list="$CAMELYON_DATA_ROOT/{site}/p.json")
    learner.site = "site-2"  # one job, each site its own data
    with pytest.raises(PatchListError, match=f"{tmp_path}/site-2/p.json: patch list missing"):
        learner.setup(None)


def test_an_export_replaces_an_older_exports_copy_of_the_packages_but_not_a_users_file(tmp_path, capsys):
    """The packages' copies list their files, so a later version's export may replace modules this one moved;
    the copies of earlier versions listed nothing, and their flat modules are known by name
    (:data:`medflare.recipe.FORMER_MODULES`). Any other file in a shipped package is the user's."""
    from medcore.files import OUTPUT_MARKER
    from medflare.recipe import FORMER_MODULES

    job = tmp_path / "job"
    assert cli.main(["make-job", "--out", str(job)]) == 0
    copy = job / "app/custom/metastasis"
    assert "inference/run.py" in json.loads((copy / OUTPUT_MARKER).read_text())["files"]
    assert not (job / "app/custom/demodata").exists()  # the generators are not shipped to the sites
    (copy / OUTPUT_MARKER).unlink()  # an earlier version's copy: no list, its modules flat
    for name in sorted(FORMER_MODULES["metastasis"]):
        (copy / name).write_text("# an earlier version's module\n")
    assert cli.main(["make-job", "--out", str(job)]) == 0
    assert not (copy / "slide.py").exists() and (copy / "data/slide.py").is_file()
    (copy / "data/mine.py").write_text("X = 1\n")
    assert cli.main(["make-job", "--out", str(job)]) == 2
    assert f"{copy / 'data/mine.py'}: not written by this project" in capsys.readouterr().err
    assert (copy / "data/mine.py").is_file()
