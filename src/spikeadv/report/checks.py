"""Sanity checks of a study (DESIGN section 8.9; Carlini et al. 2019): properties any correct study has,
judged on the deterministic ANN target from the saved results alone."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from .analysis import UNPAIRED, judge_cells
from .load import Cell, Run, attack_key, attack_name, fmt_eps
from .paired import CONTRADICTED


@dataclass(frozen=True)
class Check:
    """One sanity check: ``passed`` is None when the run lacks the cells (or outcomes) it needs."""

    name: str
    passed: bool | None
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]


def _ann_series(run: Run, scenario: str) -> dict[tuple[str, int], dict[int, Cell]]:
    """ANN-target cells under the main gradient: (attack, steps) -> {eps: cell}, in the paper's attack order."""
    series: dict[tuple[str, int], dict[int, Cell]] = defaultdict(dict)
    for (target, scen, _, attack, eps, steps), cell in run.main_cells().items():
        if target == "ann" and scen == scenario:
            series[(attack, steps)][eps] = cell
    return {k: series[k] for k in sorted(series, key=attack_key)}


def _ordered(run: Run, pairs: list[tuple[str, Cell, Cell]]) -> tuple[bool | None, str]:
    """Check ``weaker.loss <= stronger.loss`` for each (label, weaker, stronger): it fails only where the
    paired comparison shows the stronger attack losing less beyond noise; every dip is named."""
    if not pairs:
        return None, ""
    if not run.paired:
        return None, f" — {UNPAIRED} (the run predates per-image outcomes)"
    dips = [(label, judge_cells([(w, s)])) for label, w, s in pairs if s.loss < w.loss - 1e-9]
    detail = "; ".join(
        f"{label}: {-p.diff:.1f} pp the other way, paired {p.interval()}"
        + (f", McNemar p = {p.mcnemar[2]:.3g}" if p.mcnemar else "")
        + (" — beyond noise" if p.verdict == CONTRADICTED else " — within noise") for label, p in dips)
    return all(p.verdict != CONTRADICTED for _, p in dips), f" — {detail}" if detail else ""


def _non_finite(value: object, where: str = "") -> list[str]:
    """Where a JSON value holds NaN or an infinity."""
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [w for i, v in enumerate(value) for w in _non_finite(v, f"{where}[{i}]")]
    return [where] if isinstance(value, float) and not math.isfinite(value) else []


def sanity_checks(run: Run) -> list[Check]:
    """Properties any correct study has, on the deterministic ANN target (main gradient). An ordering
    holds unless a paired comparison over the attacked images shows it broken beyond noise."""
    wb = _ann_series(run, "whitebox")
    bb = _ann_series(run, "bb-ann")
    bad = _non_finite({"rows": run.rows, "models": run.meta.get("models", [])})
    checks = [Check("every number in the results and model records is finite", not bad,
                    f"non-finite values at {', '.join(bad[:5])}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                    if bad else f"{len(run.rows)} result rows, {len(run.meta.get('models', []))} models")]

    fgsm, ifgsm = wb.get(("fgsm", 1), {}), wb.get(("ifgsm", 2), {})
    common = sorted(set(fgsm) & set(ifgsm))
    passed, why = _ordered(run, [(fmt_eps(e), fgsm[e], ifgsm[e]) for e in common])
    checks.append(Check(
        "I-FGSM (2-step) at least as strong as FGSM, ANN whitebox, every eps", passed,
        ("; ".join(f"{e}/255: I-FGSM {ifgsm[e].loss:.1f} vs FGSM {fgsm[e].loss:.1f}" for e in common)
         or "no common eps") + why,
    ))
    for (attack, steps), cells in wb.items():
        eps = sorted(cells)
        passed, why = _ordered(run, [(fmt_eps(b), cells[a], cells[b]) for a, b in zip(eps, eps[1:])])
        checks.append(Check(
            f"ANN whitebox loss grows with eps ({attack_name(attack, steps)})", passed,
            ", ".join(f"{e}/255: {cells[e].loss:.1f}" for e in eps) + why,
        ))
    for (attack, steps), cells in wb.items():
        other = bb.get((attack, steps), {})
        common = sorted(set(cells) & set(other))
        passed, why = _ordered(run, [(fmt_eps(e), other[e], cells[e]) for e in common])
        checks.append(Check(
            f"ANN whitebox loss >= ANN-crafted blackbox loss ({attack_name(attack, steps)})", passed,
            ("; ".join(f"{e}/255: WB {cells[e].loss:.1f} vs BB {other[e].loss:.1f}" for e in common)
             or "no blackbox cells") + why,
        ))
    return checks
