"""Spiking neurons, surrogate derivatives and the input encoder (paper section III, DESIGN section 2).

A spiking site receives the input currents of all T timesteps at once, ``[T, B, ...]`` (conv and linear
layers ran on the folded ``[T*B, ...]`` batch), and loops over t only for the membrane update:

    v_t = leak * v_{t-1} + I_t,    s_t = H(v_t - V_th),    v_t -= s_t * V_th  (reset by subtraction)
                                                           v_t *= 1 - s_t     (reset to zero)

and, for converted IF neurons, signed spikes (reset ``signed``; the signed neuron with memory of Wang
et al. 2022): s_t = -1 where v_t < 0 and the neuron has net spikes to take back, then v_t -= s_t * V_th.
A neuron's net spike count then follows its cumulative input, max(0, sum_t I_t) / V_th, at every step,
instead of keeping the spikes that input fluctuations drew early on (Poisson input: README).

IF neurons (SNN-I, section III-A) have leak = 1; LIF neurons (SNN-II, section III-B) leak < 1. The
Heaviside step H has a surrogate derivative for backpropagation through time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from ..config.spiking import SURROGATES, Spiking
from ..errors import SpikeAdvError
from ..runtime.distributed import Rows, take
from ..runtime.draws import Draws
from . import kernels

BACKENDS = ("auto", "reference", "triton")
BACKEND = "auto"  # spike_train's default: auto = the Triton kernels where kernels.available(), else the loop


def surrogate_grad(u: Tensor, name: str, alpha: float, out: Tensor | None = None) -> Tensor:
    """dH/du at u = (v - V_th) / V_th, the membrane distance to threshold in units of threshold
    (written into ``out`` if given, else into a new tensor).

    - ``lee``: the paper's eq. 10 (Lee et al. 2019), the derivative of the low-pass filtered spike train,
      approximated as a piecewise-linear bump around threshold, alpha * max(0, 1 - |u|).
    - ``fast-sigmoid``: 1 / (1 + alpha |u|)^2 (Zenke & Ganguli).
    - ``atan``: (alpha / 2) / (1 + (pi alpha u / 2)^2) (Fang et al.).
    - ``triangle``: max(0, 1 - |u| / alpha) / alpha (Bellec et al., Esser et al.).
    - ``rectangular``: alpha where |u| < 1 / (2 alpha), else 0 (Wu et al. 2018; unit area).
    - ``sigmoid``: alpha sig(alpha u) (1 - sig(alpha u)), the derivative of sig(alpha u) (SpikingJelly).
    """
    if name not in SURROGATES:
        raise SpikeAdvError(f"unknown surrogate {name!r} (known: {', '.join(SURROGATES)})")
    out = torch.empty_like(u) if out is None else out  # in place from here on: no temporaries
    if name == "lee":
        return torch.abs(u, out=out).neg_().add_(1).clamp_(min=0).mul_(alpha)
    if name == "fast-sigmoid":
        return torch.abs(u, out=out).mul_(alpha).add_(1).square_().reciprocal_()
    if name == "atan":
        return torch.mul(u, math.pi * alpha / 2, out=out).square_().add_(1).reciprocal_().mul_(alpha / 2)
    if name == "rectangular":
        return torch.abs(u, out=out).lt_(0.5 / alpha).mul_(alpha)
    if name == "sigmoid":
        return torch.mul(u, alpha, out=out).sigmoid_().mul_(torch.sub(1, out)).mul_(alpha)
    return torch.abs(u, out=out).div_(-alpha).add_(1).clamp_(min=0).div_(alpha)  # triangle


Derivative = Callable[[Tensor], Tensor]  # u [T, B, ...] of one spiking site -> dH/du at every element
_DERIVATIVE: ContextVar[Derivative | None] = ContextVar("surrogate_derivative", default=None)


@contextmanager
def adaptive_surrogate(derivative: Derivative) -> Iterator[None]:
    """Within this block every spiking site run with gradients takes its surrogate derivative from
    ``derivative(u)``, called once per site and forward on the whole u [T, B, ...] (a surrogate that
    adapts to the membrane statistics during an attack: ASSG, PDSG; :mod:`spikeadv.attack.surrogates`)
    instead of ``snn.surrogate``; the forward pass is unchanged. The backward pass then runs the
    reference loop (:meth:`_SpikeTrain.temporal`) on the saved derivatives."""
    token = _DERIVATIVE.set(derivative)
    try:
        yield
    finally:
        _DERIVATIVE.reset(token)


def adaptive_active() -> bool:
    """Whether an :func:`adaptive_surrogate` is in force (the network then runs all T steps of a site in
    one call, never recomputed, so the derivative sees each site once per forward)."""
    return _DERIVATIVE.get() is not None


def heaviside(u: Tensor, out: Tensor) -> Tensor:
    """The spike H(u) at u = (v - V_th) / V_th: 0/1 written into ``out`` (any float dtype)."""
    return torch.ge(u, 0, out=out)


class SpikeFn(torch.autograd.Function):
    """Heaviside forward, surrogate derivative backward. Input is u = (v - V_th) / V_th."""

    @staticmethod
    def forward(ctx, u: Tensor, name: str, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.name, ctx.alpha = name, alpha
        return heaviside(u, torch.empty_like(u))

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad * surrogate_grad(u, ctx.name, ctx.alpha), None, None


def _membrane_loop(current: Tensor, v: Tensor, threshold: Tensor, snn: Spiking, u: Tensor | None,
                   count: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The membrane recursion over t, in place on a copy of ``v``; spikes in the currents' dtype (bf16
    currents are added to the float32 membrane exactly). With ``u`` given, u_t = (h_t - V_th) / V_th
    is kept there for the backward pass and the spike is H(u_t); without, it is v >= V_th, the same
    test for V_th > 0. ``count`` (reset ``signed``): each neuron's net spikes so far, updated in place.
    :func:`spikeadv.models.kernels.forward` is the same recursion in one Triton kernel."""
    spikes = torch.empty_like(current)
    v = v.clone()
    for t in range(current.shape[0]):
        if snn.leak != 1:
            v.mul_(snn.leak)
        v.add_(current[t])
        if u is None:
            s = torch.ge(v, threshold, out=spikes[t])
        else:
            s = heaviside(torch.sub(v, threshold, out=u[t]).div_(threshold), spikes[t])
        if count is not None:  # signed: a spike taken back where the membrane fell below zero
            s.sub_(((v < 0) & (count > 0)).to(s.dtype))
            count.add_(s)
        v.addcmul_(s, v if snn.reset == "zero" else threshold, value=-1)  # v - s V_th or v (1 - s)
    return spikes, v


