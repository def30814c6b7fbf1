"""FAB-T, the targeted L-inf Fast Adaptive Boundary attack (Croce & Hein, ICML 2020, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", sec. 3; targeted as in AutoAttack, Croce & Hein
2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks").

FAB looks for the misclassified point closest to x0 = ``source.base(x)`` in L-inf. Towards a target t it
linearises the boundary at the iterate x^(k): f(z) = z_t - z_y ~ f(x^(k)) + w.(z - x^(k)), w = grad f(x^(k))
(``source.value_and_grad`` on :func:`logit_difference`); proj(p) is the smallest L-inf step d that puts
p + d on that hyperplane and in [0, 1]^D. Each of ``steps`` iterations (eta = 1.05, beta = 0.9,
alpha_max = 0.1):

    d = proj(x^(k)),  d0 = proj(x0),  alpha = min(||d|| / (||d|| + ||d0||), alpha_max)
    x' = Clip_[0,1]((1 - alpha) (x^(k) + eta d) + alpha (x0 + eta d0))
    if argmax z(x') != y:  keep x' if ||x' - x0|| is the smallest yet;  x' = (1 - beta) x0 + beta x'
    x^(k+1) = x'

The projection is exact. Moving coordinate i by at most r towards -sign(f(p)) sign(w_i) changes f by at
most g(r) = sum_i |w_i| min(r, room_i), room_i the distance from p_i to the edge of [0, 1] that way; g is
piecewise linear and increasing with breakpoints at the rooms, so one sort of the rooms and a cumulative
sum give the smallest r with g(r) = |f(p)| in closed form (:func:`project`), and d_i = -sign(f) sign(w_i)
min(r, room_i). Where the whole box cannot reach the hyperplane (g(inf) < |f|), every coordinate moves
to its edge, as in FAB.

FAB-T runs FAB towards each of the ``targets`` highest-scoring classes other than y on x0 in turn,
``restarts`` runs each: the first from x0, the others from a uniform random point of the L-inf ball of
radius min(best, eps) / 2 = eps / 2 around x0 (only images with no point within eps are run: best > eps).
An image returns its closest misclassified point if within eps, else x0 (:func:`minimal_fab` gives the
distances). Unlike the authors' code (fab_base.py, fab_projections.py): the projection is solved by the
sort and a cumulative sum in float64 rather than by bisection over the breakpoints (the same point up
to rounding); the random start is uniform in the ball (theirs: a uniform draw rescaled onto the ball's
surface); an image misclassified at x0 returns x0 at distance 0 (theirs skips it: the same output); the
update is computed around x0, so pixels with no gradient stay exactly at x0. On a small MLP (100 images
of 28x28 stripes, 100 steps, 9 targets, 1 restart) it fooled the same images as torchattacks 3.5.1's FAB
(multi_targeted) and AutoAttack's FABAttack_PT at 14, 18 and 22/255, at L-inf distances within 5e-5/255.

A stochastic source (Poisson input) is attacked on its gradient and logits averaged over ``source.draws``
encoder draws: a point whose mean logits are misclassified is no proof that one draw of the model errs,
and for a proxy source (SNNAdv's ANN) no proof that the model does, so there success is the caller's to
judge on the model.

Usage::

    x_adv = fab_t(sources.ann(net), x, y, eps=8 / 255)
    closest, dist = minimal_fab(sources.ann(net), x, y, eps=8 / 255)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SpikeAdvError
from .attacks import PIXEL_TOL, clip, count, random_start, validate
from .estimators import Source
from .losses import Loss

ETA, BETA, ALPHA_MAX = 1.05, 0.9, 0.1  # overshoot, backward step, largest pull towards x0 (the paper's)
TARGETS = 9  # FAB-T's target classes (AutoAttack: 9, every other class of CIFAR-10)


def logit_difference(target: Tensor) -> Loss:
    """f = z_t - z_y per image (one target each): > 0 where the target outscores y."""

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        return logits.gather(1, target[:, None])[:, 0] - logits.gather(1, labels[:, None])[:, 0]

    return loss


def project(p: Tensor, w: Tensor, f: Tensor) -> Tensor:
    """Per row of p [B, D] (in [0, 1]): the smallest L-inf step d with w.d = -f (onto the hyperplane where
    the linearisation f + w.(z - p) vanishes) and p + d in [0, 1]; where the box cannot reach it, the step
    to the box's edge that lowers |f| most. Computed in float64."""
    p64, w64, f64 = p.double(), w.double(), f.double()
    way = -torch.sign(f64)[:, None] * torch.sign(w64)  # +1, -1, or 0 for a coordinate that cannot help
    room = torch.where(way > 0, 1 - p64, p64) * way.abs()
    rooms, order = room.sort(1)
    weights = (w64.abs() * way.abs()).gather(1, order)
    tail = weights.flip(1).cumsum(1).flip(1)  # sum_{j >= k} |w_j|: the slope of g after breakpoint k - 1
    at = (weights * rooms).cumsum(1) + rooms * (tail - weights)  # g at each breakpoint (sorted rooms)
    need = f64.abs()
    k = (at < need[:, None]).sum(1, keepdim=True)  # breakpoints g stays below: r in (rooms[k-1], rooms[k]]
    start, done = F.pad(rooms, (1, 0)).gather(1, k), F.pad(at, (1, 0)).gather(1, k)
    slope = F.pad(tail, (0, 1)).gather(1, k)
    r = torch.where(k < p.shape[1], start + (need[:, None] - done) / slope.clamp_min(1e-300), torch.inf)
    return (way * torch.minimum(r, room)).to(p.dtype)


