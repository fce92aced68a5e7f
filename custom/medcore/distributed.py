"""Work spread over processes with ``torch.distributed``: N processes on this machine (one per GPU, or CPU
processes) started by PyTorch's elastic launcher (what ``torchrun`` runs), or the ranks ``torchrun`` itself started,
also across nodes (``torchrun --nnodes``).

A command that shards its work checks every input and claims its outputs first, in one process, then hands each
rank its share (:meth:`Rank.shard`: items ``rank, rank + world, ...``), so every item is done exactly once and a
rank needs no word from the others. A rank that fails stops the others (the launcher's rule): a user error there
is the command's one-line error, anything else its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

from .errors import UserError

if TYPE_CHECKING:  # medcore.training imports this module
    from .training import TrainingSettings

__all__ = ["Rank", "current_rank", "joined_group", "all_gather", "all_gather_shards", "all_mean", "all_max",
           "broadcast_object", "broadcast_tensors", "data_parallel", "data_parallel_training", "processes_option",
           "resolve_processes",
           "rank_device", "run_processes", "HelperRanks"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Rank:
    """Which process of how many this is (``torchrun``'s ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes what is written once."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th one from ``rank`` (all shards together are the
        items, each once; in the order given, so the work is spread when costs vary along the list)."""
        return list(items[self.rank::self.world])

    def barrier(self) -> None:
        """Wait for every rank of the process group (nothing to wait for in one process)."""
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()


def current_rank() -> Rank:
    """This process's rank from the environment ``torchrun`` and the elastic launcher set (rank 0 of 1 without)."""
    try:
        return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE or LOCAL_RANK is not a whole number in the environment "
                        f"({os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                        f"{os.environ.get('LOCAL_RANK')!r})") from None


#: How long a rank waits at a barrier for the others: a rank's share of a test set may take hours, and a rank that
#: fails stops the others through the launcher, not through this timeout.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@contextlib.contextmanager
def joined_group(backend: str = "gloo") -> Iterator[Rank]:
    """This process's rank; where ``torchrun`` or :func:`run_processes` started several, in a process group
    (``backend``: gloo, or nccl for CUDA tensors; created here when none exists yet and left at the end), so
    :meth:`Rank.barrier` waits for them and the ``all_*`` functions combine their values."""
    import torch.distributed as dist

    rank = current_rank()
    create = rank.world > 1 and not dist.is_initialized()
    if create:
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    try:
        yield rank
    finally:
        if create:
            dist.destroy_process_group()


