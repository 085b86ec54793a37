"""One training run over several processes, on PyTorch's own engine: ``torchrun`` starts the processes
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:class:`kdlab.engine.Trainer` then joins the process group (:func:`setup`), wraps each trained
network in ``DistributedDataParallel`` and gives every process its slice of the global batch
(:func:`shard`). torchrun with one process takes the same path, in a group of one: the process group, DDP
and its gradient all-reduce, the metrics' all-reduce (what it cannot show: SyncBatchNorm falls back to plain
BatchNorm in a group of one, and no batch is split), so a launch script can be tried on one GPU before several.
Launched any other way, everything here is a no-op for one process.

How a global batch of ``B`` is split over ``W`` processes (``B % W == 0``): every process draws the
whole batch (images, noise, times) from the same per-step generator, exactly as one process would,
and keeps rows ``[rank * B / W, (rank + 1) * B / W)`` (:meth:`kdlab.engine.Trainer.shard` takes them before
copying them to the process's device). Each process's loss is the mean over its
``B / W`` rows; DDP averages the gradients over the processes, so the update is that of the mean over
all ``B`` rows, the one-process update up to the order of floating-point additions.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import inspect
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
from torch.distributed.elastic.multiprocessing.errors import record as elastic_record

from .utils import DeferredSignals, get_device, launched

# A collective that waits longer than this (a peer died or hangs) raises instead of blocking for ever;
# torchrun also stops every process as soon as one exits with an error.
TIMEOUT = datetime.timedelta(minutes=float(os.environ.get("KDLAB_DIST_TIMEOUT_MIN", "10")))
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` in ``0..size-1``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (kdlab.utils.launched), even as its only process

    @property
    def main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0

    @property
    def group(self) -> bool:
        """Whether this process trains in a process group: several processes, or one that torchrun started."""
        return self.launched or self.size > 1


def world() -> World:
    """The launcher's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (one process when ``WORLD_SIZE`` is unset),
    or ``ValueError`` naming the variable that does not make sense."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    values = {}
    for name in _ENV:
        raw = os.environ.get(name, "0" if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"environment variable {name}={raw!r} is not valid; expected an integer "
                             "(torchrun sets RANK, WORLD_SIZE and LOCAL_RANK)") from None
    w = World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], launched=launched())
    if w.size < 1 or not 0 <= w.rank < w.size or w.local_rank < 0:
        raise ValueError(f"RANK={w.rank}, WORLD_SIZE={w.size}, LOCAL_RANK={w.local_rank} are not valid; "
                         "expected WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return w


def setup(device="auto") -> tuple[World, torch.device]:
    """Join the process group when torchrun started this process (even as the only one) or ``WORLD_SIZE`` > 1:
    NCCL on CUDA (each process on GPU ``LOCAL_RANK``), Gloo otherwise. Returns this process's :class:`World` and
    the device to train on.
    Safe to call again (later runs of the same process reuse the group)."""
    w, dev = world(), get_device(device)  # under torchrun, "auto" and "cuda" are cuda:LOCAL_RANK
    if w.group and dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(dev)!r} cannot train under torchrun (in a process group); use 'cuda' (NCCL) "
                         "or 'cpu' (Gloo)")
    if w.group and dev.type == "cuda":
        if dev.index != w.local_rank:
            raise ValueError(f"device={str(dev)!r}: under torchrun each process uses its own GPU, cuda:LOCAL_RANK; "
                             "pass device='cuda' or 'auto' and choose GPUs with CUDA_VISIBLE_DEVICES")
        if w.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={w.local_rank} but this machine shows {torch.cuda.device_count()} GPU(s); "
                             "start at most that many processes per machine (torchrun --nproc-per-node)")
        torch.cuda.set_device(dev)
    if w.group and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    return w, dev


def check_batch(batch_size: int, w: World) -> None:
    """``ValueError`` unless the global batch splits evenly over the processes."""
    if batch_size % w.size:
        raise ValueError(f"batch_size={batch_size} (the global batch) is not divisible by the {w.size} processes "
                         f"(WORLD_SIZE); choose a multiple of {w.size}")


def shard(x: torch.Tensor, w: World) -> torch.Tensor:
    """This process's rows of a global batch ``x`` ``[B, ...]``: ``x[rank * B / W : (rank + 1) * B / W]``."""
    if w.size == 1:
        return x
    check_batch(len(x), w)
    k = len(x) // w.size
    return x[w.rank * k:(w.rank + 1) * k]


def _collective_device(device: torch.device) -> torch.device:
    """Where a collective's tensor lives: the GPU under NCCL, the CPU under Gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


# The tensors of this module's collectives, each kept for HOLD_SECONDS after it. A Gloo worker thread lets go of
# a collective's tensors just after the collective completes, often after Python has dropped them (NCCL's
# watchdog keeps its copy of a collective without the outputs; whether it can do the same is unchecked): the
# tensor's Python object is then freed on that thread, which must take the GIL to do it. PyTorch before 2.8
# destroys the process group holding the GIL and waits for those threads, so a process that left the group right
# after a collective could hang there for ever (pytorch/pytorch#154976; 4 of 100 failing-rank jobs on 2.4.1).
# Held here, the last reference is Python's, on this thread, as long as the backend lets go within HOLD_SECONDS;
# it takes well under a millisecond. (Its hold is not visible from Python: a worker thread still freed a tensor
# 0.03-0.2 ms after its ``_use_count()`` had dropped to 1.) The collectives that DDP and SyncBatchNorm run
# themselves are not held here.
HOLD_SECONDS = 1.0
_HELD: collections.deque[tuple[float, torch.Tensor]] = collections.deque()


def _held(*tensors: torch.Tensor) -> None:
    """Keep ``tensors`` for ``HOLD_SECONDS`` (and until :func:`leave`), letting go of older ones."""
    now = time.monotonic()
    while _HELD and now - _HELD[0][0] > HOLD_SECONDS:
        _HELD.popleft()
    _HELD.extend((now, t) for t in tensors)


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    _held(t)
    dist.all_reduce(t, op=op)
    return t


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``t`` (same shape on each), in rank order."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    _held(t, *out)
    dist.all_gather(out, t)
    return out


def mean_over_processes(values: dict[str, float], w: World, device: torch.device) -> dict[str, float]:
    """Each metric averaged over the processes (one all-reduce for all of them): with equal shards, the
    mean of the per-process means is the global batch's mean."""
    if not w.group or not values:
        return values
    t = _all_reduce(torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device(device)))
    return dict(zip(values, (t / w.size).tolist()))


