"""The commands on datasets and single models: ``data``, ``train``, ``convert``, ``eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from .. import data, runtime
from ..config.datasets import DATASETS, GENERATED
from ..config.presets import get_preset, recorded
from ..errors import SpikeAdvError
from ..records import checkpoint, writable
from . import args as opts


def cmd_data_prepare(args: argparse.Namespace) -> None:
    path, already = data.prepare(args.name, args.root)
    print(f"{args.name}: already prepared and verified at {path}" if already else f"{args.name}: prepared at {path}")


def cmd_data_info(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else [n for n in DATASETS if n not in GENERATED]:
        print(json.dumps(data.info(name, args.root), indent=2, default=str))


def add_data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="prepare and inspect datasets").add_subparsers(dest="data_command", required=True)
    p = d.add_parser("prepare", help="download, decode and verify a dataset")
    p.add_argument("name", help=", ".join(n for n in DATASETS if n not in GENERATED))
    p.set_defaults(func=cmd_data_prepare)
    p = d.add_parser("info", help="where a dataset is and whether it verifies")
    p.add_argument("name", nargs="?", help="one dataset (default: all)")
    p.set_defaults(func=cmd_data_info)
    for p in d.choices.values():
        opts.root_arg(p)


TRAIN_KINDS = {"ann": "ann", "snn": "snn2", "rate": "ann-rate"}  # train's sub-commands -> the kinds they train


def cmd_train(args: argparse.Namespace) -> None:
    """ANN (paper IV-B), SNN-II (paper III-B) or the ANN on SNN-II's rate image: the same loop."""
    from ..models.kinds import fit
    from ..runtime.distributed import is_main

    preset = get_preset(args.preset, args.overrides)
    seed = preset.seeds[0] if args.seed is None else args.seed
    kind = TRAIN_KINDS[args.kind]
    out = args.out or Path("runs") / preset.name / f"{kind}-seed{seed}.safetensors"
    writable(out, f"{kind}.safetensors")  # before any data is read or any epoch trained
    device = opts.device(args) if is_main() else runtime.use(args.device)
    splits = opts.datasets(preset, args.root)
    start = time.perf_counter()
    _, meta = fit(kind, preset, seed, out, splits, resume=args.resume, device=device)
    final = meta["metrics"][-1]
    if is_main():  # under torchrun: rank 0
        print(f"done: {out}: validation accuracy {final.get('val_acc', float('nan')):.2f}% on "
              f"{len(splits.validation)} held-out training images, {meta['epochs_done']} epochs, "
              f"{time.perf_counter() - start:.0f} s this call")


def add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model").add_subparsers(dest="kind", required=True)
    for kind, text in (("ann", "the ANN (paper section IV-B)"), ("snn", "SNN-II: LIF, BPTT with a surrogate (III-B)"),
                       ("rate", "the noise-matched ANN: the ANN on SNN-II's Poisson rate image, no spikes inside")):
        p = t.add_parser(kind, help=f"train {text}", description=(
            f"Train {text}. Data parallel over N processes (CPU: gloo, GPU: nccl): torchrun --nproc-per-node N "
            f"-m spikeadv train {kind} ...; the preset's batch size is the global batch, a multiple of N, and "
            "N processes reach the weights of one (within float tolerance)."))
        opts.preset_args(p)
        p.add_argument("--seed", type=int, help="default: the preset's first seed")
        p.add_argument("--out", type=Path, help="checkpoint path (default: runs/PRESET/KIND-seedN.safetensors)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
        opts.root_arg(p)
        opts.device_arg(p)
        p.set_defaults(func=cmd_train)


def cmd_convert(args: argparse.Namespace) -> None:
    """SNN-I from a trained ANN by threshold balancing (paper III-A, IV-C)."""
    from ..models.convert import convert_file
    from ..models.trained import interrupted

    preset = get_preset(args.preset, args.overrides) if args.preset else None  # a bad override: refused first
    meta = checkpoint.load(args.ann)[1]
    unfinished = interrupted(args.ann, meta)
    if unfinished and not args.incomplete:
        raise SpikeAdvError(f"{unfinished}, or pass --incomplete to convert it as it is")
    if unfinished:
        print(f"warning: {unfinished}")
    if preset is None:
        if not isinstance(meta.get("preset"), dict):
            raise SpikeAdvError(f"{args.ann} records no preset; pass --preset")
        preset = recorded(meta["preset"], args.overrides)
    out = args.out or args.ann.with_name(args.ann.name.replace("ann", "snn1", 1) if "ann" in args.ann.name
                                         else f"snn1-{args.ann.name}")
    writable(out, "snn1.safetensors")
    if out.exists() and not args.force:
        raise SpikeAdvError(f"{out} exists; pass --force to replace it, or choose another --out")
    device = opts.device(args)
    start = time.perf_counter()
    net = convert_file(args.ann, preset, opts.datasets(preset, args.root), args.seed, out, device=device)
    c = preset.snn1
    print(f"converted {args.ann} -> {out} ({c.method} balancing on {c.images} images, T={c.T}, "
          f"{time.perf_counter() - start:.0f} s); thresholds " + ", ".join(f"{t:.3g}" for t in net.thresholds.tolist()))


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="SNN-I: convert a trained ANN by threshold balancing (III-A)")
    p.add_argument("ann", type=Path, help="ANN checkpoint")
    opts.preset_args(p, default=None)
    p.add_argument("--seed", type=int, default=0, help="picks the balancing images and their spikes")
    p.add_argument("--out", type=Path, help="default: the ANN's name with ann -> snn1")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--incomplete", action="store_true", help="convert an ANN whose training was interrupted")
    opts.root_arg(p)
    opts.device_arg(p)
    p.set_defaults(func=cmd_convert)


