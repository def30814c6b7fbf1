"""The ``spikeadv`` command line: each subcommand parses, calls the package and prints one line per
error (DESIGN section 5: commands only, no logic)."""

from __future__ import annotations

import argparse
import sys
import typing

import torch

from ..errors import SpikeAdvError
from ..records.provenance import __version__
from . import models, study
from .args import positive

DESCRIPTION = """Adversarial robustness of spiking neural networks (Sharmin et al.): train an ANN, a
converted SNN (SNN-I) and a spike-trained SNN (SNN-II), attack each whitebox and blackbox, report
the paper's Table I and Figs. 2-4. Start with `spikeadv run --preset smoke` (a minute, synthetic
data) or `spikeadv run` (the whole study on CIFAR-10, about 80 minutes on a 2-core CPU)."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"spikeadv: error: {self.prog.removeprefix('spikeadv').strip() or 'usage'}: {message} "
              f"(see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _global_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    """Options every command takes, before or after the subcommand."""
    p.add_argument("--threads", type=positive, default=None if top else argparse.SUPPRESS,
                   help="CPU threads for torch (default: torch's choice)")


def parser() -> argparse.ArgumentParser:
    """The command line: each command's options are declared beside its handler (``add_*`` in :mod:`.models` and :mod:`.study`)."""
    top = _Parser(prog="spikeadv", description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"spikeadv {__version__}")
    _global_args(top, top=True)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (models.add_data, models.add_train, models.add_convert, models.add_eval, study.add_run,
                study.add_report, study.add_evaluate, study.add_sweep, study.add_presets):
        add(sub)
    for p in _leaves(top):
        _global_args(p)
    return top


def _leaves(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser that runs a command (so global options work after the subcommand too)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [p]
    return [leaf for a in subs for child in dict.fromkeys(a.choices.values()) for leaf in _leaves(child)]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except SpikeAdvError as e:
        print(f"spikeadv: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave that cannot be read or written
        where = f": {e.filename}" if e.filename else ""
        print(f"spikeadv: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeadv: interrupted; finished work is saved: rerun the same command (train: with --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

