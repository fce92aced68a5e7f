"""Config, model, engine and the checkpoint commands, on tiny generated volumes."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_fl.config import TrainConfig
from brats_fl.data import MODALITIES, case_files, find_cases
from brats_fl.datalist import read_datalist, write_datalists
from brats_fl.engine import Trainer, eval_dataset, evaluate, predict_regions, summarize, train_dataset
from brats_fl.inference import segment_case, validate_checkpoint
from brats_fl.model import BratsSegResNet, load_checkpoint

from tests.support import TINY_BRATS_SHAPE

CROP = TINY_BRATS_SHAPE  # (48, 48, 32): divisible by 8


def test_config_defaults_are_the_seed_recipe():
    c = TrainConfig()
    assert c.crop == (224, 224, 144) and c.lr == 1e-4 and c.weight_decay == 1e-5 and c.local_epochs == 1
    assert c.amp and not c.vae
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="divisible by 8"):
        TrainConfig(crop=(100, 96, 96))
    assert TrainConfig.from_dict({"crop": [64, 64, 48]}).crop == (64, 64, 48)


def test_model_is_the_seed_segresnet():
    model = BratsSegResNet()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.70e6, rel=0.01)
    out = model(torch.zeros(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    vae = BratsSegResNet(vae=True, crop=(32, 32, 32)).train()
    out = vae(torch.randn(1, 4, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32) and vae.vae_loss is not None and vae.vae_loss.ndim == 0
    vae.eval()
    assert vae(torch.randn(1, 4, 48, 48, 32)).shape == (1, 3, 48, 48, 32)  # any size at inference


@pytest.fixture(scope="module")
def site(brats_root, tmp_path_factory):
    lists = write_datalists(brats_root, tmp_path_factory.mktemp("lists"))
    return lists["site-1"], read_datalist(lists["site-1"], brats_root)


def test_train_epoch_and_evaluate(site):
    _, splits = site
    config = TrainConfig(crop=CROP, num_workers=0)
    torch.manual_seed(0)
    model = BratsSegResNet(crop=CROP)
    trainer = Trainer(model, config, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = trainer.train_epoch(train_dataset(splits["training"], config))
    assert stats.steps == len(splits["training"]) and np.isfinite(stats.loss) and 0 < stats.loss <= 1.01
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.epochs == 1 and "optimizer" in trainer.state_dict()
    results = evaluate(model, eval_dataset(splits["validation"]), config, torch.device("cpu"), spacing=True)
    assert len(results) == 1 and results[0]["name"] == splits["validation"][0]["name"]
    assert all(0 <= results[0][k] <= 1 for k in ("TC", "WT", "ET", "mean"))
    assert results[0]["HD95_WT"] >= 0
    assert summarize(results)["n_cases"] == 1


def test_training_learns_on_synthetic_data(brats_root):
    """A few dozen steps on one case lift the whole-tumour Dice far above an untrained model's."""
    case = case_files(find_cases(brats_root)["HGG"][0])
    entry = [{"image": [str(case[m]) for m in MODALITIES], "label": str(case["seg"]), "name": "c"}]
    config = TrainConfig(crop=CROP, num_workers=0, lr=2e-3)
    torch.manual_seed(0)
    model = BratsSegResNet(crop=CROP)
    data = eval_dataset(entry)
    start = evaluate(model, data, config, torch.device("cpu"))[0]["WT"]
    trainer = Trainer(model, config, torch.device("cpu"))
    dataset = train_dataset(entry, config)
    for _ in range(40):
        trainer.train_epoch(dataset)
    end = evaluate(model, data, config, torch.device("cpu"))[0]["WT"]
    assert end > 0.6 and end > start + 0.3, (start, end)


def _save_model(model, path, crop=CROP):
    torch.save({"model": model.state_dict(), "train_conf": {"crop": list(crop)}}, path)
    return path


def test_checkpoint_loading(tmp_path):
    model = BratsSegResNet()
    flare = _save_model(model, tmp_path / "FL_global_model.pt")
    loaded, extras = load_checkpoint(flare)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert extras["train_conf"]["crop"] == list(CROP)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert not load_checkpoint(bare)[0].vae
    vae = _save_model(BratsSegResNet(vae=True, crop=(32, 32, 32)), tmp_path / "vae.pt", crop=(32, 32, 32))
    assert load_checkpoint(vae)[0].vae
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: weights do not fit"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path / "none.pt")


