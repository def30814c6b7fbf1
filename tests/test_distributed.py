"""Data-parallel training: N processes reach one process's weights, resume across process counts.

Every random draw is made for the global batch and sliced, so the processes' forward passes are the
one process's forward pass bit for bit (tested below without processes); the weights then agree up to
the gradient all-reduce's summation order (the mean of two half-batch means is not summed in the
order of one whole-batch mean: about 1e-5 relative per gradient, compounded over a few steps).
"""

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from spikeadv import cli
from spikeadv.config.presets import get_preset
from spikeadv.config.spiking import Spiking
from spikeadv.data import Splits, augmentation, batches, synthetic
from spikeadv.errors import SpikeAdvError
from spikeadv.models.kinds import fit
from spikeadv.models.network import Network
from spikeadv.records import checkpoint
from spikeadv.runtime.distributed import Group, Rows, bernoulli, dropout

ATOL = 1e-4  # weights of magnitude 0.1-1 after 4 SGD steps differ by about 1e-5 (see the docstring)
HALVES = (Rows(0, 32, 64), Rows(32, 32, 64))


def assert_same_weights(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL, msg=k)


# ---- the random draws, without processes ----------------------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_draws_what_f_dropout_draws(channels_last):
    """With the whole batch as its share, the global-batch dropout is F.dropout bit for bit (same
    stream, same memory format); a share of a batch gets the rows F.dropout gives it in the batch."""
    x = torch.rand(8, 6, 5, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    reference = F.dropout(x, 0.3, training=True)
    torch.manual_seed(1)
    whole = dropout(x, 0.3, Rows(0, 8, 8))
    assert torch.equal(whole, reference)
    assert whole.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.manual_seed(1)
    assert torch.equal(dropout(x[3:6], 0.3, Rows(3, 3, 8)), reference[3:6])
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.3), reference)


@pytest.mark.parametrize("channels_last", [False, True])
def test_spiking_dropout_mask_is_a_slice_of_the_global_one(channels_last):
    like = torch.zeros(8, 6, 5, 5)
    if channels_last:
        like = like.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(2)
    reference = torch.bernoulli(torch.full_like(like, 0.7))
    for rows in (Rows(0, 8, 8), Rows(2, 4, 8)):
        torch.manual_seed(2)
        assert torch.equal(bernoulli(like[:rows.count], 0.7, rows), reference[rows.start:rows.start + rows.count])


def test_shares_of_a_batch_are_the_batch_augmented_as_a_whole():
    ds = synthetic("train", n=128)

    def first(rows=None):
        return next(batches(ds, 64, shuffle=True, generator=torch.Generator().manual_seed(3),
                            augmentation=augmentation(ds.info), drop_last=True, rows=rows))

    x, y = first()
    halves = [first(rows) for rows in HALVES]
    assert torch.equal(x, torch.cat([h[0] for h in halves])) and torch.equal(y, torch.cat([h[1] for h in halves]))


