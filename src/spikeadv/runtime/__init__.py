"""The runtime (DESIGN sections 5 and 6): the compute device, chosen once per process (:func:`use`), and
what follows from it: random generators on the device of the tensors they draw for, the chunking
policy, bf16 autocast and synchronisation. Data-parallel process groups are in :mod:`.distributed`.

The device is a runtime choice, not part of a run's identity: a run directory started on one device
resumes on another. Every random draw is made by a generator on the device of the tensors it draws
for (:func:`generator`), and how many timesteps are folded into one batch is a policy of the device
(:func:`fold`), not a branch inside the model.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import SpikeAdvError

CHOICES = "auto, cpu, cuda or cuda:N"

MAX_FOLD = 4096  # CPU: frames (timesteps x images) per layer call when Spiking.chunk = 0: bounds memory
# On CPU, also keep the largest float32 activation of one call under this many bytes: the C allocator
# maps bigger blocks fresh from the OS at every allocation, and first touching their pages cost more
# than the whole neuron update (README, Benchmarks). Chunking changes no result: the membrane carries
# over and the Poisson encoder draws the same stream.
CPU_FOLD_BYTES = 16 * 2**20
# On CUDA, the largest activation of one call may take this share of the device's memory: a layer call
# holds its input, its output and the neuron's state and spikes at once (about 4 such tensors), and
# autocast keeps a bf16 copy beside them. A share of the total, not of the memory free at the call: the
# chunking is then a fixed policy of (device, model, batch), so sums over time are taken in one order
# from run to run, whatever other tensors (or other tasks of a worker) hold.
CUDA_FOLD_SHARE = 1 / 8
MAX_ELEMENTS = 2**31 - 1  # per tensor: beyond it, indexing in pooling, views and backward leaves 32 bits


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The device named by ``--device``: ``auto`` (the current CUDA device when there is one, else the
    CPU), ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``. Anything this machine cannot run
    on is refused with one line."""
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SpikeAdvError(f"--device {spec}: not a device; use {CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise SpikeAdvError(f"--device {spec}: spikeadv runs on {CHOICES}")
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU")
        raise SpikeAdvError(f"--device {spec}: {why}; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise SpikeAdvError(f"--device {spec}: this machine has {count} CUDA device{'s' * (count != 1)} "
                            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", index)


_chosen: torch.device | None = None  # this process's device, chosen once (use)


def use(spec: str | torch.device | None = "auto") -> torch.device:
    """Choose this process's device once, from ``--device`` (:func:`resolve`: one line, nothing written,
    where this machine lacks it); every ``device=None`` default follows it from then on."""
    global _chosen
    _chosen = resolve(spec)
    return _chosen


def device(spec: str | torch.device | None = None) -> torch.device:
    """``spec`` resolved, or with None this process's device: the one :func:`use` chose, else ``auto``
    (resolved on first use and kept)."""
    if spec is not None:
        return resolve(spec)
    return _chosen if _chosen is not None else use("auto")


def describe(device: torch.device) -> str:
    """One line for logs and records: the device, its model and memory (CUDA) or threads (CPU)."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{device} ({p.name}, {p.total_memory / 2**30:.0f} GiB)"
    return f"{device} ({torch.get_num_threads()} threads)"


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``: random draws for tensors on a device are made
    there (a CPU generator cannot draw CUDA tensors). On the CPU, the same stream as before devices."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def fold(device: torch.device, frame_bytes: int) -> int:
    """Frames (timesteps x images) one layer call may hold when the largest float32 activation of one
    frame takes ``frame_bytes``: on the CPU at most :data:`MAX_FOLD` and under :data:`CPU_FOLD_BYTES`;
    on CUDA a share of the device's memory (:data:`CUDA_FOLD_SHARE`); on either, no tensor beyond
    :data:`MAX_ELEMENTS` elements."""
    if device.type == "cuda":
        frames = int(torch.cuda.get_device_properties(device).total_memory * CUDA_FOLD_SHARE) // frame_bytes
    else:
        frames = min(MAX_FOLD, CPU_FOLD_BYTES // frame_bytes)
    return max(1, min(frames, MAX_ELEMENTS * 4 // frame_bytes))


SAVED_SHARE = 1 / 4  # of the device's memory (the CPU's: its RAM) that BPTT may keep for the backward pass


def saved_budget(device: torch.device) -> int:
    """Bytes that backpropagation through time may keep for its backward pass on ``device`` before it
    recomputes chunks of time instead (a fixed policy of the device, like :func:`fold`)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * SAVED_SHARE)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * SAVED_SHARE)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for honest wall times); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(bf16: bool, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` (or nothing)."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
