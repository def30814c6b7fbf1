"""The report: Table I, Fig. 2-4, checks and the paper's conclusions, from a run directory alone.

Reads ``run.json`` and ``results.jsonl`` (DESIGN section 2, "Metrics" and "Report") and writes
Markdown/CSV tables, PNG/SVG figures and a self-contained HTML page. Nothing here runs a model: every
number comes from the saved tidy table, so a report can be regenerated at any time.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .attacks import ITERATIVE
from .checkpoint import atomic_write
from .errors import SpikeAdvError

KINDS = ("ann", "snn1", "snn2")
SNNS = ("snn1", "snn2")
LABEL = {"ann": "ANN", "snn1": "SNN-I", "snn2": "SNN-II"}
COLOR = {"ann": "#1f5fbf", "snn1": "#a0a0a0", "snn2": "#202020"}  # paper Fig. 2: blue, grey, black bars
SCENARIOS = ("whitebox", "bb-snn1", "bb-snn2", "bb-ann")
SCENARIO_TITLE = {
    "whitebox": "Whitebox",
    "bb-snn1": "SNN-I-crafted blackbox",
    "bb-snn2": "SNN-II-crafted blackbox",
    "bb-ann": "ANN-crafted blackbox",
}
SCENARIO_SHORT = {"whitebox": "WB", "bb-snn1": "BB1", "bb-snn2": "BB2", "bb-ann": "BB3"}  # paper Fig. 3
# Rows of Fig. 2 and panels of Fig. 3: (attack, steps, title).
FIG2_ATTACKS = (
    ("fgsm", 1, "FGSM"),
    ("rfgsm", 1, "R-FGSM"),
    ("ifgsm", 2, "I-FGSM (2-step)"),
    ("tifgsm", 2, "Targeted I-FGSM (2-step)"),
)
ATTACK_ORDER = ("fgsm", "rfgsm", "ifgsm", "tifgsm", "pgd")
FIG2_EPS = (8, 16, 32)
FIG3_EPS = 16
FIG4_EPS = (8, 16, 32, 64)
FIG4_STEPS = {2: "#000000", 5: "#1f5fbf", 7: "#d62728"}  # paper Fig. 4: black, blue, red
FIG4_STYLE = {"whitebox": "-", "bb-snn2": "--", "bb-ann": ":"}
PAPER_CLEAN = {"ann": 89.5, "snn1": 85.6, "snn2": 87.1}  # paper Table I
PAPER_FGSM_WB8 = {"ann": 27.8, "snn1": 43.5, "snn2": 35.5}  # paper V-A, FGSM whitebox at 8/255
COLUMNS = (
    "target", "source_kind", "source_instance", "scenario", "gradient", "attack", "eps", "steps",
    "repeat", "n", "clean_acc", "adv_acc", "loss", "success_rate", "target_hit_rate", "linf", "l2",
)
NUMERIC = ("eps", "steps", "repeat", "n", "clean_acc", "adv_acc", "loss", "success_rate", "linf", "l2")
LINF_SLACK = 0.5  # audit: flag a mean true L-inf above eps + this (1/255 units)
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

Key = tuple[str, str, str, str, int, int]  # target, scenario, gradient, attack, eps, steps


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Cell:
    """One (target, scenario, gradient, attack, eps, steps) cell, averaged over its repeats."""

    loss: float
    loss_std: float
    clean_acc: float
    adv_acc: float
    success_rate: float
    linf: float
    l2: float
    repeats: int
    n: int


@dataclass(frozen=True)
class Run:
    """A run directory's saved results: the metadata of ``run.json`` and the rows of ``results.jsonl``."""

    path: Path
    meta: dict
    rows: list[dict]
    cells: dict[Key, Cell]

    def main_gradient(self, target: str, scenario: str) -> str:
        """The paper's gradient source for the model that crafted this scenario's inputs."""
        return self.meta["gradients"][source_kind(target, scenario)]

    def cell(self, target: str, scenario: str, attack: str, eps: int, steps: int,
             gradient: str | None = None) -> Cell | None:
        """A cell under ``gradient`` (default: the main one), or None when the run lacks it."""
        gradient = gradient or self.main_gradient(target, scenario)
        return self.cells.get((target, scenario, gradient, attack, eps, steps))

    def loss(self, target: str, scenario: str, attack: str, eps: int, steps: int) -> float | None:
        cell = self.cell(target, scenario, attack, eps, steps)
        return None if cell is None else cell.loss

    def main_cells(self) -> dict[Key, Cell]:
        """The cells crafted with the main gradient of their source kind."""
        return {k: c for k, c in self.cells.items() if k[2] == self.main_gradient(k[0], k[1])}


