"""Data-parallel training (medcore.training in a process group of medcore.distributed): two CPU processes with gloo
train the model one process trains on their batches together."""

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medcore.distributed import HelperRanks, all_gather, broadcast_object, joined_group, run_processes
from medcore.training import EpochTrainer


class _Regression(EpochTrainer):
    def compute_loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.network(x), y), x.shape[0]


def _model() -> nn.Module:
    """A small network with GroupNorm (as the BraTS SegResNet): no batch statistics, so data parallelism is exact."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(32, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 2, 8, generator=generator), torch.randn(8, 1, generator=generator)


def _train(epochs: int, items: list[int], batch_size: int) -> dict:
    """Train on ``items`` of the data (in a process group: this rank's share), Adam, float32."""
    with joined_group() as rank:
        x, y = _data()
        mine = rank.shard(items)
        model = _model()
        trainer = _Regression(model, torch.optim.Adam(model.parameters(), lr=0.01), torch.device("cpu"), amp=False,
                              batch_size=batch_size, seed=3)
        losses = [trainer.train_epoch(TensorDataset(x[mine], y[mine])).loss for _ in range(epochs)]
        return {"weights": {k: v.clone() for k, v in model.state_dict().items()}, "losses": losses,
                "parallel": trainer.network is not trainer.model}


def test_two_processes_train_the_model_of_one_on_the_same_global_batch():
    """Each rank holds 4 of the 8 items and takes one step of 4 per epoch; one process takes one step of all 8:
    the averaged gradients are the same, so the weights after 5 epochs agree to float rounding, and both ranks
    hold the same model."""
    one = _train(5, list(range(8)), 8)
    ranks = run_processes(2, _train, 5, list(range(8)), 4, threads=1)
    assert ranks[0]["parallel"] and not one["parallel"]
    for name, weight in one["weights"].items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
        assert torch.allclose(ranks[0]["weights"][name], weight, atol=1e-6), name
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the ranks' mean loss
    assert [round(v, 5) for v in ranks[0]["losses"]] == [round(v, 5) for v in one["losses"]]


def test_unequal_shares_take_the_same_number_of_steps():
    """Seven items over two ranks (4 and 3, batch 1): the rank with 3 repeats one, so neither waits for the other
    (a hang otherwise), and the same seed gives the same run again."""
    first = run_processes(2, _train, 2, list(range(7)), 1, threads=1)
    again = run_processes(2, _train, 2, list(range(7)), 1, threads=1)
    assert all(torch.equal(first[0]["weights"][k], again[0]["weights"][k]) for k in first[0]["weights"])
    assert all(torch.equal(first[0]["weights"][k], first[1]["weights"][k]) for k in first[0]["weights"])


def _follow(exit_code: int) -> None:
    """A helper rank: answers each step with its rank (an all-gather), dies with ``exit_code`` on ``"die"``."""
    while (step := broadcast_object()) is not None:
        if step == "die":
            os._exit(exit_code)
        all_gather(step)


def test_helper_ranks_follow_rank_0_and_a_dead_one_is_named():
    """A FLARE site's other ranks (medcore.distributed.HelperRanks): this process is rank 0 of 2 while they run,
    each step it sends reaches the helper; a helper that dies makes rank 0's next collective call fail (gloo), not
    hang, and is named; closing ends everything and restores the environment."""
    before = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    ranks = HelperRanks(2, "gloo", _follow, (3,))
    try:
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "2")
        broadcast_object("step 1")
        assert all_gather("step 1") == ["step 1", "step 1"]
        assert ranks.failed() is None
        broadcast_object("die")
        ranks.helpers[0].wait(timeout=60)
        assert ranks.failed() == "rank 1 exited with code 3"
        with pytest.raises(RuntimeError):
            broadcast_object("step 2")
            all_gather("step 2")
    finally:
        ranks.close()
    assert not torch.distributed.is_initialized()
    assert {k: os.environ.get(k) for k in before} == before


def _refuse_to_load():
    raise ImportError("this helper cannot load its work")


class _Unloadable:
    """Pickles fine here, fails to unpickle in the helper (as a missing module would): it dies before joining."""

    def __reduce__(self):
        return _refuse_to_load, ()


def test_a_helper_that_dies_before_joining_is_named_at_once():
    with pytest.raises(RuntimeError, match="rank 1 exited with code 1 before joining the process group"):
        HelperRanks(2, "gloo", _follow, (_Unloadable(),))
    assert not torch.distributed.is_initialized() and "RANK" not in os.environ
