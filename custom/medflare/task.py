"""What a task package declares once, so that the FLARE layer and the shared sub-commands need no project names.

Each task package (``brats_fl``, ``metastasis``) has one :class:`TaskSpec` in its ``task`` module: its committed
job and provisioning project file (inside a checkout of the repository), the packages its job ships to the sites,
the environment variable through which a site finds its data, its recipe, its report, its learner and the score
the server selects the best model on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medcore.errors import UserError
from medcore.settings import Settings

from .crosssite import ReportSpec

__all__ = ["TaskSpec", "repository_path"]

#: The repository checkout the installed code lives in (``custom/<package>`` -> the root), when it is one.
_REPOSITORY = Path(__file__).resolve().parents[2]


def repository_path(relative: str, option: str) -> Path:
    """A committed file or folder of the repository (``jobs/...``, ``provisioning/...``); a
    :class:`~medcore.errors.UserError` naming ``option`` when the code is installed without the checkout."""
    path = _REPOSITORY / relative
    if not path.exists():
        raise UserError(f"{relative}: not found next to the installed code (looked in {_REPOSITORY}); the committed "
                        f"jobs and project files live in a checkout of the repository: pass {option}")
    return path


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One federated task.

    Attributes:
        job: the committed job folder, relative to the repository root (``jobs/brats_fl``).
        project: the provisioning project file, relative to the repository root.
        packages: the packages the job runs, shipped in its ``app/custom``.
        data_variable: environment variable through which each site finds its data.
        clients: clients of the committed job (``nvflare simulator JOB -n clients``).
        recipe: the training recipe (a :class:`~medcore.settings.Settings` dataclass).
        report: what the cross-site results hold.
        learner: dotted path of the site's FLARE learner, which builds the model, datasets and scorer from the
            recipe (``learner`` in the job's client configuration).
        key_metric: the validation score the server selects the global best model on (the ``key_metric`` of the
            job's ``IntimeModelSelector``, and what the learner sends in ``initial_metrics``).
    """

    job: str
    project: str
    packages: tuple[str, ...]
    data_variable: str
    clients: int
    recipe: type[Settings]
    report: ReportSpec
    learner: str
    key_metric: str

    def job_template(self) -> Path:
        """The committed job folder."""
        return repository_path(self.job, "--template")

    def project_file(self) -> Path:
        """The committed provisioning project file."""
        return repository_path(self.project, "--project")
