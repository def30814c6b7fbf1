"""The paper's network notation and the network it describes (paper section IV-B, DESIGN section 2).

A spec string such as ``32x32-64c5-64c5-2s-128c5-128c5-2s-256c5-256c5-256c5-2s-1024fc-10o`` reads:
input size, then ``Nc k`` (conv, N maps, k x k kernel, stride 1, same padding), ``2s`` (2x2 average
pooling; ``2m`` max pooling, which ANNs and SNN-II can use but conversion cannot), ``Nfc`` (fully
connected), ``No`` (output layer with N classes).

One :class:`Network` is one weight set. Per-channel normalisation is its fixed first layer, so whatever
enters it (pixels, rates or spikes) is in [0, 1]. Every conv and hidden fc layer is followed by an
activation *site*; average pooling is followed by one too (a no-op ReLU in the ANN, a spiking neuron in
SNNs by default, as in the authors' code). The ANN runs ReLU at every site; the spiking modes of the
same weights replace what happens at a site and fold time into the batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import devices
from .distributed import Rows, bernoulli, dropout
from .errors import SpikeAdvError
from .neurons import Spiking, encode, spike_train

SPECS: dict[str, str] = {
    # the paper's VGG-9 (section IV-B, 5x5 kernels)
    "vgg9": "32x32-64c5-64c5-2s-128c5-128c5-2s-256c5-256c5-256c5-2s-1024fc-10o",
    # the authors' public VGG9 code uses 3x3 kernels
    "vgg9-k3": "32x32-64c3-64c3-2s-128c3-128c3-2s-256c3-256c3-256c3-2s-1024fc-10o",
}

_TOKEN = re.compile(r"^(?:(?P<conv>\d+)c(?P<k>\d+)|(?P<pool>\d+)s|(?P<maxpool>\d+)m|(?P<fc>\d+)fc|(?P<out>\d+)o)$")
POOLS = (nn.AvgPool2d, nn.MaxPool2d)


@dataclass(frozen=True)
class Layer:
    """One token of a spec: ``kind`` in conv/pool/fc/out, ``size`` = maps, pool size or units."""

    kind: str
    size: int
    k: int = 0


@dataclass(frozen=True)
class Spec:
    """A parsed spec string: input height/width and the layers in order."""

    text: str
    height: int
    width: int
    layers: tuple[Layer, ...]

    @property
    def classes(self) -> int:
        return self.layers[-1].size


def parse_spec(text: str) -> Spec:
    """Parse the paper's notation (or a name in :data:`SPECS`); a bad token is named in the error."""
    text = SPECS.get(text, text).strip()
    tokens = text.split("-")
    size = re.fullmatch(r"(\d+)x(\d+)", tokens[0])
    if size is None:
        raise SpikeAdvError(
            f"spec {text!r}: first token {tokens[0]!r} must be the input size HxW, e.g. 32x32 "
            f"(or use a named spec: {', '.join(SPECS)})"
        )
    layers = []
    for i, token in enumerate(tokens[1:], start=1):
        m = _TOKEN.match(token)
        if m is None or int(next(v for v in m.groupdict().values() if v is not None)) == 0:
            raise SpikeAdvError(
                f"spec {text!r}: token {i + 1} {token!r} is not one of Nc<k> (conv), Ns (avg pool), "
                f"Nm (max pool), Nfc (fully connected), No (output)"
            )
        if m["conv"]:
            if int(m["k"]) % 2 == 0:
                raise SpikeAdvError(f"spec {text!r}: token {token!r} needs an odd kernel size for same padding")
            layers.append(Layer("conv", int(m["conv"]), int(m["k"])))
        elif m["pool"]:
            layers.append(Layer("pool", int(m["pool"])))
        elif m["maxpool"]:
            layers.append(Layer("maxpool", int(m["maxpool"])))
        elif m["fc"]:
            layers.append(Layer("fc", int(m["fc"])))
        else:
            layers.append(Layer("out", int(m["out"])))
    if not layers or layers[-1].kind != "out" or any(l.kind == "out" for l in layers[:-1]):
        raise SpikeAdvError(f"spec {text!r}: must end with exactly one output token No, e.g. 10o")
    seen_fc = False
    for layer in layers:
        seen_fc |= layer.kind in ("fc", "out")
        if seen_fc and layer.kind in ("conv", "pool", "maxpool"):
            raise SpikeAdvError(f"spec {text!r}: {layer.kind} layer after a fully connected layer")
    return Spec(text, int(size[1]), int(size[2]), tuple(layers))


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class Network(nn.Module):
    """One weight set of the paper's networks, run as an ANN (ReLU at every activation site).

    ``width`` scales every hidden width (not the classes). Dropout (paper: 0.2) follows every conv and
    hidden fc activation. Layers have no biases unless ``bias=True`` (clean conversion, paper III-A).
    """

    def __init__(
        self,
        spec: str | Spec,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        width: float = 1.0,
        dropout: float = 0.2,
        bias: bool = False,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec if isinstance(spec, Spec) else parse_spec(spec)
        if width <= 0:
            raise SpikeAdvError(f"width multiplier must be > 0, got {width}")
        if not 0 <= dropout < 1:
            raise SpikeAdvError(f"dropout must be in [0, 1), got {dropout}")
        if len(mean) != in_channels or len(std) != in_channels:
            raise SpikeAdvError(f"mean/std need {in_channels} channels, got {len(mean)}/{len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.in_channels, self.dropout, self.width, self.bias = in_channels, dropout, width, bias
        self.layers = nn.ModuleList()
        # training-time batch-norm after each conv; fold_batchnorm() turns it into weights + biases
        self.norms = nn.ModuleDict()
        c, h, w = in_channels, self.spec.height, self.spec.width
        for layer in self.spec.layers:
            if layer.kind == "conv":
                out = _scaled(layer.size, width)
                if batchnorm:
                    self.norms[str(len(self.layers))] = nn.BatchNorm2d(out)
                self.layers.append(nn.Conv2d(c, out, layer.k, padding=layer.k // 2, bias=bias and not batchnorm))
                c = out
            elif layer.kind in ("pool", "maxpool"):
                if h < layer.size or w < layer.size:
                    raise SpikeAdvError(f"spec {self.spec.text!r}: pooling {layer.size}s on a {h}x{w} map")
                self.layers.append(nn.AvgPool2d(layer.size) if layer.kind == "pool" else nn.MaxPool2d(layer.size))
                h, w = h // layer.size, w // layer.size
            else:
                out = layer.size if layer.kind == "out" else _scaled(layer.size, width)
                self.layers.append(nn.Linear(c * h * w, out, bias=bias))
                c, h, w = out, 1, 1
        # one threshold per activation site (index = layer index); 1.0 until balanced or trained
        self.register_buffer("thresholds", torch.ones(len(self.layers) - 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal init for ReLU (bias-free nets keep activations at scale without batch-norm)."""
        for m in self.layers:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def classes(self) -> int:
        return self.spec.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.spec.height, self.spec.width)

    def normalise(self, x: Tensor) -> Tensor:
        """The fixed first layer: per-channel (x - mean) / std on pixels, rates or spikes alike."""
        return (x - self.mean) / self.std

    def forward(
        self,
        x: Tensor,
        snn: Spiking | None = None,
        generator: torch.Generator | None = None,
        spikes: dict[int, Tensor] | None = None,
        rows: Rows | None = None,
    ) -> Tensor:
        """Pixels in [0, 1] of shape [B, C, H, W] -> logits [B, classes].

        ``snn=None``: the ANN (ReLU at every site). Otherwise the same weights as an SNN: the encoder
        turns x into T input frames; conv/linear layers see each chunk of timesteps folded into the
        batch ([t*B, ...]), only the neuron update loops over t; the output layer integrates without
        spiking, logits = accumulated potential / T. ``spikes`` (if given) accumulates, per site, the
        fraction of its neurons that fired, summed over timesteps and samples (/ (T * N): spike rate).
        ``rows``: x is that share of a global batch (data-parallel training); dropout masks and input
        spikes are drawn for the global batch (:mod:`.distributed`).
        """
        if snn is None:
            return self._run(self.normalise(x), None, 1, {}, None, rows=rows)
        return sum(out.sum(0) for out in self.timesteps(x, snn, generator, spikes, rows=rows)) / snn.T

    def proxy(self, x: Tensor, snn: Spiking) -> Tensor:
        """The rate model of this SNN (the SNNAdv proxy ANN, paper IV-E and Fig. 1): the same weights in
        ANN mode with each spiking site's activation divided by its threshold, i.e. the weights scaled
        by the threshold-scaling factors (SNN-I); thresholds of 1 leave the plain ANN (SNN-II)."""
        return self._run(self.normalise(x), None, 1, {}, None, rates=snn)

    def timesteps(
        self,
        x: Tensor,
        snn: Spiking,
        generator: torch.Generator | None = None,
        spikes: dict[int, Tensor] | None = None,
        upto: int | None = None,
        rows: Rows | None = None,
    ) -> Iterator[Tensor]:
        """The SNN's output currents ``[t, B, ...]`` chunk by chunk of time (neuron state carried over);
        with ``upto`` the input currents of that layer's activation site instead of the output layer's."""
        state: dict = {}
        fold = devices.fold(x.device, 4 * self._largest_activation())  # a policy of the device
        step = snn.chunk or max(1, min(snn.T, fold // (rows.total if rows else x.shape[0])))
        if self.training and self.batchnorm:
            # batch-norm in training normalises each call by its own statistics: all T steps in one
            # call, or early and late steps get different normalisations that eval (running
            # statistics) does not reproduce (seen: SNN-II 47.5% instead of 65.2%)
            step = snn.T
        for t0 in range(0, snn.T, step):
            t = min(step, snn.T - t0)
            frames = encode(x, t, snn.encoding, generator, rows).flatten(0, 1)
            out = self._run(self.normalise(frames), snn, t, state, spikes, upto, rows=rows)
            yield out.view(t, x.shape[0], *out.shape[1:])

    def _largest_activation(self) -> int:
        """Elements of the largest input or activation of one frame (one image at one timestep)."""
        (c, h, w), largest = self.input_shape, math.prod(self.input_shape)
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                c = layer.out_channels
            elif isinstance(layer, POOLS):
                h, w = h // layer.kernel_size, w // layer.kernel_size
            else:
                c, h, w = layer.out_features, 1, 1
            largest = max(largest, c * h * w)
        return largest

    def _run(
        self, h: Tensor, snn: Spiking | None, t: int, state: dict, spikes: dict | None, upto: int | None = None,
        rates: Spiking | None = None, rows: Rows | None = None,
    ) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.Linear) and h.dim() > 2:
                h = h.flatten(1)
            h = layer(h)
            if str(i) in self.norms:
                h = self.norms[str(i)](h)
            if i == last or i == upto:
                return h
            pool = isinstance(layer, POOLS)
            if snn is None:
                if not pool:
                    h = F.relu(h)
                    if self.dropout and self.training:
                        h = dropout(h, self.dropout, rows)
                if rates is not None and (not pool or rates.spike_after_pool):
                    h = h / self.thresholds[i]
                continue
            if pool and not snn.spike_after_pool:
                continue
            current = h.view(t, -1, *h.shape[1:])
            out, state[i] = spike_train(current, self.thresholds[i], state.get(i), snn)
            if spikes is not None:
                spikes[i] = spikes.get(i, 0) + out.detach().float().flatten(2).mean(2).sum()
            if not pool and self.dropout and self.training:
                # one mask per sample, held across all timesteps (DESIGN section 2)
                if ("mask", i) not in state:
                    state[("mask", i)] = bernoulli(out[0], 1 - self.dropout, rows) / (1 - self.dropout)
                out = out * state[("mask", i)]
            h = out.flatten(0, 1)
        raise AssertionError("unreachable: the output layer returns")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def batchnorm(self) -> bool:
        return len(self.norms) > 0

    def config(self) -> dict:
        """What rebuilds this network's shape (saved with its weights)."""
        return {
            "spec": self.spec.text, "in_channels": self.in_channels, "width": self.width,
            "dropout": self.dropout, "bias": self.bias, "batchnorm": self.batchnorm,
            "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
        }

    @classmethod
    def from_config(cls, config: dict) -> "Network":
        return cls(
            config["spec"], config["in_channels"], tuple(config["mean"]), tuple(config["std"]),
            width=config["width"], dropout=config["dropout"], bias=config["bias"],
            batchnorm=config["batchnorm"],
        )


@torch.no_grad()
def fold_batchnorm(net: Network) -> Network:
    """The same function without batch-norm: each BN (eval statistics) is folded into the conv before it,
    w' = w * g / s, b' = beta - g * mu / s with s = sqrt(var + eps). The result has biases."""
    if not net.batchnorm:
        return net
    config = {**net.config(), "bias": True, "batchnorm": False}
    folded = Network.from_config(config).to(net.mean.device)
    for i, (src, dst) in enumerate(zip(net.layers, folded.layers)):
        if not isinstance(src, (nn.Conv2d, nn.Linear)):
            continue
        weight = src.weight.float()
        bias = src.bias.float() if src.bias is not None else weight.new_zeros(weight.shape[0])
        if str(i) in net.norms:
            bn = net.norms[str(i)]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
            bias = bn.bias + (bias - bn.running_mean) * scale
        dst.weight.copy_(weight)
        dst.bias.copy_(bias)
    return folded.train(net.training)


def macs(net: Network) -> int:
    """Multiply-accumulates of one ANN forward pass (for throughput reports)."""
    total, (_, h, w) = 0, net.input_shape
    for layer in net.layers:
        if isinstance(layer, nn.Conv2d):
            total += math.prod(layer.weight.shape) * h * w
        elif isinstance(layer, POOLS):
            h, w = h // layer.kernel_size, w // layer.kernel_size
        else:
            total += layer.weight.numel()
    return total
