"""A trained BraTS model as a MONAI bundle: what a radiology deployment team runs without this project's code.

``export_bundle(checkpoint, out)`` writes the bundle layout MONAI's model zoo uses (``brats_mri_segmentation``)::

    OUT/configs/metadata.json    MONAI's bundle metadata, with the model's provenance and measured numbers
    OUT/configs/inference.json   python -m monai.bundle run --config_file OUT/configs/inference.json
                                 [--dataset_dir CASES] [--output_dir SEGMENTATIONS]
    OUT/models/model.pt          the SegResNet's state dict (MONAI's ``SegResNet``, no VAE branch)
    OUT/models/model.ts          the same network as TorchScript
    OUT/scripts/brats.py         the two pieces MONAI lacks: finding the cases, TC/WT/ET masks to BraTS labels
    OUT/docs/README.md, OUT/LICENSE

The inference config is MONAI's own pieces (``LoadImaged`` of the four contrasts, ``NormalizeIntensityd`` over
the brain, ``SlidingWindowInferer`` with the checkpoint's window and overlap, sigmoid, threshold 0.5, labels,
``SaveImaged``), so a case's segmentation is the one ``brats-fl infer --window sliding --no-amp`` writes, voxel for
voxel (tested, in a process that cannot import this project).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel
from monai.networks.nets import SegResNet

from medflare.bundle import (base_metadata, bundle_readme, checkpoint_provenance, cross_site_metrics, inference_base,
                             ONNX_OPSET, write_bundle)

from .config import TrainConfig
from .data import MODALITIES
from .model import BratsSegResNet, load_checkpoint
from .report import BRATS_REPORT

__all__ = ["export_bundle", "segresnet_of"]

logger = logging.getLogger(__name__)

#: The bundle's code (``scripts/brats.py``): plain MONAI and nibabel, nothing of this project. Its label rule is
#: :func:`brats_fl.metrics.regions_to_labels`' (tested equal).
_SCRIPT = '''"""Case discovery and BraTS labels for this bundle's inference config (MONAI only)."""

from pathlib import Path

import numpy as np
import torch
from monai.data import decollate_batch
from monai.transforms import MapTransform

CONTRASTS = {contrasts!r}


def cases(dataset_dir):
    """Every case folder under ``dataset_dir`` holding the four contrasts (``CASE/CASE_t1ce.nii.gz``, ...), as
    ``{{"image": [t1ce, t1, t2, flair], "name": CASE}}``, in name order."""
    found = []
    for t1ce in sorted(Path(dataset_dir).rglob("*_t1ce.nii.gz")):
        name = t1ce.name[: -len("_t1ce.nii.gz")]
        files = [t1ce.parent / f"{{name}}_{{c}}.nii.gz" for c in CONTRASTS]
        if all(f.is_file() for f in files):
            found.append({{"image": [str(f) for f in files], "name": name}})
    if not found:
        raise FileNotFoundError(f"no BraTS case (CASE/CASE_t1ce.nii.gz and the other contrasts) under {{dataset_dir}}")
    return found


def infer(network, weights, dataloader, inferer, postprocessing, device):
    """Load ``weights`` into ``network``, run ``inferer`` over every case of ``dataloader`` and post-process each
    (the last step saves it): what MONAI's SupervisedEvaluator does, without needing pytorch-ignite."""
    network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    network.to(device).eval()
    with torch.no_grad():
        for batch in dataloader:
            batch["pred"] = inferer(batch["image"].to(device), network)
            for case in decollate_batch(batch):
                postprocessing(case)


