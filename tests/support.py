"""What several test modules share besides fixtures: the repository's places, the generated data's sizes and
readers of job configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: The repository's root.
REPO = Path(__file__).resolve().parents[1]
#: The committed job folders (exports of the tasks' recipes with the defaults).
JOBS = REPO / "jobs"
TINY_BRATS_SHAPE = (48, 48, 32)
SMALL_SLIDE = (3072, 2048)


def load_job_configs(job_dir) -> tuple[dict, dict]:
    """The server and client configuration of a job folder."""
    config = Path(job_dir) / "app" / "config"
    return tuple(json.loads((config / f"config_fed_{side}.json").read_text()) for side in ("server", "client"))


def component(config: dict, component_id: str) -> dict:
    """The component or workflow ``component_id`` of a FLARE configuration."""
    return next(c for section in ("components", "workflows") for c in config.get(section, [])
                if c.get("id") == component_id)


#: Runs ``monai.bundle run`` where the project's packages cannot be imported (they are installed in this venv):
#: ``python -c ISOLATED CONFIG BUNDLE_ROOT DATASET_DIR OUTPUT_DIR [KEY=VALUE...]`` (values as JSON).
_ISOLATED = '''
import importlib.abc, json, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"brats_fl", "metastasis", "medcore", "medflare", "demodata"}:
            raise ImportError(f"{name}: this project's code must not be needed")

sys.meta_path.insert(0, Blocker())
from monai.bundle import run
overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[5:])}
run("run", config_file=sys.argv[1], bundle_root=sys.argv[2], dataset_dir=sys.argv[3], output_dir=sys.argv[4],
    **overrides)
'''


def run_bundle_isolated(bundle: Path, dataset_dir: Path, output_dir: Path, cwd: Path,
                        **overrides: object) -> subprocess.CompletedProcess:
    """Run a bundle's inference config in a process that cannot import this project; ``overrides``: config values."""
    return subprocess.run([sys.executable, "-c", _ISOLATED, str(bundle / "configs/inference.json"), str(bundle),
                           str(dataset_dir), str(output_dir), *(f"{k}={json.dumps(v)}" for k, v in overrides.items())],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def bundle_metadata(bundle: Path) -> dict:
    """A bundle's ``configs/metadata.json``, checked against MONAI's bundle specification
    (docs/source/mb_specification.rst): its mandatory keys and each tensor's format specifier. The published JSON
    schema is a release download that this offline machine cannot fetch, so the specification's list is checked."""
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format"):
        assert meta[key], key
    for direction in ("inputs", "outputs"):
        for spec in meta["network_data_format"][direction].values():
            for key in ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                        "is_patch_data", "channel_def"):
                assert key in spec, (direction, key)
    return meta
