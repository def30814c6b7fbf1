"""``spikeadv sweep``: robust accuracy against T and encoding, per kind; resumable, refused on bad input."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spikeadv import cli, data
from spikeadv.config.presets import get_preset
from spikeadv.report import sweep as figure
from spikeadv.study import sweep

TINY = ["ann.epochs=1", "snn2.train.epochs=1", "sweep.T=2,3", "sweep.snn1_T=4", "sweep.images=16", "sweep.steps=1"]


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "a"
    assert cli.main(["sweep", "--preset", "smoke", *sets(TINY), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_the_sweep_has_every_kind_at_every_t_and_its_figure(uninterrupted):
    record = json.loads((uninterrupted / "sweep.json").read_text())
    got = {(p["series"], p["T"]) for p in record["points"]}
    assert got == {("ann", None), *((s, T) for s in ("snn2", "ann-rate") for T in (2, 3)),
                   *((s, 4) for s in ("snn1", "snn1-signed", "snn1-direct"))}
    preset = get_preset("smoke", TINY)
    for p in record["points"]:
        assert set(p["p"]) == {"0", "2", "8"} and all(len(v) == preset.sweep.images for v in p["p"].values())
        assert p["gradient"] == ("ann" if p["series"] == "ann" else "bptt")
    # the figure and its table from sweep.json alone: each robust accuracy is the mean expected correctness
    rows = figure.summary(record["points"])
    for r, (p, eps) in zip(rows, ((p, e) for p in record["points"] for e in p["p"])):
        assert r["acc"] == pytest.approx(100 * np.mean(p["p"][eps])) and r["low"] <= r["acc"] <= r["high"]
    for name in ("sweep.png", "sweep.svg", "sweep.md"):
        assert (uninterrupted / name).stat().st_size > 0
    signed = {p["series"]: p["model"]["path"] for p in record["points"] if p["T"] == 4}
    assert len(set(signed.values())) == 3  # Poisson, signed reset and direct input are three models


def test_the_sweep_resumes_after_kill_9_with_identical_results(uninterrupted, tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "spikeadv", "sweep", "--preset", "smoke", *sets(TINY), "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "sweep.json").exists()
    assert cli.main(["sweep", "--preset", "smoke", *sets(TINY), "--out", str(out), "--device", "cpu"]) == 0
    resumed = json.loads((out / "sweep.json").read_text())["points"]
    assert resumed == json.loads((uninterrupted / "sweep.json").read_text())["points"]


@pytest.mark.parametrize("bad, match", [
    (["sweep.T="], "sweep.T must list at least one integer"),
    (["sweep.T=4,0"], "T \\(timesteps\\) must be an integer"),
    (["sweep.snn1_T=16,-1"], "T \\(timesteps\\) must be an integer"),
    (["snn2.encoding=morse"], "unknown encoding"),
    (["width=0"], "width"),
    (["sweep.eps=300"], "eps is in 1/255 units"),
])
def test_bad_sweeps_are_refused_in_one_line_and_write_nothing(bad, match, tmp_path, capsys):
    out = tmp_path / "s"
    assert cli.main(["sweep", "--preset", "smoke", *sets(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert not out.exists()


def test_the_sweep_prints_its_cost_before_it_starts(uninterrupted, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(uninterrupted, out)
    lines = []
    sweep.run(get_preset("smoke", TINY), out, device=torch.device("cpu"), log=lines.append)
    assert re.fullmatch(r"sweep: 8 models .* about \S+ ANN forward passes, an estimated \d+ min on .*", lines[0]), lines[0]
    splits = data.splits("synthetic", get_preset("smoke").validation)
    cost = [sweep.estimate(get_preset("smoke", [*TINY, f"sweep.images={n}"]), splits, torch.device("cpu"))[0]
            for n in (16, 32)]
    assert 0 < cost[0] < cost[1]  # attacking and judging twice the images is more work


def test_each_preset_sweeps_the_t_its_machine_affords():
    """The issue's ranges: on the CPU the T that fit (SNN-II 4-12, SNN-I 16-64); on a GPU up to the
    paper's T = 70 (SNN-II) and 2000 (SNN-I)."""
    cpu, gpu = get_preset("cpu").sweep, get_preset("gpu").sweep
    assert max(cpu.T) <= 12 and max(cpu.snn1_T) <= 64 and len(cpu.T) >= 3
    assert max(gpu.T) == 70 and max(gpu.snn1_T) == 2000 and min(gpu.snn1_T) <= 16


def test_a_read_only_sweep_directory_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Opening the directory's lock for writing fails as it does in a read-only directory (EACCES; for
    root, who writes anywhere, emulated as tests/test_faults.py does)."""
    out = tmp_path / "ro"
    out.mkdir()
    real = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert cli.main(["sweep", "--preset", "smoke", *sets(TINY), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("is read-only; pass another --out") and len(err.splitlines()) == 1
    assert list(out.iterdir()) == []