class _SpikeTrain(torch.autograd.Function):
    """The whole neuron loop over T as one autograd node: forward runs the membrane recursion and keeps
    only u_t = (h_t - V_th) / V_th per step (h_t: the membrane before reset); backward runs backprop
    through time over t in reverse without an autograd graph. With s_t = H(u_t), H' the surrogate and
    g_s, g_v the gradients of s_t and of v_t (from step t + 1, or the caller's for the last step):

        subtract: v_t = h_t - s_t V_th  ->  dL/dh_t = g_v + H'(u_t) (g_s / V_th - g_v)
        zero:     v_t = h_t (1 - s_t)   ->  dL/dh_t = g_v (1 - s_t) + H'(u_t) (g_s / V_th - (u_t + 1) g_v)

    and dL/dI_t = dL/dh_t, dL/dv_{t-1} = leak dL/dh_t: the chain rule of the step-by-step loop, term by
    term (reset and leak included). Nothing in it assumes s_t is 0/1, so with :func:`heaviside` swapped
    for a smooth step whose derivative is the surrogate it is that smooth network's exact gradient.

    The rate path (``snn.rate_mix`` = w > 0; BPTR, Ding et al. 2022; RGA, Bu et al. 2023) treats the
    layer as its rate relation r = f(mean_t I_t), with f' = 1 / V_th where the neuron fired in this chunk
    of time and 0 elsewhere, and every s_t as r: dL/dI_t = f' sum_t' g_s_t' / T. The gradient passed
    down is (1 - w) times the temporal one plus w times this (and (1 - w) dL/dv_0).
    """

    @staticmethod
    def forward(ctx, current: Tensor, v: Tensor, threshold: Tensor, snn: Spiking, fused: bool = False,
                count: Tensor | None = None):  # type: ignore[override]
        if fused:  # the Triton kernels (spikeadv.models.kernels): the same arithmetic, one launch
            spikes, v, u = kernels.forward(current, v, threshold, snn, save_u=True, count=count)
        else:
            u = torch.empty_like(current, dtype=v.dtype)  # the currents' memory format (channels_last too)
            spikes, v = _membrane_loop(current, v, threshold, snn, u, count=count)
        derivative = _DERIVATIVE.get()
        ctx.adaptive = derivative is not None
        ctx.save_for_backward(u, threshold, *((derivative(u.detach()),) if ctx.adaptive else ()))
        ctx.snn, ctx.dtype, ctx.fused = snn, current.dtype, fused
        return spikes, v

    @staticmethod
    def backward(ctx, grad_spikes: Tensor, grad_v: Tensor):  # type: ignore[override]
        u, threshold, *derivative = ctx.saved_tensors
        snn: Spiking = ctx.snn
        temporal = kernels.temporal if ctx.fused and not ctx.adaptive else _SpikeTrain.temporal
        if ctx.adaptive:
            temporal = functools.partial(temporal, derivative=derivative[0])
        if snn.rate_mix == 0:
            grad, grad_v0 = temporal(u, threshold, snn, grad_spikes, grad_v)
        else:
            fired = (u >= 0).any(0)
            rate = grad_spikes.to(u.dtype).mean(0).div_(threshold).mul_(fired).mul_(snn.rate_mix)
            if snn.rate_mix == 1:
                grad, grad_v0 = rate.expand_as(u), torch.zeros_like(u[0])
            else:
                grad, grad_v0 = temporal(u, threshold, snn, grad_spikes, grad_v)
                grad = grad.mul_(1 - snn.rate_mix).add_(rate)
                grad_v0 = grad_v0.mul_(1 - snn.rate_mix)
        return grad.to(ctx.dtype), grad_v0 if ctx.needs_input_grad[1] else None, None, None, None, None

    @staticmethod
    def temporal(u: Tensor, threshold: Tensor, snn: Spiking, grad_spikes: Tensor, grad_v: Tensor,
                 derivative: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Backpropagation through time over the saved u_t: (dL/dI_t for every t, dL/dv_0); H'(u_t) the
        surrogate of ``snn``, or ``derivative[t]`` where given (:func:`adaptive_surrogate`)."""
        grad = torch.empty_like(u)  # dL/dI_t = dL/dh_t
        sg, g_v = torch.empty_like(u[0]), grad_v.to(u.dtype)
        leaked = torch.empty_like(sg) if snn.leak != 1 else None
        for t in range(u.shape[0] - 1, -1, -1):
            if derivative is None:
                surrogate_grad(u[t], snn.surrogate, snn.alpha, out=sg)
            else:
                sg.copy_(derivative[t])
            g = grad[t].copy_(grad_spikes[t]).div_(threshold)
            if snn.reset != "zero":  # subtract; signed, its taken-back spikes held constant
                g.sub_(g_v).mul_(sg).add_(g_v)
            else:
                s = heaviside(u[t], torch.empty_like(sg))
                g.sub_((u[t] + 1) * g_v).mul_(sg).add_(g_v * (1 - s))
            g_v = g if leaked is None else torch.mul(g, snn.leak, out=leaked)
        return grad, g_v.clone()


def _fused(backend: str | None, current: Tensor, v: Tensor, threshold: Tensor) -> bool:
    """Whether spike_train runs the Triton kernels: ``auto`` where they are available (CUDA tensors,
    or TRITON_INTERPRET=1) and take the operands, ``triton`` always (an error where they cannot).
    Every reset runs in them, signed spikes included (the count of net spikes updated in place)."""
    backend = BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise SpikeAdvError(f"unknown neuron backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "reference" or (backend == "auto" and not kernels.available(current.device)):
        return False
    if backend == "triton" and not kernels.available(current.device):
        raise SpikeAdvError("the triton neuron backend needs CUDA tensors and triton (or TRITON_INTERPRET=1)")
    if kernels.supports(current, v, threshold):
        return True
    if backend == "triton":
        raise SpikeAdvError(f"the triton neuron backend takes float32/bf16/fp16 currents, a float32 membrane "
                            f"and threshold, got {current.dtype}, {v.dtype}, {threshold.dtype}")
    return False


def backend_on(device: torch.device | str) -> str:
    """The neuron backend :data:`BACKEND` runs on ``device``: ``triton`` (the fused kernels) or
    ``reference`` (the loop); recorded with a run's results."""
    return "triton" if BACKEND != "reference" and kernels.available(device) else "reference"


def spike_train(current: Tensor, threshold: Tensor, v: Tensor | None, snn: Spiking, backend: str | None = None
                ) -> tuple[Tensor, Tensor]:
    """Run one layer of IF/LIF neurons over time: currents ``[T, B, ...]`` -> (spikes ``[T, B, ...]``,
    final membrane potential). ``v`` carries the membrane over from an earlier chunk of time.

    Spikes are 0/1 in the currents' dtype; the membrane is float32 at least (bf16 currents are added
    to it exactly). The threshold scaling of SNN-I lives in the thresholds themselves. With gradients
    enabled the whole loop is one autograd node (:class:`_SpikeTrain`); without, nothing is saved.
    ``backend`` (default :data:`BACKEND`): ``auto``, ``reference`` (the Python loop) or ``triton``
    (:mod:`spikeadv.models.kernels`, the same results).
    """
    dtype = torch.promote_types(current.dtype, torch.float32)  # bf16 currents, float32 membrane
    threshold = torch.as_tensor(threshold, dtype=dtype, device=current.device)
    signed, count = snn.reset == "signed", None
    if signed and v is not None:  # a signed neuron's state: (membrane, net spikes so far)
        v, count = v
    if v is None:
        # in the currents' memory format: mixing channels_last and contiguous operands in the loop's
        # elementwise ops costs 45% of a channels_last SNN-II training step
        v = torch.zeros_like(current[0], dtype=dtype)
        if snn.v_init:
            v.add_(threshold.detach() * snn.v_init)
    if signed:
        count = torch.zeros_like(v) if count is None else count.clone()
    fused = _fused(backend, current, v, threshold)
    if torch.is_grad_enabled() and (current.requires_grad or v.requires_grad):
        spikes, v = _SpikeTrain.apply(current, v, threshold.detach(), snn, fused, count)
    else:
        with torch.no_grad():
            spikes, v = (kernels.forward(current, v, threshold, snn, save_u=False, count=count)[:2] if fused
                         else _membrane_loop(current, v, threshold, snn, None, count))
    return spikes, ((v, count) if signed else v)


class _StraightThrough(torch.autograd.Function):
    """Bernoulli spikes forward; identity backward, so d s_t / d x = 1 for every timestep."""

    @staticmethod
    def forward(ctx, x: Tensor, T: int, generator: torch.Generator | Draws | None, rows: Rows | None
                ) -> Tensor:  # type: ignore[override]
        p = x.clamp(0, 1).unsqueeze(0).expand(T, *x.shape)
        if isinstance(generator, Draws):  # counter-based: a pure function of (image, draw, t, pixel)
            return (generator.uniform(T, x.shape).to(x.dtype) < p).to(x.dtype)
        n = rows.total if rows else x.shape[0]
        u = torch.rand((T, n, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        u = take(u, rows, 1).contiguous()  # the global batch's draw, laid out as one process's
        return (u < p).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad.sum(0), None, None, None


def encode(x: Tensor, T: int, encoding: str = "poisson", generator: torch.Generator | Draws | None = None,
           rows: Rows | None = None) -> Tensor:
    """Pixels ``[B, C, H, W]`` in [0, 1] -> input ``[T, B, C, H, W]``.

    ``poisson``: s_t ~ Bernoulli(x) independently per step, so mean_t(s_t) -> x (rate coding, paper III-B);
    the backward pass is straight-through. ``direct``: the analog pixels at every step. ``generator`` may
    be counter-based :class:`spikeadv.runtime.draws.Draws` (the same spikes whatever the batching).
    The caller's tensor is never modified in place. With ``rows``, x is that share of a global batch
    (data-parallel training) and the spikes are drawn for the global batch.
    """
    if encoding == "poisson":
        return _StraightThrough.apply(x, T, generator, rows)
    if encoding == "direct":
        return x.unsqueeze(0).expand(T, *x.shape)
    raise SpikeAdvError(f"unknown encoding {encoding!r} (known: poisson, direct)")