def source_kind(target: str, scenario: str) -> str:
    """Paper Table III: whitebox inputs come from the target itself, ``bb-K`` inputs from kind K."""
    return target if scenario == "whitebox" else scenario[len("bb-"):]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SpikeAdvError(f"{path} does not exist; is this a spikeadv run directory?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpikeAdvError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SpikeAdvError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _check_meta(path: Path, meta: dict) -> None:
    missing = [k for k in ("preset", "models", "gradients") if k not in meta]
    if missing:
        raise SpikeAdvError(f"{path} lacks {', '.join(missing)}")
    gradients = meta["gradients"]
    if not isinstance(gradients, dict) or any(not isinstance(gradients.get(k), str) for k in KINDS):
        raise SpikeAdvError(f"{path}: 'gradients' must name a gradient source for each of {', '.join(KINDS)}")
    stages = meta.get("stages", {})
    if not isinstance(stages, dict) or not all(isinstance(v, (int, float)) for v in stages.values()):
        raise SpikeAdvError(f"{path}: 'stages' must map stage names to seconds")
    if not isinstance(meta["preset"], dict):
        raise SpikeAdvError(f"{path}: 'preset' must be a JSON object")
    if not isinstance(meta["models"], list) or not all(isinstance(m, dict) and "kind" in m for m in meta["models"]):
        raise SpikeAdvError(f"{path}: 'models' must be a list of objects with a 'kind'")


def _check_row(path: Path, line: int, row: object) -> dict:
    where = f"{path} line {line}"
    if not isinstance(row, dict):
        raise SpikeAdvError(f"{where} is not a JSON object")
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise SpikeAdvError(f"{where} lacks {', '.join(missing)}")
    if row["target"] not in KINDS or row["source_kind"] not in KINDS:
        raise SpikeAdvError(f"{where}: target/source_kind must be one of {', '.join(KINDS)}")
    if row["scenario"] not in SCENARIOS:
        raise SpikeAdvError(f"{where}: unknown scenario {row['scenario']!r} (one of {', '.join(SCENARIOS)})")
    bad = [c for c in NUMERIC if isinstance(row[c], bool) or not isinstance(row[c], (int, float))]
    if bad:
        raise SpikeAdvError(f"{where}: {', '.join(bad)} must be numbers")
    return row


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise SpikeAdvError(f"{path} does not exist; run the study (spikeadv run) before the report")
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SpikeAdvError(f"{path} cannot be read ({e})") from None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpikeAdvError(f"{path} line {number} is not valid JSON ({e.msg}); is the file truncated?") from None
        rows.append(_check_row(path, number, row))
    if not rows:
        raise SpikeAdvError(f"{path} holds no results")
    return rows


def aggregate(rows: Iterable[Mapping]) -> dict[Key, Cell]:
    """Average the repeats of each cell (DESIGN "Metrics": mean and sample std over R repeats)."""
    groups: dict[Key, list[Mapping]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["scenario"], r["gradient"], r["attack"], int(r["eps"]), int(r["steps"]))].append(r)

    def mean(rs: list[Mapping], key: str) -> float:
        return statistics.fmean(float(r[key]) for r in rs)

    return {
        key: Cell(
            loss=mean(rs, "loss"),
            loss_std=statistics.stdev(float(r["loss"]) for r in rs) if len(rs) > 1 else 0.0,
            clean_acc=mean(rs, "clean_acc"),
            adv_acc=mean(rs, "adv_acc"),
            success_rate=mean(rs, "success_rate"),
            linf=mean(rs, "linf"),
            l2=mean(rs, "l2"),
            repeats=len(rs),
            n=int(min(r["n"] for r in rs)),
        )
        for key, rs in sorted(groups.items())
    }


