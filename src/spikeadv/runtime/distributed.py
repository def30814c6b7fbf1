"""Data-parallel training over processes (``torchrun --nproc-per-node N``).

Every process holds a contiguous block of rows of each global batch (:class:`Rows`) and draws every
random number for the whole global batch from the same seeded generators, keeping only its rows:
data order, augmentation, dropout masks and the Poisson encoder. N processes therefore compute what
one process computes on the global batch, up to the summation order of the gradient all-reduce.
One process shares nothing and draws exactly as before (on CUDA, F.dropout's fused kernel draws a
stream no slice of which another process could draw: there the ANN's dropout masks of N processes
match one process's in distribution only).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpikeAdvError

# rank 0 evaluates and writes checkpoints while the others wait for it
TIMEOUT = datetime.timedelta(hours=2)
T = TypeVar("T")


@dataclass(frozen=True)
class Rows:
    """Rows ``[start, start + count)`` of a global batch of ``total`` rows: one process's share."""

    start: int
    count: int
    total: int


def take(t: Tensor, rows: Rows | None, dim: int = 0) -> Tensor:
    """The share ``rows`` of ``t`` drawn for a whole global batch along ``dim`` (all of it if None)."""
    return t if rows is None else t.narrow(dim, rows.start, rows.count)


def _global_empty(like: Tensor, rows: Rows) -> Tensor:
    """Uninitialised, ``like``'s dtype, device and memory format, with the global batch's rows: random
    draws into it follow the same order through memory as one process's draw into the whole batch."""
    channels_last = like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last)
    return torch.empty((rows.total, *like.shape[1:]), dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def dropout(x: Tensor, p: float, rows: Rows | None = None) -> Tensor:
    """Training-mode dropout of ``x``, the share ``rows`` of a global batch (None: F.dropout itself).
    The noise is what F.dropout draws on CPU (``empty_like(x).bernoulli_(1 - p).div_(1 - p)``),
    drawn for the global batch: each process keeps the rows one process would give its rows."""
    if rows is None:
        return F.dropout(x, p, training=True)
    noise = _global_empty(x, rows).bernoulli_(1 - p).div_(1 - p)
    return x * take(noise, rows)


def bernoulli(like: Tensor, p: float, rows: Rows | None = None) -> Tensor:
    """``torch.bernoulli(torch.full_like(like, p))``, drawn for the global batch of ``rows``."""
    keep = torch.full_like(like, p) if rows is None else _global_empty(like, rows).fill_(p)
    return take(torch.bernoulli(keep), rows)


def is_main() -> bool:
    """True in the process that logs and writes: rank 0, or the only one."""
    return (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def on_main(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` in the main process, silence in the others."""
    return log if is_main() else lambda _: None


@dataclass(frozen=True)
class Group:
    """This process's place among ``size`` data-parallel processes, and the device it trains on."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> Rows | None:
        """This process's rows of every global batch (None with one process: nothing to share)."""
        if self.size == 1:
            return None
        if batch_size % self.size:
            raise SpikeAdvError(f"batch size {batch_size} does not split evenly over {self.size} processes; "
                                f"choose a multiple of {self.size}")
        count = batch_size // self.size
        return Rows(self.rank * count, count, batch_size)

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` for training: itself with one process, else DistributedDataParallel (gradients
        averaged over processes; batch-norm synchronised, which PyTorch supports on GPUs only)."""
        if self.size == 1:
            return net
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            if self.device.type != "cuda":
                raise SpikeAdvError(f"batch-norm cannot be trained by {self.size} processes on {self.device.type} "
                                    "(PyTorch synchronises batch statistics on GPUs only); set batchnorm=false "
                                    "or train with one process")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the processes (``t`` itself with one)."""
        if self.size > 1:
            t = t.to(self.device).clone()
            dist.all_reduce(t)
        return t

    def mean(self, t: Tensor) -> Tensor:
        """``t`` averaged over the processes (``t`` itself with one)."""
        return t if self.size == 1 else self.sum(t) / self.size

    def from_main(self, value: T) -> T:
        """The main process's ``value``, in every process."""
        if self.size > 1:
            box = [value]
            dist.broadcast_object_list(box, src=0)
            value = box[0]
        return value

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join(device: torch.device | str = "cpu") -> Group:
    """The process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), initialised here
    unless the caller did (backend nccl on CUDA, gloo on CPU), or the group of this process alone.
    On CUDA each process of a group trains on the GPU numbered by its local rank."""
    device = torch.device(device)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Group(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return Group(dist.get_rank(), dist.get_world_size(), device)
