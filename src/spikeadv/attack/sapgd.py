"""Stable Adaptive PGD, L-inf (SA-PGD; Wang et al. 2025, "Towards Reliable Evaluation of Adversarial
Robustness for Spiking Neural Networks", arXiv 2512.22522; constants from the authors' code): an
Adam-like step on L1-normalised moments of the gradient, clipped per step, halved on a fixed schedule,
stable where surrogate gradients are noisy or vanish (pair it with the ``assg`` estimator).

From a uniform random point of the eps-ball around x0 = ``source.base(x)``, step size eta = eps, and
g the gradient of the loss, per image (means over its pixels):

    g1 = g / mean|g|,   g2 = g^2 / mean(g^2)
    m  = g1 (first step), then 0.5 m + g1;     v = g2 (first step), then 0.8 v + g2
    x  = Clip_{x0,eps}(x + clip(eta m / (sqrt(v) + 1e-12), -eta, eta))

eta is halved after k iterations, then after k - k_dec, ... (never fewer than k_min), with k = 0.22 N,
k_min = 0.06 N and k_dec = 0.03 N (at least 1 each): for N = 100 after iterations 22, 41, 57, 70, 80,
87, 93 and 99. The normalisers get 1e-12 where the authors' code divides by zero (an image whose
gradient is exactly zero then stays where it is). Each image returns the first point the source
misclassifies (not on a stochastic or proxy source: :mod:`.apgd` says why), else its highest-loss point;
restarts, random starts and the search across them are APGD's (:class:`.apgd.Search`).

Usage::

    x_adv = sapgd(model.source("assg"), x, y, eps=8 / 255, steps=100, generator=gen)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .apgd import Search
from .attacks import NORMS, Norm, validate
from .estimators import Source
from .losses import Loss, cross_entropy

M_DECAY, V_DECAY = 0.5, 0.8  # the authors' code: m = 0.5 m + g1, v = 0.8 v + g2 (no bias correction)


def schedule(steps: int) -> set[int]:
    """The iterations after which eta halves: k, then k - k_dec more, ... at least k_min apart."""
    k, k_min, k_dec = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = set(), k
    while at <= steps:
        out.add(at)
        k = max(k - k_dec, k_min)
        at += k
    return out


def _run(source: Source, x0: Tensor, start: Tensor, labels: Tensor, eps: float, steps: int, loss: Loss,
         hit: Callable[[Tensor], Tensor], on_step: Callable[[Tensor], None], norm: Norm = NORMS["linf"]
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One run of SA-PGD from ``start``, returning what :func:`.apgd._run` returns."""
    shape = (-1,) + (1,) * (x0.dim() - 1)
    f, grad, logits = source.value_and_grad(start, labels, loss)
    x = x_max = x_hit = start
    f_max, found = f, hit(logits)
    eta, halve = torch.full((len(x0),) + shape[1:], eps, device=x0.device, dtype=x0.dtype), schedule(steps)
    m = v = torch.zeros_like(start)  # the first step's moments are g1 and g2 themselves
    for k in range(steps):
        g1 = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(shape)
        g2 = grad.square() / grad.square().flatten(1).mean(1).clamp_min(1e-12).view(shape)
        m, v = M_DECAY * m + g1, V_DECAY * v + g2
        x = norm.project(x + torch.maximum(torch.minimum(eta * m / (v.sqrt() + 1e-12), eta), -eta), x0, eps)
        f, grad, logits = source.value_and_grad(x, labels, loss)
        new = hit(logits) & ~found
        x_hit, found = torch.where(new.view(shape), x, x_hit), found | new
        up = f > f_max
        x_max, f_max = torch.where(up.view(shape), x, x_max), torch.where(up, f, f_max)
        on_step(f_max)
        if found.all():
            break
        if k + 1 in halve:
            eta = eta / 2
    return x_max, f_max, x_hit, found


def sapgd(source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 100, *, restarts: int = 1,
          generator: torch.Generator | None = None, loss: Loss = cross_entropy) -> Tensor:
    """SA-PGD on the cross-entropy (or ``loss``) with ``restarts`` runs of ``steps`` iterations, each from
    a random point of the eps-ball where a ``generator`` is given (else the first from x0)."""
    source = validate(source, x, y, eps, steps)
    search = Search(source, source.base(x), y, eps, steps, restarts, generator, None, algorithm=_run)
    search.run(lambda i: loss, lambda logits, i: logits.argmax(1) != y[i])
    return search.adv
