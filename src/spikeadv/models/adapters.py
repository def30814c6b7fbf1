"""Spiking neurons of other libraries (SpikingJelly, snnTorch, Norse) inside a user's network: found by
the attribute each library calls to spike, so an attack can swap the surrogate derivative of every
neuron (:func:`swapped`, the forward pass unchanged) and restore it afterwards, and a network is attacked
in eval mode with its buffers left as they were (:func:`attacking`).

Each library spikes through one call on x = v - V_th, in its own units:

- SpikingJelly: ``neuron.surrogate_function(x)`` (an object of ``spikingjelly.activation_based.surrogate``),
- snnTorch: ``neuron.spike_grad(x)`` (a function of ``snntorch.surrogate``),
- Norse: ``threshold(x, p.method, p.alpha)`` with the neuron's parameters ``p`` (``LIFParameters`` ...).

A swapped neuron keeps its library's own spikes (its Heaviside, with its convention at x = 0) and takes
the derivative ``derivative(x)`` in the backward pass, computed in the forward pass on the x of the
current iterate; a ``stateful`` derivative is one per neuron, fed the neuron's x step by step within
a forward pass (a surrogate shaped by the membrane's statistics over time: PDSG).
The surrogates apply to the library's own x, as the libraries' surrogates and the papers' do: ``atan``
with alpha 2 here is SpikingJelly's ``ATan(alpha=2)`` and snnTorch's ``atan(alpha=2)``.

Usage::

    with swapped(net, lambda x: surrogate_grad(x, "sigmoid", 4.0)):
        loss = F.cross_entropy(net(x), y)          # spikes as before, sigmoid surrogate backward
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SpikeAdvError

LIBRARIES = ("spikingjelly", "snntorch", "norse")
_NORSE_TOKEN = "spikeadv:"  # a Norse method name that :func:`_norse_threshold` routes to a swapped neuron
_NORSE_SWAPS: dict[str, Callable[[Tensor], Tensor]] = {}
_tokens = itertools.count()
_ABSENT = object()


def library(module: nn.Module) -> str | None:
    """The library a module's class comes from (of :data:`LIBRARIES`), else None."""
    root = type(module).__module__.partition(".")[0]
    return root if root in LIBRARIES else None


@dataclass(frozen=True)
class Neuron:
    """One spiking neuron module of a library, with the attribute its spike goes through."""

    module: nn.Module
    library: str

    @property
    def attribute(self) -> str:
        return {"spikingjelly": "surrogate_function", "snntorch": "spike_grad", "norse": "p"}[self.library]


def neurons(net: object) -> list[Neuron]:
    """Every spiking neuron of a known library in ``net`` (a module, or a wrapper holding one)."""
    if not isinstance(net, nn.Module):
        return []
    out = []
    for m in net.modules():
        lib = library(m)
        if lib == "spikingjelly" and callable(getattr(m, "surrogate_function", None)):
            out.append(Neuron(m, lib))
        elif lib == "snntorch" and callable(getattr(m, "spike_grad", None)):
            out.append(Neuron(m, lib))
        elif lib == "norse" and hasattr(getattr(m, "p", None), "method") and hasattr(m.p, "_replace"):
            out.append(Neuron(m, lib))
    return out


def libraries(net: object) -> list[str]:
    """The libraries whose neurons ``net`` holds, in order of appearance."""
    return list(dict.fromkeys(n.library for n in neurons(net)))


class _Swapped(torch.autograd.Function):
    """The library's own spikes ``own(x)`` forward; ``slope``, computed in the forward pass, backward."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: Tensor, own: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(slope)
        return own(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope.to(grad.dtype), None, None


class _Spike:
    """A swapped neuron's spike function: ``own`` (the library's) forward, ``derivative`` backward."""

    def __init__(self, own: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor]) -> None:
        self.own, self.derivative = own, derivative

    def __call__(self, x: Tensor) -> Tensor:
        if not x.requires_grad:
            return self.own(x)
        with torch.no_grad():
            slope = self.derivative(x.detach().float())
        return _Swapped.apply(x, slope, self.own)


def _norse_threshold(original: Callable) -> Callable:
    def threshold(x: Tensor, method: str, alpha: float) -> Tensor:
        swap = _NORSE_SWAPS.get(method) if isinstance(method, str) else None
        return swap(x) if swap is not None else original(x, method, alpha)

    threshold.spikeadv_original = original
    return threshold


def _route_norse() -> None:
    """Norse's functional modules call ``threshold`` by name: route those calls through
    :func:`_norse_threshold`, which leaves every method but a swapped neuron's token as it was."""
    for name, module in list(sys.modules.items()):
        fn = getattr(module, "threshold", None) if name.startswith("norse.torch.functional") else None
        if callable(fn) and not hasattr(fn, "spikeadv_original"):
            module.threshold = _norse_threshold(fn)