def same_over_processes(value: int, w: World, device: torch.device) -> bool:
    """Whether every process holds the same integer ``value`` (one all-reduce of ``[value, -value]`` by MAX)."""
    if not w.group:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64, device=_collective_device(device))
    t = _all_reduce(t, dist.ReduceOp.MAX)
    return t[0].item() == -t[1].item()


def first_error(message: str | None, w: World, device: torch.device) -> str | None:
    """Agree on a failure that only some processes saw (a file one machine lacks): every process passes its
    own error message or ``None`` and gets the lowest failing rank's message, prefixed ``rank R:`` when that
    is not rank 0, or ``None`` when all succeeded. An all-gather of each message's UTF-8 length (-1 for
    ``None``), then, when some process failed, one of the messages' bytes padded to the longest (not
    ``all_gather_object``: its tensors could not be held, see ``_HELD``)."""
    if not w.group:
        return message
    dev = _collective_device(device)
    data = b"" if message is None else message.encode("utf-8", "surrogateescape")  # paths keep odd bytes
    lengths = [int(n) for n in _all_gather(torch.tensor([-1 if message is None else len(data)], device=dev))]
    rank = next((r for r, n in enumerate(lengths) if n >= 0), None)
    if rank is None:
        return None
    padded = torch.zeros(max(1, *lengths), dtype=torch.uint8)
    padded[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    said = bytes(_all_gather(padded.to(dev))[rank][:lengths[rank]].tolist()).decode("utf-8", "surrogateescape")
    return said if rank == 0 else f"rank {rank}: {said}"


def backend() -> str | None:
    """The process group's backend (``"nccl"`` or ``"gloo"``), or ``None`` outside a process group."""
    return dist.get_backend() if dist.is_initialized() else None


def barrier(w: World) -> None:
    """Wait for every process (no-op outside a process group)."""
    if w.group:
        dist.barrier()


def leave() -> None:
    """Destroy the process group, if this process joined one (before it exits: torchrun's processes then end
    cleanly), then let go of the collectives' tensors (see ``_HELD``)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _HELD.clear()


class _WholeErrorFile(ErrorHandler):
    """torch's error handler, writing the error file with SIGTERM held back (see :func:`record`)."""

    def record_exception(self, e: BaseException) -> None:
        with DeferredSignals((signal.SIGTERM,)) as held:
            super().record_exception(e)
        if held.requested:  # it came during the write: it takes effect now (by default, the end of the process)
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGTERM)


def record(fn):
    """torch's ``@record`` (under torchrun, a process's exception and traceback reach torchrun's summary), with
    the error file written whole. As soon as one process fails, torchrun sends SIGTERM to the others, and those
    are often failing too (their collectives lost a peer) and writing their own error files. One killed between
    opening its file and writing it left an empty file; PyTorch releases that read the stopped processes' files
    (2.11 and 2.14 here, not 2.4) then crashed with a ``JSONDecodeError`` instead of printing the summary that
    names the failed process. Here a SIGTERM that arrives during the write ends the process right after it."""
    return elastic_record(fn, error_handler=_WholeErrorFile())


def trainable(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` gets gradients (EMA copies and frozen teachers do not)."""
    return any(p.requires_grad for p in module.parameters())


def wrap(module: nn.Module, w: World, device: torch.device) -> nn.Module:
    """``module`` as DistributedDataParallel in a process group (several processes, or one under torchrun);
    ``module`` itself for a plain process or when nothing in it trains. On CUDA its BatchNorm layers are
    replaced by SyncBatchNorm, in ``module`` itself (same parameters and buffers, so its checkpoints load into
    a plain model); PyTorch's SyncBatchNorm has no CPU kernels, so on the CPU each process normalises with its
    own slice's statistics.

    Buffers (BatchNorm's running statistics) are not broadcast from rank 0 before each forward pass: with
    SyncBatchNorm every rank computes the same running statistics anyway; under Gloo rank 0, which saves them,
    keeps its own either way, and the other ranks now keep theirs (nothing evaluates on them). Broadcasting
    writes the buffers in place, and PyTorch 2.11's BatchNorm saves them for its backward, so a network called
    twice before one backward (a GAN's discriminator on real and generated images) failed there with "modified
    by an inplace operation". PyTorch 2.14 renamed the option (``forward_sync_buffers``; ``broadcast_buffers``
    warns); the new one still copies rank 0's buffers once, when DDP is built, the old one did not (the same
    values here: every process starts from the same seed or the same state file)."""
    if not w.group or not trainable(module):
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ddp = nn.parallel.DistributedDataParallel
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else "broadcast_buffers": False}
    return ddp(module, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)

