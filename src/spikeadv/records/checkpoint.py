"""The checkpoint file format: safetensors tensors with JSON metadata and the SHA-256 of both inside its
header, written atomically; never a pickle (DESIGN section 7). What a checkpoint's tensors mean (a
network and how it runs) is :mod:`spikeadv.models.trained`'s."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import SpikeAdvError
from . import atomic_write

FORMAT = "spikeadv-checkpoint/1"


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

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except SafetensorError as e:  # safetensors reports a failed write (a full disk) as its own error
            need = sum(t.numel() * t.element_size() for t in tensors.values()) + len(text)
            free = shutil.disk_usage(tmp.parent).free
            raise OSError(errno.ENOSPC if "space" in str(e).lower() else errno.EIO,
                          f"{str(e).splitlines()[0]} (the file needs {need / 2**20:.1f} MiB, "
                          f"{free / 2**20:.1f} MiB are free there)") from None

    atomic_write(path, write)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save`. Anything else (a missing file, a pickle, a truncated
    or foreign file, one without its digest or whose content no longer matches it) is refused with one
    line that names the file; nothing is ever unpickled. A file without a digest cannot be recognised as
    older than digests (its format tag is the same), so none is accepted."""
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
    if "sha256" not in header:  # every checkpoint spikeadv writes has one: without it, an edit cannot be told apart
        raise SpikeAdvError(f"{path} has no integrity digest: spikeadv writes one into every checkpoint, so this file "
                            "was edited or written by something else; rebuild it (train, convert or rerun the study)")
    if header["sha256"] != tensors_digest(tensors, header.get("meta", "")):
        raise SpikeAdvError(f"{path} failed its integrity check: its weights or metadata no longer match the "
                            "digest written with them (the file was corrupted or edited)")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        raise SpikeAdvError(f"{path} holds no readable metadata; it is not a checkpoint spikeadv wrote")
    return tensors, meta
