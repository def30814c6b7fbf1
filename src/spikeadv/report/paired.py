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

- otherwise Wilcoxon's signed-rank test on the per-image differences (zeros dropped, ties given mid
  ranks, the normal approximation with the tie correction; Wilcoxon 1945);
- Holm's step-down adjustment across one family of judgements (Holm 1979);
- for pooled cells, Gail & Simon's test of effects of opposite sign (a qualitative interaction),
  and a hierarchical bootstrap over trained instances, then images, for intervals
  that carry seed variance (Davison & Hinkley 1997, section 3.8).

A claim ``high loses more than low`` is supported when its Holm-adjusted p is below 0.05 and the effect
points its way, contradicted ("not supported") when it points the other way, and otherwise not
distinguishable at this sample size: ties and differences inside the interval are evidence neither way.
Without a family (a single comparison) the bootstrap interval decides, as it did before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ALPHA = 0.05  # the family-wise error rate Holm's adjustment holds
RESAMPLES = 4000
SEED = 0  # fixed: a report regenerates byte for byte

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "not supported", "not distinguishable at this sample size"


@dataclass(frozen=True)
class Paired:
    """``high - low``: the two sides' means (pp of loss or adversarial error; or medians of eps*, in
    ``unit``), their difference, its bootstrap interval over ``n`` images, McNemar's (b, c, p) where it
    applies, the test's two-sided ``p`` and its Holm-adjusted value once a family is formed."""

    low: float
    high: float
    diff: float
    lo: float
    hi: float
    n: int
    mcnemar: tuple[int, int, float] | None = None
    p: float = 1.0
    adjusted: float | None = None  # Holm-adjusted p within its family, once one is formed
    unit: str = " pp"

    @property
    def verdict(self) -> str:
        if self.adjusted is None:
            return SUPPORTED if self.lo > 0 else CONTRADICTED if self.hi < 0 else UNDECIDED
        if self.adjusted >= ALPHA or self.diff == 0:
            return UNDECIDED
        return SUPPORTED if self.diff > 0 else CONTRADICTED

    def test(self) -> str:
        """The test behind the verdict, for a line of the report."""
        name = f"McNemar b={self.mcnemar[0]}, c={self.mcnemar[1]}" if self.mcnemar else "Wilcoxon signed-rank"
        held = "" if self.adjusted is None else f", Holm-adjusted p = {self.adjusted:.3g}"
        return f"{name}, p = {self.p:.3g}{held}"

    def interval(self) -> str:
        return f"{self.diff:+.1f}{self.unit} [{self.lo:+.1f}, {self.hi:+.1f}]"


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
                  lo=100 * lo, hi=100 * hi, n=len(d), mcnemar=test, p=test[2] if test else wilcoxon_p(d))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided p of Wilcoxon's signed-rank test of ``d`` (zeros dropped, mid ranks for ties, normal
    approximation with the tie correction and a continuity correction of 1/2)."""
    d = np.asarray(d, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    magnitude = np.abs(d)
    order = np.argsort(magnitude, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)
    values, inverse, counts = np.unique(magnitude, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # mid ranks
    w = float(ranks[d > 0].sum())
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - float(np.sum(counts**3 - counts)) / 48
    if var <= 0:
        return 1.0
    z = (abs(w - mean) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m is multiplied by
    m - k + 1, then made non-decreasing in that order and capped at 1."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def chi2_sf(x: float, k: int) -> float:
    """P(X > x) for X chi-square with an integer ``k`` >= 1 degrees of freedom (closed forms)."""
    if x <= 0:
        return 1.0
    h = x / 2
    if k % 2 == 0:
        return math.exp(-h) * sum(h**j / math.factorial(j) for j in range(k // 2))
    return math.erfc(math.sqrt(h)) + math.exp(-h) * sum(h ** (j - 0.5) / math.gamma(j + 0.5)
                                                           for j in range(1, (k - 1) // 2 + 1))


def heterogeneity(diffs: Sequence[np.ndarray]) -> tuple[float, float]:
    """Whether pooled cell pairs (each a vector of per-image differences) have effects of opposite sign
    beyond noise: Gail & Simon's (1985) test of a qualitative interaction, min(Q+, Q-) with Q+ (Q-) the sum
    of squared z-scores of the positive (negative) cell effects, and its p under "no crossover" (a binomial
    mixture of chi-square tails). Effects that differ only in size (larger at larger eps) pool."""
    z = []
    for d in diffs:
        se = float(np.std(d, ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else 0.0
        z.append(float(np.mean(d)) / se if se > 0 else 0.0)
    k = len(z)
    if k < 2:
        return 0.0, 1.0
    q = min(sum(v * v for v in z if v > 0), sum(v * v for v in z if v < 0))
    return q, min(1.0, sum(math.comb(k - 1, h) / 2 ** (k - 1) * chi2_sf(q, h) for h in range(1, k)))


def hierarchical(groups: Sequence[np.ndarray], statistic=np.mean, resamples: int = RESAMPLES, seed: int = SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of ``statistic`` (a numpy reduction taking ``axis``) of the pooled values under a
    two-stage bootstrap: draw the instances (``groups``) with replacement, then the images within each
    drawn instance (every group the size of the smallest, so that each resample is one array)."""
    rng = np.random.default_rng(seed)
    n = min(len(g) for g in groups)
    data = np.stack([np.asarray(g, dtype=np.float64)[:n] for g in groups])  # [instances, images]
    stats, chunk = [], max(1, 2**22 // data.size)  # resamples at a time: at most 4M values in memory
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        picked = rng.integers(0, len(groups), (r, len(groups)))
        images = rng.integers(0, n, (r, len(groups), n))
        stats.append(statistic(data[picked[:, :, None], images].reshape(r, -1), axis=1))
    stats = np.concatenate(stats)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)