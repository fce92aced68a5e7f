"""SegResNet of Myronenko 2018 ("3D MRI brain tumor segmentation using autoencoder regularization"), as Clara's
configures it: encoder blocks (1, 2, 2, 4), decoder blocks (1, 1, 1), 16 initial filters, dropout 0.2, 4 input
channels (T1c, T1, T2, FLAIR) and 3 output channels (TC, WT, ET logits; apply a sigmoid)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from monai.networks.nets import SegResNet, SegResNetVAE

from medcore.errors import UserError
from medcore.files import load_torch, state_dict_of
from medcore.seeding import seeded
from medflare.bundle import BUNDLE_WEIGHTS, read_bundle

__all__ = ["BratsSegResNet", "load_checkpoint"]


class BratsSegResNet(torch.nn.Module):
    """Clara's SegResNet, optionally with the VAE regularisation branch of the paper.

    ``forward(x)`` takes (B, 4, X, Y, Z) with X, Y, Z divisible by 8 and returns the (B, 3, X, Y, Z) logits. With
    ``vae=True`` the branch reconstructs the input from a 256-d latent while training; :attr:`vae_loss` then holds
    the last forward's VAE loss (reconstruction L2 + KL), and the input must have the size ``crop``.
    The constructor takes plain values so FLARE's persistor can build it from the job configuration; ``seed``
    makes the initial weights a function of it alone (:func:`medcore.seeding.seeded`; ``None``: torch's global
    generator).
    """

    def __init__(self, vae: bool = False, crop: Sequence[int] = (224, 224, 144), init_filters: int = 16,
                 dropout: float = 0.2, seed: int | None = None) -> None:
        super().__init__()
        common = dict(spatial_dims=3, init_filters=init_filters, in_channels=4, out_channels=3,
                      dropout_prob=dropout, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
        # Every argument kept under its own name: FLARE's job API exports a model component from them (FedOpt).
        self.vae, self.crop, self.init_filters, self.dropout, self.seed = vae, list(crop), init_filters, dropout, seed
        with seeded(seed):
            self.net = SegResNetVAE(input_image_size=tuple(crop), vae_estimate_std=False, vae_default_std=0.3,
                                    vae_nz=256, **common) if vae else SegResNet(**common)
        self.vae_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.vae:
            return self.net(x)
        # SegResNetVAE computes the VAE loss in training mode only (and then needs inputs of size ``crop``).
        logits, loss = self.net(x)
        self.vae_loss = loss if self.training else None
        return logits


def load_checkpoint(path: str | Path) -> tuple[BratsSegResNet, dict]:
    """Build the network from any of the project's checkpoints and return it with the checkpoint's extra entries.

    Accepts FLARE's persisted global models (``FL_global_model.pt``, ``best_FL_global_model.pt``: ``{"model":
    state_dict, "train_conf": ...}``), a site's ``local_best_model.pt`` and a bare state dict. Whether the VAE
    branch is present is read from the weights; with the branch, the crop it was built for is read from the
    VAE's input layer size in ``train_conf`` or, failing that, must match Clara's default.
    """
    path = Path(path)
    if path.is_dir():
        return _from_bundle(path)
    content = load_torch(path, "checkpoint")
    state = state_dict_of(content, path)
    vae = any(".vae_" in k for k in state)
    conf = content.get("train_conf") if isinstance(content, dict) else None
    crop = conf["crop"] if isinstance(conf, dict) and "crop" in conf else (224, 224, 144)
    if not isinstance(crop, (list, tuple)) or len(crop) != 3 or \
            not all(isinstance(c, int) and c > 0 and c % 8 == 0 for c in crop):
        raise UserError(f"{path}: its train_conf crop {crop!r} is not three sizes divisible by 8")
    crop = tuple(crop)
    model = BratsSegResNet(vae=vae, crop=crop)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the BraTS SegResNet ({str(err).splitlines()[0]})") from err
    extras = {k: v for k, v in content.items() if k != "model"} if isinstance(content, dict) and "model" in content \
        else {}
    return model, extras


def _from_bundle(folder: Path) -> tuple[BratsSegResNet, dict]:
    """The network of a MONAI bundle :mod:`brats_fl.bundle` wrote (plain SegResNet weights, no VAE branch), with its
    training settings and window as the ``train_conf`` a checkpoint carries."""
    state, provenance, conf = read_bundle(folder)
    inference = provenance.get("inference") if isinstance(provenance.get("inference"), dict) else {}
    for key, setting in (("roi", "crop"), ("overlap", "val_overlap")):  # the window the bundle infers with
        if key in inference:
            conf[setting] = inference[key]
    model = BratsSegResNet(vae=False)
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{folder / BUNDLE_WEIGHTS}: weights do not fit the BraTS SegResNet "
                        f"({str(err).splitlines()[0]})") from err
    return model, {"train_conf": conf}