def load_run(run_dir: Path) -> Run:
    """Read and validate a run directory; any problem is a SpikeAdvError naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpikeAdvError(f"run directory {run_dir} does not exist")
    meta_path = run_dir / "run.json"
    meta = _read_json(meta_path)
    _check_meta(meta_path, meta)
    rows = _read_rows(run_dir / "results.jsonl")
    return Run(path=run_dir, meta=meta, rows=rows, cells=aggregate(rows))


# ---------------------------------------------------------------- checks and conclusions


@dataclass(frozen=True)
class Check:
    """One sanity check: ``passed`` is None when the run lacks the cells it needs."""

    name: str
    passed: bool | None
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]


@dataclass(frozen=True)
class Conclusion:
    """One of the paper's conclusions and how this run bears on it (``wins`` of ``total`` comparisons)."""

    key: str
    claim: str
    verdict: str  # "supported" | "not supported" | "mixed" | "no data"
    wins: int
    total: int
    evidence: str


def lowest(values: Mapping[str, float | None]) -> set[str]:
    """The keys holding the smallest loss (ties all marked; missing values ignored): paper Fig. 2's red boxes."""
    present = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
    if not present:
        return set()
    best = min(present.values())
    return {k for k, v in present.items() if v <= best + 1e-9}


def _attack_name(attack: str, steps: int) -> str:
    return f"{attack}-{steps}" if attack in ITERATIVE else attack


def _attack_key(attack_steps: tuple[str, int]) -> tuple[int, str, int]:
    attack, steps = attack_steps
    return (ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER), attack, steps)


def _ann_series(run: Run, scenario: str) -> dict[tuple[str, int], dict[int, Cell]]:
    """ANN-target cells under the main gradient: (attack, steps) -> {eps: cell}, in the paper's attack order."""
    series: dict[tuple[str, int], dict[int, Cell]] = defaultdict(dict)
    for (target, scen, _, attack, eps, steps), cell in run.main_cells().items():
        if target == "ann" and scen == scenario:
            series[(attack, steps)][eps] = cell
    return {k: series[k] for k in sorted(series, key=_attack_key)}


def sampling_slack(a: Cell, b: Cell) -> float:
    """Two standard errors (pp) of the difference of two cells' adversarial accuracies, each a binomial
    proportion over its n images: 2 * 100 * sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b). Both cells
    attack the same images, which makes their difference vary less than this independence bound."""
    pa, pb = a.adv_acc / 100, b.adv_acc / 100
    return 200 * math.sqrt(pa * (1 - pa) / a.n + pb * (1 - pb) / b.n)


def _ordered(pairs: list[tuple[str, Cell, Cell]]) -> tuple[bool | None, str]:
    """Check ``weaker.loss <= stronger.loss`` for each (label, weaker, stronger): a dip of the
    stronger below the weaker passes when it is within :func:`sampling_slack`, and is reported."""
    if not pairs:
        return None, ""
    dips = [(label, w.loss - s.loss, sampling_slack(w, s)) for label, w, s in pairs if s.loss < w.loss - 1e-9]
    if not dips:
        return True, ""
    passed = all(dip <= slack for _, dip, slack in dips)
    return passed, " — " + "; ".join(
        f"{label}: {dip:.1f} pp the other way, {'within' if dip <= slack else 'beyond'} 2 standard errors "
        f"of sampling ({slack:.1f} pp)" for label, dip, slack in dips)


def sanity_checks(run: Run) -> list[Check]:
    """Properties any correct study has, on the deterministic ANN target (main gradient). An
    ordering holds when no cell breaks it by more than the sampling error of the images attacked."""
    wb = _ann_series(run, "whitebox")
    bb = _ann_series(run, "bb-ann")
    checks = []

    fgsm, ifgsm = wb.get(("fgsm", 1), {}), wb.get(("ifgsm", 2), {})
    common = sorted(set(fgsm) & set(ifgsm))
    passed, why = _ordered([(f"{e}/255", fgsm[e], ifgsm[e]) for e in common])
    checks.append(Check(
        "I-FGSM (2-step) at least as strong as FGSM, ANN whitebox, every eps", passed,
        ("; ".join(f"{e}/255: I-FGSM {ifgsm[e].loss:.1f} vs FGSM {fgsm[e].loss:.1f}" for e in common)
         or "no common eps") + why,
    ))
    for (attack, steps), cells in wb.items():
        eps = sorted(cells)
        passed, why = _ordered([(f"{b}/255", cells[a], cells[b]) for a, b in zip(eps, eps[1:])])
        checks.append(Check(
            f"ANN whitebox loss grows with eps ({_attack_name(attack, steps)})", passed,
            ", ".join(f"{e}/255: {cells[e].loss:.1f}" for e in eps) + why,
        ))
    for (attack, steps), cells in wb.items():
        other = bb.get((attack, steps), {})
        common = sorted(set(cells) & set(other))
        passed, why = _ordered([(f"{e}/255", other[e], cells[e]) for e in common])
        checks.append(Check(
            f"ANN whitebox loss >= ANN-crafted blackbox loss ({_attack_name(attack, steps)})", passed,
            ("; ".join(f"{e}/255: WB {cells[e].loss:.1f} vs BB {other[e].loss:.1f}" for e in common)
             or "no blackbox cells") + why,
        ))
    return checks


