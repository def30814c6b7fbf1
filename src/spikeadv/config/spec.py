"""The paper's network notation (paper section IV-B, DESIGN section 2), parsed without torch.

A spec string such as ``32x32-64c5-64c5-2s-128c5-128c5-2s-256c5-256c5-256c5-2s-1024fc-10o`` reads:
input size, then ``Nc k`` (conv, N maps, k x k kernel, stride 1, same padding), ``2s`` (2x2 average
pooling; ``2m`` max pooling, which ANNs and SNN-II can use but conversion cannot), ``Nfc`` (fully
connected), ``No`` (output layer with N classes). :class:`spikeadv.models.network.Network` builds it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import SpikeAdvError

SPECS: dict[str, str] = {
    # the paper's VGG-9 (section IV-B, 5x5 kernels)
    "vgg9": "32x32-64c5-64c5-2s-128c5-128c5-2s-256c5-256c5-256c5-2s-1024fc-10o",
    # the authors' public VGG9 code uses 3x3 kernels
    "vgg9-k3": "32x32-64c3-64c3-2s-128c3-128c3-2s-256c3-256c3-256c3-2s-1024fc-10o",
}

_TOKEN = re.compile(r"^(?:(?P<conv>\d+)c(?P<k>\d+)|(?P<pool>\d+)s|(?P<maxpool>\d+)m|(?P<fc>\d+)fc|(?P<out>\d+)o)$")


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


def parameters(spec: Spec, channels: int, width: float) -> int:
    """The number of weights of a network built from ``spec`` on ``channels`` input maps with hidden
    widths scaled by ``width`` (as :class:`spikeadv.models.network.Network` builds it, biases aside)."""
    c, h, w, total = channels, spec.height, spec.width, 0
    for layer in spec.layers:
        if layer.kind == "conv":
            out = max(1, round(layer.size * width))
            total, c = total + c * out * layer.k * layer.k, out
        elif layer.kind in ("pool", "maxpool"):
            h, w = h // layer.size, w // layer.size
        else:
            out = layer.size if layer.kind == "out" else max(1, round(layer.size * width))
            total, c, h, w = total + c * h * w * out, out, 1, 1
    return total


def check_size(spec: Spec, channels: int, widths: dict[str, float]) -> None:
    """Refuse a width (by its preset key) whose training cannot fit this machine's memory: weights,
    gradients and two optimizer moments in fp32, 16 bytes per weight, before any activation."""
    memory = physical_memory()
    for key, width in widths.items():
        weights = parameters(spec, channels, width)
        if memory and weights * 16 > memory:
            raise SpikeAdvError(f"{key}={width:g} makes {weights:.3g} weights: training needs at least "
                                f"{weights * 16 / 2**30:.3g} GiB, and this machine has {memory / 2**30:.3g} GiB; "
                                "pass a smaller width")


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
