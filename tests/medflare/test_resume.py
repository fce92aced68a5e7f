"""Resuming interrupted runs: round checkpoints, and jobs configured to go on from one (the end-to-end runs after
a server restart and after a site's death are in test_deploy.py)."""

import json

import numpy as np
import pytest

from brats_fl import cli as brats_cli
from brats_fl.job import make_job as make_brats_job
from medflare.workflow import RoundCheckpoint, load_round_checkpoint, save_round_checkpoint
from metastasis import cli as metastasis_cli
from metastasis.job import make_job as make_metastasis_job

from tests.support import load_job_configs


def _resume_args(job_dir):
    server, client = load_job_configs(job_dir)
    workflow = next(w for w in server["workflows"] if w["id"] == "scatter_and_gather")
    learner = next(c for c in client["components"] if c["id"] == "learner")
    return workflow, learner


def test_round_checkpoint_round_trip_and_errors(tmp_path):
    weights = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bn.num_batches_tracked": np.array(4)}
    path = save_round_checkpoint(tmp_path / "ckpt.pt", RoundCheckpoint(round=3, end_round=10, weights=weights,
                                                                       best_metric=0.25, job_id="abc"))
    back = load_round_checkpoint(path)
    assert (back.round, back.end_round, back.best_metric, back.job_id) == (3, 10, 0.25, "abc")
    assert set(back.weights) == set(weights)
    assert all(np.array_equal(back.weights[k], weights[k]) for k in weights)
    assert back.weights["conv.weight"].dtype == np.float32
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    # No best global model yet: -inf survives the round trip.
    save_round_checkpoint(path, RoundCheckpoint(0, 2, weights, float("-inf"), "abc"))
    assert load_round_checkpoint(path).best_metric == float("-inf")

    with pytest.raises(FileNotFoundError, match="missing.pt: no round checkpoint"):
        load_round_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: not a readable round checkpoint"):
        load_round_checkpoint(tmp_path / "bad.pt")


def test_jobs_resume_on_both_sides(tmp_path):
    brats = make_brats_job(tmp_path / "brats", rounds=20, resume_from="1f2e-job")
    metastasis = make_metastasis_job(tmp_path / "patho", resume_from="1f2e-job")
    for job in (brats, metastasis):
        workflow, learner = _resume_args(job)
        assert workflow["path"] == "medflare.workflow.ResumableScatterAndGather"
        assert workflow["args"]["resume_from_job"] == "1f2e-job"
        assert learner["args"]["resume_from_job"] == "1f2e-job"
    # A fresh job resumes nothing.
    workflow, learner = _resume_args(make_brats_job(tmp_path / "fresh", rounds=2))
    assert workflow["args"]["resume_from_job"] == "" and "resume_from_job" not in learner["args"]
    # The command line writes the same.
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "cli_brats"), "--resume-from", "j-7"]) == 0
    assert metastasis_cli.main(["make-job", "--out", str(tmp_path / "cli_patho"), "--resume-from", "j-7"]) == 0
    for name in ("cli_brats", "cli_patho"):
        workflow, learner = _resume_args(tmp_path / name)
        assert workflow["args"]["resume_from_job"] == learner["args"]["resume_from_job"] == "j-7"


def test_resume_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="is not a job id"):
        make_brats_job(tmp_path / "a", resume_from="../etc")
    assert not (tmp_path / "a").exists()
    make_brats_job(tmp_path / "b", rounds=2)
    assert brats_cli.main(["make-job", "--out", str(tmp_path / "c"), "--resume-from", ""]) == 2
    assert "is not a job id" in capsys.readouterr().err
    assert json.loads((tmp_path / "b/meta.json").read_text())["name"]  # the good job is untouched


def test_scatter_and_gather_internals():
    """What ResumableScatterAndGather relies on inside nvflare's ScatterAndGather exists under the pinned nvflare
    and means what it assumes (an upgrade that renames it fails here, not in a federation)."""
    from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

    from medflare.workflow import SCATTER_AND_GATHER_INTERNALS, ResumableScatterAndGather

    plain = ScatterAndGather(num_rounds=5, start_round=2)
    assert all(hasattr(plain, name) for name in SCATTER_AND_GATHER_INTERNALS)
    assert (plain._start_round, plain._num_rounds) == (2, 5)
    workflow = ResumableScatterAndGather(num_rounds=5, start_round=2)
    assert workflow._round_range() == (2, 5) and workflow._end_round() == 7
    workflow._set_round_range(4, 3)
    assert (workflow._start_round, workflow._num_rounds) == (4, 3)
    workflow._set_global_model({"weights": {}})
    assert workflow._global_weights == {"weights": {}} == workflow._global_model()
