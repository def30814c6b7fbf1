"""Paired statistics on cells of known per-image outcomes: McNemar's exact test and the bootstrap."""

import math

import numpy as np
import pytest

from spikeadv.report.paired import CONTRADICTED, SUPPORTED, UNDECIDED, bootstrap, compare, mcnemar_p


def outcomes(n=100, high_only=20, low_only=5):
    """Per-image losses of two cells on one target: ``high_only`` images lost only by the high side,
    ``low_only`` only by the low side, 10 by both, the rest by neither."""
    low, high = np.zeros(n), np.zeros(n)
    high[:high_only] = 1
    low[high_only:high_only + low_only] = 1
    both = slice(high_only + low_only, high_only + low_only + 10)
    low[both] = high[both] = 1
    return low, high


def exact_quantiles(n, p_up, p_down, q):
    """Exact quantiles (pp) of the bootstrap distribution of the mean of a three-valued difference (+1 with
    p_up, -1 with p_down, else 0): its resampled counts are multinomial, enumerated here."""
    log = lambda k: math.lgamma(k + 1)  # noqa: E731
    dist = {}
    for up in range(n + 1):
        for down in range(n + 1 - up):
            rest = n - up - down
            logp = log(n) - log(up) - log(down) - log(rest)
            logp += (up * math.log(p_up) if up else 0) + (down * math.log(p_down) if down else 0)
            logp += rest * math.log(1 - p_up - p_down)
            dist[up - down] = dist.get(up - down, 0.0) + math.exp(logp)
    values = sorted(dist)
    cdf = np.cumsum([dist[v] for v in values])
    return [100 * values[int(np.searchsorted(cdf, level))] / n for level in q]


def test_mcnemar_exact_p_by_hand():
    # b = 20, c = 5: 2 * (C(25,0) + ... + C(25,5)) / 2^25 = 2 * 68406 / 33554432
    assert mcnemar_p(20, 5) == pytest.approx(2 * 68406 / 2**25) == pytest.approx(0.0040773, rel=1e-4)
    assert mcnemar_p(5, 20) == mcnemar_p(20, 5)
    assert mcnemar_p(7, 7) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(9, 0) == pytest.approx(2 / 2**9)


def test_known_pair_gives_the_known_difference_interval_and_mcnemar():
    low, high = outcomes()
    p = compare([(low, high)], binary=True)
    assert p.n == 100 and p.low == pytest.approx(15.0) and p.high == pytest.approx(30.0)
    assert p.diff == pytest.approx(15.0)
    assert p.mcnemar == (20, 5, pytest.approx(mcnemar_p(20, 5)))
    # The interval is the 2.5% and 97.5% quantiles of the exact bootstrap distribution (a lattice of
    # 1 pp steps); the Monte Carlo estimate from 4000 draws has a standard error of about 0.2 pp there
    # (sqrt(0.025 * 0.975 / 4000) over the density 0.0122 per pp), so one lattice step is the tolerance.
    lo, hi = exact_quantiles(100, 0.20, 0.05, (0.025, 0.975))
    assert p.lo == pytest.approx(lo, abs=1.0) and p.hi == pytest.approx(hi, abs=1.0)
    assert 4 < p.lo < 15 < p.hi < 26  # about 15 +- 1.96 * 4.77 pp (normal approximation)
    assert p.verdict == SUPPORTED
    # the claim the other way round is contradicted with the mirrored interval
    q = compare([(high, low)], binary=True)
    assert (q.diff, q.lo, q.hi) == pytest.approx((-15.0, -p.hi, -p.lo), abs=1.0) and q.verdict == CONTRADICTED
    assert q.mcnemar[:2] == (5, 20)


def test_cells_computed_by_the_same_function_are_not_distinguishable():
    low, _ = outcomes()
    p = compare([(low, low.copy())], binary=True)
    assert (p.diff, p.lo, p.hi) == (0.0, 0.0, 0.0) and p.mcnemar == (0, 0, 1.0)
    assert p.verdict == UNDECIDED


def test_a_small_difference_is_not_evidence():
    low, high = outcomes(n=100, high_only=3, low_only=1)  # 2 pp on 100 images: noise
    p = compare([(low, high)], binary=True)
    assert p.diff == pytest.approx(2.0) and p.lo <= 0 <= p.hi and p.verdict == UNDECIDED


def test_pooling_averages_per_image_and_repeats_are_not_binary():
    low, high = outcomes()
    assert compare([(low, high), (low, high)]).diff == pytest.approx(15.0)
    pooled = compare([(low, high), (high, low)], binary=True)  # the two cancel image by image
    assert (pooled.diff, pooled.lo, pooled.hi, pooled.mcnemar) == (0.0, 0.0, 0.0, None)
    repeated = compare([((low + high) / 2, high)], binary=False)
    assert repeated.mcnemar is None and repeated.diff == pytest.approx(7.5)


def test_bootstrap_is_seeded_and_matches_resampling_images():
    d = np.repeat([1.0, -1.0, 0.0, 0.5], [20, 5, 70, 5])
    assert bootstrap(d) == bootstrap(d)
    # multinomial draws over distinct values == resampling the 100 images: same quantiles within
    # Monte Carlo error (two independent 20,000-draw estimates, SE about 0.1 pp each)
    rng = np.random.default_rng(1)
    means = d[rng.integers(0, len(d), (20000, len(d)))].mean(1)
    lo, hi = bootstrap(d, resamples=20000, seed=2)
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=0.01)
    assert hi == pytest.approx(np.quantile(means, 0.975), abs=0.01)
