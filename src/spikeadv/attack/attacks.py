"""Attacks in pixel space (paper section II, Table II; DESIGN section 2), each over a gradient source.

x is the clean image in [0, 1], eps in pixel units (the study's eps / 255), J the cross-entropy and
Clip_{x,eps} the elementwise clip to [x - eps, x + eps] and to [0, 1]. Every attack starts from the
source's base image x0 = ``source.base(x)`` (x itself except for the paper's faithful SNNAdv, where it
is the rate image X_rate) and stays within eps of it. One loop, :func:`iterate`, serves them all:

    x_{n+1} = Clip_{x0,eps}{ x_n + a * sign(grad J(x_n, y)) }        non-targeted
    x_{n+1} = Clip_{x0,eps}{ x_n - a * sign(grad J(x_n, y_target)) } targeted

Every attack first checks its request (:func:`validate`): eps and a step size in pixel units in
[0, 1], steps an int >= 1, x a float batch of finite pixels in [0, 1], one integer label per image; a
bad one is refused with a :class:`SpikeAdvError` that says how to fix it (eps = 8 is 1/255 units).

Usage::

    x_adv = ifgsm(sources.ann(net), x, y, eps=16 / 255, steps=5)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SpikeAdvError
from .estimators import Source, as_source

PIXEL_TOL = 1e-6  # float rounding tolerated at the edges of [0, 1]


def amount(name: str, value: float) -> None:
    """eps or a step size: a finite number of pixel units in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpikeAdvError(f"{name} must be a number in [0, 1] (pixel units, e.g. 8/255), got {value!r}")
    if not math.isfinite(value):
        raise SpikeAdvError(f"{name}={value} is not finite; it must be in [0, 1] (pixel units, e.g. 8/255)")
    if value < 0:
        raise SpikeAdvError(f"{name}={value:g} is negative; it must be in [0, 1] (pixel units, e.g. 8/255)")
    if value > 1:
        hint = f"; {value:g} looks like 1/255 units: pass {value:g}/255" if value <= 255 else ""
        raise SpikeAdvError(f"{name}={value:g} is in pixel units (images in [0, 1]) and must be in [0, 1]{hint}")


def check_labels(name: str, labels: Tensor, n: int) -> None:
    """One integer class per image."""
    if not isinstance(labels, Tensor) or labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise SpikeAdvError(f"{name} must hold one integer class per image (an integer tensor of shape ({n},)), "
                            f"got {got}")


def count(name: str, value: int, what: str) -> None:
    """Refuse anything but an int >= 1; ``what`` says what it counts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SpikeAdvError(f"{name} must be an int >= 1 ({what}), got {value!r}")


def check_images(x: Tensor) -> None:
    """Refuse anything but a float batch [N, C, H, W] of finite pixels in [0, 1] (one pass over x)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise SpikeAdvError(f"x must be a float tensor of images [N, C, H, W] in [0, 1], got {got} "
                            "(uint8 images: spikeadv.data.to_float(x))")
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    lo, hi = torch.stack([lo, hi]).float().tolist()  # one device sync
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = (~torch.isfinite(x)).sum().item()
        raise SpikeAdvError(f"x has {bad} non-finite pixels (NaN or inf); pass finite pixels in [0, 1]")
    if lo < -PIXEL_TOL or hi > 1 + PIXEL_TOL:
        raise SpikeAdvError(f"x has pixels in [{lo:g}, {hi:g}], outside [0, 1]; pass raw pixels in [0, 1]: "
                            "divide 0-255 values by 255, and do not normalise them (the network does)")


def _radius(name: str, value: float, x: Tensor) -> None:
    """An L2 radius or step in pixel units: finite, >= 0 and at most the diameter of [0, 1]^d."""
    top = math.sqrt(x[0].numel()) if isinstance(x, Tensor) and x.dim() == 4 and len(x) else math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= top:
        raise SpikeAdvError(f"{name} (L2, pixel units) must be a number in [0, {top:.4g}], the diameter of the "
                            f"image space, got {value!r}")


