"""Attacks and gradient estimators (DESIGN sections 2 and 8): ``estimators`` (how grad J is taken on
a model), ``attacks`` (the paper's FGSM family and PGD), ``apgd`` and ``square`` (adaptive evaluation),
``losses`` (what attacks maximise), ``registry`` (every attack by name under one signature), ``suite``
(the worst case per image over (estimator, attack) pairs), ``checks`` (gradient masking).

This module itself holds only names, so the report and the presets can use them without torch.
"""

STUDY_ATTACKS = ("fgsm", "rfgsm", "ifgsm", "tifgsm", "pgd")  # the attacks of the study's grid
ITERATIVE = ("ifgsm", "tifgsm", "pgd")  # the study's attacks that take a number of steps


def by_eps(results: dict) -> list:
    """A card's ``{eps: result}`` items in increasing eps (JSON keys are strings and sort as text)."""
    return sorted(results.items(), key=lambda item: float(item[0]))


def check(attack: str, eps: float, steps: int) -> None:
    """Validate a study attack request (eps in 1/255 units) with one readable message."""
    from ..errors import SpikeAdvError

    if attack not in STUDY_ATTACKS:
        raise SpikeAdvError(f"unknown attack {attack!r} (known: {', '.join(STUDY_ATTACKS)})")
    if not 0 <= eps <= 255:
        raise SpikeAdvError(f"eps is in 1/255 units and must be in [0, 255], got {eps:g}")
    if steps < 1:
        raise SpikeAdvError(f"steps must be >= 1, got {steps}")