def test_validate_writes_per_case_csv(site, brats_root, tmp_path):
    datalist, _ = site
    ckpt = _save_model(BratsSegResNet(), tmp_path / "m.pt")
    out = tmp_path / "scores.csv"
    summary = validate_checkpoint(ckpt, datalist, brats_root, "testing", out,
                                  TrainConfig(crop=CROP, num_workers=0))
    rows = list(csv.DictReader(out.open()))
    assert [r["name"] for r in rows][-1] == "MEAN" and len(rows) == 2
    assert float(rows[-1]["WT"]) == pytest.approx(summary["WT"], abs=1e-6)
    assert set(rows[0]) == {"name", "TC", "WT", "ET", "mean", "HD95_TC", "HD95_WT", "HD95_ET"}


def test_infer_keeps_the_input_geometry(brats_root, tmp_path):
    case = case_files(find_cases(brats_root)["LGG"][0])
    # A non-trivial orientation: the input is stored RAS with a shifted origin; the output must follow it.
    moved = {}
    for m in MODALITIES:
        image = nib.load(str(case[m]))
        affine = np.diag([2.0, 2.0, 3.0, 1.0])
        affine[:3, 3] = (-40, 12, 7)
        moved[m] = tmp_path / f"in_{m}.nii.gz"
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), str(moved[m]))
    ckpt = _save_model(BratsSegResNet(), tmp_path / "m.pt")
    out = segment_case(ckpt, moved, tmp_path / "seg.nii.gz", TrainConfig(crop=CROP))
    seg = nib.load(str(out))
    reference = nib.load(str(moved["t1ce"]))
    assert seg.shape == reference.shape and np.allclose(seg.affine, reference.affine)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(reference.affine)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    with pytest.raises(ValueError, match="missing input contrast"):
        segment_case(ckpt, {"t1": moved["t1"]}, tmp_path / "x.nii.gz", TrainConfig(crop=CROP))


def test_predict_regions_shape():
    model = BratsSegResNet()
    regions = predict_regions(model, torch.zeros(4, 40, 36, 20), TrainConfig(crop=(32, 32, 16)),
                              torch.device("cpu"))
    assert regions.shape == (3, 40, 36, 20) and regions.dtype == bool


def test_central_training_pools_sites_keeps_the_best_and_resumes(brats_root, tmp_path, capsys):
    from brats_fl import cli
    from brats_fl.engine import pooled_splits, train

    lists = write_datalists(brats_root, tmp_path / "lists")
    pooled = pooled_splits(list(lists.values()), brats_root)
    per_site = [read_datalist(p, brats_root) for p in lists.values()]
    assert {k: len(v) for k, v in pooled.items()} == {k: sum(len(s[k]) for s in per_site) for k in pooled}
    with pytest.raises(ValueError, match="also in"):
        pooled_splits([lists["site-1"], lists["site-1"]], brats_root)

    config = TrainConfig(crop=CROP, num_workers=0, epochs=1, lr=1e-3)
    out = tmp_path / "central"
    first = train(pooled, config, out)
    assert first["epoch"] == 1 and 0 <= first["val_dice"] <= 1
    # Resumed to 2 epochs: one more epoch, the history carries both, the best model is the better one.
    best = train(pooled, TrainConfig(crop=CROP, num_workers=0, epochs=2, lr=1e-3), out)
    history = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert best["val_dice"] == max(row["val_dice"] for row in history)
    saved = torch.load(out / "best_model.pt", weights_only=True)
    assert saved["epoch"] == best["epoch"] and saved["train_conf"]["crop"] == list(CROP)
    assert len(list(csv.DictReader((out / "metrics.csv").open()))) == 2
    assert list((out / "tensorboard").iterdir())
    # A run that is complete does not train again.
    state = (out / "trainer_state.pt").stat().st_mtime_ns
    train(pooled, TrainConfig(crop=CROP, num_workers=0, epochs=2, lr=1e-3), out)
    assert (out / "trainer_state.pt").stat().st_mtime_ns == state
    # The checkpoint loads like any other model of the package.
    model, extras = load_checkpoint(out / "best_model.pt")
    assert extras["train_conf"]["epochs"] == 2

    # The command line: a user's file of the same name is never replaced; bad settings fail before any work.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/metrics.csv").write_text("my numbers")
    args = ["train", "--datalist", *map(str, lists.values()), "--data-root", str(brats_root), "--epochs", "1",
            "--set", f"crop={list(CROP)}", "--set", "num_workers=0"]
    assert cli.main([*args, "--out", str(tmp_path / "mine")]) == 2
    assert "metrics.csv: exists and was not written by" in capsys.readouterr().err
    assert (tmp_path / "mine/metrics.csv").read_text() == "my numbers"
    assert cli.main([*args, "--out", str(tmp_path / "x"), "--set", "lr=-1"]) == 2
    assert "setting lr" in capsys.readouterr().err


