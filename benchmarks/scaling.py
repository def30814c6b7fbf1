"""Predicted wall time of the study (``spikeadv run``) on 1, 4, 8 and 32 identical workers (GPUs or CPU
worker processes), from its task graph (:func:`spikeadv.study.plan`) and seconds per task.

Seconds per task come either

- MEASURED from a finished run directory: ``python benchmarks/scaling.py RUN_DIR``. Models take their
  ``build_seconds`` from run.json, clean predictions the ``seconds`` of clean/<kind><i>-*.json, cells
  craft + evaluate seconds of cells/*.json. A task with no record is costed at the median seconds per
  unit of :attr:`Task.cost` of the measured tasks of its kind (models: of its model kind), else at the
  run.json stage total of its kind spread over the kind's tasks by cost; or
- ESTIMATED for a preset: ``python benchmarks/scaling.py --preset paper``, from the H200 probe
  throughputs of the project's GPU issue (``RATES``; override with ``--rates forward=250000,...``):
  ANN training 19,500 images/s; SNN-II training 445 images/s at T = 70 (images/s scale as 70 / T);
  inference 299,000 ANN forwards/s, one SNN timestep 1.96 ANN forwards. Approximation: a clean or cell
  task takes cost / forward seconds (cost counts ANN forwards, T per SNN forward), times 1.96 when an
  SNN is among its targets or its gradient (so an SNN cell's ANN-cost crafting is slightly
  overcharged); SNN-I conversion is its cost at the inference rate. Rates are for the full-width
  VGG-9; presets of other widths and batch sizes are not rescaled.

The wall time on W workers is simulated by list scheduling: a task starts once its dependencies are
done and a worker is free, the ready task with the longest remaining path to the end ("upward rank")
first. "limited by": the critical path or work/W where the wall is within 5% of it, else the work
after one task (its dependants) spread over W once that task can be done. The "plan order" column
schedules in the plan's order instead (what a FIFO executor does).
No transfer, start-up or contention costs: each worker is as fast as the one measured.
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
from collections import Counter
from pathlib import Path

from spikeadv import records
from spikeadv.config.presets import Preset, get_preset, recorded
from spikeadv.study import Job, Task, plan

RATES = {  # H200 probe throughputs (the project's GPU issue)
    "ann_train": 19_500.0,   # ANN training, images/s
    "snn2_train": 445.0,     # SNN-II training, images/s at T = snn2_T
    "snn2_T": 70.0,
    "forward": 299_000.0,    # ANN inference, image forwards/s
    "snn_factor": 1.96,      # one SNN image-timestep, in ANN forwards
}
TRAIN_IMAGES = {"cifar10": 50_000, "mnist": 60_000, "fashion-mnist": 60_000, "synthetic": 2048}
WORKERS = (1, 4, 8, 32)
STAGES = {"model": ("train ANN", "train SNN-II", "convert SNN-I"), "clean": ("clean eval",),  # run.json "stages"
          "cell": ("craft", "evaluate")}


def group(task: Task) -> str:
    """The kind of work a task is, for the per-cost fallback: a model's kind (ann, snn1, snn2, a control), else its kind."""
    return task.recipe["kind"] if task.kind == "model" else task.kind


def estimated(preset: Preset, tasks: list[Task], rates: dict[str, float]) -> dict[str, float]:
    """Seconds per task from the probe throughputs (module docstring)."""
    snn = {"snn1", "snn2", "bptt"}
    out = {}
    for t in tasks:
        if t.kind == "model" and t.recipe["kind"] in ("ann", "ann-rate"):
            out[t.name] = t.cost / 3.0 / rates["ann_train"]  # cost = 3 * epochs * train images
        elif t.kind == "model" and t.recipe["kind"] == "snn2":
            per_s = rates["snn2_train"] * rates["snn2_T"] / preset.snn2.T
            out[t.name] = t.cost / (3.0 * preset.snn2.T) / per_s
        else:
            involved = {t.recipe["kind"]} if t.kind == "model" else {t.recipe["model"].rstrip("0123456789")} \
                if t.kind == "clean" else {*t.recipe["job"]["targets"], t.recipe["job"]["gradient"]}
            out[t.name] = t.cost / rates["forward"] * (rates["snn_factor"] if involved & snn else 1.0)
    return out


