"""SNN-I: ANN-to-SNN conversion by layer-wise threshold balancing (paper III-A and IV-C).

The converted SNN is the ANN's weight set run with IF neurons (no leak, reset by subtraction by
default); only the thresholds are new. Two ways to set them:

- ``spike`` (Sengupta et al. 2019, the paper's method): with the layers below already balanced, run
  the SNN on a batch of training images for T steps and set layer l's threshold to the largest input
  current its neurons receive at any step; proceed layer by layer.
- ``activation`` (Diehl et al. 2015 / Rueckauer et al. 2017 weight normalisation, cheaper): lambda_l =
  the largest (or the p-th percentile) ReLU activation of the ANN at layer l on the batch, and
  threshold_l = lambda_l / lambda_{l-1} (lambda_0 = 1: the input rates are pixels in [0, 1]).

A bias adds the same current at every step, so with earlier layers scaled by their thresholds it must be
scaled too: layer l's bias is divided by the product of the thresholds below it. The SNNAdv proxy ANN
of SNN-I (paper IV-E) is then the same weights with each layer divided by its own threshold.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import runtime
from ..config.presets import Preset, as_dict
from ..config.spiking import Spiking
from ..data import Splits, to_float
from ..errors import SpikeAdvError
from ..records import checkpoint, file_digest, provenance
from ..runtime.draws import Draws
from .network import Network
from .neurons import backend_on
from .trained import load_network, model_state

METHODS = ("spike", "activation")


def _scale_biases(net: Network, i: int, below: Tensor) -> None:
    layer = net.layers[i]
    if getattr(layer, "bias", None) is not None:
        layer.bias.div_(below)


@torch.no_grad()
def convert(
    ann: Network,
    images: Tensor,
    snn: Spiking,
    *,
    method: str = "spike",
    pool_threshold: float = 0.75,
    percentile: float = 100.0,
    seed: int = 0,
) -> Network:
    """A threshold-balanced copy of ``ann`` (the ANN is untouched). ``images``: the balancing batch
    (pixels in [0, 1]); ``snn``: the SNN it will run as (IF neurons; T is the balancing time window).
    ``pool_threshold``: threshold of the neurons after average pooling when ``snn.spike_after_pool``
    (the authors' code uses 0.75). ``percentile`` < 100 uses that percentile instead of the maximum
    (``activation`` only; robust to outliers)."""
    if snn.neuron != "if":
        raise SpikeAdvError("conversion (SNN-I) uses IF neurons: set neuron=if")
    if method not in METHODS:
        raise SpikeAdvError(f"unknown balancing method {method!r} (known: {', '.join(METHODS)})")
    if any(isinstance(m, nn.MaxPool2d) for m in ann.layers):
        raise SpikeAdvError("conversion needs average pooling: max pooling has no IF-neuron equivalent "
                            "(max of spike trains over-counts rates); train the ANN with Ns pooling")
    if ann.batchnorm:
        raise SpikeAdvError("fold batch-norm into the weights first (saved ANN checkpoints already are)")
    if pool_threshold <= 0 or not 0 < percentile <= 100:
        raise SpikeAdvError("need pool_threshold > 0 and percentile in (0, 100]")
    net = Network.from_config(ann.config()).to(images.device)
    net.load_state_dict(ann.state_dict())
    net.eval()
    net.thresholds.fill_(1.0)
    if method == "activation":
        activations = _relu_maxima(net, images, percentile)
    below = torch.tensor(1.0)  # product of the thresholds of earlier layers
    sites = tqdm(list(enumerate(net.layers[:-1])), desc=f"balancing ({method})", unit="layer", leave=False,
                 dynamic_ncols=True)
    for i, layer in sites:
        pool = isinstance(layer, nn.AvgPool2d)
        _scale_biases(net, i, below)
        if pool:  # a neuron after pooling (or none, threshold unused): rates scale by 1 / threshold
            threshold = torch.tensor(pool_threshold if snn.spike_after_pool else 1.0)
        elif method == "spike":
            draws = Draws.of(seed, torch.arange(len(images), device=images.device), 1)  # the same spikes for every layer
            threshold = max(c.max() for c in net.timesteps(images, snn, draws, upto=i)).float().cpu()
        else:
            threshold = activations[i] / below
        if not threshold > 0:
            raise SpikeAdvError(f"layer {i} never receives positive input on the balancing batch; "
                                "use more or other images")
        net.thresholds[i] = threshold
        below = below * threshold  # spike rates after this site are activations / below
    _scale_biases(net, len(net.layers) - 1, below)
    return net


@torch.no_grad()
def _relu_maxima(net: Network, images: Tensor, percentile: float) -> dict[int, Tensor]:
    """lambda_l per activation site: the max (or percentile) of the ANN's activation there."""
    out = {}
    for i, layer in enumerate(net.layers[:-1]):
        if isinstance(layer, nn.AvgPool2d):
            continue
        h = net._run(net.normalise(images), None, 1, {}, None, upto=i).clamp(min=0).flatten().float()
        k = max(1, round(percentile / 100 * h.numel()))  # the k-th smallest value, taken as the (n-k+1)-th largest:
        out[i] = h.topk(h.numel() - k + 1).values[-1].cpu()  # kthvalue's, but CUDA's kthvalue runs in one block
    return out


def proxy_scales(net: Network) -> list[float]:
    """The weight scale of each layer in the SNNAdv proxy ANN of a converted SNN (paper IV-E, Fig. 1):
    layer l's weights divided by its threshold (the output layer keeps scale 1)."""
    return [1.0 / float(t) for t in net.thresholds] + [1.0]


def convert_file(ann_path: Path, preset: Preset, data: Splits, seed: int, out: Path,
                 recipe: dict | None = None, device: torch.device | str | None = None) -> Network:
    """SNN-I from a saved ANN as the preset says (balancing batch drawn with ``seed`` from the training
    part, balanced on ``device``), written to ``out`` with its thresholds, proxy scales, balancing
    images, validation accuracy (``val_acc``, one encoder draw per image) and the parent's SHA-256."""
    from .kinds import record
    from .train import accuracy

    c = preset.snn1
    start = time.perf_counter()
    device = runtime.device(device)
    ann, parent = load_network(ann_path, device)
    if parent.get("kind") != "ann":
        raise SpikeAdvError(f"{ann_path} is a {parent.get('kind')} checkpoint; convert needs an ANN")
    if parent["data"]["train"] != data.train.digest:
        raise SpikeAdvError(f"{ann_path} was trained on other data than the preset's {preset.dataset} training part "
                            f"(its validation split differs, or its dataset)")
    snn = preset.spiking("snn1")
    held = data.train.images.device
    idx = torch.randperm(len(data.train), generator=runtime.generator(seed, held), device=held)[:c.images]
    net = convert(ann, to_float(data.train.images[idx].to(device)), snn, method=c.method,
                  pool_threshold=c.pool_threshold, percentile=c.percentile, seed=seed)
    val_acc = accuracy(net, data.validation, snn=snn, seed=seed, device=device)
    meta = {
        **record("snn1", preset, data, recipe),
        "format": checkpoint.FORMAT, "network": net.config(), "spiking": as_dict(snn), "convert": as_dict(c),
        "parent": {"path": str(ann_path), "sha256": file_digest(ann_path), "seed": parent["seed"]},
        "seed": seed, "balancing_images": idx.tolist(), "thresholds": net.thresholds.tolist(),
        "proxy_scales": proxy_scales(net), "val_acc": round(val_acc, 3), "seconds": round(time.perf_counter() - start, 2),
        "versions": provenance.versions(), "command": provenance.command_line(), "device": str(device),
        "neurons": backend_on(device),
    }
    checkpoint.save(out, model_state(net), meta)
    return net
