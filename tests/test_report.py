"""The report from a synthetic run directory whose numbers make known checks pass or fail."""

import json
import math
import re
from pathlib import Path

import pytest

from spikeadv import report
from spikeadv.errors import SpikeAdvError

GRADIENTS = {"ann": "ann", "snn1": "snnadv", "snn2": "snnadv"}
# Base loss per (scenario, target): SNNs lose less than the ANN under blackbox and more under whitebox,
# SNN-crafted inputs cost more than ANN-crafted ones, and SNN-II always loses more than SNN-I.
BASE = {
    "whitebox": {"ann": 10, "snn1": 12, "snn2": 14},
    "bb-snn1": {"ann": 9, "snn1": 6, "snn2": 7},
    "bb-snn2": {"ann": 9, "snn1": 6, "snn2": 7},
    "bb-ann": {"ann": 4, "snn1": 2, "snn2": 3},
}
FACTOR = {"fgsm": 1.0, "rfgsm": 0.9, "ifgsm": 1.5, "tifgsm": 0.5}
ATTACKS = [("fgsm", 1), ("rfgsm", 1), ("ifgsm", 2), ("ifgsm", 5), ("ifgsm", 7), ("tifgsm", 2), ("tifgsm", 5),
           ("tifgsm", 7)]
MISSING = ("snn1", "bb-snn2", "fgsm", 8, 1)  # a cell the run lacks
CLEAN = {("ann", 0): 91.23, ("ann", 1): 90.5, ("snn1", 0): 88.76, ("snn1", 1): 88.1, ("snn2", 0): 84.32,
         ("snn2", 1): 83.9}


def loss(target, scenario, attack, steps, eps):
    if (target, scenario, attack, eps) == ("ann", "whitebox", "rfgsm", 32):
        return 0.5  # 12.2 pp below its 16/255 value, beyond sampling error: "loss grows with eps" fails
    if (target, scenario, attack, eps) == ("ann", "whitebox", "tifgsm", 32):
        return 6.0  # 1.1 pp below its 16/255 value (7.1), within sampling error of 100 images: passes
    return BASE[scenario][target] * FACTOR[attack] * math.sqrt(eps / 8)


def row(target, scenario, attack, steps, eps, repeat, gradient=None):
    source = target if scenario == "whitebox" else scenario[3:]
    value = loss(target, scenario, attack, steps, eps) + (0.5 if repeat else -0.5)
    clean = CLEAN[(target, 0)]
    return {
        "target": target, "source_kind": source, "source_instance": 0 if scenario == "whitebox" else 1,
        "scenario": scenario, "gradient": gradient or GRADIENTS[source], "attack": attack, "eps": eps,
        "steps": steps, "repeat": repeat, "n": 100, "clean_acc": clean, "adv_acc": clean - value, "loss": value,
        "success_rate": 50.0, "target_hit_rate": 10.0 if attack == "tifgsm" else None,
        # SNNAdv (faithful) perturbs the rate-coded image: its true L-inf exceeds eps
        "linf": eps + (3.0 if GRADIENTS[source] == "snnadv" and gradient is None else 0.0), "l2": 0.5,
    }


def make_run(path):
    rows = [
        row(t, s, a, k, e, r)
        for t in report.KINDS for s in report.SCENARIOS for a, k in ATTACKS for e in (8, 16, 32, 64) for r in (0, 1)
        if (t, s, a, e, k) != MISSING
    ]
    rows += [row("snn2", "whitebox", "fgsm", 1, 8, r, gradient="bptt") for r in (0, 1)]
    meta = {
        "version": "0.1.0",
        "preset": {"name": "synthetic", "dataset": "cifar10", "test_subset": 100},
        "models": [{"kind": k, "instance": i, "clean_acc": a, "clean_std": 0.25, "repeats": 2,
                    "T": None if k == "ann" else 8, "path": f"{k}{i}.safetensors", "sha256": "0" * 64}
                   for (k, i), a in CLEAN.items()],
        "stages": {"train": 12.5, "attack": 30.25},
        "gradients": GRADIENTS,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps(meta))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def written(run_dir):
    return report.write_report(run_dir)


@pytest.fixture(scope="module")
def run(run_dir):
    return report.load_run(run_dir)


