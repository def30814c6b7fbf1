"""The paper's whitebox claims judged on robustness curves (``spikeadv evaluate RUN``; DESIGN section 8.3):
per model the robust accuracy (worst case over the suite's pairs, expected correctness over K encoder
draws) at every eps of the grid, each image's minimal perturbation eps*, its median and the area under
the curve, and the null attack beside them; claims (b) and (c) as one paired judgement per model pair on
eps* (primary metric: Wilcoxon's signed-rank test, a bootstrap interval of the median difference over
instances and images), with the per-eps effects on robust accuracy (McNemar) and the attack success
rate on images both models get right (secondary) shown beside it. Reads the saved card only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config.grid import LABEL, by_eps
from ..records import read_json
from .paired import Paired, compare, hierarchical, holm, wilcoxon_p

SUITE_ORDER = ("strong", "full", "standard", "quick")  # the strongest evaluation a run holds is the one shown
SHOWN_EPS = (1, 2, 4, 8)  # the robust accuracies the claims' lines quote (where the grid has them)
CLAIMS = {"b": "Under whitebox attacks, SNNs lose more accuracy than the ANN (paper V-A): the ANN needs larger "
               "perturbations (eps*)",
          "c": "SNN-II (spike-based training) is more robust than SNN-I (conversion) (paper V-B): SNN-II needs "
               "larger perturbations (eps*)",
          "b'": "(b) against the controls: under whitebox attacks each SNN is less robust than an ANN of its clean "
                "accuracy and (SNN-II) than an ANN on its Poisson input: the control needs larger perturbations (eps*)",
          "vs": "Your models compared (the first named needs larger perturbations, eps*)"}
PAIRS = (("b", "ann", "snn1"), ("b", "ann", "snn2"), ("c", "snn2", "snn1"),  # (claim, more robust, less robust)
         ("b'", "ann-acc-i", "snn1"), ("b'", "ann-acc-ii", "snn2"), ("b'", "ann-rate", "snn2"))


def load_card(run_dir: Path) -> dict | None:
    """The strongest evaluation card in ``run_dir/evaluation`` (None when the run was not evaluated)."""
    for suite in SUITE_ORDER:
        path = run_dir / "evaluation" / suite / "card.json"
        if path.is_file():
            return read_json(path, "; rerun spikeadv evaluate to rewrite it")
    return None


def curves(card: dict | None) -> bool:
    """Whether an evaluation card holds robustness curves (cards written before them hold one eps each,
    judged on single encoder draws: the report then asks for a new evaluation instead of judging them)."""
    return card is not None and all("grid" in c for c in card["cards"])


def censored(card: dict) -> np.ndarray:
    """Each image's eps* with 'beyond the grid' (None) counted as twice the grid's largest eps: ranks and
    medians treat it as larger than any eps tried, which is all the data say."""
    top = 2 * max(card["grid"])
    return np.array([top if s is None else s for s in card["eps_star"]], dtype=np.float64)


def _median(values: np.ndarray, card: dict) -> str:
    m = float(np.median(values))
    return f"> {max(card['grid']):g}" if m > max(card["grid"]) else f"{m:g}"


def table(card: dict) -> tuple[list[str], list[list[str]]]:
    """Per model: clean accuracy, robust accuracy (%) at each eps of the grid, median eps* (1/255), the
    area under the curve (mean robust accuracy over [0, eps_max], %), the null attack (the image itself,
    and random +-eps signs at the largest eps) and the masking checks that failed."""
    grid = card["cards"][0]["grid"] if card["cards"] else []
    header = ["model", "judged on", "clean", *(f"{e:g}" for e in grid), "median eps*", "AUC", "null (eps 0)",
              f"noise ({max(grid, default=0):g})", "failed checks"]
    body = []
    for c in card["cards"]:
        failed = sorted({f"{k['name']} [{k['estimator']}]" for k in c["checks"] if k["passed"] is False})
        judge = c.get("judge", {})
        body.append([c["model"]["name"], f"{judge.get('draws', 1)} draw(s)" + (", vote" if judge.get("vote") else ""),
                     f"{100 * c['clean_acc']:.1f}", *(f"{100 * e['worst_acc']:.1f}" for _, e in by_eps(c["eps"])),
                     _median(censored(c), c), f"{100 * c['auc']:.1f}", f"{100 * c['null']['zero']:.1f}",
                     f"{100 * c['null']['noise'][f'{max(grid):g}']:.1f}", "; ".join(failed) or "none"])
    return header, body


@dataclass(frozen=True)
class Rejudged:
    """One claim on one model pair: ``stats`` on eps* (``high`` the median eps* of the side claimed more
    robust, ``low`` of the other; 1/255 units), the per-eps robust-accuracy comparisons (claimed side's
    error low) and the success rate on images both get right at the evaluated eps (``success``: claimed,
    other, images)."""

    claim: str
    what: str
    stats: Paired
    per_eps: tuple[tuple[str, Paired], ...]
    success: tuple[float, float, int]
    instances: int
    unbound: tuple[str, ...] = ()  # the models whose worst case is no bound (not converged, or not checked)


def unbound(card: dict) -> str | None:
    """Why a model's worst case is no bound, or None where its convergence check passed at every eps
    (a card of an earlier version holds one report, of the evaluated eps: checked there only)."""
    reports = card.get("convergence")
    if not reports:
        return "not checked"
    if "dimensions" in reports:
        reports = {f"{card['eval_eps']:g}": reports}
    moved = {eps: [d for d, r in report["dimensions"].items() if r["moved"]] for eps, report in reports.items()}
    loose = [f"{', '.join(dims)} at {eps}/255" for eps, dims in moved.items() if dims]
    unchecked = [f"{e:g}" for e in card["grid"] if f"{e:g}" not in reports]
    if loose:
        return f"NOT CONVERGED ({'; '.join(loose)} still move it)"
    return f"checked at {', '.join(reports)}/255 only, not at {', '.join(unchecked)}/255" if unchecked else None


def _instances(card: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in sorted(card["cards"], key=lambda c: c["model"].get("instance", 0)):
        out.setdefault(c["model"]["kind"], []).append(c)
    return out


def rejudge(card: dict) -> list[Rejudged]:
    """Claims (b), (c) and (b') where the card has the controls, one judgement per model pair on eps*,
    instance i of one kind against instance i of the other on the same images."""
    by_kind = _instances(card)
    return [judged(claim, f"{LABEL[robust]} vs {LABEL[other]}", list(zip(by_kind[robust], by_kind[other])))
            for claim, robust, other in PAIRS if robust in by_kind and other in by_kind]


def versus(card: dict) -> list[Rejudged]:
    """Every pair of a card's models (the first named against each later one) on the same images, one
    family: Holm-adjusted p-values (:func:`.paired.holm`) decide the verdicts."""
    models = card["cards"]
    found = [judged("vs", f"{a['model']['name']} vs {b['model']['name']}", [(a, b)], tuple(a["grid"]))
             for i, a in enumerate(models) for b in models[i + 1:]]
    adjusted = holm([r.stats.p for r in found])
    return [replace(r, stats=replace(r.stats, adjusted=q)) for r, q in zip(found, adjusted)]


def judged(claim: str, what: str, couples: list[tuple[dict, dict]], shown: tuple[float, ...] = SHOWN_EPS) -> Rejudged:
    """One judgement of the first side of each couple (claimed more robust) against the second on eps*,
    with intervals by a hierarchical bootstrap over the couples (instance pairs), then images; robust
    accuracy compared at the ``shown`` eps the grid has."""
    d = [censored(a) - censored(b) for a, b in couples]
    pooled = np.concatenate(d)
    lo, hi = hierarchical(d, np.median) if len(d) > 1 else bootstrap_median(pooled)
    stats = Paired(low=float(np.median(np.concatenate([censored(b) for _, b in couples]))),
                   high=float(np.median(np.concatenate([censored(a) for a, _ in couples]))),
                   diff=float(np.median(pooled)), lo=lo, hi=hi, n=len(pooled), p=wilcoxon_p(pooled), unit="/255")
    per_eps = []
    for eps in (f"{e:g}" for e in shown if e in couples[0][0]["grid"]):
        pairs = [(1 - np.array(b["eps"][eps]["p"]), 1 - np.array(a["eps"][eps]["p"])) for a, b in couples]
        binary = len(pairs) == 1 and all(np.isin(v, (0.0, 1.0)).all() for v in pairs[0])
        per_eps.append((eps, compare(pairs, binary=binary)))
    focus = f"{couples[0][0]['eval_eps']:g}"
    both = [(np.array(a["clean"]) >= 0.5) & (np.array(b["clean"]) >= 0.5) for a, b in couples]
    broken = lambda c, m: float(np.sum(np.array(c["eps"][focus]["p"])[m] < 0.5))  # noqa: E731
    total = int(sum(m.sum() for m in both))
    success = (100 * sum(broken(a, m) for (a, _), m in zip(couples, both)) / max(1, total),
               100 * sum(broken(b, m) for (_, b), m in zip(couples, both)) / max(1, total), total)
    loose = tuple(dict.fromkeys(f"{c['model']['name']} {unbound(c)}" for couple in couples for c in couple if unbound(c)))
    return Rejudged(claim, what, stats, tuple(per_eps), success, len(couples), loose)


def bootstrap_median(d: np.ndarray) -> tuple[float, float]:
    """Percentile interval of the median of ``d`` over resampled images (one instance pair)."""
    return hierarchical([d], np.median)


def items(found: list[Rejudged], focus: float) -> list[str]:
    """One line per judgement: the claim, the verdict on eps*, then the per-eps and secondary effects."""
    out = []
    for r in found:
        s = r.stats
        per = "; ".join(f"{eps}/255: {100 - p.low:.1f}% vs {100 - p.high:.1f}% (McNemar p = {p.mcnemar[2]:.3g})"
                        if p.mcnemar else f"{eps}/255: {100 - p.low:.1f}% vs {100 - p.high:.1f}% ({p.test()})"
                        for eps, p in r.per_eps)
        out.append(f"({r.claim}) {CLAIMS[r.claim]}: {r.what}, whitebox worst case, {r.instances} instance pair(s): "
                   f"**{s.verdict}** (median eps* {s.high:g} vs {s.low:g}/255, median paired difference "
                   f"{s.interval()}, n = {s.n}; {s.test()}). Robust accuracy {per}. Secondary: attack success "
                   f"at {focus:g}/255 on the {r.success[2]} images both get right {r.success[0]:.1f}% vs "
                   f"{r.success[1]:.1f}%"
                   + (f". **Rests on worst cases that are no bound**: {'; '.join(r.unbound)} (a stronger attack may "
                      "still move eps*)" if r.unbound else ""))
    return out
