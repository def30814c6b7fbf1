"""Auto-PGD, L-inf (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Algorithm 1), and its targeted variant APGD-T of AutoAttack.

From x^(0) (x0 = ``source.base(x)``, or a uniform random point of the eps-ball), with P = Clip_{x0,eps}
and a step size eta = 2 eps per image:

    x^(1)   = P(x^(0) + eta sign(grad f(x^(0))))
    z       = P(x^(k) + eta sign(grad f(x^(k))))
    x^(k+1) = P(x^(k) + alpha (z - x^(k)) + (1 - alpha) (x^(k) - x^(k-1))),      alpha = 0.75

At the checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06))
an image halves eta and restarts from its highest-loss point x_max when (1) fewer than rho = 0.75 of
the steps since w_{j-1} raised f, or (2) eta was not halved at w_{j-1} and f_max did not rise since
(as in the authors' code, (2) is off at w_1). Each image returns the first point the source misclassifies
(with a target: classifies as the target), else its highest-loss point; restarts attack only the images
not yet fooled. A stochastic source (``Source.stochastic``: Poisson input) misclassifies on one draw
points that other draws classify right, so there every image returns its highest-loss point (on the
cpu study's SNN-II at 8/255: 19% accuracy left instead of 39% with the first misclassified point); its
loss, gradient, step-size rule and best point are those of the loss averaged over ``source.draws``
encoder draws (EOT, ``bptt:eot=20``: AutoAttack's protocol for randomised models). A proxy source
(``Source.proxy``: SNNAdv's ANN in place of the SNN) is not the model judged, so a point that fools it
is no success either: APGD runs all its iterations and returns the highest-loss point, which the
caller judges on the model.

Usage::

    x_adv = apgd(sources.ann(net), x, y, eps=8 / 255, loss="dlr", restarts=2, generator=gen)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import SpikeAdvError
from .attacks import NORMS, Norm, count, validate
from .estimators import Source
from .losses import Loss, cross_entropy, cross_entropy_targeted, dlr, dlr_targeted

ALPHA, RHO = 0.75, 0.75  # momentum and the share of rising steps below which eta is halved
TARGETS = 9  # APGD-T's target classes (AutoAttack: 9, every other class of CIFAR-10)
Hit = Callable[[Tensor, Tensor], Tensor]  # (logits, image indices) -> which images reached the goal


def checkpoints(steps: int) -> set[int]:
    """The iterations w_j = ceil(p_j * steps), j >= 1, at which step sizes are checked."""
    p = [0.0, 0.22]
    while (q := p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)) <= 1:
        p.append(q)
    return {math.ceil(round(q * steps, 6)) for q in p[1:]}  # round: 0.57 * 100 is 57, not 57.000...01


def _run(source: Source, x0: Tensor, start: Tensor, labels: Tensor, eps: float, steps: int, loss: Loss,
         hit: Callable[[Tensor], Tensor], on_step: Callable[[Tensor], None], norm: Norm = NORMS["linf"]
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One run of Algorithm 1 from ``start``: per image the highest-loss point and its loss, the first
    point ``hit`` accepts, and whether there was one. It stops early once every image has a point ``hit``
    accepts, which the remaining iterations could not change."""
    shape = (-1,) + (1,) * (x0.dim() - 1)

    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask.view(shape), a, b)

    eta = torch.full((len(x0),) + shape[1:], 2 * eps, device=x0.device, dtype=x0.dtype)
    f, grad, logits = source.value_and_grad(start, labels, loss)
    x = x_prev = x_max = x_hit = start
    f_max, g_max, found = f, grad, hit(logits)
    rises, last, f_check, halved = torch.zeros_like(f), 0, f, torch.ones_like(found)
    marks = checkpoints(steps)
    for k in range(steps):
        z = norm.project(x + eta * norm.direction(grad), x0, eps)
        if k > 0:
            z = norm.project(x + ALPHA * (z - x) + (1 - ALPHA) * (x - x_prev), x0, eps)
        x_prev, x = x, z
        f_new, grad, logits = source.value_and_grad(x, labels, loss)
        new = hit(logits) & ~found
        x_hit, found = where(new, x, x_hit), found | new
        rises, f = rises + (f_new > f), f_new
        up = f > f_max
        x_max, g_max, f_max = where(up, x, x_max), where(up, grad, g_max), torch.where(up, f, f_max)
        on_step(f_max)
        if found.all():  # every image has its returned point: later iterations cannot change the result
            break
        if k + 1 in marks:
            halved = (rises < RHO * (k + 1 - last)) | (~halved & (f_max <= f_check))
            eta = where(halved, eta / 2, eta)
            x, grad, f = where(halved, x_max, x), where(halved, g_max, grad), torch.where(halved, f_max, f)
            rises, last, f_check = torch.zeros_like(f), k + 1, f_max
    return x_max, f_max, x_hit, found


