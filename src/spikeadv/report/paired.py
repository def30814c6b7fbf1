"""Paired comparisons of accuracy losses measured on the same images.

Two cells of a run attack the same test images, so their losses are compared image by image: for
each image the difference of its two losses (each in {-1, 0, 1}, or a mean over encoder repeats),
averaged over the cell pairs a comparison pools. The evidence is

- a percentile bootstrap interval of the mean difference over images (Efron & Tibshirani 1993,
  ch. 13), drawn as a multinomial over the distinct per-image differences, which is the same
  distribution as resampling the images and costs nothing for 10,000 of them;
- McNemar's exact test (McNemar 1947) where one pair of binary outcomes on one target is compared:
  b images only the first cell gets wrong, c only the second; p = P(min(b, c) or fewer of b + c fair
  coin flips land one way), two-sided.

A claim ``high loses more than low`` is supported when the interval lies above zero, contradicted
("not supported") when it lies below, and otherwise not distinguishable at this sample size: ties
and differences inside the interval are evidence neither way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 0  # fixed: a report regenerates byte for byte

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "not supported", "not distinguishable at this sample size"


@dataclass(frozen=True)
class Paired:
    """``high - low``: the mean of two sides' losses (pp), their difference, its bootstrap interval
    (pp) over ``n`` images, and McNemar's (b, c, p) where it applies."""

    low: float
    high: float
    diff: float
    lo: float
    hi: float
    n: int
    mcnemar: tuple[int, int, float] | None = None

    @property
    def verdict(self) -> str:
        return SUPPORTED if self.lo > 0 else CONTRADICTED if self.hi < 0 else UNDECIDED

    def interval(self) -> str:
        return f"{self.diff:+.1f} pp [{self.lo:+.1f}, {self.hi:+.1f}]"


def mcnemar_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p for b and c discordant images: 2 P(X <= min(b, c)), X ~ Bin(b + c, 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


def bootstrap(d: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
              confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` under resampling its entries with replacement."""
    values, counts = np.unique(np.asarray(d, dtype=np.float64), return_counts=True)
    n = int(counts.sum())
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    means = draws @ values / n
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def compare(pairs: Sequence[tuple[np.ndarray, np.ndarray]], binary: bool = False) -> Paired:
    """Pool cell pairs (low side, high side), each given as per-image losses on the same images, into
    one paired comparison of ``high - low`` (pp). ``binary``: one pair of 0/1 outcomes on one target,
    where McNemar's test applies to the per-image differences."""
    low = np.mean([a for a, _ in pairs], axis=0)
    high = np.mean([b for _, b in pairs], axis=0)
    d = high - low
    lo, hi = bootstrap(d)
    test = None
    if binary and len(pairs) == 1:
        b, c = int(np.sum(d > 0.5)), int(np.sum(d < -0.5))
        test = (b, c, mcnemar_p(b, c))
    return Paired(low=100 * float(low.mean()), high=100 * float(high.mean()), diff=100 * float(d.mean()),
                  lo=100 * lo, hi=100 * hi, n=len(d), mcnemar=test)
