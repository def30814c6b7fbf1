"""The adaptive evaluation of a run directory's models, a checkpoint or any model (DESIGN section 8): what
to evaluate, its units (:mod:`.units`) as tasks for an executor, and the robustness card (:mod:`.card`).

Each unit (one model's ensemble at one eps, one estimator's curves, EOT, one transfer) is a record in
``FOLDER/cells/`` named by the hash of its recipe (model digest, images, suite pairs, eps, seed, version)
with a digest of its content, so a rerun reuses what exists and an interrupted evaluation resumes.
Every random draw (encoder spikes, random starts, Square's squares) is seeded by the unit's recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import torch
from torch import Tensor

from .. import data, runtime
from ..attack import attacks, estimators, registry
from ..attack.suite import Pair, Suite, check_pairs
from ..config.grid import KINDS, TARGETS, by_eps
from ..config.presets import Preset, from_dict
from ..errors import SpikeAdvError
from ..models.foreign import identified
from ..models.neurons import backend_on
from ..models.trained import Trained, interrupted
from ..records import read_json
from ..records.provenance import command_line, digest, versions
from . import card as cards
from . import executors
from .executors import Executor
from .judge import Judge, stochastic
from .plan import Task
from .rundir import load_model
from .units import EPS_GRID, Evaluation, Setting

# pixel units, by the robustness literature's scales: L-inf on grey images (MNIST), L2 radii on grey and on
# colour images (CIFAR-10: 0.5 the common one); L-inf on colour images: spikeadv's grid, 0.5/255 ... 32/255
GRIDS = {("linf", "grey"): (0.05, 0.1, 0.15, 0.2, 0.3), ("l2", "grey"): (0.5, 1.0, 1.5, 2.0, 3.0),
         ("l2", "colour"): (0.1, 0.25, 0.5, 0.75, 1.0)}


def default_grid(x: Tensor, norm: str = "linf") -> tuple[float, ...] | None:
    """The eps grid (pixel units) for images like ``x`` in the threat model ``norm`` (:data:`GRIDS`;
    None: spikeadv's L-inf grid)."""
    return GRIDS.get((norm, "grey" if x.dim() == 4 and x.shape[1] == 1 else "colour"))


def eps_grid(values: float | Sequence[float] | None, norm: str = "linf") -> tuple[float, ...]:
    """The robustness curve's eps grid from eps in pixel units (8/255 = 0.0314; one number or an
    increasing sequence; None: the default grid), returned in 1/255 units, as cards and units name them.
    Each is checked as every attack checks eps (:func:`spikeadv.attack.attacks.amount`: a number above 1
    is refused with the way to write it; under ``norm="l2"`` a radius, any finite number, checked against
    the images' diameter when attacked) and must be above 0."""
    if values is None:
        return EPS_GRID
    try:
        values = [values] if isinstance(values, numbers.Real) else list(values)
    except TypeError:
        raise SpikeAdvError(f"eps must be a number or a sequence of numbers in pixel units, e.g. 8/255, got "
                            f"{type(values).__name__}") from None
    if not values:
        raise SpikeAdvError("give at least one eps in pixel units, e.g. 8/255")
    for e in values:
        e = float(e) if isinstance(e, numbers.Real) and not isinstance(e, bool) else e
        if norm == "linf":
            attacks.amount("eps", e)
        elif not isinstance(e, float) or not math.isfinite(e) or e < 0:
            raise SpikeAdvError(f"eps (an L2 radius in pixel units) must be a finite number >= 0, got {e!r}")
        if e == 0:
            raise SpikeAdvError("eps=0 is no attack; the grid's eps must be above 0 (the null attack runs anyway)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise SpikeAdvError("the eps grid must be strictly increasing, e.g. 1/255,2/255,8/255, got "
                            + ", ".join(f"{float(e):.4g}" for e in values))
    return tuple(round(float((e if isinstance(e, (int, Fraction)) else Fraction(float(e))) * 255), 6) for e in values)


def draws_value(k: int) -> int:
    """K, the encoder draws per judged input: an int >= 1, refused with one line otherwise (by the judge)."""
    return Judge(draws=k).draws


def targets(path: Path, images: int | None, root: Path | None, device: torch.device | None = None
            ) -> tuple[list[Trained], dict[str, list[Trained]], Tensor, Tensor, dict]:
    """The models to evaluate at ``path`` (a run directory: every instance of each kind, each with the
    other instances of its kind and the ANN's other instances as transfer sources; or one checkpoint),
    the test images (the study's, or the first ``images`` of the checkpoint's test set) and the recorded
    settings, all on ``device`` (None: this process's)."""
    device = runtime.device(device)
    if path.is_dir():
        record = read_json(path / "run.json", "; pass a study's run directory, or a checkpoint")
        try:
            preset = from_dict(Preset, record["preset"])
        except (ValueError, KeyError, TypeError) as e:
            raise SpikeAdvError(f"{path} is not a study's run directory ({e}); pass one, or a checkpoint") from None
        test = data.load(preset.dataset, "test", root)
        test = test.subset(preset.test_subset) if preset.test_subset else test
        instances = range(len(preset.seeds))
        x, y = _images(test, images or preset.study.images, device)
        built = {m.get("kind") for m in record.get("models", [])}
        kinds = [k for k in TARGETS if k in KINDS or k in built]  # the three kinds and the run's controls
        models = {(k, i): identified(load_model(path, k, i, device), x) for k in kinds for i in instances}
        evaluated = [models[(k, i)] for i in instances for k in kinds]
        sources = {m.name: [models[(k, j)] for k in dict.fromkeys((m.kind, "ann")) for j in instances
                            if j != m.instance] for m in evaluated}
        recorded = {"batch_size": preset.study.batch_size, "bf16": preset.study.bf16, "seed": preset.study.seed,
                    "draws": preset.study.draws, "vote": preset.study.vote}
    else:
        model = Trained.load(path, device=device)
        name = model.meta.get("data", {}).get("dataset")
        if name is None:
            raise SpikeAdvError(f"{path} does not record its dataset, so its test images are unknown")
        test = data.load(name, "test", root)
        x, y = _images(test, images or 500, device)
        model = identified(model, x)
        evaluated, sources, recorded = [model], {model.name: []}, {}
    return evaluated, sources, x, y, recorded


def _images(test: data.Dataset, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    if n > len(test):
        raise SpikeAdvError(f"--images {n} exceeds the {len(test)} test images")
    return data.to_float(test.images[:n]).to(device), test.labels[:n].long().to(device)


def custom_suite(base: Suite, specs: list[str]) -> Suite:
    """``base`` with its ensembles replaced by ``ESTIMATOR/ATTACK[/STEPS]`` pairs, each given to the
    model kinds its estimator applies to (an unknown estimator or attack refused here)."""
    pairs = []
    for spec in specs:
        parts = spec.split("/")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise SpikeAdvError(f"--pair {spec!r}: expected ESTIMATOR/ATTACK[/STEPS], e.g. bptt/apgd-ce/100")
        if len(parts) == 3 and int(parts[2]) < 1:
            raise SpikeAdvError(f"--pair {spec!r}: STEPS (queries for square) must be >= 1")
        attack = registry.get(parts[1])
        estimators.parse(parts[0])
        pairs.append(Pair(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else attack.steps))
    fits = {kind: tuple(p for p in pairs if kind in estimators.ESTIMATORS[estimators.parse(p.estimator)[0]].kinds)
            for kind in ("ann", "snn")}
    return dataclasses.replace(base, name=f"{base.name}+pairs", ann=fits["ann"], snn=fits["snn"], poisson=(), eot=1,
                               square_eot=1)


def units(models: list[Trained], sources: dict[str, list[Trained]], setting: Setting, images: int) -> list[Task]:
    """The evaluation's units as independent tasks (for an executor to run anywhere, filling the cache
    the card is then read from): each model's sweep over the eps grid and its null attack, curves per
    estimator and EOT, and the transfers from each source (one task per source, shared by its targets);
    the convergence check runs with its model's sweep.
    Cost: model passes in forwards (:attr:`.suite.Pair.work`), as if every pair ran on every image."""
    suite, curve = setting.suite, min(images, setting.suite.curve_images)
    out = []
    for m in models:
        work = sum(p.work for p in suite.pairs(m.snn, m.net))
        out += [Task(f"{m.name}-sweep", "unit", {"unit": "sweep", "model": m.name}, cost=images * work * len(setting.eps)),
                Task(f"{m.name}-null", "unit", {"unit": "null", "model": m.name}, cost=images * len(setting.eps))]
        points = len(suite.eps_curve) + len(suite.steps_curve)
        out += [Task(f"{m.name}-curves-{e}", "unit", {"unit": "curves", "model": m.name, "estimator": e},
                     cost=curve * points * Pair(e, suite.curve_attack, max(suite.steps_curve)).work)
                for e in suite.curve_sources(m.snn, m.net)]
        if stochastic(m):
            out.append(Task(f"{m.name}-eot", "unit", {"unit": "eot", "model": m.name},
                            cost=curve * sum(Pair(f"bptt:eot={n}", suite.curve_attack, suite.curve_steps).work
                                             for n in suite.eot_draws)))
    for source in {s.name: s for group in sources.values() for s in group}.values():
        out.append(Task(f"from-{source.name}", "unit", {"unit": "transfer", "source": source.name},
                        cost=images * suite.pairs(source.snn, source.net)[0].work))
    return out


@functools.lru_cache(maxsize=1)
def _evaluation(path: str, setting: Setting, images: int | None, out: str, root: str | None, device: str) -> tuple:
    models, sources, x, y, _ = targets(Path(path), images, Path(root) if root else None, runtime.use(device))
    return Evaluation(setting, x, y, Path(out), log=lambda line: None), models, sources


def run_unit(path: str, setting: Setting, images: int | None, out: str, root: str | None, device: str, task: Task,
             deps: dict[str, dict]) -> dict:
    """One unit of :func:`units` on any process (on ``device`` as it sees it), written to ``out``'s cache."""
    evaluation, models, sources = _evaluation(path, setting, images, out, root, device)
    unit, by_name = task.recipe, {m.name: m for group in ([*models], *sources.values()) for m in group}
    if unit["unit"] == "transfer":
        for target in models:
            if unit["source"] in (s.name for s in sources[target.name]):
                evaluation.transfer(target, by_name[unit["source"]], setting.focus)
    elif unit["unit"] == "sweep":  # and the convergence check of its worst case at each eps, where the suite has one
        for eps, swept in evaluation.sweep(by_name[unit["model"]]).items():
            evaluation.converge(by_name[unit["model"]], swept, eps)
    elif unit["unit"] == "null":
        evaluation.null(by_name[unit["model"]])
    elif unit["unit"] == "curves":
        evaluation.curves(by_name[unit["model"]], unit["estimator"])
    else:
        evaluation.eot(by_name[unit["model"]])
    return {}


def evaluate_path(path: Path, suite: Suite, eps: tuple[float, ...] | None = None, images: int | None = None,
                  out: Path | None = None, root: Path | None = None, log: Callable[[str], None] = print,
                  executor: Executor = Executor(), draws: int | None = None, vote: bool | None = None) -> list[Path]:
    """Evaluate a run directory's models (or one checkpoint) over the eps grid ``eps`` (1/255 units; None:
    :func:`default_grid` for its images and the suite's threat model) and write the card
    into ``out`` (default: RUN/evaluation/SUITE, or CHECKPOINT's folder/STEM-evaluation/SUITE); ``draws``
    and ``vote`` (None: the study's, else K = 32 and the mean) say how a stochastic model is judged. On a
    Ray ``executor`` the units run as Ray tasks first; the card is then made here from their cached records."""
    models, sources, x, y, recorded = targets(path, images, root, executors.driver_device(executor))
    eps = eps_grid(default_grid(x, suite.norm), suite.norm) if eps is None else eps
    for note in filter(None, (interrupted(m.path, m.meta) for m in models)):
        log(f"warning: {note}")
    for model in models:  # every model's pairs accepted or refused before anything is written
        check_pairs(suite.pairs(model.snn, model.net), estimators.kind_of(model.net, model.snn), model.name)
    if out is None:
        out = (path / "evaluation" if path.is_dir() else path.parent / f"{path.stem}-evaluation") / suite.name
    recorded.update({k: v for k, v in (("draws", draws), ("vote", vote)) if v is not None})
    setting = Setting(suite, eps, **recorded)
    if executor.kind == "ray":
        executors.check(executor)
        leave = executors.connect(executor)
        try:
            todo = units(models, sources, setting, len(y))
            log(f"{len(todo)} evaluation units on {executor.describe()}")
            executors.on_ray(todo, functools.partial(run_unit, str(path.resolve()), setting, images,
                                                     str(out.resolve()), str(root.resolve()) if root else None,
                                                     executor.device), executor)
        finally:
            leave()
    evaluation = Evaluation(setting, x, y, out, log)
    log(f"evaluating {', '.join(m.name for m in models)} on {len(y)} images at eps {', '.join(f'{e:g}' for e in eps)}/255 "
        f"with the {suite.name} suite -> {out}")
    start, done = time.perf_counter(), []
    for model in models:
        done.append(evaluation.card(model, sources[model.name]))
        failed = [c for c in done[-1]["checks"] if c["passed"] is False]
        star = done[-1]["median_eps_star"]
        log(f"{model.name}: robust accuracy " + ", ".join(f"{100 * e['worst_acc']:.1f}% at {k}"
                                                         for k, e in by_eps(done[-1]["eps"]))
            + f"; median eps* {'beyond the grid' if star is None else f'{star:g}/255'} ({done[-1]['seconds']:.0f} s); "
            + (f"checks failed: {', '.join(sorted({c['name'] for c in failed}))}" if failed else "checks pass"))
    return cards.write(out, done, {**card_meta(str(path), setting, x, y),
                                      "seconds": round(time.perf_counter() - start, 1)})


def card_meta(source: str, setting: Setting, x: Tensor, y: Tensor) -> dict:
    """What a card records about its evaluation: what was evaluated, how, on which images, with what."""
    return {"source": source, "suite": setting.suite.name, "suite_doc": setting.suite.doc, "norm": setting.suite.norm,
            "images": len(y),
            "prune": setting.suite.prune, "draws": setting.draws, "vote": setting.vote,
            "seed": setting.seed, "eps": list(setting.eps), "bf16": setting.bf16, "labels": digest(y.tolist()),
            "versions": versions(), "device": str(x.device), "neurons": backend_on(x.device),
            "command": command_line()}
