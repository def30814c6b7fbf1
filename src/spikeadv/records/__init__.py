"""Records on disk (DESIGN section 5): every artifact written atomically, JSON records that carry the
digest of their content, one reader for JSON files with one-line errors, and the cached-record step
that every cache of the package shares. Without torch: the report and the presets use it.
:mod:`.checkpoint` is the tensor file format (torch), :mod:`.outcomes` the per-image bits,
:mod:`.provenance` the version, the libraries, the command and the content addresses of recipes.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import SpikeAdvError


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


def writable(path: Path, example: str = "model.safetensors") -> None:
    """Refuse, before any work, a file path that cannot be written: a directory, a path under a file,
    or one in a directory without write permission (``example``: a file name to suggest)."""
    path = Path(path)
    if path.is_dir():
        raise SpikeAdvError(f"{path} is a directory; give a file path, e.g. {path / example}")
    above = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == Path(p.anchor or "."))
    if not above.is_dir():
        raise SpikeAdvError(f"cannot write {path}: {above} is a file, not a directory")
    if not os.access(above, os.W_OK | os.X_OK):
        raise SpikeAdvError(f"cannot write {path}: {above} is not writable")


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


def read_json(path: Path, hint: str = "", kind: str = "a JSON object") -> dict:
    """A JSON object from ``path``, or one line naming the file and what is wrong with it (missing,
    unreadable, not JSON, not ``kind``), followed by ``hint`` (what the user can do)."""
    path = Path(path)
    if not path.is_file():
        raise SpikeAdvError(f"{path} does not exist{hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpikeAdvError(f"{path} is not valid JSON ({e}){hint}") from None
    if not isinstance(data, dict):
        raise SpikeAdvError(f"{path} is not {kind} (it holds a JSON {type(data).__name__}){hint}")
    return data


def _cached_record(path: Path, recipe: dict, log: Callable[[str], None]) -> dict | None:
    """A cached JSON artifact made from ``recipe`` (:func:`read_record`), or None when it must be
    computed; one that cannot be used (damaged, edited, another recipe's) is named in the log."""
    saved, why = read_record(path)
    if saved is not None and saved.get("recipe") != recipe:
        saved, why = None, "it holds another recipe"
    if saved is None and why != "missing":
        log(f"{path} cannot be used: {why}; recomputing it")
    return saved


def cached(path: Path | None, recipe: dict, compute: Callable[[], dict], log: Callable[[str], None],
           read_only: str | None = None) -> tuple[dict, bool]:
    """The record made from ``recipe`` at ``path`` and whether it was reused: read back when it holds
    that recipe, else ``{"recipe": recipe, **compute()}`` written there (not
    written where ``path`` is None). ``read_only``: the directory cannot be written; computing is
    refused with that message instead."""
    saved = None if path is None else _cached_record(path, recipe, log)
    if saved is not None:
        return saved, True
    if read_only is not None:
        raise SpikeAdvError(read_only)
    saved = {"recipe": recipe, **compute()}
    if path is not None:
        write_record(path, saved)
    return saved, False


def digest_text(text: str) -> str:
    """The SHA-256 of a text file's content (``results.jsonl``'s, recorded in run.json)."""
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
