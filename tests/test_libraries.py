"""Your own SNN, first class: SpikingJelly, snnTorch and Norse networks wrapped in a TimeLoop, attacked
through every estimator that reaches them (the surrogate swapped per neuron, the library's own spikes
kept), in eval mode with their buffers untouched, compared pairwise, and from the command line."""

import json
import os
import subprocess
import sys
import textwrap

import norse.torch as norse
import pytest
import snntorch
import torch
from snntorch import surrogate as snn_surrogate
from spikingjelly.activation_based import layer as sj_layer
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import nn

import spikeadv
from spikeadv.attack import estimators
from spikeadv.attack import suite as suites
from spikeadv.errors import SpikeAdvError
from spikeadv.models import adapters


def spikingjelly_net(bn: bool = False, pixels: int = 64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(sj_layer.Flatten(), sj_layer.Linear(pixels, 32), *([nn.BatchNorm1d(32)] if bn else []),
                        sj_neuron.LIFNode(tau=2.0, surrogate_function=sj_surrogate.ATan(alpha=2.0)),
                        sj_layer.Linear(32, 10))
    with torch.no_grad():  # inputs that make its neurons spike (v_th 1, input halved by tau 2)
        net[1].weight.mul_(8)
    return net


def snntorch_net(pixels: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 32),
                         snntorch.Leaky(beta=0.9, spike_grad=snn_surrogate.fast_sigmoid(slope=25), init_hidden=True),
                         nn.Linear(32, 10))


def norse_net(pixels: int = 64) -> nn.Module:
    torch.manual_seed(0)
    net = norse.SequentialState(nn.Flatten(), nn.Linear(pixels, 32), norse.LIFCell(), nn.Linear(32, 10))
    with torch.no_grad():  # Norse's membrane (dt 1 ms, tau 10 ms) needs strong input to spike within a few steps
        net[1].weight.mul_(40)
    return net


# the library's own surrogate and spikeadv's of the same shape: SpikingJelly's ATan(2), snnTorch's
# fast_sigmoid(slope 25) = 1 / (25 |x| + 1)^2, Norse's SuperSpike = 1 / (|x| + 1)^2 (its alpha unused)
LIBRARIES = {"spikingjelly": (spikingjelly_net, "atan", 2.0), "snntorch": (snntorch_net, "fast-sigmoid", 25.0),
             "norse": (norse_net, "fast-sigmoid", 1.0)}


