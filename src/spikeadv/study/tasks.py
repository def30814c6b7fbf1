"""One task of the study's plan (:func:`.plan.plan`), run from its recipe, the run directory and its
dependencies' results alone, on whichever process an executor gives it. Every task is idempotent:
what the run directory already holds (verified by its digest) is reused, what it computes is written
atomically, so a task retried after its worker died, or run twice by two processes, leaves one
correct file."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .. import data, runtime
from ..config.grid import MATCHED
from ..config.presets import Preset, recorded
from ..errors import SpikeAdvError
from ..models.kinds import fit, match, validation_accuracy
from ..models.network import Network
from ..models.neurons import backend_on
from ..models.trained import Trained, load_network, model_digest, spiking
from ..records import cached, outcomes, read_json
from ..records.provenance import digest
from . import compute
from .judge import stochastic
from .plan import Job, Task


@dataclass
class Context:
    """What every task of one run shares, loaded once per process: the preset (from run.json), the
    device, the data (training part, validation part, test images), the attacked test images, their
    labels and the paper's random targets (the last three on the device)."""

    preset: Preset
    device: torch.device
    data: data.Splits
    x: Tensor
    y: Tensor
    goal: Tensor
    labels: str
    models: dict[str, tuple[tuple[int, int], Trained]] = field(default_factory=dict)  # by kind and file
    clean: dict[str, list[Tensor]] = field(default_factory=dict)  # by file: named by digest, never rewritten


_context: dict[tuple, Context] = {}


def context(out: Path, root: Path | None, device: torch.device) -> Context:
    """The run's shared inputs, cached for the life of the process (one run at a time)."""
    preset_json = read_json(out / "run.json")["preset"]
    key = (str(out.resolve()), str(root), json.dumps(preset_json, sort_keys=True), str(device))
    if key not in _context:
        preset = recorded(preset_json)
        splits = data.splits(preset.dataset, preset.validation, preset.test_subset, root)
        test = splits.test
        x, y = data.to_float(test.images[:preset.study.images]), test.labels[:preset.study.images].long()
        goal = compute.random_targets(y, test.info.classes, preset.study)  # from the CPU labels: data
        _context.clear()
        _context[key] = Context(preset, device, splits, x.to(device), y.to(device), goal.to(device),
                                digest(y.tolist()))
    return _context[key]


def _checkpoint(path: Path, recipe: dict, log: Callable[[str], None], can_write: bool) -> tuple[Network, dict] | None:
    """The usable checkpoint at ``path`` (its network and metadata), or None when there is none: a file
    that fails its integrity check or holds another model than its name says is moved aside (never
    deleted)."""
    if not path.exists():
        return None
    try:
        net, meta = load_network(path, "cpu")  # checked, not run: on the CPU
        if meta.get("recipe", recipe) != recipe:
            raise SpikeAdvError(f"{path} holds another model than its name says (its recipe differs)")
        return net, meta
    except SpikeAdvError as e:
        if not can_write:
            raise
        aside = path.with_name(f"{path.name}.{os.getpid()}.{int(time.time())}.rejected")
        path.rename(aside)
        log(f"{e}; moved it to {aside.name}, rebuilding it")
        return None


def _model(ctx: Context, out: Path, built: dict) -> Trained:
    """A model a task depends on, loaded once per process while its file is unchanged."""
    path = out / built["path"]
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    key = f"{built['kind']}:{built['path']}"  # two kinds may run one file (an accuracy-matched ANN, a snapshot)
    cached = ctx.models.get(key)
    if cached is None or cached[0] != version:
        net, meta = load_network(path, ctx.device)
        snn = spiking(meta, T=ctx.preset.study.snn1_T if built["kind"] == "snn1" else None)
        model = Trained(built["kind"], built["instance"], net, snn, path, model_digest(net, meta), meta)
        if model.sha256 != built["sha256"]:
            raise SpikeAdvError(f"{path} changed while the study ran (its content hash differs); rerun the study")
        ctx.models[key] = cached = (version, model)
    return cached[1]


