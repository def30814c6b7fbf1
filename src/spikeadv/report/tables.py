"""The report's tables: Table I, the numbers behind Fig. 2, the paper's values beside ours, other
gradient sources, the perturbation audit and every paired comparison behind a verdict."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from ..config.grid import CONTROLS, KINDS, LABEL, MATCH_WITHIN, MATCHED, TARGETS
from .analysis import AuditRow, Conclusion, flagged, shown
from .load import (
    FIG2_ATTACKS,
    FIG2_EPS,
    LINF_SLACK,
    PAPER_CLEAN,
    PAPER_FGSM_WB8,
    SCENARIO_TITLE,
    SCENARIOS,
    Cell,
    Run,
    attack_name,
    fmt_eps,
    lowest,
)


def _num(value: object, digits: int) -> str:
    """A number with ``digits`` decimals, or a dash where the run recorded none."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _pm(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    return f"{cell.loss:.1f} ± {cell.loss_std:.1f}" if cell.repeats > 1 else f"{cell.loss:.1f}"


def table1(run: Run) -> tuple[list[str], list[list[str]]]:
    """Paper Table I: clean accuracy per kind and instance (a stochastic model's expected accuracy over its
    encoder draws, with the std of one draw's accuracy), the paper's value beside; every control with it,
    the accuracy-matched ANNs with their gap to the SNN they match on the validation split, SNN-I with
    the accuracy it lost against the ANN it was converted from (paper: 89.5 - 85.6 = 3.9 pp)."""
    headers = ["Model", "Instance", "Clean accuracy (%)", "Std", "Encoder draws", "T", "Validation (%)",
               "Matched to", "Conversion loss (pp)", "Paper (%)"]
    models = sorted(run.meta["models"], key=lambda m: (TARGETS.index(m["kind"]) if m["kind"] in TARGETS else 9,
                                                       m.get("instance", 0)))
    ann = {m.get("instance"): m.get("clean_acc") for m in models if m["kind"] == "ann"}
    rows = [
        [LABEL.get(m["kind"], m["kind"]), str(m.get("instance", "—")), _num(m.get("clean_acc"), 2),
         _num(m.get("clean_std"), 2), str(m.get("draws", m.get("repeats", "—"))), _steps(m),
         _num(m.get("val_acc"), 2), _matched(m),
         _num(ann[m.get("instance")] - m["clean_acc"] if m["kind"] == "snn1" and ann.get(m.get("instance")) is not None
              and m.get("clean_acc") is not None else None, 2),
         _num(PAPER_CLEAN.get(m["kind"]), 1)]
        for m in models
    ]
    return headers, rows


def _steps(model: dict) -> str:
    """A model's T, and its input where it is not the paper's Poisson rate coding."""
    if model.get("T") is None:
        return "—"
    return f"{model['T']} (direct input)" if model.get("encoding") == "direct" else str(model["T"])


def _matched(model: dict) -> str:
    """An accuracy-matched ANN's match: the SNN, the gap in validation accuracy and whether it is within
    the rule's tolerance."""
    m = model.get("matched")
    if not m:
        return "—"
    within = "" if m["matched"] else f", **not within {MATCH_WITHIN:g} pp**"
    return f"{LABEL[MATCHED[model['kind']]]} ({m['gap']:+.2f} pp, epoch {m['epoch']:g}{within})"


def controls_table(run: Run) -> tuple[list[str], list[list[str]]] | None:
    """Adversarial accuracy (%, the primary metric) of each SNN beside the ANN and the controls, per
    attack, scenario and eps of Fig. 2 (None for a run without controls)."""
    present = {t for t, *_ in run.cells}
    targets = [t for t in TARGETS if t in present]
    if not set(CONTROLS) & present:
        return None
    headers = ["Attack", "Scenario", "eps", *(LABEL[t] for t in targets)]
    rows, bad = [], flagged(run)
    for attack, steps, title in FIG2_ATTACKS:
        for scenario in SCENARIOS:
            for eps in FIG2_EPS:
                cells = [shown(run, bad, t, scenario, attack, eps, steps)[0] for t in targets]
                rows.append([title, SCENARIO_TITLE[scenario], fmt_eps(eps),
                             *("—" if c is None else f"{c.adv_acc:.1f}" for c in cells)])
    return headers, rows


