"""Nothing silently wrong: cached results keyed by what a model computes and on which images, one eps
convention, and the Python API's guard rails (one readable SpikeAdvError, never a raw internal error)."""

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
    for bad in (8, (8,), (2 / 255, 8)):
        with pytest.raises(SpikeAdvError, match="pass 8/255"):
            spikeadv.evaluate(net, x, y, eps=bad, log=lambda line: None)
    with pytest.raises(SpikeAdvError, match="pass 8/255"):
        spikeadv.fgsm(spikeadv.ann(net), x, y, eps=8)
