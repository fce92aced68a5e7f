"""Each task spec says what its committed job runs: the two must never drift apart."""

import pytest

from brats_fl.job import BratsRecipe
from brats_fl.learner import BratsLearner
from brats_fl.task import TASK as BRATS
from metastasis.job import MetastasisRecipe
from metastasis.learner import MetastasisLearner
from metastasis.task import TASK as METASTASIS

from tests.support import JOBS, component, load_job_configs


@pytest.mark.parametrize("task, recipe, learner", [(BRATS, BratsRecipe, BratsLearner),
                                                   (METASTASIS, MetastasisRecipe, MetastasisLearner)],
                         ids=["brats_fl", "metastasis"])
def test_committed_job_matches_its_task_spec(task, recipe, learner):
    server, client = load_job_configs(JOBS / task.name)
    assert component(client, "learner")["path"] == f"{learner.__module__}.{learner.__name__}"
    assert component(server, "model_selector")["args"]["key_metric"] == task.key_metric
    assert server["workflows"][0]["args"]["num_rounds"] == task.rounds == recipe().rounds
    assert learner.task is task and learner().key_metric == task.key_metric
    assert task.settings is type(learner().config)
    assert task.packages[0] == learner.__module__.split(".")[0]
    assert task.report.curves[1][0] == task.key_metric  # the global model's validation curve is the selected score
