"""Fault injection: every failure found by trying the tool as a new user and as a fault tester ends in
one line naming the problem (and the file), exit 2 and nothing half-written, or in a correct
recomputation; never in a traceback or a silent wrong number."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_run import restate

from spikeadv import cli, records, report, study
from spikeadv.config.presets import get_preset
from spikeadv.errors import SpikeAdvError
from spikeadv.records import checkpoint
from spikeadv.report import load_run, sanity_checks


def spikeadv(*args, user=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "spikeadv", *map(str, args)], capture_output=True, text=True,
                          timeout=600, preexec_fn=user, **kwargs)


def one_line_error(result, *needles):
    """Exit 2, one error line on stderr (after any progress bars) holding every needle, no traceback."""
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == lines[0]
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


def files(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


@pytest.fixture
def copy(reference, tmp_path):
    """A private copy of the reference smoke run, to damage."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def rerun(out: Path, *sets: str):
    result = spikeadv("run", "--preset", "smoke", "--out", out, *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr
    return result


# 1. seeds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, needle", [("0", "at least two distinct seeds"), ("", "seeds must be distinct"),
                                           ("0,0", "seeds must be distinct")])
def test_seeds_the_study_cannot_use_are_refused_before_anything_is_written(tmp_path, value, needle):
    out = tmp_path / "run"
    one_line_error(spikeadv("run", "--preset", "smoke", "--out", out, "--set", f"seeds={value}"), needle)
    assert not out.exists()


