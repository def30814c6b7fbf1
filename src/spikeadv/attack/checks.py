"""Gradient-masking checks of one model's evaluation (DESIGN section 8.6: Carlini et al. 2019; Athalye
et al. 2018; Pintor et al. 2022; AutoAttack's checks).

Each check reads the numbers of an evaluation card (:mod:`spikeadv.study.units`) and passes, fails ("gradient
masking suspected", naming the model, the estimator and the numbers) or does not apply. Accuracies are
fractions of n images; two accuracies differ beyond sampling error when they differ by more than
``margin(p, q, n)``: 1.96 binomial standard errors of the difference (unpaired, so conservative for the
paired measurements here), and never less than one image; the steps checks compare each image's
outcomes (``paired_margin``: 1.96 standard errors of the paired difference) where the card holds them;
the images Square breaks that the gradient attacks left are held to the convergence rule
(:func:`.convergence.tolerance`: 1 image or 0.5%).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..config.grid import by_eps
from .convergence import tolerance
from .suite import ROBUST

UNBOUNDED_MAX = 0.01  # an unbounded attack leaves at most 1% accuracy
ZERO_GRADIENT_MAX = 0.1  # at most 10% of images with an input gradient that is exactly zero


@dataclass(frozen=True)
class Check:
    """One check: ``passed`` True, False, or None when it does not apply (``detail`` says why)."""

    name: str
    model: str
    estimator: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        return f"{self.name} [{self.model}, {self.estimator}]: {verdict(self.name, self.passed)}: {self.detail}"


def verdict(name: str, passed: bool | None, bold: bool = False) -> str:
    """pass, n/a, or what a failure means: masking suspected, or (the convergence check) no bound."""
    if passed is not False:
        return "pass" if passed else "n/a"
    what = "NOT CONVERGED: no bound claimed" if name == "worst case converged" else "FAIL: gradient masking suspected"
    return f"**{what}**" if bold else what


def margin(p: float, q: float, n: int) -> float:
    """1.96 standard errors of p - q for two accuracies on n images each, at least 1 / n."""
    return max(1.96 * math.sqrt((p * (1 - p) + q * (1 - q)) / n), 1 / n)


def margin1(p: float, n: int) -> float:
    """1.96 standard errors of one accuracy p on n images, at least 1 / n."""
    return max(1.96 * math.sqrt(p * (1 - p) / n), 1 / n)


def pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def check_card(card: dict) -> list[Check]:
    """Every check on one model's card: per estimator of its curves, then the model-wide ones."""
    model, out = card["model"]["name"], []
    eps = card["eval_eps"]
    n_curve = card["curve_images"]
    unbounded = {name: c["eps"][max(c["eps"], key=float)] for name, c in card["curves"].items()}
    best = min(unbounded, key=unbounded.get)
    top = max(float(e) for e in card["curves"][best]["eps"])
    out.append(Check("unbounded attack succeeds", model, best, unbounded[best] <= UNBOUNDED_MAX,
                     f"accuracy at eps {top:g}/255, APGD-CE {max(card['curves'][best]['steps'], key=int)} steps "
                     f"(bar: <= {pct(UNBOUNDED_MAX)} under the best estimator): "
                     + ", ".join(f"{name} {pct(acc)}" for name, acc in unbounded.items())))
    for name, curve in card["curves"].items():
        def add(check: str, passed: bool | None, detail: str, estimator: str = name) -> None:
            out.append(Check(check, model, estimator, passed, detail))

        steps = sorted(curve["steps"], key=int)
        rises = [(a, b) for a, b in zip(steps, steps[1:]) if _rose(curve, a, b, n_curve)]
        how = "paired, the same images" if "steps_p" in curve else "unpaired"
        add("more steps never help the model", not rises,
            ", ".join(f"{s} steps {pct(curve['steps'][s])}" for s in steps)
            + (f" at eps {eps:g}/255 ({how})" if not rises else f"; more steps raised accuracy at {rises} ({how})"))
        one, most = curve["steps"][steps[0]], curve["steps"][steps[-1]]
        add("iterative >= single-step", not _rose(curve, steps[0], steps[-1], n_curve),
            f"{steps[-1]} steps {pct(most)} vs {steps[0]} step {pct(one)} ({how})")
        trace = curve["trace"]
        add("attack loss rises over iterations", trace[-1] > trace[0] if len(trace) > 1 else None,
            f"mean best loss {trace[0]:.3f} after the first iteration, {trace[-1]:.3f} after {len(trace)}"
            if len(trace) > 1 else "the first iteration fooled every image: nothing left to rise")
        zero = curve["zero_gradient_images"]
        add("input gradients are not zero", zero <= ZERO_GRADIENT_MAX,
            f"{pct(zero)} of images with an all-zero gradient, {pct(curve['zero_gradient_entries'])} of entries")
    for e, result in by_eps(card["eps"]):
        n, worst = card["images"], result["worst_acc"]
        square = [p for p in result["pairs"] if p["attack"] == "square"]
        if square:
            won = square[0]["won"]
            left = won + sum(1 for w in result["winner"] if w == ROBUST)  # unbroken when Square ran
            out.append(Check("Square does not beat the gradient attacks", model, square[0]["estimator"],
                             won <= tolerance(n),
                             f"Square broke {won} of the {left} images the gradient attacks left at eps {float(e):g}/255 "
                             f"(allowed: {tolerance(n):g}, 1 image or 0.5% of {n}, the convergence rule)"))
        if float(e) != eps:
            continue  # transfer is measured at the evaluated eps
        for source, acc in result.get("transfer", {}).items():
            out.append(Check("whitebox >= transfer", model, f"from {source}", worst <= acc + margin(worst, acc, n),
                             f"worst case {pct(worst)} vs transfer {pct(acc)} at eps {float(e):g}/255"))
        if not result.get("transfer"):
            out.append(Check("whitebox >= transfer", model, "-", None, "no transfer source (evaluate a run "
                             "directory for its second instances)"))
    out += _null(card) + _converged(card)
    out += _eot(card, model, n_curve)
    return out


