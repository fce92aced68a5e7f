"""Shared fixtures: small generated data sets, built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_fl.synthetic import generate_dataset as generate_brats
from metastasis.synthetic import generate_dataset as generate_slides

TINY_BRATS_SHAPE = (48, 48, 32)
#: The committed job folders (exports of the tasks' recipes with the defaults).
JOBS = Path(__file__).resolve().parents[1] / "jobs"
SMALL_SLIDE = (3072, 2048)


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
    from metastasis.patches import find_training_slides, generate_patch_list, write_patch_list

    out = tmp_path_factory.mktemp("camelyon_patches")
    sources = find_training_slides(camelyon_root, out / "masks")
    patches = generate_patch_list(sources, tumor_per_slide=60, patch_size=64, validation_fraction=0.5, seed=0)
    return write_patch_list(out / "patches.json", patches, camelyon_root)


def load_job_configs(job_dir) -> tuple[dict, dict]:
    """The server and client configuration of a job folder."""
    config = Path(job_dir) / "app" / "config"
    return tuple(json.loads((config / f"config_fed_{side}.json").read_text()) for side in ("server", "client"))


def component(config: dict, component_id: str) -> dict:
    """The component or workflow ``component_id`` of a FLARE configuration."""
    return next(c for section in ("components", "workflows") for c in config.get(section, [])
                if c.get("id") == component_id)
