"""Evaluation suites and the ensemble worst case per image (DESIGN section 8; Croce & Hein 2020's
AutoAttack protocol; Ozdenizci & Legenstein's estimator ensemble for SNNs).

A suite names, per model kind, an ordered list of (estimator, attack) pairs. The ensemble runs them in
that order, each on the images still correct in some encoder draw. The model is judged as deployed by
the caller's ``judge``: its expected correctness p over K encoder draws, the same draws for every input
of an image (common random numbers; 0 or 1 for a deterministic model). Every image keeps the lowest p
any pair reached and the pair that first brought it below 1/2 (broken), so the worst case is never above
the accuracy of any pair run alone on the same images, and the report can say which estimator mattered
for which model. The paper's faithful SNNAdv (``snnadv``) starts from the rate image and
leaves the eps-ball around x, so no suite uses it: its clean-base variant ``snnadv-clean`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..config.spiking import Spiking
from ..errors import SpikeAdvError
from ..models.foreign import stochastic
from . import apgd, estimators, fab, registry, surrogates

ROBUST, WRONG_CLEAN, CARRIED = -1, -2, -3  # winner codes: never broken; wrong before any attack; broken at a smaller eps
TARGETS = {"apgd-t": apgd.TARGETS, "fab-t": fab.TARGETS}  # the attacks that run once per target class


@dataclass(frozen=True)
class Pair:
    """One member of an ensemble: a gradient estimator spec and an attack (steps, or queries for Square),
    its ``restarts``, and whether it runs on ``every`` image the model gets right in some draw (an
    independent estimate of its own) instead of only on those the earlier pairs left."""

    estimator: str
    attack: str
    steps: int
    restarts: int = 1
    every: bool = False

    @property
    def name(self) -> str:
        runs = f"x{self.restarts}" if self.restarts > 1 else ""
        return f"{self.attack}-{self.steps}{runs}{'-every' if self.every else ''}@{self.estimator}"

    @property
    def work(self) -> int:
        """Model passes per image, in forwards (a gradient step: forward and backward, 3): steps (queries)
        times restarts, EOT draws, APGD-T's and FAB-T's targets and MDSE's candidates. The weight of the
        pair in progress bars and task costs, so that the ETA holds across pairs and models."""
        name, options = estimators.parse(self.estimator)
        fan = TARGETS.get(self.attack, len(surrogates.MDSE_CANDIDATES) if name == "mdse" else 1)
        per_step = 3 if registry.get(self.attack).gradient else 1
        return self.steps * self.restarts * options["eot"] * fan * per_step


def with_eot(spec: str, n: int, override: bool = False) -> str:
    """Estimator ``spec`` averaged over ``n`` encoder draws, unless it names its own ``eot`` (which
    ``override`` replaces)."""
    name, _, rest = spec.partition(":")
    options = [o for o in rest.split(",") if o]
    if any(o.startswith("eot=") for o in options):
        if not override:
            return spec
        options = [o for o in options if not o.startswith("eot=")]
    options += [f"eot={n}"] if n > 1 else []
    return name + (":" + ",".join(options) if options else "")


def _pairs(*items: tuple) -> tuple[Pair, ...]:
    return tuple(Pair(*item) for item in items)


@dataclass(frozen=True)
class Suite:
    """Pairs for ANNs, for SNNs and (appended for SNNs with Poisson input) for stochastic models; the
    curves of accuracy vs eps (``eps_curve`` in 1/255 units, APGD-CE with ``curve_steps``; its
    largest, 255 = unbounded, with the most steps of ``steps_curve``) and vs steps (``steps_curve`` at the
    evaluated eps) on ``curve_images`` images for the ``curve_estimators`` first distinct estimators of a
    model; ``eot_draws`` (n, 2n) for EOT convergence. On a stochastic model (Poisson input) every
    gradient pair averages its loss over ``eot`` encoder draws and Square its margin over ``square_eot``
    (where the pair names no ``eot`` of its own). ``converge``: the images (at least) of the convergence
    check (:mod:`.convergence`), 0 for none; a suite with it claims a bound at every eps of the grid."""

    name: str
    ann: tuple[Pair, ...]
    snn: tuple[Pair, ...]
    poisson: tuple[Pair, ...]
    curve_images: int
    curve_steps: int
    eps_curve: tuple[float, ...]
    steps_curve: tuple[int, ...]
    curve_estimators: int = 2
    eot_draws: tuple[int, int] = (2, 4)
    prune: bool = True
    eot: int = 1
    square_eot: int = 1
    converge: int = 0
    doc: str = ""
    norm: str = "linf"

    @property
    def curve_attack(self) -> str:
        """The attack of the curves and the EOT check: APGD-CE in the suite's threat model."""
        return "apgd-ce" if self.norm == "linf" else "apgd-l2"

    @property
    def noise(self) -> str:
        """The null attack's noise in the suite's threat model."""
        return "noise" if self.norm == "linf" else "noise-l2"

    def pairs(self, snn: Spiking | None, net: object = None) -> tuple[Pair, ...]:
        """The ordered ensemble for a model: an ANN (``snn`` None and no library neuron in ``net``),
        spikeadv's SNN (``snn``), or a library SNN in ``net`` (the SNN pairs whose estimators apply to it,
        :func:`.estimators.kind_of`); Square stays last. On a stochastic model (Poisson input, or a
        ``net`` that says it is ``stochastic``) every drawn pair averages over the suite's EOT draws."""
        kind = estimators.kind_of(net, snn)
        random = stochastic(net, snn)
        if kind == "ann":
            ordered = self.ann
        else:
            fits = [p for p in (*self.snn, *(self.poisson if random else ())) if estimators.applies(p.estimator, kind)]
            ordered = (*(p for p in fits if p.attack != "square"), *(p for p in fits if p.attack == "square"))
        if not random:
            return ordered
        return tuple(replace(p, estimator=with_eot(p.estimator, self.square_eot if p.attack == "square" else self.eot))
                     if estimators.ESTIMATORS[estimators.parse(p.estimator)[0]].drawn else p for p in ordered)

    def curve_sources(self, snn: Spiking | None, net: object = None) -> list[str]:
        """The estimators whose accuracy-vs-eps and -steps curves are drawn and checked."""
        seen: list[str] = []
        for p in self.pairs(snn, net):
            single = with_eot(p.estimator, 1, override=True)  # one draw per step: the curves are many points
            if p.attack != "square" and single not in seen and (single == p.estimator or self.eot > 1):
                seen.append(single)
        return seen[: self.curve_estimators]


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("quick",
          ann=_pairs(("ann", "apgd-ce", 20), ("ann", "square", 300)),
          snn=_pairs(("snnadv-clean", "apgd-ce", 20), ("bptt", "apgd-ce", 20), ("bptr", "apgd-ce", 20),
                     ("bptt", "square", 300)),
          poisson=_pairs(("bptt:eot=2", "apgd-ce", 10)),
          curve_images=32, curve_steps=10, eps_curve=(8, 32, 255), steps_curve=(1, 10, 30),
          doc="a first look in minutes, no bound claimed: APGD-CE (20 steps) through the proxy ANN, BPTT and "
              "BPTR, Square (300 queries)"),
    Suite("standard",
          ann=_pairs(("ann", "apgd-ce", 100), ("ann", "apgd-t", 100), ("ann", "square", 1000)),
          snn=_pairs(("snnadv-clean", "apgd-ce", 100), ("bptt", "apgd-ce", 100), ("bptt", "apgd-dlr", 100),
                     ("bptr", "apgd-ce", 100), ("hart", "apgd-ce", 100),
                     ("bptt:surrogate=rectangular,alpha=1", "apgd-ce", 100),
                     ("bptt:surrogate=sigmoid,alpha=8", "apgd-ce", 100), ("bptt", "apgd-t", 100),
                     ("bptt", "square", 1000)),
          poisson=_pairs(("bptt:eot=4", "apgd-ce", 100)),
          curve_images=64, curve_steps=10, eps_curve=(2, 8, 32, 255), steps_curve=(1, 10, 100),
          doc="a first look, no bound claimed: APGD-CE/DLR/T (100 steps) over the proxy ANN, BPTT with three "
              "surrogates, BPTR, HART, EOT; "
              "Square (1,000 queries)"),
    Suite("full",
          ann=_pairs(("ann", "apgd-ce", 100), ("ann", "apgd-dlr", 100), ("ann", "apgd-t", 100),
                     ("ann", "square", 5000)),
          snn=_pairs(("snnadv-clean", "apgd-ce", 100), ("snnadv-clean", "apgd-dlr", 100), ("bptt", "apgd-ce", 100),
                     ("bptt", "apgd-dlr", 100), ("bptr", "apgd-ce", 100), ("bptr", "apgd-dlr", 100),
                     ("hart", "apgd-ce", 100), ("hart:mix=0.25", "apgd-ce", 100),
                     ("bptt:surrogate=rectangular,alpha=1", "apgd-ce", 100),
                     ("bptt:surrogate=rectangular,alpha=4", "apgd-ce", 100),
                     ("bptt:surrogate=sigmoid,alpha=4", "apgd-ce", 100),
                     ("bptt:surrogate=sigmoid,alpha=16", "apgd-ce", 100), ("bptt:surrogate=atan,alpha=2", "apgd-ce", 100),
                     ("bptt", "apgd-t", 100), ("bptr", "apgd-t", 100), ("bptt", "square", 5000)),
          poisson=_pairs(("bptt:eot=8", "apgd-ce", 100), ("bptr:eot=8", "apgd-ce", 100)),
          curve_images=128, curve_steps=20, eps_curve=(1, 2, 4, 8, 16, 32, 64, 255), steps_curve=(1, 5, 20, 100, 200),
          curve_estimators=4, eot_draws=(4, 8),
          doc="the standard suite with DLR on every estimator, more surrogate shapes and sharpness values, "
              "Square with 5,000 queries"),
    Suite("strong",
          ann=_pairs(("ann", "apgd-ce", 100), ("ann", "apgd-dlr", 100), ("ann", "apgd-t", 100), ("ann", "fab-t", 100),
                     ("ann", "square", 5000, 1, True)),
          snn=_pairs(("snnadv-clean", "apgd-ce", 100), ("snnadv-clean", "apgd-dlr", 100),
                     ("bptt", "apgd-ce", 100, 1, True), ("bptt", "apgd-dlr", 100), ("assg", "sa-pgd", 100, 1, True),
                     ("assg:a=0.35", "sa-pgd", 100), ("assg:a=0.49", "sa-pgd", 100),
                     ("pdsg", "apgd-ce", 100, 1, True), ("mdse", "apgd-ce", 100, 1, True), ("bptr", "apgd-ce", 100),
                     ("bptt", "apgd-t", 100),
                     ("bptt", "fab-t", 100), ("bptt", "square", 5000, 1, True)),
          poisson=(),
          curve_images=128, curve_steps=20, eps_curve=(2, 8, 32, 255), steps_curve=(1, 10, 100, 200),
          eot_draws=(10, 20), eot=20, square_eot=4, converge=256,
          doc="the default for claims: AutoAttack's four (APGD-CE, APGD-DLR, APGD-T with 9 targets, FAB-T with 9, "
              "Square with 5,000 queries on every image) through the proxy ANN, BPTT, BPTR and the 2025 "
              "estimators (ASSG with SA-PGD, PDSG, MDSE; these three and BPTT + APGD-CE on every image, so the "
              "worst case is below each of them image by image; ASSG's a also at the ends of the authors' search "
              "range, 0.35 and 0.49, on the images left); EOT over 20 draws on Poisson input; the worst "
              "case checked at every eps by doubling draws, steps, restarts and queries on 256 images"),
    Suite("l2",
          ann=_pairs(("ann", "apgd-l2", 100, 1, True), ("ann", "pgd-l2", 100)),
          snn=_pairs(("snnadv-clean", "apgd-l2", 100), ("bptt", "apgd-l2", 100, 1, True), ("pdsg", "apgd-l2", 100),
                     ("mdse", "apgd-l2", 100), ("assg", "apgd-l2", 100), ("bptr", "apgd-l2", 100),
                     ("bptt", "pgd-l2", 100)),
          poisson=(),
          curve_images=64, curve_steps=20, eps_curve=(2, 8, 32, 255), steps_curve=(1, 10, 100),
          eot_draws=(10, 20), eot=20, norm="l2",
          doc="the L2 threat model, a first look (no bound claimed): APGD-CE and PGD in the L2 ball through the "
              "proxy ANN, BPTT, BPTR and the 2025 estimators, EOT over 20 draws on Poisson input; eps is the "
              "L2 radius in pixel units (no Square, FAB-T or SA-PGD: L-inf attacks)"),
)}
DEFAULT = "strong"  # the suite that claims a bound; quick and standard are cheaper first looks


