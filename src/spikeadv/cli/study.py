"""The commands on a study: ``run``, ``evaluate``, ``sweep``, ``report``, ``presets``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from ..config.presets import PRESETS, as_dict, get_preset
from ..errors import SpikeAdvError
from . import args as opts


def cmd_run(args: argparse.Namespace) -> None:
    """The whole study (paper Table III) and its report, reusing whatever the run directory holds."""
    from ..report import write_report
    from ..study.runner import run

    preset = get_preset(args.preset, args.overrides)
    out = args.out or Path("runs") / preset.name
    start = time.perf_counter()
    written = run(preset, out, write_report, args.root, executor=_executor(args))
    report = next(p for p in written if p.name == "report.html")
    print(f"done in {time.perf_counter() - start:.0f} s: results {out / 'results.jsonl'}, report {report}")


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole study: models, attacks, every scenario, the report")
    opts.preset_args(p)
    p.add_argument("--out", type=Path, help="run directory (default: runs/PRESET); a rerun reuses what it holds")
    opts.root_arg(p)
    _executor_args(p)
    p.set_defaults(func=cmd_run)


def _executor_args(p: argparse.ArgumentParser) -> None:
    opts.device_arg(p)
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: every task in this process (default); ray: each task a Ray task")
    p.add_argument("--address", help="ray: a running cluster, auto or HOST:PORT (default: start a local Ray)")
    p.add_argument("--workers", type=opts.positive, help="ray: worker processes of a local Ray (default: cores / threads)")
    p.add_argument("--gpus-per-task", type=float, default=0.0, metavar="F", help="ray: GPUs each task asks for")


def _executor(args: argparse.Namespace):
    """Where the tasks run (:class:`spikeadv.study.executors.Executor`), each with this process's torch threads,
    on ``--device`` (refused here if this machine lacks it: before anything is written)."""
    from ..study import executors

    if args.executor == "local" and (args.address or args.workers or args.gpus_per_task):
        raise SpikeAdvError("--address, --workers and --gpus-per-task apply to --executor ray")
    if not 0 <= args.gpus_per_task < 1e6:
        raise SpikeAdvError(f"--gpus-per-task must be >= 0, got {args.gpus_per_task}")
    threads = torch.get_num_threads()
    return executors.Executor(args.executor, args.address, args.workers or max(1, (os.cpu_count() or 1) // threads),
                    args.gpus_per_task, threads, executors.task_device(args.device, args.executor, args.gpus_per_task))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Adaptive evaluation: the suite's worst case per image, curves and gradient-masking checks."""
    from ..attack import suite
    from ..study import evaluation

    chosen = suite.get(args.suite or suite.DEFAULT)
    chosen = evaluation.custom_suite(chosen, args.pairs) if args.pairs else chosen
    chosen = dataclasses.replace(chosen, prune=False) if args.every_image else chosen
    eps = None if args.eps is None else evaluation.eps_grid(opts.eps_values(args.eps), chosen.norm)
    draws = None if args.draws is None else evaluation.draws_value(args.draws)
    executor = _executor(args)
    start = time.perf_counter()
    if args.models:
        written = _evaluate_yours(args, draws)
    elif args.path is None or not args.path.exists():
        raise SpikeAdvError(f"{args.path or 'nothing'} to evaluate: pass a run directory, a model checkpoint, or "
                            "--model module.path:function for a model of your own")
    else:
        written = evaluation.evaluate_path(args.path, chosen, eps, args.images, args.out, args.root,
                                           executor=executor, draws=draws, vote=args.vote or None)
    print(f"done in {time.perf_counter() - start:.0f} s: card {written[1]}, rows {written[2]}")


