"""The run directory: what it is for (its identity), one writer at a time (an OS-level lock), and
whether it can be written at all (a read-only directory still serves whatever needs no writing)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..config.presets import Preset, as_dict
from ..errors import SpikeAdvError
from ..models.trained import Trained
from ..records import read_json
from ..records.provenance import __version__, canonical, command_line

LOCK = ".lock"


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({json.dumps(old)} -> {json.dumps(new)})"]


def identity(preset: Preset) -> dict:
    """What a run directory is for: the version of this program and the whole preset (as JSON)."""
    return canonical({"version": __version__, "preset": as_dict(preset)})


def _shown(diff: list[str]) -> str:
    return "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")


def open_run(out: Path, preset: Preset, log: Callable[[str], None] = print) -> dict:
    """The run directory's record. A directory made by another version, or for other models (any
    setting outside ``study``), is refused untouched; a change of ``study`` settings (an eps, an
    attack, a gradient...) is allowed: models are reused and only the new adversarial sets crafted."""
    path = out / "run.json"
    if not path.exists():
        return {}
    meta = read_json(path, "; move it away or choose another --out", kind="a spikeadv run record")
    if not isinstance(meta.get("preset"), dict):
        raise SpikeAdvError(f"{path} is not a spikeadv run record; move it away or choose another --out")
    new = identity(preset)
    old = {"version": meta.get("version"), "preset": {**meta["preset"], "study": new["preset"]["study"]}}
    diff = _differences(old, new)
    if diff:
        raise SpikeAdvError(f"{out} holds a run with another config: {_shown(diff)}. Nothing was changed; "
                            "rerun with the same preset and --set values, or pass another --out")
    study = _differences({"study": meta["preset"].get("study")}, {"study": new["preset"]["study"]})
    if study:
        log(f"study settings changed ({_shown(study)}): the models are reused, new adversarial sets crafted")
    return meta


FOLDERS = ("models", "cells", "clean", "report", "evaluation")  # a run directory's subfolders
FILES = ("run.json", "results.jsonl")


def check_layout(out: Path) -> None:
    """Refuse, before any work or lock, a run directory whose own paths are in the way: ``out`` a file
    or under one, a subfolder that is a file, a record that is a directory."""
    above = next((p for p in (out, *out.parents) if p.exists()), out)
    if not above.is_dir():
        raise SpikeAdvError(f"--out {out} is or lies under the file {above}; pass a directory")
    for name in FOLDERS:
        if (out / name).exists() and not (out / name).is_dir():
            raise SpikeAdvError(f"{out / name} is a file where the run keeps its {name} folder; move it away or "
                                "pass another --out")
    for name in FILES:
        if (out / name).is_dir():
            raise SpikeAdvError(f"{out / name} is a directory where the run keeps its {name}; move it away or "
                                "pass another --out")


@contextlib.contextmanager
def lock(out: Path) -> Iterator[bool]:
    """Hold ``out``'s lock for the block: one writer per run directory. A second process is refused at
    once with the holder's pid, host and command; the kernel releases the lock when the holder
    exits, even by kill -9. Yields False (no lock, nothing may be written) where ``out`` is read-only."""
    check_layout(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            yield False
            return
        raise SpikeAdvError(f"cannot use {out} as a run directory: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            raise SpikeAdvError(f"{out} is in use by another spikeadv process ({holder}); wait for it to "
                                "finish or pass another --out") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}: "
                      f"{command_line()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)


def load_model(run_dir: Path, kind: str, instance: int = 0, device: torch.device | str | None = None,
               cls: type[Trained] = Trained) -> Trained:
    """Model ``kind`` (ann, snn1, snn2 or a control), instance 0 or 1, of a study's run directory, on ``device``,
    with the T the study ran it at; refused if its file is not the one the run recorded."""
    record = Path(run_dir) / "run.json"
    try:
        entries = read_json(record)["models"]
    except (SpikeAdvError, KeyError, TypeError) as e:
        raise SpikeAdvError(f"cannot read the models of {record} ({e}); pass the --out directory of a "
                            "study (spikeadv run, or spikeadv.run)") from None
    found = [m for m in entries if (m.get("kind"), m.get("instance")) == (kind, instance)]
    if not found and not entries:
        files = sorted(p.name for p in (Path(run_dir) / "models").glob("*.safetensors"))
        raise SpikeAdvError(f"the study in {run_dir} has not finished: run.json lists its models once every one is built "
                            f"and judged, and {len(files)} checkpoint(s) are in {Path(run_dir) / 'models'} so far; "
                            f"finish it with `spikeadv run --out {run_dir}` (the same preset and --set values)"
                            + (f", or evaluate one checkpoint: spikeadv evaluate {Path(run_dir) / 'models' / files[0]}"
                               if files else ""))
    if not found:
        have = ", ".join(f"{m.get('kind')} {m.get('instance')}" for m in entries)
        raise SpikeAdvError(f"{run_dir} has no model {kind} instance {instance} (it has: {have})")
    model = cls.load(Path(run_dir) / found[0]["path"], T=found[0].get("T"), device=device, kind=kind, instance=instance)
    if found[0].get("sha256", model.sha256) != model.sha256:
        raise SpikeAdvError(f"{model.path} is not the model {record} recorded (its digest differs); "
                            "rerun the study to rebuild it")
    return model
