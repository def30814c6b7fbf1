"""The Python API behind ``import spikeadv`` (README "Python API"): a trained model loaded with how it
runs, its predictions and its gradient sources for the attacks, and the study runner.

Usage::

    snn2 = Model.from_run("runs/smoke", "snn2")                 # SNN-II, instance 0, as the study ran it
    x_adv = fgsm(snn2.source("bptt"), x, y, eps=8 / 255)        # eps in pixel units
    accuracy = (snn2.predict(x_adv) == y).float().mean().item()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from . import runtime
from .attack import attacks, estimators
from .config.presets import Preset, StudyConfig, get_preset
from .models.trained import Trained
from .study import compute, runner
from .study.executors import Executor
from .study.rundir import load_model


class Model(Trained):
    """A trained network with how it runs: ``snn`` None for an ANN, else its SNN settings (SNN-I
    converted, paper III-A; SNN-II trained with spikes, III-B). ``kind`` is ann, snn1 or snn2;
    ``instance`` its index in a study (0 outside one). ``Model.load(path, T, device)`` reads a
    checkpoint spikeadv wrote."""

    @classmethod
    def from_run(cls, run_dir: str | Path, kind: str, instance: int = 0,
                 device: torch.device | str | None = None) -> Model:
        """Model ``kind`` (ann, snn1, snn2), instance 0 or 1, of a study's run directory, on ``device``,
        with the T the study ran it at; refused if its file is not the one the run recorded."""
        return load_model(Path(run_dir), kind, instance, device, cls)

    def __repr__(self) -> str:
        runs = "ANN" if self.snn is None else f"SNN ({self.snn.neuron}, T={self.snn.T}, {self.snn.encoding} input)"
        return f"Model({self.name}: {runs}, {self.path})"

    def predict(self, x: Tensor, seed: int = 0, batch_size: int = StudyConfig.batch_size) -> Tensor:
        """Predicted classes of images ``x`` in [0, 1]. An SNN's encoder draws are seeded by ``seed``
        as in the study's first evaluation repeat (:func:`spikeadv.study.compute.predict`): with the study's
        seed and batch size these are its clean predictions, and one seed pairs clean and adversarial
        evaluations on the same draws."""
        attacks.check_images(x)
        return compute.predict(self, x, StudyConfig(seed=seed, batch_size=batch_size), repeat=0)

    def source(self, gradient: str, seed: int = 0, eot: int = 1) -> estimators.Source:
        """A gradient source on this model for the attacks, by estimator spec (:mod:`.attack.estimators`):
        ``ann`` for an ANN; ``snnadv`` (paper IV-E, Algorithm 2), ``snnadv-clean``, ``bptt`` (e.g.
        ``bptt:surrogate=atan,alpha=2``), ``bptr`` or ``hart`` for an SNN. ``seed`` fixes the encoder
        draws; ``eot`` > 1 averages the gradient over that many."""
        return estimators.make(gradient, self.net, self.snn, seed=seed, eot_n=eot)


def run(preset: Preset | str, out: str | Path, root: str | Path | None = None,
        log: Callable[[str], None] = print, device: str | None = None) -> list[Path]:
    """The whole study of a preset (or preset name) in ``out`` (:func:`spikeadv.study.runner.run`) on ``device``
    (auto, cpu, cuda or cuda:N); a rerun reuses what exists and resumes what was interrupted, on any
    device. Returns the report's files."""
    from .report import write_report  # matplotlib: loaded only when a report is written

    preset = get_preset(preset) if isinstance(preset, str) else preset
    return runner.run(preset, Path(out), write_report, None if root is None else Path(root), log,
                      Executor(device=str(runtime.device(device))))