def _evaluate_yours(args: argparse.Namespace, draws: int | None) -> list[Path]:
    """``--model`` (one, or several compared pairwise) on the first ``--images`` test images of ``--data``."""
    from .. import data, runtime
    from ..api import compare
    from ..study import yours

    if args.path is not None:
        raise SpikeAdvError("give a run directory or checkpoint, or --model, not both")
    if args.weights and len(args.weights) != len(args.models):
        raise SpikeAdvError(f"--weights: give one per --model ({len(args.models)}), in the same order, or none")
    if args.data is None:
        raise SpikeAdvError("--model needs --data (the test images to attack, e.g. --data mnist)")
    models = {spec.partition(":")[2]: yours.load_factory(spec, w, args.T, args.encoding)
              for spec, w in zip(args.models, args.weights or [None] * len(args.models))}
    if len(models) != len(args.models):
        raise SpikeAdvError("--model: two factories of the same name; the card names models by their function")
    test = data.load(args.data, "test", args.root)
    n = args.images or 500
    if n > len(test):
        raise SpikeAdvError(f"--images {n} exceeds the {len(test)} test images of {args.data}")
    device = runtime.device(None if args.device == "auto" else args.device)
    x, y = data.to_float(test.images[:n]).to(device), test.labels[:n].long().to(device)
    out = args.out or Path("evaluation") / "-vs-".join(models)
    eps = None if args.eps is None else opts.eps_values(args.eps)
    options = {"suite": args.suite or "strong", "pairs": args.pairs or None, "draws": draws or 32,
               "vote": args.vote, "out": out}
    card = compare(models, x, y, eps, **options)
    return [out / "card.json", out / "card.md", out / "rows.jsonl"] if card else []


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="adaptive robustness evaluation of a run's models, a checkpoint, or your own "
                       "SpikingJelly, snnTorch, Norse or PyTorch model (--model module:function)")
    p.add_argument("path", type=Path, nargs="?", help="a run directory (every instance of each kind) or a model "
                   "checkpoint; or none, with --model")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a model of your own: an importable function that returns a torch.nn.Module (a SpikingJelly, "
                        "snnTorch or Norse SNN, wrapped in a TimeLoop by it or by --T); repeat to compare models")
    p.add_argument("--weights", action="append", default=[], type=Path, metavar="FILE",
                   help="weights of each --model, in order: safetensors or a PyTorch state dict (read with "
                        "torch's weights-only loader, never code)")
    p.add_argument("--T", type=opts.positive, help="timesteps: wrap each --model in a TimeLoop of T steps")
    p.add_argument("--encoding", choices=("direct", "poisson"), help="the TimeLoop's input encoding (with --T)")
    p.add_argument("--data", help="the test images for --model: mnist, fashion-mnist, cifar10, ...")
    p.add_argument("--suite", default=None,
                   help="strong (the default: the one that claims a bound, with its convergence check), or the "
                        "cheaper first looks quick and standard, or full")
    p.add_argument("--eps", action="append", default=None, metavar="EPS",
                   help="the robustness curve's eps grid in pixel units like every attack, increasing, "
                        "comma-separated or repeated, e.g. 2/255,8/255 or 0.0314 (default: 0.5/255 ... 32/255: "
                        "0.5, 1, 2, 3, 4, 6, 8, 16, 32 /255; grey images with --model: 0.05 ... 0.3)")
    p.add_argument("--draws", type=int, metavar="K",
                   help="encoder draws per judged input of a stochastic SNN (default: the study's, else 32)")
    p.add_argument("--vote", action="store_true",
                   help="judge a stochastic SNN by the majority of its K draws instead of their mean")
    p.add_argument("--images", type=opts.positive, help="test images (default: the study's, or 500 for a checkpoint)")
    p.add_argument("--pair", dest="pairs", action="append", default=[], metavar="ESTIMATOR/ATTACK[/STEPS]",
                   help="replace the suite's ensemble by these pairs, e.g. bptt:surrogate=atan/apgd-ce/100 (repeatable)")
    p.add_argument("--every-image", action="store_true",
                   help="run every pair on every image (each pair's own accuracy known; slower) instead of "
                        "only on the images earlier pairs left")
    p.add_argument("--out", type=Path, help="card folder (default: RUN/evaluation/SUITE)")
    opts.root_arg(p)
    _executor_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_sweep(args: argparse.Namespace) -> None:
    """Robust accuracy against T and encoding, per kind (DESIGN section 8.5), and its figure."""
    from ..report import sweep as figure
    from ..study import sweep

    preset = get_preset(args.preset, args.overrides)
    out = args.out or Path("runs") / f"{preset.name}-sweep"
    device = opts.device(args)
    start = time.perf_counter()
    written = figure.write(sweep.run(preset, out, args.root, device))
    print(f"done in {time.perf_counter() - start:.0f} s: {out / 'sweep.json'}, figure {written[0]}, table {written[-1]}")


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="robust accuracy against T and encoding, per kind, and its figure",
                       description="SNN-II and the ANN on its Poisson rate image trained at each T of sweep.T, SNN-I "
                                   "converted from the ANN and run at each T of sweep.snn1_T (Poisson input, reset "
                                   "by subtraction and signed; direct input), each attacked whitebox by PGD at "
                                   "sweep.eps; the cost is printed before it starts; a rerun resumes. "
                                   "E.g. --set sweep.T=4,6,8,12 --set sweep.snn1_T=16,32,64")
    opts.preset_args(p)
    p.add_argument("--out", type=Path, help="sweep directory (default: runs/PRESET-sweep); a rerun reuses what it holds")
    opts.root_arg(p)
    opts.device_arg(p)
    p.set_defaults(func=cmd_sweep)


def cmd_report(args: argparse.Namespace) -> None:
    """Tables and figures from a run directory's saved results alone."""
    from ..report import write_report

    written = write_report(args.run_dir, args.out)
    print(f"wrote {len(written)} files to {written[0].parent}: " + ", ".join(p.name for p in written))


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Table I and Fig. 2-4 from a run directory's saved results")
    p.add_argument("run_dir", type=Path, help="a run directory written by `spikeadv run`")
    p.add_argument("--out", type=Path, help="report folder (default: RUN_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_presets(args: argparse.Namespace) -> None:
    for name in [args.name] if args.name else list(PRESETS):
        print(json.dumps(as_dict(get_preset(name, args.overrides)), indent=2))


def add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="show presets (with overrides applied)")
    p.add_argument("name", nargs="?", choices=list(PRESETS), help="one preset (default: all)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="show the preset with this override applied (repeatable)")
    p.set_defaults(func=cmd_presets)


