"""The adaptive evaluation at the 2025 frontier (DESIGN section 8): attack-time surrogates (ASSG, PDSG,
MDSE), SA-PGD, the faithful details of APGD / APGD-T / Square, and the convergence check.

Gradients are checked against an autograd reference built step by step; statistics against their
definitions computed directly; attacks on problems whose maximiser is known; the convergence check on a
constructed model where more encoder draws provably help, and on one where they cannot.
"""

import math

import pytest
import torch
from test_adaptive_attacks import two_class_linear
from test_attacks import FLOAT_TOL, MEAN, SPEC, STD, small_images

from spikeadv.attack import estimators, registry, surrogates
from spikeadv.attack.apgd import apgd, apgd_t
from spikeadv.attack.convergence import check, doubled, tolerance, unconverged
from spikeadv.attack.estimators import Source
from spikeadv.attack.sapgd import sapgd, schedule
from spikeadv.attack.square import _window
from spikeadv.attack.suite import SUITES, Pair, worst_case
from spikeadv.config.spiking import Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.models.network import Network
from spikeadv.models.neurons import adaptive_surrogate, heaviside, spike_train, surrogate_grad


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- 1. attack-time surrogates -----------------------------------------------------------------------

class _Step(torch.autograd.Function):
    """H(u) forward, the given derivative d backward: the reference for a surrogate fixed per element."""

    @staticmethod
    def forward(ctx, u, d):
        ctx.save_for_backward(d)
        return heaviside(u, torch.empty_like(u))

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0], None


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_an_adaptive_surrogate_gives_the_gradient_of_a_step_by_step_autograd_loop(reset):
    """spike_train under pdsg (statistics over the whole [T, B, N] of the site) against the plain
    recursion v = leak v + I, s = H((v - V_th) / V_th), reset, differentiated by autograd with
    H' = pdsg(u) at each element."""
    T, leak, vth = 6, 0.8, torch.tensor(0.9)
    current = (0.7 * torch.randn(T, 3, 5, generator=gen(1))).requires_grad_(True)
    w_s, w_v = torch.randn(T, 3, 5, generator=gen(2)), torch.randn(3, 5, generator=gen(3))
    snn = Spiking(neuron="lif", T=T, leak=leak, reset=reset)
    with adaptive_surrogate(surrogates.pdsg):
        spikes, v = spike_train(current, vth, None, snn, backend="reference")
    ours = torch.autograd.grad((w_s * spikes).sum() + (w_v * v).sum(), current)[0]

    def loop(d):
        v, out, us = torch.zeros(3, 5), [], []
        for t in range(T):
            v = leak * v + current[t]
            u = (v - vth) / vth
            s = _Step.apply(u, d[t]) if d is not None else heaviside(u, torch.empty_like(u))
            us.append(u.detach())
            out.append(s)
            v = v - s * vth if reset == "subtract" else v * (1 - s)
        return torch.stack(out), v, torch.stack(us)

    with torch.no_grad():
        u_all = loop(None)[2]
    s_ref, v_ref, _ = loop(surrogates.pdsg(u_all))
    torch.testing.assert_close(s_ref, spikes)
    ref = torch.autograd.grad((w_s * s_ref).sum() + (w_v * v_ref).sum(), current)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours.abs().sum() > 0


def tiny_snn(encoding="poisson"):
    torch.manual_seed(0)
    return Network(SPEC, 3, MEAN, STD).eval(), Spiking(neuron="lif", T=4, leak=0.9, encoding=encoding)


def test_the_network_routes_every_site_through_the_adaptive_derivative():
    """A derivative that is a fixed surrogate gives exactly that surrogate's BPTT gradient, per site and
    per encoder draw (same seed: the same spikes)."""
    net, snn = tiny_snn()
    x, y = torch.rand(4, 3, 16, 16, generator=gen(5)), torch.tensor([0, 1, 2, 3])
    fixed = estimators.bptt(net, snn, seed=7, derivative=lambda u: surrogate_grad(u, "atan", 2.0))
    reference = estimators.make("bptt:surrogate=atan,alpha=2", net, snn, seed=7)
    ours, theirs = fixed.grad(x, y), reference.grad(x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)
    assert ours.abs().sum() > 0


