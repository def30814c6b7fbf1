"""Models spikeadv did not build: any ``torch.nn.Module`` or callable that maps images in [0, 1] to logits
(:func:`as_model`), and :class:`TimeLoop`, which turns an SNN of another library (SpikingJelly, snnTorch,
Norse) into one, handling its time dimension, input encoding and state reset. ``spikeadv.evaluate``
(:func:`spikeadv.study.yours.evaluate_model`) attacks them.

Usage::

    from spikeadv import TimeLoop, evaluate
    from spikingjelly.activation_based import functional
    model = TimeLoop(sj_net, T=8, reset=functional.reset_net, encoding="poisson")
    card = evaluate(model, x, y, eps=(2 / 255, 8 / 255), suite="quick")  # x in [0, 1], eps in pixel units
    print(card["eps"]["8"]["worst_acc"], [c["name"] for c in card["checks"] if c["passed"] is False])

The model is attacked through its own autograd (estimator ``ann``: whatever backward its spiking
neurons define, straight through the encoder), and, where its neurons are SpikingJelly's, snnTorch's or
Norse's, through every surrogate estimator (``bptt`` with any shape and sharpness, ``assg``, ``pdsg``,
``mdse``: :mod:`.adapters` swaps the neurons' surrogates), averaged over encoder draws on Poisson input,
and by Square from its scores alone. It is attacked in eval mode (its mode restored afterwards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config.spiking import Spiking
from ..errors import SpikeAdvError
from ..records import checkpoint
from ..runtime.draws import Draws, Stream
from . import adapters
from .neurons import encode
from .trained import Trained

PROBE = 8  # images in the fixed probe batch whose outputs fingerprint a model's function


class TimeLoop(nn.Module):
    """An SNN of another library as an image classifier: ``reset(module)`` (its state; by default every
    SpikingJelly and snnTorch neuron's, :func:`.adapters.reset`), then T input frames (``direct``: the image
    each step; ``poisson``: Bernoulli spikes, straight-through backward, from this wrapper's own seeded
    counter-based stream), logits = mean over t of its outputs. ``multistep``: the module takes all
    frames at once, ``[T, B, ...]`` -> ``[T, B, classes]`` (SpikingJelly's multi-step mode, Norse's
    ``LIF``); otherwise it is called once per step (snnTorch, SpikingJelly single-step, Norse cells). A
    module that returns ``(output, state)`` has its output taken; a Norse module gets its state back at
    the next step (Norse keeps state outside its modules)."""

    def __init__(self, module: nn.Module, T: int, *, reset: Callable[[nn.Module], object] | None = None,
                 encoding: str = "direct", multistep: bool = False, seed: int = 0) -> None:
        super().__init__()
        Spiking(T=T, encoding=encoding)  # T and the encoding refused here, in one line, not at the first forward
        if reset is not None and not callable(reset):
            raise SpikeAdvError(f"reset must be a function of the module (e.g. functional.reset_net), got {reset!r}")
        self.libraries = adapters.libraries(module)
        reset = adapters.reset if reset is None and self.libraries else reset
        self.module, self.T, self.reset, self.encoding, self.multistep = module, T, reset, encoding, multistep
        self.seed = seed
        self.stream = Stream(seed)

    def config(self) -> dict:
        """What this wrapper adds to its module's function (part of the model's identity)."""
        reset = None if self.reset is None else getattr(self.reset, "__qualname__", repr(self.reset))
        return {"T": self.T, "encoding": self.encoding, "multistep": self.multistep, "seed": self.seed, "reset": reset}

    def restart(self) -> None:
        """Encoder draws from the start of this wrapper's seeded stream again."""
        self.stream = Stream(self.seed)

    @property
    def stochastic(self) -> bool:
        """Poisson input: each call draws fresh spikes (attacks then trust no single draw)."""
        return self.encoding == "poisson"

    def forward(self, x: Tensor, draws: Draws | None = None) -> Tensor:
        """Logits of images ``x``; Poisson spikes from ``draws`` where given (the judge's common random
        numbers: image i's draws follow its id), else the next of this wrapper's stream."""
        if self.reset is not None:
            self.reset(self.module)
        frames = encode(x, self.T, self.encoding, draws if draws is not None else self.stream.next(len(x), x.device))
        if self.multistep:
            return _output(self.module(frames)).mean(0)
        total, state = 0, None
        for t in range(self.T):
            if "norse" in self.libraries:
                out, state = self.module(frames[t], state)
            else:
                out = _output(self.module(frames[t]))
            total = total + out
        return total / self.T


