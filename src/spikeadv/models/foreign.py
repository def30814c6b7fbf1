"""Models spikeadv did not build: any ``torch.nn.Module`` or callable that maps images in [0, 1] to logits
(:func:`as_model`), and :class:`TimeLoop`, which turns an SNN of another library (SpikingJelly, snnTorch,
Norse) into one, handling its time dimension, input encoding and state reset. ``spikeadv.evaluate``
(:func:`spikeadv.study.evaluation.evaluate_model`) attacks them.

Usage::

    from spikeadv import TimeLoop, evaluate
    from spikingjelly.activation_based import functional
    model = TimeLoop(sj_net, T=8, reset=functional.reset_net, encoding="poisson")
    card = evaluate(model, x, y, eps=(2, 8), suite="quick")    # x in [0, 1], an eps grid in 1/255 units
    print(card["eps"]["8"]["worst_acc"], [c["name"] for c in card["checks"] if c["passed"] is False])

The model is attacked through its own autograd (estimator ``ann``: whatever backward its spiking
neurons define, straight through the encoder), averaged over encoder draws with ``ann:eot=n``, and by
Square from its scores alone. Put it in eval mode first, and make sure its neurons give input gradients
there (SpikingJelly issue 386).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import runtime
from ..records import checkpoint
from .neurons import encode
from .trained import Trained


class TimeLoop(nn.Module):
    """An SNN of another library as an image classifier: ``reset(module)`` (its state), then T input
    frames (``direct``: the image each step; ``poisson``: Bernoulli spikes, straight-through backward,
    from this wrapper's own seeded generator), logits = mean over t of its outputs. ``multistep``: the
    module takes all frames at once, ``[T, B, ...]`` -> ``[T, B, classes]`` (SpikingJelly's multi-step
    mode); otherwise it is called once per step (snnTorch, SpikingJelly single-step)."""

    def __init__(self, module: nn.Module, T: int, *, reset: Callable[[nn.Module], object] | None = None,
                 encoding: str = "direct", multistep: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.module, self.T, self.reset, self.encoding, self.multistep = module, T, reset, encoding, multistep
        self.generator: torch.Generator | None = None
        self.seed = seed

    @property
    def stochastic(self) -> bool:
        """Poisson input: each call draws fresh spikes (attacks then trust no single draw)."""
        return self.encoding == "poisson"

    def forward(self, x: Tensor) -> Tensor:
        if self.generator is None or self.generator.device != x.device:
            self.generator = runtime.generator(self.seed, x.device)
        if self.reset is not None:
            self.reset(self.module)
        frames = encode(x, self.T, self.encoding, self.generator)
        if self.multistep:
            return self.module(frames).mean(0)
        return sum(self.module(frames[t]) for t in range(self.T)) / self.T


def as_model(model: nn.Module | Callable[[Tensor], Tensor], name: str = "model") -> Trained:
    """A model to evaluate: spikeadv's own as it is, anything else as a classifier of images in [0, 1]
    (its digest covers a module's weights, so cached units follow the weights)."""
    if isinstance(model, Trained):
        return model
    weights = model.state_dict() if isinstance(model, nn.Module) else {}
    digest = checkpoint.tensors_digest({k: v.detach().cpu() for k, v in weights.items()}, f"{type(model).__name__}")
    return Trained("model", 0, model, None, Path(name), digest, {})
