"""The study end to end on the smoke preset: every artifact, reuse, kill -9 resume, bad input."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeadv import cli, records, study
from spikeadv.config.grid import CONTROLS, KINDS, MATCHED, SNNS, TARGETS
from spikeadv.config.presets import StudyConfig, get_preset, recorded
from spikeadv.config.spiking import Spiking
from spikeadv.data import load
from spikeadv.models.network import Network
from spikeadv.models.trained import Trained
from spikeadv.records import outcomes
from spikeadv.records.provenance import digest
from spikeadv.report import FIG2_ATTACKS, load_run, sanity_checks
from spikeadv.study import judge

SMOKE = get_preset("smoke")


def spikeadv(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "spikeadv", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)


def expected_rows(cfg: StudyConfig) -> int:
    """One row per adversarial set and target (a stochastic target judged on its K draws in that row)."""
    return sum(len(job.targets) for job in study.grid(cfg, study.bounded_kinds(SMOKE)))


def test_grid_follows_table_iii():
    cfg = StudyConfig()
    jobs = study.grid(cfg)
    keys = [(j.source, j.instance, j.gradient, j.attack, j.eps, j.steps) for j in jobs]
    assert len(keys) == len(set(keys))
    for j in jobs:
        if j.instance == 0:  # whitebox: crafted from the target itself
            assert j.targets == (j.source,) and j.scenario() == "whitebox"
        else:
            assert j.scenario() == f"bb-{j.source}"
    fig2 = [(j.attack, j.steps) for j in jobs if j.gradient in ("ann", "snnadv") and j.eps in cfg.eps
            and j.source in KINDS]
    for attack, steps, _ in FIG2_ATTACKS:  # every Fig. 2 row, from all six models, on all targets and controls
        for kind in KINDS:
            (bb,) = [j for j in jobs if (j.source, j.instance, j.attack, j.steps, j.eps) == (kind, 1, attack, steps, 8)
                     and j.gradient in ("ann", "snnadv")]
            assert bb.targets == TARGETS
        assert fig2.count((attack, steps)) == 6 * len(cfg.eps)
        for control in CONTROLS:  # each control attacked whitebox with its exact gradient, on itself
            (wb,) = [j for j in jobs if (j.source, j.attack, j.steps, j.eps) == (control, attack, steps, 8)]
            assert (wb.instance, wb.targets, wb.gradient) == (0, (control,), "bptt" if control == "ann-rate" else "ann")
    assert {t for j in study.grid(dataclasses.replace(cfg, controls=False)) for t in j.targets} == set(KINDS)
    fig4 = {(j.source, j.instance, j.attack, j.steps, j.eps) for j in jobs if "snn2" in j.targets}
    for source in (("snn2", 0), ("snn2", 1), ("ann", 1)):
        for attack in ("ifgsm", "tifgsm"):
            assert {(*source, attack, k, e) for k in cfg.fig4_steps for e in cfg.fig4_eps} <= fig4
    bptt = [j for j in jobs if j.gradient == "bptt" and j.source in KINDS]
    assert {(j.source, j.attack, j.eps) for j in bptt} == {
        (k, a, e) for k in ("snn1", "snn2") for a in ("fgsm", "ifgsm") for e in cfg.extra_eps}
    assert all(j.instance == 0 for j in bptt)
    # every SNN-sourced job again with the eps-bounded SNNAdv, except where the faithful one is bounded
    faithful = {(j.source, j.instance, j.attack, j.eps, j.steps, j.targets) for j in jobs if j.gradient == "snnadv"}
    clean = {(j.source, j.instance, j.attack, j.eps, j.steps, j.targets) for j in jobs if j.gradient == "snnadv-clean"}
    assert clean == faithful and {k[0] for k in clean} == {"snn1", "snn2"}
    direct = study.grid(cfg, frozenset({"snn1"}))
    assert {j.source for j in direct if j.gradient == "snnadv-clean"} == {"snn2"}
    assert len(direct) == len(jobs) - len([k for k in clean if k[0] == "snn1"])
    # the first gradient source is the paper's; without further ones no BPTT job is made
    assert not [j for j in study.grid(StudyConfig(gradients=("snnadv",))) if j.gradient != "snnadv" and j.source in SNNS]


def test_only_poisson_coded_snns_are_judged_on_several_draws():
    net = Network(SMOKE.spec, 3, (0.5,) * 3, (0.25,) * 3).eval()
    model = lambda snn: Trained("x", 0, net, snn, Path("x"), "0" * 64, {})  # noqa: E731
    assert not judge.stochastic(model(None)) and not judge.stochastic(model(Spiking(encoding="direct")))
    assert judge.stochastic(model(Spiking(encoding="poisson")))
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    p = judge.expected(model(Spiking(encoding="poisson", T=2)), x, y, torch.arange(6), judge.Judge(draws=5))
    assert torch.equal(p * 5, (p * 5).round())  # a share of 5 draws
    job = study.Job("ann", 1, "ann", "fgsm", 8, 1, ("snn2",))  # evaluation cost: one pass per target draw
    forward = {"ann": 1.0, "snn1": 1.0, "snn2": 6.0}
    assert study.plan_cost(job, forward, {"ann": 1, "snn1": 1, "snn2": 32}, 10) == pytest.approx(10 * (3 + 32 * 6))


def test_smoke_run_writes_every_artifact(reference):
    report = reference / "report"
    for name in ("table1.md", "table1.csv", "results.csv", "report.md", "report.html",
                 *(f"fig{i}.{ext}" for i in (2, 3, 4) for ext in ("png", "svg"))):
        assert (report / name).stat().st_size > 0, name
    meta = json.loads((reference / "run.json").read_text())
    assert meta["complete"] and meta["version"] and meta["preset"]["name"] == "smoke"
    assert sorted((m["kind"], m["instance"]) for m in meta["models"]) == sorted(
        (k, i) for k in TARGETS for i in (0, 1))
    for m in meta["models"]:
        assert (reference / m["path"]).is_file() and len(m["sha256"]) == 64
        deterministic = m["kind"] in ("ann", *MATCHED)
        assert 0 <= m["clean_acc"] <= 100 and m["draws"] == (1 if deterministic else SMOKE.study.draws)
        assert m["T"] == (None if deterministic else SMOKE.spiking(m["kind"]).T)
    assert {"train ANN", "train SNN-II", "convert SNN-I", "clean eval", "craft", "evaluate"} <= set(meta["stages"])
    rows = [json.loads(line) for line in (reference / "results.jsonl").read_text().splitlines()]
    assert len(rows) == expected_rows(SMOKE.study)
    md = (report / "report.md").read_text()
    assert "Every figure cell has a result." in md
    for heading in ("Table I", "Fig. 2 numbers", "Perturbation audit", "Sanity checks", "conclusions"):
        assert heading in md


def test_smoke_results_are_consistent(reference):
    """Metrics obey their definitions, and ANN-only properties of any correct grid hold."""
    run = load_run(reference)
    for r in run.rows:
        assert r["loss"] == pytest.approx(r["clean_acc"] - r["adv_acc"], abs=1e-3)
        assert (r["target_hit_rate"] is None) == (r["attack"] != "tifgsm")
        assert 0 <= r["success_rate"] <= 100
        if r["gradient"] != "snnadv":  # every other source stays in the eps-ball of the clean image
            assert r["linf"] <= r["eps"] + 1e-3
            linf = outcomes.unpack_halves(r["linf_image"], r["n"])
            assert (linf <= r["eps"] * 1.001 + 1e-3).all()  # float16: 3 significant digits
            assert r["unperturbed"] == pytest.approx(np.mean(linf == 0), abs=1e-4)
            assert r["under_budget"] == pytest.approx(np.mean(linf < 0.99 * r["eps"]), abs=1e-4)
        if r["gradient"] == "snnadv-clean" and r["attack"] == "fgsm":  # standardised logits: every image moves
            assert r["unperturbed"] == 0
    # the faithful SNNAdv starts from the rate image: its true L-inf exceeds eps (DESIGN, gradient sources)
    assert max(r["linf"] - r["eps"] for r in run.rows if r["gradient"] == "snnadv") > 1
    checks = sanity_checks(run)
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_rows_carry_per_image_outcomes_that_recompute_their_accuracies(reference):
    """Each row's packed outcomes give its adversarial accuracy; run.json's clean outcomes give each
    model's clean accuracy; a targeted row's predictions give its hit rate and agree with its outcomes."""
    meta = json.loads((reference / "run.json").read_text())
    images = SMOKE.study.images
    y = load("synthetic", "test").labels[:images].numpy()
    for m in meta["models"]:
        p = (outcomes.unpack_classes(m["clean_hits"], images) / m["draws"] if m["draws"] > 1
             else outcomes.unpack(m["clean_correct"][0], images))
        assert 100 * p.mean() == pytest.approx(m["clean_acc"], abs=1e-3)
    rows = [json.loads(line) for line in (reference / "results.jsonl").read_text().splitlines()]
    for r in rows:
        correct = outcomes.unpack(r["correct"], r["n"])
        p = outcomes.unpack_classes(r["hits"], r["n"]) / r["draws"] if r["draws"] > 1 else correct
        assert 100 * p.mean() == pytest.approx(r["adv_acc"], abs=1e-3) and np.array_equal(correct, p >= 0.5)
        if r["attack"] == "tifgsm":
            pred, hit = outcomes.unpack_classes(r["pred"], r["n"]), outcomes.unpack(r["hit"], r["n"])
            assert 100 * hit.mean() == pytest.approx(r["target_hit_rate"])
            if r["draws"] == 1:
                assert np.array_equal(pred == y, correct)
            assert not (hit & (pred == y)).any()  # a random target is never the true class
        else:
            assert "pred" not in r and "hit" not in r
    assert load_run(reference).paired


def test_second_run_reuses_everything(reference, monkeypatch, tmp_path):
    before = (reference / "results.jsonl").read_bytes()

    def forbidden(*args, **kwargs):
        raise AssertionError("a rerun must not train, convert, craft or evaluate")

    for target in ("spikeadv.models.train.train", "spikeadv.models.convert.convert", "spikeadv.study.compute.craft",
                   "spikeadv.study.compute.judged"):
        monkeypatch.setattr(target, forbidden)
    assert cli.main(["run", "--preset", "smoke", "--out", str(reference)]) == 0
    assert (reference / "results.jsonl").read_bytes() == before
    # the report regenerates from the saved results alone
    assert cli.main(["report", str(reference), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "table1.md").read_text() == (reference / "report" / "table1.md").read_text()


@pytest.mark.slow
def test_kill_during_crafting_then_resume_gives_the_same_results(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "models", out / "models")  # models are tested elsewhere: start at crafting
    # and with all but every 18th cell (13 cells spread over the grid) already made, so the run crafts those
    cells = out / "cells"
    shutil.copytree(reference / "cells", cells)
    for path in sorted(cells.glob("*.json"))[::18]:
        path.unlink()
    copied = len(list(cells.glob("*.json")))
    proc = subprocess.Popen([sys.executable, "-m", "spikeadv", "run", "--preset", "smoke", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(list(cells.glob("*.json"))) < copied + 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(cells.glob("*.json")))
    total = len(study.grid(SMOKE.study, study.bounded_kinds(SMOKE)))
    assert copied + 4 <= done < total, "killed too late to test resuming"
    assert not (out / "results.jsonl").exists()
    resumed = spikeadv("run", "--preset", "smoke", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} reused" in resumed.stdout + resumed.stderr
    assert (out / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    assert not list(out.rglob("*.tmp"))


def snapshot(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("args, message", [
    (["--set", "study.attacks=fgsm,cw"], "unknown attack 'cw'"),
    (["--set", "study.eps=8,300"], "must be in [0, 255]"),
    (["--set", "study.eps=-1"], "must be in [0, 255]"),
    (["--set", "study.fig4_steps=2,0"], "steps must be >= 1"),
    (["--set", "study.steps=0"], "steps must be >= 1"),
    (["--set", "ann.epochs=1"], "another config: preset.ann.epochs (3 -> 1)"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(reference, args, message):
    before = snapshot(reference)
    result = spikeadv("run", "--preset", "smoke", "--out", reference, *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(reference) == before


def test_run_directory_of_another_version_is_refused(reference, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    meta = json.loads((reference / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "version": "0.0.1"}))
    before = snapshot(out)
    result = spikeadv("run", "--preset", "smoke", "--out", out)
    assert result.returncode != 0 and "version (\"0.0.1\" ->" in result.stderr
    assert "Traceback" not in result.stderr and snapshot(out) == before


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path):
    result = spikeadv("report", tmp_path)
    assert result.returncode != 0 and "run.json does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_every_cell_file_is_named_by_the_recipe_its_plan_made(reference):
    """One recipe per cell, made once in the plan: the task only adds the content hashes of the models
    it was given, and the cell's file is named by the hash of that whole recipe and holds it."""
    record = json.loads((reference / "run.json").read_text())
    sha = {(m["kind"], m["instance"]): m["sha256"] for m in record["models"]}
    preset = recorded(record["preset"])
    cells = [t for t in study.plan(preset, (record["data"]["train"], record["data"]["test"]), 1, record["labels"])
             if t.kind == "cell"]
    assert {p.name for p in (reference / "cells").glob("*.json")} == {
        f"{digest(whole)}.json" for whole in (_completed(t.recipe, sha) for t in cells)}
    for task in cells[:20]:
        whole = _completed(task.recipe, sha)
        saved, why = records.read_record(reference / "cells" / f"{digest(whole)}.json")
        assert saved is not None, why
        assert saved["recipe"] == whole and whole["labels"] == record["labels"]


def _completed(recipe: dict, sha: dict) -> dict:
    job = recipe["job"]
    return {**recipe, "source": sha[(job["source"], job["instance"])], "targets": [sha[(t, 0)] for t in job["targets"]]}
