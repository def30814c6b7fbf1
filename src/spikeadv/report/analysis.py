"""What a run says: the perturbation audit, the cells a verdict may rest on, the sanity checks and the
paper's conclusions, each judged by paired comparisons over the attacked images (:mod:`.paired`).

Which cells a verdict uses. The paper's own gradient for SNN sources, faithful SNNAdv, perturbs the
Poisson rate image, so its inputs can lie far outside the eps-ball (the audit flags those groups);
a verdict under "the paper's gradient" uses each source's main gradient where the audit finds it
eps-bounded and its eps-bounded variant (``snnadv-clean``) where not, and never a flagged cell.
Verdicts (b) and (c) are judged a second time under the strongest gradient the run evaluated.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..config.grid import ITERATIVE, KINDS, LABEL, MATCH_WITHIN, MATCHED, SNNS, TARGETS
from .load import LINF_SLACK, SCENARIO_TITLE, SCENARIOS, Cell, Key, Run, attack_key, attack_name, fmt_eps, source_kind
from .paired import ALPHA, Paired, compare, heterogeneity, holm

BOUNDED = "snnadv-clean"  # the eps-bounded SNNAdv (perturbation applied to x, DESIGN "Gradient sources")
UNPAIRED = "paired statistics unavailable"
Candidates = Mapping[str, Sequence[str]]  # source kind -> gradients to try, in order

# ---------------------------------------------------------------- perturbation audit


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
    unperturbed: float | None = None  # mean share of images left exactly unperturbed (runs with per-image sizes)
    under_budget: float | None = None  # mean share of images under 99% of eps

    @property
    def flagged(self) -> bool:
        return self.linf > self.eps + LINF_SLACK


def perturbation_audit(run: Run) -> list[AuditRow]:
    """DESIGN "Gradient sources": the true L-inf of x_adv - x next to eps, per source gradient."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in run.rows:
        groups[(r["source_kind"], r["gradient"], int(r["eps"]))].append(r)
    def share(rs: list[dict], key: str) -> float | None:
        return statistics.fmean(r[key] for r in rs) if all(key in r for r in rs) else None

    return [
        AuditRow(kind, gradient, eps, statistics.fmean(r["linf"] for r in rs), max(r["linf"] for r in rs),
                 statistics.fmean(r["l2"] for r in rs), len(rs), share(rs, "unperturbed"), share(rs, "under_budget"))
        for (kind, gradient, eps), rs in sorted(groups.items(), key=lambda g: (TARGETS.index(g[0][0]), g[0][1:]))
    ]


def flagged(run: Run) -> set[tuple[str, str, int]]:
    """The (source kind, gradient, eps) groups the audit flags as not eps-bounded."""
    return {(a.source_kind, a.gradient, a.eps) for a in perturbation_audit(run) if a.flagged}


# ---------------------------------------------------------------- which cells a verdict uses


def paper_candidates(run: Run) -> dict[str, tuple[str, ...]]:
    """The paper's gradient per source kind, then its eps-bounded variant."""
    return {k: (g,) if g == BOUNDED or k == "ann" else (g, BOUNDED) for k, g in run.meta["gradients"].items()}


def verdict_key(run: Run, bad: set, candidates: Candidates, target: str, scenario: str, attack: str, eps: int,
                steps: int) -> Key | None:
    """The cell a verdict uses here: the first candidate gradient of the source kind that the run has
    and the audit does not flag; None when there is none."""
    kind = source_kind(target, scenario)
    for gradient in candidates.get(kind, ()):
        key = (target, scenario, gradient, attack, eps, steps)
        if key in run.cells and (kind, gradient, eps) not in bad:
            return key
    return None


def shown(run: Run, bad: set, target: str, scenario: str, attack: str, eps: int,
          steps: int) -> tuple[Cell | None, Cell | None]:
    """What a figure or table shows at one place: the cell verdicts use (paper's gradient, eps-bounded)
    and, where the main gradient's inputs are not eps-bounded, that faithful cell beside it."""
    key = verdict_key(run, bad, paper_candidates(run), target, scenario, attack, eps, steps)
    main = run.main_gradient(target, scenario)
    faithful = run.cell(target, scenario, attack, eps, steps) if (
        source_kind(target, scenario), main, eps) in bad else None
    return (None if key is None else run.cells[key]), faithful


