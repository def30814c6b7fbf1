"""The report from a synthetic run directory whose numbers make known checks pass or fail."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_run import MISSING, make_run, restate, row

from spikeadv import report
from spikeadv.errors import SpikeAdvError


def test_every_file_written_and_non_empty(run_dir, written):
    names = {p.name for p in written}
    assert names == {"table1.md", "table1.csv", "results.csv", "comparisons.csv", "fig2.png", "fig2.svg", "fig3.png",
                     "fig3.svg", "fig4.png", "fig4.svg", "report.md", "report.html"}
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
    assert csv_lines[0] == ("kind,instance,clean_acc,clean_std,draws,T,encoding,val_acc,matched_gap,matched_within,"
                            "paper_clean_acc") and len(csv_lines) == 7
    md = (run_dir / "report" / "report.md").read_text()
    assert "27.8" in md and "43.5" in md and "35.5" in md  # paper's FGSM whitebox losses at 8/255


def test_results_csv_matches_jsonl(run_dir, written):
    lines = (run_dir / "report" / "results.csv").read_text().splitlines()
    jsonl = (run_dir / "results.jsonl").read_text().splitlines()
    assert lines[0] == ",".join(report.COLUMNS) and len(lines) == len(jsonl) + 1


def test_repeats_are_averaged_per_cell_and_per_image(run):
    cell = run.cell("snn1", "whitebox", "fgsm", 8, 1, gradient="snnadv-clean")  # 39 and 41 of 200 images lost
    assert cell.repeats == 2 and cell.loss == pytest.approx(20.0) and cell.loss_std == pytest.approx(math.sqrt(0.5))
    assert run.paired and cell.per_image.mean() * 100 == pytest.approx(cell.loss)
    assert list(cell.per_image[37:42]) == [1.0, 1.0, 0.5, 0.5, 0.0]  # lost in both repeats, in one, in none
    assert run.cell(*MISSING) is None
    assert run.cell("snn2", "whitebox", "fgsm", 8, 1, gradient="bptt").loss == pytest.approx(40.0)


def test_sanity_checks_use_paired_comparisons(run):
    checks = {c.name: c for c in report.sanity_checks(run)}
    assert checks["I-FGSM (2-step) at least as strong as FGSM, ANN whitebox, every eps"].passed is True
    assert checks["ANN whitebox loss grows with eps (fgsm)"].passed is True
    failed = checks["ANN whitebox loss grows with eps (rfgsm)"]
    # 9 images the other way, each lost at 16/255 and kept at 32/255: McNemar p = 2 / 2^9
    assert failed.passed is False and failed.verdict == "FAIL" and "32/255: 7.0" in failed.detail
    assert "32/255: 4.5 pp the other way" in failed.detail and "McNemar p = 0.00391" in failed.detail
    assert "beyond noise" in failed.detail
    within = checks["ANN whitebox loss grows with eps (tifgsm-2)"]  # one image: p = 1
    assert within.passed is True and "32/255: 0.5 pp the other way" in within.detail
    assert "McNemar p = 1 " in within.detail and "within noise" in within.detail
    assert all(c.passed for name, c in checks.items() if "blackbox" in name)
    assert [c.name for c in checks.values() if not c.passed] == [failed.name]


def test_conclusions_rest_on_eps_bounded_cells_only(run):
    """The faithful SNNAdv cells say the opposite of the bounded ones everywhere; the verdicts follow the
    bounded cells, and no judgement uses a cell whose (source, gradient, eps) the audit flags."""
    found = {c.key: c for c in report.conclusions(run)}
    bad = report.flagged(run)
    assert bad == {(k, "snnadv", e) for k in report.SNNS for e in (8, 16, 32, 64)}
    for c in found.values():
        for j in c.judgements:
            assert j.pairs and j.stats is not None
            for key in (k for pair in j.pairs for k in pair):
                assert (report.source_kind(key[0], key[1]), key[2], key[4]) not in bad
                assert key[3:] in {(a, e, k) for a, k in (("fgsm", 1), ("rfgsm", 1), ("ifgsm", 2), ("tifgsm", 2))
                                   for e in (8, 16, 32)}  # the Table III grid, never the Fig. 4 sweep
    assert found["a"].verdict == "supported" and len(found["a"].judgements) == 6
    assert found["b"].verdict == "supported"
    assert found["c"].verdict == "not supported"
    assert found["d"].verdict == "supported" and len(found["d"].judgements) == 2  # off the diagonal only


def test_strongest_gradient_judged_beside_the_papers(run):
    found = {c.key: c for c in report.conclusions(run)}
    assert report.strongest(run, report.flagged(run)) == {"ann": "ann", "snn1": "snnadv-clean", "snn2": "bptt"}
    gradients = [j.gradient for j in found["b"].judgements]
    assert gradients[:2] == ["paper's, eps-bounded"] * 2 and all(g.startswith("strongest") for g in gradients[2:])
    (bptt,) = [j for j in found["b"].judgements if any(k[2] == "bptt" for pair in j.pairs for k in pair)]
    assert bptt.pairs == ((("ann", "whitebox", "ann", "fgsm", 8, 1), ("snn2", "whitebox", "bptt", "fgsm", 8, 1)),)
    assert bptt.stats.diff == pytest.approx(40.0 - 10.0) and bptt.verdict == "supported"
    assert any(j.gradient.startswith("strongest") and j.what.startswith("SNN-II vs SNN-I")
               for j in found["c"].judgements)


def test_identical_outcomes_are_not_distinguishable(run):
    """SNN-I-crafted inputs cost SNN-I exactly the images ANN-crafted ones do: no evidence either way (and
    (d) never compares them: that is the family's diagonal)."""
    same = report.analysis.judge_cells([(run.cell("snn1", "bb-snn1", "fgsm", 8, 1, "snnadv-clean"),
                                         run.cell("snn1", "bb-ann", "fgsm", 8, 1))])
    assert (same.diff, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 1.0) and same.verdict != "supported"
    d = {c.key: c for c in report.conclusions(run)}["d"]
    assert [j.what for j in d.judgements] == ["SNN-II-crafted blackbox vs ANN-crafted, on SNN-I",
                                              "SNN-I-crafted blackbox vs ANN-crafted, on SNN-II"]


def test_every_verdict_names_its_cells_and_interval(run_dir, written):
    md = (run_dir / "report" / "report.md").read_text()
    section = md[md.index("## The paper's conclusions"):]
    lines = [line for line in section.splitlines() if line.startswith("- (") and " [" in line]
    assert len(lines) == sum(len(c.judgements) for c in report.conclusions(report.load_run(run_dir)))
    for line in lines:
        assert re.search(r"difference [+-]\d+\.\d pp \[[+-]\d+\.\d, [+-]\d+\.\d\] over 200 images", line), line
        assert "cells: " in line and "cell pairs)" in line
    pairs = (run_dir / "report" / "comparisons.csv").read_text()
    assert "snn2/whitebox/snnadv-clean/fgsm/8/1" in pairs and "/snnadv/" not in pairs


def test_same_function_sources_are_excluded(tmp_path):
    """With SNN-I on direct input, SNN-I-crafted inputs are the ANN's: they count as one source with them in
    (a), (c) and (d), and each says why."""
    run_dir = make_run(tmp_path / "run", encoding="direct")
    found = {c.key: c for c in report.conclusions(report.load_run(run_dir))}
    for key, count in (("a", 4), ("c", 4), ("d", 1)):
        assert len(found[key].judgements) == count and not any("SNN-I-crafted" in j.what for j in found[key].judgements)
        assert "compare a model with itself" in found[key].excluded[0]
    report.write_report(run_dir)
    assert ("SNN-I-crafted blackbox counted with the ANN-crafted source: SNN-I runs on direct"
            in (run_dir / "report" / "report.md").read_text())


def test_run_without_per_image_outcomes_reports_and_says_so(tmp_path):
    run_dir = make_run(tmp_path / "old", paired=False)
    written = report.write_report(run_dir)
    assert all(p.stat().st_size > 0 for p in written)
    run = report.load_run(run_dir)
    assert not run.paired
    assert {c.verdict for c in report.conclusions(run)} == {"paired statistics unavailable"}
    checks = report.sanity_checks(run)
    assert checks[0].name.startswith("every number") and checks[0].verdict == "PASS"  # needs no outcomes
    assert {c.verdict for c in checks[1:]} == {"N/A"}
    md = (run_dir / "report" / "report.md").read_text()
    assert "per-image outcomes: no (paired statistics unavailable)" in md
    assert "FGSM | Whitebox | 8/255 | **10.0** | 20.0 ± 0.7 | 30.0 ± 0.7" in md  # the tables are complete
    # the command line too: exit 0, no traceback
    done = subprocess.run([sys.executable, "-m", "spikeadv", "report", str(run_dir), "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "paired statistics unavailable" in (tmp_path / "cli" / "report.md").read_text()


@pytest.mark.parametrize("damage", [lambda c: c[:-4], lambda c: 5, lambda c: "not base64!"])
def test_outcomes_that_do_not_decode_are_a_clear_error(tmp_path, damage):
    run_dir = make_run(tmp_path / "run")
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    broken = json.loads(lines[3])
    broken["correct"] = damage(broken["correct"])
    restate(run_dir, "\n".join([*lines[:3], json.dumps(broken), *lines[4:]]) + "\n")
    with pytest.raises(SpikeAdvError, match=r"results.jsonl row 4: per-image outcomes do not decode"):
        report.load_run(run_dir)


def test_lowest_marking():
    assert report.lowest({"ann": 3.0, "snn1": 1.0, "snn2": 2.0}) == {"snn1"}
    assert report.lowest({"ann": 1.0, "snn1": 1.0, "snn2": None}) == {"ann", "snn1"}
    assert report.lowest({"ann": None}) == set()
    assert report.lowest({"ann": -2.0, "snn1": 0.0}) == {"ann"}


def test_fig2_table_shows_bounded_cells_and_marks_faithful_ones(run):
    _, rows = report.fig2_table(run)
    by_cell = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert by_cell[("FGSM", "Whitebox", "8/255")] == ["**10.0**", "20.0 ± 0.7", "30.0 ± 0.7"]
    assert by_cell[("FGSM", "Whitebox (*faithful SNNAdv, not eps-bounded*)", "8/255")] == ["—", "1.0 ± 0.7",
                                                                                          "1.0 ± 0.7"]
    assert by_cell[("FGSM", "ANN-crafted blackbox", "8/255")] == ["4.0", "**1.0 ± 0.7**", "2.0 ± 0.7"]
    assert ("FGSM", "ANN-crafted blackbox (*faithful SNNAdv, not eps-bounded*)", "8/255") not in by_cell
    assert by_cell[("FGSM", "SNN-II-crafted blackbox", "8/255")] == ["20.0", "—", "**12.5 ± 0.7**"]


def test_missing_cell_noted_and_other_gradients_listed(run_dir, written):
    md = (run_dir / "report" / "report.md").read_text()
    assert "no result for SNN-I at 8/255" in md
    _, rows = report.gradient_table(report.load_run(run_dir))
    (bptt,) = [r for r in rows if r[4] == "bptt"]
    assert bptt[6] == "snnadv" and {r[4] for r in rows} == {"bptt", "snnadv-clean"}


def test_perturbation_audit_flags_snnadv(run):
    audit = report.perturbation_audit(run)
    flagged = {(a.source_kind, a.gradient) for a in audit if a.flagged}
    assert flagged == {("snn1", "snnadv"), ("snn2", "snnadv")}
    assert not any(a.flagged for a in audit if a.gradient in ("ann", "bptt", "snnadv-clean"))


def test_regenerating_gives_identical_markdown(run_dir, written, tmp_path):
    again = report.write_report(run_dir, tmp_path / "again")
    for name in ("report.md", "table1.md", "table1.csv", "results.csv", "comparisons.csv"):
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
    restate(run_dir, "\n".join([lines[0], lines[1][:20]]) + "\n")
    with pytest.raises(SpikeAdvError, match=r"results.jsonl line 2"):
        report.load_run(run_dir)
    restate(run_dir, json.dumps({"target": "ann"}) + "\n")
    with pytest.raises(SpikeAdvError, match=r"results.jsonl line 1 lacks"):
        report.load_run(run_dir)
    (run_dir / "run.json").write_text("{")
    with pytest.raises(SpikeAdvError, match="run.json"):
        report.load_run(run_dir)


def test_partial_run_still_reports(tmp_path):
    run_dir = make_run(tmp_path / "run")
    rows = [row("ann", "whitebox", "fgsm", 1, e, "ann", 0) for e in (8, 16)]
    restate(run_dir, "".join(json.dumps(r) + "\n" for r in rows))
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
    for name in ("table1.md", "table1.csv", "results.csv", "comparisons.csv", "report.md"):
        assert (tmp_path / name).read_text() == (RESULTS / "report" / name).read_text(), name
    readme = (RESULTS.parents[1] / "README.md").read_text()
    assert (RESULTS / "report" / "table1.md").read_text().strip() in readme
    assert "results/cpu/report/fig2.png" in readme
    # every verdict of the report, with its interval and cells, is in the README as the report words it
    md = (RESULTS / "report" / "report.md").read_text()
    verdicts = [line for line in md[md.index("## The paper's conclusions"):].splitlines() if line.startswith("- (")]
    assert verdicts and all(line in readme for line in verdicts)
    assert report.load_run(RESULTS).paired


