"""Shared fixtures: small generated data sets, built once per test session."""

from __future__ import annotations

import pytest

from demodata.brats import generate_dataset as generate_brats
from demodata.camelyon import generate_dataset as generate_slides

from .support import SMALL_SLIDE, TINY_BRATS_SHAPE


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory):
    """A BraTS root with 3 HGG and 3 LGG cases at a tiny shape."""
    root = tmp_path_factory.mktemp("brats")
    generate_brats(root, 3, 3, shape=TINY_BRATS_SHAPE, seed=0)
    return root


@pytest.fixture(scope="session")
def camelyon_root(tmp_path_factory):
    """A Camelyon16-format training set with two tumour and two normal slides of 3072 x 2048 pixels."""
    root = tmp_path_factory.mktemp("camelyon")
    generate_slides(root, 2, 2, *SMALL_SLIDE, seed=0)
    return root


@pytest.fixture(scope="session")
def camelyon_patches(camelyon_root, tmp_path_factory):
    """Tissue masks and a 64-pixel patch list (60 tumour patches per tumour slide) of ``camelyon_root``."""
    from metastasis.data.patch_lists import write_patch_list
    from metastasis.data.sampling import find_training_slides, generate_patch_list

    out = tmp_path_factory.mktemp("camelyon_patches")
    sources = find_training_slides(camelyon_root, out / "masks")
    patches = generate_patch_list(sources, tumor_per_slide=60, patch_size=64, validation_fraction=0.5, seed=0)
    return write_patch_list(out / "patches.json", patches, camelyon_root)