def _build(task: Task, ctx: Context, out: Path, deps: dict[str, dict], can_write: bool,
           log: Callable[[str], None]) -> dict:
    """Train (ann, snn2, ann-rate) or convert (snn1, from its ANN) one model, or reuse its checkpoint;
    or choose an accuracy-matched ANN (:func:`_matched`)."""
    from ..models.convert import convert_file

    kind, instance, seed = task.recipe["kind"], task.recipe["instance"], task.recipe["seed"]
    if kind in MATCHED:
        return _matched(task, out, deps)
    parent = deps.get(f"ann{instance}") if kind == "snn1" else None
    recipe = {**task.recipe["model"], "parent": parent["sha256"]} if parent else task.recipe["model"]
    path = out / "models" / f"{task.name}-{digest(recipe)}.safetensors"
    found = _checkpoint(path, recipe, log, can_write)
    reused = found is not None and (kind == "snn1" or found[1].get("complete", False))
    if reused:
        log(f"reusing {path.name}")
    elif not can_write:
        raise SpikeAdvError(f"{out} is read-only and {path.name} needs building; make it writable or pass another --out")
    elif parent:
        convert_file(out / parent["path"], ctx.preset, ctx.data, seed, path, recipe=recipe, device=ctx.device)
    else:
        fit(kind, ctx.preset, seed, path, ctx.data, resume=True, log=log, recipe=recipe, device=ctx.device)
    net, meta = load_network(path, "cpu")  # for its digest: wherever the tasks compute
    return {"kind": kind, "instance": instance, "path": str(path.relative_to(out)), "reused": reused,
            "sha256": model_digest(net, meta), "seed": meta.get("seed"),
            "seconds": meta["seconds"] if parent else sum(m["seconds"] for m in meta["metrics"]),
            "val_acc": validation_accuracy(meta), "snapshots": meta.get("snapshots", []),
            "augmentation": parent["augmentation"] if parent else meta.get("augmentation")}


def _matched(task: Task, out: Path, deps: dict[str, dict]) -> dict:
    """The accuracy-matched ANN of one instance (:func:`spikeadv.models.kinds.match`): the ANN's snapshot
    whose validation accuracy is closest to its SNN's, chosen from the two checkpoints' records alone."""
    kind, instance = task.recipe["kind"], task.recipe["instance"]
    ann, snn = deps[f"ann{instance}"], deps[f"{MATCHED[kind]}{instance}"]
    chosen = match(ann["snapshots"], snn["val_acc"])
    path = (out / ann["path"]).with_name(Path(ann["path"]).stem + ".snapshots") / chosen["path"]
    net, meta = load_network(path, "cpu")
    if meta.get("snapshot", {}).get("step") != chosen["step"]:
        raise SpikeAdvError(f"{path} is not the snapshot its ANN recorded; rerun the study in a fresh run directory")
    return {"kind": kind, "instance": instance, "path": str(path.relative_to(out)), "reused": True,
            "sha256": model_digest(net, meta), "seed": meta.get("seed"), "seconds": 0.0,
            "val_acc": chosen["val_acc"], "snapshots": [], "augmentation": ann["augmentation"],
            "matched": {k: chosen[k] for k in ("to", "gap", "matched", "step", "epoch")} | {"snn": snn["path"]}}


