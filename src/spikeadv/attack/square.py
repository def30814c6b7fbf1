"""Square Attack, L-inf (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", Algorithm 1 and sec. 3.1): random search on the margin loss
(:func:`.losses.margin`) of the source's scores, no gradient, so it also attacks a model whose gradient
is masked or does not exist.

Start: vertical stripes, every column of every channel at x0 +- eps (x0 = ``source.base(x)``). Step i:
a square of side s = round(sqrt(p_i H W)) (at least 1, at most H - 1) at a uniformly drawn position is set
to x0 +- eps, one sign per channel, re-drawn (as in the authors' original code; AutoAttack's port does
not) while they would leave the window as it is, so no query is spent on the current point; the new point is kept if it raises the margin.
p_i = p_init halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled
to the query budget. An image stops once the source misclassifies it (margin > 0); each forward of an
image is one query. On a stochastic source (Poisson input) the margin is that of the logits averaged
over ``source.draws`` encoder draws (``bptt:eot=n``), so one lucky draw neither accepts a window nor
stops an image. ``restarts``: further runs from fresh stripes on the images not yet misclassified,
each image keeping its highest-margin point.

Usage::

    x_adv = square(sources.ann(net), x, y, eps=8 / 255, queries=1000, generator=gen)
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

from ..errors import SpikeAdvError
from .attacks import clip, count, validate
from .estimators import Source
from .losses import margin

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 iterations
REDRAWS = 100  # re-draws of a window's signs at most (each leaves it unchanged with chance 2^-C)


def fraction(i: int, queries: int, p_init: float) -> float:
    """p_i: the share of the image the square covers at iteration i (paper sec. 3.1, rescaled)."""
    return p_init / 2 ** bisect.bisect_left(HALVINGS, int(i / queries * 10000))


def _signs(shape: tuple[int, ...], x: Tensor, generator: torch.Generator) -> Tensor:
    """Random signs +-1 of ``shape`` (like x), drawn from ``generator``."""
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def square(source: Source, x: Tensor, y: Tensor, eps: float, queries: int = 5000, *,
           generator: torch.Generator, p_init: float = 0.8, restarts: int = 1) -> Tensor:
    """Square Attack with at most ``queries`` forwards per image and run (the stripes included);
    returns the first misclassified point of each image, else its highest-margin point."""
    source = validate(source, x, y, eps)
    count("queries", queries, "forwards per image")
    count("restarts", restarts, "runs of the Square Attack from fresh stripes")
    if not isinstance(generator, torch.Generator):
        raise SpikeAdvError("the Square Attack draws its squares at random: pass a torch.Generator")
    if not 0 < p_init <= 1:
        raise SpikeAdvError(f"p_init is the share of the image a square covers at first: in (0, 1], got {p_init!r}")
    x0 = source.base(x)
    best, loss = _run(source, x0, y, eps, queries, generator, p_init)
    for _ in range(restarts - 1):
        todo = torch.nonzero(loss <= 0).flatten()
        if len(todo) == 0:
            break
        again, new = _run(source, x0[todo], y[todo], eps, queries, generator, p_init)
        better = new > loss[todo]
        best[todo[better]], loss[todo[better]] = again[better], new[better]
    return best


def _run(source: Source, x0: Tensor, y: Tensor, eps: float, queries: int, generator: torch.Generator,
         p_init: float) -> tuple[Tensor, Tensor]:
    """One run of Algorithm 1 from the stripes: per image its point and margin."""
    n, c, h, w = x0.shape
    best = clip(x0 + eps * _signs((n, c, 1, w), x0, generator), x0, eps)
    loss = margin(source.scores(best), y)
    rows, cols = torch.arange(h, device=x0.device)[:, None], torch.arange(w, device=x0.device)
    for i in range(queries - 1):
        todo = torch.nonzero(loss <= 0).flatten()
        if len(todo) == 0:
            break
        s = max(min(round(math.sqrt(fraction(i, queries, p_init) * h * w)), min(h, w) - 1), 1)
        top, left = (torch.randint(0, size - s, (len(todo), 1, 1, 1), generator=generator, device=x0.device)
                     for size in (h, w))  # the corner in [0, H - s) as in the authors' code
        inside = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
        window = _window(x0[todo], best[todo], inside, eps, generator)
        candidate = torch.where(inside, window, best[todo])
        new = margin(source.scores(candidate), y[todo])
        better = new > loss[todo]
        best[todo[better]], loss[todo[better]] = candidate[better], new[better]
    return best, loss


def _window(x0: Tensor, current: Tensor, inside: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """x0 +- eps with one sign per image and channel, re-drawn for the images where it would equal the
    current point everywhere in the window (at most :data:`REDRAWS` times)."""
    n, c = x0.shape[:2]
    window = clip(x0 + eps * _signs((n, c, 1, 1), x0, generator), x0, eps)
    for _ in range(REDRAWS):
        same = ((window - current).abs() < 1e-7).logical_or(~inside).flatten(1).all(1)
        if not same.any():
            break
        redrawn = clip(x0[same] + eps * _signs((int(same.sum()), c, 1, 1), x0, generator), x0[same], eps)
        window[same] = redrawn
    return window
