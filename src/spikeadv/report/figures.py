"""Figures 2-4 of the paper from a run's saved cells, as PNG and SVG (written atomically, no timestamps)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Patch
from matplotlib.transforms import Affine2D

from ..config.grid import KINDS, LABEL, SNNS
from ..records import atomic_write
from .analysis import flagged, shown
from .load import (
    FIG2_ATTACKS,
    FIG2_EPS,
    FIG3_EPS,
    FIG4_EPS,
    FIG4_STEPS,
    FIG4_STYLE,
    SCENARIO_SHORT,
    SCENARIO_TITLE,
    SCENARIOS,
    Cell,
    Run,
    fmt_eps,
    lowest,
)

COLOR = {"ann": "#1f5fbf", "snn1": "#a0a0a0", "snn2": "#202020"}  # paper Fig. 2: blue, grey, black bars
LOWEST = "#d62728"  # paper Fig. 2's red rectangles: the lowest loss of each group
NEUTRAL = "#707070"  # line-style legend handles, so that no colour means two things
LOSS_LABEL = "Accuracy loss (pp)"  # a loss is a difference of accuracies: percentage points
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "svg.hashsalt": "spikeadv",
    "svg.fonttype": "path",
}
# Every abbreviation the figures print, as their captions explain it (render.py).
GLOSSARY = {
    "ANN": "artificial (non-spiking) neural network",
    "SNN": "spiking neural network",
    "SNN-I": "SNN converted from the ANN (paper III-A)",
    "SNN-II": "SNN trained with spike-based backpropagation (paper III-B)",
    "FGSM": "fast gradient sign method",
    "R-FGSM": "FGSM after a random step of eps/2",
    "I-FGSM": "iterative FGSM (2, 5 or 7 steps)",
    "SNNAdv": "the paper's SNN attack, whose faithful form perturbs the rate-coded image",
    **{SCENARIO_SHORT[s]: SCENARIO_TITLE[s] for s in SCENARIOS},
    "eps": "the L-inf bound of the perturbation, in 1/255 of the pixel range",
    "pp": "percentage points (clean minus adversarial accuracy)",
}
_ATTACKS = ("FGSM", "R-FGSM", "I-FGSM", "SNNAdv", "eps", "pp")
TERMS = {  # the abbreviations each figure prints
    "fig2": ("ANN", "SNN", "SNN-I", "SNN-II", *_ATTACKS),
    "fig3": ("ANN", "SNN", "SNN-I", "SNN-II", *SCENARIO_SHORT.values(), *_ATTACKS),
    "fig4": ("ANN", "SNN", "SNN-II", "I-FGSM", "eps", "pp"),
}
FAITHFUL = Patch(fill=False, hatch="////", edgecolor="#d08000", label="faithful SNNAdv (not eps-bounded)")
# A red triangle just above a bar (clear of it by half its size, whatever the bar's height, 0 included).
LOWEST_MARK = MarkerStyle("v", transform=Affine2D().translate(0, 1.0))


def glossary(name: str) -> str:
    """The caption sentence explaining every abbreviation figure ``name`` prints."""
    return "Abbreviations: " + "; ".join(f"{t} = {GLOSSARY[t]}" for t in TERMS[name]) + "."


def styled(build: Callable[[Run], tuple[Figure, list[str]]]) -> Callable[[Run], tuple[Figure, list[str]]]:
    """Build a figure under the report's style (fonts are fixed when the artists are made)."""

    @functools.wraps(build)
    def wrapper(run: Run) -> tuple[Figure, list[str]]:
        with matplotlib.rc_context(STYLE):
            return build(run)

    return wrapper