def test_report_adds_an_extra_model_scored_on_every_site(brats_root, tmp_path, capsys):
    from brats_fl import cli

    lists = write_datalists(brats_root, tmp_path / "lists")
    ckpt = tmp_path / "central.pt"
    torch.manual_seed(0)
    torch.save({"model": BratsSegResNet().state_dict(), "train_conf": TrainConfig(crop=CROP).to_dict()}, ckpt)
    results = {site: {"SRV_FL_global_model.pt": {"TC": 0.5, "WT": 0.5, "ET": 0.5, "n_cases": 1}}
               for site in ("site-1", "site-2")}
    (tmp_path / "cross_val_results.json").write_text(json.dumps(results))
    assert cli.main(["report", str(tmp_path / "cross_val_results.json"), "--extra", f"central={ckpt}",
                     "--data-root", str(brats_root), "--datalist-dir", str(tmp_path / "lists"),
                     "--out", str(tmp_path / "report"), "--no-plot"]) == 0
    report = json.loads((tmp_path / "report/report.json").read_text())
    assert list(report["models"]) == ["SRV_FL_global_model.pt", "central"]
    for site in ("site-1", "site-2"):
        expected = validate_checkpoint(ckpt, lists[site], brats_root, "testing", tmp_path / f"{site}.csv",
                                       TrainConfig(crop=CROP))
        assert report["models"]["central"]["sites"][site]["mean"] == pytest.approx(expected["mean"])
    assert "not from this federation" in report["models"]["central"]["title"]
    assert cli.main(["report", str(tmp_path / "cross_val_results.json"), "--extra", f"central={ckpt}"]) == 2
    assert "--extra: give --data-root" in capsys.readouterr().err


def test_each_command_decodes_each_nifti_file_once(brats_root, tmp_path, monkeypatch):
    """datalist -> train -> validate -> infer, counted at nibabel's decoder (across the reader processes too):
    the up-front checks read headers only, and the values are checked where the voxels are decoded for use, so
    each command decodes each file it uses exactly once and the files it does not use never."""
    from collections import Counter

    from nibabel.arrayproxy import ArrayProxy

    from brats_fl import cli

    log = tmp_path / "decodes.txt"
    real_array = ArrayProxy.__array__

    def counting_array(self, *args, **kwargs):
        with open(log, "a") as out:  # a file: validate decodes in a reader process
            out.write(f"{Path(self.file_like).name}\n")
        return real_array(self, *args, **kwargs)

    monkeypatch.setattr(ArrayProxy, "__array__", counting_array)

    def decoded(*argv: str) -> Counter:
        log.write_text("")
        assert cli.main(list(argv)) == 0
        return Counter(log.read_text().split())

    def files(cases) -> Counter:
        return Counter(Path(p).name for case in cases for p in (*case["image"], case["label"]))

    lists = tmp_path / "lists"
    every = Counter(p.name for p in brats_root.rglob("*.nii.gz"))
    assert decoded("datalist", str(brats_root), "--out", str(lists)) == every  # its job: check every case in full
    site = read_datalist(lists / "seg_brats18_datalist_client_a.json", brats_root)
    other = read_datalist(lists / "seg_brats18_datalist_client_b.json", brats_root)
    run = tmp_path / "run"
    used = files(site["training"] + site["validation"] + other["training"] + other["validation"])
    assert decoded("train", "--datalist", str(lists / "seg_brats18_datalist_client_a.json"),
                   str(lists / "seg_brats18_datalist_client_b.json"), "--data-root", str(brats_root), "--out",
                   str(run), "--epochs", "1", "--set", f"crop={list(CROP)}", "--set", "num_workers=0") == used
    assert decoded("validate", "--checkpoint", str(run / "best_model.pt"), "--datalist",
                   str(lists / "seg_brats18_datalist_client_a.json"), "--data-root", str(brats_root), "--split",
                   "testing", "--out", str(tmp_path / "val.csv")) == files(site["testing"])
    case = Path(site["testing"][0]["image"][0]).parent
    assert decoded("infer", "--checkpoint", str(run / "best_model.pt"), "--case-dir", str(case), "--out",
                   str(tmp_path / "seg.nii.gz")) == Counter(Path(p).name for p in site["testing"][0]["image"])