def _verdict(wins: int, total: int) -> str:
    """Supported when at least 2/3 of the comparisons agree with the claim, not supported at most 1/3."""
    if total == 0:
        return "no data"
    share = wins / total
    return "supported" if share >= 2 / 3 else "not supported" if share <= 1 / 3 else "mixed"


def _compare(pairs: list[tuple[float, float]]) -> tuple[int, int, float, float]:
    """Count pairs (claimed smaller, claimed larger) that agree; also the two means."""
    wins = sum(a < b for a, b in pairs)
    if not pairs:
        return 0, 0, math.nan, math.nan
    return wins, len(pairs), statistics.fmean(a for a, _ in pairs), statistics.fmean(b for _, b in pairs)


def _conclusion(key: str, claim: str, pairs: list[tuple[float, float]], what: str, low: str, high: str) -> Conclusion:
    wins, total, mean_low, mean_high = _compare(pairs)
    evidence = (f"{wins} of {total} {what}; mean loss {low} {mean_low:.1f} vs {high} {mean_high:.1f} pp"
                if total else f"no {what} in this run")
    return Conclusion(key, claim, _verdict(wins, total), wins, total, evidence)


def _pairs(run: Run, low: tuple[str, str], high: tuple[str, str]) -> list[tuple[float, float]]:
    """Main-gradient losses at two (target, scenario) places, for every (attack, eps, steps) both have."""
    combos = sorted({(k[3], k[4], k[5]) for k in run.main_cells()})
    out = []
    for attack, eps, steps in combos:
        a, b = run.loss(*low, attack, eps, steps), run.loss(*high, attack, eps, steps)
        if a is not None and b is not None:
            out.append((a, b))
    return out


def conclusions(run: Run) -> list[Conclusion]:
    """The paper's conclusions (V-A, V-B, VI) tested on every main-gradient cell of this run."""
    blackbox = SCENARIOS[1:]
    return [
        _conclusion("a", "SNNs are more robust than the ANN under blackbox attacks (paper V-A)",
                    [p for s in SNNS for scen in blackbox for p in _pairs(run, (s, scen), ("ann", scen))],
                    "blackbox comparisons where the SNN loses less than the ANN", "SNN", "ANN"),
        _conclusion("b", "Under whitebox attacks, SNNs lose more accuracy than the ANN (paper V-A)",
                    [p for s in SNNS for p in _pairs(run, ("ann", "whitebox"), (s, "whitebox"))],
                    "whitebox comparisons where the SNN loses more than the ANN", "ANN", "SNN"),
        _conclusion("c", "SNN-II (spike-based training) is more robust than SNN-I (conversion) (paper V-B)",
                    [p for scen in SCENARIOS for p in _pairs(run, ("snn2", scen), ("snn1", scen))],
                    "cells where SNN-II loses less than SNN-I", "SNN-II", "SNN-I"),
        _conclusion("d", "SNN-crafted attacks are stronger than ANN-crafted ones (paper V-A, V-C)",
                    [p for t in KINDS for scen in ("bb-snn1", "bb-snn2")
                     for p in _pairs(run, (t, "bb-ann"), (t, scen))],
                    "target cells where SNN-crafted inputs cost more than ANN-crafted ones",
                    "ANN-crafted", "SNN-crafted"),
    ]


# ---------------------------------------------------------------- figures


def _fmt_eps(eps: int) -> str:
    return f"{eps}/255"


