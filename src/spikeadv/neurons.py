"""Spiking neurons, surrogate derivatives and the input encoder (paper section III, DESIGN section 2).

A spiking site receives the input currents of all T timesteps at once, ``[T, B, ...]`` (conv and linear
layers ran on the folded ``[T*B, ...]`` batch), and loops over t only for the membrane update:

    v_t = leak * v_{t-1} + I_t,    s_t = H(v_t - V_th),    v_t -= s_t * V_th  (reset by subtraction)
                                                           v_t *= 1 - s_t     (reset to zero)

IF neurons (SNN-I, section III-A) have leak = 1; LIF neurons (SNN-II, section III-B) leak < 1. The
Heaviside step H has a surrogate derivative for backpropagation through time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import SpikeAdvError

SURROGATES = ("lee", "fast-sigmoid", "atan", "triangle")


def surrogate_grad(u: Tensor, name: str, alpha: float) -> Tensor:
    """dH/du at u = (v - V_th) / V_th, the membrane distance to threshold in units of threshold.

    - ``lee``: the paper's eq. 10 (Lee et al. 2019), the derivative of the low-pass filtered spike train,
      approximated as a piecewise-linear bump around threshold, alpha * max(0, 1 - |u|).
    - ``fast-sigmoid``: 1 / (1 + alpha |u|)^2 (Zenke & Ganguli).
    - ``atan``: (alpha / 2) / (1 + (pi alpha u / 2)^2) (Fang et al.).
    - ``triangle``: max(0, 1 - |u| / alpha) / alpha (Bellec et al., Esser et al.).
    """
    if name == "lee":
        return alpha * (1 - u.abs()).clamp(min=0)
    if name == "fast-sigmoid":
        return 1 / (1 + alpha * u.abs()) ** 2
    if name == "atan":
        return (alpha / 2) / (1 + (math.pi * alpha * u / 2) ** 2)
    if name == "triangle":
        return (1 - u.abs() / alpha).clamp(min=0) / alpha
    raise SpikeAdvError(f"unknown surrogate {name!r} (known: {', '.join(SURROGATES)})")


class SpikeFn(torch.autograd.Function):
    """Heaviside forward, surrogate derivative backward. Input is u = (v - V_th) / V_th."""

    @staticmethod
    def forward(ctx, u: Tensor, name: str, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.name, ctx.alpha = name, alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad * surrogate_grad(u, ctx.name, ctx.alpha), None, None


@dataclass(frozen=True)
class Spiking:
    """How a weight set runs as an SNN (DESIGN section 2).

    ``neuron``: ``if`` (SNN-I, no leak) or ``lif`` (SNN-II, v <- leak * v + I). ``T`` timesteps;
    ``reset`` by ``subtract`` (default) or to ``zero``; the surrogate derivative and its sharpness
    ``alpha``; input ``encoding`` ``poisson`` (rate coding) or ``direct``; ``spike_after_pool``: a
    spiking neuron after each average pooling (the authors' code) or averaged spikes passed on;
    ``chunk``: timesteps folded into one batch per call (0 = as many as keep t * B <= arch.MAX_FOLD).
    """

    neuron: str = "if"
    T: int = 32
    leak: float = 1.0
    reset: str = "subtract"
    surrogate: str = "fast-sigmoid"
    alpha: float = 4.0
    encoding: str = "poisson"
    spike_after_pool: bool = True
    chunk: int = 0

    def __post_init__(self) -> None:
        if self.neuron not in ("if", "lif"):
            raise SpikeAdvError(f"neuron must be if or lif, got {self.neuron!r}")
        if self.T < 1:
            raise SpikeAdvError(f"T (timesteps) must be >= 1, got {self.T}")
        if not 0 < self.leak <= 1:
            raise SpikeAdvError(f"leak must be in (0, 1], got {self.leak}")
        if self.neuron == "if" and self.leak != 1:
            raise SpikeAdvError(f"IF neurons have no leak (leak = 1); use neuron=lif for leak {self.leak}")
        if self.reset not in ("subtract", "zero"):
            raise SpikeAdvError(f"reset must be subtract or zero, got {self.reset!r}")
        if self.surrogate not in SURROGATES:
            raise SpikeAdvError(f"unknown surrogate {self.surrogate!r} (known: {', '.join(SURROGATES)})")
        if self.alpha <= 0 or self.chunk < 0:
            raise SpikeAdvError("alpha must be > 0 and chunk >= 0")
        if self.encoding not in ("poisson", "direct"):
            raise SpikeAdvError(f"unknown encoding {self.encoding!r} (known: poisson, direct)")


def spike_train(current: Tensor, threshold: Tensor, v: Tensor | None, snn: Spiking) -> tuple[Tensor, Tensor]:
    """Run one layer of IF/LIF neurons over time: currents ``[T, B, ...]`` -> (spikes ``[T, B, ...]``,
    final membrane potential). ``v`` carries the membrane over from an earlier chunk of time.

    Spikes are 0/1; the threshold scaling of SNN-I lives in the thresholds themselves.
    """
    dtype = torch.promote_types(current.dtype, torch.float32)  # bf16 currents, float32 membrane
    v = torch.zeros_like(current[0], dtype=dtype) if v is None else v
    spikes = []
    for i_t in current:
        v = snn.leak * v + i_t.to(dtype) if snn.leak != 1 else v + i_t.to(dtype)
        s = SpikeFn.apply((v - threshold) / threshold, snn.surrogate, snn.alpha)
        v = v - s * threshold if snn.reset == "subtract" else v * (1 - s)
        spikes.append(s)
    return torch.stack(spikes).to(current.dtype), v


class _StraightThrough(torch.autograd.Function):
    """Bernoulli spikes forward; identity backward, so d s_t / d x = 1 for every timestep."""

    @staticmethod
    def forward(ctx, x: Tensor, T: int, generator: torch.Generator | None) -> Tensor:  # type: ignore[override]
        p = x.clamp(0, 1).unsqueeze(0).expand(T, *x.shape)
        u = torch.rand(p.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (u < p).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad.sum(0), None, None


def encode(x: Tensor, T: int, encoding: str = "poisson", generator: torch.Generator | None = None) -> Tensor:
    """Pixels ``[B, C, H, W]`` in [0, 1] -> input ``[T, B, C, H, W]``.

    ``poisson``: s_t ~ Bernoulli(x) independently per step, so mean_t(s_t) -> x (rate coding, paper III-B);
    the backward pass is straight-through. ``direct``: the analog pixels at every step.
    The caller's tensor is never modified in place.
    """
    if encoding == "poisson":
        return _StraightThrough.apply(x, T, generator)
    if encoding == "direct":
        return x.unsqueeze(0).expand(T, *x.shape)
    raise SpikeAdvError(f"unknown encoding {encoding!r} (known: poisson, direct)")
