"""How a model's prediction on an input is judged (DESIGN section 8.4): a Poisson-coded SNN is a
randomised classifier, so its prediction on an input is its expected correctness over K encoder draws
(or, with ``vote``, whether most of K draws fixed in advance are right), with common random numbers:
draw k of image i is the same spike train for the clean input, every adversarial input and every attack,
whatever the batching (:class:`spikeadv.runtime.draws.Draws`). The K draws are folded into the batch: K
forward passes per judged image, never K attacks. Deterministic models (the ANN, direct input) are
judged by one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import runtime
from ..errors import SpikeAdvError
from ..models.foreign import TimeLoop
from ..models.foreign import stochastic as random_input
from ..models.trained import Trained
from ..records.provenance import seed_of
from ..runtime.draws import Draws


@dataclass(frozen=True)
class Judge:
    """``draws`` (K) encoder draws per judged input, ``vote`` a majority of them instead of their mean
    (ties count as wrong), ``seed`` of the draws, ``batch_size`` rows (images x draws) per forward pass,
    ``bf16`` autocast."""

    draws: int = 32
    vote: bool = False
    seed: int = 0
    batch_size: int = 125
    bf16: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise SpikeAdvError(f"K (--draws, encoder draws per judged input) must be an integer >= 1, "
                                f"got {self.draws!r}")


def stochastic(model: Trained) -> bool:
    """Whether the model's prediction is random: Poisson input (spikeadv's SNNs, or a wrapped model that
    says so)."""
    return random_input(model.net, model.snn)


@torch.no_grad()
def expected(model: Trained, x: Tensor, y: Tensor, ids: Tensor, judge: Judge) -> Tensor:
    """Per image, the expected correctness of ``model`` on ``x`` over the judge's K draws (float in
    [0, 1]; 0 or 1 for a deterministic model); ``ids`` name the images (their draws follow the ids, not
    the batch), a :class:`TimeLoop`'s too; any other stochastic model draws from its own generator (no
    common random numbers)."""
    if not stochastic(model):
        return torch.cat([_logits(model, x[i:i + judge.batch_size], None, judge).argmax(1).eq(y[i:i + judge.batch_size])
                          for i in range(0, len(x), judge.batch_size)]).float()
    k, per = judge.draws, max(1, judge.batch_size // judge.draws)
    out = []
    for i in range(0, len(x), per):
        xb, yb, idb = x[i:i + per], y[i:i + per], ids[i:i + per]
        draws = Draws.of(seed_of(judge.seed, "judge"), idb.to(x.device), k)
        logits = _logits(model, xb.repeat(k, 1, 1, 1), draws, judge)
        right = logits.argmax(1).eq(yb.repeat(k)).view(k, len(xb)).float().mean(0)
        out.append((right > 0.5).float() if judge.vote else right)
    return torch.cat(out) if out else torch.zeros(0, device=x.device)


@torch.no_grad()
def classes(model: Trained, x: Tensor, ids: Tensor, judge: Judge) -> Tensor:
    """Predicted classes on each image's first judged draw (targeted attacks' hit rate)."""
    out = []
    for i in range(0, len(x), judge.batch_size):
        draws = Draws.of(seed_of(judge.seed, "judge"), ids[i:i + judge.batch_size].to(x.device), 1)
        out.append(_logits(model, x[i:i + judge.batch_size], draws if stochastic(model) else None, judge).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def _logits(model: Trained, x: Tensor, draws: Draws | None, judge: Judge) -> Tensor:
    """The model's outputs on ``x``, refused in one line where they are not finite (no prediction then)."""
    with runtime.autocast(judge.bf16, x.device):
        if model.snn is not None:
            out = model.net(x, model.snn, draws)
        else:
            out = model.net(x, draws) if isinstance(model.net, TimeLoop) else model.net(x)
        out = out.float()
    if not torch.isfinite(out).all():
        raise SpikeAdvError(f"{model.name} gives non-finite outputs (NaN or inf) on {int((~torch.isfinite(out)).any(1).sum())} "
                            f"of {len(x)} images: its weights or its computation are broken, so it has no prediction")
    return out