def images(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", LIBRARIES)
def test_the_swapped_surrogate_is_the_librarys_own_gradient_for_the_same_shape(name):
    make, shape, alpha = LIBRARIES[name]
    loop, (x, y) = spikeadv.TimeLoop(make(), T=4), images()
    found = adapters.neurons(loop)
    before = [getattr(n.module, n.attribute) for n in found]
    assert loop.libraries == [name] and len(found) == 1
    own = estimators.make("bptt", loop, None).grad(x, y)
    same = estimators.make(f"bptt:surrogate={shape},alpha={alpha:g}", loop, None).grad(x, y)
    other = estimators.make("bptt:surrogate=sigmoid,alpha=4", loop, None).grad(x, y)
    assert own.abs().sum() > 0 and torch.allclose(own, same, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(own, other)  # another shape: another gradient, the same spikes and logits
    with adapters.swapped(loop, lambda u: torch.ones_like(u)):
        swapped_logits = loop(x)
    assert torch.equal(swapped_logits, loop(x))
    assert [getattr(n.module, n.attribute) for n in found] == before  # restored


@pytest.mark.parametrize("name", LIBRARIES)
def test_every_surrogate_estimator_family_reaches_a_library_snn(name):
    loop, (x, y) = spikeadv.TimeLoop(LIBRARIES[name][0](), T=4), images()
    own = estimators.make("ann", loop, None).grad(x, y)
    for spec in ("bptt", "bptt:surrogate=rectangular,alpha=1", "assg", "pdsg", "mdse"):
        grad = estimators.make(spec, loop, None).grad(x, y)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, spec
        assert torch.equal(grad, own) == (spec == "bptt"), spec  # a swapped surrogate is another gradient
    for spec in ("bptr", "hart", "snnadv-clean"):  # they need spikeadv's own network
        with pytest.raises(SpikeAdvError, match="does not apply to a SpikingJelly, snnTorch or Norse SNN"):
            estimators.make(spec, loop, None)


def test_a_swap_is_undone_when_the_forward_pass_fails():
    loop = spikeadv.TimeLoop(spikingjelly_net(), T=2)
    neuron = adapters.neurons(loop)[0].module
    own = neuron.surrogate_function
    with pytest.raises(RuntimeError):
        with adapters.swapped(loop, lambda u: u):
            loop(torch.rand(2, 3, 5, 5))  # the wrong shape for the first layer
    assert neuron.surrogate_function is own and "surrogate_function" not in neuron.__dict__


def test_a_norse_network_gets_its_state_back_at_every_step():
    net, (x, _) = norse_net(), images(4)
    got = spikeadv.TimeLoop(net, T=5)(x)
    state, total = None, 0
    for _ in range(5):
        out, state = net(x, state)
        total = total + out
    fresh = sum(net(x)[0] for _ in range(5)) / 5  # each step from a resting membrane
    assert torch.allclose(got, total / 5) and not torch.allclose(got, fresh)


def test_a_model_in_train_mode_is_attacked_in_eval_mode_and_given_back_unchanged(tmp_path):
    net = spikingjelly_net(bn=True)
    net(torch.rand(16, 1, 8, 8))  # batch-norm statistics of its own
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    loop = spikeadv.TimeLoop(net, T=3)
    x, _ = images(10)
    with torch.no_grad(), adapters.attacking(loop):
        y = loop(x).argmax(1)
    lines = []
    card = spikeadv.evaluate(loop, x, y, eps=(16 / 255,), suite="quick", name="sj-bn", log=lines.append)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # num_batches_tracked too
    assert net.training and all(m.training for m in net.modules())
    assert any("train mode" in line for line in lines) and card["clean_acc"] == 1.0  # judged as in eval mode


def test_a_model_is_attacked_on_the_images_device_and_given_back_on_its_own():
    moves = []

    class Spy(nn.Sequential):
        def to(self, *args, **kwargs):
            moves.append(torch.device(args[0]))
            return super().to(*args, **kwargs)

    x, y = images(6)
    spikeadv.evaluate(Spy(nn.Flatten(), nn.Linear(64, 10)), x, y, eps=(8 / 255,), suite="quick", device="cpu",
                      log=lambda line: None)
    assert moves == [torch.device("cpu"), torch.device("cpu")]  # to the images' device, then back home


def test_buffers_changed_during_an_attack_are_refused_and_restored():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("seen", torch.zeros(()))
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            self.seen += 1
            return self.fc(x.flatten(1))

    net = Counting()
    with pytest.raises(SpikeAdvError, match="changed its buffers"):
        with adapters.attacking(net):
            net(torch.rand(2, 1, 8, 8))
    assert net.seen.item() == 0


def test_the_card_names_a_wrapped_snn_as_given_and_says_how_it_runs(tmp_path):
    loop, (x, _) = spikeadv.TimeLoop(snntorch_net(), T=4, encoding="poisson", seed=3), images(16)
    with torch.no_grad():
        y = loop(x).argmax(1)
    card = spikeadv.evaluate(loop, x, y, eps=(4 / 255, 64 / 255), suite="quick", name="my-snn", out=tmp_path)
    assert card["model"]["name"] == "my-snn" and (tmp_path / "my-snn.png").exists()
    assert card["model"]["runs"] == "snntorch SNN (TimeLoop), T=4, poisson input"
    text = (tmp_path / "card.md").read_text()
    assert "| my-snn | snntorch SNN (TimeLoop), T=4, poisson input |" in text and "BPTR" not in text
    ran = {p["estimator"].partition(":")[0] for e in card["eps"].values() for p in e["pairs"]}
    assert ran == {"bptt"}  # the quick suite's SNN pairs that reach it: no proxy, no BPTR
    for e in card["eps"].values():  # Square's line counts the images the gradient attacks left
        square = next(p for p in e["pairs"] if p["attack"] == "square")
        left = square["won"] + e["winner"].count(-1)
        assert any(f"Square broke {square['won']} of the {left} images" in c["detail"] for c in card["checks"])


def test_a_poisson_wrapped_snn_gets_eot_on_every_drawn_pair():
    loop = spikeadv.TimeLoop(spikingjelly_net(), T=4, encoding="poisson")
    strong = suites.get("strong")
    pairs = strong.pairs(None, loop)
    assert pairs and all(p.estimator.endswith("eot=20") or (p.attack == "square" and p.estimator.endswith("eot=4"))
                         for p in pairs)
    assert all(p.estimator.partition(":")[0] in ("bptt", "assg", "pdsg", "mdse") for p in pairs)
    direct = strong.pairs(None, spikeadv.TimeLoop(spikingjelly_net(), T=4))
    assert not any("eot=" in p.estimator for p in direct)


def test_mdse_candidates_on_a_poisson_wrapped_snn_see_the_same_encoder_draws():
    """Common random numbers across MDSE's candidates: in one step, each candidate's gradient (2 EOT
    draws) and each trial loss come from the same calls of the wrapper's encoder stream."""
    loop, (x, y) = spikeadv.TimeLoop(spikingjelly_net(), T=4, encoding="poisson"), images()
    source = estimators.make("mdse:eot=2", loop, None, seed=3)
    used = []
    draw = loop.stream.next
    loop.stream.next = lambda rows, device: (used.append(loop.stream.calls), draw(rows, device))[1]
    source.value_and_grad(x, y)
    assert used == [0, 1, 0, 1, 2, 3, 2, 3]  # gradients: calls 0-1 for each candidate; trials: 2-3 for each


def test_compare_judges_your_models_pairwise_on_the_same_images(tmp_path):
    x, _ = images(24)
    sj, st = spikeadv.TimeLoop(spikingjelly_net(), T=3), spikeadv.TimeLoop(snntorch_net(), T=3)
    with torch.no_grad():
        y = sj(x).argmax(1)
    card = spikeadv.compare({"sj": sj, "snntorch": st}, x, y, eps=(2 / 255, 8 / 255), suite="quick", out=tmp_path,
                            return_adv="pairs")
    own = card["cards"][0]["adversarial_pairs"]["8"]  # each pair's own output, the image where it did not run
    assert list(own) == [p["name"] for p in card["cards"][0]["eps"]["8"]["pairs"]]
    assert all((a - x).abs().max() <= 8 / 255 + 1e-6 for a in own.values())
    assert [c["model"]["name"] for c in card["cards"]] == ["sj", "snntorch"] and len(card["paired"]) == 1
    assert "sj vs snntorch" in card["paired"][0] and "Holm-adjusted p" in card["paired"][0]
    assert "sj not checked; snntorch not checked" in card["paired"][0]  # quick: a first look, no bound
    adv = card["cards"][0]["adversarial"]["8"]
    assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():  # the returned inputs are the ones the card counts as broken
        wrong = sj(adv).argmax(1) != y
    assert wrong.float().mean().item() == pytest.approx(1 - card["cards"][0]["eps"]["8"]["worst_acc"])
    saved = json.loads((tmp_path / "card.json").read_text())
    assert saved["paired"] == card["paired"] and "adversarial" not in saved["cards"][0]
    assert "## Paired comparison" in (tmp_path / "card.md").read_text()


FACTORY = '''
    import torch
    from torch import nn
    from spikingjelly.activation_based import layer, neuron

    def csnn():
        torch.manual_seed(0)
        return nn.Sequential(layer.Flatten(), layer.Linear(3 * 32 * 32, 16), neuron.LIFNode(), layer.Linear(16, 10))
'''


def _cli(tmp_path, *argv):
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "spikeadv", "evaluate", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path)


@pytest.mark.slow
def test_a_model_of_your_own_from_the_command_line(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "mynets.py").write_text(textwrap.dedent(FACTORY))
    sys.path.insert(0, str(tmp_path))
    try:
        import mynets
        save_file(mynets.csnn().state_dict(), str(tmp_path / "w.safetensors"))
    finally:
        sys.path.remove(str(tmp_path))
    run = _cli(tmp_path, "--model", "mynets:csnn", "--weights", "w.safetensors", "--T", "2", "--data", "synthetic",
               "--root", str(tmp_path / "data"), "--images", "8", "--suite", "quick", "--eps", "8/255", "--out", "card")
    assert run.returncode == 0, run.stderr
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    assert card["cards"][0]["model"]["runs"] == "spikingjelly SNN (TimeLoop), T=2, direct input"
    (tmp_path / "needy.py").write_text("def csnn(width):\n    raise AssertionError('never called')\n")
    bad = {"not importable": (["--model", "nope.nets:csnn"], "cannot import"),
           "a factory that needs arguments": (["--model", "needy:csnn"], "but it needs width"),
           "weights that do not match": (["--model", "mynets:csnn", "--weights", "bad.safetensors"], "do not match"),
           "an encoding the wrapper does not take": (["--model", "mynets:csnn", "--T", "2", "--encoding", "rate"],
                                                     "invalid choice")}
    save_file({"other": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    for what, (argv, message) in bad.items():
        run = _cli(tmp_path, *argv, "--data", "synthetic", "--root", str(tmp_path / "data"), "--out", "bad")
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, what
        assert not (tmp_path / "bad").exists(), what


@pytest.mark.parametrize("name", LIBRARIES)
def test_the_ensemble_is_at_most_torchattacks_apgd_image_by_image(name):
    # torchattacks' APGD-CE at equal steps on the same images: every image it breaks, the ensemble breaks
    import torchattacks

    loop = spikeadv.TimeLoop(LIBRARIES[name][0](pixels=28 * 28), T=4)  # MNIST-sized
    x = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = loop(x).argmax(1)  # every image right, so every image can be broken
    eps, steps = 0.005, 50  # where torchattacks breaks about half
    theirs = torchattacks.APGD(loop, eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)(x, y)
    with torch.no_grad():
        broken_by_them = loop(theirs).argmax(1) != y
    pairs = [f"bptt/apgd-ce/{steps}", f"bptt/apgd-dlr/{steps}", f"assg/sa-pgd/{steps}", f"pdsg/apgd-ce/{steps}",
             f"mdse/apgd-ce/{steps}", "bptt/square/1000"]
    card = spikeadv.evaluate(loop, x, y, eps=(eps,), suite="quick", pairs=pairs, log=lambda line: None)
    ours = torch.tensor(next(iter(card["eps"].values()))["p"]) < 0.5
    assert 0 < broken_by_them.sum() < len(y)  # an eps where the comparison says something
    assert not (broken_by_them & ~ours).any(), f"{int((broken_by_them & ~ours).sum())} images only torchattacks broke"
    assert ours.sum() >= broken_by_them.sum()


def test_grey_images_get_the_mnist_eps_grid_and_curves_around_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, _ = images(8)
    with torch.no_grad():
        y = net(x).argmax(1)
    card = spikeadv.evaluate(net, x, y, suite="quick", log=lambda line: None)
    assert card["grid"] == [round(e * 255, 6) for e in (0.05, 0.1, 0.15, 0.2, 0.3)] and card["eval_eps"] == 0.15 * 255
    curve = next(iter(card["curves"].values()))["eps"]
    assert sorted(curve, key=float) == ["38.25", "153", "255"]  # quick's 8, 32/255 and unbounded, around 0.15


def test_the_l2_suite_attacks_in_the_l2_ball_with_its_own_grid(tmp_path):
    from spikeadv.study.evaluation import eps_grid

    loop, (x, _) = spikeadv.TimeLoop(norse_net(), T=3), images(12)
    with torch.no_grad():
        y = loop(x).argmax(1)
    card = spikeadv.evaluate(loop, x, y, suite="l2", out=tmp_path, return_adv=True, log=lambda line: None)
    assert card["grid"] == [127.5, 255, 382.5, 510, 765]  # 0.5 ... 3 (L2 radii) for grey images
    for eps, e in card["eps"].items():
        radius = float(eps) / 255
        assert max(e["l2"]) <= radius + 1e-4 and {p["attack"] for p in e["pairs"]} == {"apgd-l2", "pgd-l2"}
        assert (card["adversarial"][eps] - x).flatten(1).norm(dim=1).max() <= radius + 1e-4
    curve = next(iter(card["curves"].values()))["eps"]
    assert max(curve, key=float) == f"{255 * 8:g}"  # unbounded: the diameter of [0, 1]^64
    assert card["eps"]["765"]["worst_acc"] <= card["eps"]["127.5"]["worst_acc"]
    assert "L2 (eps: the radius) threat model" in (tmp_path / "card.md").read_text()
    assert eps_grid([0.5, 2.0], "l2") == (127.5, 510.0)
    for bad in ([2.0], [float("nan")]):
        with pytest.raises(SpikeAdvError):
            eps_grid(bad)  # L-inf eps above 1 or not a number
    with pytest.raises(SpikeAdvError, match="L2 radius"):
        eps_grid([-1.0], "l2")


def test_the_readme_example_of_your_own_snn_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your own SNN"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([16, 1, 28, 28])" in printed
    assert all(pair in printed for pair in ("spikingjelly vs snntorch", "spikingjelly vs norse", "snntorch vs norse"))
