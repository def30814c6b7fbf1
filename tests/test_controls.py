"""The controls that isolate spiking (DESIGN section 8.5): one architecture for every kind, model selection
on a held-out validation split, the accuracy-matched ANN and the ANN on the Poisson rate image."""

import dataclasses
import json
import math

import pytest
import torch

from spikeadv import cli, data
from spikeadv.attack import estimators
from spikeadv.config.grid import CONTROLS, KINDS, MATCHED, TARGETS
from spikeadv.config.presets import PRESETS, get_preset
from spikeadv.errors import SpikeAdvError
from spikeadv.models import kinds
from spikeadv.models.network import Network, fold_batchnorm
from spikeadv.models.train import accuracy, snapshot_path
from spikeadv.models.trained import load_network
from spikeadv.records import checkpoint
from spikeadv.runtime.draws import Draws


@pytest.mark.parametrize("name", PRESETS)
def test_every_kind_of_a_preset_is_one_architecture(name):
    """Spec, width (so kernels, channels, pooling) and neuron placement: the same for the three kinds and
    the controls, as the networks are built and deployed (batch-norm folded, dropout off)."""
    preset = PRESETS[name]
    info = data.synthetic("test", n=1).info
    built = {kind: fold_batchnorm(kinds.network(preset, kind, info).eval()) for kind in TARGETS}
    shapes = {kind: [tuple(p.shape) for p in net.parameters()] for kind, net in built.items()}
    assert all(s == shapes["ann"] for s in shapes.values()), shapes
    configs = {kind: {k: v for k, v in net.config().items() if k not in ("dropout", "bias")} for kind, net in built.items()}
    assert all(c == configs["ann"] for c in configs.values()), configs
    placement = {preset.spiking(kind).spike_after_pool for kind in ("snn1", "snn2")}
    assert len(placement) == 1, f"{name}: SNN-I and SNN-II put their pooling neurons differently"


@pytest.mark.parametrize("bad, match", [
    (["validation=0"], "validation"),
    (["validation=2048"], "holds out every one"),
    (["ann.snapshots=1"], "snapshots >= 2"),
    (["snn2.encoding=morse"], "unknown encoding"),
    (["width=0"], "width"),
])
def test_bad_control_settings_are_refused(bad, match):
    with pytest.raises(SpikeAdvError, match=match):
        get_preset("smoke", bad)


def test_the_validation_split_is_the_training_set_s_tail_and_never_trained_on():
    full = data.load("synthetic", "train")
    held = data.splits("synthetic", 256)
    assert len(held.train) + len(held.validation) == len(full) and len(held.validation) == 256
    assert torch.equal(torch.cat([held.train.images, held.validation.images]), full.images)
    assert len({held.train.digest, held.validation.digest, full.digest}) == 3


def test_match_takes_the_closest_snapshot_later_on_ties_and_says_when_none_is_within_2pp():
    snaps = [{"step": s, "val_acc": a, "path": f"{s}"} for s, a in ((10, 40.0), (20, 60.0), (30, 64.0), (40, 80.0))]
    assert kinds.match(snaps, 62.0)["step"] == 30  # 60 and 64 are both 2 pp off: the later one
    chosen = kinds.match(snaps, 63.0)
    assert (chosen["step"], chosen["gap"], chosen["matched"]) == (30, 1.0, True)
    far = kinds.match(snaps, 90.0)
    assert (far["step"], far["gap"], far["matched"]) == (40, -10.0, False)


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory):
    """The smoke ANN trained twice, the second time with every test image inverted, and SNN-I converted
    from the first: the matched ANN's choice must not see the test images."""
    preset = get_preset("smoke", ["ann.epochs=2"])
    folder = tmp_path_factory.mktemp("controls")
    splits = data.splits("synthetic", preset.validation)
    inverted = dataclasses.replace(splits.test, images=255 - splits.test.images, digest="inverted")
    runs = []
    for i, test in enumerate((splits.test, inverted)):
        out = folder / f"ann{i}.safetensors"
        kinds.fit("ann", preset, 0, out, dataclasses.replace(splits, test=test), log=lambda line: None)
        runs.append(out)
    return preset, splits, runs


def test_snapshots_are_kept_along_training_with_their_validation_accuracy(two_trainings):
    preset, splits, (out, _) = two_trainings
    _, meta = checkpoint.load(out)
    steps = len(splits.train) // preset.ann.batch_size * preset.ann.epochs
    assert [s["step"] for s in meta["snapshots"]] == [round(k * steps / 6) for k in range(1, 7)]
    for s in meta["snapshots"]:
        net, saved = load_network(snapshot_path(out, s["step"]))
        assert saved["snapshot"]["val_acc"] == s["val_acc"] == round(accuracy(net, splits.validation), 3)
    final, _ = load_network(out)
    last, _ = load_network(snapshot_path(out, steps))
    assert all(torch.equal(a, b) for a, b in zip(final.state_dict().values(), last.state_dict().values()))
    assert meta["snapshots"][0]["val_acc"] < meta["snapshots"][-1]["val_acc"]  # it learns between them


