"""Presets as data (DESIGN section 3): every hyperparameter of a run in one frozen record.

``paper`` is the paper as written (section IV-B); ``fast`` the same study for one GPU in about an hour;
``gpu`` the same models, shorter, for one GPU in minutes;
``cpu`` the default, the whole study on a 2-core CPU; ``smoke`` tiny synthetic data for the tests.
Any field can be overridden from the command line: ``--set ann.epochs=3 --set width=0.25``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

from ..errors import SpikeAdvError
from .datasets import DATASETS, TRAIN_IMAGES
from .grid import MATCHED, TARGETS
from .parts import ConvertConfig, SNNConfig, StudyConfig, SweepConfig, TrainConfig, _finite
from .spec import check_size, parse_spec
from .spiking import Spiking


@dataclass(frozen=True)
class Preset:
    """One run of the study. Every kind (ANN, SNN-I, SNN-II and the controls) is the one network ``spec``
    at ``width``, with a spiking neuron after each average pooling where ``spike_after_pool`` (else
    averaged spikes pass on), so that what differs between kinds is how they compute, not their shape
    (DESIGN section 8.5). ``validation``: the last N training images, held out for model selection
    (validation accuracy, the accuracy-matched ANN), never trained on; ``test_subset``: evaluate on the
    first N test images (None = all)."""

    name: str
    dataset: str
    spec: str
    width: float
    dropout: float
    batchnorm: bool
    ann: TrainConfig
    snn1: ConvertConfig
    snn2: SNNConfig
    study: StudyConfig = StudyConfig()
    sweep: SweepConfig = SweepConfig()
    validation: int = 5000
    spike_after_pool: bool = True
    test_subset: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    notes: str = ""

    def __post_init__(self) -> None:
        _finite(self)
        if self.width <= 0 or not 0 <= self.dropout < 1:
            raise SpikeAdvError(f"need width > 0 and dropout in [0, 1), got {self.width} and {self.dropout}")
        if self.test_subset is not None and self.test_subset < 1:
            raise SpikeAdvError(f"test_subset must be >= 1 or none, got {self.test_subset}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise SpikeAdvError(f"seeds must be distinct numbers >= 0, e.g. 0,1; got {list(self.seeds)}")
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) or self.validation < 1:
            raise SpikeAdvError(f"validation (training images held out for model selection) must be an integer "
                                f">= 1, got {self.validation!r}")
        if self.study.controls and self.ann.snapshots < 2:
            raise SpikeAdvError(f"the accuracy-matched ANN (study.controls) is chosen among the ANN's snapshots: "
                                f"need ann.snapshots >= 2, got {self.ann.snapshots}; or pass --set study.controls=false")

    def spiking(self, kind: str) -> Spiking | None:
        """How ``kind`` runs the preset's network: None for an ANN, IF neurons for SNN-I, LIF for SNN-II,
        the ANN on the mean of SNN-II's T input frames for the noise-matched control (``ann-rate``)."""
        if kind == "snn1":
            return self.snn1.spiking(self.spike_after_pool)
        if kind == "snn2":
            return self.snn2.spiking(self.spike_after_pool)
        if kind == "ann-rate":
            return Spiking(neuron="rate", T=self.snn2.T, encoding=self.snn2.encoding)
        if kind in ("ann", *MATCHED):
            return None
        raise SpikeAdvError(f"unknown model kind {kind!r} (known: {', '.join(TARGETS)})")

    def check_shapes(self) -> None:
        """The spec fits the dataset (checked once all overrides are applied, before any training)."""
        if self.dataset not in DATASETS:
            raise SpikeAdvError(f"unknown dataset {self.dataset!r} (known: {', '.join(DATASETS)})")
        spec, info = parse_spec(self.spec), DATASETS[self.dataset]
        if (spec.height, spec.width, spec.classes) != (*info.shape[1:], info.classes):
            raise SpikeAdvError(
                f"spec {self.spec} takes {spec.height}x{spec.width} images in {spec.classes} classes, but "
                f"{self.dataset} has {info.shape[1]}x{info.shape[2]} images in {info.classes} classes; pass a spec "
                f"for it, e.g. --set spec={info.shape[1]}x{info.shape[2]}-{spec.text.split('-', 1)[1]}")
        check_size(spec, info.shape[0], {"width": self.width})
        train = TRAIN_IMAGES[self.dataset]
        if self.validation >= train:
            raise SpikeAdvError(f"validation = {self.validation} holds out every one of the {train} training images "
                                f"of {self.dataset}; pass fewer, e.g. --set validation={max(1, train // 10)}")


