"""Adaptive attacks: APGD (Croce & Hein 2020), Square (Andriushchenko et al. 2020), their losses and the
attack registry (DESIGN section 8).

Three kinds of evidence, as in test_attacks: ART's APGD and Square on the same trained network (both
randomised, so robust accuracies are compared within their sampling error), the losses and APGD's fixed
point computed by hand on linear classifiers, and properties (eps-ball, reproducibility, monotone
best loss, strength relative to PGD, Square's acceptance rule, refusals).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import dependency
from test_attacks import FLOAT_TOL, MEAN, SPEC, STD, assert_in_ball, labels, linear, one_thread, small_images  # noqa: F401

from spikeadv.attack import estimators as sources
from spikeadv.attack import registry
from spikeadv.attack.apgd import apgd, apgd_t, checkpoints
from spikeadv.attack.attacks import ifgsm, pgd, targets
from spikeadv.attack.estimators import Source
from spikeadv.attack.losses import dlr, dlr_targeted, margin
from spikeadv.attack.square import square
from spikeadv.config.grid import STUDY_ATTACKS
from spikeadv.data import synthetic, to_float
from spikeadv.errors import SpikeAdvError
from spikeadv.models.network import Network

EPS = 20 / 255  # where 100-step APGD leaves about 20% of the trained net's test images, FGSM about 45%


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def trained():
    """The test_attacks network trained 3 epochs on 16x16 synthetic stripes (~97% on 128 test images)."""
    train, test = (synthetic(split, n=n, shape=(3, 16, 16)) for split, n in (("train", 1024), ("test", 128)))
    x, y = to_float(train.images), train.labels
    torch.manual_seed(0)
    net = Network(SPEC, 3, MEAN, STD)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(3):
        for i in torch.randperm(len(x), generator=gen()).split(64):
            opt.zero_grad()
            F.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    return net.eval(), to_float(test.images), test.labels


def accuracy(net, x, y):
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


# --- 1. ART as an independent reference ---------------------------------------------------------------

def within_sampling_error(ours, theirs, n):
    """Two randomised attacks on the same n images: each robust accuracy has variance sum_i p_i (1 - p_i)
    / n^2 <= p (1 - p) / n over the attacks' draws, so their difference is within 3 sd of 0."""
    p = (ours + theirs) / 2
    return abs(ours - theirs) <= 3 * math.sqrt(2 * max(p * (1 - p), 1 / n) / n)


@pytest.mark.parametrize("loss, art_loss", [("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")])
def test_apgd_robust_accuracy_matches_art(trained, loss, art_loss):
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    net, x, y = trained
    clf = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 16, 16), nb_classes=10,
                            clip_values=(0.0, 1.0))
    np.random.seed(0)  # ART draws its random start from numpy's global generator
    theirs = AutoProjectedGradientDescent(clf, norm=np.inf, eps=EPS, eps_step=2 * EPS, max_iter=100, nb_random_init=1,
                                          batch_size=len(x), loss_type=art_loss, verbose=False)
    theirs = accuracy(net, torch.from_numpy(theirs.generate(x.numpy(), y=y.numpy())), y)
    adv = apgd(sources.ann(net), x, y, EPS, 100, loss=loss, generator=gen())
    assert_in_ball(adv, x, EPS)
    ours, fgsm = accuracy(net, adv, y), accuracy(net, registry.get("fgsm").run(sources.ann(net), x, y, EPS, steps=1,
                                                                              generator=None), y)
    assert within_sampling_error(ours, theirs, len(x)), (ours, theirs)
    assert not within_sampling_error(ours, fgsm, len(x)), (ours, fgsm)  # the comparison can tell a weak attack


def test_square_robust_accuracy_matches_art(trained):
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import PyTorchClassifier

    net, x, y = trained
    clf = PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 16, 16), nb_classes=10,
                            clip_values=(0.0, 1.0))
    np.random.seed(0)
    theirs = SquareAttack(clf, norm=np.inf, eps=EPS, max_iter=300, p_init=0.8, nb_restarts=1, batch_size=len(x),
                          verbose=False).generate(x.numpy(), y=y.numpy())
    theirs = accuracy(net, torch.from_numpy(theirs), y)
    adv = square(sources.ann(net), x, y, EPS, 300, generator=gen())
    assert_in_ball(adv, x, EPS)
    ours, clean = accuracy(net, adv, y), accuracy(net, x, y)
    assert within_sampling_error(ours, theirs, len(x)), (ours, theirs)
    assert not within_sampling_error(ours, clean, len(x)), (ours, clean)


