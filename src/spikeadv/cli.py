"""The ``spikeadv`` command line: each subcommand parses, calls the package and prints one line per
error (DESIGN section 5: commands only, no logic)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path

import torch

from . import data, runtime
from .config.datasets import DATASETS, GENERATED
from .config.presets import PRESETS, Preset, as_dict, get_preset, recorded
from .errors import SpikeAdvError
from .records import checkpoint
from .records.provenance import __version__

DESCRIPTION = """Adversarial robustness of spiking neural networks (Sharmin et al.): train an ANN, a
converted SNN (SNN-I) and a spike-trained SNN (SNN-II), attack each whitebox and blackbox, report
the paper's Table I and Figs. 2-4. Start with `spikeadv run --preset smoke` (a minute, synthetic
data) or `spikeadv run` (the whole study on CIFAR-10, about 80 minutes on a 2-core CPU)."""


def _preset_args(p: argparse.ArgumentParser, default: str | None = "cpu") -> None:
    p.add_argument("--preset", default=default, help=f"one of {', '.join(PRESETS)} "
                   + ("(default: cpu)" if default else "(default: the one recorded in the checkpoint)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set ann.epochs=3 (repeatable; see `spikeadv presets`)")


def _root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, help="data directory (default: $SPIKEADV_DATA or ~/.cache/spikeadv/data)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (the first CUDA GPU if there is one, else the CPU), "
                   "cpu, cuda or cuda:N (default: auto); not part of a result's identity: resume on any device")


def _device(args: argparse.Namespace) -> torch.device:
    """``--device`` resolved (one line and nothing written if this machine lacks it), and printed."""
    device = runtime.use(args.device)
    print(f"device: {runtime.describe(device)}")
    return device


def cmd_data_prepare(args: argparse.Namespace) -> None:
    path, already = data.prepare(args.name, args.root)
    print(f"{args.name}: already prepared and verified at {path}" if already else f"{args.name}: prepared at {path}")


def cmd_data_info(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else [n for n in DATASETS if n not in GENERATED]:
        print(json.dumps(data.info(name, args.root), indent=2, default=str))


def _add_data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="prepare and inspect datasets").add_subparsers(dest="data_command", required=True)
    p = d.add_parser("prepare", help="download, decode and verify a dataset")
    p.add_argument("name", help=", ".join(n for n in DATASETS if n not in GENERATED))
    p.set_defaults(func=cmd_data_prepare)
    p = d.add_parser("info", help="where a dataset is and whether it verifies")
    p.add_argument("name", nargs="?", help="one dataset (default: all)")
    p.set_defaults(func=cmd_data_info)
    for p in d.choices.values():
        _root_arg(p)


def _datasets(preset: Preset, root: Path | None) -> tuple[data.Dataset, data.Dataset]:
    train_ds = data.load(preset.dataset, "train", root)
    test_ds = data.load(preset.dataset, "test", root)
    return train_ds, test_ds.subset(preset.test_subset) if preset.test_subset else test_ds


def cmd_train(args: argparse.Namespace) -> None:
    """ANN (paper IV-B) or SNN-II (paper III-B): the same loop, the SNN run through time."""
    from .models.train import fit
    from .runtime.distributed import is_main

    preset = get_preset(args.preset, args.overrides)
    device = _device(args) if is_main() else runtime.use(args.device)
    train_ds, test_ds = _datasets(preset, args.root)
    seed = preset.seeds[0] if args.seed is None else args.seed
    kind = "ann" if args.kind == "ann" else "snn2"
    out = args.out or Path("runs") / preset.name / f"{kind}-seed{seed}.safetensors"
    start = time.perf_counter()
    _, meta = fit(kind, preset, seed, out, train_ds, test_ds, resume=args.resume, device=device)
    final = meta["metrics"][-1]
    if is_main():  # under torchrun: rank 0
        print(f"done: {out}: test accuracy {final.get('test_acc', float('nan')):.2f}% on {len(test_ds)} images, "
              f"{meta['epochs_done']} epochs, {time.perf_counter() - start:.0f} s this call")


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model").add_subparsers(dest="kind", required=True)
    for kind, text in (("ann", "the ANN (paper section IV-B)"), ("snn", "SNN-II: LIF, BPTT with a surrogate (III-B)")):
        p = t.add_parser(kind, help=f"train {text}", description=(
            f"Train {text}. Data parallel over N processes (CPU: gloo, GPU: nccl): torchrun --nproc-per-node N "
            f"-m spikeadv train {kind} ...; the preset's batch size is the global batch, a multiple of N, and "
            "N processes reach the weights of one (within float tolerance)."))
        _preset_args(p)
        p.add_argument("--seed", type=int, help="default: the preset's first seed")
        p.add_argument("--out", type=Path, help="checkpoint path (default: runs/PRESET/KIND-seedN.safetensors)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
        _root_arg(p)
        _device_arg(p)
        p.set_defaults(func=cmd_train)


def cmd_convert(args: argparse.Namespace) -> None:
    """SNN-I from a trained ANN by threshold balancing (paper III-A, IV-C)."""
    from .models.convert import convert_file

    if args.preset:
        preset = get_preset(args.preset, args.overrides)
    else:
        meta = checkpoint.load(args.ann)[1]
        if not isinstance(meta.get("preset"), dict):
            raise SpikeAdvError(f"{args.ann} records no preset; pass --preset")
        preset = recorded(meta["preset"], args.overrides)
    device = _device(args)
    train_ds, test_ds = _datasets(preset, args.root)
    out = args.out or args.ann.with_name(args.ann.name.replace("ann", "snn1", 1) if "ann" in args.ann.name
                                         else f"snn1-{args.ann.name}")
    if out.exists() and not args.force:
        raise SpikeAdvError(f"{out} exists; pass --force to replace it, or choose another --out")
    start = time.perf_counter()
    net = convert_file(args.ann, preset, train_ds, test_ds, args.seed, out, device=device)
    c = preset.snn1
    print(f"converted {args.ann} -> {out} ({c.method} balancing on {c.images} images, T={c.T}, "
          f"{time.perf_counter() - start:.0f} s); thresholds " + ", ".join(f"{t:.3g}" for t in net.thresholds.tolist()))


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="SNN-I: convert a trained ANN by threshold balancing (III-A)")
    p.add_argument("ann", type=Path, help="ANN checkpoint")
    _preset_args(p, default=None)
    p.add_argument("--seed", type=int, default=0, help="picks the balancing images and their spikes")
    p.add_argument("--out", type=Path, help="default: the ANN's name with ann -> snn1")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    _root_arg(p)
    _device_arg(p)
    p.set_defaults(func=cmd_convert)


def cmd_eval(args: argparse.Namespace) -> None:
    import statistics

    from .models.train import accuracy
    from .models.trained import load_network, spiking

    device = _device(args)
    net, meta = load_network(args.checkpoint, device)
    snn = spiking(meta)
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
    if snn is None:
        print(f"{args.checkpoint}: ann accuracy {accuracy(net, ds, bf16=args.bf16, device=device):.2f}% on {where}")
        return
    for T in args.T or [snn.T]:  # several: the accuracy-vs-T curve, the same encoder seeds at every T
        snn = dataclasses.replace(snn, T=T, reset=args.reset or snn.reset)
        spikes: dict = {}
        accs = [accuracy(net, ds, snn=snn, seed=args.seed + r, spikes=spikes if r == 0 else None, bf16=args.bf16,
                         device=device) for r in range(args.repeats)]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        reset = f", {snn.reset} reset" if snn.reset != "subtract" else ""
        print(f"{args.checkpoint}: {meta['kind']} ({snn.neuron.upper()}, T={snn.T}{reset}) accuracy "
              f"{statistics.mean(accs):.2f}% +- {std:.2f} over {len(accs)} encoder seeds on {where}")
        rates = ", ".join(f"{i}:{net.spec.layers[i].kind} {float(v) / (snn.T * len(ds)):.3f}" for i, v in spikes.items())
        print(f"mean spike rate per layer (spikes per neuron per step): {rates}")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="clean accuracy of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="a model checkpoint (.safetensors) written by spikeadv")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split (default: test)")
    p.add_argument("--subset", type=_positive, help="first N images only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16)")
    p.add_argument("--T", type=_timesteps, help="SNN timesteps, or several for an accuracy-vs-T curve, e.g. "
                   "32,64,128,256 (default: the checkpoint's)")
    p.add_argument("--reset", choices=["subtract", "zero", "signed"],
                   help="SNN: run with this reset instead of the checkpoint's (signed: IF neurons whose spikes are "
                        "taken back when the membrane falls below zero)")
    p.add_argument("--repeats", type=_positive, default=1, help="SNN: mean and std over R encoder seeds")
    p.add_argument("--seed", type=int, default=0, help="SNN: first encoder seed")
    _root_arg(p)
    _device_arg(p)
    p.set_defaults(func=cmd_eval)


def cmd_run(args: argparse.Namespace) -> None:
    """The whole study (paper Table III) and its report, reusing whatever the run directory holds."""
    from .report import write_report
    from .study.runner import run

    preset = get_preset(args.preset, args.overrides)
    out = args.out or Path("runs") / preset.name
    start = time.perf_counter()
    written = run(preset, out, write_report, args.root, executor=_executor(args))
    report = next(p for p in written if p.name == "report.html")
    print(f"done in {time.perf_counter() - start:.0f} s: results {out / 'results.jsonl'}, report {report}")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole study: models, attacks, every scenario, the report")
    _preset_args(p)
    p.add_argument("--out", type=Path, help="run directory (default: runs/PRESET); a rerun reuses what it holds")
    _root_arg(p)
    _executor_args(p)
    p.set_defaults(func=cmd_run)


def _executor_args(p: argparse.ArgumentParser) -> None:
    _device_arg(p)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: every task in this process (default); ray: each task a Ray task")
    p.add_argument("--address", help="ray: a running cluster, auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--workers", type=_positive, help="ray: worker processes of a local Ray (default: cores / threads)")
    p.add_argument("--gpus-per-task", type=float, default=0.0, metavar="F", help="ray: GPUs each task asks for")


def _executor(args: argparse.Namespace):
    """Where the tasks run (:class:`spikeadv.study.executors.Executor`), each with this process's torch threads,
    on ``--device`` (refused here if this machine lacks it: before anything is written)."""
    from .study import executors

    if args.executor == "local" and (args.address or args.workers or args.gpus_per_task):
        raise SpikeAdvError("--address, --workers and --gpus-per-task apply to --executor ray")
    if not 0 <= args.gpus_per_task < 1e6:
        raise SpikeAdvError(f"--gpus-per-task must be >= 0, got {args.gpus_per_task}")
    threads = torch.get_num_threads()
    return executors.Executor(args.executor, args.address, args.workers or max(1, (os.cpu_count() or 1) // threads),
                    args.gpus_per_task, threads, executors.task_device(args.device, args.executor, args.gpus_per_task))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Adaptive evaluation: the suite's worst case per image, curves and gradient-masking checks."""
    from .attack import suite
    from .study import evaluation

    chosen = suite.get(args.suite)
    chosen = evaluation.custom_suite(chosen, args.pairs) if args.pairs else chosen
    chosen = dataclasses.replace(chosen, prune=False) if args.every_image else chosen
    eps = evaluation.eps_grid(_numbers(args.eps, "--eps")) if args.eps else evaluation.EPS_GRID
    draws = None if args.draws is None else evaluation.draws_value(args.draws)
    executor = _executor(args)
    if not args.path.exists():
        raise SpikeAdvError(f"{args.path} does not exist; pass a run directory or a model checkpoint")
    start = time.perf_counter()
    written = evaluation.evaluate_path(args.path, chosen, eps, args.images, args.out, args.root, executor=executor,
                                       draws=draws, vote=args.vote or None)
    print(f"done in {time.perf_counter() - start:.0f} s: card {written[1]}, rows {written[2]}")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="adaptive robustness evaluation of a run's models or a checkpoint")
    p.add_argument("path", type=Path, help="a run directory (its instance-0 models) or a model checkpoint")
    p.add_argument("--suite", default="standard", help="quick, standard or full (default: standard)")
    p.add_argument("--eps", action="append", default=None, metavar="EPS",
                   help="the robustness curve's eps grid in 1/255 units, increasing, comma-separated or repeated "
                        "(default: 0.5,1,2,3,4,6,8,16,32)")
    p.add_argument("--draws", type=int, metavar="K",
                   help="encoder draws per judged input of a stochastic SNN (default: the study's, else 32)")
    p.add_argument("--vote", action="store_true",
                   help="judge a stochastic SNN by the majority of its K draws instead of their mean")
    p.add_argument("--images", type=_positive, help="test images (default: the study's, or 500 for a checkpoint)")
    p.add_argument("--pair", dest="pairs", action="append", default=[], metavar="ESTIMATOR/ATTACK[/STEPS]",
                   help="replace the suite's ensemble by these pairs, e.g. bptt:surrogate=atan/apgd-ce/100 (repeatable)")
    p.add_argument("--every-image", action="store_true",
                   help="run every pair on every image (each pair's own accuracy known; slower) instead of "
                        "only on the images earlier pairs left")
    p.add_argument("--out", type=Path, help="card folder (default: RUN/evaluation/SUITE)")
    _root_arg(p)
    _executor_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_report(args: argparse.Namespace) -> None:
    """Tables and figures from a run directory's saved results alone."""
    from .report import write_report

    written = write_report(args.run_dir, args.out)
    print(f"wrote {len(written)} files to {written[0].parent}: " + ", ".join(p.name for p in written))


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Table I and Fig. 2-4 from a run directory's saved results")
    p.add_argument("run_dir", type=Path, help="a run directory written by `spikeadv run`")
    p.add_argument("--out", type=Path, help="report folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_presets(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else list(PRESETS):
        print(json.dumps(as_dict(get_preset(name, args.overrides)), indent=2))


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="show presets (with overrides applied)")
    p.add_argument("name", nargs="?", choices=list(PRESETS), help="one preset (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="show the preset with this override applied (repeatable)")
    p.set_defaults(func=cmd_presets)


def _numbers(parts: list[str], option: str) -> list[float]:
    """Comma-separated numbers from repeated options, refused with one line if one is not a number."""
    try:
        return [float(v) for part in parts for v in part.split(",") if v.strip()]
    except ValueError:
        raise SpikeAdvError(f"{option} takes numbers, e.g. {option} 8,16, got {' '.join(parts)!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _timesteps(text: str) -> list[int]:
    """``--T``: one or more comma-separated timesteps, each >= 1."""
    try:
        values = [_positive(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"takes whole numbers >= 1, e.g. 32 or 32,64,128, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """Usage errors in the same one-line form as every other error."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"spikeadv: error: {self.prog.removeprefix('spikeadv').strip() or 'usage'}: {message} "
              f"(see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _global_args(p: argparse.ArgumentParser, top: bool = False) -> None:
    """Options every command takes, before or after the subcommand."""
    p.add_argument("--threads", type=_positive, default=None if top else argparse.SUPPRESS,
                   help="CPU threads for torch (default: torch's choice)")


def parser() -> argparse.ArgumentParser:
    """The command line: each command's options are declared beside its handler (``_add_*``)."""
    top = _Parser(prog="spikeadv", description=DESCRIPTION)
    top.add_argument("--version", action="version", version=f"spikeadv {__version__}")
    _global_args(top, top=True)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_train, _add_convert, _add_eval, _add_run, _add_report, _add_evaluate, _add_presets):
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
