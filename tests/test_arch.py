"""The paper's notation, the network it builds, and batch-norm folding."""

import pytest
import torch
from torch import nn

from spikeadv.config.spec import SPECS, parse_spec
from spikeadv.errors import SpikeAdvError
from spikeadv.models.network import Network, fold_batchnorm, macs

CIFAR = dict(in_channels=3, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def vgg(spec="vgg9", **kw):
    return Network(spec, CIFAR["in_channels"], CIFAR["mean"], CIFAR["std"], **kw)


def test_paper_vgg9_parameter_count_matches_the_spec_by_hand():
    # 32x32-64c5-64c5-2s-128c5-128c5-2s-256c5-256c5-256c5-2s-1024fc-10o, no biases (paper IV-B)
    by_hand = (
        3 * 64 * 25 + 64 * 64 * 25          # two 64c5 at 32x32
        + 64 * 128 * 25 + 128 * 128 * 25    # two 128c5 at 16x16
        + 128 * 256 * 25 + 2 * 256 * 256 * 25  # three 256c5 at 8x8
        + 256 * 4 * 4 * 1024                # 1024fc after the third pooling (4x4 maps)
        + 1024 * 10                         # 10o
    )
    assert by_hand == 9_022_144
    assert vgg().parameter_count() == by_hand


def test_layer_shapes_of_full_width_vgg9():
    net = vgg()
    convs = [m for m in net.layers if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [
        (64, 3, 5, 5), (64, 64, 5, 5), (128, 64, 5, 5), (128, 128, 5, 5),
        (256, 128, 5, 5), (256, 256, 5, 5), (256, 256, 5, 5)]
    assert all(c.bias is None for c in convs)
    fcs = [m for m in net.layers if isinstance(m, nn.Linear)]
    assert [tuple(f.weight.shape) for f in fcs] == [(1024, 4096), (10, 1024)]
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.layers) == 3
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplier_scales_hidden_widths_not_classes():
    net = vgg("vgg9-k3", width=0.5)
    widths = [m.weight.shape[0] for m in net.layers if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert widths == [32, 32, 64, 64, 128, 128, 128, 512, 10]
    assert net.layers[0].weight.shape[-1] == 3


def test_normalisation_is_the_fixed_first_layer():
    net = vgg("32x32-4c3-2s-10o")
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(net.normalise(x), (x - net.mean) / net.std)
    assert not any(p is net.mean or p is net.std for p in net.parameters())


def test_dropout_only_in_training():
    net = vgg("32x32-8c3-2s-16fc-10o", dropout=0.5)
    x = torch.rand(4, 3, 32, 32)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.equal(a, net(x))


@pytest.mark.parametrize(
    "spec, token",
    [
        ("32x32-64c5-64q5-10o", "64q5"),
        ("32x32-64c4-10o", "64c4"),
        ("32-64c3-10o", "32"),
        ("32x32-64c3-2s", "10o"),
        ("32x32-10o-64c3-10o", "10o"),
        ("32x32-0c3-10o", "0c3"),
    ],
)
def test_malformed_spec_names_the_offending_token(spec, token):
    with pytest.raises(SpikeAdvError, match=token):
        parse_spec(spec)


def test_max_pooling_token():
    net = vgg("32x32-8c3-2m-10o")
    assert isinstance(net.layers[1], nn.MaxPool2d) and net.layers[2].weight.shape == (10, 8 * 16 * 16)


def test_named_specs_differ_only_in_kernel_size():
    a, b = parse_spec("vgg9"), parse_spec("vgg9-k3")
    assert [(l.kind, l.size) for l in a.layers] == [(l.kind, l.size) for l in b.layers]
    assert {l.k for l in a.layers if l.kind == "conv"} == {5}
    assert {l.k for l in b.layers if l.kind == "conv"} == {3}
    assert parse_spec(SPECS["vgg9"]) == a


def test_fold_batchnorm_gives_the_same_function():
    torch.manual_seed(0)
    net = vgg("32x32-8c3-2s-16c3-2s-32fc-10o", batchnorm=True, dropout=0.0)
    x = torch.rand(16, 3, 32, 32)
    for _ in range(3):  # give the BN layers non-trivial running statistics
        net(x * 2)
    for bn in net.norms.values():
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.2, 0.2)
    net.eval()
    folded = fold_batchnorm(net)
    assert not folded.batchnorm and folded.bias
    assert torch.allclose(folded(x), net(x), atol=1e-5, rtol=1e-4)


def test_config_round_trip_rebuilds_the_same_shapes():
    net = vgg("vgg9-k3", width=0.25, dropout=0.1, batchnorm=True)
    twin = Network.from_config(net.config())
    assert [tuple(t.shape) for t in twin.state_dict().values()] == [tuple(t.shape) for t in net.state_dict().values()]


def test_macs_of_vgg9():
    net = vgg()
    # convs at 32x32, 16x16, 8x8 plus the two fc layers
    expected = (3 * 64 + 64 * 64) * 25 * 1024 + (64 * 128 + 128 * 128) * 25 * 256 \
        + (128 * 256 + 2 * 256 * 256) * 25 * 64 + 4096 * 1024 + 1024 * 10
    assert macs(net) == expected