# --- 2. Closed form -------------------------------------------------------------------------------------

def test_losses_by_hand():
    z = torch.tensor([[2.0, 5.0, 1.0, 0.0], [2.0, 5.0, 1.0, 0.0], [-1.0, 0.5, 3.0, 4.0]], requires_grad=True)
    y = torch.tensor([0, 1, 3])
    # sorted: 5 > 2 > 1 > 0 and 4 > 3 > 0.5 > -1
    torch.testing.assert_close(margin(z, y), torch.tensor([5 - 2, 2 - 5, 3 - 4.0]))
    torch.testing.assert_close(dlr(z, y), torch.tensor([-(2 - 5) / (5 - 1), -(5 - 2) / (5 - 1), -(4 - 3) / (4 - 0.5)]))
    t = torch.tensor([3, 2, 0])
    torch.testing.assert_close(dlr_targeted(t)(z, y), torch.tensor(
        [-(2 - 0) / (5 - (1 + 0) / 2), -(5 - 1) / (5 - (1 + 0) / 2), -(4 + 1) / (4 - (0.5 - 1) / 2)]))
    # DLR is invariant to shifting and positive scaling of the logits (Croce & Hein 2020, sec. 4)
    torch.testing.assert_close(dlr(3 * z + 7, y), dlr(z, y))
    torch.testing.assert_close(dlr_targeted(t)(3 * z + 7, y), dlr_targeted(t)(z, y))
    assert dlr(z, y).sum().requires_grad  # differentiable in the logits
    with pytest.raises(SpikeAdvError, match="at least 4 classes"):
        dlr_targeted(t)(z[:, :3], y.clamp(max=2))


def test_checkpoints_are_autoattacks():
    """The authors' code counts down: first check after 0.22 N iterations, then each interval 0.03 N
    shorter, at least 0.06 N."""
    for n in (100, 200, 1000):
        k, at, marks = int(0.22 * n), 0, set()
        while at + k <= n:
            at += k
            marks.add(at)
            k = max(k - int(0.03 * n), int(0.06 * n))
        assert checkpoints(n) == marks


def two_class_linear(seed=5):
    """Logits W x + b over two classes with class 0 ahead by ~10: no image in a small ball changes class,
    and the cross-entropy of class 0 rises monotonically along d = w_1 - w_0 (some pixels dead)."""
    src, w = linear(classes=2, seed=seed)
    b = torch.tensor([10.0, 0.0])
    return Source("lin2", lambda x: src.logits(x) + b), (w[1] - w[0]).view(3, 8, 8)


def test_apgd_finds_the_loss_maximiser_of_a_linear_model():
    """The maximiser of a function increasing in d.x over the eps-ball and [0, 1]: x + eps sign(d), clipped."""
    src, d = two_class_linear()
    x, y = small_images(), torch.zeros(16, dtype=torch.long)
    eps = 8 / 255
    best = (x + eps * d.sign()).clamp(0, 1)
    trace = []
    adv = apgd(src, x, y, eps, 10, trace=trace)
    assert (src.logits(adv).argmax(1) == 0).all()  # never fooled: APGD returns its highest-loss point
    torch.testing.assert_close(adv, best, rtol=0, atol=FLOAT_TOL)
    loss = F.cross_entropy(src.logits(best), y, reduction="none").mean().item()
    assert trace[-1] == pytest.approx(loss, rel=1e-5)
    # from a random start too, on every pixel with a gradient
    live = (d != 0).expand_as(x)
    adv = apgd(src, x, y, eps, 10, generator=gen())
    torch.testing.assert_close(adv[live], best[live], rtol=0, atol=FLOAT_TOL)


def bumps(*peaks):
    """One pixel x, logits (5, g(x)) with g a sum of (height, centre, width) Gaussian bumps: the
    cross-entropy of class 0 rises with g, and no image is ever misclassified (g < 5)."""
    def logits(x):
        x = x.flatten(1)[:, :1]
        g = sum(h * torch.exp(-(((x - c) / w) ** 2)) for h, c, w in peaks)
        return torch.cat([torch.full_like(g, 5.0), g], 1)

    return Source("bumps", logits)


