"""The parts of a preset (DESIGN section 3): how a network is trained, how SNN-I is converted and SNN-II
trained, and the study's attack grid. Frozen records, validated on construction, without torch."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from ..errors import SpikeAdvError
from .grid import SNN_GRADIENTS, check
from .spiking import Spiking


def _finite(record: typing.Any) -> None:
    """Every number of a record finite (a NaN passes every ``<``/``>`` check and poisons training)."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise SpikeAdvError(f"{f.name} must be a finite number, got {v}")


@dataclass(frozen=True)
class TrainConfig:
    """How one network is trained. ``schedule``: ``multistep`` (lr x gamma at each milestone epoch) or
    ``onecycle`` (linear warm-up over ``warmup`` of all steps, then linear decay to zero). ``augment``:
    random crops, and horizontal flips where ``flip`` (default: where the dataset allows them). Validation
    accuracy every ``eval_every`` epochs; ``snapshots``: that many weight sets kept along training, evenly
    spaced in steps (the last one the final weights), each with its validation accuracy: the candidates
    of the accuracy-matched ANN (DESIGN section 8.5)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    flip: bool | None = None  # None: the dataset's convention (config.datasets.DatasetInfo.flip)
    bf16: bool = False
    channels_last: bool = False
    eval_every: int = 1
    snapshots: int = 0


    def __post_init__(self) -> None:
        _finite(self)
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.snapshots < 0:
            raise SpikeAdvError("epochs, batch_size and eval_every must be >= 1, snapshots >= 0")
        if self.gamma <= 0 or any(m < 1 for m in self.milestones):
            raise SpikeAdvError("need gamma > 0 and milestones (epoch numbers) >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise SpikeAdvError("need lr > 0, weight_decay >= 0 and momentum in [0, 1)")
        if self.optimizer not in ("sgd", "adamw"):
            raise SpikeAdvError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("multistep", "onecycle"):
            raise SpikeAdvError(f"schedule must be multistep or onecycle, got {self.schedule!r}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise SpikeAdvError("warmup and label_smoothing must be in [0, 1)")


@dataclass(frozen=True)
class ConvertConfig:
    """SNN-I (paper III-A, IV-C): threshold balancing on ``images`` training images over ``T`` steps,
    then evaluation at ``T`` (paper: 2000) unless a command says otherwise."""

    T: int
    method: str = "spike"
    images: int = 256
    pool_threshold: float = 0.75
    reset: str = "subtract"  # or zero, or signed (spikes taken back: config.spiking.Spiking)
    percentile: float = 100.0
    chunk: int = 0
    v_init: float = 0.0
    encoding: str = "poisson"

    def __post_init__(self) -> None:
        _finite(self)
        self.spiking(True)  # validates T, reset, chunk, v_init, encoding
        if self.method not in ("spike", "activation"):
            raise SpikeAdvError(f"snn1.method must be spike or activation, got {self.method!r}")
        if self.images < 1 or self.pool_threshold <= 0 or not 0 < self.percentile <= 100:
            raise SpikeAdvError("snn1 needs images >= 1, pool_threshold > 0 and percentile in (0, 100]")

    def spiking(self, spike_after_pool: bool) -> Spiking:
        """IF neurons, as SNN-I runs (``spike_after_pool``: the preset's neuron placement)."""
        return Spiking(neuron="if", T=self.T, reset=self.reset, spike_after_pool=spike_after_pool,
                       chunk=self.chunk, v_init=self.v_init, encoding=self.encoding)


@dataclass(frozen=True)
class SNNConfig:
    """SNN-II (paper III-B, IV-C): LIF neurons trained from scratch with BPTT and a surrogate."""

    T: int
    train: TrainConfig
    leak: float = 0.99
    surrogate: str = "lee"
    alpha: float = 1.0
    encoding: str = "poisson"
    batchnorm: bool = False  # training-time only: folded into the saved weights
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _finite(self)
        self.spiking(True)  # validates T, leak, surrogate, alpha, encoding
        if not 0 <= self.dropout < 1:
            raise SpikeAdvError("snn2 needs dropout in [0, 1)")

    def spiking(self, spike_after_pool: bool) -> Spiking:
        """LIF neurons, as SNN-II trains and runs (``spike_after_pool``: the preset's neuron placement)."""
        return Spiking(neuron="lif", T=self.T, leak=self.leak, surrogate=self.surrogate, alpha=self.alpha,
                       encoding=self.encoding, spike_after_pool=spike_after_pool)


@dataclass(frozen=True)
class StudyConfig:
    """The attack grid (paper IV-D..F, Table III; DESIGN section 2 "Scenarios").

    ``images``: the first N test images attacked; ``attacks``: the rows of Fig. 2 (any of fgsm, rfgsm,
    ifgsm, tifgsm, pgd), the iterative ones with ``steps`` steps; ``eps`` (1/255 units) of Figs. 2-3; ``fig4_eps`` and
    ``fig4_steps`` the I-FGSM sweep of Fig. 4 on the SNN-II target; ``gradients``: the source gradients
    for SNN sources, the first being the paper's (``snnadv``); ``snnadv-clean``, its eps-bounded
    variant, is crafted for the whole grid beside it and feeds the report's verdicts; every further one
    (``bptt``, ``bptr``, ``hart``, or the attack-time surrogates ``assg``, ``pdsg``, ``mdse``) is crafted
    for FGSM and 2-step I-FGSM at ``extra_eps``; ``eot``: encoder draws averaged per gradient;
    ``draws``: K, the encoder draws on which a Poisson-coded SNN's prediction is judged (its expected
    correctness over them, the same draws for every input of an image; ``vote``: their majority instead,
    DESIGN section 8.4); ``snn1_T``: SNN-I time steps for crafting
    and evaluation (None: the conversion's T); ``target``: ``random`` (paper) or ``least-likely``;
    ``controls``: the controls of DESIGN section 8.5 as targets beside the three kinds (an ANN matched
    to each SNN's validation accuracy, an ANN on SNN-II's Poisson rate image)."""

    images: int = 500
    attacks: tuple[str, ...] = ("fgsm", "rfgsm", "ifgsm", "tifgsm")
    steps: int = 2
    eps: tuple[int, ...] = (8, 16, 32)
    fig4_eps: tuple[int, ...] = (8, 16, 32, 64)
    fig4_steps: tuple[int, ...] = (2, 5, 7)
    gradients: tuple[str, ...] = ("snnadv", "snnadv-clean", "bptt")
    extra_eps: tuple[int, ...] = (8, 16)
    eot: int = 1
    draws: int = 32
    vote: bool = False
    snn1_T: int | None = None
    target: str = "random"
    batch_size: int = 250
    bf16: bool = False
    seed: int = 0
    controls: bool = True

    def __post_init__(self) -> None:
        _finite(self)
        for attack in self.attacks:
            check(attack, 8, self.steps)
        for eps in (*self.eps, *self.fig4_eps, *self.extra_eps):
            check("fgsm", eps, 1)
        for steps in self.fig4_steps:
            check("ifgsm", 8, steps)
        if not self.attacks or not self.eps:
            raise SpikeAdvError("study.attacks and study.eps must name at least one attack and one eps")
        if self.images < 1 or self.eot < 1 or self.batch_size < 1 or self.seed < 0:
            raise SpikeAdvError("study needs images, eot and batch_size >= 1 and seed >= 0")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or not 1 <= self.draws <= 255:
            raise SpikeAdvError(f"study.draws (K encoder draws per judged input) must be an integer in 1..255, "
                                f"got {self.draws!r}")
        if not self.gradients or self.gradients[0] != "snnadv":
            raise SpikeAdvError("study.gradients must start with snnadv (the paper's SNN source)")
        for g in self.gradients:
            if g not in SNN_GRADIENTS:
                raise SpikeAdvError(f"unknown SNN gradient source {g!r} (known: {', '.join(SNN_GRADIENTS)})")
        if self.target not in ("random", "least-likely"):
            raise SpikeAdvError(f"study.target must be random or least-likely, got {self.target!r}")
        if self.snn1_T is not None and self.snn1_T < 1:
            raise SpikeAdvError(f"study.snn1_T (timesteps) must be >= 1, got {self.snn1_T}")


@dataclass(frozen=True)
class SweepConfig:
    """Robustness against T and encoding (``spikeadv sweep``, DESIGN section 8.5): SNN-II and the
    noise-matched ANN trained at each of ``T``; SNN-I converted from the ANN and run on Poisson input
    (reset by subtraction, and signed) and on direct input at each of ``snn1_T``; each attacked whitebox
    by PGD with ``steps`` steps through its exact or BPTT gradient at each of ``eps`` (1/255 units) on
    the first ``images`` test images, judged like the study (K draws for a Poisson-coded model)."""

    T: tuple[int, ...] = (4, 6, 8, 12)
    snn1_T: tuple[int, ...] = (16, 32, 64)
    eps: tuple[int, ...] = (2, 8)
    steps: int = 10
    images: int = 500

    def __post_init__(self) -> None:
        for name in ("T", "snn1_T", "eps"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise SpikeAdvError(f"sweep.{name} must list at least one integer, got {list(values)}")
        for T in (*self.T, *self.snn1_T):
            Spiking(T=T)  # 1 <= T <= MAX_T, with its message
        for eps in self.eps:
            check("pgd", eps, self.steps)
        if self.images < 1:
            raise SpikeAdvError(f"sweep.images must be >= 1, got {self.images}")
