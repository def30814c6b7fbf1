"""The report from a synthetic run directory whose numbers make known checks pass or fail."""

import base64
import html
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from spikeadv import report
from spikeadv.report import figures
from spikeadv.errors import SpikeAdvError

N = 200  # images attacked
GRADIENTS = {"ann": "ann", "snn1": "snnadv", "snn2": "snnadv"}
REPEATS = {"ann": 1, "snn1": 2, "snn2": 2}
CLEAN = {"ann": 180, "snn1": 170, "snn2": 160}  # images instance 0 gets right (the first ones), every repeat
# Images lost per (scenario, target) under eps-bounded inputs: SNNs lose less than the ANN under blackbox
# and more under whitebox, SNN-crafted inputs cost more than ANN-crafted ones (but SNN-I-crafted inputs
# cost SNN-I exactly what ANN-crafted ones do), and SNN-II always loses more than SNN-I.
BASE = {
    "whitebox": {"ann": 20, "snn1": 40, "snn2": 60},
    "bb-snn1": {"ann": 40, "snn1": 2, "snn2": 12},
    "bb-snn2": {"ann": 40, "snn1": 10, "snn2": 25},
    "bb-ann": {"ann": 8, "snn1": 2, "snn2": 4},
}
# Faithful SNNAdv (its true L-inf exceeds eps, so the audit flags it) says the opposite everywhere.
FAITHFUL = {
    "whitebox": {"ann": 0, "snn1": 2, "snn2": 2},
    "bb-snn1": {"ann": 0, "snn1": 100, "snn2": 100},
    "bb-snn2": {"ann": 0, "snn1": 100, "snn2": 100},
}
FACTOR = {"fgsm": 1.0, "rfgsm": 0.8, "ifgsm": 1.2, "tifgsm": 0.5}
ATTACKS = [("fgsm", 1), ("rfgsm", 1), ("ifgsm", 2), ("ifgsm", 5), ("ifgsm", 7), ("tifgsm", 2), ("tifgsm", 5),
           ("tifgsm", 7)]
MISSING = ("snn1", "bb-snn2", "fgsm", 8, 1)  # a cell the run lacks
CLEAN_ACC = {("ann", 0): 91.23, ("ann", 1): 90.5, ("snn1", 0): 88.76, ("snn1", 1): 88.1, ("snn2", 0): 84.32,
             ("snn2", 1): 83.9}  # Table I as run.json records it


def lost(target, scenario, attack, steps, eps, gradient):
    """Images the cell's inputs turn from right to wrong (a mean over repeats)."""
    if (target, scenario, attack, eps) == ("ann", "whitebox", "rfgsm", 32):
        return 14  # 9 images fewer than at 16/255 (23): "loss grows with eps" fails beyond noise
    if (target, scenario, attack, eps) == ("ann", "whitebox", "tifgsm", 32):
        return 13  # one image fewer than at 16/255 (14): within noise, passes
    table = FAITHFUL if gradient == "snnadv" else BASE
    scale = 1.0 if gradient == "snnadv" else FACTOR[attack] * math.sqrt(eps / 8)
    extra = 20 if gradient == "bptt" else 0
    return min(CLEAN[target] - 1, round(table[scenario][target] * scale) + extra)


def outcomes(correct):
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def row(target, scenario, attack, steps, eps, gradient, repeat):
    source = target if scenario == "whitebox" else scenario[3:]
    count = lost(target, scenario, attack, steps, eps, gradient) + (0 if REPEATS[target] == 1 else 2 * repeat - 1)
    correct = np.arange(N) >= count
    correct[CLEAN[target]:] = False  # the clean mistakes stay mistakes; the first `count` images are lost
    clean, adv = 100 * CLEAN[target] / N, 100 * correct.mean()
    return {
        "target": target, "source_kind": source, "source_instance": 0 if scenario == "whitebox" else 1,
        "scenario": scenario, "gradient": gradient, "attack": attack, "eps": eps, "steps": steps,
        "repeat": repeat, "n": N, "clean_acc": clean, "adv_acc": adv, "loss": clean - adv, "success_rate": 50.0,
        "target_hit_rate": 10.0 if attack == "tifgsm" else None,
        "linf": eps + (3.0 if gradient == "snnadv" else 0.0), "l2": 0.5, "correct": outcomes(correct),
    }