def test_a_bad_value_is_found_where_the_case_is_decoded_and_named_in_one_line(brats_root, tmp_path, capsys):
    """No full read up front any more: a NaN in a contrast and a foreign label are found by the first decode,
    inside MONAI's caching and a reader process, and still reported as one line naming the file."""
    import shutil

    from brats_fl import cli

    root = tmp_path / "root"
    shutil.copytree(brats_root, root)
    lists = write_datalists(root, tmp_path / "lists")
    site = read_datalist(lists["site-1"], root)
    flair = Path(site["validation"][0]["image"][3])
    image = nib.load(str(flair))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[0, 0, 0] = np.nan
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, header), str(flair))
    args = ["train", "--datalist", str(lists["site-1"]), "--data-root", str(root), "--epochs", "1", "--set",
            f"crop={list(CROP)}", "--set", "num_workers=0"]
    assert cli.main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {flair}: contains NaN or infinite values"
    label = Path(site["testing"][0]["label"])
    image = nib.load(str(label))
    data = np.asarray(image.dataobj).copy()
    data[data == 4] = 3
    nib.save(nib.Nifti1Image(data, image.affine, image.header), str(label))
    checkpoint = _save_model(BratsSegResNet(crop=CROP), tmp_path / "model.pt")
    assert cli.main(["validate", "--checkpoint", str(checkpoint), "--datalist", str(lists["site-1"]),
                     "--data-root", str(root), "--out", str(tmp_path / "v.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {label}: label values [3] are not BraTS labels [0, 1, 2, 4]"
    assert not (tmp_path / "v.csv").exists()


def test_validation_shared_out_over_processes_gives_one_process_scores(site, brats_root, tmp_path):
    """`validate --processes 2`: each case scored by one of two CPU processes, the CSV in the datalist's order and
    equal, value for value, to one process's (each process with one thread, as the test's own)."""
    lists = write_datalists(brats_root, tmp_path / "lists")
    pooled = {"testing": [case for path in lists.values() for split in json.loads(path.read_text()).values()
                          for case in split]}  # all six cases
    datalist = tmp_path / "pooled.json"
    datalist.write_text(json.dumps(pooled))
    ckpt = _save_model(BratsSegResNet(), tmp_path / "m.pt")
    config = TrainConfig(crop=CROP, num_workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        validate_checkpoint(ckpt, datalist, brats_root, "testing", tmp_path / "one.csv", config)
    finally:
        torch.set_num_threads(threads)
    validate_checkpoint(ckpt, datalist, brats_root, "testing", tmp_path / "two.csv", config, processes=2)
    one, two = (list(csv.DictReader((tmp_path / name).open())) for name in ("one.csv", "two.csv"))
    assert len(one) == 7 and one == two


def test_data_parallel_training_runs_resumes_and_repeats(brats_root, tmp_path, capsys):
    """`train --processes 2`: two CPU processes train one model (each caching and training on its share of the
    cases, validating its share); rank 0 alone writes the run folder. The same seed and number of processes give
    the same run again, and a run resumes where it stopped."""
    from brats_fl import cli

    lists = write_datalists(brats_root, tmp_path / "lists")
    args = ["train", "--datalist", *map(str, lists.values()), "--data-root", str(brats_root), "--set",
            f"crop={list(CROP)}", "--set", "num_workers=0", "--set", "num_threads=1", "--processes", "2"]
    for run in ("a", "b"):
        assert cli.main([*args, "--epochs", "2", "--out", str(tmp_path / run)]) == 0
    rows = {run: json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("a", "b")}
    timeless = {run: [{k: v for k, v in row.items() if k not in ("seconds", "data_wait_percent")} for row in r]
                for run, r in rows.items()}
    assert len(rows["a"]) == 2 and timeless["a"] == timeless["b"]
    assert "best model: epoch" in capsys.readouterr().out
    assert cli.main([*args, "--epochs", "3", "--out", str(tmp_path / "a")]) == 0
    assert [row["epoch"] for row in json.loads((tmp_path / "a/metrics.json").read_text())] == [1, 2, 3]
    model, extras = load_checkpoint(tmp_path / "a/last_model.pt")
    assert extras["epoch"] == 3 and not any(k.startswith("module.") for k in model.state_dict())
