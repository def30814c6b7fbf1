"""Every attack an evaluation can name (DESIGN sections 2 and 8), under one signature:

    attack.run(source, x, y, eps, *, steps, generator, target=None, restarts=1) -> x_adv

eps in pixel units, ``steps`` the iterations (the queries per image for Square), ``generator`` the only
randomness (random starts, random targets, squares), ``target`` one class per image for a targeted
attack (:attr:`Attack.targeted`); an untargeted one refuses a target. ``restarts``: runs from fresh
random starts, each on the images the earlier ones left (:attr:`Attack.restarts`: the attacks that
have them; the others refuse more than one).

Usage::

    x_adv = get("apgd-ce").run(source, x, y, 8 / 255, steps=100, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SpikeAdvError
from . import attacks
from .apgd import TARGETS, apgd, apgd_t
from .estimators import Source
from .fab import fab_t
from .sapgd import sapgd
from .square import square

Run = Callable[..., Tensor]  # (source, x, y, eps, *, steps, generator, target=None, restarts=1) -> x_adv


@dataclass(frozen=True)
class Attack:
    """A named attack: ``run`` with the registry's signature, its default ``steps``, whether it needs
    the source's gradient (``gradient``; Square only queries scores), whether it aims at a given
    target class (``targeted``) and whether it takes ``restarts``."""

    name: str
    run: Run
    steps: int
    gradient: bool
    targeted: bool
    doc: str
    restarts: bool = False


def _generator(name: str, generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        raise SpikeAdvError(f"{name} draws random numbers: pass a seeded torch.Generator")
    return generator


def _one_step(name: str, steps: int) -> None:
    if steps != 1:
        raise SpikeAdvError(f"{name} is a single-step attack: pass steps=1, got {steps!r}")


def _fgsm(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None) -> Tensor:
    _one_step("fgsm", steps)
    return attacks.fgsm(source, x, y, eps)


def _rfgsm(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None) -> Tensor:
    _one_step("rfgsm", steps)
    return attacks.rfgsm(source, x, y, eps, _generator("rfgsm", generator))


def _tifgsm(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None,
            target: Tensor | None) -> Tensor:
    """Targeted I-FGSM; without ``target``, a random class other than y per image (paper II-C)."""
    source = attacks.validate(source, x, y, eps, steps, target=target)
    if target is None:
        target = attacks.targets(y, source.scores(x[:1]).shape[1], "random", _generator("tifgsm", generator))
    return attacks.ifgsm(source, x, y, eps, steps, target=target)


def _null(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None) -> Tensor:
    """The null attack: the image the source's attacks start from (x itself for every eps-bounded one)."""
    _one_step("null", steps)
    return source.base(x).clone()


def _noise(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None) -> Tensor:
    """The null attack's noise: the base image + eps * s, s uniformly random +-1 per pixel, in [0, 1]."""
    _one_step("noise", steps)
    gen = _generator("noise", generator)
    signs = torch.randint(0, 2, x.shape, generator=gen, device=gen.device).to(x) * 2 - 1
    return (source.base(x) + eps * signs).clamp(0, 1)


def _noise_l2(source: Source, x: Tensor, y: Tensor, eps: float, steps: int, generator: torch.Generator | None) -> Tensor:
    """The null attack's noise in the L2 ball: the base image + a uniformly random direction of L2 norm
    eps, in [0, 1]."""
    _one_step("noise-l2", steps)
    gen = _generator("noise-l2", generator)
    d = torch.randn(x.shape, generator=gen, device=gen.device).to(x)
    return (source.base(x) + eps * d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))).clamp(0, 1)


_ENTRIES: tuple[tuple[str, Callable[..., Tensor], int, bool, str], ...] = (
    ("fgsm", _fgsm, 1, False, "FGSM (paper eq. 1): one signed-gradient step of eps"),
    ("rfgsm", _rfgsm, 1, False, "R-FGSM (paper eqs. 2-3): a random step of eps/2, then a gradient step of eps/2"),
    ("ifgsm", lambda s, x, y, eps, steps, gen: attacks.ifgsm(s, x, y, eps, steps), 7, False,
     "I-FGSM (paper eqs. 4-5): steps of eps/steps"),
    ("tifgsm", _tifgsm, 7, True, "targeted I-FGSM (paper eq. 6), random targets unless given"),
    ("pgd", lambda s, x, y, eps, steps, gen: attacks.pgd(s, x, y, eps, steps, generator=gen), 100, False,
     "PGD (Madry et al.): uniform random start from the generator, steps of 2.5 eps/steps"),
    ("pgd-l2", lambda s, x, y, eps, steps, gen: attacks.pgd(s, x, y, eps, steps, generator=gen, norm="l2"), 100,
     False, "PGD in the L2 ball (eps = its radius in pixel units), steps along grad / ||grad||_2"),
    ("null", _null, 1, False,
     "the null attack: the image itself (eps = 0); any accuracy it loses is the judge's noise"),
    ("noise", _noise, 1, False, "the null attack's noise: uniformly random +-eps signs, no gradient"),
    ("noise-l2", _noise_l2, 1, False, "the null attack's noise in the L2 ball: a random direction of norm eps"),
)

