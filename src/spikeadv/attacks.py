"""Attacks in pixel space (paper section II, Table II; DESIGN section 2), each over a gradient source.

x is the clean image in [0, 1], eps in pixel units (the study's eps / 255), J the cross-entropy and
Clip_{x,eps} the elementwise clip to [x - eps, x + eps] and to [0, 1]. Every attack starts from the
source's base image x0 = ``source.base(x)`` (x itself except for the paper's faithful SNNAdv, where it
is the rate image X_rate) and stays within eps of it. One loop, :func:`iterate`, serves them all:

    x_{n+1} = Clip_{x0,eps}{ x_n + a * sign(grad J(x_n, y)) }        non-targeted
    x_{n+1} = Clip_{x0,eps}{ x_n - a * sign(grad J(x_n, y_target)) } targeted

Usage::

    x_adv = ifgsm(sources.ann(net), x, y, eps=16 / 255, steps=5)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import SpikeAdvError
from .sources import Source

ATTACKS = ("fgsm", "rfgsm", "ifgsm", "tifgsm", "pgd")
ITERATIVE = ("ifgsm", "tifgsm", "pgd")  # the attacks that take a number of steps


def clip(x: Tensor, x0: Tensor, eps: float) -> Tensor:
    """Clip_{x0,eps}: into the L-inf ball of radius eps around x0 and into [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)


def iterate(
    source: Source, x0: Tensor, start: Tensor, labels: Tensor, eps: float, a: float, steps: int, targeted: bool
) -> Tensor:
    """``steps`` signed-gradient steps of size ``a`` from ``start``, each clipped to Clip_{x0,eps};
    ascent on J(x, labels), or descent when ``targeted`` (labels are then the targets)."""
    x = start.detach()
    direction = -1.0 if targeted else 1.0
    for _ in range(steps):
        x = clip(x + direction * a * source.grad(x, labels).sign(), x0, eps)
    return x


def fgsm(source: Source, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM (paper eq. 1, Goodfellow et al.): x_adv = x + eps * sign(grad_x J(x, y))."""
    x0 = source.base(x)
    return iterate(source, x0, x0, y, eps, eps, 1, targeted=False)


def rfgsm(source: Source, x: Tensor, y: Tensor, eps: float, generator: torch.Generator, a: float | None = None) -> Tensor:
    """R-FGSM (paper eqs. 2-3, Tramer et al.): x' = x + a * sign(N(0, I)) with a = eps / 2, then
    x_adv = x' + (eps - a) * sign(grad_x J(x', y))."""
    a = eps / 2 if a is None else a
    x0 = source.base(x)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    start = clip(x0 + a * noise.sign(), x0, eps)
    return iterate(source, x0, start, y, eps, eps - a, 1, targeted=False)


def ifgsm(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, target: Tensor | None = None) -> Tensor:
    """I-FGSM (paper eqs. 4-5, Kurakin et al.): k = ``steps`` steps of a = eps / k,
    x_{n+1} = Clip_{x,eps}{x_n + a sign(grad J(x_n, y))}; with ``target`` the targeted variant
    (eq. 6), x_{n+1} = Clip_{x,eps}{x_n - a sign(grad J(x_n, y_target))}."""
    x0 = source.base(x)
    labels, targeted = (y, False) if target is None else (target, True)
    return iterate(source, x0, x0, labels, eps, eps / steps, steps, targeted)


def pgd(
    source: Source, x: Tensor, y: Tensor, eps: float, steps: int, a: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD (Madry et al.): I-FGSM with step a (default 2.5 eps / k) from a uniform random start in the
    eps-ball (no ``generator``: no random start, the first step from x)."""
    a = 2.5 * eps / steps if a is None else a
    x0 = source.base(x)
    start = x0
    if generator is not None:
        noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        start = clip(x0 + (2 * noise - 1) * eps, x0, eps)
    return iterate(source, x0, start, y, eps, a, steps, targeted=False)


def targets(y: Tensor, classes: int, mode: str, generator: torch.Generator, logits: Tensor | None = None) -> Tensor:
    """Targets of a targeted attack (paper II-C): ``random``, a uniformly drawn class other than y
    (the paper's choice), or ``least-likely``, the source's lowest-scoring class on the clean input."""
    if mode == "random":
        shift = torch.randint(1, classes, y.shape, generator=generator, device=y.device)
        return (y + shift) % classes
    if mode == "least-likely":
        if logits is None:
            raise SpikeAdvError("least-likely targets need the source's logits")
        return logits.argmin(1)
    raise SpikeAdvError(f"unknown target mode {mode!r} (known: random, least-likely)")


def check(attack: str, eps: float, steps: int) -> None:
    """Validate an attack request (eps in 1/255 units) with one readable message."""
    if attack not in ATTACKS:
        raise SpikeAdvError(f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
    if not 0 <= eps <= 255:
        raise SpikeAdvError(f"eps is in 1/255 units and must be in [0, 255], got {eps:g}")
    if steps < 1:
        raise SpikeAdvError(f"steps must be >= 1, got {steps}")
