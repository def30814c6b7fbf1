"""Gradient sources: how grad_x J(x, y) is taken on a source model (DESIGN section 2, paper IV-D/E).

A source is what an attack sees of a model: ``base(x)``, the image the attack starts from and stays
within eps of, and ``grad(x, labels)``, the gradient of the summed cross-entropy at ``x``.

- ``ann``: exact backpropagation through the ANN (paper Algorithm 1, ANNAdv).
- ``snnadv``: the paper's Algorithm 2 for SNN sources: X_rate = mean over T of the SNN's Poisson spike
  train of x, attacked on the proxy ANN (the same weights in ANN mode, each layer scaled by its
  threshold). ``base="rate"`` (faithful) starts from X_rate, so the rate noise adds to eps;
  ``base="clean"`` starts from x and stays within eps of it.
- ``bptt``: through the SNN's time dynamics with the surrogate derivative and the straight-through
  encoder (beyond the paper; the stronger attack of later work).
- ``eot(n)``: any source's gradient averaged over n draws of the encoder's randomness.

Usage::

    src = snnadv(net, snn, seed=0)
    x_adv = fgsm(src, x, y, eps=8 / 255)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .arch import Network
from .errors import SpikeAdvError
from .neurons import Spiking, encode


@dataclass(frozen=True)
class Source:
    """A model as an attack sees it. ``logits`` classifies (for least-likely targets); ``grad`` is
    d J(x, labels) / dx with J the summed cross-entropy, averaged over ``draws`` calls of ``logits``
    (each call of a stochastic model draws fresh input spikes); ``base`` the image attacks start from."""

    name: str
    logits: Callable[[Tensor], Tensor]
    base: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    draws: int = 1

    def grad(self, x: Tensor, labels: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        total = torch.zeros_like(x)
        with torch.enable_grad():
            for _ in range(self.draws):
                loss = F.cross_entropy(self.logits(x).float(), labels, reduction="sum")
                total += torch.autograd.grad(loss, x)[0]
        return total / self.draws


def ann(net: Network) -> Source:
    """Exact gradient of the ANN (paper eq. 1 as written)."""
    return Source("ann", net)


def snnadv(net: Network, snn: Spiking, *, seed: int = 0, base: str = "rate") -> Source:
    """Paper Algorithm 2: the proxy ANN (``Network.proxy``) attacked from X_rate = sum_t X_t / T
    (X_t the SNN's input frames: Poisson spikes, or the pixels themselves under direct encoding)."""
    if base not in ("rate", "clean"):
        raise SpikeAdvError(f"snnadv base must be rate or clean, got {base!r}")
    if base == "clean":
        return Source("snnadv-clean", lambda x: net.proxy(x, snn))
    if snn.encoding == "direct":  # every input frame is the image itself: X_rate = x exactly
        return Source("snnadv", lambda x: net.proxy(x, snn))
    gen = torch.Generator().manual_seed(seed)

    def rate(x: Tensor) -> Tensor:
        with torch.no_grad():
            return encode(x, snn.T, snn.encoding, gen.manual_seed(seed)).mean(0)

    return Source("snnadv", lambda x: net.proxy(x, snn), rate)


def bptt(net: Network, snn: Spiking, *, seed: int = 0) -> Source:
    """Backpropagation through time: surrogate derivative at each spike, straight-through encoder.
    Each call draws fresh input spikes from one seeded generator, so a run is reproducible."""
    gen = torch.Generator().manual_seed(seed)
    return Source("bptt", lambda x: net(x, snn, gen))


def eot(source: Source, n: int) -> Source:
    """Expectation over transformation: the mean gradient over ``n`` calls (fresh encoder draws)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise SpikeAdvError(f"eot needs an int n >= 1 of encoder draws, got {n!r}")
    return dataclasses.replace(source, name=f"eot{n}-{source.name}", draws=n)


GRADIENTS = ("ann", "snnadv", "snnadv-clean", "bptt")


def make(name: str, net: Network, snn: Spiking | None, *, seed: int = 0, eot_n: int = 1) -> Source:
    """A source by name: ``ann`` for ANNs; ``snnadv``, ``snnadv-clean`` or ``bptt`` for SNNs;
    ``eot_n`` > 1 averages over encoder draws (an int >= 1)."""
    if name not in GRADIENTS:
        raise SpikeAdvError(f"unknown gradient source {name!r} (known: {', '.join(GRADIENTS)})")
    if (name == "ann") != (snn is None):
        kind = "an ANN" if snn is None else "an SNN"
        raise SpikeAdvError(f"gradient source {name!r} does not apply to {kind}")
    if name == "ann":
        source = ann(net)
    elif name == "bptt":
        source = bptt(net, snn, seed=seed)
    else:
        source = snnadv(net, snn, seed=seed, base="clean" if name == "snnadv-clean" else "rate")
    return source if eot_n == 1 else eot(source, eot_n)