def grouped_bars(ax, groups: Sequence[str], kinds: Sequence[str], cells: Sequence[Mapping[str, Cell | None]],
                 mark_lowest: bool) -> list[tuple[str, str]]:
    """Bars of accuracy loss, one group per entry of ``groups``, one bar per kind (paper Fig. 2, Fig. 3).

    Missing cells get no bar but an "n/a" mark; with ``mark_lowest`` the lowest bar of each group gets
    a red edge, as the paper's red rectangles. Returns the (group, kind) pairs that were missing."""
    width = 0.8 / len(kinds)
    missing = []
    for g, (group, row) in enumerate(zip(groups, cells)):
        marked = lowest({k: c.loss for k, c in row.items() if c is not None}) if mark_lowest else set()
        for i, kind in enumerate(kinds):
            x = g + (i - (len(kinds) - 1) / 2) * width
            cell = row.get(kind)
            if cell is None:
                missing.append((group, kind))
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="#808080")
                continue
            red = kind in marked
            ax.bar(x, cell.loss, width, color=COLOR[kind], edgecolor="#d62728" if red else "none",
                   linewidth=2.0 if red else 0, yerr=cell.loss_std if cell.repeats > 1 else None,
                   error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#606060"})
    ax.set_xticks(range(len(groups)), list(groups))
    ax.axhline(0, color="black", linewidth=0.6)
    return missing


def _legend_handles(kinds: Sequence[str]) -> list[Patch]:
    return [Patch(color=COLOR[k], label=LABEL[k]) for k in kinds]


def figure2(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 2: accuracy loss of ANN / SNN-I / SNN-II, attacks x scenarios, eps 8-32/255."""
    fig = Figure(figsize=(15, 12), layout="constrained")
    axes = fig.subplots(len(FIG2_ATTACKS), len(SCENARIOS), squeeze=False)
    notes = []
    for r, (attack, steps, title) in enumerate(FIG2_ATTACKS):
        for c, scenario in enumerate(SCENARIOS):
            ax = axes[r][c]
            cells = [{k: run.cell(k, scenario, attack, e, steps) for k in KINDS} for e in FIG2_EPS]
            missing = grouped_bars(ax, [_fmt_eps(e) for e in FIG2_EPS], KINDS, cells, mark_lowest=True)
            ax.set_title(f"({'abcd'[r]}) {title} — {SCENARIO_TITLE[scenario]}")
            if c == 0:
                ax.set_ylabel("Accuracy loss (%)")
            if missing:
                notes.append(f"Fig. 2 {title}, {SCENARIO_TITLE[scenario]}: no result for "
                             + ", ".join(f"{LABEL[k]} at {g}" for g, k in missing))
    fig.legend(handles=_legend_handles(KINDS), loc="outside upper center", ncols=3)
    return fig, notes


def figure3(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 3: SNN-I vs SNN-II loss at eps 16/255 under WB, BB1, BB2, BB3, per attack."""
    fig = Figure(figsize=(14, 3.6), layout="constrained")
    axes = fig.subplots(1, len(FIG2_ATTACKS), squeeze=False)[0]
    notes = []
    for i, (attack, steps, title) in enumerate(FIG2_ATTACKS):
        cells = [{k: run.cell(k, s, attack, FIG3_EPS, steps) for k in SNNS} for s in SCENARIOS]
        missing = grouped_bars(axes[i], [SCENARIO_SHORT[s] for s in SCENARIOS], SNNS, cells, mark_lowest=False)
        axes[i].set_title(f"({'abcd'[i]}) {title}, eps {_fmt_eps(FIG3_EPS)}")
        if missing:
            notes.append(f"Fig. 3 {title}: no result for " + ", ".join(f"{LABEL[k]} under {g}" for g, k in missing))
    axes[0].set_ylabel("Accuracy loss (%)")
    fig.legend(handles=_legend_handles(SNNS), loc="outside upper center", ncols=2)
    return fig, notes


def figure4(run: Run) -> tuple[Figure, list[str]]:
    """Paper Fig. 4: SNN-II loss vs eps for I-FGSM with 2, 5, 7 steps; (a) non-targeted, (b) targeted."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    notes = []
    for ax, (attack, title) in zip(axes, (("ifgsm", "(a) Non-targeted I-FGSM"), ("tifgsm", "(b) Targeted I-FGSM"))):
        for steps, color in FIG4_STEPS.items():
            for scenario, style in FIG4_STYLE.items():
                losses = [run.loss("snn2", scenario, attack, e, steps) for e in FIG4_EPS]
                absent = [_fmt_eps(e) for e, v in zip(FIG4_EPS, losses) if v is None]
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
        ax.set_ylabel("SNN-II accuracy loss (%)")
    steps_legend = [Line2D([], [], color=c, label=f"{s}-step") for s, c in FIG4_STEPS.items()]
    style_legend = [Line2D([], [], color="black", linestyle=style, label=SCENARIO_TITLE[s])
                    for s, style in FIG4_STYLE.items()]
    fig.legend(handles=steps_legend + style_legend, loc="outside upper center", ncols=6)
    return fig, notes


def _publish(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically (checkpoint.atomic_write), readable by all like any report file."""

    def write_readable(tmp: Path) -> None:
        write(tmp)
        tmp.chmod(0o644)

    atomic_write(path, write_readable)
    return path


def _save_figure(fig: Figure, path: Path) -> list[Path]:
    """Write ``path`` as PNG and as SVG beside it, each atomically, without timestamps."""
    FigureCanvasAgg(fig)
    png, svg = path.with_suffix(".png"), path.with_suffix(".svg")
    with matplotlib.rc_context(STYLE):
        _publish(png, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}))
        _publish(svg, lambda tmp: fig.savefig(tmp, format="svg", metadata={"Date": None}))
    return [png, svg]


