"""The device as a runtime choice (DESIGN section 6): ``--device`` resolved once with one-line refusals,
every random generator made on the device of the tensors it draws for, timestep folding a policy of
the device, and a run directory that resumes on another device than it started on."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_faults import one_line_error, spikeadv

from spikeadv import cli, data, records, report, runtime, study
from spikeadv.config.presets import get_preset
from spikeadv.config.spiking import Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.models import trained
from spikeadv.models.convert import convert_file
from spikeadv.models.kinds import fit
from spikeadv.models.network import Network
from spikeadv.models.trained import Trained
from spikeadv.records import checkpoint
from spikeadv.study import compute, executors
from spikeadv.study.plan import Job


def cpu_build(monkeypatch):
    """This process runs a torch built without CUDA, on any machine (a GPU machine's tests included)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # a child process that sees no GPU, on any machine


def one_gpu(monkeypatch):
    """This process sees one CUDA device (the CPU build's torch.cuda answers as on a one-GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


# --device ------------------------------------------------------------------------------------------

def test_auto_is_the_cpu_without_cuda_and_the_current_gpu_with_it(monkeypatch):
    cpu_build(monkeypatch)
    assert runtime.resolve("auto") == runtime.resolve(None) == runtime.resolve("cpu") == torch.device("cpu")
    one_gpu(monkeypatch)
    assert runtime.resolve("auto") == runtime.resolve("cuda") == runtime.resolve("CUDA:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("spec, needle", [("cuda", "CPU build"), ("cuda:0", "CPU build"), ("gpu", "not a device"),
                                          ("mps", "auto, cpu, cuda or cuda:N")])
def test_a_device_this_machine_lacks_is_one_line(spec, needle, monkeypatch):
    cpu_build(monkeypatch)
    with pytest.raises(SpikeAdvError, match=needle):
        runtime.resolve(spec)


def test_the_process_device_is_chosen_once_and_every_default_follows_it(monkeypatch):
    cpu_build(monkeypatch)
    monkeypatch.setattr(runtime, "_chosen", None)
    assert runtime.device() == torch.device("cpu")  # nothing chosen: auto, resolved once and kept
    one_gpu(monkeypatch)
    assert runtime.device() == torch.device("cpu") and runtime.device("auto") == torch.device("cuda", 0)
    assert runtime.use("cuda") == runtime.device() == runtime.device(None) == torch.device("cuda", 0)
    assert runtime.use("cpu") == runtime.device() == torch.device("cpu")


def test_a_gpu_index_past_the_last_names_the_ones_there_are(monkeypatch):
    one_gpu(monkeypatch)
    with pytest.raises(SpikeAdvError, match=r"cuda:7: this machine has 1 CUDA device \(cuda:0\)"):
        runtime.resolve("cuda:7")


@pytest.mark.parametrize("command", [
    ["run", "--preset", "smoke", "--out", "{out}"],
    ["train", "ann", "--preset", "smoke", "--out", "{out}/ann.safetensors"],
    ["evaluate", "{out}", "--suite", "quick"],
])
def test_every_computing_command_refuses_a_missing_gpu_in_one_line_and_writes_nothing(tmp_path, command):
    out = tmp_path / "out"
    result = spikeadv(*[c.format(out=out) for c in command], "--device", "cuda", env={**os.environ, **NO_GPU})
    one_line_error(result, "--device cuda", "use --device cpu (or auto)")
    assert "CPU build" in result.stderr or "sees no CUDA GPU" in result.stderr
    assert not out.exists()


def test_cuda_7_on_a_one_gpu_machine_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    one_gpu(monkeypatch)
    out = tmp_path / "run"
    assert cli.main(["run", "--preset", "smoke", "--out", str(out), "--device", "cuda:7"]) == 2
    assert capsys.readouterr().err.strip() == ("spikeadv: error: --device cuda:7: this machine has 1 CUDA device "
                                               "(cuda:0)")
    assert not out.exists()


@pytest.mark.parametrize("spec, gpus, expected", [("auto", 0, "cpu"), ("auto", 0.5, "cuda"), ("cuda", 1, "cuda"),
                                                  ("cpu", 0, "cpu")])
def test_ray_tasks_compute_on_the_gpu_ray_gives_them_or_the_cpu(spec, gpus, expected):
    assert executors.task_device(spec, "ray", gpus) == expected  # resolved on the worker, not here


@pytest.mark.parametrize("spec, gpus, needle", [("cuda", 0, "needs --gpus-per-task"), ("cuda:1", 1, "pass --device cuda"),
                                                ("cpu", 1, "never use")])
def test_ray_device_options_that_contradict_each_other_are_refused(spec, gpus, needle):
    with pytest.raises(SpikeAdvError, match=needle):
        executors.task_device(spec, "ray", gpus)


# generators follow their tensors --------------------------------------------------------------------

class Recording(torch.Generator):
    """A torch.Generator that records the device it was asked for (None: not named, i.e. the CPU by
    default, which cannot draw for CUDA tensors)."""

    asked: list = []

    def __init__(self, device=None):  # torch.Generator.__new__ made it on ``device``
        Recording.asked.append(None if device is None else torch.device(device))


def test_every_generator_is_made_on_the_device_of_what_it_draws(reference, tmp_path, monkeypatch):
    """Train (order, augmentation), convert (balancing images, spikes), predict (encoder) and craft with
    every gradient source and every attack (R-FGSM noise, PGD start, targets): every generator names
    the device of its tensors. One made without a device would be a CPU generator, which fails on
    CUDA ("Expected a 'cuda' device type for generator")."""
    monkeypatch.setattr(torch, "Generator", Recording)
    Recording.asked = []
    device = runtime.resolve("cpu")
    preset = get_preset("smoke", ["ann.epochs=1", "snn2.train.epochs=1"])
    splits = data.splits("synthetic", preset.validation, 50)
    for kind in ("ann", "snn2", "ann-rate"):
        fit(kind, preset, 0, tmp_path / f"{kind}.safetensors", splits, device=device, log=lambda line: None)
    convert_file(tmp_path / "ann.safetensors", preset, splits, 0, tmp_path / "snn1.safetensors", device=device)
    test_ds = splits.test
    x, y = data.to_float(test_ds.images[:8]).to(device), test_ds.labels[:8].long().to(device)
    goal = compute.random_targets(y, 10, preset.study)
    for kind, gradient in [("ann", "ann"), ("snn1", "snnadv"), ("snn2", "bptt"), ("ann-rate", "bptt")]:
        net, meta = trained.load_network(tmp_path / f"{kind}.safetensors", device)
        model = Trained(kind, 0, net, trained.spiking(meta), Path(), "", meta)
        for attack, steps in (("fgsm", 1), ("rfgsm", 1), ("ifgsm", 2), ("tifgsm", 2)):
            job = Job(kind, 0, gradient, attack, 8, steps, (kind,))
            adv, _ = compute.craft(job, model, x, y, goal, preset.study)
            compute.judged(model, adv, y, preset.study)
    assert len(Recording.asked) > 20
    # torch refuses a generator of another device than the tensor it draws ("Expected a 'cuda' device
    # type for generator"), so having run is the check that each draws for its own device; what is left
    # to check: the compute device's draws are made there, and the only others are the CPU's (seeded
    # synthetic data and the held-out indices live on the CPU whatever the compute device)
    assert device in Recording.asked and set(Recording.asked) <= {device, torch.device("cpu")}, Recording.asked


# the device's policies --------------------------------------------------------------------------------

def test_timestep_folding_asks_the_device_and_cuda_folds_by_its_whole_memory(monkeypatch):
    net = Network("16x16-4c3-2s-8fc-3o", 2, (0.5, 0.5), (0.25, 0.25), dropout=0.0).eval()
    asked = []
    monkeypatch.setattr(runtime, "fold", lambda device, frame_bytes: asked.append((device, frame_bytes)) or 10)
    calls = []
    net.layers[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    net(torch.rand(5, 2, 16, 16), Spiking(T=6, encoding="direct"))
    assert asked == [(torch.device("cpu"), 4 * 4 * 16 * 16)] and calls == [10, 10, 10]  # 2 steps of 5 images
    monkeypatch.undo()
    assert runtime.fold(torch.device("cpu"), 2**20) == runtime.CPU_FOLD_BYTES // 2**20
    # on CUDA a share of the device's whole memory (free memory varies from call to call), under 2^31 elements
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: pytest.fail("fold read the free memory"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: type("P", (), {"total_memory": 8 * 2**30}))
    assert runtime.fold(torch.device("cuda", 0), 2**20) == 8 * 1024 * runtime.CUDA_FOLD_SHARE
    assert runtime.fold(torch.device("cuda", 0), 4 * 256 * 32 * 32) * 256 * 32 * 32 <= 2**31 - 1  # 1.21 x 2^31 before


def test_balancing_percentiles_are_kthvalues_taken_as_topk():
    """Conversion's percentile of the activations (CUDA's kthvalue runs in one thread block, so it is taken
    from the top instead): the very element kthvalue gives, at every percentile."""
    from spikeadv.models.convert import _relu_maxima

    torch.manual_seed(0)
    net = Network("16x16-4c3-2s-8fc-3o", 2, (0.5, 0.5), (0.25, 0.25), dropout=0.0).eval()
    images = torch.rand(32, 2, 16, 16)
    for percentile in (50.0, 99.9, 100.0):
        for i, value in _relu_maxima(net, images, percentile).items():
            h = net._run(net.normalise(images), None, 1, {}, None, upto=i).clamp(min=0).flatten().float()
            assert torch.equal(value, h.kthvalue(max(1, round(percentile / 100 * h.numel()))).values)


def saved_bytes_and_grad(net, snn, x, y):
    """Bytes that autograd keeps for the backward pass per frame (saved-tensor hooks) and the input gradient."""
    from spikeadv.runtime.draws import Draws

    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved, x = {}, x.clone().requires_grad_(True)

    def pack(t):  # each storage once, the weights aside (kept whatever the frames)
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(x, snn, Draws.of(3, torch.arange(len(x)), 1)), y)
    loss.backward()
    return sum(saved.values()) / (snn.T * len(x)), x.grad


def test_bptt_beyond_the_memory_budget_recomputes_chunks_and_keeps_its_gradients(monkeypatch):
    """Over the device's budget, an attack's BPTT keeps only each chunk's input frames and starting state
    and recomputes the chunk in the backward pass (gradient checkpointing): far fewer bytes per frame,
    the same gradients. benchmarks/bptt_memory.py states the bytes for the gpu study's SNN-I."""
    torch.manual_seed(0)
    net = Network("32x32-8c3-2s-16c3-2s-32fc-10o", 3, (0.5,) * 3, (0.25,) * 3).eval()
    snn = Spiking(neuron="lif", T=8, leak=0.9, encoding="poisson", chunk=2)
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    monkeypatch.setattr(runtime, "saved_budget", lambda device: 10**15)
    kept, exact = saved_bytes_and_grad(net, snn, x, y)
    monkeypatch.setattr(runtime, "saved_budget", lambda device: 0)
    recomputed, grad = saved_bytes_and_grad(net, snn, x, y)
    torch.testing.assert_close(grad, exact, rtol=1e-6, atol=1e-9)
    frame = 3 * 32 * 32 * 4  # one input frame in fp32
    assert kept > 8 * frame and recomputed <= 3 * frame, (kept, recomputed)