def validate(
    source: Source, x: Tensor, y: Tensor, eps: float, steps: int = 1, a: float | None = None,
    target: Tensor | None = None, norm: str = "linf",
) -> Source:
    """Check an attack request (pixel units) and refuse a bad one with one readable message: eps and
    the step size ``a`` in [0, 1] (L2: up to the diameter of the image space), ``steps`` an int >= 1, x
    as :func:`check_images` wants, one integer label (and target) per image, each a class of the model,
    images of the shape it takes. Returns the source (:func:`.estimators.as_source`)."""
    source = as_source(source)
    if norm not in NORMS:
        raise SpikeAdvError(f"unknown norm {norm!r} (known: {', '.join(NORMS)})")
    size = amount if norm == "linf" else lambda name, value: _radius(name, value, x)
    size("eps", eps)
    if a is not None:
        size("a", a)
    count("steps", steps, "the number of gradient steps")
    check_images(x)
    check_labels("y", y, len(x))
    if target is not None:
        check_labels("target", target, len(x))
    fits(source, x, y, target)
    return source


def fits(source: Source, x: Tensor, *classes: Tensor | None) -> None:
    """Refuse images of a shape the model does not take and labels (or targets) that are not its
    classes, in one line; where the source does not know its model's classes and input shape (a model
    of another library), one image is run to learn them."""
    known, shape = source.classes, source.shape
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise SpikeAdvError(f"the model takes images of shape {tuple(shape)} ([C, H, W]), got {tuple(x.shape[1:])}")
    if known is None and len(x):
        try:
            with torch.no_grad():
                known = source.logits(x[:1]).shape[-1]
        except RuntimeError as e:
            raise SpikeAdvError(f"the model cannot take images of shape {tuple(x.shape[1:])} ([C, H, W]): "
                                f"{str(e).splitlines()[0]}") from None
    for name, values in zip(("y", "target"), classes):
        if values is not None and len(values):
            lo, hi = torch.aminmax(values)
            if lo < 0 or hi >= known:
                raise SpikeAdvError(f"{name} must hold classes of the model, 0 to {known - 1}, got values from "
                                    f"{int(lo)} to {int(hi)}")


def clip(x: Tensor, x0: Tensor, eps: float) -> Tensor:
    """Clip_{x0,eps}: into the L-inf ball of radius eps around x0 and into [0, 1]."""
    return torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)