# ---------------------------------------------------------------- tables


def _num(value: object, digits: int) -> str:
    """A number with ``digits`` decimals, or a dash where the run recorded none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _pm(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    return f"{cell.loss:.1f} ± {cell.loss_std:.1f}" if cell.repeats > 1 else f"{cell.loss:.1f}"


def table1(run: Run) -> tuple[list[str], list[list[str]]]:
    """Paper Table I: clean accuracy per kind and instance, the paper's value beside."""
    headers = ["Model", "Instance", "Clean accuracy (%)", "Std", "Repeats", "T", "Paper (%)"]
    models = sorted(run.meta["models"], key=lambda m: (KINDS.index(m["kind"]) if m["kind"] in KINDS else 9,
                                                       m.get("instance", 0)))
    rows = [
        [LABEL.get(m["kind"], m["kind"]), str(m.get("instance", "—")), _num(m.get("clean_acc"), 2),
         _num(m.get("clean_std"), 2), str(m.get("repeats", "—")), "—" if m.get("T") is None else str(m["T"]),
         _num(PAPER_CLEAN.get(m["kind"]), 1)]
        for m in models
    ]
    return headers, rows


def fig2_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """The numbers behind Fig. 2 (loss in pp, mean ± std over repeats); the lowest of each row in bold."""
    headers = ["Attack", "Scenario", "eps", *(LABEL[k] for k in KINDS)]
    rows = []
    for attack, steps, title in FIG2_ATTACKS:
        for scenario in SCENARIOS:
            for eps in FIG2_EPS:
                cells = {k: run.cell(k, scenario, attack, eps, steps) for k in KINDS}
                marked = lowest({k: c.loss for k, c in cells.items() if c is not None})
                rows.append([title, SCENARIO_TITLE[scenario], _fmt_eps(eps),
                             *(f"**{_pm(cells[k])}**" if k in marked else _pm(cells[k]) for k in KINDS)])
    return headers, rows


def paper_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """Paper V-A: FGSM whitebox loss at 8/255, the paper's and ours."""
    headers = ["Model", "Paper loss (pp)", "This run (pp)", "Difference"]
    rows = []
    for k in KINDS:
        cell = run.cell(k, "whitebox", "fgsm", 8, 1)
        diff = "—" if cell is None else f"{cell.loss - PAPER_FGSM_WB8[k]:+.1f}"
        rows.append([LABEL[k], f"{PAPER_FGSM_WB8[k]:.1f}", _pm(cell), diff])
    return headers, rows


def gradient_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """Every non-main gradient source present, beside the main one on the same cell."""
    headers = ["Target", "Scenario", "Attack", "eps", "Gradient", "Loss (pp)", "Main gradient", "Main loss (pp)",
               "Difference"]
    rows = []
    for (target, scenario, gradient, attack, eps, steps), cell in run.cells.items():
        main = run.main_gradient(target, scenario)
        if gradient == main:
            continue
        ref = run.cell(target, scenario, attack, eps, steps)
        rows.append([LABEL[target], SCENARIO_TITLE[scenario], _attack_name(attack, steps), _fmt_eps(eps), gradient,
                     _pm(cell), main, _pm(ref), "—" if ref is None else f"{cell.loss - ref.loss:+.1f}"])
    return headers, rows


