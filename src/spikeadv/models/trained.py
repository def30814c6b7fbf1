"""A trained model as spikeadv runs it: one weight set (:class:`.network.Network`) with how it runs
(:class:`spikeadv.config.spiking.Spiking`, None for an ANN), read from a checkpoint
(:mod:`spikeadv.records.checkpoint`) and identified by the digest of what determines its behaviour."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import runtime
from ..config.spiking import Spiking
from ..errors import SpikeAdvError
from ..records import checkpoint
from .network import Network


@dataclass
class Trained:
    """One trained model, loaded, with how it runs (``snn`` None for the ANN). ``kind`` is ann, snn1 or
    snn2; ``instance`` its index in a study (0 outside one); ``label`` a name given by the user."""

    kind: str
    instance: int
    net: Network
    snn: Spiking | None
    path: Path
    sha256: str
    meta: dict
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"{self.kind}{self.instance}"

    @classmethod
    def load(cls, path: str | Path, T: int | None = None, device: torch.device | str | None = None,
             kind: str | None = None, instance: int = 0) -> Trained:
        """A checkpoint that spikeadv wrote (``train``, ``convert`` or a study), on ``device``; ``T``
        overrides an SNN's time steps; ``device`` None: this process's (:func:`spikeadv.runtime.device`)."""
        path = Path(path)
        net, meta = load_network(path, device)
        return cls(meta.get("kind", "") if kind is None else kind, instance, net, spiking(meta, T=T), path,
                   model_digest(net, meta), meta)


def model_state(net: Network) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in net.state_dict().items()}


def load_network(path: Path, device: torch.device | str | None = None) -> tuple[Network, dict]:
    """Rebuild a network from a checkpoint (weights + the shape recorded in its metadata) on ``device``."""
    tensors, meta = checkpoint.load(path)
    if "network" not in meta:
        raise SpikeAdvError(f"{path} holds no network (it is a {meta.get('kind', 'different')} artifact)")
    net = Network.from_config(meta["network"])
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise SpikeAdvError(f"{path}: {bad} value(s) of {name} are not finite (NaN or inf): a diverged training "
                                "or an edited file; rebuild it")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpikeAdvError(
            f"{path}: weights do not match the network its metadata describes "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return net.to(runtime.device(device)).eval(), meta


def interrupted(path: Path, meta: dict) -> str | None:
    """What to say when a checkpoint is of an unfinished training (``complete`` false), else None."""
    if meta.get("complete", True):
        return None
    done, planned = meta.get("epochs_done"), (meta.get("train") or {}).get("epochs")
    return (f"{path} is an interrupted training ({done} of {planned} epochs); finish it with "
            "`spikeadv train ... --resume`")


def spiking(meta: dict, **overrides) -> Spiking | None:
    """How a checkpoint's network runs: None for an ANN, else its saved SNN settings (T overridable)."""
    if not meta.get("spiking"):
        return None
    return Spiking(**{**meta["spiking"], **{k: v for k, v in overrides.items() if v is not None}})


def model_digest(net: Network, meta: dict) -> str:
    """What determines a model's behaviour: its weights, network and how it runs as an SNN; not its
    timing or command-line metadata, so a retrained identical model keeps its digest."""
    how = json.dumps({k: meta.get(k) for k in ("network", "spiking")}, sort_keys=True)
    return checkpoint.tensors_digest({k: v.detach().cpu() for k, v in net.state_dict().items()}, how)