def grouped_bars(ax: Axes, groups: Sequence[str], kinds: Sequence[str], cells: Sequence[Mapping[str, Cell | None]],
                 mark_lowest: bool, faithful: Sequence[Mapping[str, Cell | None]] = ()) -> list[tuple[str, str]]:
    """Bars of accuracy loss, one group per entry of ``groups``, one bar per kind (paper Fig. 2, Fig. 3).

    Missing cells get no bar but an "n/a" mark; with ``mark_lowest`` the lowest bar of each group gets
    a red edge and a red triangle above it (visible on a 0.0 bar too), as the paper's red rectangles.
    ``faithful`` cells (faithful SNNAdv, not eps-bounded) are drawn as hatched outlines over the bars.
    Returns the (group, kind) pairs that were missing."""
    width = 0.8 / len(kinds)
    missing = []
    for g, (group, row) in enumerate(zip(groups, cells)):
        marked = lowest({k: c.loss for k, c in row.items() if c is not None}) if mark_lowest else set()
        for i, kind in enumerate(kinds):
            x = g + (i - (len(kinds) - 1) / 2) * width
            cell = row.get(kind)
            extra = faithful[g].get(kind) if faithful else None
            if extra is not None:
                ax.bar(x, extra.loss, width, fill=False, hatch="////", edgecolor="#d08000", linewidth=0.8, zorder=3)
            if cell is None:
                if extra is None:
                    missing.append((group, kind))
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#808080")
                continue
            red = kind in marked
            ax.bar(x, cell.loss, width, color=COLOR[kind], edgecolor=LOWEST if red else "none",
                   linewidth=2.0 if red else 0, yerr=cell.loss_std if cell.repeats > 1 else None,
                   error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#606060"})
            if red:
                ax.plot([x], [max(cell.loss, 0.0)], marker=LOWEST_MARK, markersize=7, color=LOWEST,
                        linestyle="none", zorder=5, clip_on=False)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.axhline(0, color="black", linewidth=0.6)
    return missing


def _legend_handles(kinds: Sequence[str]) -> list[Artist]:
    return [Patch(color=COLOR[k], label=LABEL[k]) for k in kinds]


def _bar_grid(fig: Figure, rows: int, cols: int) -> list[list[Axes]]:
    """A grid of axes sharing one y-range, so that every panel reads on the same scale."""
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for row in axes:
        row[0].set_ylabel(LOSS_LABEL)
    return [list(row) for row in axes]


@styled
def figure2(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 2: accuracy loss of ANN / SNN-I / SNN-II, attacks x scenarios, eps 8-32/255."""
    fig = Figure(figsize=(15, 12.5), layout="constrained")
    axes = _bar_grid(fig, len(FIG2_ATTACKS), len(SCENARIOS))
    notes = []
    bad = flagged(run)
    for r, (attack, steps, title) in enumerate(FIG2_ATTACKS):
        for c, scenario in enumerate(SCENARIOS):
            ax = axes[r][c]
            both = [{k: shown(run, bad, k, scenario, attack, e, steps) for k in KINDS} for e in FIG2_EPS]
            missing = grouped_bars(ax, [fmt_eps(e) for e in FIG2_EPS], KINDS,
                                   [{k: v[0] for k, v in row.items()} for row in both], mark_lowest=True,
                                   faithful=[{k: v[1] for k, v in row.items()} for row in both])
            ax.set_title(f"({'abcd'[r]}) {title}\n{SCENARIO_TITLE[scenario]}")
            if missing:
                notes.append(f"Fig. 2 {title}, {SCENARIO_TITLE[scenario]}: no result for "
                             + ", ".join(f"{LABEL[k]} at {g}" for g, k in missing))
    lowest_handle = Line2D([], [], marker="v", markersize=7, color=LOWEST, linestyle="none",
                           label="lowest loss of the group (red edge)")
    fig.legend(handles=[*_legend_handles(KINDS), FAITHFUL, lowest_handle], loc="outside upper center", ncols=5)
    return fig, notes


@styled
def figure3(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 3: SNN-I vs SNN-II loss at eps 16/255 under WB, BB1, BB2, BB3, per attack."""
    fig = Figure(figsize=(14, 4), layout="constrained")
    axes = _bar_grid(fig, 1, len(FIG2_ATTACKS))[0]
    notes, bad = [], flagged(run)
    for i, (attack, steps, title) in enumerate(FIG2_ATTACKS):
        both = [{k: shown(run, bad, k, s, attack, FIG3_EPS, steps) for k in SNNS} for s in SCENARIOS]
        missing = grouped_bars(axes[i], [SCENARIO_SHORT[s] for s in SCENARIOS], SNNS,
                               [{k: v[0] for k, v in row.items()} for row in both], mark_lowest=False,
                               faithful=[{k: v[1] for k, v in row.items()} for row in both])
        axes[i].set_title(f"({'abcd'[i]}) {title}, eps {fmt_eps(FIG3_EPS)}")
        if missing:
            notes.append(f"Fig. 3 {title}: no result for " + ", ".join(f"{LABEL[k]} under {g}" for g, k in missing))
    fig.supxlabel("; ".join(f"{SCENARIO_SHORT[s]} = {GLOSSARY[SCENARIO_SHORT[s]]}" for s in SCENARIOS),
                  fontsize=8)
    fig.legend(handles=[*_legend_handles(SNNS), FAITHFUL], loc="outside upper center", ncols=3)
    return fig, notes


@styled
def figure4(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 4: SNN-II loss vs eps for I-FGSM with 2, 5, 7 steps; (a) non-targeted, (b) targeted.
    Colour = number of steps, line style = where the inputs come from (its legend in neutral grey)."""
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False, sharey=True)[0]
    notes, bad = [], flagged(run)
    for ax, (attack, title) in zip(axes, (("ifgsm", "(a) Non-targeted I-FGSM"), ("tifgsm", "(b) Targeted I-FGSM"))):
        for steps, color in FIG4_STEPS.items():
            for scenario, style in FIG4_STYLE.items():
                cells = [shown(run, bad, "snn2", scenario, attack, e, steps)[0] for e in FIG4_EPS]
                losses = [None if c is None else c.loss for c in cells]
                absent = [fmt_eps(e) for e, v in zip(FIG4_EPS, losses) if v is None]
                if len(absent) == len(FIG4_EPS):
                    notes.append(f"Fig. 4 {title}: no {steps}-step {SCENARIO_TITLE[scenario]} results")
                    continue
                if absent:
                    notes.append(f"Fig. 4 {title}: {steps}-step {SCENARIO_TITLE[scenario]} lacks {', '.join(absent)}")
                ys = [math.nan if v is None else v for v in losses]
                ax.plot(FIG4_EPS, ys, linestyle=style, color=color, marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("eps (1/255)")
        ax.set_xticks(FIG4_EPS)
    axes[0].set_ylabel(f"SNN-II {LOSS_LABEL.lower()}")
    steps_legend = [Line2D([], [], color=c, linewidth=2.5, label=f"{s} steps") for s, c in FIG4_STEPS.items()]
    style_legend = [Line2D([], [], color=NEUTRAL, linestyle=style, label=SCENARIO_TITLE[s])
                    for s, style in FIG4_STYLE.items()]
    fig.legend(handles=steps_legend, title="Colour: I-FGSM steps", loc="outside upper left", ncols=3)
    fig.legend(handles=style_legend, title="Line style: inputs crafted by", loc="outside upper right", ncols=3)
    return fig, notes


def publish(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically (checkpoint.atomic_write), readable by all like any report file."""

    def write_readable(tmp: Path) -> None:
        write(tmp)
        tmp.chmod(0o644)

    atomic_write(path, write_readable)
    return path


def save_figure(fig: Figure, path: Path) -> list[Path]:
    """Write ``path`` as PNG and as SVG beside it, each atomically, without timestamps."""
    FigureCanvasAgg(fig)
    png, svg = path.with_suffix(".png"), path.with_suffix(".svg")
    with matplotlib.rc_context(STYLE):
        publish(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}))
        publish(svg, lambda tmp: fig.savefig(tmp, format="svg", metadata={"Date": None}))
    return [png, svg]