@pytest.mark.parametrize("snn", [None, Spiking(neuron="lif", T=6, leak=0.9)], ids=["ann", "snn"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shares_of_a_forward_pass_are_the_whole_forward_pass(snn, channels_last):
    """Dropout masks and Poisson spikes: each share draws what the whole batch draws for its rows."""
    info = synthetic("test", n=8).info
    net = Network("32x32-8c3-2s-16c3-2s-32fc-10o", 3, info.mean, info.std, dropout=0.2).train()
    x = torch.rand(64, 3, 32, 32)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(5)
    whole = net(x, snn)
    shares = []
    for rows in HALVES:
        torch.manual_seed(5)
        shares.append(net(x[rows.start:rows.start + rows.count], snn, rows=rows))
    assert torch.equal(whole, torch.cat(shares))


def test_a_batch_that_does_not_split_evenly_is_refused():
    assert Group(1, 2).rows(64) == Rows(32, 32, 64) and Group().rows(63) is None
    with pytest.raises(SpikeAdvError, match="^batch size 63 does not split evenly over 2 processes; choose a "
                                            "multiple of 2$"):
        Group(1, 2).rows(63)


def test_batchnorm_on_cpu_with_several_processes_is_refused():
    info = synthetic("test", n=8).info
    net = Network("32x32-8c3-2s-16c3-2s-32fc-10o", 3, info.mean, info.std, batchnorm=True)
    with pytest.raises(SpikeAdvError, match="batch-norm cannot be trained by 2 processes on cpu"):
        Group(0, 2).wrap(net)


# ---- processes --------------------------------------------------------------------------------------

FEW_STEPS = ["--preset", "smoke", "--set", "test_subset=100", "--set", "dropout=0.2", "--set", "ann.epochs=1",
             "--set", "ann.batch_size=512", "--set", "ann.channels_last=true"]


def test_torchrun_with_two_processes_reaches_the_weights_of_one(tmp_path):
    """The command line under torchrun (gloo): 4 steps of a global batch of 512, with dropout and
    augmentation; only rank 0 prints."""
    two, one = tmp_path / "two.safetensors", tmp_path / "one.safetensors"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "spikeadv", "train", "ann", *FEW_STEPS, "--out", two],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done: ") == 1 and r.stdout.count("training ann") == 1, r.stdout
    assert cli.main(["train", "ann", *FEW_STEPS, "--out", str(one)]) == 0
    assert_same_weights(two, one)
    metrics = [checkpoint.load(p)[1]["metrics"][0] for p in (two, one)]
    assert [m["world_size"] for m in metrics] == [2, 1]
    assert metrics[0]["train_loss"] == pytest.approx(metrics[1]["train_loss"], abs=1e-4)
    assert metrics[0]["train_acc"] == pytest.approx(metrics[1]["train_acc"], abs=0.1)


def _fit(kind, out, resume=False, log=print):
    """4 steps per epoch of 64 images, dropout and augmentation on: ANN 2 epochs, SNN-II (SGD) 1."""
    preset = get_preset("smoke", ["dropout=0.2", "snn2.dropout=0.2", "ann.epochs=2", "ann.batch_size=64",
                                  "snn2.train.epochs=1", "snn2.train.batch_size=64", "snn2.train.optimizer=sgd",
                                  "snn2.train.lr=0.05", "snn2.T=4"])
    held = synthetic("test", n=64)
    data = Splits(synthetic("train", n=256), dataclasses.replace(held, split="validation"), held)
    return fit(kind, preset, 0, out, data, resume=resume, log=log)


def _process(rank, world, init, kind, out, interrupt):
    """One process of a training run; with ``interrupt``, rank 0 fails when it logs epoch 2 (epoch 1
    is saved, epoch 2 is not)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)

    def log(line):
        if interrupt and line.startswith("epoch 2/"):
            raise RuntimeError("interrupted")

    _fit(kind, out, log=log)
    dist.destroy_process_group()


def spawn(tmp_path, kind, out, interrupt=False):
    mp.spawn(_process, args=(2, f"file://{tmp_path / 'rendezvous'}", kind, out, interrupt), nprocs=2)


def test_two_processes_train_the_snn_of_one(tmp_path):
    two, one = tmp_path / "two.safetensors", tmp_path / "one.safetensors"
    spawn(tmp_path, "snn2", two)
    _fit("snn2", one, log=lambda _: None)
    assert_same_weights(two, one)


def test_a_run_of_two_processes_resumes_with_one(tmp_path):
    out, reference = tmp_path / "ann.safetensors", tmp_path / "reference.safetensors"
    with pytest.raises(mp.ProcessRaisedException, match="interrupted"):
        spawn(tmp_path, "ann", out, interrupt=True)
    _, partial = checkpoint.load(out)
    assert partial["epochs_done"] == 1 and not partial["complete"] and partial["metrics"][0]["world_size"] == 2
    lines = []
    _, meta = _fit("ann", out, resume=True, log=lines.append)
    assert lines[1] == f"resuming {out} after epoch 1/2" and meta["complete"]
    _fit("ann", reference, log=lambda _: None)
    assert_same_weights(out, reference)