def cells():
    """(target, scenario, attack, steps, eps, gradient) of every cell of the synthetic run."""
    for t in report.KINDS:
        for s in report.SCENARIOS:
            source = t if s == "whitebox" else s[3:]
            for gradient in (GRADIENTS[source],) if source == "ann" else ("snnadv", "snnadv-clean"):
                for a, k in ATTACKS:
                    for e in (8, 16, 32, 64):
                        if (t, s, a, e, k) != MISSING:
                            yield t, s, a, k, e, gradient
    yield "snn2", "whitebox", "fgsm", 1, 8, "bptt"


def make_run(path, paired=True, encoding="poisson", **preset):
    """A run directory of the synthetic cells; ``preset`` entries replace run.json's preset fields."""
    rows = [row(*c, r) for c in cells() for r in range(REPEATS[c[0]])]
    meta = {
        "version": "0.1.0",
        "preset": {"name": "synthetic", "dataset": "cifar10", "test_subset": 100, "snn1": {"encoding": encoding},
                   "study": {"attacks": ["fgsm", "rfgsm", "ifgsm", "tifgsm"], "steps": 2, "eps": [8, 16, 32]}},
        "models": [{"kind": k, "instance": i, "clean_acc": a, "clean_std": 0.25, "repeats": REPEATS[k],
                    "T": None if k == "ann" else 8, "path": f"{k}{i}.safetensors", "sha256": "0" * 64,
                    "clean_correct": [outcomes(np.arange(N) < CLEAN[k])] * REPEATS[k]}
                   for (k, i), a in CLEAN_ACC.items()],
        "stages": {"train": 12.5, "attack": 30.25},
        "gradients": GRADIENTS,
    }
    meta["preset"].update(preset)
    if not paired:  # a run saved before per-image outcomes
        rows = [{k: v for k, v in r.items() if k != "correct"} for r in rows]
        for m in meta["models"]:
            del m["clean_correct"]
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
    assert csv_lines[0] == "kind,instance,clean_acc,clean_std,repeats,T,paper_clean_acc" and len(csv_lines) == 7
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
    assert found["d"].verdict == "mixed: 5 supported, 1 not distinguishable at this sample size"


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
    """SNN-I-crafted inputs cost SNN-I exactly the images ANN-crafted ones do: no evidence either way."""
    (same,) = [j for c in report.conclusions(run) for j in c.judgements if j.verdict != "supported"
               and j.what.startswith("SNN-I-crafted")]
    assert same.what.endswith("on SNN-I")
    assert (same.stats.diff, same.stats.lo, same.stats.hi) == (0.0, 0.0, 0.0)


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
    """With SNN-I on direct input, SNN-I-crafted inputs are the ANN's: (d) leaves them out and says why."""
    run_dir = make_run(tmp_path / "run", encoding="direct")
    d = {c.key: c for c in report.conclusions(report.load_run(run_dir))}["d"]
    assert len(d.judgements) == 3 and not any("SNN-I-crafted" in j.what for j in d.judgements)
    assert d.excluded and "compare a model with itself" in d.excluded[0]
    report.write_report(run_dir)
    assert "SNN-I-crafted blackbox left out: SNN-I runs on direct" in (run_dir / "report" / "report.md").read_text()


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
    (run_dir / "results.jsonl").write_text("\n".join([*lines[:3], json.dumps(broken), *lines[4:]]) + "\n")
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
    rows = [row("ann", "whitebox", "fgsm", 1, e, "ann", 0) for e in (8, 16)]
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


# ---------------------------------------------------------------- figures and captions (issue 11, item 8)

FIGURES = {"fig2": report.figure2, "fig3": report.figure3, "fig4": report.figure4}


