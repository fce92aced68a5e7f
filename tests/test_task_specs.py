"""Each task spec says what its committed job runs: the two must never drift apart."""

import importlib

import pytest

from brats_fl.task import TASK as BRATS
from medflare.jobs import find_component, load_job_configs
from metastasis.task import TASK as METASTASIS


@pytest.mark.parametrize("task", [BRATS, METASTASIS], ids=["brats_fl", "metastasis"])
def test_committed_job_matches_its_task_spec(task):
    server, client = load_job_configs(task.job_template())
    assert find_component(client, "learner", "client config")["path"] == task.learner
    selectors = [c for c in server["components"] if c["path"].endswith("IntimeModelSelector")]
    assert [c["args"]["key_metric"] for c in selectors] == [task.key_metric]
    module, _, name = task.learner.rpartition(".")
    learner = getattr(importlib.import_module(module), name)
    assert learner.key_metric == task.key_metric
    assert task.recipe is type(learner().config)
    assert task.packages[0] == module.split(".")[0]
    assert task.report.curves[1][0] == task.key_metric  # the global model's validation curve is the selected score