def paired_margin(a: list[float], b: list[float]) -> float:
    """1.96 standard errors of the mean paired difference b - a over the same images, at least 1 / n. A
    change of d = 5 pp made of images all moving one way (sd sqrt(d (1 - d))) exceeds it from n = 74
    images on (0.05 > 1.96 x 0.218 / sqrt(n)): the strong suite's 128 curve images can see it."""
    n = len(a)
    d = [v - u for u, v in zip(a, b)]
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n > 1 else 0.0
    return max(1.96 * sd / math.sqrt(n), 1 / n)


def _rose(curve: dict, fewer: str, more: str, n: int) -> bool:
    """Whether accuracy after ``more`` steps exceeds that after ``fewer`` beyond sampling error: paired
    on the same images where the card has each image's outcome (``steps_p``), else unpaired."""
    low, high = curve["steps"][fewer], curve["steps"][more]
    if "steps_p" in curve:
        return high - low > paired_margin(curve["steps_p"][fewer], curve["steps_p"][more])
    return high > low + margin(low, high, n)


def _eot(card: dict, model: str, n_curve: int) -> list[Check]:
    """Doubling the EOT draws lowers accuracy on the curve images by at most the convergence rule's
    1 image or 0.5% (paired: the same images)."""
    eot = card.get("eot")
    if not eot:
        return [Check("EOT converged", model, "-", None, "no encoder randomness that spikeadv knows of (an ANN, "
                      "direct input, or a wrapped model: give it ann:eot=n pairs)")]
    (n1, a1), (n2, a2) = sorted(((int(k), v) for k, v in eot["acc"].items()))
    allowed = tolerance(n_curve) / n_curve
    return [Check("EOT converged", model, eot["estimator"], a2 >= a1 - allowed,
                  f"{n1} draws {pct(a1)}, {n2} draws {pct(a2)} on the same {n_curve} images (allowed: "
                  f"{pct(allowed)} lower, 1 image or 0.5%)")]


def _null(card: dict) -> list[Check]:
    """The null attack (the image itself, through the identical pipeline) keeps clean accuracy."""
    null = card.get("null")
    if not null:
        return []
    n, clean = card["images"], card["clean_acc"]
    return [Check("the null attack keeps clean accuracy", card["model"]["name"], "null",
                  null["zero"] >= clean - margin1(clean, n),
                  f"the image itself judged again: {pct(null['zero'])} vs clean {pct(clean)} (sampling error "
                  f"{pct(margin1(clean, n))}); below it, the judge's noise counts as attack success")]


def _converged(card: dict) -> list[Check]:
    """The worst case at every eps of the grid moves by at most 1 image (or 0.5%) when any budget doubles
    (:mod:`.convergence`); a suite without the check claims no bound. (A card written before the check
    ran at every eps holds one report, of the evaluated eps.)"""
    reports, model = card.get("convergence"), card["model"]["name"]
    if not reports:
        return [Check("worst case converged", model, "-", None, f"the {card.get('suite', 'chosen')} suite claims "
                      "no bound (no convergence check: use the strong suite)")]
    reports = {f"{card['eval_eps']:g}": reports} if "dimensions" in reports else reports
    parts, moved_at = [], []
    for eps, report in reports.items():
        dims = report["dimensions"]
        moved = [d for d, r in dims.items() if r["moved"]]
        moved_at += [eps] if moved else []
        detail = "; ".join(f"{d} doubled: {r['before']:.1f} -> {r['after']:.1f} correct" if r["moved"] is not None
                           else f"{d}: no pair has it" for d, r in dims.items())
        verdict = f"still moved by doubling {', '.join(moved)}" if moved else "no doubling moved it"
        parts.append(f"at eps {float(eps):g}/255 {verdict} by more than {report['tolerance']:g} of "
                     f"{report['images']} images ({detail})")
    return [Check("worst case converged", model, "ensemble", not moved_at, "; ".join(parts))]


def as_records(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
