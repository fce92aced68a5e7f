"""Federated evaluation: checkpoints sent to the sites and scored there, in a training job's results shape."""

import json

import pytest
import torch

from brats_fl import cli as brats_cli
from brats_fl.datalist import write_datalists
from brats_fl.job import BratsEvaluation
from brats_fl.model import BratsSegResNet
from medcore.errors import UserError
from medflare.recipe import export_job
from metastasis import cli as metastasis_cli
from metastasis.model import PatchClassifier

from tests.support import component, load_job_configs


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "central" / "best_model.pt"
    path.parent.mkdir()
    torch.save({"model": BratsSegResNet(seed=3).state_dict(), "epoch": 1}, path)
    return path


def test_evaluation_job_ships_the_checkpoints_and_only_validates(checkpoint, tmp_path):
    job = export_job(BratsEvaluation({"central": checkpoint, "again": checkpoint}), tmp_path / "job")
    server, client = load_job_configs(job)
    assert component(server, "model_locator")["args"]["checkpoints"] == {
        "central": "models/central/best_model.pt", "again": "models/again/best_model.pt"}
    assert component(server, "cross_site_model_eval")["args"]["submit_model_task_name"] == ""  # no local models
    assert [w["id"] for w in server["workflows"]] == ["cross_site_model_eval"]  # no training
    assert client["executors"][0]["tasks"] == ["validate"]
    shipped = job / "app/custom/models/central/best_model.pt"
    assert shipped.read_bytes() == checkpoint.read_bytes()
    from brats_fl.bundle import export_bundle

    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    server, _ = load_job_configs(export_job(BratsEvaluation({"bundled": bundle}), tmp_path / "bundle_job"))
    locator = component(server, "model_locator")["args"]
    assert locator["checkpoints"] == {"bundled": "models/bundled/model.pt"}
    assert locator["key_prefixes"] == {"bundled": "net."}  # MONAI's SegResNet inside BratsSegResNet
    assert component(client, "learner")["args"]["datalist_dir"] == "$BRATS_DATA_ROOT/datalists"
    export_job(BratsEvaluation({"central": checkpoint}), job)  # an earlier export is replaced


