"""Clara's network: ResNet18 whose last fully connected layer is a 1x1 convolution, so it is fully convolutional.

Built from MONAI's ResNet (no torchvision) with torchvision's layout: the same 122 state-dict keys (``conv1``,
``bn1``, ``layer1.0.conv1`` ... ``layer4.1.bn2``, ``fc``), stride-2 7x7 stem, bias-free 1x1 downsample convolutions.
ImageNet ResNet18 weights saved by torchvision therefore load into it (:func:`load_pretrained`); only ``fc``
differs, a (1, 512, 1, 1) convolution instead of a (1000, 512) linear layer.

Shapes: input (N, 3, H, W) normalised RGB (:func:`metastasis.data.transforms.to_input`); for a 224x224 patch the output
is (N, 1, 1, 1), one tumour logit. On a larger tile the same network gives a map of logits with one output per
32 input pixels: output (i, j) scores the ``patch_size`` window whose top-left corner is at (32 i, 32 j) (the
average pool is a ``patch_size / 32`` window with stride 1) -- the basis of tiled inference. It is not bit-equal
to classifying that window alone: inside a tile the window's border pixels see real neighbours where a lone patch
sees the convolutions' zero padding.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medcore.errors import UserError
from medcore.files import load_torch, resolve_path, state_dict_of
from medcore.seeding import seeded
from medflare.bundle import BUNDLE_WEIGHTS, read_bundle

from .config import STAIN_NORMALIZATIONS

__all__ = ["OUTPUT_STRIDE", "FullyConvolutionalResNet18", "PatchClassifier", "fold_batchnorm", "load_pretrained",
           "load_checkpoint"]

logger = logging.getLogger(__name__)

#: Input pixels per output pixel when the network runs fully convolutionally.
OUTPUT_STRIDE = 32


class FullyConvolutionalResNet18(ResNet):
    """ResNet18 with a 1x1-convolution head: (N, 3, H, W) -> (N, 1, (H - patch_size) / 32 + 1, ...) logits.

    The architecture alone (plain MONAI and PyTorch: a MONAI bundle's scripts carry this class as it is).

    Args:
        patch_size: training patch size in pixels (a multiple of 32, at least 32); sets the average-pool window.
    """

    def __init__(self, patch_size: int = 224) -> None:
        if patch_size < OUTPUT_STRIDE or patch_size % OUTPUT_STRIDE:
            raise ValueError(f"patch_size must be a positive multiple of {OUTPUT_STRIDE}, got {patch_size}")
        super().__init__(block=ResNetBlock, layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512],
                         spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, shortcut_type="B",
                         bias_downsample=False, num_classes=1, feed_forward=False)
        self.fc = nn.Conv2d(512, 1, kernel_size=1)
        self.patch_size = patch_size
        self.avgpool = nn.AvgPool2d(patch_size // OUTPUT_STRIDE, stride=1)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.patch_size or x.shape[-2] < self.patch_size:
            raise ValueError(f"input {list(x.shape)} is smaller than the {self.patch_size}-pixel patch")
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x))


class PatchClassifier(FullyConvolutionalResNet18):
    """The project's patch classifier: :class:`FullyConvolutionalResNet18` with seeded initial weights and,
    optionally, pretrained backbone weights.

    Args:
        patch_size: training patch size in pixels (a multiple of 32, at least 32); sets the average-pool window.
        seed: the initial weights are a function of it alone (:func:`medcore.seeding.seeded`; ``None``: torch's
            global generator).
        pretrained: a local file of ResNet18 weights (``$VARS`` and ``~`` expanded) loaded over the initial weights
            by :func:`load_pretrained`; empty: none. In a FLARE job the server builds the first global model this
            way, so the file must be on the server.
    """

    def __init__(self, patch_size: int = 224, seed: int | None = None, pretrained: str | Path = "") -> None:
        with seeded(seed):
            super().__init__(patch_size)
        # Every argument kept under its own name: FLARE's job API exports a model component from them (FedOpt).
        self.seed, self.pretrained = seed, str(pretrained)
        if pretrained:
            path = resolve_path(str(pretrained), "pretrained")
            skipped = load_pretrained(self, path)
            logger.info("loaded pretrained weights from %s%s", path,
                        f" (kept the new head: {skipped})" if skipped else "")


def fold_batchnorm(model: PatchClassifier) -> PatchClassifier:
    """An inference copy of ``model`` with every batch norm folded into the convolution before it.

    In evaluation a batch norm is an affine map per channel, so it can be merged into the preceding convolution's
    weights and bias: the same function with one pass over each activation less, and no float32 round trip of the
    activations between a bf16 convolution and its norm. On this CPU whole-slide tiles run about 1.2x faster; the
    probabilities move by float rounding only. ``model`` itself is left as it is.
    """
    folded = copy.deepcopy(model).eval()
    folded.conv1, folded.bn1 = fuse_conv_bn_eval(folded.conv1, folded.bn1), nn.Identity()
    for layer in (folded.layer1, folded.layer2, folded.layer3, folded.layer4):
        for block in layer:
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
            if block.downsample is not None:
                conv, norm = block.downsample
                block.downsample = nn.Sequential(fuse_conv_bn_eval(conv, norm))
    return folded


def load_pretrained(model: PatchClassifier, path: str | Path) -> list[str]:
    """Load ResNet18 backbone weights (e.g. torchvision's ImageNet ``resnet18-*.pth``) from a local file.

    Every backbone tensor must be present with the right shape; the head is taken when it fits (a linear
    ``fc`` with one output is reshaped to the 1x1 convolution) and otherwise left at its initialisation.
    Returns the keys that were not loaded.
    """
    path = Path(path)
    state = state_dict_of(load_torch(path, "pretrained weights file", unreadable="cannot read pretrained weights"),
                           path)
    own = model.state_dict()
    missing = [k for k in own if not k.startswith("fc.") and k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if not k.startswith("fc.") and k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise UserError(f"{path}: not a ResNet18 state dict (missing {missing[:5]}, mismatched {wrong[:5]})")
    skipped = []
    for key in ("fc.weight", "fc.bias"):
        value = state.get(key)
        if value is not None and value.numel() == own[key].numel():
            state[key] = value.reshape(own[key].shape)
        else:
            state.pop(key, None)
            skipped.append(key)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return skipped


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[PatchClassifier, dict]:
    """A trained model and its checkpoint metadata, from a file written by training (or a bare state dict), or from
    a MONAI bundle folder :mod:`metastasis.bundle` wrote."""
    path = Path(path)
    if path.is_dir():  # a MONAI bundle (metastasis.bundle): its weights, and its recipe's settings as train_conf
        state, _, train_conf = read_bundle(path)
        checkpoint, path = {"model": state, "train_conf": train_conf}, path / BUNDLE_WEIGHTS
    else:
        checkpoint = load_torch(path, "checkpoint", unreadable="cannot read checkpoint")
    meta = {k: v for k, v in checkpoint.items() if k != "model"} if isinstance(checkpoint, dict) else {}
    train_conf = meta.setdefault("train_conf", {})
    patch_size = train_conf.get("patch_size", 224) if isinstance(train_conf, dict) else None
    if not isinstance(patch_size, int) or patch_size < OUTPUT_STRIDE or patch_size % OUTPUT_STRIDE:
        raise UserError(f"{path}: its train_conf has no valid patch_size (got {patch_size!r})")
    # Checkpoints from before stain normalisation existed were trained without it.
    stain = train_conf.setdefault("stain_normalization", "none")
    if stain not in STAIN_NORMALIZATIONS:
        raise UserError(f"{path}: its train_conf has an unknown stain_normalization {stain!r} (known: "
                        f"{', '.join(STAIN_NORMALIZATIONS)})")
    model = PatchClassifier(patch_size)
    try:
        model.load_state_dict(state_dict_of(checkpoint, path))
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit a {patch_size}-pixel PatchClassifier ({err})") from err
    return model.to(device).eval(), meta
