"""Adaptive evaluation (DESIGN section 8): estimators by spec, the ensemble worst case per image, the
gradient-masking checks (an honest ANN passes, a network with a hard quantiser is flagged), the card,
the command and its refusals, and the report's section that re-judges the whitebox claims."""

import json
import shutil

import numpy as np
import pytest
import torch

from spikeadv import cli, report
from spikeadv.api import Model
from spikeadv.attack import checks, estimators, suite
from spikeadv.config.grid import TARGETS
from spikeadv.config.spiking import Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.records import outcomes
from spikeadv.study import evaluation, units

QUICK = ["--suite", "quick", "--images", "8", "--eps", "8/255"]


@pytest.fixture(scope="module")
def evaluated(reference, tmp_path_factory):
    """The smoke study's run directory (a copy) evaluated with the quick suite."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(reference, run)
    assert cli.main(["evaluate", str(run), *QUICK]) == 0
    return run


def card(run):
    return json.loads((run / "evaluation" / "quick" / "card.json").read_text())


# --- estimators ------------------------------------------------------------------------------------------

def test_estimator_specs_build_sources_and_refuse_what_does_not_apply(reference):
    snn2 = Model.from_run(reference, "snn2")
    x, y = torch.rand(4, *snn2.net.input_shape), torch.tensor([0, 1, 2, 3])
    sharp = estimators.make("bptt:surrogate=rectangular,alpha=8", snn2.net, snn2.snn, seed=1)
    soft = estimators.make("bptt:surrogate=sigmoid,alpha=1", snn2.net, snn2.snn, seed=1)
    rate = estimators.make("bptr:eot=2", snn2.net, snn2.snn, seed=1)
    assert rate.draws == 2 and sharp.name == "bptt:surrogate=rectangular,alpha=8"
    # the same spikes forward (one seed), different backward: the surrogate shape changes the gradient
    assert torch.equal(sharp.scores(x), soft.scores(x))
    assert not torch.allclose(sharp.grad(x, y), soft.grad(x, y))
    with pytest.raises(SpikeAdvError, match="does not apply to an ANN"):
        estimators.make("bptt", snn2.net, None)
    with pytest.raises(SpikeAdvError, match="does not apply to a spikeadv SNN"):
        estimators.make("ann", snn2.net, snn2.snn)
    for bad, match in (("bppt", "unknown gradient estimator"), ("bptt:surrogate=relu", "unknown surrogate"),
                       ("bptt:sharpness=2", "is not one of"), ("hart:mix=2", "mix"), ("bptt:alpha=x", "number")):
        with pytest.raises(SpikeAdvError, match=match):
            estimators.parse(bad)


# --- the ensemble ------------------------------------------------------------------------------------------

def _ann_and_images(reference, n=40):
    models, _, x, y, _ = evaluation.targets(reference, n, None)
    return models[0], x, y


def test_worst_case_is_never_above_any_pair_alone_and_records_the_winner(reference):
    ann, x, y = _ann_and_images(reference)
    pairs = (suite.Pair("ann", "fgsm", 1), suite.Pair("ann", "apgd-ce", 5), suite.Pair("ann", "square", 40))
    ev = units.Evaluation(units.Setting(suite.SUITES["quick"], (8,)), x, y, None)  # where each pair breaks some image

    def run(chosen, prune):
        return suite.worst_case(chosen, x, y, lambda v, idx: ev.judge(ann, v, idx),
                                lambda pair, xb, yb, b: ev.attack(ann, pair, xb, yb, 8, b), 16, prune)

    every = run(pairs, prune=False)
    clean = int((every.winner != suite.WRONG_CLEAN).sum())
    worst = int((every.winner == suite.ROBUST).sum())
    for i, pair in enumerate(pairs):
        alone = run((pair,), prune=False)
        assert every.ran[i] == clean and every.fooled[i] == alone.fooled[0]  # same images, same draws
        assert worst <= clean - alone.fooled[0]
    assert sum(every.won) == clean - worst and all(0 < f for f in every.fooled)
    # each winner's kept image is one the model misclassifies, and the winner is the first pair that broke it
    broken = every.winner >= 0
    assert (ev.judge(ann, every.adv[broken], torch.nonzero(broken).flatten()) == 0).all()
    assert torch.equal(every.p, (every.winner == suite.ROBUST).float())  # deterministic: p is 0 or 1
    assert torch.equal(every.adv[every.winner < 0], x[every.winner < 0])
    pruned = run(pairs, prune=True)
    assert pruned.ran[0] == clean and pruned.fooled[0] == every.fooled[0]
    for i in range(1, len(pairs)):  # AutoAttack's protocol: each pair only on what is left
        assert pruned.ran[i] == pruned.ran[i - 1] - pruned.won[i - 1] and pruned.fooled[i] == pruned.won[i]
    assert int((pruned.winner == suite.ROBUST).sum()) <= clean - every.fooled[0]


# --- gradient-masking checks -------------------------------------------------------------------------------

class Quantised(torch.nn.Module):
    """A network that masks gradients: a hard 4-level quantiser (zero gradient almost everywhere) in front."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


