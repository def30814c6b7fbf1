"""The report's figures and captions: shared scales, units, legible marks, explained abbreviations."""

import html
import json
import re

import numpy as np
import pytest
from fake_run import make_run
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.text import Text

from spikeadv import report
from spikeadv.report import figures

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
