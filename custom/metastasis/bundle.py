"""A trained patch classifier as a MONAI bundle: whole-slide probability maps without this project's code.

``export_bundle(checkpoint, out)`` writes the layout of :mod:`medflare.bundle` (MONAI's model zoo layout, as its
``pathology_tumor_detection``), with ``scripts/metastasis.py`` and::

    python -m monai.bundle run --config_file OUT/configs/inference.json --bundle_root OUT \\
        --dataset_dir SLIDES --output_dir MAPS [--stride 32] [--mode tiled|patch]

Every slide under ``dataset_dir`` (``*.tif``, as ``metastasis infer`` takes folders) becomes ``NAME.npy`` and
``NAME.json`` in the project's map format (:mod:`metastasis.inference.maps`; ``metastasis detect`` and
``evaluate`` read them), computed as ``metastasis infer --no-amp`` computes it: the same tissue mask (Otsu on
saturation at 1/32), the same map pixels, the same tiles. The script is not a second implementation: it is this
project's own functions, copied by :func:`bundle_script` from their modules (listed in :data:`CARRIED`), plus the
loop that drives them. Maps agree with ``metastasis infer --no-amp`` within 1e-5 (``infer`` folds the batch norms
into the convolutions, the bundle runs the network as trained; the difference is float rounding, tested).

A checkpoint trained on stain-normalised patches (``stain_normalization = macenko``) is refused: its bundle would
also need the stain estimate, which is not carried yet.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import openslide
import skimage

from medcore.errors import UserError
from medflare.bundle import (base_metadata, bundle_readme, checkpoint_provenance, cross_site_metrics, inference_base,
                             ONNX_OPSET, write_bundle)

from . import config as config_module
from . import model as model_module
from .data import slide as slide_module
from .data import tissue as tissue_module
from .data import transforms as transforms_module
from .inference import geometry as geometry_module
from .model import FullyConvolutionalResNet18, load_checkpoint
from .report import METASTASIS_REPORT

__all__ = ["CARRIED", "bundle_script", "export_bundle", "network_of"]

logger = logging.getLogger(__name__)

#: What the bundle's script carries of this project, by module: functions and classes (their source, as it is)
#: and constants (their values).
CARRIED = (
    (slide_module, ("_BLOCK",), ("slide_mpp", "read_rgb", "read_downsampled")),
    (tissue_module, (), ("tissue_mask",)),
    (geometry_module, (), ("MapGeometry", "tissue_pixels", "tile_plan")),
    (transforms_module, ("IMAGENET_MEAN", "IMAGENET_STD"), ("to_unit", "_mean_std", "to_input")),
    (model_module, ("OUTPUT_STRIDE",), ("FullyConvolutionalResNet18",)),
    (config_module, ("DEFAULT_TILE_PIXELS",), ("default_tile_outputs",)),
)

_HEADER = '''"""Whole-slide tumour probability maps for this bundle's inference config (MONAI, PyTorch, OpenSlide,
scikit-image; nothing of the project that exported it).

The functions and classes between the two rulers below are the project's own (clara-open, {modules}), copied as
they are; the driver at the end runs them as ``metastasis infer --no-amp`` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import openslide
import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects
from torch import nn


class SlideError(RuntimeError):
    """A slide that cannot be opened or a request it cannot serve; the message names the file."""


'''

_DRIVER = '''

# ---------------------------------------------------------------------------------------------------------------
# The driver: finds the slides, computes each map as ``metastasis infer --no-amp`` does, writes NAME.npy + NAME.json.

#: The tissue mask's view of the slide (``metastasis.data.tissue.compute_tissue_mask``'s default).
TISSUE_DOWNSAMPLE = 32.0


def slides(dataset_dir):
    """Every ``*.tif`` slide under ``dataset_dir``, in name order."""
    found = sorted(p for p in Path(dataset_dir).rglob("*.tif") if p.is_file())
    if not found:
        raise FileNotFoundError(f"no .tif slides under {dataset_dir}")
    return found


def load_network(network, weights, device):
    """``network`` with the bundle's weights, in evaluation mode on ``device``."""
    network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return network.to(device).eval()