def _grouped() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` outside a process group."""
    import torch.distributed as dist

    if not _grouped():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def all_gather_shards(indices: Sequence[int], values: Sequence[T]) -> list[T]:
    """Every rank's ``values`` of its shard (``values[i]`` belongs to item ``indices[i]``), put back together in
    item order: what one process computing every item would hold."""
    pairs = [pair for share in all_gather(list(zip(indices, values))) for pair in share]
    return [value for _, value in sorted(pairs, key=lambda pair: pair[0])]


def all_mean(value: float) -> float:
    """The mean of every rank's ``value`` (NaN where a rank has none)."""
    values = all_gather(float(value))
    return sum(values) / len(values)


def all_max(value: int) -> int:
    """The largest of every rank's ``value``."""
    return max(all_gather(int(value)))


def broadcast_object(value: Any = None) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; ``value`` itself outside a process group."""
    import torch.distributed as dist

    if not _grouped():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: Iterable[Any]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's, in place (a model's weights, its batch-norm
    statistics); nothing outside a process group."""
    import torch.distributed as dist

    if _grouped():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def processes_option(text: str) -> int | str:
    """An argparse ``type``: ``auto`` or a number of processes from 1 to 1,024."""
    import argparse

    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be auto or 1-1024, got {value}")
    return value


def resolve_processes(requested: int | str, device: str = "auto") -> int:
    """How many processes ``requested`` (a number, or ``auto``) means for ``device`` (``auto``, ``cpu``,
    ``cuda[:n]``): ``auto`` is every visible GPU where CUDA is used, else one process (a CPU's cores are already
    used by one process's threads). More processes than GPUs on CUDA is refused (two processes would share one)."""
    import torch

    if current_rank().world > 1:  # torchrun started the ranks: they share the work
        if requested not in (1, "auto"):
            raise UserError(f"--processes {requested} under torchrun, which started {current_rank().world} ranks "
                            "already: leave --processes at 1 (torchrun's --nproc-per-node chooses)")
        return 1
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    gpus = torch.cuda.device_count() if cuda else 0
    if requested == "auto":
        return max(1, gpus)
    if cuda and requested > 1 and ":" in device:
        raise UserError(f"--device {device} names one GPU: {requested} processes need --device cuda or auto (one "
                        "GPU per process)")
    if cuda and requested > max(gpus, 1):
        raise UserError(f"{requested} processes on CUDA, but {gpus} GPU(s) are visible: one process per GPU")
    return int(requested)


def rank_device(device: Any, rank: Rank | None = None) -> Any:
    """The device of this rank: ``cuda`` becomes ``cuda:<local rank>`` (one GPU per process); others unchanged."""
    import torch

    device = torch.device(device)
    rank = rank or current_rank()
    if device.type == "cuda" and device.index is None and rank.world > 1:
        return torch.device("cuda", rank.local_rank)
    return device


def _worker(fn: Callable[..., T], error_dir: str, threads: int, args: tuple) -> T:
    """One launched process: its threads, its logging, ``fn(*args)``; a user error is written for the launcher
    to raise (the process exits 2, which stops the other ranks)."""
    import torch

    from .progress import configure_logging

    configure_logging()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn(*args)
    except UserError as err:
        Path(error_dir, f"rank{current_rank().rank}.txt").write_text(str(err))
        raise SystemExit(2) from None


def _in_group(backend: str, fn: Callable[..., T], args: tuple) -> T:
    """``fn(*args)`` in this rank's process group (one GPU per rank with NCCL)."""
    if backend == "nccl":
        import torch

        torch.cuda.set_device(current_rank().local_rank)
    with joined_group(backend):
        return fn(*args)


def data_parallel(processes: int, device: str, fn: Callable[..., T], *args: Any, threads: int = 0) -> T:
    """``fn(*args)`` run by ``processes`` ranks in one process group (NCCL where ``device`` is CUDA, else gloo),
    for work that trains one model together (``DistributedDataParallel``); returns rank 0's result. Under
    ``torchrun`` the ranks it started run it; one process runs it here."""
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if current_rank().world > 1:
        return _in_group(backend, fn, args)
    return run_processes(processes, _in_group, backend, fn, args, threads=threads)[0]


def data_parallel_training(requested: int | str | None, settings: TrainingSettings, train: Callable[..., T],
                           *args: Any) -> T:
    """``train(*args)`` as :func:`data_parallel`, with the processes a standalone training asks for: ``requested``
    (its ``--processes``), else the training settings' ``processes`` (``auto`` when unset), for the settings'
    ``device``."""
    wanted = requested if requested is not None else settings.processes or "auto"
    return data_parallel(resolve_processes(wanted, settings.device), settings.device, train, *args)


def run_processes(processes: int, fn: Callable[..., T], *args: Any, threads: int = 0) -> dict[int, T]:
    """``fn(*args)`` in ``processes`` processes on this machine, started by PyTorch's elastic launcher (each with
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set, so ``fn`` may join a process
    group); returns each rank's result. One process runs ``fn`` here, unlaunched.

    ``threads``: PyTorch CPU threads per process (0: the machine's cores shared out, at least one each). ``fn``
    and ``args`` are pickled to the processes (``fn`` must be a module-level function). The first rank to fail
    stops the others: a :class:`UserError` there is raised here with its message; any other failure is raised as
    the launcher's ``ChildFailedError``, with that rank's traceback.
    """
    if processes == 1:
        return {0: fn(*args)}
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=uuid.uuid4().hex, max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    with tempfile.TemporaryDirectory(prefix="ranks-") as error_dir:
        try:
            return elastic_launch(config, _worker)(fn, error_dir, threads, args)
        except ChildFailedError:
            messages = sorted(Path(error_dir).glob("rank*.txt"))
            if messages:
                raise UserError(messages[0].read_text()) from None
            raise


#: How long a collective operation waits for the other ranks of a :class:`HelperRanks` group before it fails (a
#: training epoch's steps are each short; a rank that died makes gloo fail at once, NCCL at this timeout).
HELPER_TIMEOUT = datetime.timedelta(minutes=30)


class HelperRanks:
    """Ranks 1 .. N-1 of a process group whose rank 0 is this process, for a long-lived process that must stay
    the one others talk to (a FLARE client: only rank 0 receives the global model and sends the result).

    This process becomes rank 0 (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set in its environment, so
    :func:`current_rank` and :func:`rank_device` say so); each helper is a new Python process with the same
    import path that joins the group and runs ``follow(*args)``, which typically loops on
    :func:`broadcast_object` until rank 0 sends ``None`` (what :meth:`close` sends). ``backend``: ``nccl`` (one
    GPU per rank, ``cuda:<rank>``) or ``gloo``. ``threads``: PyTorch CPU threads per helper.

    A helper that dies before joining the group is named at once (a ``RuntimeError``); one that fails later makes
    rank 0's next collective call fail (gloo at once, NCCL after :data:`HELPER_TIMEOUT`); :meth:`failed` names it,
    and :meth:`close` ends whatever is still running.
    """

    def __init__(self, processes: int, backend: str, follow: Callable[..., Any], args: tuple = (),
                 threads: int = 0) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            raise UserError("this process already belongs to a process group: a data-parallel FLARE site needs a "
                            "process of its own (the simulator: as many threads, -t, as clients, -n)")
        self.processes, self.backend = processes, backend
        # Rank 0's store, on a free port, before any helper starts: they count themselves in on it, so a helper
        # that dies before joining is seen here (a plain rendezvous would wait for it until the timeout).
        store = dist.TCPStore("127.0.0.1", 0, processes, is_master=True, timeout=HELPER_TIMEOUT,
                              wait_for_workers=False)
        port = store.port
        self._saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                      "MASTER_PORT")}
        self._payload = tempfile.NamedTemporaryFile(prefix="helper-ranks-", suffix=".pkl", delete=False)
        with self._payload:
            pickle.dump((follow, args, backend, threads), self._payload)
        group = {"WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        self.helpers: list[subprocess.Popen] = []
        for rank in range(1, processes):
            env = {**os.environ, **group, "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self.helpers.append(subprocess.Popen(
                [sys.executable, "-c", "import medcore.distributed as d; d._helper_main()", self._payload.name],
                env=env))
        os.environ.update({**group, "RANK": "0", "LOCAL_RANK": "0"})
        if backend == "nccl":
            import torch

            torch.cuda.set_device(0)
        try:
            while int(store.add("joined", 0)) < processes - 1:
                if (failed := self.failed()) is not None:
                    raise RuntimeError(f"data-parallel: {failed} before joining the process group")
                time.sleep(0.05)
            dist.init_process_group(backend, store=store, rank=0, world_size=processes, timeout=HELPER_TIMEOUT)
        except BaseException:
            self.close(graceful=False)
            raise
        logger.info("data-parallel: %d processes (%s), helper pids %s", processes, backend,
                    [p.pid for p in self.helpers])

    def failed(self) -> str | None:
        """Which helper has ended with an error, if any (e.g. ``"rank 1 exited with code -9"``)."""
        for rank, helper in enumerate(self.helpers, start=1):
            if helper.poll() not in (None, 0):
                return f"rank {rank} exited with code {helper.returncode}"
        return None

    def close(self, graceful: bool = True) -> None:
        """Tell the helpers to stop (``None`` on :func:`broadcast_object`) and wait for them; where that is not
        possible (``graceful=False``, or a helper failed), end them. Leaves the group and restores the
        environment."""
        import torch.distributed as dist

        if graceful and self.failed() is None and dist.is_initialized():
            try:
                broadcast_object(None)
            except Exception:  # noqa: BLE001 - a helper that died mid-call: ended below
                logger.warning("data-parallel: the helpers could not be told to stop; ending them")
        for helper in self.helpers:
            try:
                helper.wait(timeout=60 if graceful else 0.1)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if dist.is_initialized():
            dist.destroy_process_group()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Path(self._payload.name).unlink(missing_ok=True)


def _helper_main() -> None:
    """A :class:`HelperRanks` helper: join the group, run ``follow(*args)``, leave."""
    import torch
    import torch.distributed as dist

    from .progress import configure_logging

    configure_logging()
    with open(sys.argv[1], "rb") as file:
        follow, args, backend, threads = pickle.load(file)
    if threads:
        torch.set_num_threads(threads)
    rank = current_rank()
    if backend == "nccl":
        torch.cuda.set_device(rank.local_rank)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank.world, is_master=False,
                          timeout=HELPER_TIMEOUT)
    store.add("joined", 1)
    dist.init_process_group(backend, store=store, rank=rank.rank, world_size=rank.world, timeout=HELPER_TIMEOUT)
    try:
        follow(*args)
    finally:
        dist.destroy_process_group()
