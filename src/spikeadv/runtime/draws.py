"""Counter-based random numbers for the encoder (DESIGN sections 6 and 8.4): a uniform that is a pure
function of (seed, image, draw, timestep, pixel), like JAX's keys. An image's K encoder draws are then
the same whatever the batch it sits in, its position there, the chunking of time and the device, so
the clean input and every adversarial input of an image are judged on the same draws (common random
numbers): a difference of two judgements is the inputs' difference, not the encoder's noise.

The hash is a 32-bit integer finaliser (multiply-xorshift rounds, constant 0x45d9f3b: two for the keys of
image, draw and timestep, one more over each pixel's hash), split into two 16-bit uniforms, computed in
int64 with every product below 2^63, so CPU and CUDA give the same bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

M32 = 0xFFFFFFFF
_MULT = 0x45D9F3B
_GOLDEN = 0x9E3779B  # odd, < 2^28: spreads consecutive counters before they are hashed


def mix(h: Tensor, rounds: int = 2) -> Tensor:
    """A 32-bit hash of each entry of an int64 tensor (entries taken mod 2^32); a new tensor."""
    h = h & M32
    for _ in range(rounds):
        h.bitwise_xor_(h >> 16).mul_(_MULT).bitwise_and_(M32)
    return h.bitwise_xor_(h >> 16)


@dataclass
class Draws:
    """The encoder's uniforms for the rows of one batch: row r is draw ``draw[r]`` of image ``ids[r]``.
    Passed where a generator would be (:func:`spikeadv.models.neurons.encode`); successive calls
    continue in time (``t0``), so chunks of timesteps draw what one call over all T would."""

    seed: int
    ids: Tensor
    draw: Tensor
    t0: int = 0

    @classmethod
    def of(cls, seed: int, ids: Tensor, draws: int) -> Draws:
        """``draws`` draws of each image of ``ids``, draw-major: rows ``k * len(ids) + i``."""
        ids = ids.long()
        return cls(seed, ids.repeat(draws), torch.arange(draws, device=ids.device).repeat_interleave(len(ids)))

    def uniform(self, T: int, shape: torch.Size) -> Tensor:
        """Uniforms in [0, 1) of shape ``[T, *shape]`` (shape's first axis: the rows) for the next T steps,
        16 bits each (resolution 2^-16, below 0.004/255): each 32-bit hash gives two pixels' uniforms."""
        device, pixels = self.ids.device, math.prod(shape[1:])
        if shape[0] != len(self.ids):
            raise ValueError(f"Draws for {len(self.ids)} rows, asked for {shape[0]}")
        key = mix(mix(torch.full_like(self.ids, self.seed & M32) ^ mix(self.ids)) ^ self.draw)  # [B]
        steps = torch.arange(self.t0, self.t0 + T, device=device, dtype=torch.int64)
        key = mix(key[None, :] ^ ((steps[:, None] * _GOLDEN) & M32))  # [T, B]
        self.t0 += T
        pairs = mix(torch.arange((pixels + 1) // 2, device=device, dtype=torch.int64))
        # key and pixel are hashed already: one round decorrelates their XOR (the bulk of the cost)
        h = mix(key[:, :, None] ^ pairs[None, None], rounds=1)  # [T, B, pixels / 2]
        u = torch.cat(((h & 0xFFFF).to(torch.float32), (h >> 16).to(torch.float32)), -1)[..., :pixels]
        return u.mul_(2.0**-16).view(T, *shape)


class Stream:
    """Encoder draws for the successive calls of one stochastic source: call c draws, for row r of its
    batch, draw c of image r (:class:`Draws`). An attack's spikes are then a pure function of (seed,
    call, row, timestep, pixel): the same on the CPU and on CUDA and under any chunking of time."""

    def __init__(self, seed: int) -> None:
        self.seed, self.calls = seed, 0

    def next(self, rows: int, device: torch.device) -> Draws:
        draws = Draws(self.seed, torch.arange(rows, device=device),
                      torch.full((rows,), self.calls, dtype=torch.int64, device=device))
        self.calls += 1
        return draws