def test_apgd_halves_its_step_onto_an_interior_maximum():
    """One bump at c, inside every ball: sign steps of a fixed size oscillate around it (PGD ends within
    its step 2.5 eps / N); APGD's halvings (at most 8 in 100 steps) bring its best point within the
    smallest step the schedule allows, 2 eps / 2^8."""
    c, eps, steps = 0.5, 0.2, 100
    src = bumps((1.0, c, 0.1))
    x = c + 0.9 * eps * (2 * torch.rand(16, 1, 1, 1, generator=gen()) - 1)
    y = torch.zeros(16, dtype=torch.long)
    assert len(checkpoints(steps)) == 8
    trace = []
    adv = apgd(src, x, y, eps, steps, trace=trace)
    assert (adv - c).abs().max() < 2 * eps / 2**8 < (pgd(src, x, y, eps, steps) - c).abs().max()
    assert trace[-1] == pytest.approx(math.log(1 + math.exp(1 - 5)), rel=1e-5)  # the cross-entropy at the top


def test_apgd_restarts_from_its_best_point():
    """A narrow high bump at c1 next to the start (the start's loss beats the other bump's top), a wide
    low one at c2: the first step, 2 eps, overshoots into c2's basin. Only going back to the best point
    at the checkpoints, with halved steps, finds c1's top (within a tenth of its width)."""
    c1, c2, width, eps = 0.49, 0.35, 0.01, 0.2
    src = bumps((3.0, c1, width), (1.0, c2, 0.1))
    x = c1 + width * torch.linspace(-1, 1, 16).view(16, 1, 1, 1)
    y = torch.zeros(16, dtype=torch.long)
    assert (src.logits(x)[:, 1] > 1).all()
    assert (apgd(src, x, y, eps, 100) - c1).abs().max() < width / 10


# --- 3. Properties --------------------------------------------------------------------------------------

def shifted(net):
    """A source whose base image is not x (as the paper's faithful SNNAdv): attacks stay near the base."""
    return Source("shifted", net, base=lambda x: (x + 0.05).clamp(0, 1))


@pytest.mark.parametrize("name", list(registry.ATTACKS))
def test_every_registry_attack_stays_in_the_ball_and_is_reproducible(trained, name):
    net, x, y = trained
    x, y = x[:8], y[:8]
    attack = registry.get(name)
    steps = 1 if attack.steps == 1 else 10
    src = shifted(net)
    base = src.base(x)
    for eps in (64 / 255, 8 / 255):
        adv = attack.run(src, x, y, eps, steps=steps, generator=gen(1))
        assert_in_ball(adv, base, eps)
        if name == "fab-t":  # a minimal-perturbation attack moves an image only where it fools it within eps
            moved = (adv != base).flatten(1).any(1)
            assert (net(adv[moved]).argmax(1) != y[moved]).all() and (eps < 0.1 or moved.any())
        else:
            assert torch.equal(adv, base) == (name == "null"), name  # the null attack moves nothing
        assert torch.equal(adv, attack.run(src, x, y, eps, steps=steps, generator=gen(1)))
    assert attack.run(src, x[:0], y[:0], eps, steps=steps, generator=gen(1)).shape == x[:0].shape
    randomised = name not in ("fgsm", "ifgsm", "null", "fab-t")  # another seed, another result (at eps 8/255)
    assert randomised != torch.equal(adv, attack.run(src, x, y, eps, steps=steps, generator=gen(2)))
    assert torch.equal(attack.run(src, x, y, 0.0, steps=steps, generator=gen(1)), base)