# a run directory outlives its device -------------------------------------------------------------------

def test_a_run_started_on_a_gpu_resumes_on_the_cpu_reusing_everything(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    record = json.loads((out / "run.json").read_text())
    assert record["executor"]["device"] == "cpu" and record["executor"]["neurons"] == "reference"
    for path in (out / "models").glob("*.safetensors"):  # as if trained on a GPU
        tensors, meta = checkpoint.load(path)
        assert meta["device"] == "cpu" and meta["neurons"] == "reference"  # the loop, not the Triton kernels
        checkpoint.save(path, tensors, {**meta, "device": "cuda:0"})
    for path in (out / "cells").glob("*.json"):
        saved, _ = records.read_record(path)
        assert saved["device"] == "cpu" and saved["neurons"] == "reference"
        records.write_record(path, {**saved, "device": "cuda:0"})
    lines = []
    study.run(get_preset("smoke"), out, report.write_report, log=lines.append)
    assert (out / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    assert any("adversarial sets (0 crafted," in line for line in lines), lines
    assert not any(line.startswith(("training", "converted")) for line in lines), lines
    # the models were not rebuilt: their files still say cuda:0
    assert all(checkpoint.load(p)[1]["device"] == "cuda:0" for p in (out / "models").glob("*.safetensors"))
