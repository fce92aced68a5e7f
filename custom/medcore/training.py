"""What both models' training shares: the settings every task's recipe holds (:class:`TrainingSettings`) and the
optimisation loop, one epoch of optimiser steps over a dataset with automatic mixed precision
(:mod:`medcore.device`), seeded draws (:mod:`medcore.seeding`), an optional FedProx proximal term and a record of
how long the loop waited for data.

Data-parallel: in a process group of several ranks (:mod:`medcore.distributed`), the model is wrapped in PyTorch's
``DistributedDataParallel``: each rank trains on its own dataset (its shard of the data), gradients are averaged
over the ranks at every step, and every rank takes the same number of steps (a rank with fewer items repeats some),
so the ranks' models stay identical, as one process training on the ranks' batches together would."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset, Sampler

from .device import autocast, check_device_name, grad_scaler
from .distributed import all_max, all_mean, broadcast_tensors, current_rank
from .errors import UserError
from .seeding import epoch_seed
from .settings import MAX_PARALLEL, Settings, setting

__all__ = ["TrainingSettings", "with_default", "EpochStats", "EpochTrainer"]


@dataclasses.dataclass(frozen=True)
class TrainingSettings(Settings):
    """The settings every task's training recipe holds; a task's recipe subclasses it with its model's settings
    (the FLARE layer, :class:`medflare.learner.EngineLearner`, relies on these fields and no others).

    Attributes:
        epochs: epochs of a standalone run (``train``); under FLARE the server's rounds count instead. A task sets
            its own default (:func:`with_default`).
        local_epochs: passes over the site's training data per federated round.
        fedprox_mu: FedProx's proximal weight ``mu`` (:class:`EpochTrainer`): local training minimises the loss plus
            ``mu / 2 * ||w - w_global||^2``; 0 (the default) is plain FedAvg training.
        amp: mixed precision (fp16 + grad scaler on CUDA, bf16 autocast on CPUs that have it), chosen
            automatically (:mod:`medcore.device`).
        num_workers: DataLoader worker processes preparing the training batches.
        num_threads: CPU threads for PyTorch; 0 keeps PyTorch's default (all cores). When several clients share
            one machine (the simulator with ``-t``, a POC), give each ``cores / clients``: oversubscribed OpenMP
            threads spin against each other and slow training down by 10x and more.
        seed: seed of the initial weights (in a federation: the first global model, which the server builds) and of
            every epoch's shuffling, augmentations and dropout (:mod:`medcore.seeding`).
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:n]``.
        processes: processes training a FLARE site's model data-parallel (:class:`medflare.learner.EngineLearner`):
            one per GPU on CUDA (``cuda``/``auto``), else CPU processes sharing the cores; each trains and scores
            its shard of the site's data, rank 0 alone talks to FLARE. 0 means every visible GPU, one process on a
            CPU machine. Standalone ``train`` takes ``--processes`` instead.
    """

    epochs: int = setting(1, minimum=1, runtime=True)
    local_epochs: int = setting(1, minimum=1)
    fedprox_mu: float = setting(0.0, minimum=0)
    amp: bool = True
    num_workers: int = setting(2, minimum=0, maximum=MAX_PARALLEL, runtime=True)
    num_threads: int = setting(0, minimum=0, maximum=MAX_PARALLEL, runtime=True)
    seed: int = setting(0, minimum=0)
    device: str = setting("auto", check=check_device_name, runtime=True)
    processes: int = setting(1, minimum=0, maximum=MAX_PARALLEL, runtime=True)


def with_default(settings: type[Settings], name: str, value: Any) -> Any:
    """Field ``name`` of ``settings`` with another default, its range and checks kept: a subclass declares
    ``epochs: int = with_default(TrainingSettings, "epochs", 600)``."""
    field = settings.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return dataclasses.field(default=value, metadata=field.metadata)


@dataclasses.dataclass(frozen=True)
class EpochStats:
    """One pass over the training data: mean loss, optimiser steps, samples, wall time and the part of it spent
    waiting for the input pipeline."""

    loss: float
    steps: int
    seconds: float
    data_seconds: float
    samples: int = 0


class _EqualShuffle(Sampler):
    """A random order of ``size`` items, lengthened to ``length`` by items drawn again (so that every rank of a
    data-parallel run takes the same number of steps)."""

    def __init__(self, size: int, length: int, generator: torch.Generator) -> None:
        self.size, self.length, self.generator = size, length, generator

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        order = torch.randperm(self.size, generator=self.generator).tolist()
        while len(order) < self.length:
            order += torch.randperm(self.size, generator=self.generator).tolist()
        return iter(order[:self.length])


class EpochTrainer:
    """Trains ``model`` with ``optimizer`` one epoch at a time; subclasses define :meth:`compute_loss`, running
    the model as :attr:`network` (the model itself, or its data-parallel wrapper in a process group).

    Args:
        batch_size, num_workers: DataLoader settings (``num_workers`` processes prepare batches in parallel).
        seed: epoch ``k``'s shuffling, augmentations and dropout are drawn from
            :func:`~medcore.seeding.epoch_seed` ``(seed, k)``, so a resumed run continues the same sequence.
        amp: mixed precision as :func:`medcore.device.autocast` chooses it (fp16 + scaler on CUDA, bf16 on CPU).
        proximal_mu: FedProx's ``mu`` (Li et al. 2020): every step minimises the batch loss plus
            ``mu / 2 * ||w - w_anchor||^2`` over the trainable parameters, ``w_anchor`` being the weights at the
            last :meth:`set_anchor` (the global model a federated round starts from). 0: plain training.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: bool = True, batch_size: int = 1, num_workers: int = 0, seed: int = 0,
                 proximal_mu: float = 0.0) -> None:
        self.device = device
        self.model = model.to(device)
        self.optimizer = optimizer
        self.amp = amp
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.scaler = grad_scaler(device, amp)
        self.epochs = 0  # epochs trained so far
        self.proximal_mu = float(proximal_mu)
        self.anchor: list[torch.Tensor] | None = None
        self.rank = current_rank()
        self.network: torch.nn.Module = self.model
        if self.rank.world > 1 and torch.distributed.is_initialized():
            # Gradients averaged over the ranks each step; buffers (batch-norm statistics) broadcast from rank 0.
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def set_anchor(self) -> None:
        """Take the model's current trainable weights as the FedProx anchor (call when a round's global model is
        loaded; without a call the anchor is the weights at the first step)."""
        self.anchor = [p.detach().clone() for p in self.model.parameters() if p.requires_grad]

    def proximal_term(self) -> torch.Tensor:
        """``mu / 2 * ||w - w_anchor||^2`` in float32 (0 when ``proximal_mu`` is 0)."""
        if not self.proximal_mu:
            return torch.zeros((), device=self.device)
        if self.anchor is None:
            self.set_anchor()
        params = [p for p in self.model.parameters() if p.requires_grad]
        return self.proximal_mu / 2 * sum(torch.sum((p.float() - a.float()) ** 2) for p, a in zip(params, self.anchor))

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Forward pass and loss of one batch (called under autocast); returns (loss, samples in the batch)."""
        raise NotImplementedError

    def train_epoch(self, dataset: Dataset, abort: Callable[[], bool] = lambda: False) -> EpochStats:
        """One pass over ``dataset`` in random order; stops early (returning what was done) when ``abort()``.

        The loss recorded is the batch loss alone (without the FedProx term), so curves compare across methods.
        """
        seed = epoch_seed(self.seed, self.epochs)
        parallel = self.network is not self.model
        if parallel:  # each rank its own draws, the same for the same number of ranks
            seed = epoch_seed(seed, self.rank.rank)
        # MONAI's DataLoader seeds the dataset's random transforms from this generator (every worker's differently;
        # a plain one would fork identical augmentation streams into all workers).
        generator = torch.Generator().manual_seed(seed)
        if parallel:
            if not len(dataset):  # the other ranks would wait for its steps for ever
                raise UserError(f"rank {self.rank.rank} of {self.rank.world} has no training items: fewer items "
                                "than processes")
            order = _EqualShuffle(len(dataset), all_max(len(dataset)), generator)
            loader = DataLoader(dataset, batch_size=self.batch_size, sampler=order, num_workers=self.num_workers,
                                generator=generator)
        else:
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                                generator=generator)
        torch.manual_seed(seed)  # dropout draws from torch's global generators
        self.model.train()
        start = time.perf_counter()
        data_seconds, losses, samples = 0.0, [], 0
        fetch_start = time.perf_counter()
        for batch in loader:
            data_seconds += time.perf_counter() - fetch_start
            if abort():
                break
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp):
                loss, n = self.compute_loss(batch)
            # The proximal term outside autocast: a float32 sum of squared differences, not a bf16 one.
            self.scaler.scale((loss + self.proximal_term()) if self.proximal_mu else loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(float(loss.detach()))
            samples += n
            fetch_start = time.perf_counter()
        self.epochs += 1
        if parallel:
            # DDP broadcasts buffers before each forward, so after the last step every rank holds its own batch-norm
            # running statistics: all take rank 0's, which the saved model carries, before anything validates.
            broadcast_tensors(self.model.buffers())
        loss = float(np.mean(losses)) if losses else float("nan")
        return EpochStats(loss=all_mean(loss) if parallel else loss, steps=len(losses),
                          seconds=time.perf_counter() - start, data_seconds=data_seconds, samples=samples)

    def state_dict(self) -> dict:
        """Optimiser and scaler state and the epoch count (the model's weights travel separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epochs = int(state.get("epochs", 0))
