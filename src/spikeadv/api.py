"""The Python API behind ``import spikeadv`` (README "Python API"): a trained model loaded with how it
runs, its predictions and its gradient sources for the attacks, and the study runner.

Usage::

    snn2 = Model.from_run("runs/smoke", "snn2")                 # SNN-II, instance 0, as the study ran it
    x_adv = fgsm(snn2.source("bptt"), x, y, eps=8 / 255)        # eps in pixel units
    accuracy = (snn2.predict(x_adv) == y).float().mean().item()
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from . import checkpoint, devices
from .attack import attacks
from .attack import estimators as sources
from .errors import SpikeAdvError
from .presets import Preset, StudyConfig, get_preset
from .study import Executor
from .study import run as run_study
from .study import tasks


class Model(tasks.Model):
    """A trained network with how it runs: ``snn`` None for an ANN, else its SNN settings (SNN-I
    converted, paper III-A; SNN-II trained with spikes, III-B). ``kind`` is ann, snn1 or snn2;
    ``instance`` its index in a study (0 outside one)."""

    @classmethod
    def load(cls, path: str | Path, T: int | None = None, device: torch.device | str = "cpu") -> Model:
        """A checkpoint that spikeadv wrote (``train``, ``convert`` or a study), on ``device``; ``T``
        overrides an SNN's time steps."""
        path = Path(path)
        net, meta = checkpoint.load_model(path, device)
        return cls(meta.get("kind", ""), 0, net, checkpoint.spiking(meta, T=T), path,
                   checkpoint.model_digest(net, meta), meta)

    @classmethod
    def from_run(cls, run_dir: str | Path, kind: str, instance: int = 0, device: torch.device | str = "cpu") -> Model:
        """Model ``kind`` (ann, snn1, snn2), instance 0 or 1, of a study's run directory, on ``device``,
        with the T the study ran it at; refused if its file is not the one the run recorded."""
        record = Path(run_dir) / "run.json"
        try:
            entries = json.loads(record.read_text())["models"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpikeAdvError(f"cannot read the models of {record} ({e}); pass the --out directory of a "
                                "study (spikeadv run, or spikeadv.run)") from None
        found = [m for m in entries if (m.get("kind"), m.get("instance")) == (kind, instance)]
        if not found:
            have = ", ".join(f"{m.get('kind')} {m.get('instance')}" for m in entries) or "none yet"
            raise SpikeAdvError(f"{run_dir} has no model {kind} instance {instance} (it has: {have})")
        model = dataclasses.replace(cls.load(Path(run_dir) / found[0]["path"], T=found[0].get("T"), device=device),
                                    instance=instance)
        if found[0].get("sha256", model.sha256) != model.sha256:
            raise SpikeAdvError(f"{model.path} is not the model {record} recorded (its digest differs); "
                                "rerun the study to rebuild it")
        return model

    def __repr__(self) -> str:
        runs = "ANN" if self.snn is None else f"SNN ({self.snn.neuron}, T={self.snn.T}, {self.snn.encoding} input)"
        return f"Model({self.name}: {runs}, {self.path})"

    def predict(self, x: Tensor, seed: int = 0, batch_size: int = StudyConfig.batch_size) -> Tensor:
        """Predicted classes of images ``x`` in [0, 1]. An SNN's encoder draws are seeded by ``seed``
        as in the study's first evaluation repeat (:func:`spikeadv.study.predict`): with the study's
        seed and batch size these are its clean predictions, and one seed pairs clean and adversarial
        evaluations on the same draws."""
        attacks.check_images(x)
        return tasks.predict(self, x, StudyConfig(seed=seed, batch_size=batch_size), repeat=0)

    def source(self, gradient: str, seed: int = 0, eot: int = 1) -> sources.Source:
        """A gradient source on this model for the attacks, by estimator spec (:mod:`.attack.estimators`):
        ``ann`` for an ANN; ``snnadv`` (paper IV-E, Algorithm 2), ``snnadv-clean``, ``bptt`` (e.g.
        ``bptt:surrogate=atan,alpha=2``), ``bptr`` or ``hart`` for an SNN. ``seed`` fixes the encoder
        draws; ``eot`` > 1 averages the gradient over that many."""
        return sources.make(gradient, self.net, self.snn, seed=seed, eot_n=eot)


def run(preset: Preset | str, out: str | Path, root: str | Path | None = None,
        log: Callable[[str], None] = print, device: str = "cpu") -> list[Path]:
    """The whole study of a preset (or preset name) in ``out`` (:func:`spikeadv.study.run`) on ``device``
    (auto, cpu, cuda or cuda:N); a rerun reuses what exists and resumes what was interrupted, on any
    device. Returns the report's files."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return run_study(preset, Path(out), None if root is None else Path(root), log,
                     Executor(device=str(devices.resolve(device))))