def _card_of(model, x, y):
    chosen = suite.Suite("test", ann=(suite.Pair("ann", "apgd-ce", 10), suite.Pair("ann", "square", 1000)),
                         snn=(), poisson=(), curve_images=len(y), curve_steps=10, eps_curve=(8, 255),
                         steps_curve=(1, 10))
    return units.Evaluation(units.Setting(chosen, (8,), batch_size=64), x, y, None).card(model)


def test_a_suite_that_claims_a_bound_checks_its_convergence_on_the_card(reference):
    """The convergence unit doubles steps, restarts and queries of an ANN's ensemble (no draws: a
    deterministic model) on the first ``converge`` images, and the card's check reads it."""
    ann, x, y = _ann_and_images(reference, 24)
    chosen = suite.Suite("bounded", ann=(suite.Pair("ann", "apgd-ce", 5), suite.Pair("ann", "square", 50, 1, True)),
                         snn=(), poisson=(), curve_images=8, curve_steps=2, eps_curve=(8, 255), steps_curve=(1, 2),
                         converge=16)
    card = units.Evaluation(units.Setting(chosen, (8,), batch_size=24), x, y, None).card(ann)
    [report] = card["convergence"].values()  # its grid's one eps
    assert report["images"] == 16 and report["dimensions"]["draws"]["moved"] is None
    assert report["dimensions"]["steps"]["pairs"] == ["apgd-ce-10@ann"]
    assert report["dimensions"]["restarts"]["pairs"] == ["apgd-ce-5x2@ann", "square-50x2-every@ann"]
    assert report["dimensions"]["queries"]["pairs"] == ["square-100-every@ann"]
    base = sum(card["eps"]["8"]["p"][:16])
    assert all(d["before"] == pytest.approx(base, abs=1e-3) and d["after"] <= d["before"]
               for d in report["dimensions"].values())
    [check] = [c for c in card["checks"] if c["name"] == "worst case converged"]
    assert check["passed"] is report["converged"] and check["detail"].startswith("at eps 8/255 ")
    assert "of 16 images" in check["detail"]


def test_masking_checks_pass_an_honest_ann_and_flag_a_hard_quantiser(reference):
    ann, x, y = _ann_and_images(reference, 64)
    honest = {c["name"]: c for c in _card_of(ann, x, y)["checks"]}
    assert all(c["passed"] is not False for c in honest.values()), [c for c in honest.values() if c["passed"] is False]
    assert honest["unbounded attack succeeds"]["passed"] and honest["attack loss rises over iterations"]["passed"]
    masked = Model("ann", 0, Quantised(ann.net), None, ann.path, "quantised", {})
    flagged = {c["name"]: c for c in _card_of(masked, x, y)["checks"]}
    for name in ("unbounded attack succeeds", "input gradients are not zero", "attack loss rises over iterations",
                 "Square does not beat the gradient attacks"):
        assert flagged[name]["passed"] is False, flagged[name]
    line = checks.Check(**flagged["input gradients are not zero"]).line()
    assert "gradient masking suspected" in line and "ann0" in line and "100.0% of images" in line