@dataclass(frozen=True)
class AuditRow:
    """Mean true perturbation of one (source kind, gradient, eps) over all its attacks and targets."""

    source_kind: str
    gradient: str
    eps: int
    linf: float
    linf_max: float
    l2: float
    rows: int

    @property
    def flagged(self) -> bool:
        return self.linf > self.eps + LINF_SLACK


def perturbation_audit(run: Run) -> list[AuditRow]:
    """DESIGN "Gradient sources": the true L-inf of x_adv - x next to eps, per source gradient."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in run.rows:
        groups[(r["source_kind"], r["gradient"], int(r["eps"]))].append(r)
    return [
        AuditRow(kind, gradient, eps, statistics.fmean(r["linf"] for r in rs), max(r["linf"] for r in rs),
                 statistics.fmean(r["l2"] for r in rs), len(rs))
        for (kind, gradient, eps), rs in sorted(groups.items(), key=lambda g: (KINDS.index(g[0][0]), g[0][1:]))
    ]


def audit_table(audit: list[AuditRow]) -> tuple[list[str], list[list[str]]]:
    headers = ["Source", "Gradient", "eps", "Mean L-inf (1/255)", "Max L-inf", "Mean L2", "Rows", "Flag"]
    rows = [[LABEL[a.source_kind], a.gradient, _fmt_eps(a.eps), f"{a.linf:.2f}", f"{a.linf_max:.2f}", f"{a.l2:.3f}",
             str(a.rows), f"**L-inf > eps + {LINF_SLACK}**" if a.flagged else "ok"] for a in audit]
    return headers, rows


def _csv(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()


# ---------------------------------------------------------------- rendering

# A report is a list of blocks, each rendered once as Markdown and once as HTML:
# ("h", level, text) | ("p", text) | ("items", [text]) | ("table", (headers, rows)) | ("figure", name, caption)
Block = tuple


def _inline(text: str) -> str:
    """HTML for the little Markdown the report uses: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


class _Markdown:
    """Blocks as Markdown; figures point at the PNG/SVG files beside the report."""

    def h(self, level: int, text: str) -> str:
        return f"{'#' * level} {text}"

    def p(self, text: str) -> str:
        return text

    def items(self, items: list[str]) -> str:
        return "\n".join(f"- {item}" for item in items)

    def table(self, table: tuple[list[str], list[list[str]]]) -> str:
        headers, rows = table
        if not rows:
            return "(none)"
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

    def figure(self, name: str, caption: str) -> str:
        return f"![{caption}]({name}.png)\n\n*{caption}* ([SVG]({name}.svg))"


class _Html:
    """Blocks as HTML; figures embedded as base64 PNG so the page needs no other file."""

    def __init__(self, images: Mapping[str, bytes]):
        self.images = images

    def h(self, level: int, text: str) -> str:
        return f"<h{level}>{_inline(text)}</h{level}>"

    def p(self, text: str) -> str:
        return f"<p>{_inline(text)}</p>"

    def items(self, items: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"

    def table(self, table: tuple[list[str], list[list[str]]]) -> str:
        headers, rows = table
        if not rows:
            return "<p>(none)</p>"
        head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def figure(self, name: str, caption: str) -> str:
        data = base64.b64encode(self.images[name]).decode("ascii")
        return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(caption)}</figcaption></figure>")


def _render(blocks: list[Block], renderer: _Markdown | _Html) -> list[str]:
    return [getattr(renderer, kind)(*args) for kind, *args in blocks]


def _md(blocks: list[Block]) -> str:
    return "\n\n".join(_render(blocks, _Markdown())) + "\n"


def _html(blocks: list[Block], images: Mapping[str, bytes], title: str) -> str:
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(_render(blocks, _Html(images)))
            + "\n</body></html>\n")