def fig2_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """The numbers behind Fig. 2 (loss in pp, mean ± std over repeats; the lowest of each row in bold),
    from the cells verdicts use; where the paper's faithful SNNAdv is not eps-bounded, its row follows,
    marked."""
    headers = ["Attack", "Scenario", "eps", *(LABEL[k] for k in KINDS)]
    rows, bad = [], flagged(run)
    for attack, steps, title in FIG2_ATTACKS:
        for scenario in SCENARIOS:
            for eps in FIG2_EPS:
                both = {k: shown(run, bad, k, scenario, attack, eps, steps) for k in KINDS}
                marked = lowest({k: c.loss for k, (c, _) in both.items() if c is not None})
                rows.append([title, SCENARIO_TITLE[scenario], fmt_eps(eps),
                             *(f"**{_pm(both[k][0])}**" if k in marked else _pm(both[k][0]) for k in KINDS)])
                if any(f is not None for _, f in both.values()):
                    rows.append([title, f"{SCENARIO_TITLE[scenario]} (*faithful SNNAdv, not eps-bounded*)",
                                 fmt_eps(eps), *(_pm(both[k][1]) for k in KINDS)])
    return headers, rows


def paper_table(run: Run) -> tuple[list[str], list[list[str]]]:
    """Paper V-A: FGSM whitebox loss at 8/255, the paper's and ours."""
    headers = ["Model", "Paper loss (pp)", "This run (pp)", "Difference", "Faithful SNNAdv, not eps-bounded (pp)"]
    rows, bad = [], flagged(run)
    for k in KINDS:
        cell, faithful = shown(run, bad, k, "whitebox", "fgsm", 8, 1)
        diff = "—" if cell is None else f"{cell.loss - PAPER_FGSM_WB8[k]:+.1f}"
        rows.append([LABEL[k], f"{PAPER_FGSM_WB8[k]:.1f}", _pm(cell), diff, _pm(faithful)])
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
        rows.append([LABEL[target], SCENARIO_TITLE[scenario], attack_name(attack, steps), fmt_eps(eps), gradient,
                     _pm(cell), main, _pm(ref), "—" if ref is None else f"{cell.loss - ref.loss:+.1f}"])
    return headers, rows


def to_csv(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buf.getvalue()




def audit_table(audit: list[AuditRow]) -> tuple[list[str], list[list[str]]]:
    headers = ["Source", "Gradient", "eps", "Mean L-inf (1/255)", "Max L-inf", "Mean L2", "Unperturbed (%)",
               "Under 99% of eps (%)", "Rows", "Flag"]
    rows = [[LABEL[a.source_kind], a.gradient, fmt_eps(a.eps), f"{a.linf:.2f}", f"{a.linf_max:.2f}", f"{a.l2:.3f}",
             _num(None if a.unperturbed is None else 100 * a.unperturbed, 1),
             _num(None if a.under_budget is None else 100 * a.under_budget, 1),
             str(a.rows), f"**L-inf > eps + {LINF_SLACK}**" if a.flagged else "ok"] for a in audit]
    return headers, rows


COMPARISON_COLUMNS = ["Conclusion", "Comparison", "Gradient", "Adversarial error, claimed side (%)",
                      "Adversarial error, other side (%)", "Other - claimed, 95% interval", "Images",
                      "McNemar b / c / p", "p", "Holm-adjusted p", "Opposite signs (Gail-Simon) stat / p", "Verdict", "Cells"]
PER_CELL = "Per-cell effects (pp, in cell order)"  # comparisons.csv only


def comparison_rows(found: list[Conclusion], markdown: bool = True) -> list[list[str]]:
    """One row per judgement: its two sides' adversarial errors, the paired difference and interval, the
    tests (raw and Holm-adjusted p, heterogeneity), the verdict and the cells (compact in Markdown; every cell pair spelled out for CSV)."""
    rows = []
    for c in found:
        for j in c.judgements:
            p = j.stats
            cells = j.cells() if markdown else "; ".join(
                "/".join(map(str, low)) + " < " + "/".join(map(str, high)) for low, high in j.pairs)
            rows.append([c.key, j.what, j.gradient, "—" if p is None else f"{p.low:.1f}",
                         "—" if p is None else f"{p.high:.1f}", "—" if p is None else p.interval(),
                         "—" if p is None else str(p.n),
                         "—" if p is None or p.mcnemar is None else "{} / {} / {:.3g}".format(*p.mcnemar),
                         "—" if p is None else f"{p.p:.3g}", "—" if p is None or p.adjusted is None else f"{p.adjusted:.3g}",
                         "—" if j.q is None else f"{j.q[0]:.1f} / {j.q[1]:.3g}",
                         f"**{j.verdict}**" if markdown else j.verdict, cells,
                         *([] if markdown else ["; ".join(f"{e:+.2f}" for e in j.effects)])])
    return rows
