"""The ``spikeadv`` command: each stage of the study is a subcommand. Commands only, no logic."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import __version__, checkpoint, data
from .errors import SpikeAdvError
from .presets import PRESETS, as_dict, get_preset


def _preset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help=f"one of {', '.join(PRESETS)} (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set ann.epochs=3 (repeatable)")


def cmd_data_prepare(args: argparse.Namespace) -> None:
    path, already = data.prepare(args.name, args.root)
    print(f"{args.name}: already prepared and verified at {path}" if already else f"{args.name}: prepared at {path}")


def cmd_data_info(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else [n for n in data.DATASETS if n != "synthetic"]:
        print(json.dumps(data.info(name, args.root), indent=2, default=str))


def cmd_train_ann(args: argparse.Namespace) -> None:
    from .arch import Network
    from .train import train

    preset = get_preset(args.preset, args.overrides)
    train_ds = data.load(preset.dataset, "train", args.root)
    test_ds = data.load(preset.dataset, "test", args.root)
    if preset.test_subset:
        test_ds = test_ds.subset(preset.test_subset)
    seed = preset.seeds[0] if args.seed is None else args.seed
    out = args.out or Path("runs") / preset.name / f"ann-seed{seed}.safetensors"
    info = train_ds.info
    net = Network(preset.spec, info.shape[0], info.mean, info.std, width=preset.width,
                  dropout=preset.dropout, batchnorm=preset.batchnorm)
    print(f"training ann: {preset.spec} width {preset.width} ({net.parameter_count():,} weights), "
          f"{preset.ann.epochs} epochs, seed {seed}, {len(train_ds)} images -> {out}")
    meta = {
        "kind": "ann",
        "preset": as_dict(preset),
        "data": {"dataset": preset.dataset, "train": train_ds.digest, "test": test_ds.digest},
    }
    start = time.perf_counter()
    _, meta = train(net, train_ds, test_ds, preset.ann, seed=seed, out=out, meta=meta, resume=args.resume)
    final = meta["metrics"][-1]
    print(f"done: {out} — test accuracy {final.get('test_acc', float('nan')):.2f}% on {len(test_ds)} images, "
          f"{meta['epochs_done']} epochs, {time.perf_counter() - start:.0f} s this call")


def cmd_eval(args: argparse.Namespace) -> None:
    from .train import accuracy

    net, meta = checkpoint.load_model(args.checkpoint)
    name = args.dataset or meta.get("data", {}).get("dataset")
    if name is None:
        raise SpikeAdvError(f"{args.checkpoint} does not record its dataset; pass --dataset")
    ds = data.load(name, args.split, args.root)
    if tuple(ds.info.shape) != net.input_shape or ds.info.classes != net.classes:
        raise SpikeAdvError(
            f"{args.checkpoint} expects {net.input_shape} inputs and {net.classes} classes; "
            f"{name} has {tuple(ds.info.shape)} and {ds.info.classes}"
        )
    if args.subset:
        ds = ds.subset(args.subset)
    acc = accuracy(net, ds, bf16=args.bf16)
    print(f"{args.checkpoint}: {meta.get('kind', '?')} accuracy {acc:.2f}% on {name}/{args.split} ({len(ds)} images)")


def cmd_presets(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else list(PRESETS):
        print(json.dumps(as_dict(get_preset(name, args.overrides)), indent=2))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="spikeadv", description=__doc__)
    top.add_argument("--version", action="version", version=f"spikeadv {__version__}")
    top.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's choice)")
    sub = top.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="prepare and inspect datasets").add_subparsers(dest="data_command", required=True)
    p = d.add_parser("prepare", help="download, decode and verify a dataset")
    p.add_argument("name", help=", ".join(n for n in data.DATASETS if n != "synthetic"))
    p.set_defaults(func=cmd_data_prepare)
    p = d.add_parser("info", help="where a dataset is and whether it verifies")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_data_info)
    for p in d.choices.values():
        p.add_argument("--root", type=Path, help="data directory (default: $SPIKEADV_DATA or ~/.cache/spikeadv/data)")

    t = sub.add_parser("train", help="train a model").add_subparsers(dest="kind", required=True)
    p = t.add_parser("ann", help="train the ANN (paper section IV-B)")
    _preset_args(p)
    p.add_argument("--seed", type=int, help="default: the preset's first seed")
    p.add_argument("--out", type=Path, help="checkpoint path (default: runs/PRESET/ann-seedN.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    p.add_argument("--root", type=Path, help="data directory")
    p.set_defaults(func=cmd_train_ann)

    p = sub.add_parser("eval", help="clean accuracy of a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--subset", type=_positive, help="first N images only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16)")
    p.add_argument("--root", type=Path, help="data directory")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("presets", help="show presets (with overrides applied)")
    p.add_argument("name", nargs="?", choices=list(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_presets)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except SpikeAdvError as e:
        print(f"spikeadv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeadv: interrupted; finished epochs are saved, rerun with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