def _output(out: Tensor | tuple) -> Tensor:
    """A module's output: itself, or the first of ``(output, state)`` (Norse, snnTorch's ``output=True``)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def as_model(model: nn.Module | Callable[[Tensor], Tensor], name: str = "model") -> Trained:
    """A model to evaluate: spikeadv's own as it is, anything else as a classifier of images in [0, 1];
    :func:`identified` gives either the digest its cached results are keyed by."""
    if isinstance(model, Trained):
        return model
    return Trained("model", 0, model, None, Path(name), "", {}, label=name)


def stochastic(net: object, snn: Spiking | None = None) -> bool:
    """Whether a model's prediction is random: spikeadv's SNN on Poisson input, or a network that says it
    is ``stochastic`` (a :class:`TimeLoop` on Poisson input)."""
    return snn.encoding == "poisson" if snn is not None else bool(getattr(net, "stochastic", False))


def runs_as(model: Trained) -> str:
    """How a model runs, in words, for its card: spikeadv's SNN settings, a wrapped library SNN's, or ANN."""
    if model.snn is not None:
        return f"{model.snn.neuron.upper()}, T={model.snn.T}, {model.snn.encoding} input"
    net = model.net
    if isinstance(net, TimeLoop):
        made = " and ".join(net.libraries) or "own-neuron"
        return f"{made} SNN (TimeLoop), T={net.T}, {net.encoding} input"
    libs = adapters.libraries(net)
    return f"{' and '.join(libs)} SNN" if libs else "ANN"


def identified(model: Trained, like: Tensor) -> Trained:
    """``model`` with a digest of the function it computes now, the key of its cached results: its
    weights and buffers as they are (not as a file once held them), its type and configuration (a
    :class:`TimeLoop`'s T, encoding and reset; an SNN's settings, a T override included) and its outputs
    on a fixed probe batch shaped like ``like``, which tells apart what the rest cannot see (a function
    around another network, a changed closure). A :class:`TimeLoop` restarts its seeded draws here."""
    net = model.net
    state = net.state_dict() if isinstance(net, nn.Module) else {}
    how = {"type": f"{type(net).__module__}.{type(net).__qualname__}",
           "code": repr(net) if isinstance(net, nn.Module) else getattr(net, "__qualname__", ""),
           "wrapper": net.config() if isinstance(net, TimeLoop) else None,
           "runs": dataclasses.asdict(model.snn) if model.snn else None, "outputs": _probe(model, like)}
    tensors = {k: v.detach().cpu() for k, v in state.items()}
    return dataclasses.replace(model, sha256=checkpoint.tensors_digest(tensors, json.dumps(how, sort_keys=True)))


@torch.no_grad()
def _probe(model: Trained, like: Tensor) -> str:
    """The digest of ``model``'s outputs (to 3 decimals) on PROBE fixed uniform images shaped like ``like``;
    random draws are fixed too: an SNN's by image, torch's global generator's and a TimeLoop's by seed."""
    probe = torch.rand((PROBE, *like.shape[1:]), generator=torch.Generator().manual_seed(0)).to(like.device, like.dtype)
    if isinstance(model.net, TimeLoop):
        model.net.restart()
    with torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []):
        torch.manual_seed(0)
        if model.snn is None:
            out = model.net(probe)
        else:
            out = model.net(probe, model.snn, Draws.of(0, torch.arange(PROBE, device=like.device), 1))
    if isinstance(model.net, TimeLoop):
        model.net.restart()
    return hashlib.sha256(out.float().round(decimals=3).cpu().numpy().tobytes()).hexdigest()
