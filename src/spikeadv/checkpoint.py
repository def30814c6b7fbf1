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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # files are written with the user's umask, as open() would


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(tmp: Path) -> bool:
    """A temporary file of a writer that no longer runs (named ``.NAME.PID.RANDOM.tmp``)."""
    pid = tmp.name.rsplit(".", 3)[-3]
    return pid.isdigit() and not _alive(int(pid))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``:
    readers see the old file or the new one, never half of one. A temporary file belongs to its
    writer (its name holds the writer's pid); one left by a killed writer is removed by the next.
    A path that cannot be written is one line naming it."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            if _stale(old):
                old.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~UMASK)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise SpikeAdvError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def _json_digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_record(path: Path, data: dict) -> None:
    """A cached JSON artifact with the SHA-256 of its content, checked by :func:`read_record`."""
    write_json(path, {**data, "sha256": _json_digest(data)})


def read_record(path: Path) -> tuple[dict | None, str]:
    """A record written by :func:`write_record`, or (None, why it cannot be used): missing, unreadable,
    not a JSON object, or its content no longer matching its digest (edited or corrupted)."""
    if not path.exists():
        return None, "missing"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e})"
    if not isinstance(data, dict) or "sha256" not in data:
        return None, "not a record written by spikeadv (no integrity digest)"
    digest = data.pop("sha256")
    if digest != _json_digest(data):
        return None, "its content does not match its digest (edited or corrupted)"
    return data, ""


def tensors_digest(tensors: dict[str, torch.Tensor], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors + JSON metadata (inside the safetensors header) atomically, with the SHA-256 of
    both, which :func:`load` checks."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(meta, sort_keys=True)
    header = {"format": FORMAT, "meta": text, "sha256": tensors_digest(tensors, text)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`. Anything else (a missing file, a pickle, a truncated
    or foreign file, one whose content no longer matches its digest) is refused with one line that
    names the file; nothing is ever unpickled."""
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
    if "sha256" in header and header["sha256"] != tensors_digest(tensors, header["meta"]):
        raise SpikeAdvError(f"{path} failed its integrity check: its weights or metadata no longer match the "
                            "digest written with them (the file was corrupted or edited)")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise SpikeAdvError(f"{path} holds no readable metadata; it is not a checkpoint spikeadv wrote")
    return tensors, meta


def model_state(net: Network) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in net.state_dict().items()}


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[Network, dict]:
    """Rebuild a network from a checkpoint (weights + the shape recorded in its metadata) on ``device``."""
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
    return net.to(device).eval(), meta


def spiking(meta: dict, **overrides) -> Spiking | None:
    """How a checkpoint's network runs: None for an ANN, else its saved SNN settings (T overridable)."""
    if not meta.get("spiking"):
        return None
    return Spiking(**{**meta["spiking"], **{k: v for k, v in overrides.items() if v is not None}})


def model_digest(net: Network, meta: dict) -> str:
    """What determines a model's behaviour: its weights, network and how it runs as an SNN; not its
    timing or command-line metadata, so a retrained identical model keeps its digest."""
    how = json.dumps({k: meta.get(k) for k in ("network", "spiking")}, sort_keys=True)
    return tensors_digest({k: v.detach().cpu() for k, v in net.state_dict().items()}, how)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
