"""What several test modules share besides fixtures: the repository's places, the generated data's sizes and
readers of job configurations."""

from __future__ import annotations

import json
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
