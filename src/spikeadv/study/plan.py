"""The study's plan (pure: no model, no file): the crafting jobs of the paper's grid (section V,
Table III; DESIGN section 2 "Scenarios") and the content addresses and seeds derived from recipes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .. import attack as attacks
from ..presets import Preset, StudyConfig

KINDS = ("ann", "snn1", "snn2")
EXTRA_ATTACKS = (("fgsm", 1), ("ifgsm", 2))  # crafted with every further gradient source


def digest(recipe: object) -> str:
    """A short content address: the SHA-256 of a recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_of(*parts: object) -> int:
    """A 63-bit seed derived from a recipe, so every random draw is fixed by what it serves."""
    return int(digest(parts), 16) >> 1


@dataclass(frozen=True)
class Job:
    """One adversarial set: crafted from ``source`` instance ``instance`` with ``gradient`` and evaluated
    on ``targets``. Instance 0 crafts whitebox inputs (for itself), instance 1 blackbox inputs."""

    source: str
    instance: int
    gradient: str
    attack: str
    eps: int
    steps: int
    targets: tuple[str, ...]

    def scenario(self) -> str:
        return "whitebox" if self.instance == 0 else f"bb-{self.source}"

    def __str__(self) -> str:
        steps = f"-{self.steps}" if self.attack in attacks.ITERATIVE else ""
        return f"{self.source}{self.instance}/{self.gradient} {self.attack}{steps} eps {self.eps}"


def main_gradients(study: StudyConfig) -> dict[str, str]:
    """The paper's gradient per source kind: exact for the ANN, SNNAdv (Algorithm 2) for SNNs."""
    return {k: "ann" if k == "ann" else study.gradients[0] for k in KINDS}


def bounded_kinds(preset: Preset) -> frozenset[str]:
    """SNN kinds whose faithful SNNAdv is already eps-bounded: under direct (analog) encoding the rate
    image X_rate is the image itself, so ``snnadv`` and ``snnadv-clean`` craft the same inputs."""
    return frozenset(k for k, c in (("snn1", preset.snn1), ("snn2", preset.snn2)) if c.encoding == "direct")


def grid(study: StudyConfig, bounded: frozenset[str] = frozenset()) -> list[Job]:
    """Every crafting job of the study (paper Table III and Figs. 2-4):

    - Fig. 2/3: each of ``attacks`` (paper: FGSM, R-FGSM, I-FGSM and targeted I-FGSM with 2 steps) at
      each eps, from every kind's instance 0 (whitebox, on itself) and instance 1 (blackbox, on all
      three targets);
    - Fig. 4: (targeted) I-FGSM with each of ``fig4_steps`` at each of ``fig4_eps`` on the SNN-II
      target, whitebox and crafted by SNN-II and ANN instance 1;
    - with ``snnadv-clean`` among ``gradients``: all of the above from SNN sources once more with the
      eps-bounded SNNAdv (the faithful one perturbs the rate image, DESIGN "Gradient sources"), except
      for the ``bounded`` kinds, whose faithful SNNAdv is eps-bounded already;
    - every further gradient source (e.g. BPTT): FGSM and 2-step I-FGSM at ``extra_eps``, whitebox on
      each SNN."""
    wanted: dict[tuple, set[str]] = {}

    def add(source: str, instance: int, gradient: str, attack: str, steps: int, eps: int, targets) -> None:
        wanted.setdefault((source, instance, gradient, attack, eps, steps), set()).update(targets)

    main = main_gradients(study)
    variants = {k: (main[k], "snnadv-clean") if k != "ann" and k not in bounded and "snnadv-clean" in study.gradients
                else (main[k],) for k in KINDS}
    for kind in KINDS:
        for gradient in variants[kind]:
            for instance, targets in ((0, (kind,)), (1, KINDS)):
                for attack in study.attacks:
                    for eps in study.eps:
                        add(kind, instance, gradient, attack, study.steps if attack in attacks.ITERATIVE else 1,
                            eps, targets)
    for kind, instance in (("snn2", 0), ("snn2", 1), ("ann", 1)):
        for gradient in variants[kind]:
            for attack in ("ifgsm", "tifgsm"):
                for steps in study.fig4_steps:
                    for eps in study.fig4_eps:
                        add(kind, instance, gradient, attack, steps, eps, ("snn2",))
    for gradient in study.gradients[1:]:
        if gradient == "snnadv-clean":  # crafted for the whole grid above, where it differs from snnadv
            continue
        for kind in ("snn1", "snn2"):
            for attack, steps in EXTRA_ATTACKS:
                for eps in study.extra_eps:
                    add(kind, 0, gradient, attack, steps, eps, (kind,))
    return [Job(*key[:3], key[3], key[4], key[5], tuple(t for t in KINDS if t in targets))
            for key, targets in wanted.items()]
