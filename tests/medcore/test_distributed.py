"""Work shared out over processes (medcore.distributed): each item once, ranks from the environment, failures."""

import os

import pytest

from medcore.distributed import Rank, current_rank, processes_option, resolve_processes, run_processes
from medcore.errors import UserError


def test_shards_hold_every_item_once_in_order():
    items = list(range(11))
    for world in (1, 2, 3, 16):
        shards = [Rank(r, world).shard(items) for r in range(world)]
        assert sorted(i for shard in shards for i in shard) == items
        assert all(shard == sorted(shard) for shard in shards)
    assert Rank(0, 1).main and not Rank(1, 2).main


def test_rank_from_the_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert current_rank() == Rank(0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_rank() == Rank(3, 4, 1)
    with pytest.raises(UserError, match="under torchrun, which started 4 ranks already"):
        resolve_processes(2, "cpu")
    assert resolve_processes("auto", "cpu") == 1
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="not a whole number"):
        current_rank()


def test_process_counts(monkeypatch):
    import argparse

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert processes_option("auto") == "auto" and processes_option("3") == 3
    for bad in ("0", "x", "2000"):
        with pytest.raises(argparse.ArgumentTypeError):
            processes_option(bad)
    assert resolve_processes("auto", "cpu") == 1 and resolve_processes(3, "cpu") == 3
    with pytest.raises(UserError, match="names one GPU"):
        resolve_processes(2, "cuda:0")


def _rank_and_threads(fail_rank: int, user_error: bool):
    import torch

    rank = current_rank()
    if rank.rank == fail_rank:
        if user_error:
            raise UserError(f"input of rank {rank.rank}: bad")
        raise ValueError(f"unexpected on rank {rank.rank}")
    return rank.rank, rank.world, torch.get_num_threads(), os.environ.get("MASTER_PORT") is not None


def test_run_processes_launches_ranks_and_reports_their_failures():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    results = run_processes(2, _rank_and_threads, -1, False, threads=1)
    assert results == {0: (0, 2, 1, True), 1: (1, 2, 1, True)}
    single = run_processes(1, _rank_and_threads, -1, False)  # here, unlaunched
    assert list(single) == [0] and single[0][:2] == (0, 1) and not single[0][3]
    with pytest.raises(UserError, match="^input of rank 1: bad$"):
        run_processes(2, _rank_and_threads, 1, True, threads=1)
    with pytest.raises(ChildFailedError, match="unexpected on rank 0"):
        run_processes(2, _rank_and_threads, 0, False, threads=1)
