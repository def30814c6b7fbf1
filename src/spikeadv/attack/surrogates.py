"""Surrogate derivatives that adapt during an attack (the 2025 frontier of SNN gradient estimation), as
derivatives of one spiking site's u = (v - V_th) / V_th over all its timesteps [T, B, ...]
(:func:`spikeadv.models.neurons.adaptive_surrogate`); :mod:`.estimators` registers them as ``assg`` and
``pdsg`` and mixes fixed surrogates per image as ``mdse``.

The papers write the surrogate of x = v - V_th; in u = x / V_th a density g(x) becomes V_th g(V_th u),
and the backward pass divides by V_th again, so statistics and surrogates taken on u give the papers'
gradient exactly (for a threshold per layer or per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import SpikeAdvError

# MDSE's candidates (Xu et al. 2025, authors' demo): arctan 1 / (1 + pi^2 u^2) = atan at alpha 2, and
# the linear 0.3 max(0, 1 - |u|) = lee at alpha 0.3
MDSE_CANDIDATES = (("atan", 2.0), ("lee", 0.3))


@dataclass
class ASSG:
    """Adaptive Sharpness Surrogate Gradient (Wang et al. 2025, "Towards Reliable Evaluation of
    Adversarial Robustness for Spiking Neural Networks", arXiv 2512.22522; constants from the authors'
    code). Per site, timestep, image and neuron, running moments of |u| over the attack's iterates:

        M <- beta M + (1 - beta) |u|,    D <- beta D + (1 - beta) | |u| - M |      (M_0 = 1, D_0 = 0)
        alpha = omega / (M + relax D + 1e-4),   omega = 2 tan(pi a) / pi
        H'(u) = (alpha / 2) / (1 + (pi alpha u / 2)^2)                             (atan shape)

    so the surrogate is as sharp as the membrane's typical distance to threshold allows: with alpha =
    omega / M the surrogate's primitive rises by ``a`` between u = 0 and u = M (a = 0.425: the authors'
    default for atan; they also search a in [0.35, 0.49]: the strong suite runs 0.35 and 0.49 as well, on
    the images the default leaves). ``beta`` 0.9 (0.99 for Poisson input, as the
    authors), ``relax`` 1.5. The moments move once per iterate: the EOT draws of one iterate share them
    (the authors update on the first draw only; here every draw sees the moments after the first's
    update). A batch of another size (a restart on the images left) starts from M_0, D_0 again.
    """

    a: float = 0.425
    relax: float = 1.5
    beta: float = 0.9
    moments: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    site: int = 0
    fresh: bool = True
    last: Tensor | None = None

    def __post_init__(self) -> None:
        if not 0 < self.a < 0.5:
            raise SpikeAdvError(f"assg a (the gradient-vanishing bound) must be in (0, 0.5), got {self.a:g}")
        if self.relax < 0 or not 0 <= self.beta < 1:
            raise SpikeAdvError(f"assg needs relax >= 0 and beta in [0, 1), got relax={self.relax:g}, beta={self.beta:g}")

    @property
    def omega(self) -> float:
        return 2 * math.tan(math.pi * self.a) / math.pi

    def begin(self, x: Tensor) -> None:
        """Before a forward of the network at iterate ``x``: sites counted from the first again; the
        moments move only where x is a new iterate."""
        self.site = 0
        self.fresh = self.last is None or self.last.shape != x.shape or not torch.equal(self.last, x.detach())
        self.last = x.detach().clone()

    def sharpness(self, u: Tensor) -> Tensor:
        """alpha at every element of u, after this iterate's update of the site's moments."""
        site, self.site = self.site, self.site + 1
        a = u.detach().abs().float()
        m, d = self.moments.get(site, (None, None))
        if m is None or m.shape != a.shape:
            m, d = torch.ones_like(a), torch.zeros_like(a)
        if self.fresh:
            m = self.beta * m + (1 - self.beta) * a
            d = self.beta * d + (1 - self.beta) * (a - m).abs()
        self.moments[site] = (m, d)
        return self.omega / (m + self.relax * d + 1e-4)

    def __call__(self, u: Tensor) -> Tensor:
        alpha = self.sharpness(u)
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * u.float()) ** 2)


def pdsg(u: Tensor) -> Tensor:
    """Potential-dependent surrogate gradient (Lun et al., CVPR 2025, "Towards Effective and Sparse
    Adversarial Attack on Spiking Neural Networks via Breaking Invisible Surrogate Gradients"; authors'
    code): a Gaussian density of the membrane's own spread, centred half a spread above threshold,

        H'(u_t) = exp(-((u_t - sigma_t / 2) / (sqrt(2) sigma_t))^2) / (sqrt(2 pi) sigma_t),

    sigma_t the unbiased standard deviation of u_1 .. u_t (accumulated over time, as time-accumulated
    batch norm) over the batch and the spatial positions, one per channel (conv) or feature (linear);
    1 where it is 0. No constant is left open; sigma depends on the batch, as in the authors' code."""
    x = u.detach().float()
    over = (1, *range(3, x.dim()))  # batch and spatial positions: one sigma per timestep and channel
    n = math.prod(x.shape[d] for d in over)
    count = n * torch.arange(1, x.shape[0] + 1, device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
    return _gaussian(x, x.sum(over, keepdim=True).cumsum(0), x.square().sum(over, keepdim=True).cumsum(0), count)


def _gaussian(x: Tensor, s1: Tensor, s2: Tensor, count: Tensor | float) -> Tensor:
    """PDSG's density at x from the sums s1 = sum u, s2 = sum u^2 of ``count`` values of the membrane."""
    count = torch.as_tensor(count, dtype=x.dtype, device=x.device)
    sigma = ((s2 - s1.square() / count) / (count - 1).clamp_min(1)).clamp_min(0).sqrt()
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return torch.exp(-((x - sigma / 2) / (math.sqrt(2) * sigma)).square()) / (math.sqrt(2 * math.pi) * sigma)


class PDSGSteps:
    """:func:`pdsg` fed one timestep at a time ([B, ...] per call: a library neuron's steps): running sums
    over the steps so far, so each step's value is :func:`pdsg`'s at that step of the stacked history, at
    O(1) per step instead of re-reading the history."""

    def __init__(self) -> None:
        self.s1: Tensor | float = 0.0
        self.s2: Tensor | float = 0.0
        self.count = 0

    def __call__(self, u: Tensor) -> Tensor:
        x = u.detach().float()
        over = (0, *range(2, x.dim()))
        self.s1 = self.s1 + x.sum(over, keepdim=True)
        self.s2 = self.s2 + x.square().sum(over, keepdim=True)
        self.count += math.prod(x.shape[d] for d in over)
        return _gaussian(x, self.s1, self.s2, self.count)