_FAST = Preset(
    name="fast",
    dataset="cifar10",
    spec="vgg9",
    width=1.0,
    dropout=0.2,
    batchnorm=True,
    ann=TrainConfig(
        epochs=40, batch_size=256, lr=0.2, nesterov=True, schedule="onecycle", warmup=0.15,
        label_smoothing=0.1, bf16=True, channels_last=True, snapshots=20,
    ),
    snn1=ConvertConfig(T=256, images=512),
    snn2=SNNConfig(T=8, leak=0.9, surrogate="fast-sigmoid", alpha=4.0, batchnorm=True, dropout=0.0,
                   train=TrainConfig(epochs=30, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=1e-2,
                                     schedule="onecycle", warmup=0.1, bf16=True, channels_last=True)),
    study=StudyConfig(images=2000, batch_size=500),
    sweep=SweepConfig(T=(4, 8, 16, 32, 70), snn1_T=(16, 64, 256, 1024, 2000), images=1000),
    notes="full-width VGG-9 with a one-cycle schedule and batch-norm folded into the saved weights; 5,000 "
          "training images held out for validation",
)

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        dataset="cifar10",
        spec="vgg9",
        width=1.0,
        dropout=0.2,
        batchnorm=False,
        # Section IV-B: 200 epochs, lr 0.09, / 10 at epochs 81 and 122. Momentum 0.9, weight decay 5e-4
        # and batch 64 are not stated in the paper; they are the common choice for this VGG.
        ann=TrainConfig(epochs=200, batch_size=64, lr=0.09, milestones=(81, 122), snapshots=40),
        snn1=ConvertConfig(T=2000, images=256, chunk=100),
        # Section IV-C: T = 70, 125 epochs, lr reduced at epochs 70 and 100 (by 10, our reading); the
        # initial lr, optimizer and leak are not stated; these follow the authors' spike-BP code.
        snn2=SNNConfig(T=70, train=TrainConfig(epochs=125, batch_size=64, lr=0.0025, optimizer="adamw",
                                               weight_decay=5e-4, milestones=(70, 100))),
        # section V: the whole CIFAR-10 test set
        study=StudyConfig(images=10000, batch_size=100),
        sweep=SweepConfig(T=(8, 16, 32, 70), snn1_T=(64, 256, 1000, 2000), images=2000),
        seeds=(0, 1, 2),  # three trained instances per kind: seed variance in the adaptive evaluation's verdicts
        notes="paper sections IV-B/C as written; momentum, weight decay, batch size and SNN-II lr are our choice; "
              "three instances per kind; 5,000 of the 50,000 training images held out for validation (model "
              "selection, the accuracy-matched ANN), where the paper trains on all",
    ),
    "fast": _FAST,
    # fast's models for one GPU in minutes: SNN-I on the paper's Poisson input at T = 256 (balanced on
    # the 99.9th-percentile activation, membrane starting at half threshold: the best of the H200
    # probe, 81% against the ANN's 92.7%), SNN-II at T = 8 for 12 epochs, 1,000 attacked images
    "gpu": dataclasses.replace(
        _FAST,
        name="gpu",
        ann=dataclasses.replace(_FAST.ann, epochs=30),
        snn1=ConvertConfig(T=256, images=512, method="activation", percentile=99.9, v_init=0.5),
        snn2=dataclasses.replace(_FAST.snn2, train=dataclasses.replace(_FAST.snn2.train, epochs=12)),
        study=StudyConfig(images=1000, batch_size=500, bf16=True),
        seeds=(0, 1, 2),
        notes="full-width VGG-9 (5x5) for one GPU: ANN 30 one-cycle epochs; SNN-I Poisson input, T = 256; "
              "SNN-II LIF, Poisson input, T = 8, 12 epochs; three instances per kind; 1,000 attacked images, "
              "32 encoder draws per judgement",
    ),
    # the same study as fast, sized for a 2-core CPU in about an hour
    "cpu": dataclasses.replace(
        _FAST,
        name="cpu",
        spec="vgg9-k3",
        # one architecture for the three kinds (DESIGN section 8.5): quarter width, what SNN-II affords
        # here (at width 0.25 its neuron loop already outweighs the convolutions); the ANN loses accuracy
        # against half width (83.8%), the price of comparing like with like
        width=0.25,
        dropout=0.1,
        validation=2000,
        spike_after_pool=False,  # averaged spikes pass through pooling: SNN-II 65.2% vs 57.2% with a neuron there
        ann=dataclasses.replace(_FAST.ann, epochs=6, warmup=0.2, label_smoothing=0.2, eval_every=3, snapshots=24),
        # The paper's SNN-I runs 2000 steps, where Poisson rates are all but the analog pixels. At the
        # T this CPU affords, Poisson input costs the converted VGG most of its accuracy (T = 64: 30%
        # vs the ANN's 84%); the analog pixels (direct encoding) at T = 16 with the membrane starting
        # at half threshold (Bu et al. 2022) give 80.6%. Thresholds: 99.9th percentile activation.
        snn1=ConvertConfig(T=16, images=256, method="activation", percentile=99.9, v_init=0.5, encoding="direct"),
        # 6 epochs reach only 48.6%. At width 0.25 the neuron loop outweighs the convolutions, and it runs
        # fastest on contiguous tensors (a training step 0.52 s vs 0.60 s under channels_last)
        snn2=dataclasses.replace(_FAST.snn2, T=6, train=dataclasses.replace(
            _FAST.snn2.train, epochs=8, warmup=0.15, eval_every=4, channels_last=False)),
        test_subset=2000,
        # 500 images under bf16 autocast (fp32 takes 2x), in batches of 125: an SNN-I frame's largest
        # activation then stays under 16 MiB and is reused from the heap; at batch 500 (65 MB) every
        # allocation comes fresh from the kernel and the SNN-I forward pass takes 6.3 s instead of 3.9 s
        study=StudyConfig(images=500, batch_size=125, bf16=True),
        sweep=SweepConfig(),  # the T that fit a CPU: SNN-II at 4-12, SNN-I at 16-64
        notes="quarter-width VGG-9 (3x3) for every kind, averaged spikes through pooling; ANN 6 one-cycle epochs "
              "under bf16 autocast; SNN-I on direct input (a variant: the paper's is Poisson); SNN-II T = 6, "
              "8 epochs; 2,000 training images held out for validation; 500 attacked images",
    ),
    "smoke": Preset(
        name="smoke",
        dataset="synthetic",
        spec="32x32-8c3-2s-16c3-2s-32fc-10o",
        width=1.0,
        dropout=0.0,
        batchnorm=False,
        ann=TrainConfig(epochs=3, batch_size=64, lr=0.05, nesterov=True, schedule="onecycle", warmup=0.2,
                        snapshots=6),
        snn1=ConvertConfig(T=32, images=128, v_init=0.5),
        snn2=SNNConfig(T=6, leak=0.9, surrogate="fast-sigmoid", alpha=4.0, dropout=0.0,
                       train=TrainConfig(epochs=3, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=1e-2,
                                         schedule="onecycle", warmup=0.2)),
        study=StudyConfig(images=64, batch_size=64, draws=2),
        sweep=SweepConfig(T=(2, 4), snn1_T=(8, 16), steps=2, images=32),
        validation=256,
        notes="tiny synthetic data and model, 2 encoder draws per judgement: the test suite's end-to-end run",
    ),
}