def test_assg_sharpness_follows_the_running_moments_and_bounds_gradient_vanishing():
    assg = surrogates.ASSG()
    # with alpha = omega / M the atan surrogate's primitive (arctan(pi alpha u / 2) / pi) rises by a over [0, M]
    assert math.atan(math.pi / 2 * assg.omega) / math.pi == pytest.approx(assg.a)
    u1, u2 = torch.tensor([[[0.5, -2.0]]]), torch.tensor([[[0.1, 3.0]]])
    x, x_next = torch.zeros(1), torch.ones(1)
    assg.begin(x)
    m = 0.9 * 1 + 0.1 * u1.abs()
    d = 0.1 * (u1.abs() - m).abs()
    alpha = assg.omega / (m + 1.5 * d + 1e-4)
    torch.testing.assert_close(assg(u1), (alpha / 2) / (1 + (math.pi / 2 * alpha * u1) ** 2))
    assg.begin(x)  # another encoder draw of the same iterate: the moments stay
    torch.testing.assert_close(assg.sharpness(u2), alpha)
    assg.begin(x_next)  # a new iterate: they move
    m2 = 0.9 * m + 0.1 * u2.abs()
    torch.testing.assert_close(assg.sharpness(u2), assg.omega / (m2 + 1.5 * (0.9 * d + 0.1 * (u2.abs() - m2).abs()) + 1e-4))


@pytest.mark.parametrize("shape", [(5, 6, 3, 4, 4), (5, 6, 7)])
def test_pdsg_is_a_gaussian_of_the_time_accumulated_membrane_spread(shape):
    u = torch.randn(*shape, generator=gen(9)) * torch.linspace(0.5, 2, shape[2]).view(1, 1, -1, *[1] * (len(shape) - 3))
    ours = surrogates.pdsg(u)
    dims = (0, 1, *range(3, len(shape)))
    for t in range(shape[0]):
        sigma = u[:t + 1].std(dim=dims, keepdim=True)[0]  # unbiased, one per channel
        want = torch.exp(-((u[t] - sigma / 2) / (math.sqrt(2) * sigma)) ** 2) / (math.sqrt(2 * math.pi) * sigma)
        torch.testing.assert_close(ours[t], want, rtol=1e-4, atol=1e-6)


def test_mdse_takes_per_image_the_candidate_whose_trial_step_raises_the_loss_most():
    net, snn = tiny_snn("direct")
    x, y = torch.rand(8, 3, 16, 16, generator=gen(5)), torch.arange(8) % 10
    step = estimators.make("mdse:step=0.02", net, snn).value_and_grad(x, y)
    grads, trial = [], []
    for name, alpha in surrogates.MDSE_CANDIDATES:
        source = estimators.make(f"bptt:surrogate={name},alpha={alpha}", net, snn)
        g = source.grad(x, y)
        grads.append(g)
        with torch.no_grad():
            trial.append(torch.nn.functional.cross_entropy(net((x + 0.02 * g.sign()).clamp(0, 1), snn), y,
                                                           reduction="none"))
    pick = torch.stack(trial).argmax(0)
    for i in range(len(y)):
        torch.testing.assert_close(step.grad[i], grads[pick[i]][i])


# --- 2. attacks with known answers -------------------------------------------------------------------

def test_sa_pgd_finds_the_loss_maximiser_of_a_linear_model_and_halves_on_the_authors_schedule():
    assert sorted(schedule(100)) == [22, 41, 57, 70, 80, 87, 93, 99]
    src, d = two_class_linear()
    x, y = small_images(), torch.zeros(16, dtype=torch.long)
    eps = 8 / 255
    best = (x + eps * d.sign()).clamp(0, 1)
    torch.testing.assert_close(sapgd(src, x, y, eps, 10), best, rtol=0, atol=FLOAT_TOL)
    live = (d != 0).expand_as(x)
    adv = sapgd(src, x, y, eps, 10, generator=gen())
    torch.testing.assert_close(adv[live], best[live], rtol=0, atol=FLOAT_TOL)


