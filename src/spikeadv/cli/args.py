"""Options and values the commands share, each parsed into what the package takes or refused with one line."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import torch

from .. import data, runtime
from ..config.presets import PRESETS, Preset
from ..config.spiking import MAX_T
from ..errors import SpikeAdvError


def preset_args(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    p.add_argument("--preset", default=default, help=f"one of {', '.join(PRESETS)} "
                   + ("(default: cpu)" if default else "(default: the one recorded in the checkpoint)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set ann.epochs=3 (repeatable; see `spikeadv presets`)")


def root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="data directory (default: $SPIKEADV_DATA or ~/.cache/spikeadv/data)")


def device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (the first CUDA GPU if there is one, else the CPU), "
                   "cpu, cuda or cuda:N (default: auto); not part of a result's identity: resume on any device")


def device(args: argparse.Namespace) -> torch.device:
    """``--device`` resolved (one line and nothing written if this machine lacks it), and printed."""
    device = runtime.use(args.device)
    print(f"device: {runtime.describe(device)}")
    return device


def datasets(preset: Preset, root: Path | None) -> data.Splits:
    """The preset's training part, validation part and test images."""
    return data.splits(preset.dataset, preset.validation, preset.test_subset, root)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def timesteps(text: str) -> list[int]:
    """``--T``: one or more comma-separated timesteps, each in [1, MAX_T]."""
    try:
        values = [positive(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"takes whole numbers >= 1, e.g. 32 or 32,64,128, got {text!r}")
    if max(values) > MAX_T:
        raise argparse.ArgumentTypeError(f"at most {MAX_T} timesteps (the paper runs 2000 at most), got {max(values)}")
    return values


def eps_values(parts: list[str], option: str = "--eps") -> list[Fraction]:
    """eps in pixel units from comma-separated, repeated options, each ``8/255`` or ``0.0314``, parsed
    exactly; anything else refused with one line (the range is the grid's to check)."""
    try:
        return [Fraction(v.strip()) for part in parts for v in part.split(",") if v.strip()]
    except (ValueError, ZeroDivisionError):
        raise SpikeAdvError(f"{option} takes eps in pixel units, e.g. {option} 8/255 or {option} 0.0314, "
                            f"got {' '.join(parts)!r}") from None
