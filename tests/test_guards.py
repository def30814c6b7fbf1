"""Nothing silently wrong: cached results keyed by what a model computes and on which images, one eps
convention, and the Python API's guard rails (one readable SpikeAdvError, never a raw internal error)."""

import re

import numpy as np
import pytest
import torch
from torch import nn

import spikeadv
from spikeadv.errors import SpikeAdvError
from spikeadv.models.foreign import identified

GRID = 8 / 255


class Leaky(nn.Module):
    """A stateful spiking layer (a membrane kept across steps), so T changes what a TimeLoop computes."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc, self.out, self.v = nn.Linear(3 * 8 * 8, 32), nn.Linear(32, 10), None

    def forward(self, x):
        self.v = self.fc(x.flatten(1)) if self.v is None else 0.5 * self.v + self.fc(x.flatten(1))
        spike = (self.v > 0.2).float() + torch.sigmoid(self.v) - torch.sigmoid(self.v).detach()
        self.v = self.v - spike.detach() * 0.2
        return self.out(spike)


def _reset(module):
    module.v = None


def _images(n=32):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _numbers(model, x, y, out=None):
    card = spikeadv.evaluate(model, x, y, eps=GRID, suite="quick", out=out, log=lambda line: None)
    return card["clean_acc"], card["eps"]["8"]["worst_acc"], card["null"]["zero"]


def _cases():
    """(first model, its images; second model, its images): the second must not be served the first's
    cached numbers, and each pair differs in what it computes."""
    x = _images()
    trained, untrained = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)), nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    torch.manual_seed(1), nn.init.normal_(untrained[1].weight, std=0.5)
    y = trained(x).argmax(1).detach()  # labels the trained model gets right
    holder = [trained]
    around = lambda v: holder[0](v)  # noqa: E731  (a function around a network: no weights of its own)
    loop = Leaky(0).eval()
    leaky_y = spikeadv.TimeLoop(loop, T=4, reset=_reset)(x).argmax(1).detach()
    return {
        "a function around another network": (around, x, y, lambda: holder.__setitem__(0, untrained), around, x),
        "a TimeLoop at another T": (spikeadv.TimeLoop(loop, T=4, reset=_reset), x, leaky_y, None,
                                    spikeadv.TimeLoop(loop, T=1, reset=_reset), x),
        "the same model on other images": (trained, x, y, None, trained, 1 - x),
    }


@pytest.mark.parametrize("case", ["a function around another network", "a TimeLoop at another T",
                                  "the same model on other images"])
def test_a_cached_card_is_never_served_for_another_function_or_other_images(tmp_path, case):
    first, x1, y, change, second, x2 = _cases()[case]
    before = _numbers(first, x1, y, tmp_path)
    if change:
        change()
    truth = _numbers(second, x2, y)  # computed afresh, nothing cached
    assert truth != before  # the case is a real change of function or images
    assert _numbers(second, x2, y, tmp_path) == truth
    assert _numbers(first if not change else second, x1 if not change else x2, y, tmp_path) == (before if not change else truth)


def test_a_checkpoint_run_at_another_T_is_keyed_by_that_T(reference):
    snn2 = spikeadv.Model.from_run(reference, "snn2")
    longer = spikeadv.Model.load(snn2.path, T=snn2.snn.T + 4)
    assert longer.sha256 == snn2.sha256  # the file is the same: only how it runs differs
    x, _ = _smoke(4)
    assert identified(longer, x).sha256 != identified(snn2, x).sha256 == identified(snn2, x).sha256
    assert identified(snn2, x).sha256 == identified(spikeadv.Model.from_run(reference, "snn2"), x).sha256


def _smoke(n):
    from spikeadv import data

    test = data.load("synthetic", "test")
    return data.to_float(test.images[:n]), test.labels[:n].long()


# --- one eps convention --------------------------------------------------------------------------------

def test_evaluate_takes_eps_in_pixel_units_like_the_attacks():
    x = _images(8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    y = net(x).argmax(1).detach()
    card = spikeadv.evaluate(net, x, y, eps=0.03, suite="quick", log=lambda line: None)
    assert card["grid"] == [7.65]  # 0.03 in pixel units is 7.65/255, not 0.03/255
    from spikeadv.study.evaluation import eps_grid

    assert eps_grid(np.float32(8 / 255)) == (8.0,) and eps_grid([1 / 255, 8 / 255]) == (1.0, 8.0)
    with pytest.raises(SpikeAdvError, match="a number or a sequence of numbers"):
        eps_grid(torch.tensor(0.03))
    for bad in (8, (8,), (2 / 255, 8)):
        with pytest.raises(SpikeAdvError, match="pass 8/255"):
            spikeadv.evaluate(net, x, y, eps=bad, log=lambda line: None)
    with pytest.raises(SpikeAdvError, match="pass 8/255"):
        spikeadv.fgsm(spikeadv.ann(net), x, y, eps=8)


def test_the_readme_example_crafts_within_eps_and_the_faithful_snnadv_says_it_does_not(reference):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    (gradient,) = re.findall(r'x_adv = spikeadv\.fgsm\(snn2\.source\("([\w-]+)"\)', example)
    snn2 = spikeadv.Model.from_run(reference, "snn2")
    x, y = _smoke(16)
    assert (spikeadv.fgsm(snn2.source(gradient), x, y, eps=8 / 255) - x).abs().max() <= 8 / 255 + 1e-6
    # the paper's SNNAdv starts from the Poisson-rate image: not within eps of x, and it says so
    assert (spikeadv.fgsm(snn2.source("snnadv"), x, y, eps=8 / 255) - x).abs().max() > 8 / 255
    assert "not within eps of x" in spikeadv.snnadv.__doc__ and "not within eps of x" in readme


# --- the Python API's guard rails ------------------------------------------------------------------

@pytest.fixture(scope="module")
def ann(reference):
    return spikeadv.Model.from_run(reference, "ann")


@pytest.mark.parametrize("call, message", [
    (lambda src, x, y: spikeadv.fgsm(src, x, torch.full_like(y, 10), eps=8 / 255), "classes of the model, 0 to 9"),
    (lambda src, x, y: spikeadv.ifgsm(src, x, y, eps=8 / 255, steps=2, target=torch.full_like(y, 11)),
     "target must hold classes of the model, 0 to 9"),
    (lambda src, x, y: spikeadv.fgsm(src, x, y - 1 - y.max(), eps=8 / 255), "got values from -"),
    (lambda src, x, y: spikeadv.fgsm(src, torch.rand(len(y), 1, 28, 28), y, eps=8 / 255),
     "takes images of shape (3, 32, 32)"),
    (lambda src, x, y: spikeadv.evaluate(src.logits, x[:8], y[:3], eps=8 / 255), "one integer class per image"),
    (lambda src, x, y: spikeadv.evaluate(lambda v: src.logits(v)[:, :4], x, y, eps=8 / 255),
     "classes of the model, 0 to 3"),
    (lambda src, x, y: spikeadv.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(10, 10)), x, y, eps=8 / 255),
     "cannot take images of shape (3, 32, 32)"),
    (lambda src, x, y: spikeadv.TimeLoop(nn.Identity(), 0), "T (timesteps) must be an integer"),
    (lambda src, x, y: spikeadv.TimeLoop(nn.Identity(), 4, encoding="rate"), "unknown encoding"),
])
def test_the_api_refuses_bad_requests_in_one_readable_line(ann, call, message):
    x, y = _smoke(16)
    with pytest.raises(SpikeAdvError, match=re.escape(message)):
        call(ann.source("ann"), x, y)


def test_a_model_where_a_source_is_expected_is_attacked_or_refused_in_one_line(ann, reference):
    x, y = _smoke(16)
    with pytest.raises(SpikeAdvError, match=r"pass model.source\(NAME\) with NAME one of ann"):
        spikeadv.fgsm(ann, x, y, eps=8 / 255)
    snn2 = spikeadv.Model.from_run(reference, "snn2")
    with pytest.raises(SpikeAdvError, match="snnadv, snnadv-clean, bptt, bptr, hart"):
        spikeadv.ifgsm(snn2, x, y, eps=8 / 255, steps=2)
    # a module (or a TimeLoop) is a classifier: attacked through its own autograd, like spikeadv.ann(net)
    assert torch.equal(spikeadv.fgsm(ann.net, x, y, eps=8 / 255), spikeadv.fgsm(ann.source("ann"), x, y, eps=8 / 255))


@pytest.mark.parametrize("device, message", [("garbage", "not a device"), ("cuda:7", "cuda:7")])
def test_a_device_this_machine_lacks_is_refused_in_one_line(ann, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.fail("this test assumes fewer than 8 GPUs")
    with pytest.raises(SpikeAdvError, match=message):
        spikeadv.Model.load(ann.path, device=device)


def test_a_study_cell_is_keyed_by_the_T_its_snn1_runs_at():
    import dataclasses

    from spikeadv.study.plan import plan

    preset = spikeadv.get_preset("smoke")
    longer = dataclasses.replace(preset, study=dataclasses.replace(preset.study, snn1_T=preset.snn1.T * 2))
    cells = [{t.name: t.recipe for t in plan(p, ("a", "b"), 64, "labels") if t.kind == "cell"} for p in (preset, longer)]
    assert cells[0].keys() == cells[1].keys() and all(cells[0][k] != cells[1][k] for k in cells[0])


def test_the_accuracy_bar_counts_the_images_evaluated(monkeypatch):
    from spikeadv import data
    from spikeadv.models import train
    from spikeadv.models.network import Network

    seen = {}

    class Bar:
        def __init__(self, total, **kwargs):
            seen["total"], seen["n"] = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            seen["n"] += n

    monkeypatch.setattr(train, "tqdm", Bar)
    ds = data.synthetic("test", 500).subset(32)
    train.accuracy(Network("32x32-8c3-2s-10o", 3, (0.5,) * 3, (0.25,) * 3), ds)
    assert seen == {"total": 32, "n": 32}
