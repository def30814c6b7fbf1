"""The Python API behind ``import spikeadv`` (README "Python API"): a trained model loaded with how it
runs, its predictions and its gradient sources for the attacks, and the study runner.

Usage::

    snn2 = Model.from_run("runs/smoke", "snn2")                 # SNN-II, instance 0, as the study ran it
    x_adv = fgsm(snn2.source("bptt"), x, y, eps=8 / 255)        # eps in pixel units
    accuracy = snn2.expected(x_adv, y).mean().item()           # over 32 encoder draws per image
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from . import runtime
from .attack import attacks, estimators
from .attack.suite import DEFAULT
from .config.presets import Preset, StudyConfig, get_preset
from .models.trained import Trained, interrupted
from .study import judge, runner, yours
from .study.evaluation import card_meta
from .study.executors import Executor
from .study.rundir import load_model


class Model(Trained):
    """A trained network with how it runs: ``snn`` None for an ANN, else its SNN settings (SNN-I
    converted, paper III-A; SNN-II trained with spikes, III-B). ``kind`` is ann, snn1, snn2 or a control;
    ``instance`` its index in a study (0 outside one). ``Model.load(path, T, device)`` reads a
    checkpoint spikeadv wrote."""

    @classmethod
    def from_run(cls, run_dir: str | Path, kind: str, instance: int = 0,
                 device: torch.device | str | None = None) -> Model:
        """Model ``kind`` (ann, snn1, snn2, or a control: ann-acc-i, ann-acc-ii, ann-rate), instance 0 or
        1, of a study's run directory, on ``device``, with the T the study ran it at; refused if its file
        is not the one the run recorded."""
        return load_model(Path(run_dir), kind, instance, device, cls)

    @classmethod
    def load(cls, path: str | Path, T: int | None = None, device: torch.device | str | None = None,
             kind: str | None = None, instance: int = 0) -> Model:
        """A checkpoint spikeadv wrote, on ``device``; ``T`` overrides an SNN's time steps. A checkpoint of
        an interrupted training loads with a warning that says so."""
        model = super().load(path, T, device, kind, instance)
        note = interrupted(model.path, model.meta)
        if note:
            warnings.warn(note, stacklevel=2)
        return model

    def __repr__(self) -> str:
        runs = "ANN" if self.snn is None else f"SNN ({self.snn.neuron}, T={self.snn.T}, {self.snn.encoding} input)"
        return f"Model({self.name}: {runs}, {self.path})"

    def predict(self, x: Tensor, seed: int = 0, batch_size: int = StudyConfig.batch_size) -> Tensor:
        """Predicted classes of images ``x`` in [0, 1] on one encoder draw per image (an SNN with Poisson
        input; the judge's first, :mod:`spikeadv.study.judge`): image i's spikes depend on (``seed``, i)
        only, so the clean and an adversarial ``x`` are predicted on the same draws."""
        attacks.check_images(x)
        return judge.classes(self, x, torch.arange(len(x), device=x.device), judge.Judge(seed=seed, batch_size=batch_size))

    def expected(self, x: Tensor, y: Tensor, draws: int = 32, vote: bool = False, seed: int = 0,
                 batch_size: int = StudyConfig.batch_size) -> Tensor:
        """Per image, the expected correctness over ``draws`` encoder draws (``vote``: their majority), as
        the study and the evaluation judge a model (:func:`spikeadv.study.judge.expected`); 0 or 1 for a
        deterministic model. Image i is judged on the same draws whatever ``x`` holds (paired)."""
        attacks.check_images(x)
        return judge.expected(self, x, y, torch.arange(len(x), device=x.device),
                              judge.Judge(draws, vote, seed, batch_size))

    def source(self, gradient: str, seed: int = 0, eot: int = 1) -> estimators.Source:
        """A gradient source on this model for the attacks, by estimator spec (:mod:`.attack.estimators`):
        ``ann`` for an ANN; ``snnadv`` (paper IV-E, Algorithm 2), ``snnadv-clean``, ``bptt`` (e.g.
        ``bptt:surrogate=atan,alpha=2``), ``bptr`` or ``hart`` for an SNN. ``seed`` fixes the encoder
        draws; ``eot`` > 1 averages the gradient over that many."""
        return estimators.make(gradient, self.net, self.snn, seed=seed, eot_n=eot)


def compare(models: yours.Models, x: Tensor, y: Tensor, eps: float | Sequence[float] | None = None,
            suite: str = DEFAULT, out: str | Path | None = None, log: Callable[[str], None] = print, **options) -> dict:
    """Your models (a mapping name -> model, or a list) evaluated on the same images, draws and settings
    (:func:`spikeadv.study.yours.evaluate_models`; ``options`` as :func:`spikeadv.evaluate` takes them) and
    compared pairwise as the study's report compares its kinds: per pair the paired judgement on each
    image's minimal perturbation eps* (Wilcoxon, bootstrap interval of the median difference), robust
    accuracy per eps (McNemar) and attack success on the images both get right; Holm across the pairs.
    Returns one card (``card["paired"]``: one line per pair); with ``out`` written there."""
    from .report.adaptive import items, versus
    from .study import card as cards

    found, setting, x, y = yours.evaluate_models(models, x, y, eps, suite, out=out, log=log, **options)
    meta = card_meta("compare: " + ", ".join(c["model"]["name"] for c in found), setting, x, y)
    paired = items(versus({**meta, "cards": found}), setting.focus)
    if out is not None:
        cards.write(Path(out), found, meta, paired)
    return {**meta, "cards": found, "paired": paired}


def run(preset: Preset | str, out: str | Path, root: str | Path | None = None,
        log: Callable[[str], None] = print, device: str | None = None) -> list[Path]:
    """The whole study of a preset (or preset name) in ``out`` (:func:`spikeadv.study.runner.run`) on ``device``
    (auto, cpu, cuda or cuda:N); a rerun reuses what exists and resumes what was interrupted, on any
    device. Returns the report's files."""
    from .report import write_report  # matplotlib: loaded only when a report is written

    preset = get_preset(preset) if isinstance(preset, str) else preset
    return runner.run(preset, Path(out), write_report, None if root is None else Path(root), log,
                      Executor(device=str(runtime.device(device))))

