"""One run of the study in its run directory: models, clean accuracy, every job of the plan, the
tidy results table and the report; reruns reuse what exists, one writer at a time."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import Tensor
from tqdm import tqdm

from .. import __version__, checkpoint, data, outcomes
from ..errors import SpikeAdvError
from ..presets import Preset
from . import tasks
from .plan import KINDS, Job, bounded_kinds, digest, grid, main_gradients
from .rundir import identity, lock, open_run


@dataclass
class Stages:
    """Wall time per stage; artifacts reused from an earlier call keep the time they took when made."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + value, 2)



STAGE = {"ann": "train ANN", "snn2": "train SNN-II", "snn1": "convert SNN-I"}


def _cost(job: Job, forward: dict[tuple[str, int], float], study_repeats: dict[str, int]) -> float:
    """Expected seconds of one job from the measured clean forward pass of each model: crafting takes
    a forward and a backward pass (about 3 forwards) per step through the gradient's network (BPTT:
    the SNN itself; the ANN and SNNAdv: a network of ANN cost), evaluation one pass per target repeat."""
    through = (job.source, job.instance) if job.gradient == "bptt" else ("ann", job.instance)
    return 3 * job.steps * forward[through] + sum(study_repeats[t] * forward[(t, 0)] for t in job.targets)