def get(name: str) -> Suite:
    if name not in SUITES:
        raise SpikeAdvError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return SUITES[name]


def check_pairs(pairs: tuple[Pair, ...], kind: str, model: str) -> None:
    """Refuse, before anything runs, no pairs at all, or a pair whose estimator or attack is unknown or
    does not apply to a model of ``kind`` (:func:`.estimators.kind_of`), or restarts on an attack without them."""
    what = estimators.KINDS[kind]
    if not pairs:
        raise SpikeAdvError(f"no pair of the suite applies to {model} ({what}); estimators for it: "
                            + ", ".join(n for n, e in estimators.ESTIMATORS.items() if kind in e.kinds))
    for pair in pairs:
        if not registry.get(pair.attack).restarts and pair.restarts != 1:
            raise SpikeAdvError(f"pair {pair.name}: {pair.attack} has no restarts")
        if not estimators.applies(pair.estimator, kind):
            raise SpikeAdvError(f"estimator {pair.estimator!r} does not apply to {model} ({what})")


@dataclass
class Ensemble:
    """The worst case over pairs: per image the expected correctness ``p`` of the model on the adversarial
    image it was worst on (0 or 1 for a deterministic model; ``clean`` on the image itself), that image, and the index of the pair that
    first broke it (p < 1/2; :data:`ROBUST`, :data:`WRONG_CLEAN` or :data:`CARRIED` otherwise); per pair the
    images it ran on, the clean-correct images it broke among them (``fooled``) and those it broke first
    (``won``), its wall time and, where asked for (``each``), its own output per image (the image itself
    where it did not run)."""

    adv: Tensor
    p: Tensor
    winner: Tensor
    clean: Tensor
    each: list[Tensor] = field(default_factory=list)
    ran: list[int] = field(default_factory=list)
    fooled: list[int] = field(default_factory=list)
    won: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