class Search:
    """Per image across runs: the point to return, the highest loss seen, whether the goal was reached;
    and the trace, the mean over images of the highest loss so far after each iteration."""

    def __init__(self, source: Source, x0: Tensor, y: Tensor, eps: float, steps: int, restarts: int,
                 generator: torch.Generator | None, trace: list[float] | None, norm: Norm = NORMS["linf"],
                 algorithm: Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]] | None = None) -> None:
        count("restarts", restarts, "runs of APGD from random starts")
        if restarts > 1 and generator is None:
            raise SpikeAdvError("APGD restarts start at random points of the eps-ball: pass a generator")
        self.source, self.x0, self.y, self.eps, self.steps, self.restarts = source, x0, y, eps, steps, restarts
        self.trust_hits = not (source.stochastic or source.proxy)  # one draw's or the proxy's is no evidence
        self.generator, self.trace, self.norm = generator, trace, norm
        self.algorithm = algorithm or _run  # one run from a start: APGD's Algorithm 1, or SA-PGD
        self.adv, self.done = x0.clone(), torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        self.loss = torch.full((len(x0),), float("-inf"), device=x0.device)

    def run(self, loss: Callable[[Tensor], Loss], hit: Hit) -> None:
        """``restarts`` runs, each on the images not yet done; ``loss(idx)`` the loss of images ``idx``."""
        for _ in range(self.restarts):
            self._once(loss, hit)

    def _once(self, loss: Callable[[Tensor], Loss], hit: Hit) -> None:
        todo = torch.nonzero(~self.done).flatten()
        if len(todo) == 0:
            return
        x0 = self.x0[todo]
        start = x0 if self.generator is None else self.norm.random(x0, self.eps, self.generator)

        def on_step(f_max: Tensor) -> None:
            if self.trace is not None:
                self.trace.append(self.loss.index_put((todo,), torch.maximum(self.loss[todo], f_max)).mean().item())

        best, f_max, adv, found = self.algorithm(self.source, x0, start, self.y[todo], self.eps, self.steps, loss(todo),
                                       lambda logits: hit(logits, todo) & self.trust_hits, on_step, self.norm)
        up = f_max > self.loss[todo]
        self.loss[todo] = torch.maximum(self.loss[todo], f_max)
        keep = torch.where(found.view(-1, *[1] * (x0.dim() - 1)), adv, best)
        self.adv[todo[found | up]] = keep[found | up]
        self.done[todo[found]] = True


LOSSES = ("ce", "dlr")


def apgd(source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 100, *, loss: str = "ce",
         restarts: int = 1, generator: torch.Generator | None = None, target: Tensor | None = None,
         trace: list[float] | None = None, norm: str = "linf") -> Tensor:
    """APGD-CE or APGD-DLR (Croce & Hein 2020, Algorithm 1) with ``restarts`` runs of ``steps``
    iterations. With ``target``: the targeted loss (-CE(z, t) or targeted DLR) and success when the
    source classifies as t. ``trace``, if a list, receives the mean over images of the highest loss so far
    after each iteration of each run (at most ``steps`` entries per run: a run stops once every image
    is fooled). ``norm="l2"``: steps along grad / ||grad||_2 in the L2 ball of radius eps.
    """
    source = validate(source, x, y, eps, steps, target=target, norm=norm)
    if loss not in LOSSES:
        raise SpikeAdvError(f"unknown APGD loss {loss!r} (known: {', '.join(LOSSES)})")
    search = Search(source, source.base(x), y, eps, steps, restarts, generator, trace, NORMS[norm])
    if target is None:
        search.run(lambda i: cross_entropy if loss == "ce" else dlr, lambda logits, i: logits.argmax(1) != y[i])
    else:
        search.run(lambda i: (cross_entropy_targeted if loss == "ce" else dlr_targeted)(target[i]),
                   lambda logits, i: logits.argmax(1) == target[i])
    return search.adv


def apgd_t(source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 100, *, targets: int | None = None,
           restarts: int = 1, generator: torch.Generator | None = None, trace: list[float] | None = None) -> Tensor:
    """APGD-T of AutoAttack (Croce & Hein 2020, sec. 5): APGD on the targeted DLR loss towards each of the
    ``targets`` highest-scoring classes other than y on x0 in turn (``restarts`` runs each), attacking
    only the images not yet misclassified; success is any misclassification. ``targets`` None:
    :data:`TARGETS`, or every other class where the model has fewer."""
    source = validate(source, x, y, eps, steps)
    x0 = source.base(x)
    scores = source.scores(x0)
    targets = min(TARGETS, scores.shape[1] - 1) if targets is None else targets
    count("targets", targets, "target classes")
    search = Search(source, x0, y, eps, steps, restarts, generator, trace)
    if targets >= scores.shape[1]:
        raise SpikeAdvError(f"APGD-T targets={targets}: the model has only {scores.shape[1] - 1} classes besides y")
    ranked = scores.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
    for t in ranked[:, :targets].T:
        search.run(lambda i: dlr_targeted(t[i]), lambda logits, i: logits.argmax(1) != y[i])
    return search.adv
