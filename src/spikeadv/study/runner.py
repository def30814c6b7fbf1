"""One run of the study in its run directory: plan -> tasks -> gather. The plan lists every model, clean
evaluation and adversarial set; an executor runs them; the driver gathers the cells into the tidy
results table and the report. Reruns reuse what exists; one driver per run directory at a time."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import data
from ..config.grid import KINDS, MATCHED
from ..config.presets import Preset
from ..errors import SpikeAdvError
from ..models.neurons import backend_on
from ..records import atomic_write, digest_text, read_record, write_json
from ..records.provenance import command_line, digest, versions
from . import executors
from .executors import Executor
from .plan import bounded_kinds, main_gradients, plan, targets_of
from .rundir import check_layout, identity, lock, open_run


@dataclass
class Stages:
    """Wall time per stage; artifacts reused from an earlier call keep the time they took when made."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + value, 2)



STAGE = {"ann": "train ANN", "snn2": "train SNN-II", "snn1": "convert SNN-I", "ann-rate": "train ANN (rate input)",
         **{k: "match ANN" for k in MATCHED}}


Report = Callable[[Path], list[Path]]  # writes a run directory's report, returns its files


def run(preset: Preset, out: Path, report: Report, root: Path | None = None, log: Callable[[str], None] = print,
        executor: Executor = Executor()) -> list[Path]:
    """The whole study of ``preset`` in ``out``: plan its tasks (:func:`.plan.plan`), run them on
    ``executor`` (:mod:`.executors`), gather the cells into ``results.jsonl`` and write the report with
    ``report`` (:func:`spikeadv.report.write_report`, given by the caller: the study reads no report).
    Returns the report's files. Holds ``out``'s lock throughout (the driver is the one writer of
    run.json; tasks write only their own artifacts); a read-only ``out`` serves a run that needs
    nothing computed."""
    if len(preset.seeds) < 2:
        raise SpikeAdvError(
            f"the study needs at least two distinct seeds, one per model instance (instance 0 crafts the "
            f"whitebox inputs, instance 1 the blackbox ones; every instance is a target of the evaluation), "
            f"got seeds={','.join(map(str, preset.seeds)) or 'none'}; pass e.g. --set seeds=0,1")
    out = Path(out)
    check_layout(out)  # a path in the way: refused before any work, and before the lock is taken
    meta = open_run(out, preset, log)  # reads only: a directory of another config is refused untouched
    datasets = _datasets(preset, root, log)
    executors.check(executor)  # Ray missing or a cluster that cannot be reached: refused before anything is written
    with contextlib.ExitStack() as stack:
        if executor.address:  # joining a cluster writes nothing here, so it is refused before the lock
            stack.callback(executors.connect(executor))
        can_write = stack.enter_context(lock(out))
        if not can_write and not meta:
            raise SpikeAdvError(f"{out} is read-only and holds no run; pass another --out")
        if can_write and not executor.address:  # a Ray of our own starts only under the lock
            stack.callback(executors.connect(executor))
        return _run(preset, out, report, root, log, can_write, meta, executor, datasets)


def _datasets(preset: Preset, root: Path | None, log: Callable[[str], None]) -> data.Splits:
    """The preset's training part, validation part and test images (prepared if they can be), refused
    where the study asks for more test images than there are: all before the run directory is touched."""
    data.ensure(preset.dataset, root, log)
    splits = data.splits(preset.dataset, preset.validation, preset.test_subset, root)
    if preset.study.images > len(splits.test):
        raise SpikeAdvError(f"study.images = {preset.study.images} exceeds the {len(splits.test)} test images of the preset")
    return splits


def _run(preset: Preset, out: Path, report: Report, root: Path | None, log: Callable[[str], None], can_write: bool,
         meta: dict, executor: Executor, datasets: data.Splits) -> list[Path]:
    call = time.perf_counter()
    study = preset.study
    y = datasets.test.labels[:study.images].long()
    parts = {"train": datasets.train, "validation": datasets.validation, "test": datasets.test}
    device = executor.device or str(executors.driver_device(executor))  # where the tasks compute
    record = {**identity(preset), "gradients": main_gradients(study), "eps_bounded_snnadv": sorted(bounded_kinds(preset)),
              "labels": digest(y.tolist()), "versions": versions(),
              "command": command_line(), "data": {k: v.digest for k, v in parts.items()} | {"validation_images": len(datasets.validation)},
              "executor": {"kind": executor.kind, "address": executor.address, "threads": executor.threads,
                           "device": device, "neurons": backend_on(device)},
              "models": meta.get("models", []), "stages": meta.get("stages", {}), "complete": False}
    save = write_json if can_write else (lambda path, value: None)
    save(out / "run.json", record)  # first: every task reads the preset from it

    todo = plan(preset, tuple(v.digest for v in parts.values()), len(datasets.train), record["labels"])
    log(f"{len(todo)} tasks on {executor.describe()}")
    start = time.perf_counter()
    results = executors.run_plan(todo, out, root, executor, can_write, log)
    stages = Stages()
    for task in todo:
        if task.kind == "model":
            stages.add(STAGE[task.recipe["kind"]], results[task.name]["seconds"])
        elif task.kind == "clean":
            stages.add("clean eval", results[task.name]["seconds"])
    record["models"] = [results[f"clean/{kind}{i}"]["entry"] for i in range(len(preset.seeds))
                        for kind in ("ann", "snn2", "snn1", *targets_of(study)[len(KINDS):])]
    log("clean accuracy: " + ", ".join(f"{m['kind']}{m['instance']} {m['clean_acc']:.1f}%" for m in record["models"])
        + f" on {len(y)} test images")
    cells = [results[t.name] for t in todo if t.kind == "cell"]
    rows = []
    for cell in cells:
        saved, why = read_record(out / cell["path"])
        if saved is None:
            raise SpikeAdvError(f"{out / cell['path']} cannot be read back ({why}); rerun the study")
        stages.add("craft", saved["seconds"]["craft"])
        stages.add("evaluate", saved["seconds"]["evaluate"])
        rows += saved["rows"]
    reused = sum(c["reused"] for c in cells)
    log(f"attacks: {len(cells)} adversarial sets ({len(cells) - reused} crafted, {reused} reused), "
        f"{len(rows)} result rows, {time.perf_counter() - start:.0f} s this call")
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not can_write:
        return _read_only(out, text, log)
    atomic_write(out / "results.jsonl", lambda tmp: tmp.write_text(text))

    record.update(stages=stages.seconds, complete=True, results_sha256=digest_text(text))
    save(out / "run.json", record)
    t0 = time.perf_counter()
    written = report(out)
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
