"""A convergence check that can fail (DESIGN section 8.6; Carlini et al. 2019, "On evaluating adversarial
robustness": report the attack's budget and show that more of it does not help).

From the ensemble's worst case on m images (``base``: per image the lowest expected correctness any pair
reached), each budget is doubled in turn, on every pair it applies to:

- ``draws``: the encoder draws each gradient pair and Square average over (EOT; stochastic models only),
- ``steps``: the iterations of every gradient attack,
- ``restarts``: the runs from fresh random starts of every attack that has them,
- ``queries``: Square's queries.

The doubled ensemble runs on the images the base left (the worst case can only fall), and the worst case
is *converged* under a budget when doubling it lowers the expected number of correct images by at most
``max(1, 0.005 m)`` (1 image, or 0.5%, whichever is larger). The change is paired (the same images, the
same judge), so its only noise is the attacks' own randomness, and a budget that breaks a share d of the
images more leaves at most one of m unbroken with chance P(Bin(m, d) <= 1): for d = 5 pp that is below
5% from m = 93 images on (e^-4.7 (1 + 4.7) = 0.05) and 4e-5 at the 256 the strong suite uses, so a 5 pp
change cannot pass unnoticed.

Usage::

    report = check(pairs, x, y, judge, attack, batch_size=125, base=p, stochastic=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import Tensor

from . import estimators, registry
from .suite import Attacker, Judged, Pair, with_eot, worst_case

DIMENSIONS = ("draws", "steps", "restarts", "queries")


def tolerance(m: int) -> float:
    """The most a doubled budget may lower the number of correct images: 1 image or 0.5% of m."""
    return max(1.0, 0.005 * m)


def doubled(pairs: tuple[Pair, ...], dimension: str, stochastic: bool) -> tuple[Pair, ...]:
    """The pairs whose ``dimension`` budget doubles (the others dropped: the base has run them)."""
    out = []
    for p in pairs:
        square, attack = p.attack == "square", registry.get(p.attack)
        name, options = estimators.parse(p.estimator)
        if dimension == "draws" and stochastic and (square or attack.gradient) and estimators.ESTIMATORS[name].drawn:
            draws = options["eot"]
            out.append(replace(p, estimator=with_eot(p.estimator, 2 * draws, override=True)))
        elif dimension == "steps" and attack.gradient and attack.steps > 1:
            out.append(replace(p, steps=2 * p.steps))
        elif dimension == "restarts" and attack.restarts:
            out.append(replace(p, restarts=2 * p.restarts))
        elif dimension == "queries" and square:
            out.append(replace(p, steps=2 * p.steps))
    return tuple(out)


def check(pairs: tuple[Pair, ...], x: Tensor, y: Tensor, judge: Judged, attack: Attacker, batch_size: int,
          base: Tensor, stochastic: bool, progress: Callable[[int, int], None] = lambda done, left: None) -> dict:
    """Each budget doubled in turn from the worst case ``base`` on images ``x``: per dimension the doubled
    pairs, the expected correct images before and after, and whether it ``moved`` the worst case by more
    than :func:`tolerance` (None where no pair has that budget). ``progress(done, left)``: model passes
    done and still planned over all dimensions (:func:`.suite.worst_case`'s)."""
    m, out, before = len(y), {}, base.sum().item()
    plans = {d: doubled(pairs, d, stochastic) for d in DIMENSIONS}
    alive = int((base > 0).sum())
    planned = [alive * sum(p.work for p in plans[d]) for d in DIMENSIONS]
    for i, dimension in enumerate(DIMENSIONS):
        more = plans[dimension]
        if not more:
            out[dimension] = {"pairs": [], "before": round(before, 3), "after": round(before, 3), "moved": None}
            continue
        after = worst_case(more, x, y, judge, attack, batch_size, start=base, clean=base,
                           progress=lambda done, left: progress(done, left + sum(planned[i + 1:]))).p.sum().item()
        out[dimension] = {"pairs": [p.name for p in more], "before": round(before, 3), "after": round(after, 3),
                          "moved": before - after > tolerance(m)}
    return {"images": m, "tolerance": tolerance(m), "dimensions": out,
            "converged": not any(d["moved"] for d in out.values())}


def unconverged(report: dict) -> list[str]:
    """The budgets whose doubling still moves the worst case."""
    return [d for d, r in report["dimensions"].items() if r["moved"]]