def _clean(task: Task, ctx: Context, out: Path, deps: dict[str, dict], can_write: bool,
           log: Callable[[str], None]) -> dict:
    """A model's expected correctness per clean image, and its run.json entry (Table I): accuracy, and
    for a stochastic model the standard deviation of single-draw accuracy implied by its per-image p."""
    built = deps[task.recipe["model"]]
    model = _model(ctx, out, built)
    p, found = compute.clean_predictions(model, ctx.x, ctx.y, ctx.preset.study, out / "clean", can_write, log)
    draws = ctx.preset.study.draws if stochastic(model) else 1
    entry = {
        "kind": model.kind, "instance": model.instance, "clean_acc": round(100.0 * p.mean().item(), 3),
        "clean_std": round(100.0 * math.sqrt((p * (1 - p)).sum().item()) / len(p), 3), "draws": draws,
        "T": model.snn.T if model.snn else None, "images": len(ctx.y), "path": built["path"],
        "sha256": model.sha256, "seed": built["seed"], "val_acc": built["val_acc"],
        **({"matched": built["matched"]} if "matched" in built else {}),
        "build_seconds": round(built["seconds"], 1), "encoding": model.snn.encoding if model.snn else None,
        "augmentation": built["augmentation"],
        "clean_correct": [outcomes.pack((p >= 0.5).cpu().numpy())],
        **({"clean_hits": outcomes.pack_classes((p * draws).round().cpu().numpy())} if draws > 1 else {}),
    }
    return {"path": str(found["path"].relative_to(out)), "seconds": found["seconds"], "entry": entry,
            "reused": found["reused"]}


def _clean_preds(ctx: Context, path: Path) -> Tensor:
    """A target's expected correctness per clean image, read once per process."""
    if str(path) not in ctx.clean:
        ctx.clean[str(path)] = torch.tensor(read_json(path)["p"], device=ctx.device)
    return ctx.clean[str(path)]


def _cell(task: Task, ctx: Context, out: Path, deps: dict[str, dict], can_write: bool,
          log: Callable[[str], None]) -> dict:
    """One adversarial set crafted from its source and its result rows on every target (or reused)."""
    job = Job(**{**task.recipe["job"], "targets": tuple(task.recipe["job"]["targets"])})
    study = ctx.preset.study
    source = _model(ctx, out, deps[f"{job.source}{job.instance}"])
    targets = {t: _model(ctx, out, deps[f"{t}0"]) for t in job.targets}
    recipe = {**task.recipe, "source": source.sha256, "targets": [targets[t].sha256 for t in job.targets]}
    path = out / "cells" / f"{digest(recipe)}.json"

    def craft() -> dict:
        clean = {t: _clean_preds(ctx, out / deps[f"clean/{t}0"]["path"]) for t in job.targets}
        t0 = time.perf_counter()
        adv, aim = compute.craft(job, source, ctx.x, ctx.y, ctx.goal, study)
        runtime.synchronize(ctx.device)
        t1 = time.perf_counter()
        rows = [row for t in job.targets
                for row in compute.rows(job, targets[t], ctx.x, ctx.y, adv, aim, clean[t], study)]
        return {"rows": rows, "worker": f"{socket.gethostname()}:{os.getpid()}", "device": str(ctx.device),
                "neurons": backend_on(ctx.device),
                "seconds": {"craft": round(t1 - t0, 3), "evaluate": round(time.perf_counter() - t1, 3)}}

    saved, reused = cached(path, recipe, craft, log, None if can_write else (
        f"{out} is read-only and the adversarial set {job} needs computing; make it writable or pass another --out"))
    return {"path": str(path.relative_to(out)), "reused": reused, "worker": saved.get("worker")}


RUN = {"model": _build, "clean": _clean, "cell": _cell}


def run_task(task: Task, out: Path, root: Path | None, deps: dict[str, dict], can_write: bool = True,
            log: Callable[[str], None] = print, device: torch.device | None = None) -> dict:
    """Run one task on ``device`` from its recipe, the run directory ``out`` (its run.json names the
    preset) and the results of the tasks it depends on (``deps``, by name). Returns its own result: a
    small JSON-ready dict naming the artifact it wrote or reused (``path``, relative to ``out``) and
    whether it was reused."""
    return RUN[task.kind](task, context(out, root, runtime.device(device)), out, deps, can_write, log)
