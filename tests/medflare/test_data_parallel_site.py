"""A data-parallel FLARE site (medflare.learner.EngineLearner with other ranks): a rank that dies fails the task
with an error naming it, and the site refuses further tasks instead of going on with rank 0's shard alone."""

import pytest
import torch

from brats_fl.learner import BratsLearner
from medcore.distributed import HelperRanks, all_gather, broadcast_object

from tests.medcore.test_data_parallel import _follow


class _Gathering(BratsLearner):
    def gather(self) -> list:
        return all_gather("gathered")


def test_a_dead_rank_fails_the_task_and_the_site_stops():
    learner = _Gathering()
    learner.site = "site-1"
    learner.ranks = HelperRanks(2, "gloo", _follow, (3,))
    try:
        assert learner.everywhere("gather")[0] == "gathered"  # the helper answers each step with a gather
        broadcast_object("die")
        learner.ranks.helpers[0].wait(timeout=60)
        with pytest.raises(RuntimeError, match="site-1: data-parallel training stopped: rank 1 exited with code 3"):
            learner.everywhere("gather")
        assert learner.ranks is None and not torch.distributed.is_initialized()
        with pytest.raises(RuntimeError, match="this job cannot go on at this site"):
            learner.everywhere("gather")
    finally:
        if learner.ranks is not None:
            learner.ranks.close(graceful=False)