def measured(run: Path, meta: dict, tasks: list[Task]) -> tuple[dict[str, float], list[str]]:
    """Seconds per task read from a run directory, and notes on what was missing or odd."""
    secs, notes = {}, []
    models = {f"{m['kind']}{m['instance']}": m for m in meta.get("models", [])}
    for name, m in models.items():
        secs[name] = float(m["build_seconds"])
        files = sorted((run / "clean").glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        saved = [r for r in (records.read_record(p)[0] for p in files) if r]
        match = [r for r in saved if r["recipe"].get("model") == m.get("sha256")] or saved
        if match:
            secs[f"clean/{name}"] = float(match[0]["seconds"])
    cells: dict[str, tuple[bool, float]] = {}  # name -> (crafted from the recorded source?, seconds)
    bad = 0
    for path in sorted((run / "cells").glob("*.json"), key=lambda p: p.stat().st_mtime):
        record, _ = records.read_record(path)
        try:
            job = Job(**{**record["recipe"]["job"], "targets": tuple(record["recipe"]["job"]["targets"])})
        except (TypeError, KeyError):
            bad += 1
            continue
        source = models.get(f"{job.source}{job.instance}", {}).get("sha256")
        ours = record["recipe"].get("source") == source
        if ours or not cells.get(f"cell/{job}", (False,))[0]:  # the recorded source's, else the newest
            cells[f"cell/{job}"] = (ours, record["seconds"]["craft"] + record["seconds"]["evaluate"])
    secs.update({k: v for k, (_, v) in cells.items()})
    names = {t.name for t in tasks}
    if bad:
        notes.append(f"{bad} cell files unreadable or not cells")
    if extra := len(set(secs) - names):
        notes.append(f"{extra} measured tasks are not in the plan (an older version?)")
    missing = [t for t in tasks if t.name not in secs]
    if missing:
        notes.append(f"{len(missing)} of {len(tasks)} plan tasks unmeasured ("
                     + ", ".join(f"{n} {k}" for k, n in Counter(t.kind for t in missing).items()) + "), costed by:")
    for kind in sorted({t.kind for t in missing}):
        rate, how = fallback(kind, tasks, secs, meta.get("stages", {}))
        notes.append(f"  {kind}: {how}")
        for t in missing:
            if t.kind == kind:
                secs[t.name] = t.cost * rate.get(group(t), rate.get(kind, 0.0))
    return {t.name: secs[t.name] for t in tasks}, notes


def fallback(kind: str, tasks: list[Task], secs: dict[str, float], stages: dict) -> tuple[dict[str, float], str]:
    """Seconds per unit of cost for the unmeasured tasks of a kind, and how it was found."""
    ratios: dict[str, list[float]] = {}
    for t in tasks:
        if t.kind == kind and t.name in secs and t.cost > 0:
            ratios.setdefault(group(t), []).append(secs[t.name] / t.cost)
            ratios.setdefault(kind, []).append(secs[t.name] / t.cost)
    if ratios:
        return {g: statistics.median(r) for g, r in ratios.items()}, "median seconds per cost of its measured tasks"
    total = sum(stages.get(s, 0.0) for s in STAGES[kind])
    cost = sum(t.cost for t in tasks if t.kind == kind)
    how = f"run.json stages {'+'.join(STAGES[kind])} = {total:.0f} s spread by cost"
    return {kind: total / cost if cost else 0.0}, how


def children(tasks: list[Task]) -> dict[str, list[str]]:
    """The tasks that take each task's result."""
    out: dict[str, list[str]] = {t.name: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            out[d].append(t.name)
    return out


def ranks(tasks: list[Task], secs: dict[str, float], kids: dict[str, list[str]]) -> dict[str, float]:
    """Upward rank: a task's seconds plus the longest path after it (tasks come in dependency order)."""
    rank: dict[str, float] = {}
    for t in reversed(tasks):
        rank[t.name] = secs[t.name] + max((rank[c] for c in kids[t.name]), default=0.0)
    return rank


def critical_path(rank: dict[str, float], kids: dict[str, list[str]]) -> list[str]:
    """The longest dependency chain, first task to last."""
    chain = [max(rank, key=rank.get)]
    while kids[chain[-1]]:
        chain.append(max(kids[chain[-1]], key=rank.get))
    return chain


def gated(tasks: list[Task], secs: dict[str, float]) -> list[tuple[float, float, str]]:
    """Per task: the earliest it can finish (longest chain up to it), the work of all tasks after it
    (its transitive dependants) and its name. On W workers wall >= finish + after / W for every task."""
    finish: dict[str, float] = {}
    after: dict[str, set[str]] = {t.name: set() for t in tasks}
    for t in tasks:
        finish[t.name] = secs[t.name] + max((finish[d] for d in t.deps), default=0.0)
    for t in reversed(tasks):
        for d in t.deps:
            after[d] |= after[t.name] | {t.name}
    return [(finish[n], sum(secs[a] for a in after[n]), n) for n in finish]


def schedule(tasks: list[Task], secs: dict[str, float], kids: dict[str, list[str]], workers: int,
             priority: dict[str, float]) -> float:
    """Wall time of list scheduling on ``workers`` identical workers, lowest ``priority`` first."""
    waiting = {t.name: len(t.deps) for t in tasks}
    ready = [(priority[n], n) for n, k in waiting.items() if k == 0]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            _, name = heapq.heappop(ready)
            heapq.heappush(running, (now + secs[name], name))
        now, name = heapq.heappop(running)
        for c in kids[name]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, (priority[c], c))
    return now


def fmt(s: float) -> str:
    """Seconds as s, min or h."""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def predict(tasks: list[Task], secs: dict[str, float], workers: tuple[int, ...]) -> dict:
    """Totals, the critical path and the predicted wall time per worker count."""
    kids = children(tasks)
    rank = ranks(tasks, secs, kids)
    chain = critical_path(rank, kids)
    total, cp = sum(secs.values()), rank[chain[0]]
    order, gates = {t.name: i for i, t in enumerate(tasks)}, gated(tasks, secs)
    rows = []
    for w in workers:
        wall = schedule(tasks, secs, kids, w, {n: -r for n, r in rank.items()})
        gate, name = max((f + a / w, n) for f, a, n in gates)
        limit = ("critical path" if wall <= 1.05 * cp else "work/W" if wall <= 1.05 * total / w
                 else f"work after {name} / W" if wall <= 1.05 * gate else "scheduling")
        rows.append({"workers": w, "wall_s": wall, "bound_s": max(cp, total / w), "gated_bound_s": gate,
                     "plan_order_s": schedule(tasks, secs, kids, w, order), "limit": limit})
    for r in rows:
        r["speedup"] = total / r["wall_s"]  # one worker runs everything back to back
    return {"tasks": dict(Counter(t.kind for t in tasks)), "total_s": total, "gpu_hours": total / 3600,
            "critical_path_s": cp, "critical_path": chain, "workers": rows}


def show(p: dict, title: str, notes: list[str]) -> None:
    """The summary and a Markdown table to paste into the README."""
    chain = p["critical_path"]
    names = " -> ".join(chain if len(chain) <= 6 else chain[:3] + ["..."] + chain[-2:])
    print(f"### {title}\n")
    print("tasks: " + ", ".join(f"{n} {k}" for k, n in p["tasks"].items()) + f" ({sum(p['tasks'].values())})")
    print(f"total work: {fmt(p['total_s'])} ({p['gpu_hours']:.2f} worker-hours, i.e. GPU-hours on GPUs)")
    print(f"critical path: {fmt(p['critical_path_s'])}, {len(chain)} tasks: {names}")
    if notes:
        print(*notes, sep="\n")
    print("\n| workers | wall (upward rank) | speedup | bound max(CP, work/W) | wall (plan order) | limited by |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in p["workers"]:
        print(f"| {r['workers']} | {fmt(r['wall_s'])} | {r['speedup']:.1f}x | {fmt(r['bound_s'])} | "
              f"{fmt(r['plan_order_s'])} | {r['limit']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="a finished run directory (measured seconds)")
    ap.add_argument("--preset", help="estimate for this preset instead (no run)")
    ap.add_argument("--rates", default="", help="override RATES, e.g. forward=250000,snn_factor=2")
    ap.add_argument("--train-images", type=int, help="training set size (default: the preset's dataset)")
    ap.add_argument("--workers", default=",".join(map(str, WORKERS)))
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = ap.parse_args()
    if (args.run is None) == (args.preset is None):
        ap.error("give a RUN_DIR or --preset")
    workers = tuple(int(w) for w in args.workers.split(","))
    if args.run:
        meta = json.loads((args.run / "run.json").read_text())
        preset = recorded(meta["preset"])
        data = (meta["data"]["train"], meta["data"]["test"])
    else:
        preset, data = get_preset(args.preset), ("train", "test")
    tasks = plan(preset, data, args.train_images or TRAIN_IMAGES[preset.dataset], "labels")
    if args.run:
        secs, notes = measured(args.run, meta, tasks)
        title = f"{args.run} (preset {preset.name}): measured per-task seconds"
    else:
        rates = {**RATES, **{k: float(v) for k, v in (kv.split("=") for kv in args.rates.split(",") if kv)}}
        if unknown := set(rates) - set(RATES):
            ap.error(f"--rates: unknown {', '.join(sorted(unknown))} (known: {', '.join(RATES)})")
        secs, notes = estimated(preset, tasks, rates), []
        title = f"preset {preset.name}: estimated from the H200 probe throughputs, not measured end to end"
    result = predict(tasks, secs, workers)
    show(result, title, notes)
    if args.json:
        print(json.dumps({"title": title, "notes": notes, **result}, indent=1))


if __name__ == "__main__":
    main()