def drawn(fig):
    """The figure laid out and drawn as it will be saved, and its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def bar_tops(ax):
    return [p.get_height() for p in ax.patches if p.get_fill()]


@pytest.mark.parametrize("name", ["fig2", "fig3"])
def test_bar_panels_share_one_y_range(run, name):
    """Panels whose tallest bars differ still read on one scale, which holds every bar."""
    fig, _ = FIGURES[name](run)
    drawn(fig)
    tallest = [max(bar_tops(ax)) for ax in fig.axes]
    assert len(fig.axes) == (16 if name == "fig2" else 4)
    assert max(tallest) > 2 * min(tallest)  # separate scales would differ
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    low, high = fig.axes[0].get_ylim()
    assert low <= 0 and high >= max(tallest)


def test_fig4_panels_share_one_y_range(run):
    fig, _ = report.figure4(run)
    drawn(fig)
    assert len(fig.axes) == 2 and fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_losses_are_labelled_in_percentage_points(run, name):
    fig, _ = FIGURES[name](run)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels and all("loss (pp)" in label and "%" not in label for label in labels)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_titles_and_legends_fit_the_figure(run, name):
    """No title or legend is clipped by the figure's edge or runs into another title."""
    fig, _ = FIGURES[name](run)
    renderer = drawn(fig)
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    boxes = titles + [legend.get_window_extent(renderer) for legend in fig.legends]
    for box in boxes:
        assert box.x0 >= fig.bbox.x0 - 0.5 and box.x1 <= fig.bbox.x1 + 0.5
        assert box.y0 >= fig.bbox.y0 - 0.5 and box.y1 <= fig.bbox.y1 + 0.5
    for i, a in enumerate(titles):
        assert not any(a.overlaps(b) for b in titles[i + 1:])


def lowest_marks(ax):
    return [line for line in ax.lines if line.get_marker() == "v" and to_hex(line.get_color()) == figures.LOWEST]


def test_lowest_bar_at_zero_carries_a_visible_mark():
    """A 0.0 bar has no height for a red edge to show on: a red triangle sits above it, clear of the axis."""
    def cell(loss):
        return report.Cell(loss=loss, loss_std=0.0, clean_acc=90.0, adv_acc=90.0 - loss, success_rate=0.0, linf=8.0,
                           l2=0.5, repeats=1, n=100)

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    figures.grouped_bars(ax, ["8/255", "16/255"], report.KINDS,
                         [{"ann": cell(0.0), "snn1": cell(5.0), "snn2": cell(9.0)},
                          {"ann": cell(30.0), "snn1": cell(20.0), "snn2": cell(25.0)}], mark_lowest=True)
    drawn(fig)
    marks = lowest_marks(ax)
    assert len(marks) == 2
    zero, other = sorted(marks, key=lambda line: line.get_ydata()[0])
    assert list(zero.get_ydata()) == [0.0] and list(other.get_ydata()) == [20.0]
    assert zero.get_xdata()[0] < 0 < other.get_xdata()[0]  # over the ANN bar of group 0, the SNN-I bar of group 1
    # red pixels above the zero line at that bar, not just a red edge drawn along the axis
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    x, y = ax.transData.transform((zero.get_xdata()[0], 0.0))
    row, col = pixels.shape[0] - int(round(y)), int(round(x))
    red = np.abs(pixels - np.array([0xd6, 0x27, 0x28])).sum(axis=-1) < 60
    assert red[row - 20:row - 4, col - 5:col + 6].sum() >= 10


def test_fig2_marks_each_lowest_bar(run):
    """One red triangle per lowest cell of Fig. 2, as the Fig. 2 table bolds them."""
    fig, _ = report.figure2(run)
    _, rows = report.fig2_table(run)
    bold = sum(v.startswith("**") for row in rows for v in row[3:])
    assert bold and sum(len(lowest_marks(ax)) for ax in fig.axes) == bold