Judged = Callable[[Tensor, Tensor], Tensor]  # (images, their indices) -> expected correctness per image
Attacker = Callable[[Pair, Tensor, Tensor, int], Tensor]  # (pair, x, y, batch index) -> adversarial x


def worst_case(pairs: tuple[Pair, ...], x: Tensor, y: Tensor, judge: Judged, attack: Attacker,
               batch_size: int, prune: bool = True, progress: Callable[[int, int], None] = lambda n, left: None,
               start: Tensor | None = None, clean: Tensor | None = None, each: bool = False) -> Ensemble:
    """Run ``pairs`` in order in batches, keeping per image the adversarial image on which the deployed
    model's expected correctness (``judge``, the same encoder draws for every input of an image) is lowest
    and the pair that first brought it below 1/2. ``start``: per image an expected correctness already
    reached (at a smaller eps, whose adversarial images lie in this eps-ball too); ``clean``: the judge's
    verdict on the images themselves where the caller has it already. ``prune`` (AutoAttack's
    protocol): each pair runs only on the images still correct in some draw (p > 0); without, every pair
    runs on every image the model gets right in some draw, so each pair's own result is known too.
    ``progress(done, left)`` after each batch: the model passes (:attr:`Pair.work` per image) just done
    and those still planned;
    ``each``: every pair's own adversarial images are kept too (``Ensemble.each``)."""
    every = torch.arange(len(y), device=y.device)
    if clean is None:
        clean = torch.cat([judge(x[i:i + batch_size], every[i:i + batch_size]) for i in range(0, len(y), batch_size)])
    p = clean.clone() if start is None else torch.minimum(clean, start.to(clean))
    result = Ensemble(x.clone(), p, torch.where(clean >= 0.5, ROBUST, WRONG_CLEAN), clean)
    if start is not None:
        result.winner[(clean >= 0.5) & (p < 0.5)] = CARRIED
    alive = (lambda: result.p > 0) if prune else (lambda: clean > 0)
    every_image = int((clean > 0).sum())  # what a pair on every image runs on
    for i, pair in enumerate(pairs):
        begin = time.perf_counter()
        todo = torch.nonzero(clean > 0 if pair.every else alive()).flatten()
        fooled = won = 0
        if each:
            result.each.append(x.clone())
        for b, lo in enumerate(range(0, len(todo), batch_size)):
            idx = todo[lo:lo + batch_size]
            adv = attack(pair, x[idx], y[idx], b)
            if each:
                result.each[-1][idx] = adv
            q = judge(adv, idx)
            lower = q < result.p[idx]
            result.adv[idx[lower]] = adv[lower]
            first = (q < 0.5) & (result.winner[idx] == ROBUST)
            result.winner[idx[first]] = i
            result.p[idx] = torch.minimum(result.p[idx], q)
            fooled, won = fooled + int(((q < 0.5) & (clean[idx] >= 0.5)).sum()), won + int(first.sum())
            later = int(alive().sum())
            progress(len(idx) * pair.work, (len(todo) - lo - len(idx)) * pair.work
                     + sum((every_image if p.every else later) * p.work for p in pairs[i + 1:]))
        result.ran.append(len(todo))
        result.fooled.append(fooled)
        result.won.append(won)
        result.seconds.append(round(time.perf_counter() - begin, 2))
    return result