def _facts(run: Run) -> list[str]:
    meta, preset = run.meta, run.meta["preset"]
    sizes = sorted({int(r["n"]) for r in run.rows})
    facts = [
        f"Preset: `{preset.get('name', '?')}`; dataset: `{preset.get('dataset', '?')}`; "
        f"test subset: {preset.get('test_subset', 'full test set')}; images per cell: "
        + (str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"),
        f"spikeadv version: {meta.get('version', '?')}",
        "Main gradient per source kind: " + ", ".join(f"{LABEL[k]} `{meta['gradients'][k]}`" for k in KINDS),
        f"Results: {len(run.rows)} rows in {len(run.cells)} cells",
    ]
    versions = meta.get("versions")
    if isinstance(versions, dict):
        facts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    stages = meta.get("stages") or {}
    if stages:
        total = sum(float(s) for s in stages.values())
        facts.append("Stage wall times: " + ", ".join(f"{k} {float(s):.1f} s" for k, s in stages.items())
                     + f" (total {total:.1f} s)")
    return facts


def _blocks(run: Run, notes: list[str]) -> list[Block]:
    checks, found, audit = sanity_checks(run), conclusions(run), perturbation_audit(run)
    flagged = [a for a in audit if a.flagged]
    return [
        ("h", 1, f"spikeadv report: {run.meta['preset'].get('name', run.path.name)}"),
        ("p", "Reproduction of Sharmin et al., \"A Comprehensive Analysis on Adversarial Robustness of Spiking "
              "Neural Networks\". Loss = clean accuracy - adversarial accuracy, in percentage points (pp)."),
        ("h", 2, "Run"),
        ("items", _facts(run)),
        ("h", 2, "Table I: clean accuracy"),
        ("table", table1(run)),
        ("h", 2, "Figures"),
        ("figure", "fig2", "Fig. 2: accuracy loss per attack (rows) and scenario (columns); red edge = lowest loss"),
        ("figure", "fig3", f"Fig. 3: SNN-I vs SNN-II loss at eps {_fmt_eps(FIG3_EPS)}"),
        ("figure", "fig4", "Fig. 4: SNN-II loss under I-FGSM; solid = whitebox, dashed = SNN-II-crafted, "
                           "dotted = ANN-crafted blackbox"),
        ("items", notes or ["Every figure cell has a result."]),
        ("h", 2, "Paper vs this run: FGSM whitebox loss at 8/255"),
        ("table", paper_table(run)),
        ("h", 2, "Fig. 2 numbers (loss, pp; lowest per row in bold)"),
        ("table", fig2_table(run)),
        ("h", 2, "Other gradient sources vs the main one"),
        ("table", gradient_table(run)),
        ("h", 2, "Perturbation audit"),
        ("p", "Mean true L-inf of x_adv - x (1/255 units) next to eps. SNNAdv in faithful mode perturbs the "
              "rate-coded image X_rate, so the rate noise adds to eps; rows with mean L-inf > eps + "
              f"{LINF_SLACK} are flagged ({len(flagged)} here)."),
        ("table", audit_table(audit)),
        ("h", 2, "Sanity checks"),
        ("p", "On the ANN target, main gradient. An ordering passes when no cell breaks it by more than two "
              "standard errors of sampling over the attacked images; any cell that goes the other way is named."),
        ("items", [f"**{c.verdict}** {c.name}: {c.detail}" for c in checks]),
        ("h", 2, "The paper's conclusions in this run"),
        ("p", "Verdict: supported when at least 2/3 of the comparisons agree, not supported at most 1/3, "
              "else mixed (main gradient cells only)."),
        ("items", [f"({c.key}) {c.claim}: **{c.verdict}** — {c.evidence}" for c in found]),
    ]


def _write_text(path: Path, text: str) -> Path:
    return _publish(path, lambda tmp: tmp.write_text(text))


def write_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Regenerate the whole report of a run directory (default into ``run_dir/report``); returns its files."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_text(out / "table1.md", _md([("table", table1(run))])),
        _write_text(out / "table1.csv", _csv(
            ["kind", "instance", "clean_acc", "clean_std", "repeats", "T", "paper_clean_acc"],
            ([m["kind"], m.get("instance"), m.get("clean_acc"), m.get("clean_std"), m.get("repeats"), m.get("T"),
              PAPER_CLEAN.get(m["kind"])] for m in run.meta["models"]))),
        _write_text(out / "results.csv", _csv(COLUMNS, ([r[c] for c in COLUMNS] for r in run.rows))),
    ]
    notes, images = [], {}
    for name, build in (("fig2", figure2), ("fig3", figure3), ("fig4", figure4)):
        with matplotlib.rc_context(STYLE):
            fig, fig_notes = build(run)
        paths = _save_figure(fig, out / name)
        images[name] = paths[0].read_bytes()
        notes += fig_notes
        written += paths
    blocks = _blocks(run, notes)
    written.append(_write_text(out / "report.md", _md(blocks)))
    written.append(_write_text(out / "report.html", _html(blocks, images, blocks[0][2])))
    return written