class RegionsToLabelsd(MapTransform):
    """(3, X, Y, Z) TC, WT, ET masks -> (1, X, Y, Z) BraTS labels (uint8, the image's metadata kept): WT 2, inside
    TC 1, inside ET 4."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            masks = d[key]
            regions = (masks.as_tensor() if hasattr(masks, "as_tensor") else torch.as_tensor(masks)) > 0.5
            labels = (masks[:1] * 0).to(torch.uint8)  # a MetaTensor stays one, with its affine
            labels[0][regions[1]] = 2
            labels[0][regions[0]] = 1
            labels[0][regions[2]] = 4
            d[key] = labels
        return d
'''


def segresnet_of(model: BratsSegResNet) -> SegResNet:
    """The segmentation network of ``model`` as MONAI's plain ``SegResNet`` (the VAE branch, a training aid, left
    out), in evaluation mode."""
    net = SegResNet(spatial_dims=3, init_filters=model.init_filters, in_channels=4, out_channels=3,
                    dropout_prob=model.dropout, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    state = {k: v for k, v in model.net.state_dict().items() if not k.startswith("vae_")}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _metadata(model: BratsSegResNet, extras: dict, checkpoint: Path, config: TrainConfig) -> dict:
    eval_metrics, evaluation = cross_site_metrics(checkpoint, BRATS_REPORT)
    train_conf = extras.get("train_conf") if isinstance(extras.get("train_conf"), dict) else {}
    contrasts = {str(i): {"type": "image", "description": m.upper()} for i, m in enumerate(MODALITIES)}
    provenance = checkpoint_provenance(checkpoint, train_conf, evaluation, inference={
        "window": "sliding", "roi": list(config.crop), "overlap": config.val_overlap})
    provenance["checkpoint"]["vae_branch_in_training"] = bool(model.vae)
    return {
        **base_metadata(checkpoint, "brats-fl export-bundle", {"nibabel": nibabel.__version__}),
        "name": "BraTS 2018 brain tumour segmentation (federated SegResNet)",
        "task": "Segmentation of tumour core, whole tumour and enhancing tumour in multimodal brain MRI",
        "description": "SegResNet (Myronenko 2018) trained with NVIDIA FLARE on BraTS 2018-format data, as Clara "
                       "Train 4.1's federated BraTS model: 4 MRI contrasts in, TC/WT/ET masks out, written as BraTS "
                       "labels (1 necrotic and non-enhancing core, 2 oedema, 4 enhancing tumour).",
        "data_source": "BraTS 2018 release layout (https://www.med.upenn.edu/sbia/brats2018/data.html)",
        "data_type": "nibabel",
        "image_classes": "4 channels: T1c, T1, T2, FLAIR MRI, co-registered and skull-stripped, each normalised to "
                         "zero mean and unit deviation over its brain voxels",
        "label_classes": "3 channels: tumour core (TC), whole tumour (WT), enhancing tumour (ET)",
        "pred_classes": "3 channels of logits (sigmoid > 0.5 per region); saved as BraTS labels 0/1/2/4",
        "eval_metrics": eval_metrics,
        "references": [
            "Myronenko, A. 3D MRI brain tumor segmentation using autoencoder regularization. BrainLes 2018.",
            "NVIDIA Clara Train 4.1: clara_pt_fed_learning_brain_tumor_mri_segmentation (model card).",
            "Menze et al. The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS). IEEE TMI 2015."],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [],
                                 "is_patch_data": True, "channel_def": contrasts}},
            "outputs": {"pred": {"type": "image", "format": "classes", "modality": "n/a", "num_channels": 3,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [],
                                 "is_patch_data": True,
                                 "channel_def": {"0": "tumour core", "1": "whole tumour", "2": "enhancing tumour"}}},
        },
        "provenance": provenance,
    }


def _inference_config(config: TrainConfig) -> dict:
    keys = ["image"]
    return {
        **inference_base("brats", "/workspace/data/brats"),
        "datalist": "$@scripts.cases(@dataset_dir)",
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "init_filters": 16, "in_channels": 4,
                        "out_channels": 3, "dropout_prob": 0.2, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": keys, "reader": "NibabelReader", "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            {"_target_": "EnsureTyped", "keys": keys, "dtype": "$torch.float32"},
            {"_target_": "NormalizeIntensityd", "keys": keys, "nonzero": True, "channel_wise": True}]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(config.crop), "sw_batch_size": 1,
                    "overlap": config.val_overlap},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            "$@scripts.RegionsToLabelsd(keys='pred')",
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "print_log": False}]},
        "weights": "$@bundle_root + '/models/model.pt'",
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@scripts.infer(@network, @weights, @dataloader, @inferer, @postprocessing, @device)"],
    }


def _readme(metadata: dict) -> str:
    prov = metadata["provenance"]
    return bundle_readme(metadata, f"""
```
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/cases --output_dir /path/to/segmentations
```

`dataset_dir` holds BraTS case folders (`CASE/CASE_t1ce.nii.gz`, `_t1.nii.gz`, `_t2.nii.gz`, `_flair.nii.gz`, in
any sub-folders); each case becomes `CASE_t1ce_seg.nii.gz` (uint8 BraTS labels 0/1/2/4) in the input's voxel grid
and affine. It needs monai, torch and nibabel only. Sliding windows of {prov['inference']['roi']} voxels overlapping
by {prov['inference']['overlap']}, as in training's validation.

`models/model.ts` is the same network as TorchScript: `torch.jit.load("models/model.ts")` takes (B, 4, X, Y, Z)
with X, Y, Z divisible by 8 and returns TC, WT, ET logits. `models/model.onnx` is the same network as ONNX (opset
{ONNX_OPSET}; input `image`, output `logits`, batch and X, Y, Z dynamic), checked against PyTorch with ONNX Runtime
(`metadata.json`'s `onnx` entry gives the differences). MONAI Label and MONAI Deploy load a bundle folder like this
one as it is (MONAI Deploy's `MonaiBundleInferenceOperator`, MONAI Label's bundle apps).
""")


def export_bundle(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the MONAI bundle of a BraTS checkpoint (any of :func:`~brats_fl.model.load_checkpoint`'s) to
    ``out_dir``; an existing folder is replaced only file by file and only if it is a bundle this function wrote.
    Returns ``out_dir``."""
    checkpoint, out = Path(checkpoint), Path(out_dir)
    model, extras = load_checkpoint(checkpoint)
    conf = extras.get("train_conf") if isinstance(extras.get("train_conf"), dict) else {}
    config = TrainConfig.from_dict({k: conf[k] for k in ("crop", "val_overlap") if k in conf})
    metadata = _metadata(model, extras, checkpoint, config)
    # ONNX traced on a small volume and checked on another size (X, Y, Z divisible by 8): the axes are dynamic
    write_bundle(out, "brats", segresnet_of(model), metadata, _inference_config(config),
                 _SCRIPT.format(contrasts=list(MODALITIES)), _readme(metadata),
                 onnx_shapes=[(1, len(MODALITIES), 32, 32, 32), (2, len(MODALITIES), 48, 40, 24)])
    logger.info("%s: MONAI bundle of %s (%d eval metrics)", out, checkpoint, len(metadata["eval_metrics"]))
    return out