def test_checks_margin_is_one_image_or_two_standard_errors():
    assert checks.margin(0.0, 0.0, 50) == checks.margin1(0.0, 50) == pytest.approx(1 / 50)
    assert checks.margin(0.5, 0.5, 100) == pytest.approx(1.96 * np.sqrt(0.5 / 100))
    assert checks.margin1(0.5, 100) == pytest.approx(1.96 * 0.05)


# --- the command, the card, the report ---------------------------------------------------------------------

def test_evaluate_writes_a_card_rows_and_plots_for_every_model(evaluated):
    folder = evaluated / "evaluation" / "quick"
    data = card(evaluated)
    assert [c["model"]["name"] for c in data["cards"]] == [f"{k}{i}" for i in (0, 1) for k in TARGETS]  # and controls
    assert data["images"] == 8 and data["versions"]["spikeadv"] and data["labels"] and data["draws"] == 2
    for c in data["cards"]:
        e = c["eps"]["8"]
        assert e["worst_acc"] <= e["clean_acc"] and c["grid"] == [8.0]
        assert e["clean_acc"] == pytest.approx(np.mean(c["clean"])) and e["worst_acc"] == pytest.approx(np.mean(e["p"]))
        assert e["pairs"][0]["ran"] == sum(p > 0 for p in c["clean"])  # every image right on some draw
        assert c["eps_star"] == [0.0 if q < 0.5 else 8.0 if p < 0.5 else None for q, p in zip(c["clean"], e["p"])]
        assert (folder / f"{c['model']['name']}.png").stat().st_size > 10_000
        assert {k["name"] for k in c["checks"]} >= {"unbounded attack succeeds", "whitebox >= transfer", "EOT converged"}
        kind, other = c["model"]["kind"], 1 - c["model"]["instance"]
        assert set(e["transfer"]) == ({f"ann{other}"} if kind == "ann" else {f"{kind}{other}", f"ann{other}"})
        assert c["null"]["zero"] == pytest.approx(c["clean_acc"])  # common random numbers
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= set(report.COLUMNS) - {"target_hit_rate"}
    for row, c in zip(rows, data["cards"]):
        correct = outcomes.unpack(row["correct"], row["n"])
        assert row["adv_acc"] == pytest.approx(100 * c["eps"]["8"]["worst_acc"], abs=1e-3)
        assert correct.tolist() == [p >= 0.5 for p in c["eps"]["8"]["p"]]
    md = (folder / "card.md").read_text()
    assert "Gradient-masking checks" in md and "| ann0 |" in md and "snn20.png" in md and "median eps*" in md


def test_a_rerun_reuses_every_unit(evaluated, capsys):
    cells = sorted((evaluated / "evaluation" / "quick" / "cells").iterdir())
    stamps = [p.stat().st_mtime_ns for p in cells]
    assert cli.main(["evaluate", str(evaluated), *QUICK]) == 0
    assert [p.stat().st_mtime_ns for p in cells] == stamps
    assert "broke" not in capsys.readouterr().out  # nothing attacked again


def test_report_judges_the_whitebox_claims_on_robustness_curves(evaluated):
    report.write_report(evaluated)
    text = (evaluated / "report" / "report.md").read_text()
    section = text[text.index("## Robustness curves and minimal perturbations"):]
    assert "suite `quick`" in section and "| snn20 | 2 draw(s) |" in section and "median eps*" in section
    assert "(b) Under whitebox attacks" in section and "(c) SNN-II" in section and "Wilcoxon" in section
    for control in ("ANN (SNN-I acc.) vs SNN-I", "ANN (SNN-II acc.) vs SNN-II", "ANN (rate input) vs SNN-II"):
        assert "(b') (b) against the controls" in section and control in section
    assert "2 instance pair(s)" in section and "Holm-adjusted p" in section