def strongest(run: Run, bad: set) -> dict[str, str]:
    """Per SNN kind, the gradient with the highest mean whitebox loss on that kind over the (attack,
    eps, steps) all its unflagged gradients share (BPTT in the default grid); the ANN's is exact."""
    out = {"ann": "ann"}
    for kind in SNNS:
        by_gradient: dict[str, dict[tuple, float]] = defaultdict(dict)
        for (target, scenario, gradient, attack, eps, steps), cell in run.cells.items():
            if target == kind and scenario == "whitebox" and (kind, gradient, eps) not in bad:
                by_gradient[gradient][(attack, eps, steps)] = cell.loss
        if not by_gradient:
            continue
        shared = set.intersection(*(set(v) for v in by_gradient.values()))
        if shared:
            out[kind] = max(sorted(by_gradient), key=lambda g: statistics.fmean(by_gradient[g][c] for c in shared))
    return out


def preset_part(run: Run, name: str) -> dict:
    """One record of the run's preset, or {} where run.json lacks it (older or hand-made runs)."""
    part = run.meta["preset"].get(name)
    return part if isinstance(part, dict) else {}


def table3(run: Run) -> list[tuple[str, int, int]]:
    """(attack, eps, steps) of the paper's Table III grid as the run's preset set it (Fig. 2 and 3),
    never the Fig. 4 step sweep or extra gradient cells."""
    study = preset_part(run, "study")
    attacks = study.get("attacks", ["fgsm", "rfgsm", "ifgsm", "tifgsm"])
    steps = int(study.get("steps", 2))
    return [(a, int(e), steps if a in ITERATIVE else 1) for a in attacks for e in study.get("eps", [8, 16, 32])]


# ---------------------------------------------------------------- judgements


@dataclass(frozen=True)
class Judgement:
    """One paired comparison behind a verdict: the ``low`` side is claimed to be more robust than the
    ``high`` side (a lower adversarial error, 100 - adversarial accuracy, on the same images) over the cell
    pairs listed (same attack and eps on both sides), pooled per image where the cells agree in sign:
    ``q`` (Gail-Simon statistic, p) of effects of opposite sign, and the cells whose effect has the
    opposite sign to the pooled one (``opposite``)."""

    what: str
    gradient: str
    pairs: tuple[tuple[Key, Key], ...]
    stats: Paired | None
    q: tuple[float, float] | None = None
    opposite: tuple[str, ...] = ()
    short: tuple[str, ...] = ()  # cells where more than 1% of images used less than 99% of eps
    effects: tuple[float, ...] = ()  # per cell pair: its own mean difference of errors (pp), in pair order

    @property
    def heterogeneous(self) -> bool:
        return self.q is not None and self.q[1] < ALPHA

    @property
    def verdict(self) -> str:
        if not self.pairs:
            return "no data"
        if self.stats is None:
            return UNPAIRED
        return HETEROGENEOUS if self.heterogeneous else self.stats.verdict

    def cells(self) -> str:
        """The cells it rests on, compactly: each side's (target, scenario, gradient) and the grid."""
        def side(i: int) -> str:
            return " + ".join(sorted({f"{LABEL[p[i][0]]} under {SCENARIO_TITLE[p[i][1]]} `{p[i][2]}`"
                                      for p in self.pairs}))
        attacks = sorted({(k[3], k[5]) for k, _ in self.pairs}, key=attack_key)
        eps = sorted({k[4] for k, _ in self.pairs})
        return (f"{side(0)} vs {side(1)}, {', '.join(attack_name(*a) for a in attacks)} at eps "
                f"{', '.join(map(str, eps))}/255 ({len(self.pairs)} cell pairs)")


HETEROGENEOUS = "effects of opposite sign across cells: not pooled"
UNDER_BUDGET = 0.01  # a verdict names any cell where more than this share of images used < 99% of eps


def judge(run: Run, what: str, gradient: str, pairs: list[tuple[Key, Key]]) -> Judgement:
    """Pool the cell pairs per image and compare their adversarial errors (McNemar for one pair of 0/1
    outcomes on one target, else Wilcoxon); with several pairs, test their heterogeneity first and name
    the cells whose effect points against the pooled one."""
    if not pairs or not run.paired:
        return Judgement(what, gradient, tuple(pairs), None)
    cells = [(run.cells[a], run.cells[b]) for a, b in pairs]
    stats = judge_cells(cells, one_target=all(a[0] == b[0] for a, b in pairs))
    diffs = [b.errors - a.errors for a, b in cells]
    q = heterogeneity(diffs) if len(cells) > 1 else None
    opposite = tuple(f"{attack_name(a[3], a[5])} at {fmt_eps(a[4])} ({100 * float(d.mean()):+.1f} pp)"
                     for (a, _), d in zip(pairs, diffs) if float(d.mean()) * stats.diff < 0)
    short = tuple(sorted({f"{LABEL[k[0]]} {SCENARIO_TITLE[k[1]]} `{k[2]}` {attack_name(k[3], k[5])} at {fmt_eps(k[4])}: "
                          f"{100 * run.cells[k].under_budget:.1f}%" for pair in pairs for k in pair
                          if (run.cells[k].under_budget or 0) > UNDER_BUDGET}))
    return Judgement(what, gradient, tuple(pairs), stats, q, opposite, short,
                     tuple(round(100 * float(d.mean()), 2) for d in diffs))