def cmd_eval(args: argparse.Namespace) -> None:
    import statistics

    from ..models.train import accuracy
    from ..models.trained import interrupted, load_network, spiking

    device = opts.device(args)
    net, meta = load_network(args.checkpoint, device)
    snn = spiking(meta)
    if snn is None:
        given = [f"--{k}" for k in ("T", "reset", "repeats", "seed") if getattr(args, k) is not None]
        if given:
            raise SpikeAdvError(f"{' and '.join(given)} apply to an SNN; {args.checkpoint} is an ANN (it has no "
                                "timesteps, reset or encoder)")
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
    where = f"{name}/{args.split} ({len(ds)} images)"
    unfinished = interrupted(args.checkpoint, meta)
    if unfinished:
        print(f"warning: {unfinished}")
    if snn is None:
        print(f"{args.checkpoint}: ann accuracy {accuracy(net, ds, bf16=args.bf16, device=device):.2f}% on {where}")
        return
    repeats, seed = args.repeats or 1, args.seed or 0
    steps = sum(args.T or [snn.T]) * repeats * len(ds)
    print(f"evaluating {len(ds)} images x {repeats} encoder seed(s) at T = {', '.join(map(str, args.T or [snn.T]))}: "
          f"{steps:,} image-timesteps")
    for T in args.T or [snn.T]:  # several: the accuracy-vs-T curve, the same encoder seeds at every T
        snn = dataclasses.replace(snn, T=T, reset=args.reset or snn.reset)
        spikes: dict = {}
        accs = [accuracy(net, ds, snn=snn, seed=seed + r, spikes=spikes if r == 0 else None, bf16=args.bf16,
                         device=device) for r in range(repeats)]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        reset = f", {snn.reset} reset" if snn.reset != "subtract" else ""
        print(f"{args.checkpoint}: {meta['kind']} ({snn.neuron.upper()}, T={snn.T}{reset}) accuracy "
              f"{statistics.mean(accs):.2f}% +- {std:.2f} over {len(accs)} encoder seeds on {where}")
        rates = ", ".join(f"{i}:{net.spec.layers[i].kind} {float(v) / (snn.T * len(ds)):.3f}" for i, v in spikes.items())
        print(f"mean spike rate per layer (spikes per neuron per step): {rates}")


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="clean accuracy of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="a model checkpoint (.safetensors) written by spikeadv")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split (default: test)")
    p.add_argument("--subset", type=opts.positive, help="first N images only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16)")
    p.add_argument("--T", type=opts.timesteps, help="SNN timesteps, or several for an accuracy-vs-T curve, e.g. "
                   "32,64,128,256 (default: the checkpoint's)")
    p.add_argument("--reset", choices=["subtract", "zero", "signed"],
                   help="SNN: run with this reset instead of the checkpoint's (signed: IF neurons whose spikes are "
                        "taken back when the membrane falls below zero)")
    p.add_argument("--repeats", type=opts.positive, help="SNN: mean and std over R encoder seeds (default: 1)")
    p.add_argument("--seed", type=int, help="SNN: first encoder seed (default: 0)")
    opts.root_arg(p)
    opts.device_arg(p)
    p.set_defaults(func=cmd_eval)


