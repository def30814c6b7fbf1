"""Artifacts on disk: safetensors weights with JSON metadata, written atomically; never a pickle.

Every artifact carries its config, seed, library versions and the digest of the data it came from
(DESIGN section 1, "traceable numbers"), so any number in a report can be traced and recomputed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .arch import Network
from .errors import SpikeAdvError
from .neurons import Spiking

FORMAT = "spikeadv-checkpoint/1"


def versions() -> dict[str, str]:
    """Library versions recorded with every artifact."""
    import numpy

    return {
        "spikeadv": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``:
    readers see the old file or the new one, never half of one (a kill -9 leaves at most a temp file,
    which is removed on the next write or on error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed earlier write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON metadata (inside the safetensors header) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = {"format": FORMAT, "meta": json.dumps(meta, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`. Anything else (a missing file, a pickle, a truncated
    or foreign file) is refused with one line that names the file; nothing is ever unpickled."""
    path = Path(path)
    if not path.is_file():
        raise SpikeAdvError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the JSON header; torch.save: a zip (PK) or a pickle (0x80)
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise SpikeAdvError(
            f"{path} is a pickle/torch.save file; spikeadv only reads safetensors checkpoints it wrote "
            "(it never unpickles files, which can run arbitrary code)"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SpikeAdvError(f"{path} is not a readable safetensors checkpoint ({e}); is it truncated?") from None
    if header.get("format") != FORMAT:
        raise SpikeAdvError(f"{path} is a safetensors file but not a spikeadv checkpoint (no {FORMAT} header)")
    return tensors, json.loads(header["meta"])


def model_state(net: Network) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in net.state_dict().items()}


def load_model(path: Path) -> tuple[Network, dict]:
    """Rebuild a network from a checkpoint (weights + the shape recorded in its metadata)."""
    tensors, meta = load(path)
    if "network" not in meta:
        raise SpikeAdvError(f"{path} holds no network (it is a {meta.get('kind', 'different')} artifact)")
    net = Network.from_config(meta["network"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpikeAdvError(
            f"{path}: weights do not match the network its metadata describes "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return net.eval(), meta


def spiking(meta: dict, **overrides) -> Spiking | None:
    """How a checkpoint's network runs: None for an ANN, else its saved SNN settings (T overridable)."""
    if not meta.get("spiking"):
        return None
    return Spiking(**{**meta["spiking"], **{k: v for k, v in overrides.items() if v is not None}})


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
