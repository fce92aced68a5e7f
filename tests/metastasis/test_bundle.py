"""The patch classifier as a MONAI bundle: its metadata, its TorchScript, whole-slide maps in a process without
this project (equal to ``metastasis infer`` within 1e-5), and the bundle read back as a checkpoint."""

import inspect
import json

import numpy as np
import onnxruntime
import pytest
import torch

from metastasis import cli
from metastasis.bundle import bundle_script, export_bundle, network_of
from metastasis.data.slide import Slide
from metastasis.data.tissue import tissue_mask
from metastasis.data.transforms import to_input
from metastasis.inference.maps import load_map
from metastasis.model import PatchClassifier, load_checkpoint
from medcore.errors import UserError

from tests.support import bundle_metadata, run_bundle_isolated

PATCH = 64
#: How far the bundle's maps may lie from ``metastasis infer --no-amp``'s: infer folds the batch norms into the
#: convolutions, the bundle runs the network as trained; measured 1.4e-6 at most on the generated slides.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    """A best global model inside a FLARE run folder whose cross-site results hold its row."""
    run = tmp_path_factory.mktemp("run") / "simulate_job"
    (run / "app_server").mkdir(parents=True)
    (run / "cross_site_val").mkdir()
    checkpoint = run / "app_server" / "best_FL_global_model.pt"
    torch.save({"model": PatchClassifier(PATCH, seed=1).state_dict(),
                "train_conf": {"patch_size": PATCH, "lr": 1e-3, "stain_normalization": "none"}}, checkpoint)
    row = {"val_accuracy": 0.9, "val_auc": 0.95, "val_sensitivity": 0.8, "val_specificity": 0.97}
    results = {"site-1": {"SRV_best_FL_global_model.pt": {**row, "n": 200}}}
    (run / "cross_site_val" / "cross_val_results.json").write_text(json.dumps(results))
    return checkpoint


