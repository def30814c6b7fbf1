"""The Python API (`import spikeadv`): its names, the README's example run as written, the model loader
on a smoke study, and the guard rails of every attack (one readable SpikeAdvError each)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spikeadv
from spikeadv import data
from spikeadv.attack.estimators import Source
from spikeadv.records import outcomes

README = Path(__file__).parents[1] / "README.md"


def run_python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)


# --- the package's names --------------------------------------------------------------------------------

def test_every_exported_name_resolves():
    assert sorted(spikeadv.__all__) == sorted(set(spikeadv.__all__)) == sorted(spikeadv._EXPORTS)
    namespace = {}
    exec("from spikeadv import *", namespace)
    for name in spikeadv.__all__:
        assert getattr(spikeadv, name) is namespace[name] is not None, name
        assert name in dir(spikeadv)
    assert spikeadv.source is spikeadv.attack.estimators.make and spikeadv.fgsm is spikeadv.attack.attacks.fgsm
    assert issubclass(spikeadv.Model, spikeadv.models.trained.Trained)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        spikeadv.nothing  # noqa: B018


def test_import_spikeadv_is_light():
    result = run_python("import sys, spikeadv; print(spikeadv.__version__, 'torch' in sys.modules)", cwd=".")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [spikeadv.__version__, "False"]


# --- the README's example -------------------------------------------------------------------------------

def readme_example() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return code


@pytest.mark.slow
def test_readme_example_runs_and_the_attack_lowers_accuracy(reference, tmp_path):
    code = readme_example()
    assert 8 <= len(code.strip().splitlines()) <= 12
    shutil.copytree(reference, tmp_path / "runs" / "smoke")  # spikeadv.run then reuses every artifact
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(0 crafted, " in result.stdout  # nothing was recomputed
    (clean, adv), = re.findall(r"SNN-II clean accuracy ([\d.]+)%, under FGSM at eps 8/255 ([\d.]+)%", result.stdout)
    assert float(clean) > 60 and float(adv) < float(clean) - 5, result.stdout


# --- the model loader -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_images():
    test = data.load("synthetic", "test")
    study = spikeadv.get_preset("smoke").study
    return data.to_float(test.images[:study.images]), test.labels[:study.images]


@pytest.mark.parametrize("kind, instance", [("ann", 0), ("snn1", 0), ("snn2", 0), ("snn2", 1)])
def test_models_of_a_run_predict_what_the_study_recorded(reference, smoke_images, kind, instance):
    x, y = smoke_images
    study = spikeadv.get_preset("smoke").study
    model = spikeadv.Model.from_run(reference, kind, instance)
    (entry,) = [m for m in json.loads((reference / "run.json").read_text())["models"]
                if (m["kind"], m["instance"]) == (kind, instance)]
    assert (model.kind, model.instance, model.sha256) == (kind, instance, entry["sha256"])
    assert (model.snn.T if model.snn else None) == entry["T"]
    assert kind in repr(model) and "meta" not in repr(model)
    # with the study's seed and K, the expected correctness per clean image that the study recorded
    p = model.expected(x, y, draws=study.draws, seed=study.seed, batch_size=study.batch_size).numpy()
    recorded = (outcomes.unpack_classes(entry["clean_hits"], len(y)) / entry["draws"] if entry["draws"] > 1
                else outcomes.unpack(entry["clean_correct"][0], len(y)))
    assert np.allclose(p, recorded)
    correct = (model.predict(x, seed=study.seed, batch_size=study.batch_size) == y).numpy()
    assert 0 < correct.mean() <= 1
    gradient = "ann" if kind == "ann" else "bptt"
    adv = spikeadv.fgsm(model.source(gradient, seed=1), x, y, eps=16 / 255)
    assert (adv - x).abs().max() <= 16 / 255 + 1e-6
    assert (model.predict(adv, seed=study.seed) == y).float().mean() < correct.mean()


def test_loader_refuses_with_one_clear_message(reference, smoke_images, tmp_path):
    x, _ = smoke_images
    with pytest.raises(spikeadv.SpikeAdvError, match="has no model snn3 instance 0 .*snn2 1"):
        spikeadv.Model.from_run(reference, "snn3")
    with pytest.raises(spikeadv.SpikeAdvError, match="cannot read the models of .*run.json.*spikeadv run"):
        spikeadv.Model.from_run(tmp_path, "ann")
    ann = spikeadv.Model.from_run(reference, "ann")
    with pytest.raises(spikeadv.SpikeAdvError, match="'bptt' does not apply to an ANN"):
        ann.source("bptt")
    with pytest.raises(spikeadv.SpikeAdvError, match=r"outside \[0, 1\]"):
        ann.predict(x * 255)
    # a checkpoint other than the one the run recorded
    meta = json.loads((reference / "run.json").read_text())
    (entry,) = [m for m in meta["models"] if (m["kind"], m["instance"]) == ("ann", 1)]
    shutil.copy(reference / entry["path"], tmp_path / "ann1.safetensors")
    (tmp_path / "run.json").write_text(json.dumps({"models": [{**entry, "path": "ann1.safetensors",
                                                              "sha256": "0" * 64}]}))
    with pytest.raises(spikeadv.SpikeAdvError, match="not the model .* recorded"):
        spikeadv.Model.from_run(tmp_path, "ann", 1)
    # Model.load: one file, at another T
    snn2 = spikeadv.Model.load(reference / next(m["path"] for m in meta["models"] if m["kind"] == "snn2"), T=3)
    assert snn2.kind == "snn2" and snn2.snn.T == 3


# --- guard rails of every attack ------------------------------------------------------------------------

def never(x):
    raise AssertionError("the attack ran before checking its request")


def attack(name, x, y, eps=8 / 255, steps=2, a=None):
    src = Source("never", never, classes=10)  # knows its classes: checking the request needs no forward
    gen = torch.Generator().manual_seed(0)
    return {
        "fgsm": lambda: spikeadv.fgsm(src, x, y, eps),
        "rfgsm": lambda: spikeadv.rfgsm(src, x, y, eps, gen, a=a),
        "ifgsm": lambda: spikeadv.ifgsm(src, x, y, eps, steps),
        "tifgsm": lambda: spikeadv.ifgsm(src, x, y, eps, steps, target=(y + 1) % 10),
        "pgd": lambda: spikeadv.pgd(src, x, y, eps, steps, a=a, generator=gen),
    }[name]()


ATTACKS = ("fgsm", "rfgsm", "ifgsm", "tifgsm", "pgd")


def clean_batch():
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])


def with_pixel(value):
    x, _ = clean_batch()
    x[1, 2, 3, 4] = value
    return x


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("change, message", [
    ({"eps": 8}, (r"^eps=8 is in pixel units \(images in \[0, 1\]\) and must be in \[0, 1\]; 8 looks like "
                  r"1/255 units: pass 8/255$")),
    ({"eps": 300}, r"^eps=300 is in pixel units \(images in \[0, 1\]\) and must be in \[0, 1\]$"),
    ({"eps": -0.1}, r"^eps=-0.1 is negative; it must be in \[0, 1\] \(pixel units, e.g. 8/255\)$"),
    ({"eps": float("nan")}, r"^eps=nan is not finite"),
    ({"eps": "8/255"}, r"^eps must be a number in \[0, 1\] \(pixel units, e.g. 8/255\), got '8/255'$"),
    ({"x": with_pixel(float("nan"))}, r"^x has 1 non-finite pixels \(NaN or inf\); pass finite pixels in \[0, 1\]$"),
    ({"x": with_pixel(float("inf"))}, r"^x has 1 non-finite pixels"),
    ({"x": clean_batch()[0] * 255}, (r"^x has pixels in \[[\d.e-]+, 25\d.*\], outside \[0, 1\]; pass raw "
                                     r"pixels in \[0, 1\]: divide 0-255 values by 255")),
    ({"x": with_pixel(-0.01)}, r"^x has pixels in \[-0.01, .*outside \[0, 1\].*do not normalise them"),
    ({"x": (clean_batch()[0] * 255).to(torch.uint8)}, r"^x must be a float tensor .* got torch.uint8 .*to_float"),
    ({"x": clean_batch()[0][0]}, r"^x must be a float tensor of images \[N, C, H, W\]"),
    ({"y": torch.tensor([0, 1, 2])}, (r"^y must hold one integer class per image \(an integer tensor of shape "
                                      r"\(4,\)\), got torch.int64 of shape \(3,\)$")),
    ({"y": torch.zeros(4)}, r"^y must hold one integer class per image .* got torch.float32"),
])
def test_every_attack_refuses_a_bad_request_with_one_clear_message(name, change, message):
    x, y = clean_batch()
    kwargs = {"x": x, "y": y, **change}
    with pytest.raises(spikeadv.SpikeAdvError, match=message):
        attack(name, **kwargs)


@pytest.mark.parametrize("name", ["ifgsm", "tifgsm", "pgd"])
@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_iterative_attacks_refuse_bad_steps(name, steps):
    x, y = clean_batch()
    with pytest.raises(spikeadv.SpikeAdvError, match=rf"^steps must be an int >= 1 \(the number of gradient "
                                                       rf"steps\), got {re.escape(repr(steps))}$"):
        attack(name, x, y, steps=steps)


@pytest.mark.parametrize("name", ["rfgsm", "pgd"])
def test_step_sizes_are_pixel_units_too(name):
    x, y = clean_batch()
    with pytest.raises(spikeadv.SpikeAdvError, match="^a=2 is in pixel units .* pass 2/255$"):
        attack(name, x, y, a=2)
    with pytest.raises(spikeadv.SpikeAdvError, match="^a=-0.01 is negative"):
        attack(name, x, y, a=-0.01)


def test_rfgsm_refuses_a_random_step_beyond_eps():
    x, y = clean_batch()
    with pytest.raises(spikeadv.SpikeAdvError, match="random step a=0.1 exceeds eps=0.05; pass a <= eps"):
        attack("rfgsm", x, y, eps=0.05, a=0.1)


def test_targets_must_match_the_batch():
    x, y = clean_batch()
    with pytest.raises(spikeadv.SpikeAdvError, match=r"^target must hold one integer class per image"):
        spikeadv.ifgsm(Source("never", never), x, y, 8 / 255, 2, target=y[:2])


def test_eot_needs_a_whole_number_of_draws():
    src = Source("never", never)
    for n in (0, 1.5):
        with pytest.raises(spikeadv.SpikeAdvError, match="eot needs an int n >= 1"):
            spikeadv.eot(src, n)