def test_fig4_legends_keep_colour_and_line_style_apart(run):
    """Colour means the number of steps, line style the inputs' source: the style legend uses no step colour."""
    fig, _ = report.figure4(run)
    assert len(fig.legends) == 2
    steps, styles = (legend.legend_handles for legend in fig.legends)
    step_colours = {to_hex(c) for c in figures.FIG4_STEPS.values()}
    assert {to_hex(h.get_color()) for h in steps} == step_colours
    assert {h.get_linestyle() for h in steps} == {"-"}
    assert {to_hex(h.get_color()) for h in styles} == {figures.NEUTRAL} and figures.NEUTRAL not in step_colours
    assert len({h.get_linestyle() for h in styles}) == len(styles) == len(figures.FIG4_STYLE)
    assert all(legend.get_title().get_text() for legend in fig.legends)
    drawn_colours = {to_hex(line.get_color()) for ax in fig.axes for line in ax.lines}
    assert drawn_colours == step_colours


def abbreviations(fig):
    """Every abbreviation a figure prints: words with two capitals or more (SNN-I, BB1, SNNAdv), eps, pp."""
    words = re.findall(r"[A-Za-z0-9]+(?:-[A-Z0-9]+)*", " ".join(t.get_text() for t in fig.findobj(Text)))
    return {w for w in words if sum(c.isupper() for c in w) >= 2 or w in ("eps", "pp")}


def captions(text):
    """Figure number -> caption, as report.md prints them under the figures."""
    return {number: caption for caption, number in re.findall(r"^\*(Fig\. (\d): .*)\* \(\[SVG\]", text, re.M)}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_captions_explain_every_abbreviation(run, run_dir, written, name):
    md = (run_dir / "report" / "report.md").read_text()
    page = (run_dir / "report" / "report.html").read_text()
    caption = captions(md)[name[-1]]
    fig, _ = FIGURES[name](run)
    drawn(fig)
    found = abbreviations(fig)
    assert {"SNN-II", "eps", "pp"} <= found
    for term in found:
        assert f"{term} = " in caption, term
    assert f"<figcaption>{html.escape(caption)}</figcaption>" in page
    if name == "fig3":
        assert {"WB", "BB1", "BB2", "BB3"} <= found
        for short, scenario in zip(("WB", "BB1", "BB2", "BB3"), report.SCENARIOS):
            assert f"{short} = {report.load.SCENARIO_TITLE[scenario]}" in caption


def verdict_lines(md):
    return [line for line in md[md.index("## The paper's conclusions"):].splitlines() if line.startswith("- (")]


def test_synthetic_data_is_flagged_beside_the_verdicts(tmp_path, run_dir, written):
    """The same cells from the synthetic dataset: the same verdicts, each marked, under a caveat that the
    paper comparison does not apply; a CIFAR-10 run carries no such caveat."""
    fake = make_run(tmp_path / "smoke", dataset="synthetic", test_subset=None)
    report.write_report(fake)
    md, page = ((fake / "report" / name).read_text() for name in ("report.md", "report.html"))
    real = (run_dir / "report" / "report.md").read_text()
    conclusions = md[md.index("## The paper's conclusions"):]
    assert "comparison with the paper does not apply" in conclusions.split("\n- (")[0]
    assert "comparison with the paper does not apply" in page.split("<h2>The paper&#x27;s conclusions")[1][:1000]
    marked = [line for line in verdict_lines(md) if "**" in line]
    assert marked and all(line.endswith(report.render.SYNTHETIC_MARK) for line in marked)
    assert [line.removesuffix(report.render.SYNTHETIC_MARK) for line in verdict_lines(md)] == verdict_lines(real)
    for text in (real, (run_dir / "report" / "report.html").read_text()):
        assert "does not apply" not in text and report.render.SYNTHETIC_MARK not in text


def test_test_subset_printed_as_all_or_a_number(tmp_path, run_dir, written):
    def facts(path):
        md = (path / "report" / "report.md").read_text()
        return md[md.index("## Run"):md.index("## Table I")]

    assert "test subset: 100;" in facts(run_dir)
    for name, preset in (("none", {"test_subset": None}), ("absent", {})):
        path = make_run(tmp_path / name, **preset)
        if not preset:
            meta = json.loads((path / "run.json").read_text())
            del meta["preset"]["test_subset"]
            (path / "run.json").write_text(json.dumps(meta))
        report.write_report(path)
        assert "test subset: all;" in facts(path) and "None" not in facts(path)
