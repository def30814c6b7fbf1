"""Provenance (DESIGN section 1, "traceable numbers"): the version of this program, the libraries it ran
with, the command that ran it, and the content addresses and seeds derived from recipes. Without torch."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """Library versions recorded with every artifact (torch's as the running process loaded it)."""
    import numpy

    torch = sys.modules.get("torch")
    return {
        "spikeadv": __version__,
        "torch": torch.__version__ if torch is not None else metadata.version("torch"),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def digest(recipe: object) -> str:
    """A short content address: the SHA-256 of a recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_of(*parts: object) -> int:
    """A 63-bit seed derived from a recipe, so every random draw is fixed by what it serves."""
    return int(digest(parts), 16) >> 1


def canonical(value: object) -> object:
    """A JSON value as it reads back from its file (tuples as lists, keys as strings): recipes are
    compared with what a record holds."""
    return json.loads(json.dumps(value))