def judge_cells(pairs: Sequence[tuple[Cell, Cell]], one_target: bool = True) -> Paired:
    """Cell pairs (low, high) pooled per image, compared on adversarial error; McNemar's test for one pair
    of 0/1 outcomes on one target, else Wilcoxon's signed-rank test."""
    binary = one_target and len(pairs) == 1 and all(
        c.repeats == 1 and np.isin(c.errors, (0.0, 1.0)).all() for pair in pairs for c in pair)
    return compare([(a.errors, b.errors) for a, b in pairs], binary=binary)


def _pairs(run: Run, bad: set, candidates: Candidates, low: tuple[str, str], high: tuple[str, str],
           grid: list[tuple[str, int, int]]) -> list[tuple[Key, Key]]:
    """Cell pairs at two (target, scenario) places for every (attack, eps, steps) of ``grid`` both have."""
    out = []
    for attack, eps, steps in grid:
        a = verdict_key(run, bad, candidates, *low, attack, eps, steps)
        b = verdict_key(run, bad, candidates, *high, attack, eps, steps)
        if a is not None and b is not None:
            out.append((a, b))
    return out


@dataclass(frozen=True)
class Conclusion:
    """One of the paper's conclusions: its judgements (each a paired comparison) and the comparisons
    left out, with why."""

    key: str
    claim: str
    judgements: tuple[Judgement, ...]
    excluded: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """The judgements' verdict when they agree; else how many say what."""
        found = [j.verdict for j in self.judgements if j.pairs]
        if not found:
            return "no data"
        counts = Counter(found)
        if len(counts) == 1:
            return found[0]
        return "mixed: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda c: -c[1]))


def same_function(run: Run) -> dict[str, str]:
    """Blackbox sources whose crafted inputs are the ANN-crafted ones in disguise, with why: SNN-I on
    direct input computes its parent ANN's function, and SNNAdv's proxy is that ANN rescaled."""
    if preset_part(run, "snn1").get("encoding") != "direct":
        return {}
    return {"bb-snn1": "SNN-I runs on direct (analog) input, so it computes the function of the ANN it was "
                       "converted from and SNNAdv crafts from that ANN, rescaled: SNN-I-crafted inputs are "
                       "ANN-crafted inputs at another softmax temperature, and comparing them with ANN-crafted "
                       "ones would compare a model with itself"}


def conclusions(run: Run) -> list[Conclusion]:
    """The paper's conclusions (V-A, V-B, VI), each judged per model and scenario on the Table III cells
    (eps-bounded, paper's gradient); (b) and (c) once more under the strongest gradient."""
    bad, grid = flagged(run), table3(run)
    paper, best = paper_candidates(run), strongest(run, bad)
    strong = {k: (g,) for k, g in best.items()}
    strong_name = "strongest (" + ", ".join(f"{LABEL[k]} `{g}`" for k, g in best.items() if k != "ann") + ")"

    def j(what: str, low: tuple[str, str], high: tuple[str, str], candidates: Candidates = paper,
          name: str = "paper's, eps-bounded") -> Judgement:
        return judge(run, what, name, _pairs(run, bad, candidates, low, high, grid))

    skip = same_function(run)
    blackbox = tuple(sc for sc in SCENARIOS[1:] if sc not in skip)
    a = [j(f"{LABEL[s]} vs ANN, {SCENARIO_TITLE[sc]}", (s, sc), ("ann", sc)) for s in SNNS for sc in blackbox]
    b = [j(f"ANN vs {LABEL[s]}, {SCENARIO_TITLE['whitebox']}", ("ann", "whitebox"), (s, "whitebox"), c, name)
         for c, name in ((paper, "paper's, eps-bounded"), (strong, strong_name)) for s in SNNS]
    c = [j(f"SNN-II vs SNN-I, {SCENARIO_TITLE[sc]}", ("snn2", sc), ("snn1", sc)) for sc in ("whitebox", *blackbox)]
    c.append(j(f"SNN-II vs SNN-I, {SCENARIO_TITLE['whitebox']}", ("snn2", "whitebox"), ("snn1", "whitebox"), strong, strong_name))
    # off the family diagonal only: never a source against a model of its own kind
    d = [j(f"{SCENARIO_TITLE[sc]} vs ANN-crafted, on {LABEL[t]}", (t, "bb-ann"), (t, sc))
         for t in KINDS if t != "ann" for sc in blackbox if sc not in ("bb-ann", f"bb-{t}")]
    merged = tuple(f"{SCENARIO_TITLE[sc]} counted with the ANN-crafted source: {why}" for sc, why in skip.items())
    return [*paper_claims(a, b, c, d, merged), *controlled(run, j, blackbox, merged)]