def test_registry_holds_the_study_attacks_and_refuses_bad_requests(trained):
    net, x, y = trained
    src, x, y = sources.ann(net), x[:4], y[:4]
    assert set(STUDY_ATTACKS) <= set(registry.ATTACKS)
    assert [a.name for a in registry.ATTACKS.values() if not a.gradient] == ["null", "noise", "square"]
    with pytest.raises(SpikeAdvError, match="unknown attack 'deepfool' .*apgd-ce.*square"):
        registry.get("deepfool")
    with pytest.raises(SpikeAdvError, match="not a targeted attack"):
        registry.get("apgd-ce").run(src, x, y, 0.1, steps=2, generator=gen(), target=y)
    with pytest.raises(SpikeAdvError, match="single-step"):
        registry.get("fgsm").run(src, x, y, 0.1, steps=2, generator=None)
    for name in ("square", "rfgsm", "tifgsm"):
        with pytest.raises(SpikeAdvError, match="Generator"):
            registry.get(name).run(src, x, y, 0.1, steps=1, generator=None)
    with pytest.raises(SpikeAdvError, match="generator"):
        apgd(src, x, y, 0.1, 2, restarts=2)
    with pytest.raises(SpikeAdvError, match="unknown APGD loss"):
        apgd(src, x, y, 0.1, 2, loss="cw")
    with pytest.raises(SpikeAdvError, match="looks like 1/255 units"):
        registry.get("square").run(src, x, y, 8, steps=10, generator=gen())
    # a given target is the target of targeted I-FGSM
    t = targets(y, 10, "random", gen(3))
    tifgsm = registry.get("tifgsm").run(src, x, y, 0.1, steps=3, generator=None, target=t)
    assert torch.equal(tifgsm, ifgsm(src, x, y, 0.1, 3, target=t))
    assert not torch.equal(tifgsm, ifgsm(src, x, y, 0.1, 3))


def test_apgd_best_loss_rises_and_beats_pgd(trained):
    net, x, y = trained
    src = sources.ann(net)
    trace = []
    adv = apgd(src, x, y, EPS, 50, generator=gen(), trace=trace)
    assert 0 < len(trace) <= 50  # a run stops once every image is fooled
    assert all(b >= a for a, b in zip(trace, trace[1:])) and trace[-1] > trace[0]
    ce = lambda z: F.cross_entropy(net(z), y, reduction="none").mean().item()  # noqa: E731
    with torch.no_grad():
        assert trace[-1] >= ce(adv) - 1e-5  # fooled images return their first fooling point, not the best
        weak = pgd(src, x, y, EPS, 10, generator=gen())
        assert trace[-1] > ce(weak)
    assert accuracy(net, adv, y) <= accuracy(net, weak, y)


def test_restarts_and_more_targets_only_break_more_images(trained):
    net, x, y = trained
    src = sources.ann(net)
    eps, steps = 16 / 255, 3  # short runs: a restart still finds something new
    fooled = lambda adv: net(adv).argmax(1) != y  # noqa: E731
    with torch.no_grad():
        one, two = (fooled(apgd(src, x, y, eps, steps, restarts=r, generator=gen())) for r in (1, 2))
        assert (one <= two).all() and two.sum() > one.sum()  # the first run is the same, restarts add
        # APGD-T's first target is the best-scoring other class: its run is APGD on the targeted DLR loss
        top = net(x).scatter(1, y[:, None], float("-inf")).argmax(1)
        at_top = net(apgd(src, x, y, eps, steps, loss="dlr", target=top, generator=gen())).argmax(1) == top
        t1, t3 = (fooled(apgd_t(src, x, y, eps, steps, targets=k, generator=gen())) for k in (1, 3))
    assert (at_top <= t1).all() and (t1 <= t3).all() and t3.sum() > t1.sum()


def test_targeted_apgd_hits_its_targets(trained):
    net, x, y = trained
    t = targets(y, 10, "random", gen(4))
    hit = lambda adv: (net(adv).argmax(1) == t).float().mean().item()  # noqa: E731
    with torch.no_grad():
        for loss in ("ce", "dlr"):
            assert hit(apgd(sources.ann(net), x, y, 32 / 255, 20, loss=loss, target=t, generator=gen())) > 0.5
        assert hit(apgd(sources.ann(net), x, y, 32 / 255, 20, generator=gen())) < 0.2