def run(preset: Preset, out: Path, root: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """The whole study of ``preset`` in ``out``: models, clean accuracy (Table I), every job of
    :func:`grid` on its targets, ``results.jsonl`` and the report. Returns the report's files.
    Holds ``out``'s lock throughout; a read-only ``out`` serves a run that needs nothing computed."""
    if len(preset.seeds) != 2:
        raise SpikeAdvError(
            f"the study needs two distinct seeds, one per model instance (instance 0 crafts the whitebox "
            f"inputs, instance 1 the blackbox ones), got seeds={','.join(map(str, preset.seeds)) or 'none'}; "
            "pass e.g. --set seeds=0,1")
    out = Path(out)
    meta = open_run(out, preset, log)  # reads only: a directory of another config is refused untouched
    with lock(out) as can_write:
        if not can_write and not meta:
            raise SpikeAdvError(f"{out} is read-only and holds no run; pass another --out")
        return _run(preset, out, root, log, can_write, meta)


def _run(preset: Preset, out: Path, root: Path | None, log: Callable[[str], None], can_write: bool,
         meta: dict) -> list[Path]:
    from ..report import write_report

    call = time.perf_counter()
    study = preset.study
    data.ensure(preset.dataset, root, log)
    train_ds = data.load(preset.dataset, "train", root)
    test_ds = data.load(preset.dataset, "test", root)
    test_ds = test_ds.subset(preset.test_subset) if preset.test_subset else test_ds
    if study.images > len(test_ds):
        raise SpikeAdvError(f"study.images = {study.images} exceeds the {len(test_ds)} test images of the preset")
    x = data.to_float(test_ds.images[:study.images])
    y = test_ds.labels[:study.images].long()
    bounded = bounded_kinds(preset)
    record = {**identity(preset), "gradients": main_gradients(study), "eps_bounded_snnadv": sorted(bounded),
              "labels": digest(y.tolist()), "versions": checkpoint.versions(),
              "command": checkpoint.command_line(), "data": {"train": train_ds.digest, "test": test_ds.digest},
              "models": meta.get("models", []), "stages": meta.get("stages", {}), "complete": False}
    save = checkpoint.write_json if can_write else (lambda path, value: None)
    save(out / "run.json", record)  # first: a later call checks its config against this
    stages = Stages()

    built, seconds = tasks.models(preset, out / "models", train_ds, test_ds, log, can_write)
    for name, s in seconds.items():
        stages.add(STAGE[name[:-1]], s)
    clean: dict[tuple[str, int], list[Tensor]] = {}
    forward: dict[tuple[str, int], float] = {}
    record["models"] = []
    for (kind, instance), model in built.items():
        clean[(kind, instance)], s = tasks.clean_predictions(model, x, y, study, out / "clean", can_write, log)
        stages.add("clean eval", s)
        forward[(kind, instance)] = s / len(clean[(kind, instance)])
        accs = [100.0 * (p == y).float().mean().item() for p in clean[(kind, instance)]]
        test_acc = [m["test_acc"] for m in model.meta.get("metrics", []) if "test_acc" in m]
        record["models"].append({
            "kind": kind, "instance": instance, "clean_acc": round(statistics.fmean(accs), 3),
            "clean_std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0, "repeats": len(accs),
            "T": model.snn.T if model.snn else None, "images": len(y), "path": str(model.path.relative_to(out)),
            "sha256": model.sha256, "seed": model.meta.get("seed"), "checkpoint_test_acc": test_acc[-1] if test_acc else None,
            "build_seconds": round(seconds[model.name], 1),
            "encoding": model.snn.encoding if model.snn else None,
            "augmentation": built[("ann" if kind == "snn1" else kind, instance)].meta.get("augmentation"),
            "clean_correct": [outcomes.pack((p == y).cpu().numpy()) for p in clean[(kind, instance)]],
        })
    log("clean accuracy: " + ", ".join(f"{m['kind']}{m['instance']} {m['clean_acc']:.1f}%" for m in record["models"])
        + f" on {len(y)} test images")

    targets = {k: built[(k, 0)] for k in KINDS}
    goal = tasks.random_targets(y, built[("ann", 0)].net.classes, study)
    fixed = {k: getattr(study, k) for k in ("seed", "eot", "target", "batch_size", "bf16", "repeats")}
    jobs, labels = grid(study, bounded), record["labels"]
    cells: dict[Job, tuple[Path, dict, dict | None]] = {}
    for job in jobs:
        recipe = {"job": asdict(job), "source": built[(job.source, job.instance)].sha256,
                  "targets": [targets[t].sha256 for t in job.targets], "study": fixed, "images": len(y),
                  "labels": labels, "version": __version__}
        recipe = json.loads(json.dumps(recipe))  # as it reads back from disk (tuples become lists)
        path = out / "cells" / f"{digest(recipe)}.json"
        cells[job] = (path, recipe, tasks.cached_record(path, recipe, log))
    todo = [job for job in jobs if cells[job][2] is None]
    if todo and not can_write:
        raise SpikeAdvError(f"{out} is read-only and {len(todo)} adversarial sets need computing; "
                            "make it writable or pass another --out")
    repeats = {t: tasks.repeats(targets[t], study) for t in KINDS}
    cost = {job: max(_cost(job, forward, repeats), 1e-3) for job in todo}
    start = time.perf_counter()
    bar = tqdm(total=sum(cost.values()), desc=f"attacks ({len(todo)} sets)", dynamic_ncols=True, mininterval=1.0,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
               disable=not todo)
    for done, job in enumerate(todo, 1):
        bar.set_postfix_str(f"{done}/{len(todo)} {job}", refresh=False)
        path, recipe, _ = cells[job]
        t0 = time.perf_counter()
        adv, aim = tasks.craft(job, built[(job.source, job.instance)], x, y, goal, study)
        t1 = time.perf_counter()
        found = [row for t in job.targets for row in tasks.rows(job, targets[t], x, y, adv, aim, clean[(t, 0)], study)]
        saved = {"recipe": recipe, "rows": found,
                 "seconds": {"craft": round(t1 - t0, 3), "evaluate": round(time.perf_counter() - t1, 3)}}
        checkpoint.write_record(path, saved)
        cells[job] = (path, recipe, saved)
        bar.update(cost[job])
    bar.close()
    results = []
    for job in jobs:
        saved = cells[job][2]
        stages.add("craft", saved["seconds"]["craft"])
        stages.add("evaluate", saved["seconds"]["evaluate"])
        results += saved["rows"]
    log(f"attacks: {len(jobs)} adversarial sets ({len(todo)} crafted, {len(jobs) - len(todo)} reused), "
        f"{len(results)} result rows, {time.perf_counter() - start:.0f} s this call")
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in results)
    if not can_write:
        return _read_only(out, text, log)
    checkpoint.atomic_write(out / "results.jsonl", lambda tmp: tmp.write_text(text))

    record.update(stages=stages.seconds, complete=True)
    save(out / "run.json", record)
    t0 = time.perf_counter()
    written = write_report(out)
    record.update(report_seconds=round(time.perf_counter() - t0, 2),
                  this_call_seconds=round(time.perf_counter() - call, 1))
    save(out / "run.json", record)
    return written


def _read_only(out: Path, text: str, log: Callable[[str], None]) -> list[Path]:
    """A read-only run directory that needed nothing computed: its results and report as they are."""
    results = out / "results.jsonl"
    report = sorted((out / "report").glob("*")) if (out / "report" / "report.html").exists() else []
    if not results.exists() or results.read_text() != text or not report:
        raise SpikeAdvError(f"{out} is read-only and its results table or report needs writing; make it "
                            f"writable, or write the report elsewhere: spikeadv report {out} --out DIR")
    log(f"{out} is read-only: every model and adversarial set was reused; results and report left as they are")
    return report