def test_every_file_written_and_non_empty(run_dir, written):
    names = {p.name for p in written}
    assert names == {"table1.md", "table1.csv", "results.csv", "fig2.png", "fig2.svg", "fig3.png", "fig3.svg",
                     "fig4.png", "fig4.svg", "report.md", "report.html"}
    for p in written:
        assert p.parent == run_dir / "report" and p.stat().st_size > 0
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if p.suffix == ".svg":
            assert "<svg" in p.read_text()
    assert not list((run_dir / "report").glob(".*.tmp"))


def test_html_is_self_contained(run_dir, written):
    page = (run_dir / "report" / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in page and "<link" not in page


def test_table1_and_paper_values(run_dir, written):
    for name in ("table1.md", "report.md"):
        text = (run_dir / "report" / name).read_text()
        for value in ("91.23", "88.76", "84.32", "89.5", "85.6", "87.1"):
            assert value in text
    csv_lines = (run_dir / "report" / "table1.csv").read_text().splitlines()
    assert csv_lines[0] == "kind,instance,clean_acc,clean_std,repeats,T,paper_clean_acc" and len(csv_lines) == 7
    md = (run_dir / "report" / "report.md").read_text()
    assert "27.8" in md and "43.5" in md and "35.5" in md  # paper's FGSM whitebox losses at 8/255


def test_results_csv_matches_jsonl(run_dir, written):
    lines = (run_dir / "report" / "results.csv").read_text().splitlines()
    jsonl = (run_dir / "results.jsonl").read_text().splitlines()
    assert lines[0] == ",".join(report.COLUMNS) and len(lines) == len(jsonl) + 1


def test_repeats_are_averaged(run):
    cell = run.cell("snn1", "whitebox", "fgsm", 8, 1)
    assert cell.repeats == 2 and cell.loss == pytest.approx(12.0) and cell.loss_std == pytest.approx(math.sqrt(0.5))
    assert run.cell(*MISSING) is None
    assert run.cell("snn2", "whitebox", "fgsm", 8, 1, gradient="bptt").loss == pytest.approx(14.0)


def test_sanity_checks(run):
    checks = {c.name: c for c in report.sanity_checks(run)}
    assert checks["I-FGSM (2-step) at least as strong as FGSM, ANN whitebox, every eps"].passed is True
    assert checks["ANN whitebox loss grows with eps (fgsm)"].passed is True
    assert checks["ANN whitebox loss grows with eps (ifgsm-2)"].passed is True
    failed = checks["ANN whitebox loss grows with eps (rfgsm)"]
    assert failed.passed is False and failed.verdict == "FAIL" and "32/255: 0.5" in failed.detail
    assert "32/255: 12.2 pp the other way, beyond 2 standard errors" in failed.detail
    within = checks["ANN whitebox loss grows with eps (tifgsm-2)"]
    assert within.passed is True and "32/255: 1.1 pp the other way, within 2 standard errors" in within.detail
    assert all(c.passed for name, c in checks.items() if "blackbox" in name)
    assert [c.name for c in checks.values() if not c.passed] == [failed.name]


def test_conclusions(run):
    found = {c.key: c for c in report.conclusions(run)}
    assert found["a"].verdict == "supported" and found["a"].wins == found["a"].total > 0
    assert found["b"].verdict == "supported"
    assert found["c"].verdict == "not supported" and found["c"].wins == 0
    assert found["d"].verdict == "supported"
    # blackbox: 3 scenarios x 8 attacks x 4 eps x 2 SNNs, less the missing SNN-I cell
    assert found["a"].total == 3 * 8 * 4 * 2 - 1
    assert [report._verdict(w, 6) for w in (6, 4, 3, 2, 0)] == ["supported"] * 2 + ["mixed", "not supported",
                                                                                       "not supported"]
    assert report._verdict(0, 0) == "no data"


def test_sampling_slack_is_two_binomial_standard_errors():
    def cell(adv_acc, n):
        return report.Cell(loss=0, loss_std=0, clean_acc=100, adv_acc=adv_acc, success_rate=0, linf=0, l2=0,
                           repeats=1, n=n)

    # p = 1/2 on 100 images each: SE of each = 5 pp, of the difference 5 * sqrt(2)
    assert report.sampling_slack(cell(50, 100), cell(50, 100)) == pytest.approx(2 * 5 * math.sqrt(2))
    # four times the images halve it; a certain outcome (p = 0 or 1) adds nothing
    assert report.sampling_slack(cell(50, 400), cell(100, 400)) == pytest.approx(2 * 2.5)


def test_lowest_marking():
    assert report.lowest({"ann": 3.0, "snn1": 1.0, "snn2": 2.0}) == {"snn1"}
    assert report.lowest({"ann": 1.0, "snn1": 1.0, "snn2": None}) == {"ann", "snn1"}
    assert report.lowest({"ann": None}) == set()
    assert report.lowest({"ann": -2.0, "snn1": 0.0}) == {"ann"}


def test_fig2_table_bolds_the_lowest(run):
    _, rows = report.fig2_table(run)
    by_cell = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert by_cell[("FGSM", "Whitebox", "8/255")] == ["**10.0 ± 0.7**", "12.0 ± 0.7", "14.0 ± 0.7"]
    assert by_cell[("FGSM", "ANN-crafted blackbox", "8/255")] == ["4.0 ± 0.7", "**2.0 ± 0.7**", "3.0 ± 0.7"]
    assert by_cell[("FGSM", "SNN-II-crafted blackbox", "8/255")] == ["9.0 ± 0.7", "—", "**7.0 ± 0.7**"]


def test_missing_cell_noted_and_other_gradients_listed(run_dir, written):
    md = (run_dir / "report" / "report.md").read_text()
    assert "no result for SNN-I at 8/255" in md
    _, rows = report.gradient_table(report.load_run(run_dir))
    assert len(rows) == 1 and rows[0][4] == "bptt" and rows[0][6] == "snnadv"


def test_perturbation_audit_flags_snnadv(run):
    audit = report.perturbation_audit(run)
    flagged = {(a.source_kind, a.gradient) for a in audit if a.flagged}
    assert flagged == {("snn1", "snnadv"), ("snn2", "snnadv")}
    assert not any(a.flagged for a in audit if a.gradient in ("ann", "bptt"))


def test_regenerating_gives_identical_markdown(run_dir, written, tmp_path):
    again = report.write_report(run_dir, tmp_path / "again")
    for name in ("report.md", "table1.md", "table1.csv", "results.csv"):
        assert (tmp_path / "again" / name).read_text() == (run_dir / "report" / name).read_text()
    assert len(again) == len(written)


def test_missing_results_raise(tmp_path):
    run_dir = make_run(tmp_path / "run")
    (run_dir / "results.jsonl").unlink()
    with pytest.raises(SpikeAdvError, match="results.jsonl"):
        report.write_report(run_dir)
    with pytest.raises(SpikeAdvError, match="does not exist"):
        report.write_report(tmp_path / "nowhere")


def test_malformed_files_raise(tmp_path):
    run_dir = make_run(tmp_path / "run")
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text("\n".join([lines[0], lines[1][:20]]) + "\n")
    with pytest.raises(SpikeAdvError, match=r"results.jsonl line 2"):
        report.load_run(run_dir)
    (run_dir / "results.jsonl").write_text(json.dumps({"target": "ann"}) + "\n")
    with pytest.raises(SpikeAdvError, match=r"results.jsonl line 1 lacks"):
        report.load_run(run_dir)
    (run_dir / "run.json").write_text("{")
    with pytest.raises(SpikeAdvError, match="run.json"):
        report.load_run(run_dir)


def test_partial_run_still_reports(tmp_path):
    run_dir = make_run(tmp_path / "run")
    rows = [row("ann", "whitebox", "fgsm", 1, e, 0) for e in (8, 16)]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = report.write_report(run_dir)
    assert all(p.stat().st_size > 0 for p in written)
    run = report.load_run(run_dir)
    assert {c.verdict for c in report.conclusions(run)} == {"no data"}
    checks = {c.name: c.passed for c in report.sanity_checks(run)}
    assert checks["ANN whitebox loss grows with eps (fgsm)"] is True
    assert checks["I-FGSM (2-step) at least as strong as FGSM, ANN whitebox, every eps"] is None
    md = (run_dir / "report" / "report.md").read_text()
    assert "**N/A**" in md and "no 2-step Whitebox results" in md


RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu"


def test_committed_cpu_report_regenerates_from_its_results(tmp_path):
    """The README's Table I and Fig. 2 come from results/cpu: rebuilding the report from its run.json and
    results.jsonl alone gives the committed tables and Markdown, and the README shows that Table I."""
    report.write_report(RESULTS, tmp_path)
    for name in ("table1.md", "table1.csv", "results.csv", "report.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "report" / name).read_text(), name
    readme = (RESULTS.parents[1] / "README.md").read_text()
    assert (RESULTS / "report" / "table1.md").read_text().strip() in readme
    assert "results/cpu/report/fig2.png" in readme
