"""The network a spec describes (paper section IV-B, DESIGN section 2; the notation is parsed by
:mod:`spikeadv.config.spec`).

One :class:`Network` is one weight set. Per-channel normalisation is its fixed first layer, so whatever
enters it (pixels, rates or spikes) is in [0, 1]. Every conv and hidden fc layer is followed by an
activation *site*; average pooling is followed by one too (a no-op ReLU in the ANN, a spiking neuron in
SNNs by default, as in the authors' code). The ANN runs ReLU at every site; the spiking modes of the
same weights replace what happens at a site and fold time into the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from .. import runtime
from ..config.spec import Spec, parse_spec
from ..config.spiking import Spiking
from ..errors import SpikeAdvError
from ..runtime.distributed import Rows, bernoulli, dropout
from ..runtime.draws import Draws
from .neurons import adaptive_active, encode, spike_train

POOLS = (nn.AvgPool2d, nn.MaxPool2d)
SAVED_BYTES = 16  # per activation element and frame, what BPTT keeps: the layer input, u_t, spikes (fp32)


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
        generator: torch.Generator | Draws | None = None,
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
        spikes are drawn for the global batch (:mod:`spikeadv.runtime.distributed`).
        """
        if snn is None:
            return self._run(self.normalise(x), None, 1, {}, None, rows=rows)
        if snn.neuron == "rate":
            return self._run(self.normalise(self.rates(x, snn, generator, rows)), None, 1, {}, None, rows=rows)
        return sum(out.sum(0) for out in self.timesteps(x, snn, generator, spikes, rows=rows)) / snn.T

    def rates(self, x: Tensor, snn: Spiking, generator: torch.Generator | Draws | None = None,
              rows: Rows | None = None) -> Tensor:
        """The rate image the ``rate`` neuron's ANN sees: the mean of the T encoded frames of x (Poisson:
        per pixel mean x and variance x (1 - x) / T; the backward pass straight-through), in chunks of
        time so that memory does not grow with T."""
        step = max(1, runtime.fold(x.device, 4 * self._largest_activation()) // (rows.total if rows else x.shape[0]))
        total = sum(encode(x, min(step, snn.T - t0), snn.encoding, generator, rows).sum(0) for t0 in range(0, snn.T, step))
        return total / snn.T

    def proxy(self, x: Tensor, snn: Spiking) -> Tensor:
        """The rate model of this SNN (the SNNAdv proxy ANN, paper IV-E and Fig. 1): the same weights in
        ANN mode with each spiking site's activation divided by its threshold, i.e. the weights scaled
        by the threshold-scaling factors (SNN-I); thresholds of 1 leave the plain ANN (SNN-II)."""
        return self._run(self.normalise(x), None, 1, {}, None, rates=snn)

    def timesteps(
        self,
        x: Tensor,
        snn: Spiking,
        generator: torch.Generator | Draws | None = None,
        spikes: dict[int, Tensor] | None = None,
        upto: int | None = None,
        rows: Rows | None = None,
    ) -> Iterator[Tensor]:
        """The SNN's output currents ``[t, B, ...]`` chunk by chunk of time (neuron state carried over);
        with ``upto`` the input currents of that layer's activation site instead of the output layer's."""
        state: dict = {}
        fold = runtime.fold(x.device, 4 * self._largest_activation())  # a policy of the device
        step = snn.chunk or max(1, min(snn.T, fold // (rows.total if rows else x.shape[0])))
        if self.training and self.batchnorm:
            # batch-norm in training normalises each call by its own statistics: all T steps in one
            # call, or early and late steps get different normalisations that eval (running
            # statistics) does not reproduce (seen: SNN-II 47.5% instead of 65.2%)
            step = snn.T
        recompute = self._recomputes(x, snn, spikes, rows)
        if adaptive_active():  # an attack-time surrogate's statistics span all T steps of each site, once
            step, recompute = snn.T, False
        if recompute and not snn.chunk:  # a chunk's activations are kept while it is recomputed: under the budget too
            step = min(step, max(1, runtime.saved_budget(x.device) // (SAVED_BYTES * sum(self._sizes()) * x.shape[0])))
        for t0 in range(0, snn.T, step):
            t = min(step, snn.T - t0)
            frames = encode(x, t, snn.encoding, generator, rows).flatten(0, 1)
            if recompute:
                out = self._checkpointed(frames, snn, t, state, upto)
            else:
                out = self._run(self.normalise(frames), snn, t, state, spikes, upto, rows=rows)
            yield out.view(t, x.shape[0], *out.shape[1:])

    def _recomputes(self, x: Tensor, snn: Spiking, spikes: dict | None, rows: Rows | None) -> bool:
        """Whether backpropagation through time keeps only each chunk's inputs and recomputes the chunk
        in the backward pass (gradient checkpointing): when an attack (eval mode, gradients on) would
        otherwise save more than the device's budget (:func:`spikeadv.runtime.saved_budget`) for all T
        steps. Training keeps everything (its batches are small, its speed matters)."""
        if self.training or not torch.is_grad_enabled() or spikes is not None or rows is not None:
            return False
        return SAVED_BYTES * sum(self._sizes()) * snn.T * x.shape[0] > runtime.saved_budget(x.device)

    def _checkpointed(self, frames: Tensor, snn: Spiking, t: int, state: dict, upto: int | None) -> Tensor:
        """One chunk of time as :meth:`_run` computes it, its activations recomputed in the backward pass:
        only its input frames and the neuron state it starts from are kept (the state dict updated)."""
        keys = list(state)
        leaves, spec = tree_flatten([state[k] for k in keys])
        made: dict = {}

        def chunk(frames: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
            st = dict(zip(keys, tree_unflatten(list(leaves), spec)))
            out = self._run(self.normalise(frames), snn, t, st, None, upto)
            made["keys"] = list(st)
            new, made["spec"] = tree_flatten([st[k] for k in made["keys"]])
            return (out, *new)

        out, *new = checkpoint(chunk, frames, *leaves, use_reentrant=False)
        state.clear()
        state.update(zip(made["keys"], tree_unflatten(new, made["spec"])))
        return out

    def _sizes(self) -> list[int]:
        """Elements of each layer's output for one frame (one image at one timestep)."""
        (c, h, w), sizes = self.input_shape, []
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                c = layer.out_channels
            elif isinstance(layer, POOLS):
                h, w = h // layer.kernel_size, w // layer.kernel_size
            else:
                c, h, w = layer.out_features, 1, 1
            sizes.append(c * h * w)
        return sizes

    def _largest_activation(self) -> int:
        """Elements of the largest input or activation of one frame."""
        return max(math.prod(self.input_shape), *self._sizes())

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