def _coerce(value: str, kind: typing.Any, key: str) -> typing.Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        return tuple(_coerce(v, args[0], key) for v in value.split(",") if v.strip())
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        number = kind(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError
        return number
    except ValueError:
        raise SpikeAdvError(f"--set {key}={value}: expected a {'finite number' if kind is float else getattr(kind, '__name__', kind)}") from None


def override(preset: Preset, assignments: list[str]) -> Preset:
    """Apply ``key=value`` overrides (dotted keys reach nested records, e.g. ``ann.lr=0.1``)."""
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise SpikeAdvError(f"--set {item!r}: expected key=value, e.g. --set ann.epochs=3")
        preset = _replace(preset, key.strip().split("."), value.strip(), key)
    preset.check_shapes()
    return preset


def _replace(record: typing.Any, path: list[str], value: str, key: str) -> typing.Any:
    hints = typing.get_type_hints(type(record))
    if path[0] not in hints:
        known = ", ".join(sorted(hints))
        raise SpikeAdvError(f"--set {key}: unknown setting {path[0]!r} (known: {known})")
    if len(path) > 1:
        inner = getattr(record, path[0])
        if not dataclasses.is_dataclass(inner):
            raise SpikeAdvError(f"--set {key}: {path[0]!r} has no sub-settings")
        return dataclasses.replace(record, **{path[0]: _replace(inner, path[1:], value, key)})
    if dataclasses.is_dataclass(getattr(record, path[0])):
        raise SpikeAdvError(f"--set {key}: name a field inside {path[0]!r}, e.g. {path[0]}.epochs")
    return dataclasses.replace(record, **{path[0]: _coerce(value, hints[path[0]], key)})


def get_preset(name: str, assignments: list[str] | None = None) -> Preset:
    if name not in PRESETS:
        raise SpikeAdvError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return override(PRESETS[name], assignments or [])


def from_dict(kind: type, data: dict) -> typing.Any:
    """A record (a preset or a part of one) from :func:`as_dict`'s JSON, validated as it is built."""
    hints = typing.get_type_hints(kind)
    values = {}
    for f in dataclasses.fields(kind):
        if f.name in data:
            value, hint = data[f.name], hints[f.name]
            if dataclasses.is_dataclass(hint):
                value = from_dict(hint, value)
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    return kind(**values)


def recorded(preset: dict, assignments: list[str] | None = None) -> Preset:
    """The preset a checkpoint records (its ``preset`` metadata), with ``--set`` overrides applied."""
    try:
        base = from_dict(Preset, preset)
    except (TypeError, AttributeError) as e:
        raise SpikeAdvError(f"the checkpoint's recorded preset cannot be read ({e}); pass --preset") from None
    return override(base, assignments or [])


def as_dict(record: typing.Any) -> dict:
    """A preset (or part of one) as plain JSON-ready data."""
    return dataclasses.asdict(record)


