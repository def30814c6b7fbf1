"""SNN-I (conversion) and SNN-II (spike-based training) on the synthetic set."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from spikeadv import records
from spikeadv.config.presets import get_preset
from spikeadv.config.spiking import Spiking
from spikeadv.data import load, splits, to_float
from spikeadv.errors import SpikeAdvError
from spikeadv.models import trained
from spikeadv.models.convert import convert, proxy_scales
from spikeadv.models.network import Network
from spikeadv.models.neurons import encode
from spikeadv.models.train import accuracy, train
from spikeadv.runtime.draws import Draws


def spikeadv(*args):
    return subprocess.run([sys.executable, "-m", "spikeadv", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    """A smoke ANN with biases (as batch-norm folding leaves them), trained once."""
    preset = get_preset("smoke", ["batchnorm=true"])
    info = load("synthetic", "test").info
    net = Network(preset.spec, 3, info.mean, info.std, batchnorm=True, dropout=0.0)
    out = tmp_path_factory.mktemp("snn") / "ann-seed0.safetensors"
    held = splits("synthetic", preset.validation)
    net, _ = train(net, held.train, held.validation, preset.ann, seed=0, out=out,
                   meta={"kind": "ann", "data": {"dataset": "synthetic", "train": held.train.digest,
                                                  "test": held.test.digest}},
                   log=lambda s: None)
    return net, out


def balancing_images(n=256):
    return to_float(load("synthetic", "train").images[:n])


@pytest.mark.parametrize("method", ["spike", "activation"])
def test_converted_snn_approaches_its_ann_as_T_grows(ann, method):
    net, _ = ann
    assert net.bias  # batch-norm folded: conversion must scale the biases
    test = load("synthetic", "test").subset(256)
    ann_acc = accuracy(net, test)
    assert ann_acc > 80
    snn1 = convert(net, balancing_images(), Spiking(T=64), method=method)
    gaps = [ann_acc - accuracy(snn1, test, snn=Spiking(T=T)) for T in (4, 32, 256)]
    assert gaps[0] > gaps[2] and gaps[1] > gaps[2] - 0.5, gaps
    assert abs(gaps[2]) <= 1.0, gaps


def test_conversion_keeps_the_ann_and_records_proxy_scales(ann):
    net, _ = ann
    before = {k: v.clone() for k, v in net.state_dict().items()}
    snn1 = convert(net, balancing_images(64), Spiking(T=16))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert (snn1.thresholds > 0).all()
    pools = [i for i, l in enumerate(snn1.spec.layers[:-1]) if l.kind == "pool"]
    assert all(snn1.thresholds[i] == 0.75 for i in pools)  # the authors' threshold after pooling
    assert proxy_scales(snn1)[:-1] == pytest.approx([1 / float(t) for t in snn1.thresholds])
    # layer 0's threshold is the largest current the balancing spike trains drive into it
    frames = encode(balancing_images(64), 16, "poisson", Draws.of(0, torch.arange(64), 1)).flatten(0, 1)  # seed 0's
    currents = snn1.layers[0](snn1.normalise(frames))
    assert snn1.thresholds[0] == pytest.approx(currents.max().item())


def test_bad_conversion_settings(ann):
    net, _ = ann
    with pytest.raises(SpikeAdvError, match="IF neurons"):
        convert(net, balancing_images(8), Spiking(neuron="lif", leak=0.9))
    with pytest.raises(SpikeAdvError, match="pool_threshold"):
        convert(net, balancing_images(8), Spiking(), pool_threshold=0)
    with pytest.raises(SpikeAdvError, match="unknown balancing"):
        convert(net, balancing_images(8), Spiking(), method="magic")
    maxpooled = Network("32x32-8c3-2m-10o", 3, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(SpikeAdvError, match="max pooling"):
        convert(maxpooled, balancing_images(8), Spiking())


@pytest.mark.slow
def test_convert_and_eval_commands(ann):
    _, path = ann
    r = spikeadv("convert", path, "--preset", "smoke")
    assert r.returncode == 0, r.stderr
    out = path.with_name("snn1-seed0.safetensors")
    model, meta = trained.load_network(out)
    assert meta["kind"] == "snn1" and meta["spiking"]["neuron"] == "if"
    assert meta["parent"]["sha256"] == records.file_digest(path)
    assert torch.equal(model.thresholds, torch.tensor(meta["thresholds"]))
    r = spikeadv("eval", out, "--repeats", "3", "--T", "32")
    assert r.returncode == 0, r.stderr
    assert "over 3 encoder seeds" in r.stdout and "mean spike rate per layer" in r.stdout
    rates = [float(tok.split()[-1]) for tok in r.stdout.splitlines()[-1].split(":", 1)[1].split(",")]
    assert all(0 < v <= 1 for v in rates)
    single = [line for line in r.stdout.splitlines() if " accuracy " in line]
    curve = spikeadv("eval", out, "--repeats", "3", "--T", "8,32")  # an accuracy-vs-T curve, one line per T
    assert curve.returncode == 0, curve.stderr
    lines = [line for line in curve.stdout.splitlines() if " accuracy " in line]
    assert [line.split("T=")[1].split(")")[0] for line in lines] == ["8", "32"]
    assert lines[1] == single[0]  # the same encoder seeds at every T
    signed = spikeadv("eval", out, "--T", "32", "--reset", "signed")  # the checkpoint's IF neurons, signed
    assert signed.returncode == 0, signed.stderr
    expected = accuracy(model, load("synthetic", "test"), snn=dataclasses.replace(trained.spiking(meta), T=32,
                                                                                reset="signed"))
    assert f"(IF, T=32, signed reset) accuracy {expected:.2f}%" in signed.stdout
    r = spikeadv("convert", path, "--preset", "smoke")
    assert r.returncode == 2 and "--force" in r.stderr


def test_snn2_learns_the_synthetic_set(tmp_path):
    r = spikeadv("train", "snn", "--preset", "smoke", "--out", tmp_path / "snn2.safetensors")
    assert r.returncode == 0, r.stderr
    net, meta = trained.load_network(tmp_path / "snn2.safetensors")
    snn = trained.spiking(meta)
    assert snn.neuron == "lif" and snn.leak == get_preset("smoke").snn2.leak
    acc = accuracy(net, load("synthetic", "test"), snn=snn)
    assert acc >= 50, acc  # chance is 10%
    validation = splits("synthetic", get_preset("smoke").validation).validation
    assert meta["metrics"][-1]["val_acc"] == pytest.approx(accuracy(net, validation, snn=snn), abs=5e-4)


@pytest.mark.parametrize("args, match", [
    (["eval", "x.safetensors", "--T", "0"], "must be >= 1"),
    (["train", "snn", "--preset", "smoke", "--set", "snn2.leak=1.5"], "leak"),
    (["train", "snn", "--preset", "smoke", "--set", "snn2.T=0"], "T"),
    (["convert", "x.safetensors", "--preset", "smoke", "--set", "snn1.pool_threshold=-1"], "pool_threshold"),
])
def test_bad_snn_inputs_are_one_line(args, match, tmp_path):
    r = subprocess.run([sys.executable, "-m", "spikeadv", *args], capture_output=True, text=True, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("spikeadv: error:"), r.stderr
    assert match in lines[0]
    assert list(tmp_path.iterdir()) == []
