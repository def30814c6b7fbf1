"""ANN training on the synthetic set: it learns, checkpoints are traceable, resume is bit-exact."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from spikeadv.config.presets import get_preset
from spikeadv.data import load, splits, synthetic
from spikeadv.errors import SpikeAdvError
from spikeadv.models.network import Network
from spikeadv.models.train import accuracy, train
from spikeadv.models.trained import load_network
from spikeadv.records import checkpoint


def spikeadv(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "spikeadv", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def smoke_net(preset):
    info = synthetic("test", n=8).info
    return Network(preset.spec, info.shape[0], info.mean, info.std, width=preset.width,
                   dropout=preset.dropout, batchnorm=preset.batchnorm)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The smoke preset trained once through the command line."""
    out = tmp_path_factory.mktemp("train") / "ann.safetensors"
    r = spikeadv("train", "ann", "--preset", "smoke", "--out", out)
    assert r.returncode == 0, r.stderr
    return out, r


def test_smoke_ann_learns_the_synthetic_set(trained):
    out, _ = trained
    net, meta = load_network(out)
    acc = accuracy(net, load("synthetic", "test"))
    chance = 100 / net.classes
    assert acc >= 80 > 4 * chance, acc
    # the accuracy the training run recorded is measured on the held-out validation images, not the test set
    validation = splits("synthetic", get_preset("smoke").validation).validation
    assert meta["metrics"][-1]["val_acc"] == pytest.approx(accuracy(net, validation), abs=5e-4)


def test_checkpoint_records_what_made_it(trained):
    out, _ = trained
    _, meta = checkpoint.load(out)
    preset = get_preset("smoke")
    assert meta["kind"] == "ann" and meta["complete"] and meta["epochs_done"] == preset.ann.epochs
    assert meta["seed"] == preset.seeds[0]
    assert meta["train"]["epochs"] == preset.ann.epochs and meta["preset"]["name"] == "smoke"
    held = splits("synthetic", preset.validation)
    assert meta["data"]["train"] == held.train.digest and meta["data"]["validation"] == held.validation.digest
    assert meta["versions"]["torch"] == torch.__version__
    assert [m["epoch"] for m in meta["metrics"]] == list(range(1, preset.ann.epochs + 1))
    assert all(m["images_per_s"] > 0 and m["train_loss"] > 0 for m in meta["metrics"])
    assert not list(out.parent.glob(".*.tmp")), "temporary files left behind"


def test_eval_command_prints_the_accuracy(trained):
    out, _ = trained
    r = spikeadv("eval", out)
    assert r.returncode == 0, r.stderr
    net, _ = load_network(out)
    assert f"accuracy {accuracy(net, load('synthetic', 'test')):.2f}% on synthetic/test" in r.stdout


@pytest.mark.slow
def test_resume_after_kill_9_gives_bit_identical_weights(tmp_path, trained):
    reference, _ = trained
    out = tmp_path / "ann.safetensors"
    cmd = [sys.executable, "-m", "spikeadv", "train", "ann", "--preset", "smoke", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first epoch's checkpoint, then kill mid-epoch 2
        if out.exists() and checkpoint.load(out)[1]["epochs_done"] >= 1:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, partial = checkpoint.load(out)
    assert not partial["complete"] and partial["epochs_done"] < get_preset("smoke").ann.epochs
    r = spikeadv("train", "ann", "--preset", "smoke", "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"resuming {out} after epoch {partial['epochs_done']}" in r.stdout
    a, b = load_file(str(out)), load_file(str(reference))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run is not retrained
    r = spikeadv("train", "ann", "--preset", "smoke", "--out", out, "--resume")
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path, trained):
    out, _ = trained
    preset = get_preset("smoke", ["ann.lr=0.01"])
    ds = load("synthetic", "train")
    with pytest.raises(SpikeAdvError, match="different train"):
        train(smoke_net(preset), ds, ds, preset.ann, seed=0, out=out,
              meta={"kind": "ann", "data": checkpoint.load(out)[1]["data"]},
              resume=True)


def test_batchnorm_is_folded_into_the_saved_network(tmp_path):
    preset = get_preset("smoke", ["batchnorm=true", "ann.epochs=1"])
    net = smoke_net(preset)
    ds, test = load("synthetic", "train"), load("synthetic", "test")
    trained_net, meta = train(net, ds, test, preset.ann, seed=0, out=tmp_path / "bn.safetensors",
                              meta={"kind": "ann", "data": {}}, log=lambda s: None)
    saved, saved_meta = load_network(tmp_path / "bn.safetensors")
    assert not saved.batchnorm and saved.bias and saved_meta["batchnorm_folded"]
    x = synthetic("test", n=32).images.float() / 255
    assert torch.allclose(saved(x), trained_net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dataset, flips", [("mnist", False), ("fashion-mnist", False), ("cifar10", True)])
def test_augmentation_follows_the_dataset(tmp_path, monkeypatch, dataset, flips):
    """Handwritten digits and clothing are not mirrored in training (a mirrored 2 is no 2); CIFAR-10 is.
    What was used is recorded in the checkpoint."""
    import dataclasses

    from spikeadv import data

    drawn = []

    def spy(x, generator, pad=4, flip=True, rows=None):
        drawn.append(flip)
        return real(x, generator, pad, flip, rows)

    real = data.augment
    monkeypatch.setattr(data, "augment", spy)
    info = data.DATASETS[dataset]
    ds = synthetic("train", n=64, shape=info.shape)
    ds = dataclasses.replace(ds, info=dataclasses.replace(ds.info, flip=info.flip, name=info.name))
    preset = get_preset("smoke", ["ann.epochs=1", "ann.batch_size=32"])
    net = Network("28x28-4c3-2s-10o" if info.shape[0] == 1 else preset.spec, info.shape[0], ds.info.mean,
                  ds.info.std)
    _, meta = train(net, ds, ds, preset.ann, seed=0, out=tmp_path / "m.safetensors", meta={"kind": "ann"})
    assert drawn == [flips, flips]
    assert meta["augmentation"] == {"flip": flips, "pad": 4}
    assert checkpoint.load(tmp_path / "m.safetensors")[1]["augmentation"] == {"flip": flips, "pad": 4}
    # asked for explicitly, the flip is used whatever the dataset
    drawn.clear()
    cfg = dataclasses.replace(preset.ann, flip=True)
    train(net, ds, ds, cfg, seed=0, out=tmp_path / "f.safetensors", meta={"kind": "ann"})
    assert drawn == [True, True]