@pytest.mark.parametrize("args, message", [
    (["--suite", "huge"], "unknown suite 'huge'"),
    (["--pair", "bppt/apgd-ce"], "unknown gradient estimator 'bppt'"),
    (["--pair", "bptt/cw"], "unknown attack 'cw'"),
    (["--pair", "bptt"], "expected ESTIMATOR/ATTACK"),
    (["--eps", "0"], "must be above 0"),
    (["--eps", "eight"], "--eps takes eps in pixel units"),
    (["--eps", ""], "give at least one eps"),
    (["--eps=-1/255"], "is negative"),
    (["--eps", "nan"], "--eps takes eps in pixel units"),
    (["--eps", "8"], "looks like 1/255 units: pass 8/255"),
    (["--eps", "300/255"], "must be in [0, 1]"),
    (["--eps", "4/255,2/255,8/255"], "strictly increasing"),
    (["--eps", "2/255,0.0078"], "strictly increasing"),
    (["--draws", "0"], "must be an integer >= 1"),
    (["--pair", "assg:a=-0.1/sa-pgd"], "a (ASSG's bound on gradient vanishing) must be in (0, 0.5)"),
    (["--pair", "assg:beta=1/sa-pgd"], "beta (the moments' decay) in [0, 1)"),
    (["--pair", "bptt:alpha=-2/apgd-ce"], "alpha (surrogate sharpness) must be > 0"),
    (["--pair", "mdse:step=0/apgd-ce"], "MDSE's trial step"),
    (["--pair", "bptt:eot=0/apgd-ce"], "eot must be an int >= 1"),
    (["--pair", "bptt/square/0"], "STEPS (queries for square) must be >= 1"),
    (["--pair", "asgg/sa-pgd"], "unknown gradient estimator 'asgg'"),
    (["--pair", "assg/sapgd"], "unknown attack 'sapgd'"),
])
def test_bad_requests_are_refused_in_one_line_and_write_nothing(reference, tmp_path, capsys, args, message):
    out = tmp_path / "card"
    assert cli.main(["evaluate", str(reference), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_estimator_for_another_kind_of_checkpoint_is_refused(reference, tmp_path, capsys):
    ann = json.loads((reference / "run.json").read_text())["models"][0]
    assert ann["kind"] == "ann"
    out = tmp_path / "card"
    assert cli.main(["evaluate", str(reference / ann["path"]), "--pair", "bptt/apgd-ce", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no pair of the suite applies to ann0 (an ANN)" in err and "ann" in err.split("estimators for it:")[1]
    assert not out.exists()


def test_rate_mix_backward_is_what_bptr_and_hart_use(reference):
    snn2 = Model.from_run(reference, "snn2")
    assert estimators.parse("hart")[1]["mix"] == 0.5
    for spec, mix in (("bptr", 1.0), ("hart:mix=0.25", 0.25), ("bptt", 0.0)):
        src = estimators.make(spec, snn2.net, snn2.snn, seed=3)
        x, y = torch.rand(2, *snn2.net.input_shape), torch.tensor([1, 2])
        ref = estimators.bptt(snn2.net, Spiking(**{**snn2.snn.__dict__, "rate_mix": mix}), seed=3)
        assert torch.equal(src.grad(x, y), ref.grad(x, y)), spec


class StepLIF(torch.nn.Module):
    """A single-step SNN as other libraries write one: a membrane kept between calls until reset."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.out = torch.nn.Linear(3 * 8 * 8, 32), torch.nn.Linear(32, 10)
        self.v = None

    def forward(self, x):
        current = self.fc(x.flatten(1))
        self.v = current if self.v is None else 0.9 * self.v + current
        spike = (self.v > 0.5).float() + torch.sigmoid(4 * (self.v - 0.5)) - torch.sigmoid(4 * (self.v - 0.5)).detach()
        self.v = self.v - spike.detach() * 0.5
        return self.out(spike)


def reset(module):
    module.v = None


def test_a_foreign_snn_is_evaluated_through_a_time_loop(tmp_path):
    import spikeadv

    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = StepLIF().eval()
    model = spikeadv.TimeLoop(net, T=4, reset=reset, encoding="poisson", seed=1)
    y = model(x).argmax(1)  # labels the model gets right on its first draw
    stale = spikeadv.TimeLoop(net, T=4, encoding="direct")
    fresh = spikeadv.TimeLoop(net, T=4, reset=reset, encoding="direct")
    assert torch.equal(fresh(x), fresh(x)) and not torch.equal(stale(x), stale(x))  # state reset between calls
    grad = estimators.ann(model).grad(x, y)
    assert grad.abs().sum() > 0  # through the surrogate and the straight-through encoder
    result = spikeadv.evaluate(model, x, y, eps=16 / 255, suite="quick", out=tmp_path / "card", name="step-lif")
    e = result["eps"]["16"]
    assert e["worst_acc"] < e["clean_acc"] and result["judge"]["draws"] == 32  # a stochastic model: K draws
    assert {c["name"] for c in result["checks"]} >= {"unbounded attack succeeds", "input gradients are not zero"}
    assert (tmp_path / "card" / "card.json").exists() and (tmp_path / "card" / "step-lif.png").exists()


def test_apgd_on_a_stochastic_source_returns_the_highest_loss_point(reference):
    # one draw's misclassification is no evidence on a Poisson model: APGD keeps climbing the loss
    import dataclasses

    import torch.nn.functional as F

    from spikeadv.attack.apgd import apgd

    ann, x, y = _ann_and_images(reference, 32)
    exact = estimators.ann(ann.net)
    noisy = dataclasses.replace(exact, stochastic=True)
    eps = 4 / 255
    first = apgd(exact, x, y, eps, 20, generator=torch.Generator().manual_seed(0))
    highest = apgd(noisy, x, y, eps, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ce = lambda v: F.cross_entropy(ann.net(v), y, reduction="none")  # noqa: E731
        fooled = ann.net(first).argmax(1) != y
        assert fooled.any() and (ce(highest) >= ce(first) - 1e-4).all()
        assert (ce(highest)[fooled] > ce(first)[fooled] + 1e-4).any()  # it went on past the first hit
    assert estimators.make("bptt", *_snn2(reference)).stochastic and not estimators.make("snnadv-clean", *_snn2(reference)).stochastic


def _snn2(reference):
    snn2 = Model.from_run(reference, "snn2")
    return snn2.net, snn2.snn


def test_every_image_gives_each_pair_its_own_accuracy(reference, tmp_path):
    ann = json.loads((reference / "run.json").read_text())["models"][0]
    out = tmp_path / "card"
    args = ["evaluate", str(reference / ann["path"]), "--images", "32", "--eps", "4/255", "--out", str(out),
            "--pair", "ann/fgsm", "--pair", "ann/apgd-ce/10"]
    assert cli.main([*args, "--every-image"]) == 0
    e = json.loads((out / "card.json").read_text())["cards"][0]["eps"]["4"]
    clean = round(e["clean_acc"] * 32)
    assert [p["ran"] for p in e["pairs"]] == [clean, clean]
    alone = [(clean - p["fooled"]) / 32 for p in e["pairs"]]
    assert e["worst_acc"] <= min(alone) < e["clean_acc"]
    assert e["pairs"][1]["fooled"] >= e["pairs"][1]["won"]
    assert cli.main(args) == 0  # pruned: the second pair only on what the first left
    e = json.loads((out / "card.json").read_text())["cards"][0]["eps"]["4"]
    assert e["pairs"][1]["ran"] == clean - e["pairs"][0]["won"]


@pytest.mark.parametrize("name", list(suite.SUITES))
def test_every_suite_names_estimators_and_attacks_that_exist_and_fit(name):
    chosen = suite.get(name)
    poisson, direct = Spiking(neuron="lif", leak=0.9, T=4), Spiking(T=4, encoding="direct")
    suite.check_pairs(chosen.pairs(None), "ann", "ann")
    for snn in (poisson, direct):
        pairs = chosen.pairs(snn)
        suite.check_pairs(pairs, "snn", "snn")
        squares = [i for i, p in enumerate(pairs) if p.attack == "square"]
        assert squares == ([len(pairs) - 1] if chosen.norm == "linf" else [])  # Square (L-inf only) last
        assert all("eot=" not in e for e in chosen.curve_sources(snn))
    assert len(chosen.pairs(poisson)) == len(chosen.pairs(direct)) + len(chosen.poisson)
    with pytest.raises(SpikeAdvError, match="does not apply to snn"):
        suite.check_pairs(chosen.pairs(None), "snn", "snn")