def paper_claims(a: list[Judgement], b: list[Judgement], c: list[Judgement], d: list[Judgement],
                 merged: tuple[str, ...]) -> list[Conclusion]:
    """The paper's four conclusions from their judgements."""
    return [
        Conclusion("a", "SNNs are more robust than the ANN under blackbox attacks (paper V-A)", tuple(a), merged),
        Conclusion("b", "Under whitebox attacks, SNNs lose more accuracy than the ANN (paper V-A)", tuple(b)),
        Conclusion("c", "SNN-II (spike-based training) is more robust than SNN-I (conversion) (paper V-B)", tuple(c),
                   merged),
        Conclusion("d", "SNN-crafted attacks are stronger than ANN-crafted ones (paper V-A, V-C)", tuple(d),
                   (*merged, "judged off the family diagonal only: a source is never compared on a model of its "
                             "own kind (ANN-crafted inputs on the ANN, SNN-II-crafted on SNN-II), where transfer "
                             "within a family is strongest whatever the claim")),
    ]


def controls_of(snn: str) -> tuple[str, ...]:
    """The controls an SNN kind is judged against: the ANN of its validation accuracy, and for Poisson-coded
    SNN-II the ANN on its rate image."""
    return (*(m for m, s in MATCHED.items() if s == snn), *(("ann-rate",) if snn == "snn2" else ()))


def controlled(run: Run, j, blackbox: tuple[str, ...], merged: tuple[str, ...]) -> list[Conclusion]:
    """Claims (a) and (b) judged once more against each control (DESIGN section 8.5) instead of the full
    ANN: an ANN of the SNN's clean accuracy removes "less to lose", the ANN on SNN-II's Poisson rate
    image removes input noise, so what is left is spiking. None where the run has no control targets."""
    present = {t for t, *_ in run.cells}
    pairs = [(s, c) for s in SNNS for c in controls_of(s) if c in present]
    if not pairs:
        return []
    a = [j(f"{LABEL[s]} vs {LABEL[c]}, {SCENARIO_TITLE[sc]}", (s, sc), (c, sc)) for s, c in pairs for sc in blackbox]
    b = [j(f"{LABEL[c]} vs {LABEL[s]}, {SCENARIO_TITLE['whitebox']}", (c, "whitebox"), (s, "whitebox")) for s, c in pairs]
    unmatched = [f"{LABEL[m['kind']]} {m['instance']}: {m['matched']['gap']:+.1f} pp from its SNN's validation accuracy, "
                 f"more than {MATCH_WITHIN:g} pp: not matched, its comparisons are not accuracy-matched"
                 for m in run.meta.get("models", []) if m.get("instance") == 0 and "matched" in m
                 and not m["matched"].get("matched", True)]
    return [
        Conclusion("a'", "(a) against the controls: each SNN more robust under blackbox attacks than an ANN of its "
                         "clean accuracy and (SNN-II) than an ANN on its Poisson input", tuple(a), (*merged, *unmatched)),
        Conclusion("b'", "(b) against the controls: under whitebox attacks each SNN less robust than an ANN of its "
                         "clean accuracy and (SNN-II) than an ANN on its Poisson input", tuple(b), tuple(unmatched)),
    ]


def corrected(found: list[Conclusion], others: Sequence[Paired] = ()) -> tuple[list[Conclusion], list[Paired]]:
    """Holm's adjustment across one family: every study judgement that pools its cells (a heterogeneous one
    makes no claim) and ``others`` (the adaptive evaluation's judgements); each keeps its adjusted p."""
    slots = [(ci, ji) for ci, c in enumerate(found) for ji, j in enumerate(c.judgements)
             if j.stats is not None and not j.heterogeneous]
    adjusted = holm([found[ci].judgements[ji].stats.p for ci, ji in slots] + [o.p for o in others])
    out = [list(c.judgements) for c in found]
    for (ci, ji), a in zip(slots, adjusted):
        j = out[ci][ji]
        out[ci][ji] = replace(j, stats=replace(j.stats, adjusted=a))
    return ([replace(c, judgements=tuple(js)) for c, js in zip(found, out)],
            [replace(o, adjusted=a) for o, a in zip(others, adjusted[len(slots):])])
