"""The BraTS model as a MONAI bundle: its metadata, its TorchScript, and inference in a process without this project."""

import json

import nibabel as nib
import numpy as np
import onnxruntime
import pytest
import torch

from brats_fl import cli
from brats_fl.bundle import export_bundle, segresnet_of
from brats_fl.model import BratsSegResNet, load_checkpoint
from brats_fl.transforms import infer_transforms
from brats_fl.data import MODALITIES, case_files
from medcore.errors import UserError

from tests.support import bundle_metadata, run_bundle_isolated

CROP = [16, 16, 16]  # smaller than the cases: the sliding windows overlap and blend


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    """A best global model inside a FLARE run folder whose cross-site results hold its row."""
    run = tmp_path_factory.mktemp("run") / "simulate_job"
    (run / "app_server").mkdir(parents=True)
    (run / "cross_site_val").mkdir()
    model = BratsSegResNet(crop=CROP, seed=3)
    checkpoint = run / "app_server" / "best_FL_global_model.pt"
    torch.save({"model": model.state_dict(), "train_conf": {"crop": CROP, "val_overlap": 0.5, "lr": 1e-4}},
               checkpoint)
    row = {"TC": 0.5, "WT": 0.7, "ET": 0.4, "mean": 0.5333, "HD95_TC": 10.0, "HD95_WT": 8.0, "HD95_ET": 12.0}
    results = {"site-1": {"SRV_best_FL_global_model.pt": {**row, "n_cases": 3}},
               "site-2": {"SRV_best_FL_global_model.pt": {**row, "TC": 0.2, "n_cases": 1}}}
    (run / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(results))
    return checkpoint


def test_metadata_carries_the_specs_keys_provenance_and_measured_numbers(run_checkpoint, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    meta = bundle_metadata(bundle)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4
    assert meta["eval_metrics"]["site-1_TC"] == 0.5 and meta["eval_metrics"]["AVE_TC"] == pytest.approx(
        (0.5 * 3 + 0.2 * 1) / 4, abs=1e-4)
    provenance = meta["provenance"]
    assert provenance["evaluation"]["items_per_site"] == {"site-1": 3, "site-2": 1}
    assert provenance["settings"]["lr"] == 1e-4 and provenance["inference"]["roi"] == CROP
    assert len(provenance["checkpoint"]["sha256_16"]) == 16 and provenance["code"]["commit"]
    assert "site-1_TC" in (bundle / "docs/README.md").read_text()
    # Without results next to it, the bundle says there is no evaluation.
    lone = tmp_path / "lone.pt"
    lone.write_bytes(run_checkpoint.read_bytes())
    meta = json.loads((export_bundle(lone, tmp_path / "lone")/ "configs/metadata.json").read_text())
    assert meta["eval_metrics"] == {} and meta["provenance"]["evaluation"]["source"].startswith("none")


def test_torchscript_gives_the_checkpoints_logits(run_checkpoint, brats_root, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    case = case_files(next((brats_root / "HGG").iterdir()))
    image = infer_transforms()({"image": [str(case[m]) for m in MODALITIES]})["image"].as_tensor()[None, :, :16, :16,
                                                                                                   :16]
    model, _ = load_checkpoint(run_checkpoint)
    with torch.no_grad():
        expected = model.eval()(image)
        scripted = torch.jit.load(str(bundle / "models/model.ts"))(image)
        plain = segresnet_of(model)(image)
    assert torch.allclose(scripted, expected, atol=1e-5) and torch.equal(plain, expected)
    # ONNX, run by ONNX Runtime on a real case's crop of a size it was not traced at
    session = onnxruntime.InferenceSession(str(bundle / "models/model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"image": image.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, expected.numpy(), atol=1e-4 * max(1.0, float(expected.abs().max())))
    info = json.loads((bundle / "configs/metadata.json").read_text())["onnx"]
    assert info["file"] == "models/model.onnx" and len(info["checks"]) == 2
    assert all(c["max_abs_difference"] <= 1e-4 * c["largest_logit"] for c in info["checks"])


def test_the_bundle_runs_without_this_project_and_segments_as_infer_does(run_checkpoint, brats_root, tmp_path):
    bundle = tmp_path / "bundle"
    assert cli.main(["export-bundle", "--checkpoint", str(run_checkpoint), "--out", str(bundle)]) == 0
    cases = sorted((brats_root / "HGG").iterdir())[:2]
    data = tmp_path / "cases"
    for case in cases:
        (data / case.name).mkdir(parents=True)
        for m in MODALITIES:
            (data / case.name / case_files(case)[m].name).symlink_to(case_files(case)[m])
    result = run_bundle_isolated(bundle, data, tmp_path / "out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for case in cases:
        own = tmp_path / f"{case.name}.nii.gz"
        assert cli.main(["infer", "--checkpoint", str(run_checkpoint), "--case-dir", str(case), "--out", str(own),
                         "--window", "sliding", "--roi", *map(str, CROP), "--overlap", "0.5", "--no-amp"]) == 0
        theirs = nib.load(str(tmp_path / "out" / f"{case.name}_t1ce_seg.nii.gz"))
        mine = nib.load(str(own))
        assert np.array_equal(np.asarray(theirs.dataobj), np.asarray(mine.dataobj))
        assert np.allclose(theirs.affine, mine.affine) and theirs.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mine.dataobj))) <= {0, 1, 2, 4}


def test_bad_checkpoints_and_foreign_folders_are_one_line_errors(run_checkpoint, tmp_path):
    from metastasis.model import PatchClassifier

    other = tmp_path / "patch_classifier.pt"
    torch.save(PatchClassifier(64).state_dict(), other)
    with pytest.raises(UserError, match="weights do not fit the BraTS SegResNet"):
        export_bundle(other, tmp_path / "b1")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="broken.pt"):
        export_bundle(broken, tmp_path / "b2")
    foreign = tmp_path / "theirs"
    (foreign / "configs").mkdir(parents=True)
    (foreign / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(UserError, match="metadata.json"):
        export_bundle(run_checkpoint, foreign)
    assert (foreign / "configs" / "metadata.json").read_text() == "{}"
    again = export_bundle(run_checkpoint, tmp_path / "ours")
    assert export_bundle(run_checkpoint, again) == again  # its own bundle is rewritten


def test_a_bundle_is_read_back_wherever_a_checkpoint_is(run_checkpoint, brats_root, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    model, extras = load_checkpoint(bundle)
    original, _ = load_checkpoint(run_checkpoint)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert extras["train_conf"]["crop"] == CROP and extras["train_conf"]["val_overlap"] == 0.5
    case = sorted((brats_root / "HGG").iterdir())[0]
    outs = [tmp_path / f"{name}.nii.gz" for name in ("from_bundle", "from_checkpoint")]
    for checkpoint, out in zip((bundle, run_checkpoint), outs):
        assert cli.main(["infer", "--checkpoint", str(checkpoint), "--case-dir", str(case), "--out", str(out),
                         "--roi", *map(str, CROP)]) == 0
    assert np.array_equal(*(np.asarray(nib.load(str(o)).dataobj) for o in outs))
    with pytest.raises(UserError, match="not a MONAI bundle"):
        load_checkpoint(tmp_path)
