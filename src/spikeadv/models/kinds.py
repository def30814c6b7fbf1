"""The study's model kinds built from a preset (DESIGN sections 2 and 8.5): one network for every kind,
trained as the ANN (paper IV-B), as SNN-II (paper III-B) or as the noise-matched control (the ANN on
SNN-II's Poisson rate image), and the accuracy-matched ANN chosen among the ANN's snapshots.

Every kind is the preset's one architecture (:func:`network`): only training (dropout, batch-norm,
which is folded into the saved weights) and how the weights run differ."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from ..config.datasets import DatasetInfo
from ..config.grid import MATCH_WITHIN
from ..config.presets import Preset, as_dict
from ..data import Splits
from ..errors import SpikeAdvError
from ..runtime import distributed
from . import train as loop
from .network import Network

TRAINED = ("ann", "snn2", "ann-rate")  # the kinds trained from scratch (SNN-I is converted, the matched ANN chosen)


def network(preset: Preset, kind: str, info: DatasetInfo) -> Network:
    """The untrained network of ``kind``: the preset's spec at its width for every kind; SNN-II trains
    with its own dropout and batch-norm (both gone from the deployed, folded network)."""
    if kind == "snn2":
        dropout, batchnorm = preset.snn2.dropout, preset.snn2.batchnorm
    else:
        dropout, batchnorm = preset.dropout, preset.batchnorm
    return Network(preset.spec, info.shape[0], info.mean, info.std, width=preset.width, dropout=dropout,
                   batchnorm=batchnorm)


def record(kind: str, preset: Preset, data: Splits, recipe: dict | None = None) -> dict:
    """The metadata every model checkpoint starts from: its kind, the whole preset, the data digests
    (training part, validation part, test images) and (in a study) the recipe its file name is the
    digest of."""
    return {"kind": kind, "preset": as_dict(preset),
            "data": {"dataset": preset.dataset, "train": data.train.digest, "validation": data.validation.digest,
                     "test": data.test.digest},
            **({"recipe": recipe} if recipe is not None else {})}


def fit(
    kind: str, preset: Preset, seed: int, out: Path, data: Splits, *,
    resume: bool = False, log: Callable[[str], None] = print, recipe: dict | None = None,
    device: torch.device | str | None = None,
) -> tuple[Network, dict]:
    """Train one model of the study into ``out``: ``ann`` (paper IV-B, with the preset's snapshots),
    ``snn2`` (LIF from scratch, paper III-B) or ``ann-rate`` (the ANN's training on the Poisson rate
    image at SNN-II's T: the noise-matched control), validated on ``data.validation`` (under torchrun:
    in data parallel, rank 0 logging), on ``device`` (None: this process's)."""
    if kind not in TRAINED:
        raise SpikeAdvError(f"only {', '.join(TRAINED)} are trained; {kind!r} is not")
    log = distributed.on_main(log)
    cfg = {"ann": preset.ann, "snn2": preset.snn2.train, "ann-rate": dataclasses.replace(preset.ann, snapshots=0)}[kind]
    snn = preset.spiking(kind)
    net = network(preset, kind, data.train.info)
    runs = "" if snn is None else (f", on the {snn.encoding} rate image of T={snn.T} frames" if snn.neuron == "rate"
                                   else f", LIF T={snn.T} leak {snn.leak} {snn.surrogate} surrogate")
    log(f"training {kind}: {preset.spec} width {preset.width} ({net.parameter_count():,} weights){runs}, "
        f"{cfg.epochs} epochs, seed {seed}, {len(data.train)} images ({len(data.validation)} held out) -> {out}")
    return loop.train(net, data.train, data.validation, cfg, seed=seed, out=out,
                      meta=record(kind, preset, data, recipe), resume=resume, snn=snn, device=device, log=log)


def validation_accuracy(meta: dict) -> float:
    """A trained or converted model's validation accuracy as its checkpoint records it (the last one)."""
    found = [m["val_acc"] for m in meta.get("metrics", []) if "val_acc" in m]
    if "val_acc" in meta:
        found.append(meta["val_acc"])
    if not found:
        raise SpikeAdvError(f"the {meta.get('kind', '')} checkpoint records no validation accuracy; rebuild it")
    return found[-1]


def match(snapshots: list[dict], accuracy: float, within: float = MATCH_WITHIN) -> dict:
    """The accuracy-matched ANN (DESIGN section 8.5), by a rule fixed before any attack and blind to the
    test images: of the ANN's snapshots, the one whose validation accuracy is closest to ``accuracy``
    (an SNN's validation accuracy); a tie goes to the later snapshot (more trained). Returns it with
    ``gap`` (its accuracy minus the SNN's, pp) and ``matched`` (``|gap| <= within``)."""
    if not snapshots:
        raise SpikeAdvError("the ANN checkpoint kept no snapshots: train it with ann.snapshots >= 2")
    best = min(snapshots, key=lambda s: (abs(s["val_acc"] - accuracy), -s["step"]))
    gap = round(best["val_acc"] - accuracy, 3)
    return {**best, "to": round(accuracy, 3), "gap": gap, "matched": abs(gap) <= within}
