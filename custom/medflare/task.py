"""What a task package declares once, so that the FLARE layer and the shared sub-commands need no project names.

Each task package (``brats_fl``, ``metastasis``) has one :class:`TaskSpec` in its ``task`` module: its job's name,
the packages its job ships to the sites, the environment variable through which a site finds its data, its training
settings, its report and the score the server selects the best model on. Its ``job`` module builds the job from it
(:class:`medflare.recipe.TaskRecipe`).
"""

from __future__ import annotations

import dataclasses

from medcore.training import TrainingSettings

from .crosssite import ReportSpec

__all__ = ["TaskSpec", "is_job_id"]


def is_job_id(text: str) -> bool:
    """Whether ``text`` can be the id FLARE gave a job (it names a folder in a workspace: no path)."""
    return bool(text) and "/" not in text and not text.startswith(".")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One federated task.

    Attributes:
        name: the job's name (``meta.json``, the committed ``jobs/<name>`` folder, the simulator's run folder).
        packages: the packages the job runs, shipped in its ``app/custom``.
        data_variable: environment variable through which each site finds its data.
        clients: sites of the default job.
        rounds: federated rounds of the default job (Clara's).
        settings: the training settings (a :class:`~medcore.training.TrainingSettings` dataclass), the sites' ``train``
            block.
        report: what the cross-site results hold.
        key_metric: the validation score the server selects the global best model on (the ``key_metric`` of the
            job's ``IntimeModelSelector``, and what the learner sends in ``initial_metrics``).
        bundle_key_prefix: what the learner's model puts before the names of a MONAI bundle network's weights
            (the bundle holds MONAI's network alone; the task's model may wrap it), so a bundle is scored where a
            checkpoint is.
    """

    name: str
    packages: tuple[str, ...]
    data_variable: str
    clients: int
    rounds: int
    settings: type[TrainingSettings]
    report: ReportSpec
    key_metric: str
    bundle_key_prefix: str = ""
