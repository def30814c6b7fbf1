"""Presets are data: the paper's numbers, and overrides from the command line."""

import pytest

from spikeadv.config.presets import PRESETS, get_preset
from spikeadv.errors import SpikeAdvError
from spikeadv.models.network import Network
from spikeadv.models.train import lr_at


def test_paper_preset_is_the_paper():
    p = get_preset("paper")
    assert (p.dataset, p.spec, p.width, p.dropout, p.batchnorm) == ("cifar10", "vgg9", 1.0, 0.2, False)
    assert (p.ann.epochs, p.ann.lr, p.ann.milestones, p.ann.gamma) == (200, 0.09, (81, 122), 0.1)
    assert p.test_subset is None and len(p.seeds) == 3  # three instances: seed variance


def test_paper_schedule_anneals_by_ten_at_epochs_81_and_122():
    cfg = get_preset("paper").ann
    steps = 10
    # "reduced by a factor of 10 at the 81st and the 122nd epoch": epochs 1..80 run at 0.09,
    # the 81st (its first step is step 80 * steps) at 0.009, the 122nd at 0.0009
    assert lr_at(cfg, 80 * steps - 1, steps) == pytest.approx(0.09)
    assert lr_at(cfg, 80 * steps, steps) == pytest.approx(0.009)
    assert lr_at(cfg, 121 * steps - 1, steps) == pytest.approx(0.009)
    assert lr_at(cfg, 121 * steps, steps) == pytest.approx(0.0009)
    assert lr_at(cfg, 199 * steps + 9, steps) == pytest.approx(0.0009)


def test_paper_and_fast_build_full_width_vgg9():
    for name in ("paper", "fast"):
        p = get_preset(name)
        net = Network(p.spec, 3, (0.5,) * 3, (0.25,) * 3, width=p.width, dropout=p.dropout)
        assert net.parameter_count() == 9_022_144  # see test_arch: the spec's weights by hand


def test_onecycle_rises_then_falls_to_zero():
    cfg = get_preset("cpu").ann
    steps = 100
    lrs = [lr_at(cfg, s, steps) for s in range(cfg.epochs * steps)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(cfg.lr)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] < cfg.lr / 100


def test_overrides_are_typed_and_nested():
    p = get_preset("cpu", ["ann.epochs=3", "width=0.25", "ann.milestones=2,5", "test_subset=none"])
    assert (p.ann.epochs, p.width, p.ann.milestones, p.test_subset) == (3, 0.25, (2, 5), None)
    assert PRESETS["cpu"].ann.epochs != 3  # the preset itself is untouched


@pytest.mark.parametrize("bad, match", [
    (["ann.epoch=3"], "unknown setting 'epoch'"),
    (["ann.epochs=three"], "expected a int"),
    (["ann.epochs=0"], "epochs"),
    (["width=-1"], "width"),
    (["ann"], "key=value"),
    (["ann=3"], "name a field"),
])
def test_bad_overrides_are_refused_clearly(bad, match):
    with pytest.raises(SpikeAdvError, match=match):
        get_preset("cpu", bad)


def test_unknown_preset():
    with pytest.raises(SpikeAdvError, match="unknown preset"):
        get_preset("tpu")


def test_the_gpu_preset_is_the_paper_s_study_on_its_encoding():
    # the one-GPU preset: the paper's VGG-9 at full width, both SNNs on Poisson input (never direct),
    # SNN-II with LIF neurons, two instances, at least 1,000 attacked images and the whole grid
    p = get_preset("gpu")
    assert (p.spec, p.width, p.dataset) == ("vgg9", 1.0, "cifar10")
    assert p.snn1.encoding == p.snn2.encoding == "poisson" and p.snn1.T <= 256
    assert p.spiking("snn2").neuron == "lif" and len(p.seeds) == 3 and p.study.images >= 1000
    assert p.study.attacks == get_preset("paper").study.attacks and p.study.eps == get_preset("paper").study.eps
