"""Conclusions a reviewer can cite (DESIGN section 8.3-8.4, 8.10): counter-based encoder draws, the K-draw
judge with common random numbers, eps* on the grid against a brute-force pass, the null attack and its
check, Holm's adjustment, Wilcoxon's test, the hierarchical bootstrap's coverage, the scale-free
SNNAdv-clean loss, and the refusals of a bad eps grid or K."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spikeadv import cli
from spikeadv.api import Model
from spikeadv.attack import checks, estimators, suite
from spikeadv.models.foreign import as_model
from spikeadv.report import paired
from spikeadv.runtime.draws import Draws
from spikeadv.study import evaluation, judge, units

# --- counter-based draws and the judge ----------------------------------------------------------------------

def test_draws_are_a_function_of_image_draw_step_and_pixel_only():
    ids = torch.tensor([7, 3, 11])
    whole = Draws.of(5, ids, 4).uniform(6, torch.Size((12, 3, 4, 4)))
    chunked = Draws.of(5, ids, 4)
    parts = torch.cat([chunked.uniform(t, torch.Size((12, 3, 4, 4))) for t in (2, 1, 3)])
    assert torch.equal(whole, parts)  # chunks of time continue the stream
    alone = Draws.of(5, ids[1:2], 4).uniform(6, torch.Size((4, 3, 4, 4)))
    assert torch.equal(alone, whole.view(6, 4, 3, 3, 4, 4)[:, :, 1])  # image 3's draws, whatever its batch
    assert not torch.equal(Draws.of(6, ids, 4).uniform(6, torch.Size((12, 3, 4, 4))), whole)  # the seed matters


def test_counter_uniforms_are_uniform_and_independent_across_draws():
    u = Draws.of(0, torch.arange(64), 32).uniform(4, torch.Size((64 * 32, 3, 8, 8))).flatten().double()
    n = u.numel()
    # mean and P(u < 0.3) within 5 standard errors of a uniform's (1/sqrt(12 n) and sqrt(.21 / n))
    assert abs(u.mean().item() - 0.5) < 5 / math.sqrt(12 * n)
    assert abs((u < 0.3).double().mean().item() - 0.3) < 5 * math.sqrt(0.21 / n)
    draws = u.view(4, 32, 64, -1)  # timestep, draw, image, pixel
    r = torch.corrcoef(torch.stack([draws[:, 0].flatten(), draws[:, 1].flatten()]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(draws[:, 0].numel())


def test_crafting_sources_draw_the_same_spikes_under_any_chunking_of_time():
    """BPTT's, SNNAdv's and a TimeLoop's encoder draws are counter-based: one call's spikes do not depend on
    how many timesteps are folded into one forward pass (on CUDA the fold follows free memory). Were the
    spikes drawn per chunk from a generator, the logits would differ by whole spikes, not by rounding."""
    import dataclasses

    from spikeadv.config.spiking import Spiking
    from spikeadv.models.foreign import TimeLoop
    from spikeadv.models.network import Network

    torch.manual_seed(0)
    net = Network("32x32-8c3-2s-16fc-10o", 3, (0.5,) * 3, (0.25,) * 3).eval()
    x, y = torch.rand(5, 3, 32, 32), torch.arange(5)
    base = Spiking(neuron="lif", T=7, leak=0.9, encoding="poisson")
    grads, rates = [], []
    for chunk in (0, 1, 3, 7):
        snn = dataclasses.replace(base, chunk=chunk)
        source = estimators.make("bptt", net, snn, seed=4)
        first = source.value_and_grad(x, y)
        grads.append((first.logits, first.grad, source.scores(x)))  # two calls: the stream moves on
        rates.append(estimators.make("snnadv", net, snn, seed=4).base(x))
    for other in grads[1:]:  # the same spikes; sums over time in another order differ by float rounding only
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * a.abs().max().item())
    assert all(torch.equal(rates[0], r) for r in rates[1:])
    assert not torch.equal(grads[0][0], grads[0][2])  # successive calls draw fresh spikes
    # call c's spikes are the pure function Draws(seed, row, c): what the CPU and CUDA compute alike
    pure = [net(x, base, Draws(4, torch.arange(5), torch.full((5,), c))).detach() for c in (0, 1)]
    assert torch.equal(grads[0][0], pure[0]) and torch.equal(grads[0][2], pure[1])
    loop = TimeLoop(torch.nn.Flatten(), T=3, encoding="poisson", seed=2)
    first = loop(x)
    assert not torch.equal(loop(x), first)
    loop.restart()
    assert torch.equal(loop(x), first)


def test_expected_accuracy_is_the_same_whatever_the_batch_size_and_order(reference):
    snn2 = Model.from_run(reference, "snn2")
    _, _, x, y, _ = evaluation.targets(reference, 40, None)
    ids = torch.arange(40)
    p = judge.expected(snn2, x, y, ids, judge.Judge(draws=16, batch_size=64))
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    q = judge.expected(snn2, x[perm], y[perm], ids[perm], judge.Judge(draws=16, batch_size=16))
    assert torch.equal(p[perm], q)
    assert ((p > 0) & (p < 1)).any()  # a randomised classifier: some images right on some draws only
    vote = judge.expected(snn2, x, y, ids, judge.Judge(draws=16, batch_size=64, vote=True))
    assert torch.equal(vote, (p > 0.5).float())
    with pytest.raises(Exception, match="must be an integer >= 1"):
        judge.Judge(draws=0)


# --- eps* on the grid ---------------------------------------------------------------------------------------

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        torch.nn.init.normal_(self.fc.weight, std=0.2, generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_eps_star_from_the_sweep_equals_a_brute_force_pass_image_by_image():
    model = as_model(Linear().eval(), "linear")
    x = torch.rand(30, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model.net(x).argmax(1)  # every image right on its clean input
    y[:3] = (y[:3] + 1) % 10  # three wrong already: eps* = 0
    grid = (0.5, 1, 2, 4, 8, 16)
    pairs = (suite.Pair("ann", "fgsm", 1), suite.Pair("ann", "ifgsm", 3))  # deterministic, per image
    chosen = suite.Suite("t", ann=pairs, snn=(), poisson=(), curve_images=4, curve_steps=2, eps_curve=(8, 255),
                         steps_curve=(1, 2))
    ev = units.Evaluation(units.Setting(chosen, grid, batch_size=7), x, y, None, log=lambda line: None)
    card = ev.card(model)
    brute = []
    for i in range(len(y)):
        xi, yi = x[i:i + 1], y[i:i + 1]
        if model.net(xi).argmax(1) != yi:
            brute.append(0.0)
            continue
        broken = [e for e in grid if any(model.net(ev.attack(model, p, xi, yi, e, 0)).argmax(1) != yi for p in pairs)]
        brute.append(float(broken[0]) if broken else None)
    assert card["eps_star"] == brute
    assert 0 < sum(s is None for s in brute) < len(brute) - 3  # some beyond the grid, some broken on it
    robust = [card["eps"][f"{e:g}"]["worst_acc"] for e in grid]
    assert robust == sorted(robust, reverse=True)  # adversarials carried upward: the curve never rises
    for e, acc in zip(grid, robust):  # robust accuracy at eps = share of images with eps* beyond it
        assert acc == pytest.approx(sum(s is None or s > e for s in brute) / len(brute))
    assert card["median_eps_star"] == sorted(brute, key=lambda s: math.inf if s is None else s)[(len(brute) - 1) // 2]
    expected_auc = np.trapezoid([card["clean_acc"], *robust], [0, *grid]) / grid[-1]
    assert card["auc"] == pytest.approx(expected_auc)


# --- the null attack ----------------------------------------------------------------------------------------

def _null_setting():
    chosen = suite.Suite("t", ann=(), snn=(suite.Pair("bptt", "apgd-ce", 2),), poisson=(), curve_images=8,
                         curve_steps=2, eps_curve=(8, 255), steps_curve=(1, 2))
    return units.Setting(chosen, (4, 8), batch_size=64, draws=8)


def test_the_null_attack_keeps_clean_accuracy_with_common_random_numbers_and_fails_a_noisy_judge(reference):
    snn2 = Model.from_run(reference, "snn2")
    _, _, x, y, _ = evaluation.targets(reference, 500, None)  # every synthetic test image: the check's margin is smallest
    setting = _null_setting()
    honest = units.Evaluation(setting, x, y, None, log=lambda line: None)
    clean = honest.accuracy(snn2, x)
    null = honest.null(snn2)
    assert null["zero"] == clean  # the image itself, judged on the same draws: exactly clean accuracy
    calls = iter(range(10**6))

    def noisy(model, adv, idx):  # one fresh draw per judgement, as an attack's own single draw would be
        return judge.expected(model, adv, y[idx], idx, judge.Judge(draws=1, seed=next(calls), batch_size=64))

    fooled = units.Evaluation(setting, x, y, None, log=lambda line: None, judge=noisy).null(snn2)
    n = len(y)
    assert fooled["zero"] < clean - checks.margin1(clean, n)  # noise counted as attack success
    card = {"model": {"name": "snn20"}, "images": n, "clean_acc": clean, "null": fooled, "eps": {},
            "eval_eps": 8, "curve_images": 8, "curves": {"bptt": {"eps": {"255": 0.0}, "steps": {"1": 0.5, "2": 0.4},
                                                                   "trace": [1, 2], "zero_gradient_images": 0,
                                                                   "zero_gradient_entries": 0}}, "eot": None}
    failed = {c.name for c in checks.check_card(card) if c.passed is False}
    assert "the null attack keeps clean accuracy" in failed
    card["null"] = null
    assert "the null attack keeps clean accuracy" not in {c.name for c in checks.check_card(card) if c.passed is False}


# --- statistics ---------------------------------------------------------------------------------------------

def test_holm_matches_a_hand_computation():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06
    assert paired.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert paired.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert paired.holm([]) == []


def test_wilcoxon_matches_a_hand_computation():
    # d = (1, 2, 3, -4, 5, 6): ranks 1..6, W+ = 17, mean 10.5, var 6*7*13/24 = 22.75
    z = (abs(17 - 10.5) - 0.5) / math.sqrt(22.75)
    assert paired.wilcoxon_p(np.array([1, 2, 3, -4, 5, 6, 0])) == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert paired.wilcoxon_p(np.zeros(5)) == 1.0


def test_the_hierarchical_bootstrap_covers_a_known_effect_about_95_percent_of_the_time():
    rng = np.random.default_rng(2026)
    effect, runs, covered = 0.3, 200, 0
    for r in range(runs):
        instances = [rng.normal(effect + rng.normal(0, 0.2), 1.0, 40) for _ in range(20)]
        lo, hi = paired.hierarchical(instances, np.mean, resamples=400, seed=r)
        covered += lo <= effect <= hi
    # 95% nominal; 3 binomial standard errors of a coverage estimated from 200 runs: 3 * sqrt(.95 * .05 / 200)
    assert abs(covered / runs - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / runs)


def test_the_crossover_test_rejects_cells_of_opposite_sign_and_pools_cells_that_differ_in_size():
    rng = np.random.default_rng(0)
    agree = [rng.normal(m, 1, 300) for m in (0.1, 0.3, 0.6, 1.0)]  # one sign, sizes growing with eps
    opposite = [rng.normal(0.5, 1, 300), rng.normal(-0.5, 1, 300)]
    assert paired.heterogeneity(agree)[1] > 0.05
    assert paired.heterogeneity(opposite)[1] < 1e-6
    # the chi-square tails behind it: the 95% quantiles of 1..4 degrees of freedom
    for k, q in ((1, 3.841459), (2, 5.991465), (3, 7.814728), (4, 9.487729)):
        assert paired.chi2_sf(q, k) == pytest.approx(0.05, abs=1e-6)


# --- the budget used ------------------------------------------------------------------------------------------

def test_snnadv_clean_moves_images_where_the_proxys_cross_entropy_saturates():
    logits = torch.tensor([[400.0, 0.0, -300.0], [2.0, 1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    plain = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)[0]
    scaled = torch.autograd.grad(F.cross_entropy(estimators.standardised(logits), y, reduction="sum"), logits)[0]
    assert (plain[0] == 0).all()  # saturated in float32: an FGSM step would not move this image
    assert (scaled[0] != 0).all()  # on standardised logits it moves
    assert torch.equal(estimators.standardised(logits).argmax(1), logits.argmax(1))  # the same classes


# --- refusals (a bad eps grid or K for `evaluate`: tests/test_evaluate.py) ----------------------------------

def test_a_study_with_k_below_one_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--preset", "smoke", "--set", "study.draws=0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "study.draws" in err and err.count("\n") == 1 and not out.exists()


def test_presets_that_claim_the_papers_comparison_train_three_instances():
    from spikeadv.config.presets import get_preset

    for name in ("gpu", "paper"):
        assert len(get_preset(name).seeds) >= 3
    assert get_preset("cpu").study.draws >= 32 and get_preset("gpu").study.draws >= 32