def _size(v: Tensor) -> Tensor:
    """The L-inf norm of each image of a batch."""
    return v.flatten(1).abs().amax(1)


def _run(source: Source, x0: Tensor, start: Tensor, y: Tensor, target: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """One run of FAB towards ``target`` from ``start``: per image the misclassified iterate closest to x0
    and its L-inf distance (inf where none)."""
    n, shape = len(x0), (-1,) + (1,) * (x0.dim() - 1)
    loss = logit_difference(target)
    x, best = start, x0.clone()
    dist = torch.full((n,), torch.inf, device=x0.device, dtype=x0.dtype)
    for _ in range(steps):
        f, grad, _ = source.value_and_grad(x, y, loss)
        w = grad.flatten(1)
        f0 = f + (w * (x0 - x).flatten(1)).sum(1)  # the same linearisation, evaluated at x0
        d = project(torch.cat([x, x0]).flatten(1), torch.cat([w, w]), torch.cat([f, f0])).view(2 * n, *x0.shape[1:])
        size = _size(d).clamp_min(1e-8)
        alpha = (size[:n] / (size[:n] + size[n:])).clamp(max=ALPHA_MAX).view(shape)
        # (1 - alpha)(x + eta d) + alpha (x0 + eta d0) and the backward step, written around x0: exact where d = 0
        x = (x0 + (1 - alpha) * (x - x0 + ETA * d[:n]) + alpha * ETA * d[n:]).clamp(0, 1)
        fooled = source.scores(x).argmax(1) != y
        closer = fooled & (_size(x - x0) < dist)
        best, dist = torch.where(closer.view(shape), x, best), torch.where(closer, _size(x - x0), dist)
        x = torch.where(fooled.view(shape), x0 + BETA * (x - x0), x)
    return best, dist


def _search(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, targets: int | None, restarts: int,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """FAB-T's runs: x0, the closest misclassified point per image (x0 where none) and its distance."""
    source = validate(source, x, y, eps, steps)
    count("restarts", restarts, "runs of FAB per target class")
    if restarts > 1 and generator is None:
        raise SpikeAdvError("FAB-T restarts start at random points of the eps-ball: pass a generator")
    if targets is not None:
        count("targets", targets, "target classes")
    x0 = source.base(x)
    best, dist = x0.clone(), torch.full((len(x0),), torch.inf, device=x0.device, dtype=x0.dtype)
    if len(x0) == 0:
        return x0, best, dist
    scores = source.scores(x0)
    targets = min(TARGETS, scores.shape[1] - 1) if targets is None else targets
    if targets >= scores.shape[1]:
        raise SpikeAdvError(f"FAB-T targets={targets}: the model has only {scores.shape[1] - 1} classes besides y")
    dist[scores.argmax(1) != y] = 0.0  # misclassified as it is
    ranked = scores.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
    for t in ranked[:, :targets].T:
        for run in range(restarts):
            todo = torch.nonzero(dist > eps + PIXEL_TOL).flatten()
            if len(todo) == 0:
                break
            start = x0[todo] if run == 0 else random_start(x0[todo], eps / 2, generator)
            adv, d = _run(source, x0[todo], start, y[todo], t[todo], steps)
            closer = d < dist[todo]
            best[todo[closer]], dist[todo[closer]] = adv[closer], d[closer]
    return x0, best, dist


def minimal_fab(source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 100, *, targets: int | None = None,
                restarts: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """FAB-T's minimal perturbations: per image the closest misclassified point to x0 found (x0 where
    none) and its L-inf distance to x0 (inf where none, 0 where x0 is misclassified). An image found
    within eps is not searched further (later targets and restarts), so distances above eps are the
    minimum over every run, those within eps over the runs until then."""
    _, best, dist = _search(source, x, y, eps, steps, targets, restarts, generator)
    return best, dist


def fab_t(source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 100, *, targets: int | None = None,
          restarts: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """FAB-T (AutoAttack) with ``steps`` iterations per run: per image the closest misclassified point
    found if within eps (+ :data:`.attacks.PIXEL_TOL`, then clipped to the eps-ball), else x0.
    ``targets`` None: :data:`TARGETS`, or every other class where the model has fewer."""
    x0, best, dist = _search(source, x, y, eps, steps, targets, restarts, generator)
    within = (dist <= eps + PIXEL_TOL).view(-1, *[1] * (x0.dim() - 1))
    return clip(torch.where(within, best, x0), x0, eps)
