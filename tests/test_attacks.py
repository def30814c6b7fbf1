"""Attacks and gradient sources (paper section II, Table II, IV-E; DESIGN section 2).

Three kinds of evidence: an independent implementation (ART's FGSM, BIM and PGD on the same ANN), the
attack equations computed by hand on a linear classifier whose cross-entropy gradient is known in closed
form, and properties every attack and source must have (eps-ball, pixel range, reproducibility).
"""

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import dependency

from spikeadv.attack import attacks
from spikeadv.attack import estimators as sources
from spikeadv.attack.attacks import fgsm, ifgsm, pgd, rfgsm, targets
from spikeadv.attack.estimators import Source
from spikeadv.config.grid import STUDY_ATTACKS, check
from spikeadv.config.spiking import Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.models.convert import convert
from spikeadv.models.network import Network

SPEC = "16x16-8c3-2s-16c3-2s-32fc-10o"
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
FLOAT_TOL = 1e-6  # a few float32 ulps of a pixel in [0, 1]


def network(seed=0, bias=False):
    torch.manual_seed(seed)
    net = Network(SPEC, 3, MEAN, STD, bias=bias).eval()
    if bias:
        with torch.no_grad():
            for layer in net.layers:
                if getattr(layer, "bias", None) is not None:
                    layer.bias.normal_(0, 0.1)
    return net


