"""The study on Ray: the same results as the local executor, retried when a worker dies, resumed after
the driver is killed, one driver per run directory, and a cluster that is not there refused at once; the
adaptive evaluation's units as Ray tasks give the local card. (Every test that starts a Ray is in this file,
so that under pytest-xdist's --dist loadfile no two Rays run at once.)

Each run is the smoke preset on a smaller grid (one eps per figure, no R-FGSM, SNNAdv and BPTT;
22 cells, in the reference's order and with its targets): its cells are a subset of the reference run's, so its results must be exactly the reference's rows of those cells, in order."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikeadv import cli, study
from spikeadv.api import Model
from spikeadv.config.presets import get_preset
from spikeadv.data import load, to_float

SMALL = [a for s in ("study.eps=8", "study.fig4_eps=8", "study.fig4_steps=2", "study.extra_eps=8",
                      "study.attacks=fgsm,ifgsm,tifgsm", "study.gradients=snnadv,bptt") for a in ("--set", s)]


def expected(reference: Path) -> list[str]:
    """The reference's rows of the cells that the small grid crafts, in the reference's order."""
    preset = get_preset("smoke", [a for a in SMALL if a != "--set"])
    targets = {(j.source, j.instance, j.gradient, j.attack, j.eps, j.steps): j.targets
               for j in study.grid(preset.study, study.bounded_kinds(preset))}
    lines = (reference / "results.jsonl").read_text().splitlines(keepends=True)
    return [line for line in lines if (row := json.loads(line))["target"] in targets.get(tuple(row[k] for k in (
        "source_kind", "source_instance", "gradient", "attack", "eps", "steps")), ())]


def ray_run(reference: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``spikeadv run`` on a local Ray of two workers, with the reference's torch threads per task."""
    threads = json.loads((reference / "run.json").read_text())["executor"]["threads"]
    return subprocess.Popen([sys.executable, "-m", "spikeadv", "--threads", str(threads), "run", "--preset", "smoke",
                             "--out", str(out), "--executor", "ray", "--workers", "2", *SMALL, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def titled(name: str) -> list[int]:
    """Pids of the Ray workers running the task ``name`` (Ray titles a busy worker ray::TASK)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in ps.splitlines() if line.split(None, 1)[-1].strip() == f"ray::{name}"]


def wait_for(condition, what: str, proc: subprocess.Popen, seconds: float = 240):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def cells(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} if (out / "cells").exists() else {}


@pytest.mark.slow
def test_ray_gives_the_local_results_on_two_workers_and_retries_a_killed_one(reference, tmp_path):
    out = tmp_path / "run"
    proc = ray_run(reference, out)
    # kill the worker training SNN-II (instance 0) once its first epoch is saved: Ray retries the task,
    # which resumes from that checkpoint and must reach the same weights
    busy = wait_for(lambda: list((out / "models").glob("snn20-*.safetensors")) and titled("snn20"),
                    "SNN-II's first epoch", proc)
    os.kill(busy[0], signal.SIGKILL)
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-3000:]
    assert (out / "results.jsonl").read_text().splitlines(keepends=True) == expected(reference)
    workers = {json.loads(p.read_text())["worker"] for p in cells(out)}
    assert len(workers) >= 2, f"every cell ran in one process: {workers}"
    assert f":{busy[0]}" not in "".join(workers)
    assert json.loads((out / "run.json").read_text())["executor"]["kind"] == "ray"


@pytest.mark.slow
def test_a_killed_driver_resumes_without_recomputing_and_a_second_driver_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "models", out / "models")  # models are tested above: start at the cells
    first = ray_run(reference, out)
    wait_for(lambda: len(cells(out)) >= 4, "four cells", first)
    second = subprocess.run([sys.executable, "-m", "spikeadv", "run", "--preset", "smoke", "--out", str(out),
                             "--executor", "ray", *SMALL], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and "in use by another spikeadv process" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    written = cells(out)
    assert not (out / "results.jsonl").exists()
    rerun = ray_run(reference, out)
    log, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, log[-3000:]
    assert all(cells(out)[p] == t for p, t in written.items()), "a cell written before the kill was recomputed"
    reused = int(re.search(r"(\d+) reused", log).group(1))
    assert reused >= len(written)  # and the cells in flight when the driver died, where they were finished
    assert (out / "results.jsonl").read_text().splitlines(keepends=True) == expected(reference)
    assert not list(out.rglob("*.tmp"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["HOST:PORT", "auto"])
def test_an_address_where_nothing_listens_is_one_line_and_writes_nothing(tmp_path, address):
    address = f"127.0.0.1:{free_port()}" if address == "HOST:PORT" else address  # auto: no Ray runs here
    result = subprocess.run([sys.executable, "-m", "spikeadv", "run", "--preset", "smoke", "--out",
                             str(tmp_path / "run"), "--executor", "ray", "--address", address],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert address in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ray_options_without_the_ray_executor_and_a_missing_ray_are_one_line(tmp_path, monkeypatch, capsys):
    assert cli.main(["run", "--preset", "smoke", "--out", str(tmp_path / "a"), "--workers", "2"]) == 2
    assert "apply to --executor ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where it is not installed
    assert cli.main(["run", "--preset", "smoke", "--out", str(tmp_path / "b"), "--executor", "ray"]) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_plan_is_a_graph_whose_cells_follow_their_models():
    preset = get_preset("smoke")
    tasks = study.plan(preset, ("train", "test"), 1000, "labels")
    seen: set[str] = set()
    for task in tasks:
        assert set(task.deps) <= seen, f"{task.name} comes before its dependencies"
        seen.add(task.name)
    assert len(seen) == len(tasks)
    jobs = [t for t in tasks if t.kind == "cell"]
    assert len(jobs) == len(study.grid(preset.study, study.bounded_kinds(preset)))
    for task in jobs:
        job = task.recipe["job"]
        assert f"{job['source']}{job['instance']}" in task.deps
        assert all(f"{t}0" in task.deps and f"clean/{t}0" in task.deps for t in job["targets"])


def test_crafting_seeds_come_from_the_recipe_not_from_how_a_job_prints(reference, monkeypatch):
    preset = get_preset("smoke")
    snn2 = Model.from_run(reference, "snn2")
    test = load("synthetic", "test")
    x, y = to_float(test.images[:16]), test.labels[:16].long()
    job = study.Job("snn2", 0, "snnadv", "rfgsm", 8, 1, ("snn2",))
    first, _ = study.craft(job, snn2, x, y, y, preset.study)
    monkeypatch.setattr(study.Job, "__str__", lambda self: "renamed")
    again, _ = study.craft(job, snn2, x, y, y, preset.study)
    assert (first == again).all()
    other, _ = study.craft(study.Job("snn2", 0, "snnadv", "rfgsm", 8, 1, ("ann",)), snn2, x, y, y, preset.study)
    assert (first == other).all(), "the targets evaluate a set; they do not craft it"
    moved, _ = study.craft(study.Job("snn2", 1, "snnadv", "rfgsm", 8, 1, ("snn2",)), snn2, x, y, y, preset.study)
    assert not (first == moved).all(), "another recipe draws other R-FGSM noise"


@pytest.mark.slow
def test_on_ray_every_unit_is_a_task_and_the_card_is_the_local_one(reference, tmp_path):
    ann = reference / json.loads((reference / "run.json").read_text())["models"][0]["path"]
    args = ["--threads", str(torch.get_num_threads()), "evaluate", str(ann), "--suite", "quick", "--images", "8",
            "--eps", "4/255,8/255"]
    assert cli.main([*args, "--out", str(tmp_path / "local")]) == 0
    result = subprocess.run([sys.executable, "-m", "spikeadv", *args, "--out", str(tmp_path / "ray"),
                             "--executor", "ray", "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 evaluation units on ray" in result.stdout  # the sweep over the grid, the null attack, the curves
    assert (tmp_path / "ray" / "rows.jsonl").read_bytes() == (tmp_path / "local" / "rows.jsonl").read_bytes()

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k not in ("seconds", "sha256")}
        return [timeless(v) for v in value] if isinstance(value, list) else value

    def units(where: Path) -> dict:
        return {p.name: timeless(json.loads(p.read_text())) for p in (where / "cells").iterdir()}

    assert len(units(tmp_path / "ray")) == 4 and units(tmp_path / "ray") == units(tmp_path / "local")