def test_square_starts_from_stripes_and_only_accepts_improvements(trained):
    net, x, y = trained
    src = sources.ann(net)
    stripes = square(src, x, y, EPS, 1, generator=gen())  # one query: the initial point alone
    free = (x - EPS >= 0) & (x + EPS <= 1)  # pixels the [0, 1] clip does not touch
    step = torch.where(free, stripes - x, torch.nan)
    torch.testing.assert_close(step.abs()[free], torch.full_like(step[free], EPS))
    column = step.nanmean(2, keepdim=True)  # each column of each channel moves by one of +-eps
    torch.testing.assert_close(torch.where(free, column.expand_as(step), torch.nan), step, equal_nan=True)
    adv = square(src, x, y, EPS, 200, generator=gen())
    torch.testing.assert_close((adv - x).abs()[free], step.abs()[free])  # the squares' pixels are at x +- eps too
    with torch.no_grad():
        start, end = margin(net(stripes), y), margin(net(adv), y)
    assert (end >= start).all() and (end > start).float().mean() > 0.5
    assert torch.equal(adv[start > 0], stripes[start > 0])  # fooled by the stripes: not queried again


def test_square_breaks_a_model_without_gradients(trained):
    """Rounding the pixels hides every gradient: APGD cannot move, the score-based Square still can."""
    net, x, y = trained
    masked = Source("rounded", lambda z: net(torch.round(z * 255) / 255))
    assert masked.grad(x[:4], y[:4]).abs().sum() == 0
    clean = accuracy(net, x, y)
    assert accuracy(net, apgd(masked, x, y, EPS, 10), y) == clean
    assert accuracy(net, square(masked, x, y, EPS, 200, generator=gen()), y) < clean - 0.2


# --- L2 ---------------------------------------------------------------------------------------------------

def test_l2_pgd_matches_art(trained):
    art = dependency("art.estimators.classification")
    from art.attacks.evasion import ProjectedGradientDescent

    net, x, y = trained
    x, y = x[:32], y[:32]
    clf = art.PyTorchClassifier(model=net, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0))
    eps, a, steps = 0.5, 0.2, 5  # a step of 0.2 five times from x: the L2 projection is active
    theirs = ProjectedGradientDescent(clf, norm=2, eps=eps, eps_step=a, max_iter=steps, num_random_init=0,
                                      batch_size=len(x), random_eps=False, verbose=False).generate(x.numpy(), y=y.numpy())
    ours = pgd(sources.ann(net), x, y, eps, steps, a=a, norm="l2")
    # ART divides by norm + 1e-7 where we divide by the norm: a few 1e-7 of a pixel apart
    torch.testing.assert_close(ours, torch.from_numpy(theirs), rtol=0, atol=1e-5)
    assert ((ours - x).flatten(1).norm(dim=1) > eps - 1e-4).float().mean() > 0.5  # most end on the sphere


def test_l2_attacks_find_the_maximiser_of_a_linear_model_inside_the_ball():
    # the maximiser of an increasing function of d.x over the L2 ball, away from the [0, 1] edges:
    # x0 + eps d / ||d||, where d.(x - x0) reaches eps ||d||: one PGD step of a = eps from x lands on it;
    # APGD from a random start climbs to it in 10 steps. Class 0 ahead by 2.4 (not saturated, so float32
    # resolves the loss) and eps ||d|| = 0.54: no image changes class, so APGD returns its best point
    lin, d = two_class_linear()
    src = Source("lin", lambda v: lin.logits(v) - torch.tensor([8.0, 0.0]))
    x, y = torch.full((4, 3, 8, 8), 0.5), torch.zeros(4, dtype=torch.long)
    eps = 0.3
    one = pgd(src, x, y, eps, 1, a=eps, norm="l2")
    torch.testing.assert_close(one, (x + eps * d / d.norm()).expand_as(x), rtol=0, atol=FLOAT_TOL)
    adv = registry.get("apgd-l2").run(src, x, y, eps, steps=10, generator=gen())
    assert ((adv - x).flatten(1).norm(dim=1) <= eps + FLOAT_TOL).all()
    gain = (adv - x).flatten(1) @ d.flatten() / (eps * d.norm())
    assert (gain >= 1 - 1e-5).all()  # float32 sums of 192 products


def test_l2_radius_is_checked_against_the_image_space():
    src, _ = linear()
    x, y = small_images(4), labels(4)
    assert pgd(src, x, y, 2.0, 2, norm="l2").shape == x.shape  # an L2 radius may exceed 1
    with pytest.raises(SpikeAdvError, match="diameter of the image space"):
        pgd(src, x, y, 100.0, 2, norm="l2")  # sqrt(3 * 8 * 8) = 13.9
    with pytest.raises(SpikeAdvError, match="unknown norm"):
        pgd(src, x, y, 0.1, 2, norm="l1")