def images(n=8, seed=1):
    """Pixels in [0, 1], with some exactly at 0 and 1 so that the [0, 1] clip is exercised."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=gen)
    x[:, 0, :4] = 0.0
    x[:, 1, :4] = 1.0
    return x


def labels(n=8, seed=2, classes=10):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only add synchronisation (100x slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_in_ball(x_adv, x0, eps):
    assert x_adv.shape == x0.shape
    assert (x_adv - x0).abs().max().item() <= eps + FLOAT_TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


# --- 1. ART as an independent reference ---------------------------------------------------------------

@pytest.fixture(scope="module")
def art_setup():
    """ART's PyTorchClassifier on the same ANN: pixels in [0, 1] clipped there, mean cross-entropy (its
    gradient is ours / B; B = 8 is a power of two, so the scaling is exact and the signs are identical)."""
    art_pytorch = dependency("art.estimators.classification")
    net = network()
    clf = art_pytorch.PyTorchClassifier(
        model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 16, 16), nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    return net, clf, images(), labels()


def test_fgsm_matches_art(art_setup):
    from art.attacks.evasion import FastGradientMethod

    net, clf, x, y = art_setup
    eps = 16 / 255
    theirs = FastGradientMethod(clf, norm=np.inf, eps=eps, targeted=False, num_random_init=0, batch_size=len(x),
                                minimal=False).generate(x.numpy(), y=y.numpy())
    ours = fgsm(sources.ann(net), x, y, eps)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=FLOAT_TOL)
    assert (ours != x).float().mean() > 0.9  # the attack did move the image (most gradients are nonzero)


@pytest.mark.parametrize("steps", [2, 5])
def test_ifgsm_matches_art_bim(art_setup, steps):
    from art.attacks.evasion import BasicIterativeMethod

    net, clf, x, y = art_setup
    eps = 32 / 255
    theirs = BasicIterativeMethod(clf, eps=eps, eps_step=eps / steps, max_iter=steps, targeted=False,
                                  batch_size=len(x), verbose=False).generate(x.numpy(), y=y.numpy())
    ours = ifgsm(sources.ann(net), x, y, eps, steps)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=FLOAT_TOL)


def test_targeted_ifgsm_matches_art_bim(art_setup):
    from art.attacks.evasion import BasicIterativeMethod

    net, clf, x, y = art_setup
    eps, steps = 16 / 255, 3
    target = targets(y, 10, "random", torch.Generator().manual_seed(0))
    theirs = BasicIterativeMethod(clf, eps=eps, eps_step=eps / steps, max_iter=steps, targeted=True,
                                  batch_size=len(x), verbose=False).generate(x.numpy(), y=target.numpy())
    ours = ifgsm(sources.ann(net), x, y, eps, steps, target=target)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=FLOAT_TOL)


def test_pgd_without_random_start_matches_art(art_setup):
    from art.attacks.evasion import ProjectedGradientDescent

    net, clf, x, y = art_setup
    eps, steps, a = 16 / 255, 4, 6 / 255  # a > eps / steps: the eps-ball projection is active
    theirs = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=a, max_iter=steps, targeted=False,
                                      num_random_init=0, batch_size=len(x), random_eps=False,
                                      verbose=False).generate(x.numpy(), y=y.numpy())
    ours = pgd(sources.ann(net), x, y, eps, steps, a=a, generator=None)
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=FLOAT_TOL)
    assert ((ours - x).abs() > eps - FLOAT_TOL).float().mean() > 0.5  # most pixels end on the ball's surface


# --- 2. Closed form on a linear classifier --------------------------------------------------------------

def linear(classes=10, dim=3 * 8 * 8, dead=16, seed=3):
    """Logits W x on flattened pixels; the first ``dead`` pixels have zero weight (zero gradient)."""
    w = 0.1 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed))  # logits ~ 1: no saturation
    w[:, :dead] = 0
    return Source("lin", lambda x: x.flatten(1) @ w.T), w


def small_images(n=16, seed=4):
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, 4:] = 0.0  # pixels 4..7 of each channel's first row: at the [0, 1] edges
    x[:, :, 1, :4] = 1.0
    return x


def ce_grad(w, x, y):
    """d/dx sum_i CE(W x_i, y_i) = W^T (softmax(W x) - onehot(y)), in float64."""
    w64, x64 = w.double(), x.flatten(1).double()
    p = torch.softmax(x64 @ w64.T, 1) - F.one_hot(y, w.shape[0]).double()
    return (p @ w64).view_as(x)


def test_linear_source_gradient_is_the_closed_form():
    src, w = linear()
    x, y = small_images(), labels(16)
    torch.testing.assert_close(src.grad(x, y).double(), ce_grad(w, x, y), rtol=1e-5, atol=1e-5)


def test_fgsm_moves_each_pixel_by_exactly_eps_unless_clipped_or_flat():
    src, w = linear()
    x, y = small_images(), labels(16)
    eps = 8 / 255
    adv = fgsm(src, x, y, eps)
    g = ce_grad(w, x, y)
    assert g.abs()[g != 0].min() > 1e-5  # float32 rounding (~1e-7 here) decides no sign
    flat = g == 0
    assert flat.sum() == 16 * 16  # the dead pixels
    assert torch.equal(adv[flat], x[flat])
    target = x + eps * g.sign().float()
    inside = ~flat & (target >= 0) & (target <= 1)
    clipped = ~flat & ~inside
    assert inside.any() and clipped.any()
    torch.testing.assert_close((adv - x)[inside], eps * g.sign().float()[inside], rtol=0, atol=FLOAT_TOL)
    assert torch.equal(adv[clipped], target[clipped].clamp(0, 1))
    assert set(adv[clipped].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("a", [None, 3 / 255])
def test_rfgsm_is_its_equations(a):
    src, w = linear()
    x, y = small_images(), labels(16)
    eps = 16 / 255
    step = eps / 2 if a is None else a
    adv = rfgsm(src, x, y, eps, torch.Generator().manual_seed(7), a=a)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    x1 = (x + step * noise.sign()).clamp(0, 1)  # within step <= eps of x by construction
    expected = (x1 + (eps - step) * ce_grad(w, x1, y).sign().float()).clamp(0, 1)
    torch.testing.assert_close(adv, expected, rtol=0, atol=FLOAT_TOL)
    assert_in_ball(adv, x, eps)
    # a different seed draws a different random step
    other = rfgsm(src, x, y, eps, torch.Generator().manual_seed(8), a=a)
    assert not torch.equal(adv, other)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_targeted_ifgsm_is_its_recursion(steps):
    src, w = linear()
    x, y = small_images(), labels(16)
    eps = 16 / 255
    t = targets(y, 10, "random", torch.Generator().manual_seed(0))
    adv = ifgsm(src, x, y, eps, steps, target=t)
    xn, a = x.clone(), eps / steps
    for _ in range(steps):
        xn = xn - a * ce_grad(w, xn, t).sign().float()
        xn = torch.minimum(torch.maximum(xn, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(adv, xn, rtol=0, atol=FLOAT_TOL)
    # descending J(x, target) raises the target's log-probability
    logp = lambda z: torch.log_softmax(src.logits(z), 1).gather(1, t[:, None])  # noqa: E731
    assert (logp(adv) > logp(x)).all()


def test_untargeted_ifgsm_is_its_recursion_and_raises_the_loss():
    src, w = linear()
    x, y = small_images(), labels(16)
    eps, steps = 32 / 255, 4
    adv = ifgsm(src, x, y, eps, steps)
    xn = x.clone()
    for _ in range(steps):
        xn = xn + eps / steps * ce_grad(w, xn, y).sign().float()
        xn = torch.minimum(torch.maximum(xn, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(adv, xn, rtol=0, atol=FLOAT_TOL)
    loss = lambda z: F.cross_entropy(src.logits(z), y, reduction="none")  # noqa: E731
    assert (loss(adv) > loss(x)).all()


def test_random_targets_never_hit_y_and_are_uniform_over_the_others():
    classes, n = 10, 9000
    y = torch.full((n,), 3)
    t = targets(y, classes, "random", torch.Generator().manual_seed(0))
    assert torch.equal(t, targets(y, classes, "random", torch.Generator().manual_seed(0)))  # reproducible
    assert not (t == y).any()
    counts = torch.bincount(t, minlength=classes)
    others = [c for c in range(classes) if c != 3]
    # each other class ~ Binomial(n, 1/9): mean 1000, std sqrt(n p (1 - p)) ~ 29.8; allow 5 std
    p = 1 / (classes - 1)
    bound = 5 * math.sqrt(n * p * (1 - p))
    assert counts[3] == 0
    assert all(abs(counts[c].item() - n * p) < bound for c in others), counts.tolist()
    # mixed labels: the offset (t - y) mod C is uniform on 1..C-1 and never 0
    y = labels(n, seed=5)
    t = targets(y, classes, "random", torch.Generator().manual_seed(1))
    offsets = torch.bincount((t - y) % classes, minlength=classes)
    assert offsets[0] == 0
    assert all(abs(offsets[k].item() - n * p) < bound for k in range(1, classes)), offsets.tolist()


def test_least_likely_targets_are_the_argmin_of_the_logits():
    src, _ = linear()
    x, y = small_images(), labels(16)
    logits = src.logits(x)
    t = targets(y, 10, "least-likely", torch.Generator(), logits=logits)
    assert torch.equal(t, logits.argmin(1))
    assert (logits.gather(1, t[:, None]) == logits.min(1, keepdim=True).values).all()
    with pytest.raises(SpikeAdvError, match="logits"):
        targets(y, 10, "least-likely", torch.Generator())
    with pytest.raises(SpikeAdvError, match="unknown target mode"):
        targets(y, 10, "most-likely", torch.Generator())


# --- 3. Properties --------------------------------------------------------------------------------------

def every_attack(src, x, y, eps):
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    return {
        "fgsm": fgsm(src, x, y, eps),
        "rfgsm": rfgsm(src, x, y, eps, gen()),
        "ifgsm": ifgsm(src, x, y, eps, 3),
        "tifgsm": ifgsm(src, x, y, eps, 2, target=targets(y, 10, "random", gen())),
        "pgd": pgd(src, x, y, eps, 3),
        "pgd-random-start": pgd(src, x, y, eps, 3, generator=gen()),
    }


@pytest.mark.parametrize("eps", [8 / 255, 64 / 255])
def test_every_attack_stays_in_the_eps_ball_and_in_range(eps):
    net = network()
    src = sources.ann(net)
    x, y = images(4), labels(4)
    outs = every_attack(src, x, y, eps)
    assert set(STUDY_ATTACKS) <= {k.split("-")[0] for k in outs}
    for name, adv in outs.items():
        assert_in_ball(adv, x, eps)
        assert not torch.equal(adv, x), name


def test_pgd_random_start_is_seeded_and_differs_from_no_start():
    src, _ = linear()
    x, y = small_images(), labels(16)
    eps = 16 / 255
    a = pgd(src, x, y, eps, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, pgd(src, x, y, eps, 2, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, pgd(src, x, y, eps, 2))
    assert_in_ball(a, x, eps)


def test_zero_eps_leaves_the_image():
    src, _ = linear()
    x, y = small_images(), labels(16)
    for name, adv in every_attack(src, x, y, 0.0).items():
        assert torch.equal(adv, x), name


@pytest.mark.parametrize("attack, eps, steps, match", [
    ("deepfool", 8, 1, "unknown attack"),
    ("fgsm", -1, 1, "eps"),
    ("fgsm", 256, 1, "eps"),
    ("ifgsm", 8, 0, "steps"),
    ("pgd", 8, -3, "steps"),
])
def test_check_rejects_bad_requests(attack, eps, steps, match):
    with pytest.raises(SpikeAdvError, match=match):
        check(attack, eps, steps)


def test_check_accepts_the_study_grid():
    for attack in STUDY_ATTACKS:
        for eps in (0, 8, 16, 32, 64, 255):
            check(attack, eps, 7)


# --- 4. Gradient sources on SNNs ------------------------------------------------------------------------

@functools.cache
def converted(spike_after_pool=True):
    """SNN-I converted from a random ANN with biases (the conversion scales them) on random images."""
    ann = network(seed=5, bias=True)
    snn = Spiking(T=16, spike_after_pool=spike_after_pool)
    net = convert(ann, images(8, seed=6), snn)
    return ann, net, snn


@pytest.fixture(scope="module")
def snn1():
    return converted()


@pytest.mark.parametrize("spike_after_pool", [True, False])
def test_snnadv_proxy_is_the_parent_ann_scaled_by_the_threshold_product(spike_after_pool):
    ann, net, snn = converted(spike_after_pool)
    assert not torch.equal(net.thresholds, torch.ones_like(net.thresholds))
    scale = net.thresholds.double().prod().item()
    x = images(4, seed=7)
    with torch.no_grad():
        proxy, parent = net.proxy(x, snn), ann(x)
    torch.testing.assert_close(proxy * scale, parent, rtol=1e-4, atol=1e-5 * parent.abs().max().item())
    # so snnadv-clean's gradient is exactly the ANN's: standardising the logits removes the scale
    y = labels(4)
    scaled = Source("standardised-ann", lambda z: sources.standardised(ann(z)))
    g = sources.make("snnadv-clean", net, snn).grad(x, y)
    torch.testing.assert_close(g, scaled.grad(x, y), rtol=1e-4, atol=1e-6 * g.abs().max().item())


def test_snnadv_faithful_base_is_the_poisson_rate_and_adds_to_eps(snn1):
    _, net, snn = snn1
    src = sources.snnadv(net, snn, seed=3)
    x, y = images(8, seed=8), labels(8)
    rate = src.base(x)
    assert torch.equal(rate, src.base(x))  # the seeded generator: the same rate image every call
    counts = rate * snn.T
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)  # multiples of 1 / T
    assert torch.equal(rate[x == 0], torch.zeros_like(rate[x == 0]))
    assert torch.equal(rate[x == 1], torch.ones_like(rate[x == 1]))
    # E[rate] = x, Var = x (1 - x) / T per pixel: the mean error has std <= 1 / (2 sqrt(T N)); allow 5 std
    bound = 5 / (2 * math.sqrt(snn.T * x.numel()))
    assert abs((rate - x).mean().item()) < bound
    assert (rate - x).abs().max() > 2 / snn.T  # it really is noisy
    eps = 8 / 255
    faithful = fgsm(src, x, y, eps)
    assert_in_ball(faithful, rate, eps)
    assert (faithful - x).abs().max() > eps + 0.1  # the true distance from x exceeds eps
    clean = fgsm(sources.snnadv(net, snn, seed=3, base="clean"), x, y, eps)
    assert_in_ball(clean, x, eps)
    with pytest.raises(SpikeAdvError, match="base"):
        sources.snnadv(net, snn, base="noisy")


def test_snnadv_base_of_a_direct_encoded_snn_is_the_image(snn1):
    # direct encoding feeds the pixels at every step: X_rate = x, and the attack stays within eps of x
    _, net, snn = snn1
    direct = dataclasses.replace(snn, encoding="direct")
    src = sources.snnadv(net, direct, seed=3)
    x, y = images(8, seed=8), labels(8)
    assert torch.equal(src.base(x), x)
    assert_in_ball(fgsm(src, x, y, 8 / 255), x, 8 / 255)


def test_bptt_gradient_is_finite_nonzero_and_seeded(snn1):
    _, net, snn = snn1
    x, y = images(4, seed=9), labels(4)
    src = sources.bptt(net, snn, seed=4)
    g = src.grad(x, y)
    assert torch.isfinite(g).all() and (g != 0).float().mean() > 0.5
    assert torch.equal(g, sources.bptt(net, snn, seed=4).grad(x, y))  # same seed, same gradient
    assert not torch.equal(g, src.grad(x, y))  # the next call draws fresh input spikes
    assert not torch.equal(g, sources.bptt(net, snn, seed=5).grad(x, y))
    assert_in_ball(fgsm(src, x, y, 8 / 255), x, 8 / 255)


def test_bptt_through_lif_neurons_in_eval_mode():
    net = network(seed=6)
    snn = Spiking(neuron="lif", leak=0.95, T=8)
    x, y = images(2, seed=10), labels(2)
    g = sources.make("bptt", net, snn, seed=1).grad(x, y)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.equal(g, sources.make("bptt", net, snn, seed=1).grad(x, y))


def test_eot_is_the_mean_of_successive_draws(snn1):
    _, net, snn = snn1
    x, y = images(2, seed=11), labels(2)
    n = 3
    averaged = sources.eot(sources.bptt(net, snn, seed=2), n)
    assert averaged.name == "eot3-bptt" and averaged.draws == n
    single = sources.bptt(net, snn, seed=2)
    draws = [single.grad(x, y) for _ in range(n)]
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(averaged.grad(x, y), sum(draws) / n, rtol=1e-5, atol=1e-7)
    made = sources.make("bptt", net, snn, seed=2, eot_n=n)
    torch.testing.assert_close(made.grad(x, y), sum(draws) / n, rtol=1e-5, atol=1e-7)
    with pytest.raises(SpikeAdvError, match="n >= 1"):
        sources.eot(single, 0)


def test_make_refuses_sources_that_do_not_fit_the_model(snn1):
    ann, net, snn = snn1
    with pytest.raises(SpikeAdvError, match="a spikeadv SNN"):
        sources.make("ann", net, snn)
    for name in ("bptt", "snnadv", "snnadv-clean"):
        with pytest.raises(SpikeAdvError, match="an ANN"):
            sources.make(name, ann, None)
    with pytest.raises(SpikeAdvError, match="unknown gradient estimator"):
        sources.make("fd", ann, None)
    assert sources.make("ann", ann, None).name == "ann"
    assert sources.make("snnadv", net, snn).name == "snnadv"
    assert sources.make("snnadv-clean", net, snn).name == "snnadv-clean"


# --- 5. Guard rails (their messages, for every attack: tests/test_api.py) ------------------------------

def test_every_eps_of_the_study_passes_in_pixel_units_and_not_in_1_255_units():
    x, y = images(2), labels(2)
    src = sources.Source("s", lambda v: v.flatten(1)[:, :10], classes=10)
    for eps in range(256):
        attacks.validate(src, x, y, eps / 255, steps=7)  # what study.tasks.craft passes: job.eps / 255
        check("ifgsm", eps, 7)  # the 1/255-unit check of presets
    with pytest.raises(SpikeAdvError, match="8 looks like 1/255 units: pass 8/255"):
        attacks.validate(src, x, y, 8, steps=7)


def test_float_rounding_at_the_pixel_edges_is_accepted_and_clipped():
    src, _ = linear()
    x, y = small_images(), labels(16)
    x[:, :, 0, 4:] = -1e-7
    x[:, :, 1, :4] = 1 + 1e-7
    for name, adv in every_attack(src, x, y, 8 / 255).items():
        assert adv.min() >= 0 and adv.max() <= 1, name
    with pytest.raises(SpikeAdvError, match=r"outside \[0, 1\]"):
        fgsm(src, x + 1e-3, y, 8 / 255)


def test_an_empty_batch_comes_back_empty():
    src, _ = linear()
    x, y = small_images()[:0], labels(16)[:0]
    for name, adv in every_attack(src, x, y, 8 / 255).items():
        assert adv.shape == x.shape, name