def random_start(x0: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """A uniform random point of the eps-ball around x0 (drawn from ``generator``), clipped to [0, 1]."""
    noise = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return clip(x0 + (2 * noise - 1) * eps, x0, eps)


def _size(v: Tensor) -> Tensor:
    """The L2 norm of each image of a batch, shaped to broadcast over it."""
    return v.flatten(1).norm(dim=1).view(-1, *[1] * (v.dim() - 1))


def _l2_project(x: Tensor, x0: Tensor, eps: float) -> Tensor:
    """Into [0, 1], then into the L2 ball of radius eps around x0 by scaling x - x0 (both hold after)."""
    delta = x.clamp(0, 1) - x0
    return x0 + delta * (eps / _size(delta).clamp_min(1e-12)).clamp(max=1)


def _l2_random(x0: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """A uniform random point of the L2 ball around x0 (direction ~ N(0, I), radius eps u^(1/d))."""
    g = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    u = torch.rand(len(x0), generator=generator, device=x0.device, dtype=x0.dtype) ** (1 / math.prod(x0.shape[1:]))
    return _l2_project(x0 + g / _size(g).clamp_min(1e-12) * eps * u.view(-1, *[1] * (x0.dim() - 1)), x0, eps)


@dataclass(frozen=True)
class Norm:
    """A threat model's ball: the steepest-ascent ``direction`` of a gradient (its sign for L-inf, the
    gradient over its L2 norm for L2), ``project`` into the ball around x0 and into [0, 1], and a
    uniform ``random`` point of the ball."""

    name: str
    direction: Callable[[Tensor], Tensor]
    project: Callable[[Tensor, Tensor, float], Tensor]
    random: Callable[[Tensor, float, torch.Generator], Tensor]


NORMS = {"linf": Norm("linf", torch.sign, clip, random_start),
         "l2": Norm("l2", lambda g: g / _size(g).clamp_min(1e-12), _l2_project, _l2_random)}


def iterate(
    source: Source, x0: Tensor, start: Tensor, labels: Tensor, eps: float, a: float, steps: int, targeted: bool,
    norm: Norm = NORMS["linf"],
) -> Tensor:
    """``steps`` steepest-ascent steps of size ``a`` from ``start`` (signed gradients for L-inf), each
    projected into the eps-ball around x0 and [0, 1]; ascent on J(x, labels), or descent when
    ``targeted`` (labels are then the targets)."""
    x = start.detach()
    sign = -1.0 if targeted else 1.0
    for _ in range(steps):
        x = norm.project(x + sign * a * norm.direction(source.grad(x, labels)), x0, eps)
    return x


def fgsm(source: Source, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM (paper eq. 1, Goodfellow et al.): x_adv = x + eps * sign(grad_x J(x, y))."""
    source = validate(source, x, y, eps)
    x0 = source.base(x)
    return iterate(source, x0, x0, y, eps, eps, 1, targeted=False)


def rfgsm(source: Source, x: Tensor, y: Tensor, eps: float, generator: torch.Generator, a: float | None = None) -> Tensor:
    """R-FGSM (paper eqs. 2-3, Tramer et al.): x' = x + a * sign(N(0, I)) with a = eps / 2, then
    x_adv = x' + (eps - a) * sign(grad_x J(x', y))."""
    source = validate(source, x, y, eps, a=a)
    a = eps / 2 if a is None else a
    if a > eps:
        raise SpikeAdvError(f"R-FGSM's random step a={a:g} exceeds eps={eps:g}; pass a <= eps "
                            "(default eps / 2)")
    x0 = source.base(x)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    start = clip(x0 + a * noise.sign(), x0, eps)
    return iterate(source, x0, start, y, eps, eps - a, 1, targeted=False)


def ifgsm(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, target: Tensor | None = None) -> Tensor:
    """I-FGSM (paper eqs. 4-5, Kurakin et al.): k = ``steps`` steps of a = eps / k,
    x_{n+1} = Clip_{x,eps}{x_n + a sign(grad J(x_n, y))}; with ``target`` the targeted variant
    (eq. 6), x_{n+1} = Clip_{x,eps}{x_n - a sign(grad J(x_n, y_target))}."""
    source = validate(source, x, y, eps, steps, target=target)
    x0 = source.base(x)
    labels, targeted = (y, False) if target is None else (target, True)
    return iterate(source, x0, x0, labels, eps, eps / steps, steps, targeted)


def pgd(
    source: Source, x: Tensor, y: Tensor, eps: float, steps: int, a: float | None = None,
    generator: torch.Generator | None = None, norm: str = "linf",
) -> Tensor:
    """PGD (Madry et al.): I-FGSM with step a (default 2.5 eps / k) from a uniform random start in the
    eps-ball (no ``generator``: no random start, the first step from x). ``norm="l2"``: steps along
    grad / ||grad||_2 in the L2 ball of radius eps."""
    source = validate(source, x, y, eps, steps, a=a, norm=norm)
    a = 2.5 * eps / steps if a is None else a
    x0 = source.base(x)
    start = x0 if generator is None else NORMS[norm].random(x0, eps, generator)
    return iterate(source, x0, start, y, eps, a, steps, targeted=False, norm=NORMS[norm])


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