def test_apgd_on_a_proxy_runs_on_past_the_proxy_s_misclassification():
    """A point that fools SNNAdv's proxy says nothing about the SNN: APGD keeps climbing the proxy's
    loss for all its iterations, where on the model itself it stops at the first misclassification."""
    src, d = two_class_linear()
    fooled = Source("lin", lambda x: src.logits(x) + torch.tensor([0.0, 20.0]))  # class 1 ahead everywhere
    proxy = Source("proxy", fooled.logits, proxy=True)
    x, y, eps = small_images(), torch.zeros(16, dtype=torch.long), 8 / 255
    on_model, on_proxy = [], []
    assert torch.equal(apgd(fooled, x, y, eps, 10, trace=on_model), x)  # fooled at the start: returned
    adv = apgd(proxy, x, y, eps, 10, trace=on_proxy)
    assert len(on_model) == 1 and len(on_proxy) == 10
    torch.testing.assert_close(adv, (x + eps * d.sign()).clamp(0, 1), rtol=0, atol=FLOAT_TOL)  # its loss maximiser


@pytest.mark.parametrize("classes, runs", [(10, 9), (5, 4)])
def test_apgd_t_aims_at_autoattack_s_nine_targets(classes, runs):
    """A model that is never fooled: APGD-T runs once per target class (9, or every other class)."""
    logits = torch.arange(classes, 0, -1).float()
    src = Source("flat", lambda x: logits.expand(len(x), classes) + 0 * x.flatten(1)[:, :1])
    x, y, trace = small_images(4), torch.zeros(4, dtype=torch.long), []
    apgd_t(src, x, y, 8 / 255, 5, trace=trace)
    assert len(trace) == 5 * runs


def test_square_redraws_a_window_that_would_leave_the_image_as_it_is():
    """One channel: a drawn sign equals the current window with chance 1/2; after the re-draws no image
    gets a window equal to its current point (without them about 32 of 64 would)."""
    x0 = torch.full((64, 1, 4, 4), 0.5)
    current = (x0 + 0.1).clone()
    inside = torch.ones(64, 1, 4, 4, dtype=torch.bool)
    window = _window(x0, current, inside, 0.1, gen())
    assert ((window - current).abs() > 1e-7).flatten(1).any(1).all()
    torch.testing.assert_close(window, x0 - 0.1)


# --- 3. the convergence check ------------------------------------------------------------------------

D, EPS = 400, 0.01


def noisy_linear(sigma: float, draws: int, seed: int) -> Source:
    """Class 1's logit (w + sigma xi) . (x - 1/2), xi fresh per call: the mean gradient is w, each draw's
    sign agrees with it per pixel with chance Phi(sqrt(n) / sigma) over n averaged draws."""
    w = torch.randint(0, 2, (D,), generator=gen(11)).float() * 2 - 1
    g = gen(seed)

    def logits(x):
        xi = torch.randn(len(x), D, generator=g)
        z = ((w + sigma * xi) * (x.flatten(1) - 0.5)).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(z), z], 1)

    return Source("noisy", logits, draws=draws, stochastic=sigma > 0), w


