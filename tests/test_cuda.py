"""The CUDA path, on a GPU: ``pytest -m cuda`` (deselected by default; skipped where there is no GPU).
The fused neuron kernels' own GPU tests are in test_kernels.py; benchmarks/gpu.py times the GPU."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from spikeadv import cli, data, report, runtime
from spikeadv.config.presets import get_preset
from spikeadv.models.kinds import fit
from spikeadv.models.network import Network, fold_batchnorm
from spikeadv.records import checkpoint

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on one: pytest -m cuda)")]

GPU = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def deterministic_cudnn(monkeypatch):
    """Tests here compare two runs: cuDNN's choice of algorithm (benchmark mode) and its nondeterministic
    ones would make them differ by more than the code does."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def test_the_smoke_study_runs_on_the_gpu_and_records_it(tmp_path, reference):
    out = tmp_path / "run"
    assert cli.main(["run", "--preset", "smoke", "--out", str(out), "--device", "cuda"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["executor"]["device"] == "cuda:0"
    assert {c["device"] for c in cells(out)} == {"cuda:0"}
    assert all(checkpoint.load(p)[1]["device"] == "cuda:0" for p in (out / "models").glob("*.safetensors"))
    ours = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cpu = [json.loads(line) for line in (reference / "results.jsonl").read_text().splitlines()]
    key = ("target", "scenario", "gradient", "attack", "eps", "steps", "repeat")
    assert [tuple(r[k] for k in key) for r in ours] == [tuple(r[k] for k in key) for r in cpu]
    ann = next(m for m in record["models"] if m["kind"] == "ann")
    assert ann["clean_acc"] >= 90  # the smoke ANN learns its stripes on any device (CPU: 98%)
    # the adaptive evaluation of its models on the GPU
    assert cli.main(["evaluate", str(out), "--suite", "quick", "--images", "32", "--eps", "8/255",
                     "--device", "cuda"]) == 0
    card = json.loads((out / "evaluation" / "quick" / "card.json").read_text())
    assert card["device"] == "cuda:0"


def test_a_cpu_run_resumes_on_the_gpu_reusing_everything(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    lines: list[str] = []
    from spikeadv import study
    study.run(get_preset("smoke"), out, report.write_report, log=lines.append, executor=study.Executor(device="cuda:0"))
    assert (out / "results.jsonl").read_bytes() == (reference / "results.jsonl").read_bytes()
    assert any("adversarial sets (0 crafted," in line for line in lines), lines


def test_every_generator_is_made_on_the_gpu(reference, tmp_path, monkeypatch):
    from test_devices import test_every_generator_is_made_on_the_device_of_what_it_draws as on_cpu
    monkeypatch.setattr(runtime, "resolve", lambda spec="auto": GPU)
    on_cpu(reference, tmp_path, monkeypatch)


def interrupted_after_epoch_1(kind, preset, out, device, monkeypatch):
    """Train until the checkpoint of epoch 1 is written, then stop as an interrupt would."""
    save = checkpoint.save

    def save_then_stop(path, tensors, meta):
        save(path, tensors, meta)
        if path == out:  # the epoch's checkpoint, not a snapshot
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(kind, preset, 0, out, DATA, device=device)
    monkeypatch.undo()
    assert checkpoint.load(out)[1]["epochs_done"] == 1


DATA = data.splits("synthetic", get_preset("smoke").validation)
BN = ["batchnorm=true", "snn2.batchnorm=true", "ann.bf16=true", "ann.channels_last=true", "snn2.train.bf16=true"]


@pytest.mark.parametrize("kind", ["ann", "snn2"])  # SGD with momentum; AdamW (its step count stays on the CPU)
def test_batchnorm_training_resumes_and_folds_on_the_gpu(kind, tmp_path, monkeypatch):
    preset = get_preset("smoke", BN)
    whole, _ = fit(kind, preset, 0, tmp_path / "whole.safetensors", DATA, device=GPU)
    part = tmp_path / "part.safetensors"
    interrupted_after_epoch_1(kind, preset, part, GPU, monkeypatch)
    resumed, meta = fit(kind, preset, 0, part, DATA, device=GPU, resume=True)
    assert meta["complete"] and not resumed.batchnorm and resumed.layers[0].weight.device == GPU  # folded there
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # cuDNN may sum in another order


def test_training_interrupted_on_the_cpu_resumes_on_the_gpu(tmp_path, monkeypatch):
    preset = get_preset("smoke")
    out = tmp_path / "ann.safetensors"
    interrupted_after_epoch_1("ann", preset, out, torch.device("cpu"), monkeypatch)
    net, meta = fit("ann", preset, 0, out, DATA, device=GPU, resume=True)
    assert meta["device"] == "cuda:0" and meta["metrics"][-1]["val_acc"] >= 90


def test_folding_batchnorm_on_the_gpu_keeps_the_function():
    net = Network("16x16-8c3-2s-16c3-2s-10o", 3, (0.5,) * 3, (0.25,) * 3, dropout=0.0, bias=False,
                  batchnorm=True).to(GPU)
    net.train()
    for _ in range(3):  # running statistics away from their initial values
        net(torch.rand(32, 3, 16, 16, device=GPU))
    net.eval()
    x = torch.rand(8, 3, 16, 16, device=GPU)
    folded = fold_batchnorm(net)
    assert folded.layers[0].bias.device == GPU
    torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)


def test_timestep_folding_on_the_gpu_changes_no_result():
    from spikeadv.config.spiking import Spiking
    net = Network("16x16-8c3-2s-10o", 3, (0.5,) * 3, (0.25,) * 3, dropout=0.0).to(GPU).eval()
    x = torch.rand(16, 3, 16, 16, device=GPU)
    assert runtime.fold(GPU, 4 * 8 * 16 * 16) > runtime.MAX_FOLD  # a GPU folds far more than the CPU
    with torch.no_grad():
        whole = net(x, Spiking(T=12, encoding="direct"))
        chunked = net(x, Spiking(T=12, encoding="direct", chunk=5))
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-5)