def test_metadata_carries_the_specs_keys_provenance_and_measured_numbers(run_checkpoint, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    meta = bundle_metadata(bundle)
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [PATCH, PATCH]
    assert set(meta["required_packages_version"]) == {"openslide-python", "scikit-image"}
    assert meta["eval_metrics"] == {"site-1_val_accuracy": 0.9, "site-1_val_auc": 0.95, "site-1_val_sensitivity": 0.8,
                                    "site-1_val_specificity": 0.97, "AVE_val_accuracy": 0.9, "AVE_val_auc": 0.95,
                                    "AVE_val_sensitivity": 0.8, "AVE_val_specificity": 0.97}
    provenance = meta["provenance"]
    assert provenance["evaluation"]["items_per_site"] == {"site-1": 200}
    assert provenance["settings"]["lr"] == 1e-3 and provenance["inference"]["stride"] == 32
    assert "site-1_val_auc" in (bundle / "docs/README.md").read_text()
    lone = tmp_path / "lone.pt"
    lone.write_bytes(run_checkpoint.read_bytes())
    meta = json.loads((export_bundle(lone, tmp_path / "lone") / "configs/metadata.json").read_text())
    assert meta["eval_metrics"] == {} and meta["provenance"]["evaluation"]["source"].startswith("none")


def test_the_script_carries_this_projects_own_code():
    """Not a second implementation: the project's functions as they are, so a change to one travels."""
    script = bundle_script()
    assert inspect.getsource(tissue_mask) in script and inspect.getsource(to_input) in script
    compile(script, "scripts/metastasis.py", "exec")


def test_torchscript_gives_the_checkpoints_logits(run_checkpoint, camelyon_root, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    with Slide(camelyon_root / "training/tumor/tumor_001.tif") as slide:
        rgb = np.asarray(slide.handle.read_region((1000, 600), 0, (PATCH + 96, PATCH + 64)))[..., :3]
    x = to_input(rgb[None])
    model, _ = load_checkpoint(run_checkpoint)
    with torch.no_grad():
        expected = model.eval()(x)
        scripted = torch.jit.load(str(bundle / "models/model.ts"))(x)
        plain = network_of(model)(x)
    assert expected.shape == (1, 1, 3, 4)
    assert torch.allclose(scripted, expected, atol=1e-5) and torch.equal(plain, expected)
    # ONNX, run by ONNX Runtime on a real tile of a size it was not traced at
    session = onnxruntime.InferenceSession(str(bundle / "models/model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(onnx_logits, expected.numpy(), atol=1e-4 * max(1.0, float(expected.abs().max())))
    assert json.loads((bundle / "configs/metadata.json").read_text())["onnx"]["opset"] == 17


@pytest.mark.parametrize("mode", ["tiled", "patch"])
def test_the_bundle_maps_slides_without_this_project_as_infer_does(run_checkpoint, camelyon_root, tmp_path, mode):
    bundle = tmp_path / "bundle"
    assert cli.main(["export-bundle", "--checkpoint", str(run_checkpoint), "--out", str(bundle)]) == 0
    slides = tmp_path / "slides"
    slides.mkdir()
    for path in sorted(camelyon_root.glob("training/*/*.tif"))[:2]:
        (slides / path.name).symlink_to(path)
    result = run_bundle_isolated(bundle, slides, tmp_path / "out", tmp_path, mode=mode)
    assert result.returncode == 0, result.stderr[-3000:]
    assert cli.main(["infer", str(slides), "--checkpoint", str(run_checkpoint), "--out", str(tmp_path / "own"),
                     "--mode", mode, "--no-amp"]) == 0
    for path in sorted(slides.iterdir()):
        theirs, meta = load_map(tmp_path / "out" / f"{path.stem}.npy")  # the project's reader takes the bundle's map
        mine, own_meta = load_map(tmp_path / "own" / f"{path.stem}.npy")
        assert theirs.shape == mine.shape and np.array_equal(theirs > 0, mine > 0)  # the same tissue, to the pixel
        assert np.abs(theirs - mine).max() <= TOLERANCE and mine.max() > 0.1
        for key in ("stride", "origin", "shape", "level0_size", "mpp", "slide", "tissue_outputs"):
            assert meta[key] == own_meta[key], key


def test_a_bundle_is_read_back_wherever_a_checkpoint_is(run_checkpoint, camelyon_root, tmp_path):
    bundle = export_bundle(run_checkpoint, tmp_path / "bundle")
    model, meta = load_checkpoint(bundle)
    original, _ = load_checkpoint(run_checkpoint)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    assert meta["train_conf"]["patch_size"] == PATCH and meta["train_conf"]["stain_normalization"] == "none"
    slide = camelyon_root / "training/tumor/tumor_001.tif"
    for checkpoint, out in ((bundle, "from_bundle"), (run_checkpoint, "from_checkpoint")):
        assert cli.main(["infer", str(slide), "--checkpoint", str(checkpoint), "--out", str(tmp_path / out)]) == 0
    assert np.array_equal(np.load(tmp_path / "from_bundle/tumor_001.npy"),
                          np.load(tmp_path / "from_checkpoint/tumor_001.npy"))
    with pytest.raises(UserError, match="not a MONAI bundle"):
        load_checkpoint(tmp_path)


def test_bad_checkpoints_and_foreign_folders_are_one_line_errors(run_checkpoint, tmp_path):
    from brats_fl.model import BratsSegResNet

    other = tmp_path / "segresnet.pt"
    torch.save(BratsSegResNet().state_dict(), other)
    with pytest.raises(UserError, match="do not fit a 224-pixel PatchClassifier"):
        export_bundle(other, tmp_path / "b1")
    stained = tmp_path / "macenko.pt"
    torch.save({"model": PatchClassifier(PATCH).state_dict(),
                "train_conf": {"patch_size": PATCH, "stain_normalization": "macenko"}}, stained)
    with pytest.raises(UserError, match="stain-normalised"):
        export_bundle(stained, tmp_path / "b2")
    foreign = tmp_path / "theirs"
    (foreign / "models").mkdir(parents=True)
    (foreign / "models" / "model.pt").write_text("mine")
    with pytest.raises(UserError, match="model.pt"):
        export_bundle(run_checkpoint, foreign)
    assert (foreign / "models" / "model.pt").read_text() == "mine"
    again = export_bundle(run_checkpoint, tmp_path / "ours")
    assert export_bundle(run_checkpoint, again) == again
    with pytest.raises(UserError, match="a folder"):
        export_bundle(again, tmp_path / "b3")