# attacks with restarts: fn(source, x, y, eps, steps, generator, restarts) -> x_adv
_RESTARTING: tuple[tuple[str, Callable[..., Tensor], int, str], ...] = (
    ("apgd-ce", lambda s, x, y, eps, steps, gen, r: apgd(s, x, y, eps, steps, loss="ce", generator=gen, restarts=r),
     100, "APGD on the cross-entropy (Croce & Hein 2020), random start from the generator"),
    ("apgd-dlr", lambda s, x, y, eps, steps, gen, r: apgd(s, x, y, eps, steps, loss="dlr", generator=gen, restarts=r),
     100, "APGD on the DLR loss (Croce & Hein 2020), random start from the generator"),
    ("apgd-t", lambda s, x, y, eps, steps, gen, r: apgd_t(s, x, y, eps, steps, generator=gen, restarts=r), 100,
     f"APGD-T (AutoAttack): targeted DLR towards the {TARGETS} top other classes in turn, success = misclassified"),
    ("apgd-l2", lambda s, x, y, eps, steps, gen, r: apgd(s, x, y, eps, steps, loss="ce", generator=gen, norm="l2",
                                                          restarts=r), 100,
     "APGD-CE in the L2 ball (Croce & Hein 2020; eps = its radius in pixel units)"),
    ("fab-t", lambda s, x, y, eps, steps, gen, r: fab_t(s, x, y, eps, steps, generator=gen, restarts=r), 100,
     "FAB-T (Croce & Hein 2020): minimal L-inf boundary search towards the top other classes in turn"),
    ("sa-pgd", lambda s, x, y, eps, steps, gen, r: sapgd(s, x, y, eps, steps, generator=gen, restarts=r), 100,
     "SA-PGD (Wang et al. 2025): L1-normalised moments, a clipped adaptive step halved on a schedule"),
    ("square", lambda s, x, y, eps, steps, gen, r: square(s, x, y, eps, steps, generator=_generator("square", gen),
                                                          restarts=r), 5000,
     "Square Attack (Andriushchenko et al. 2020): random search on the margin, steps = queries"),
)


def _attack(name: str, fn: Callable[..., Tensor], steps: int, targeted: bool, doc: str,
            restarting: bool = False) -> Attack:
    def run(source: Source, x: Tensor, y: Tensor, eps: float, *, steps: int, generator: torch.Generator | None,
            target: Tensor | None = None, restarts: int = 1) -> Tensor:
        if target is not None and not targeted:
            targeted_ones = ", ".join(a.name for a in ATTACKS.values() if a.targeted)
            raise SpikeAdvError(f"{name} is not a targeted attack: pass no target (targeted: {targeted_ones})")
        if restarts != 1 and not restarting:
            with_restarts = ", ".join(a.name for a in ATTACKS.values() if a.restarts)
            raise SpikeAdvError(f"{name} has no restarts: pass restarts=1 (attacks with restarts: {with_restarts})")
        return fn(source, x, y, eps, steps, generator, *((target,) if targeted else ()),
                  *((restarts,) if restarting else ()))

    return Attack(name, run, steps, gradient=name not in ("square", "null", "noise"), targeted=targeted, doc=doc,
                  restarts=restarting)


ATTACKS: dict[str, Attack] = {name: _attack(name, *rest) for name, *rest in _ENTRIES}
ATTACKS.update({name: _attack(name, fn, steps, False, doc, restarting=True) for name, fn, steps, doc in _RESTARTING})


def get(name: str) -> Attack:
    """The attack called ``name``; an unknown name is refused with the list of known ones."""
    if name not in ATTACKS:
        raise SpikeAdvError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
    return ATTACKS[name]