def probability_map(slide, path, network, stride, mode, tile_outputs, batch_size, device):
    """The tumour probability map of an open slide (rows, cols) float32 and its description."""
    rgb, effective, _ = read_downsampled(slide, TISSUE_DOWNSAMPLE, path)
    mask, _ = tissue_mask(rgb, slide_mpp(slide, path) * effective)
    geometry = MapGeometry(stride, network.patch_size, tuple(slide.dimensions))
    todo = tissue_pixels(geometry, SimpleNamespace(mask=mask, downsample=effective))

    def probabilities(batch):
        with torch.inference_mode():
            return torch.sigmoid(network(to_input(batch).to(device)).float()).cpu().numpy()

    out = np.zeros(geometry.shape, np.float32)
    half = geometry.patch_size // 2
    if mode == "patch":
        rows, cols = np.nonzero(todo)
        xs, ys = geometry.centres(rows, cols)
        size = (geometry.patch_size, geometry.patch_size)
        for start in range(0, len(rows), batch_size):
            stop = min(start + batch_size, len(rows))
            batch = np.stack([read_rgb(slide, (int(x) - half, int(y) - half), 0, size, path, pad_outside=True)
                              for x, y in zip(xs[start:stop], ys[start:stop])])
            out[rows[start:stop], cols[start:stop]] = probabilities(batch).reshape(-1)
    elif mode == "tiled":
        if stride % OUTPUT_STRIDE:
            raise ValueError(f"the tiled mode needs a stride that is a multiple of {OUTPUT_STRIDE}, got {stride}")
        k = stride // OUTPUT_STRIDE

        def side(n):
            return geometry.patch_size + OUTPUT_STRIDE * k * (n - 1)

        ox, oy = geometry.origin
        for i0, j0, h, w in tile_plan(todo, tile_outputs, side):
            x, y = int(ox + j0 * stride) - half, int(oy + i0 * stride) - half
            tile = read_rgb(slide, (x, y), 0, (side(w), side(h)), path, pad_outside=True)
            out[i0:i0 + h, j0:j0 + w] = probabilities(tile[None])[0, 0][::k, ::k][:h, :w]
        out *= todo
    else:
        raise ValueError(f"mode must be tiled or patch, got {mode!r}")
    return out, {"mode": mode, **geometry.to_dict(), "tissue_outputs": int(todo.sum())}


def infer(network, weights, dataset_dir, output_dir, stride, mode, tile_outputs, batch_size, device):
    """A probability map per slide of ``dataset_dir``, written to ``output_dir`` as NAME.npy and NAME.json."""
    network = load_network(network, weights, device)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in slides(dataset_dir):
        with openslide.OpenSlide(str(path)) as slide:
            probs, description = probability_map(slide, path, network, stride, mode, tile_outputs, batch_size,
                                                  device)
            mpp = slide_mpp(slide, path)
        np.save(out_dir / f"{path.stem}.npy", probs)
        (out_dir / f"{path.stem}.json").write_text(json.dumps({
            **description, "slide": str(path.resolve()), "mpp": mpp,
            "max_probability": float(probs.max()) if probs.size else 0.0, "checkpoint": str(weights),
            "made_with": {"bundle": str(Path(weights).resolve().parent.parent), "slide": path.name}}, indent=1))
        print(f"{path.name}: {description['tissue_outputs']} tissue outputs, max probability {probs.max():.3f}")