def test_the_matched_ann_is_chosen_on_validation_only(two_trainings, tmp_path):
    preset, splits, (first, second) = two_trainings
    snn1 = tmp_path / "snn1.safetensors"
    from spikeadv.models.convert import convert_file
    convert_file(first, preset, splits, 0, snn1)
    snn_acc = kinds.validation_accuracy(checkpoint.load(snn1)[1])
    chosen = [kinds.match(checkpoint.load(path)[1]["snapshots"], snn_acc) for path in (first, second)]
    assert chosen[0] == chosen[1]
    assert checkpoint.load(first)[1]["snapshots"] == checkpoint.load(second)[1]["snapshots"]


def test_the_rate_image_has_the_encoder_s_distribution():
    """Mean x and variance x (1 - x) / T per pixel over n seeded draws; tolerances: 5 standard errors of
    the sample mean (sqrt(var / n)) and of the sample variance (sqrt((m4 - var^2) / n), m4 the fourth
    central moment of a mean of T Bernoulli(x) frames: (pq (1 - 3pq) + 3 (T - 1) (pq)^2) / T^3, pq = x (1 - x))."""
    spec, T, n = "8x8-2c3-2s-4fc-3o", 6, 4000
    net = Network(spec, 3, (0.5,) * 3, (0.25,) * 3, dropout=0.0)
    snn = get_preset("smoke").spiking("ann-rate")
    assert (snn.neuron, snn.T, snn.encoding) == ("rate", T, "poisson")
    x = torch.linspace(0, 1, 3 * 8 * 8).view(1, 3, 8, 8)
    rates = net.rates(x.expand(n, -1, -1, -1), snn, Draws.of(7, torch.arange(n), 1))
    var = x * (1 - x) / T
    assert set(torch.unique(rates * T).round().tolist()) <= set(range(T + 1))  # counts of spikes out of T
    assert ((rates.mean(0) - x[0]).abs() <= 5 * (var[0] / n).sqrt() + 1e-6).all()
    pq = x * (1 - x)
    m4 = (pq * (1 - 3 * pq) + 3 * (T - 1) * pq ** 2) / T ** 3
    assert ((rates.var(0) - var[0]).abs() <= 5 * ((m4[0] - var[0] ** 2).clamp_min(0) / n).sqrt() + 1e-6).all()


def test_the_rate_ann_is_the_ann_on_the_rate_image_and_its_gradient_is_straight_through():
    preset = get_preset("smoke")
    info = data.synthetic("test", n=1).info
    net = kinds.network(preset, "ann-rate", info).eval()
    snn = preset.spiking("ann-rate")
    x = data.to_float(data.synthetic("test", n=4).images)
    rates = net.rates(x, snn, Draws.of(3, torch.arange(4), 1))
    assert torch.equal(net(x, snn, Draws.of(3, torch.arange(4), 1)), net(rates))  # no spikes inside
    x.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(x, snn, Draws.of(3, torch.arange(4), 1)), torch.arange(4))
    grad = torch.autograd.grad(loss, x)[0]
    r = rates.detach().requires_grad_(True)
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(net(r), torch.arange(4)), r)[0]
    torch.testing.assert_close(grad, expected)  # d rate / d x = 1: the straight-through encoder
    kind = estimators.kind_of(net, snn)
    assert estimators.applies("bptt", kind) and not estimators.applies("ann", kind)


def test_the_study_judges_every_kind_beside_its_controls(reference):
    """The smoke study: each control a target whitebox and under every blackbox source; the matched ANNs
    are snapshots of their ANN chosen on validation accuracy, recorded with their gap; the rate ANN
    judged in expectation over K draws like SNN-II."""
    meta = json.loads((reference / "run.json").read_text())
    models = {(m["kind"], m["instance"]): m for m in meta["models"]}
    assert len(models) == len(meta["models"]) == len(TARGETS) * 2  # one entry per kind and instance
    preset = get_preset("smoke")
    assert {k for k, _ in models} == set(TARGETS) and meta["data"]["validation_images"] == preset.validation
    for (kind, i), m in models.items():
        if kind in MATCHED:
            snn = models[(MATCHED[kind], i)]
            assert m["matched"]["to"] == snn["val_acc"] and ".snapshots/" in m["path"]
            assert math.isclose(m["val_acc"] - snn["val_acc"], m["matched"]["gap"], abs_tol=1e-6)
            assert m["matched"]["matched"] == (abs(m["matched"]["gap"]) <= 2.0)
    assert models[("ann-rate", 0)]["draws"] == preset.study.draws and models[("ann-rate", 0)]["T"] == preset.snn2.T
    rows = [json.loads(line) for line in (reference / "results.jsonl").read_text().splitlines()]
    for control in CONTROLS:
        scenarios = {r["scenario"] for r in rows if r["target"] == control}
        assert scenarios == {"whitebox", *(f"bb-{k}" for k in KINDS)}, (control, scenarios)
    assert {r["gradient"] for r in rows if r["target"] == "ann-rate" and r["scenario"] == "whitebox"} == {"bptt"}


def test_train_rate_trains_the_noise_matched_ann(tmp_path, capsys):
    out = tmp_path / "rate.safetensors"
    assert cli.main(["train", "rate", "--preset", "smoke", "--set", "ann.epochs=1", "--out", str(out)]) == 0
    net, meta = load_network(out)
    assert meta["kind"] == "ann-rate" and meta["spiking"]["neuron"] == "rate" and meta["snapshots"] == []
    assert "validation accuracy" in capsys.readouterr().out