def _own(neuron: Neuron) -> Callable[[Tensor], Tensor]:
    """The library's own spike function of ``neuron`` (for Norse: its threshold with its method)."""
    if neuron.library != "norse":
        return getattr(neuron.module, neuron.attribute)
    from norse.torch.functional.threshold import threshold
    p = neuron.module.p
    return lambda x: getattr(threshold, "spikeadv_original", threshold)(x, p.method, p.alpha)


@contextmanager
def swapped(net: object, derivative: Callable[[Tensor], Tensor], stateful: bool = False) -> Iterator[None]:
    """Within this block every library neuron of ``net`` spikes as before and backpropagates
    ``derivative(x)`` (x = v - V_th); with ``stateful``, ``derivative`` is a factory and each neuron gets
    its own ``derivative()``, fed its steps in turn (PDSG's running statistics over time); restored on
    exit, on error too."""
    found = neurons(net)
    if not found:
        raise SpikeAdvError("this model has no SpikingJelly, snnTorch or Norse neuron whose surrogate spikeadv "
                            "can swap; attack it through its own autograd (estimator ann)")
    saved = []  # (neuron, what its instance dict held: the attribute's value, or nothing)
    try:
        for n in found:
            spike = _Spike(_own(n), derivative() if stateful else derivative)
            saved.append((n, n.module.__dict__.get(n.attribute, _ABSENT)))
            if n.library == "norse":
                _route_norse()
                token = f"{_NORSE_TOKEN}{next(_tokens)}"
                _NORSE_SWAPS[token] = spike
                object.__setattr__(n.module, "p", n.module.p._replace(method=token))
            else:  # in the instance dict, before torch's submodules (SpikingJelly's surrogate is one)
                object.__setattr__(n.module, n.attribute, spike)
        yield
    finally:
        for n, value in saved:
            if n.library == "norse":
                _NORSE_SWAPS.pop(n.module.p.method, None)
            if value is _ABSENT:
                del n.module.__dict__[n.attribute]
            else:
                object.__setattr__(n.module, n.attribute, value)


def through(net: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor],
            stateful: bool = False) -> Callable[[Tensor], Tensor]:
    """``net``'s logits with every library neuron backpropagating ``derivative`` (:func:`swapped`; a new
    swap, so new per-neuron state, per forward pass); a derivative with a ``begin(x)`` method (ASSG) is told of
    each forward pass first. Without gradients, ``net`` as it is."""
    def logits(x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return net(x)
        if hasattr(derivative, "begin"):
            derivative.begin(x)
        with swapped(net, derivative, stateful):
            return net(x)

    return logits


def reset(net: nn.Module) -> None:
    """Every library neuron's state back to its start (SpikingJelly ``reset()``, snnTorch ``reset_mem()``;
    Norse keeps no state in its modules): the default reset of :class:`.foreign.TimeLoop`."""
    for n in neurons(net):
        if n.library == "spikingjelly" and hasattr(n.module, "reset"):
            n.module.reset()
        elif n.library == "snntorch" and hasattr(n.module, "reset_mem"):
            n.module.reset_mem()


@contextmanager
def attacking(net: object) -> Iterator[bool]:
    """``net`` in eval mode within this block (dropout off, batch norm on its running statistics) and
    every module's mode restored on exit; yields whether it was in train mode. Its persistent buffers
    (batch-norm statistics, counters) must come out as they went in: an attack that changed them would
    have judged a moving model, so that is refused (and they are restored)."""
    if not isinstance(net, nn.Module):
        yield False
        return
    modes = [(m, m.training) for m in net.modules()]
    params = {k for k, _ in net.named_parameters()}
    before = {k: v.detach().clone() for k, v in net.state_dict().items() if k not in params}
    net.eval()
    try:
        yield any(training for _, training in modes)
    finally:
        for m, training in modes:
            m.train(training)
        after = {k: v for k, v in net.state_dict().items() if k in before}
        changed = [k for k, v in before.items() if not torch.equal(after[k].detach(), v)]
        with torch.no_grad():
            for k in changed:
                after[k].copy_(before[k])
    if changed:
        raise SpikeAdvError(f"the model changed its buffers while it was attacked in eval mode ({', '.join(changed[:3])}"
                            f"{' ...' if len(changed) > 3 else ''}); its outputs depend on what it has seen, so no "
                            "number about it would hold (buffers restored)")