# 2. one writer per run directory -------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_on_a_directory_in_use_refuses_at_once_and_kill_releases_the_lock(reference, copy):
    for cell in _cells(copy)[::20]:  # the holder has crafting ahead of it (11 cells spread over the grid)
        cell.unlink()
    (copy / "results.jsonl").unlink()
    kept = len(_cells(copy))
    holder = subprocess.Popen([sys.executable, "-m", "spikeadv", "run", "--preset", "smoke", "--out", str(copy)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, lock = time.monotonic() + 120, copy / study.rundir.LOCK
        while not lock.exists() or f"pid {holder.pid} " not in lock.read_text() or len(_cells(copy)) == kept:
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGSTOP)  # stopped while crafting: it holds the lock however little is left
        start = time.monotonic()
        second = spikeadv("run", "--preset", "smoke", "--out", copy)
        one_line_error(second, f"{copy} is in use by another spikeadv process (pid {holder.pid} on")
        assert time.monotonic() - start < 30
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with study.lock(copy) as writable:  # the kernel dropped the dead holder's lock
        assert writable
    rerun(copy)  # and the interrupted run completes to the same results
    assert (copy / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    assert not list(copy.rglob("*.tmp"))


def test_temporary_files_belong_to_their_writer(tmp_path):
    target = tmp_path / "a.json"
    live = tmp_path / f".a.json.{os.getppid()}.abc123.tmp"  # a writer that is still running
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.json.{dead.pid}.xyz789.tmp"
    live.write_text("half")
    stale.write_text("half")
    records.write_json(target, {"a": 1})
    assert live.exists() and not stale.exists() and json.loads(target.read_text()) == {"a": 1}


# 3. non-finite values and divergence ----------------------------------------------------------------

@pytest.mark.parametrize("override", ["ann.lr=nan", "ann.lr=inf", "snn2.alpha=nan", "ann.weight_decay=nan",
                                      "snn1.pool_threshold=nan", "width=nan", "width=inf", "dropout=-inf"])
def test_non_finite_settings_are_refused(tmp_path, override):
    out = tmp_path / "run"
    one_line_error(spikeadv("run", "--preset", "smoke", "--out", out, "--set", override), override)
    assert not out.exists()


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "ann.safetensors"
    # one good epoch, then the learning rate x 1e12
    result = spikeadv("train", "ann", "--preset", "smoke", "--out", out, "--set", "ann.epochs=3",
                      "--set", "ann.schedule=multistep", "--set", "ann.milestones=2", "--set", "ann.gamma=1e12")
    one_line_error(result, "training diverged in epoch 2/3", "the last good checkpoint (epoch 1) is kept")
    _, meta = checkpoint.load(out)
    assert meta["epochs_done"] == 1 and not meta["complete"]


def test_a_nan_in_the_results_fails_the_sanity_checks(copy):
    rows = [json.loads(line) for line in (copy / "results.jsonl").read_text().splitlines()]
    assert all(check.passed is not False for check in sanity_checks(load_run(copy)))
    rows[7]["loss"] = float("nan")
    restate(copy, "".join(json.dumps(r) + "\n" for r in rows))
    failed = [c for c in sanity_checks(load_run(copy)) if c.passed is False]
    assert failed and "finite" in failed[0].name and "rows[7].loss" in failed[0].detail


# 4. integrity of cached artifacts --------------------------------------------------------------------

def _cells(out: Path) -> list[Path]:
    return sorted((out / "cells").glob("*.json"))


@pytest.mark.parametrize("damage", ["a list", "no rows", "edited rows"])
def test_a_damaged_cell_is_named_and_recomputed(reference, copy, damage):
    cell = _cells(copy)[3]
    saved = json.loads(cell.read_text())
    if damage == "a list":
        cell.write_text("[1, 2]")
    elif damage == "no rows":
        cell.write_text(json.dumps({k: v for k, v in saved.items() if k != "rows"}))
    else:
        saved["rows"][0]["adv_acc"] = 0.0
        cell.write_text(json.dumps(saved))
    result = rerun(copy)
    assert f"{cell} cannot be used" in result.stdout
    assert "(1 crafted," in result.stdout
    assert (copy / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()


def test_edited_clean_predictions_are_recomputed(reference, copy):
    path = sorted((copy / "clean").glob("ann0-*.json"))[0]
    saved = json.loads(path.read_text())
    saved["p"] = [1 - p for p in saved["p"]]  # Table I would show the ANN at 100 - its accuracy
    path.write_text(json.dumps(saved))
    assert f"{path} cannot be used" in rerun(copy).stdout
    assert (copy / "report" / "table1.md").read_text() == (reference / "report" / "table1.md").read_text()
    assert json.loads((copy / "run.json").read_text())["models"] == json.loads((reference / "run.json").read_text())["models"]


def _flip_bit(path: Path, from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x10  # inside the last tensor
    path.write_bytes(bytes(data))


def test_a_model_with_one_flipped_bit_is_refused_by_eval_and_rebuilt_by_the_study(reference, copy):
    path = next((copy / "models").glob("snn10-*.safetensors"))
    _flip_bit(path)
    one_line_error(spikeadv("eval", path), str(path), "failed its integrity check")
    result = rerun(copy)
    assert "failed its integrity check" in result.stdout and "rebuilding it" in result.stdout
    assert list((copy / "models").glob("snn10-*.rejected"))  # set aside, not deleted
    # the rebuilt model is the same model: every cell is reused, the results are the same
    assert "(0 crafted," in result.stdout
    assert (copy / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()


def test_a_model_copied_over_another_name_is_not_used(reference, copy):
    models = copy / "models"
    wrong, right = next(models.glob("snn11-*.safetensors")), next(models.glob("snn10-*.safetensors"))
    shutil.copyfile(wrong, right)
    result = rerun(copy)
    assert f"{right} holds another model than its name says" in result.stdout
    assert (copy / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()


def test_model_hashes_cover_the_model_not_its_timing(reference, copy):
    path = next((copy / "models").glob("ann0-*.safetensors"))
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, {**meta, "seconds": 999.0, "command": "retrained elsewhere"})
    assert "(0 crafted," in rerun(copy).stdout


# 5. one line where a traceback was ----------------------------------------------------------------

def test_a_spec_that_does_not_fit_the_dataset_is_one_line(tmp_path):
    out = tmp_path / "ann.safetensors"
    one_line_error(spikeadv("train", "ann", "--preset", "smoke", "--set", "dataset=mnist", "--out", out),
                   "takes 32x32 images", "mnist has 28x28", "--set spec=28x28-")
    assert not out.exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_out_that_is_a_file_is_one_line(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    out = blocker if where == "a file" else blocker / "run"
    one_line_error(spikeadv("run", "--preset", "smoke", "--out", out), str(blocker))
    assert blocker.read_text() == "mine"


def test_run_json_that_is_a_list_is_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("[]")
    before = files(out)
    one_line_error(spikeadv("run", "--preset", "smoke", "--out", out), "run.json is not a spikeadv run record")
    assert {p: t for p, t in files(out).items() if p.name != study.rundir.LOCK} == before


@pytest.fixture
def read_only(copy, monkeypatch):
    """The reference run made read-only. Root writes anywhere, so for root the kernel's refusal is
    emulated: every open for writing under the directory fails with EACCES, as it does for a user."""
    for p in [copy, *copy.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    if os.geteuid() == 0:
        real = os.open

        def refuse(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and Path(path).resolve().is_relative_to(copy):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    yield copy
    for p in [copy, *copy.rglob("*")]:
        os.chmod(p, 0o755)


def test_a_read_only_run_directory_serves_everything_that_needs_no_writing(read_only, tmp_path, capsys):
    out, before = read_only, files(read_only)
    assert cli.main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    assert "is read-only: every model and adversarial set was reused" in capsys.readouterr().out
    assert cli.main(["report", str(out)]) == 2
    assert f"cannot write {out / 'report'}" in capsys.readouterr().err
    assert cli.main(["run", "--preset", "smoke", "--out", str(out), "--set", "study.extra_eps=8,16,24"]) == 2
    assert "is read-only and the adversarial set snn10/bptt fgsm eps 24 needs computing" in capsys.readouterr().err
    assert cli.main(["report", str(out), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "table1.md").read_text() == (out / "report" / "table1.md").read_text()
    assert files(out) == before


# 7. the first hour --------------------------------------------------------------------------------

def test_a_study_value_added_reuses_every_model(reference, copy, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("adding an eps must not train or convert")

    for target in ("spikeadv.models.train.train", "spikeadv.models.convert.convert"):
        monkeypatch.setattr(target, forbidden)
    assert cli.main(["run", "--preset", "smoke", "--out", str(copy), "--set", "study.extra_eps=8,16,24"]) == 0
    out = capsys.readouterr().out
    assert "study settings changed (study.extra_eps ([8, 16] -> [8, 16, 24]))" in out and "(4 crafted," in out
    old = {json.dumps(r, sort_keys=True) for r in map(json.loads, (reference / "results.jsonl").read_text().splitlines())}
    new = [json.loads(line) for line in (copy / "results.jsonl").read_text().splitlines()]
    added = [r for r in new if json.dumps(r, sort_keys=True) not in old]
    assert {(r["gradient"], r["eps"]) for r in added} == {("bptt", 24)} and len(new) == len(old) + len(added)


def test_convert_reads_the_preset_from_the_checkpoint_and_shows_progress(reference, tmp_path):
    ann = next((reference / "models").glob("ann0-*.safetensors"))
    out = tmp_path / "snn1.safetensors"
    result = spikeadv("convert", ann, "--out", out)  # no --preset: the smoke preset the ANN records
    assert result.returncode == 0, result.stderr
    assert "balancing (spike)" in result.stderr
    assert checkpoint.load(out)[1]["preset"] == checkpoint.load(ann)[1]["preset"]
    evaluated = spikeadv("eval", out, "--threads", "1")  # a global option after the subcommand
    assert evaluated.returncode == 0 and "evaluating" in evaluated.stderr


def test_every_argument_has_help_and_the_top_help_speaks_to_users():
    top = cli.parser()
    assert "Commands only" not in top.format_help() and "spikeadv run --preset smoke" in top.format_help()
    missing = [f"{leaf.prog} {action.dest}" for leaf in cli._leaves(top) for action in leaf._actions
               if not action.help]
    assert not missing


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o002)
    try:
        records.UMASK = 0o002
        records.write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
        records.UMASK = records._umask()
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o664


def test_the_eta_weighs_each_set_by_its_cost():
    forward = {"ann": 1.0, "snn1": 32.0, "snn2": 6.0}
    draws = {"ann": 1, "snn1": 2, "snn2": 2}
    cheap = study.Job("snn2", 0, "snnadv", "fgsm", 8, 1, ("snn2",))
    bptt = study.Job("snn2", 0, "bptt", "fgsm", 8, 1, ("snn2",))
    assert study.plan_cost(bptt, forward, draws, 10) - study.plan_cost(cheap, forward, draws, 10) == \
        pytest.approx(10 * 3 * (6.0 - 1.0))
    costs = {t.name: t.cost for t in study.plan(get_preset("smoke"), ("a", "b"), 1000, "labels")}
    assert costs["snn20"] > costs["ann0"] and costs["cell/snn20/bptt fgsm eps 8"] > costs["cell/snn20/snnadv fgsm eps 8"]


def test_the_study_runner_refuses_one_seed_from_python_too(tmp_path):
    with pytest.raises(SpikeAdvError, match="at least two distinct seeds"):
        study.run(get_preset("smoke", ["seeds=3"]), tmp_path / "run", report.write_report)
    assert not (tmp_path / "run").exists()