@pytest.mark.parametrize("sigma, helps", [(4.0, True), (0.0, False)])
def test_the_convergence_check_fails_where_more_draws_help(sigma, helps):
    """FGSM from a noisy gradient: the expected gain w . delta is eps D (2 Phi(sqrt(n)/sigma) - 1), 79 eps
    at n = 1 and 110 eps at n = 2 for sigma = 4 (sd about 20 eps). Images whose threshold c lies in
    [60, 130] eps are broken far more often with 2 draws: the check must name the draws. Without noise
    doubling the draws changes nothing, and the check passes."""
    m = 64
    x, y = torch.full((m, 1, 20, 20), 0.5), torch.zeros(m, dtype=torch.long)
    c = EPS * torch.linspace(60, 130, m)
    w = noisy_linear(sigma, 1, 0)[1]

    def judge(adv, idx):  # the deployed model is the noiseless one: correct while w . (x - 1/2) < c
        return ((adv.flatten(1) - 0.5) @ w < c[idx]).float()

    def attack(pair, xb, yb, b):
        draws = estimators.parse(pair.estimator)[1]["eot"]
        source = noisy_linear(sigma, draws, seed=100 * draws + b)[0]
        return registry.get(pair.attack).run(source, xb, yb, EPS, steps=1, generator=None)

    pairs = (Pair("bptt", "fgsm", 1),)
    base = worst_case(pairs, x, y, judge, attack, batch_size=32).p
    report = check(pairs, x, y, judge, attack, 32, base, stochastic=True)
    assert report["dimensions"]["draws"]["pairs"] == ["fgsm-1@bptt:eot=2"]
    assert [report["dimensions"][d]["moved"] for d in ("steps", "restarts", "queries")] == [None] * 3
    moved = report["dimensions"]["draws"]["before"] - report["dimensions"]["draws"]["after"]
    assert report["converged"] is not helps and unconverged(report) == (["draws"] if helps else [])
    assert (moved > 10 * tolerance(m)) if helps else moved == 0
    assert tolerance(256) == 1.28 and tolerance(64) == 1.0  # 0.5% of the images, at least one


