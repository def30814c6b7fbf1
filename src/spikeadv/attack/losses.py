"""Losses an attack maximises, one value per image: ``loss(logits, labels) -> [B]``.

z are the logits, y the label, z_pi1 >= z_pi2 >= ... the logits sorted in descending order.

- :func:`cross_entropy`: J of the paper (section II).
- :func:`dlr`, :func:`dlr_targeted`: the Difference of Logits Ratio of APGD (Croce & Hein 2020, sec. 4),
  invariant to shifting and rescaling the logits.
- :func:`margin`: the margin loss of the Square Attack (Andriushchenko et al. 2020, sec. 3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ..errors import SpikeAdvError

Loss = Callable[[Tensor, Tensor], Tensor]  # (logits, labels) -> one loss per image


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """J of the paper (section II): the cross-entropy of each image."""
    return F.cross_entropy(logits, labels, reduction="none")


def _picked(logits: Tensor, labels: Tensor) -> Tensor:
    """z_y for each image."""
    return logits.gather(1, labels[:, None])[:, 0]


def _descending(logits: Tensor, classes: int, loss: str) -> Tensor:
    """The logits sorted in descending order; ``loss`` needs at least ``classes`` classes."""
    if logits.shape[1] < classes:
        raise SpikeAdvError(f"the {loss} loss needs at least {classes} classes, the model has {logits.shape[1]}")
    return logits.sort(1, descending=True).values


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{i != y} z_i - z_y: > 0 exactly when the image is misclassified (Square maximises it)."""
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return others - _picked(logits, labels)


def dlr(logits: Tensor, labels: Tensor) -> Tensor:
    """DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12) (Croce & Hein 2020, eq. 4)."""
    z = _descending(logits, 3, "DLR")
    return margin(logits, labels) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted(target: Tensor) -> Loss:
    """Targeted DLR towards class t (Croce & Hein 2020, eq. 5), one target per image:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)."""

    def loss(logits: Tensor, labels: Tensor) -> Tensor:
        z = _descending(logits, 4, "targeted DLR")
        return (_picked(logits, target) - _picked(logits, labels)) / (z[:, 0] - (z[:, 2] + z[:, 3]) / 2 + 1e-12)

    return loss


def cross_entropy_targeted(target: Tensor) -> Loss:
    """-J(x, t): ascending it raises the target's log-probability (targeted APGD-CE)."""
    return lambda logits, labels: -cross_entropy(logits, target)