'''


def bundle_script() -> str:
    """The bundle's ``scripts/metastasis.py``: the header, each of :data:`CARRIED` from its module (constants by
    value, functions and classes by source), and the driver."""
    parts, modules = [], []
    for module, constants, objects in CARRIED:
        modules.append(module.__name__)
        parts.append(f"# --- from {module.__name__} " + "-" * (100 - len(module.__name__)))
        parts += [f"{name} = {getattr(module, name)!r}" for name in constants]
        parts += [inspect.getsource(getattr(module, name)) for name in objects]
    return _HEADER.format(modules=", ".join(modules)) + "\n\n".join(parts) + _DRIVER


def network_of(model: FullyConvolutionalResNet18) -> FullyConvolutionalResNet18:
    """The architecture alone (no seed or pretrained-weights arguments) with ``model``'s weights, in evaluation
    mode: what the bundle's config builds and its ``model.pt`` and ``model.ts`` hold."""
    net = FullyConvolutionalResNet18(model.patch_size)
    net.load_state_dict(model.state_dict(), strict=True)
    return net.eval()


def _metadata(model: FullyConvolutionalResNet18, meta: dict, checkpoint: Path) -> dict:
    eval_metrics, evaluation = cross_site_metrics(checkpoint, METASTASIS_REPORT)
    p = model.patch_size
    provenance = checkpoint_provenance(checkpoint, meta.get("train_conf", {}), evaluation, inference={
        "stride": 32, "mode": "tiled", "tissue": "Otsu threshold of HSV saturation at 1/32 of level 0"})
    return {
        **base_metadata(checkpoint, "metastasis export-bundle", {
            "openslide-python": openslide.__version__, "scikit-image": skimage.__version__}),
        "name": "Camelyon16 metastasis detection (ResNet18 patch classifier)",
        "task": "Tumour probability maps of lymph node whole-slide images (breast cancer metastases)",
        "description": "ResNet18 patch classifier trained with NVIDIA FLARE on Camelyon16-format slides, as Clara "
                       "Train 4.1's pathology metastasis model; its 1x1-convolution head makes it fully "
                       f"convolutional, so a whole slide's map is computed in large tiles. Input: {p}x{p} RGB "
                       "patches of level 0; output: one tumour logit per patch.",
        "data_source": "Camelyon16 layout (https://camelyon16.grand-challenge.org/Data/)",
        "data_type": "tiff",
        "image_classes": "RGB patch of level 0, scaled to [0, 1] and normalised with the ImageNet mean and "
                         "standard deviation",
        "label_classes": "1: tumour (metastasis), 0: normal",
        "pred_classes": "one logit per patch (sigmoid: tumour probability)",
        "eval_metrics": eval_metrics,
        "references": [
            "Ehteshami Bejnordi et al. Diagnostic Assessment of Deep Learning Algorithms for Detection of Lymph Node "
            "Metastases in Women With Breast Cancer. JAMA 2017.",
            "NVIDIA Clara Train 4.1: clara_pt_pathology_metastasis_detection (model card).",
            "He et al. Deep Residual Learning for Image Recognition. CVPR 2016."],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "light microscopy",
                                 "num_channels": 3, "spatial_shape": [p, p], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "modality": "n/a",
                                 "num_channels": 1, "spatial_shape": [1, 1], "dtype": "float32",
                                 "value_range": [], "is_patch_data": True, "channel_def": {"0": "tumour logit"}}},
        },
        "provenance": provenance,
    }


def _inference_config(model: FullyConvolutionalResNet18) -> dict:
    return {
        **inference_base("metastasis", "/workspace/data/camelyon16/testing/images"),
        "patch_size": model.patch_size,
        "network_def": "$@scripts.FullyConvolutionalResNet18(@patch_size)",
        "weights": "$@bundle_root + '/models/model.pt'",
        "stride": 32,
        "mode": "tiled",
        "tile_outputs": "$@scripts.default_tile_outputs(@stride, @patch_size)",
        "batch_size": 32,
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@scripts.infer(@network_def, @weights, @dataset_dir, @output_dir, @stride, @mode, "
                "@tile_outputs, @batch_size, @device)"],
    }


def _readme(metadata: dict) -> str:
    return bundle_readme(metadata, f"""
```
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/slides --output_dir /path/to/maps [--stride 32] [--mode tiled]
```

Every `*.tif` slide under `dataset_dir` becomes `NAME.npy` (float32 tumour probabilities, the slide at 1/stride:
map pixel (i, j) is the {metadata['network_data_format']['inputs']['image']['spatial_shape'][0]}-pixel window
centred at level-0 (stride/2 + j stride, stride/2 + i stride); 0 off tissue) and `NAME.json` (its geometry, the
slide's path and microns per pixel, the maximum probability). Only windows centred on tissue are classified (Otsu
threshold of HSV saturation at 1/32 of level 0). `--mode tiled` (default) runs the fully convolutional network on
large tiles and needs a stride that is a multiple of 32; `--mode patch` classifies each window on its own. It
needs monai, torch, openslide-python and scikit-image.

`models/model.ts` is the same network as TorchScript: `torch.jit.load("models/model.ts")` takes (B, 3, H, W)
normalised RGB and returns one tumour logit per 32 pixels of stride. `models/model.onnx` is the same network as
ONNX (opset {ONNX_OPSET}; input `image`, output `logits`, batch, H and W dynamic; H and W at least the patch size,
which ONNX does not check), checked against PyTorch with ONNX Runtime (`metadata.json`'s `onnx` entry gives the
differences). MONAI Label and MONAI Deploy load a bundle folder like this one as it is (MONAI Deploy's
`MonaiBundleInferenceOperator`, MONAI Label's bundle apps).
""")


def export_bundle(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the MONAI bundle of a patch-classifier checkpoint (any of :func:`~metastasis.model.load_checkpoint`'s)
    to ``out_dir``; an existing folder is replaced only file by file and only if it is a bundle this project
    wrote. Returns ``out_dir``."""
    checkpoint, out = Path(checkpoint), Path(out_dir)
    if checkpoint.is_dir():
        raise UserError(f"{checkpoint}: a folder; export-bundle takes a checkpoint file")
    model, meta = load_checkpoint(checkpoint)
    if meta["train_conf"]["stain_normalization"] != "none":
        raise UserError(f"{checkpoint}: trained on stain-normalised patches (stain_normalization = "
                        f"{meta['train_conf']['stain_normalization']}); a bundle does not carry the stain estimate "
                        "yet, so it cannot reproduce this model's inputs")
    metadata = _metadata(model, meta, checkpoint)
    size = model.patch_size  # ONNX traced on one window and checked on a larger tile: the axes are dynamic
    write_bundle(out, "metastasis", network_of(model), metadata, _inference_config(model), bundle_script(),
                 _readme(metadata), onnx_shapes=[(1, 3, size, size), (2, 3, size + 64, size + 32)])
    logger.info("%s: MONAI bundle of %s (%d eval metrics)", out, checkpoint, len(metadata["eval_metrics"]))
    return out