def test_the_strong_suite_claims_its_bound_with_every_faithful_reference():
    strong = SUITES["strong"]
    snn = Spiking(neuron="lif", T=6, leak=0.9, encoding="poisson")
    pairs = strong.pairs(snn)
    assert strong.converge >= 256 and strong.eot == 20
    assert {p.attack for p in pairs} >= {"apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "sa-pgd", "square"}
    assert {p.estimator.partition(":")[0] for p in pairs} >= {"snnadv-clean", "bptt", "assg", "pdsg", "mdse", "bptr"}
    assert all(("eot=20" in p.estimator) != p.estimator.startswith("snnadv") for p in pairs if p.attack != "square")
    square = [p for p in pairs if p.attack == "square"]
    assert len(square) == 1 and square[0].every and square[0].steps == 5000 and pairs[-1] == square[0]
    assert strong.curve_sources(snn) == ["snnadv-clean", "bptt"]  # the curves take one draw per step
    assg = [p for p in pairs if p.estimator.startswith("assg")]  # a: the default, then the authors' search range
    assert [estimators.parse(p.estimator)[1]["a"] for p in assg] == [0.425, 0.35, 0.49]
    assert [p.every for p in assg] == [True, False, False]
    direct = strong.pairs(Spiking(neuron="if", T=16, encoding="direct"))
    assert not any("eot=" in p.estimator for p in direct)
    with pytest.raises(SpikeAdvError, match="fgsm has no restarts"):
        registry.get("fgsm").run(two_class_linear()[0], small_images(2), torch.zeros(2, dtype=torch.long), 0.01,
                                 steps=1, generator=None, restarts=2)


def test_an_unconverged_worst_case_is_named_on_the_card_and_claims_no_bound():
    from spikeadv.attack import checks

    moved = {"pairs": ["apgd-ce-100@bptt:eot=40"], "before": 40.0, "after": 31.0, "moved": True}
    still = {"pairs": ["apgd-ce-200@bptt:eot=20"], "before": 40.0, "after": 40.0, "moved": False}
    none = {"pairs": [], "before": 40.0, "after": 40.0, "moved": None}
    def report(draws):
        return {"images": 256, "tolerance": 1.28, "dimensions": {"draws": draws, "steps": still, "restarts": still,
                                                                  "queries": none}}

    card = {"model": {"name": "snn2"}, "suite": "strong", "eval_eps": 8.0,
            "convergence": {"2": report(still), "8": report(moved)}}  # at every eps of the grid
    [check] = checks._converged(card)
    assert check.passed is False and "at eps 8/255 still moved by doubling draws" in check.detail
    assert "at eps 2/255 no doubling moved it" in check.detail and "40.0 -> 31.0" in check.detail
    assert checks.verdict(check.name, check.passed) == "NOT CONVERGED: no bound claimed"
    card["convergence"]["8"] = report(still)
    assert checks._converged(card)[0].passed is True
    assert checks._converged({"model": {"name": "ann0"}, "suite": "quick"})[0].passed is None


def test_the_study_may_craft_with_every_snn_estimator_and_only_those():
    from spikeadv.config.grid import SNN_GRADIENTS
    from spikeadv.config.parts import StudyConfig

    assert set(SNN_GRADIENTS) == {n for n, e in estimators.ESTIMATORS.items() if "snn" in e.kinds}
    assert StudyConfig(gradients=("snnadv", "assg", "pdsg", "mdse")).gradients[1:] == ("assg", "pdsg", "mdse")
    with pytest.raises(SpikeAdvError, match="unknown SNN gradient source 'asgg'"):
        StudyConfig(gradients=("snnadv", "asgg"))


def test_a_trace_that_stops_after_one_iteration_is_no_evidence_of_masking():
    """APGD stops once every image is fooled: a one-entry loss trace has nothing to rise, so the check
    does not apply (it flagged every model broken at the first iteration on a few images)."""
    from spikeadv.attack import checks

    curve = {"eps": {"8": 0.0, "255": 0.0}, "steps": {"1": 0.0, "10": 0.0}, "zero_gradient_images": 0.0,
             "zero_gradient_entries": 0.0}
    card = {"model": {"name": "snn1"}, "eval_eps": 8.0, "curve_images": 4, "images": 4, "eps": {}, "suite": "strong",
            "curves": {"bptt": {**curve, "trace": [2.4]}, "snnadv-clean": {**curve, "trace": [2.6, 3.8]}}}
    rises = {c.estimator: c.passed for c in checks.check_card(card) if c.name == "attack loss rises over iterations"}
    assert rises == {"bptt": None, "snnadv-clean": True}
    card["curves"]["snnadv-clean"]["trace"] = [2.6, 2.6]
    assert not [c for c in checks.check_card(card) if c.name == "attack loss rises over iterations"][1].passed


def test_a_verdict_resting_on_a_worst_case_that_is_no_bound_says_so():
    from spikeadv.report.adaptive import items, versus

    def card(name, star, converged):
        moved = {"steps": {"moved": not converged}, "queries": {"moved": None}}
        return {"model": {"name": name}, "grid": [2.0, 8.0], "eps_star": star, "eval_eps": 8.0, "clean": [1.0] * 12,
                "eps": {"2": {"p": [float(s is None or s > 2) for s in star]},
                        "8": {"p": [float(s is None) for s in star]}},
                "convergence": {"2": {"dimensions": {"steps": {"moved": False}}}, "8": {"dimensions": moved}}}

    robust, fragile = [None] * 10 + [8.0] * 2, [2.0] * 12
    bound = items(versus({"cards": [card("a", robust, True), card("b", fragile, True)]}), 8.0)
    loose = items(versus({"cards": [card("a", robust, True), card("b", fragile, False)]}), 8.0)
    assert "no bound" not in bound[0] and "supported" in bound[0]
    assert "Rests on worst cases that are no bound**: b NOT CONVERGED (steps at 8/255 still move it)" in loose[0]
    partial = card("b", fragile, True)
    del partial["convergence"]["2"]
    assert "b checked at 8/255 only, not at 2/255" in items(versus({"cards": [card("a", robust, True), partial]}), 8.0)[0]
    unchecked = card("b", fragile, True)
    del unchecked["convergence"]
    assert "b not checked" in items(versus({"cards": [card("a", robust, True), unchecked]}), 8.0)[0]


def test_the_steps_check_is_paired_and_sees_a_change_the_unpaired_margin_misses():
    from spikeadv.attack.checks import _rose, margin, paired_margin

    def curve(fewer, more):
        return {"steps": {"10": sum(fewer) / len(fewer), "100": sum(more) / len(more)},
                "steps_p": {"10": fewer, "100": more}}

    n = 128  # the strong suite's curve images: 9 images survive 100 steps that 10 broke, none the reverse
    fewer, more = [1.0] * 64 + [0.0] * 64, [1.0] * 73 + [0.0] * 55
    gap = (sum(more) - sum(fewer)) / n
    assert gap < margin(sum(fewer) / n, sum(more) / n, n)  # unpaired: within sampling error
    assert gap > paired_margin(fewer, more) and _rose(curve(fewer, more), "10", "100", n)  # paired: it helped
    assert not _rose(curve(fewer, fewer), "10", "100", n)  # the same outcomes: no rise
    m = 80  # a 5 pp change all one way is seen from 74 images on (the docstring's arithmetic)
    assert _rose(curve([1.0] * 40 + [0.0] * 40, [1.0] * 44 + [0.0] * 36), "10", "100", m)


@pytest.mark.parametrize("shape", [(5, 6, 3, 4, 4), (5, 6, 7)])
def test_pdsg_step_by_step_equals_pdsg_on_the_stacked_history(shape):
    """A library neuron's PDSG (running sums, one step per call) gives at every step the value of pdsg
    on the history stacked up to that step."""
    u = torch.randn(*shape, generator=gen(4)) * 3 + 0.5
    steps = surrogates.PDSGSteps()
    for t in range(shape[0]):
        torch.testing.assert_close(steps(u[t]), surrogates.pdsg(u[:t + 1])[-1], rtol=1e-5, atol=1e-7)


def test_progress_counts_each_pairs_model_passes_on_the_images_it_runs_on_and_in_the_convergence_check():
    """The ETA's unit: a pair's work per image is its steps (queries) x restarts x EOT draws x targets
    (APGD-T, FAB-T) x candidates (MDSE), a gradient step costing 3 forwards; the progress reported over
    a worst case sums to each pair's work on the images it ran on, and starts from the plan for all."""
    assert Pair("bptt:eot=20", "apgd-t", 100).work == 100 * 20 * 9 * 3
    assert Pair("bptt:eot=4", "square", 5000).work == 5000 * 4 and Pair("mdse", "apgd-ce", 100, 2).work == 1200
    x = torch.full((6, 1, 2, 2), 0.9)
    x[:3] = 0.1  # the first pair breaks these three, so the second (pruned) runs on the other three only
    pairs = (Pair("bptt:eot=20", "apgd-ce", 10), Pair("bptt", "fab-t", 5), Pair("bptt:eot=4", "square", 50, 1, True))
    reports = []
    result = worst_case(pairs, x, torch.zeros(6, dtype=torch.long), lambda v, idx: (v.flatten(1).amax(1) < 5).float(),
                        lambda pair, xb, yb, b: xb + 10 * (xb < 0.5) * (pair == pairs[0]), batch_size=4,
                        progress=lambda done, left: reports.append((done, left)))
    assert result.ran == [6, 3, 6]
    assert sum(done for done, _ in reports) == sum(n * p.work for n, p in zip(result.ran, pairs))
    # after the first batch (images 0-3) the plan is exact: the pruned pair on the 3 images left, the others on all
    assert [sum(r) for r in reports[:1]] == [6 * pairs[0].work + 3 * pairs[1].work + 6 * pairs[2].work]
    assert reports[-1][1] == 0
    # the convergence check reports its doubled ensembles the same way, planned over all its dimensions
    reports.clear()
    check(pairs, x, torch.zeros(6, dtype=torch.long), lambda v, idx: torch.ones(len(v)), lambda pair, xb, yb, b: xb,
          batch_size=4, base=torch.ones(6), stochastic=True, progress=lambda done, left: reports.append((done, left)))
    dims = [doubled(pairs, d, True) for d in ("draws", "steps", "restarts", "queries")]
    assert sum(reports[0]) == 6 * sum(p.work for d in dims for p in d) and reports[-1][1] == 0
    assert sum(done for done, _ in reports) == sum(reports[0])  # nothing broken: every doubled pair on all six
