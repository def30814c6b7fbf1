"""One run of the study in its run directory: models, clean accuracy, every job of the plan, the
tidy results table and the report; reruns reuse what exists."""

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
from ..presets import Preset, as_dict
from . import tasks
from .plan import KINDS, bounded_kinds, digest, grid, main_gradients

def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({json.dumps(old)} -> {json.dumps(new)})"]


def identity(preset: Preset) -> dict:
    """What a run directory is for: the version of this program and the whole preset (as JSON)."""
    return json.loads(json.dumps({"version": __version__, "preset": as_dict(preset)}))


def open_run(out: Path, preset: Preset) -> dict:
    """The run directory's record; a directory made for another config or version is refused, untouched."""
    path = out / "run.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpikeAdvError(f"{path} is not valid JSON ({e}); move it away or choose another --out") from None
    old = {"version": meta.get("version"), "preset": meta.get("preset")}
    diff = _differences(old, identity(preset))
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise SpikeAdvError(f"{out} holds a run with another config: {shown}. Nothing was changed; "
                            "rerun with the same preset and --set values, or pass another --out")
    return meta



@dataclass
class Stages:
    """Wall time per stage; artifacts reused from an earlier call keep the time they took when made."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + value, 2)



STAGE = {"ann": "train ANN", "snn2": "train SNN-II", "snn1": "convert SNN-I"}


def run(preset: Preset, out: Path, root: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """The whole study of ``preset`` in ``out``: models, clean accuracy (Table I), every job of
    :func:`grid` on its targets, ``results.jsonl`` and the report. Returns the report's files."""
    from ..report import write_report

    call = time.perf_counter()
    meta = open_run(out, preset)
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
    checkpoint.write_json(out / "run.json", record)  # first: a later call checks its config against this
    stages = Stages()

    built, seconds = tasks.models(preset, out / "models", train_ds, test_ds, log)
    for name, s in seconds.items():
        stages.add(STAGE[name[:-1]], s)
    clean: dict[tuple[str, int], list[Tensor]] = {}
    record["models"] = []
    for (kind, instance), model in built.items():
        clean[(kind, instance)], s = tasks.clean_predictions(model, x, y, study, out / "clean")
        stages.add("clean eval", s)
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
    jobs, results, reused, labels = grid(study, bounded), [], 0, record["labels"]
    start = time.perf_counter()
    bar = tqdm(jobs, desc="attacks", unit="set", dynamic_ncols=True, mininterval=1.0)
    for job in bar:
        bar.set_postfix_str(str(job), refresh=False)
        recipe = {"job": asdict(job), "source": built[(job.source, job.instance)].sha256,
                  "targets": [targets[t].sha256 for t in job.targets], "study": fixed, "images": len(y),
                  "labels": labels, "version": __version__}
        recipe = json.loads(json.dumps(recipe))  # as it reads back from disk (tuples become lists)
        path = out / "cells" / f"{digest(recipe)}.json"
        saved = tasks.saved_json(path)
        if saved is None or saved.get("recipe") != recipe:
            t0 = time.perf_counter()
            adv, aim = tasks.craft(job, built[(job.source, job.instance)], x, y, goal, study)
            t1 = time.perf_counter()
            found = [row for t in job.targets
                     for row in tasks.rows(job, targets[t], x, y, adv, aim, clean[(t, 0)], study)]
            saved = {"recipe": recipe, "rows": found,
                     "seconds": {"craft": round(t1 - t0, 3), "evaluate": round(time.perf_counter() - t1, 3)}}
            checkpoint.write_json(path, saved)
        else:
            reused += 1
        stages.add("craft", saved["seconds"]["craft"])
        stages.add("evaluate", saved["seconds"]["evaluate"])
        results += saved["rows"]
    bar.close()
    log(f"attacks: {len(jobs)} adversarial sets ({len(jobs) - reused} crafted, {reused} reused), "
        f"{len(results)} result rows, {time.perf_counter() - start:.0f} s this call")
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in results)
    checkpoint.atomic_write(out / "results.jsonl", lambda tmp: tmp.write_text(text))

    record.update(stages=stages.seconds, complete=True)
    checkpoint.write_json(out / "run.json", record)
    t0 = time.perf_counter()
    written = write_report(out)
    record.update(report_seconds=round(time.perf_counter() - t0, 2),
                  this_call_seconds=round(time.perf_counter() - call, 1))
    checkpoint.write_json(out / "run.json", record)
    return written

