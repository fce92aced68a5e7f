"""Reproducible randomness: every random draw of a run is a function of the recipe's ``seed`` (and the epoch), never
of what ran before in the process.

* A model's initial weights: :func:`seeded` around its construction. The server builds the first global model of a
  federation this way, so two runs of one job start from the same weights (FLARE builds the model in the server
  process, whose global generator nobody seeds).
* Each epoch's draws (shuffling, crops and augmentations, dropout): :func:`epoch_seed`, so a resumed run draws what
  the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["seeded", "epoch_seed"]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's CPU generator (what weight initialisation draws from: models are built on the
    CPU) seeded with ``seed``, and restore its state afterwards, so the caller's random stream is left as it was.
    ``None``: the block draws from the generator unchanged."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (counted from 0) of a run seeded with ``seed``."""
    return seed * 1_000_003 + epoch