def test_evaluation_refuses_bad_checkpoints_and_names(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    weightless = tmp_path / "weightless.pt"
    torch.save({"epoch": 3}, weightless)
    for checkpoints, message in (({"central": broken}, "broken.pt: not a readable PyTorch checkpoint"),
                                 ({"central": weightless}, "weightless.pt: no model weights found"),
                                 ({"../up": checkpoint}, "model name '../up'"),
                                 ({}, "at least one checkpoint")):
        with pytest.raises(UserError, match=message):
            BratsEvaluation(checkpoints)
    assert brats_cli.main(["fed-eval", f"a={checkpoint}", f"a={checkpoint}", "--export", "--export-dir",
                           str(tmp_path / "out")]) == 2
    assert "model name(s) ['a'] given more than once" in capsys.readouterr().err
    assert brats_cli.main(["fed-eval", f"a={tmp_path / 'nope.pt'}"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert brats_cli.main(["fed-eval", f"a={tmp_path / 'folder'}", "--export", "--export-dir",
                           str(tmp_path / "out")]) == 2
    assert "folder: a folder, but not a MONAI bundle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _results(path, per_site):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(per_site))
    return path


def test_report_adds_another_results_file(tmp_path, capsys):
    scores = {"TC": 0.5, "WT": 0.6, "ET": 0.4, "n_cases": 2}
    training = _results(tmp_path / "train/cross_site_val/cross_val_results.json",
                        {s: {"SRV_FL_global_model.pt": scores} for s in ("site-1", "site-2")})
    _results(tmp_path / "eval/cross_site_val/cross_val_results.json",
                          {s: {"SRV_central": {**scores, "TC": 0.9}} for s in ("site-1", "site-2")})
    assert brats_cli.main(["report", str(training), "--add", str(tmp_path / "eval"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "Model 'central' sent to every site and scored there (federated evaluation) [SRV_central]" in out
    assert out.index("SRV_FL_global_model.pt") < out.index("SRV_central")
    one_site = _results(tmp_path / "one.json", {"site-1": {"SRV_central": scores}})
    assert brats_cli.main(["report", str(training), "--add", str(one_site), "--no-plot"]) == 2
    assert "its sites ['site-1'] are not those of" in capsys.readouterr().err
    assert brats_cli.main(["report", str(training), "--add", str(training), "--no-plot"]) == 2
    assert "model 'SRV_FL_global_model.pt' is in" in capsys.readouterr().err


@pytest.mark.slow
def test_federated_evaluation_scores_as_the_local_scorer(brats_root, checkpoint, tmp_path, capsys):
    """`fed-eval` in the simulator: each site scores the checkpoint on its testing split, and the scores are those
    `report --extra` computes with all data in one process (the same scorer, run where the data are). The same
    model exported as a MONAI bundle (MONAI's SegResNet weights alone) scores the same at every site."""
    from brats_fl.bundle import export_bundle

    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    lists = write_datalists(brats_root, tmp_path / "lists")
    ws = tmp_path / "ws"
    assert brats_cli.main(["fed-eval", f"central={checkpoint}", f"bundled={bundle}", "--workspace", str(ws),
                           "--data-root", str(brats_root), "--datalist-dir", str(lists["site-1"].parent), "--set",
                           "num_workers=0", "--set", "num_threads=1"]) == 0  # Clara's window, as --extra's
    results = json.loads(next(ws.rglob("cross_site_val/cross_val_results.json")).read_text())
    assert set(results) == {"site-1", "site-2"} and all(set(r) == {"SRV_central", "SRV_bundled"}
                                                         for r in results.values())
    assert all(r["SRV_bundled"] == r["SRV_central"] for r in results.values())
    capsys.readouterr()
    assert brats_cli.main(["report", str(ws), "--no-plot", "--extra", f"local={checkpoint}", "--data-root",
                           str(brats_root), "--datalist-dir", str(lists["site-1"].parent)]) == 0
    report = json.loads(json.dumps(results))
    out = capsys.readouterr().out
    federated = out.split("[SRV_central]:")[1].split("\n\n")[0]
    local = out.split("[local]:")[1].split("\n\n")[0]
    assert federated.strip() and federated == local  # every site's Dice and HD95, to the printed digits
    assert all(0 <= report[s]["SRV_central"]["mean"] <= 1 for s in report)


@pytest.mark.slow
def test_federated_evaluation_of_a_patch_classifier(camelyon_root, camelyon_patches, tmp_path):
    """The pathology task: a checkpoint scored on the site's validation patches (accuracy and AUC)."""
    weights = tmp_path / "model.pt"
    torch.save({"model": PatchClassifier(64, seed=1).state_dict(), "train_conf": {"patch_size": 64}}, weights)
    ws = tmp_path / "ws"
    assert metastasis_cli.main(["fed-eval", f"baseline={weights}", "--workspace", str(ws), "--data-root",
                                str(camelyon_root), "--patch-list", str(camelyon_patches), "--set", "patch_size=64",
                                "--set", "num_workers=0", "--report", str(tmp_path / "report")]) == 0
    results = json.loads(next(ws.rglob("cross_site_val/cross_val_results.json")).read_text())
    metrics = results["site-1"]["SRV_baseline"]
    assert 0 <= metrics["val_accuracy"] <= 1 and 0 <= metrics["val_auc"] <= 1 and metrics["n"] > 0
    assert "federated evaluation" in (tmp_path / "report/report.txt").read_text()



def test_report_names_what_the_results_lack(tmp_path, capsys):
    """A run whose site result never reached the server, or that has no best global model, is reported as
    incomplete, with the missing parts named, not as a finished matrix."""
    scores = {"TC": 0.5, "WT": 0.6, "ET": 0.4, "n_cases": 2}
    results = _results(tmp_path / "r.json", {"site-1": {"SRV_FL_global_model.pt": scores, "site-1": scores},
                                            "site-2": {"SRV_FL_global_model.pt": scores}})
    assert brats_cli.main(["report", str(results), "--no-plot", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Incomplete: site-1 was not scored on site-2; its AVE is over the sites that scored it." in out
    assert "Incomplete: there is no best global model (SRV_best_FL_global_model.pt)" in out
    assert len(json.loads((tmp_path / "out/report.json").read_text())["missing"]) == 2
