"""The units of the adaptive evaluation (DESIGN section 8): the suite's ensemble worst case per image at
each eps, the accuracy-vs-eps and -steps curves of its main estimators, EOT convergence, transfer from
other models, and the gradient-masking checks (:mod:`spikeadv.attack.checks`), as one card per model
(:mod:`.evaluation` says what to evaluate and schedules the units; :mod:`.card` writes the cards).

Each unit (one model's ensemble at one eps, one estimator's curves, EOT, one transfer) is a record in
``FOLDER/cells/`` named by the hash of its recipe (model digest, images, suite pairs, eps, seed, version)
with a digest of its content, so a rerun reuses what exists and an interrupted evaluation resumes.
Every random draw (encoder spikes, random starts, Square's squares) is seeded by the unit's recipe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .. import runtime
from ..attack import apgd, checks, estimators, registry
from ..attack.suite import ROBUST, WRONG_CLEAN, Pair, Suite, check_pairs, worst_case
from ..config.presets import StudyConfig
from ..models.trained import Trained
from ..records import cached
from ..records.provenance import __version__, digest, seed_of
from .compute import predict

REVISION = 2  # of the attacks' semantics within a version: a change invalidates every cached unit


@dataclass(frozen=True)
class Setting:
    """What an evaluation runs: the suite, eps values (1/255 units), the seed of every draw, the batch
    size and bf16 autocast; the deployed model is judged on the study's first seeded evaluation draw."""

    suite: Suite
    eps: tuple[float, ...]
    seed: int = 0
    batch_size: int = 125
    bf16: bool = False

    @property
    def study(self) -> StudyConfig:
        return StudyConfig(seed=self.seed, batch_size=self.batch_size, bf16=self.bf16)


class Evaluation:
    """The evaluation of models on images ``x``, ``y`` with a :class:`Setting`; units cached in
    ``folder/cells`` (None: nothing written)."""

    def __init__(self, setting: Setting, x: Tensor, y: Tensor, folder: Path | None,
                 log: Callable[[str], None] = print) -> None:
        self.setting, self.x, self.y, self.folder, self.log = setting, x, y, folder, log
        self.labels = digest(y.tolist())
        self.transfer_sets: dict[tuple[str, float], Tensor] = {}

    # --- plumbing --------------------------------------------------------------------------------------

    def _unit(self, name: str, recipe: dict, compute: Callable[[], dict]) -> dict:
        """A cached unit: its record if one with this recipe exists, else computed and written."""
        recipe = {**recipe, "images": len(self.y), "labels": self.labels, "seed": self.setting.seed,
                  "bf16": self.setting.bf16, "batch": self.setting.batch_size, "version": __version__,
                  "revision": REVISION}
        path = None if self.folder is None else self.folder / "cells" / f"{name}-{digest(recipe)}.json"

        def timed() -> dict:
            start = time.perf_counter()
            return {**compute(), "seconds": round(time.perf_counter() - start, 2)}

        return cached(path, recipe, timed, self.log)[0]

    def predict(self, model: Trained, x: Tensor) -> Tensor:
        return predict(model, x, self.setting.study, repeat=0)

    def attack(self, model: Trained, pair: Pair, x: Tensor, y: Tensor, eps: float, tag: object,
               trace: list | None = None) -> Tensor:
        """``pair`` on ``model`` for one batch: the source and generator seeded by what it serves."""
        seed = seed_of(self.setting.seed, model.sha256, pair.name, eps, tag)
        source = estimators.make(pair.estimator, model.net, model.snn, seed=seed)
        gen = runtime.generator(seed, x.device)
        with runtime.autocast(self.setting.bf16, x.device):
            if trace is not None:  # the curves' APGD-CE keeps its loss trace for the masking check
                return apgd.apgd(source, x, y, eps / 255, pair.steps, generator=gen, trace=trace).float()
            return registry.get(pair.attack).run(source, x, y, eps / 255, steps=pair.steps, generator=gen).float()

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img-step", leave=False, dynamic_ncols=True)

    # --- units -----------------------------------------------------------------------------------------

    def ensemble(self, model: Trained, eps: float) -> dict:
        """The worst case over the suite's pairs at ``eps`` (:func:`.suite.worst_case`)."""
        pairs = self.setting.suite.pairs(model.snn)

        def compute() -> dict:
            with self._bar(len(self.y) * sum(p.steps for p in pairs), f"{model.name} eps {eps:g}") as bar:
                def progress(done: int, left: int) -> None:  # the total shrinks as images are broken
                    bar.total = bar.n + done + left
                    bar.update(done)

                result = worst_case(pairs, self.x, self.y, lambda v: self.predict(model, v),
                                    lambda pair, xb, yb, b: self.attack(model, pair, xb, yb, eps, b),
                                    self.setting.batch_size, self.setting.suite.prune, progress)
            delta = (result.adv - self.x).flatten(1)
            broken = result.winner >= 0
            stats = [{**asdict(p), "name": p.name, "ran": r, "fooled": f, "won": w, "seconds": s}
                     for p, r, f, w, s in zip(pairs, result.ran, result.fooled, result.won, result.seconds)]
            for pair in stats:
                self.log(f"  {model.name} eps {eps:g}: {pair['name']}: broke {pair['fooled']} of {pair['ran']} "
                         f"images ({pair['won']} first) in {pair['seconds']:.0f} s")
            return {"winner": result.winner.tolist(), "pairs": stats,
                    "linf": round(delta[broken].abs().amax(1).mean().item() * 255, 4) if broken.any() else 0.0,
                    "l2": round(delta[broken].norm(dim=1).mean().item(), 5) if broken.any() else 0.0}

        return self._unit(f"{model.name}-eps{eps:g}", {"unit": "ensemble", "model": model.sha256, "eps": eps,
                                                        "pairs": [p.name for p in pairs],
                                                        "prune": self.setting.suite.prune}, compute)

    def curves(self, model: Trained, estimator: str) -> dict:
        """Accuracy vs eps and vs steps (APGD-CE) on the first ``curve_images`` images (the unbounded eps
        with the most steps), the loss trace of the longest run and the share of exactly-zero input
        gradients at the clean images."""
        suite, eps = self.setting.suite, self.setting.eps[0]
        x, y = self.x[:suite.curve_images], self.y[:suite.curve_images]
        longest, unbounded = max(suite.steps_curve), max(suite.eps_curve)
        on_eps = {e: longest if e == unbounded else suite.curve_steps for e in suite.eps_curve}
        points = set(on_eps.items()) | {(eps, s) for s in suite.steps_curve}

        def compute() -> dict:
            acc, trace = {}, []
            with self._bar(len(y) * sum(s for _, s in points), f"{model.name} curves {estimator}") as bar:
                for e, steps in sorted(points):
                    keep = [] if (e, steps) == (eps, longest) else None
                    adv = self.attack(model, Pair(estimator, "apgd-ce", steps), x, y, e, "curve", keep)
                    acc[(e, steps)] = (self.predict(model, adv) == y).float().mean().item()
                    trace = keep if keep is not None else trace
                    bar.update(len(y) * steps)
            source = estimators.make(estimator, model.net, model.snn, seed=seed_of(self.setting.seed, "zero"))
            with runtime.autocast(self.setting.bf16, x.device):
                grad = source.grad(x, y).flatten(1)
            return {"eps": {f"{e:g}": acc[(e, steps)] for e, steps in on_eps.items()},
                    "steps": {str(s): acc[(eps, s)] for s in suite.steps_curve}, "trace": trace,
                    "zero_gradient_images": (grad == 0).all(1).float().mean().item(),
                    "zero_gradient_entries": (grad == 0).float().mean().item()}

        return self._unit(f"{model.name}-curves", {"unit": "curves", "model": model.sha256, "estimator": estimator,
                                                   "eps": eps, "eps_curve": list(suite.eps_curve),
                                                   "steps_curve": list(suite.steps_curve),
                                                   "curve_steps": suite.curve_steps, "unbounded_steps": longest},
                          compute)

    def eot(self, model: Trained) -> dict | None:
        """EOT convergence: APGD-CE through BPTT averaged over n and 2n encoder draws (Poisson input only)."""
        if model.snn is None or model.snn.encoding != "poisson":
            return None
        suite, eps = self.setting.suite, self.setting.eps[0]
        x, y = self.x[:suite.curve_images], self.y[:suite.curve_images]

        def compute() -> dict:
            acc = {}
            for n in suite.eot_draws:
                adv = self.attack(model, Pair(f"bptt:eot={n}", "apgd-ce", suite.curve_steps), x, y, eps, "eot")
                acc[str(n)] = (self.predict(model, adv) == y).float().mean().item()
            return {"estimator": "bptt", "acc": acc}

        return self._unit(f"{model.name}-eot", {"unit": "eot", "model": model.sha256, "eps": eps,
                                                "draws": list(suite.eot_draws), "steps": suite.curve_steps}, compute)

    def transfer(self, target: Trained, source: Trained, eps: float) -> dict:
        """Accuracy of ``target`` on the suite's first attack crafted on ``source`` with its first
        estimator (blackbox transfer, paper section V)."""
        pair = self.setting.suite.pairs(source.snn)[0]

        def compute() -> dict:
            key = (source.sha256, eps)
            if key not in self.transfer_sets:
                parts = [self.attack(source, pair, self.x[i:i + self.setting.batch_size],
                                     self.y[i:i + self.setting.batch_size], eps, ("transfer", i))
                         for i in range(0, len(self.y), self.setting.batch_size)]
                self.transfer_sets[key] = torch.cat(parts)
            pred = self.predict(target, self.transfer_sets[key])
            return {"acc": (pred == self.y).float().mean().item(), "pair": pair.name}

        return self._unit(f"{target.name}-from-{source.name}-eps{eps:g}",
                          {"unit": "transfer", "model": target.sha256, "source": source.sha256, "eps": eps,
                           "pair": pair.name}, compute)

    # --- one model -------------------------------------------------------------------------------------

    def card(self, model: Trained, transfer: list[Trained] = ()) -> dict:
        """Everything evaluated on ``model`` and its masking checks, as a JSON-ready card."""
        suite = self.setting.suite
        check_pairs(suite.pairs(model.snn), model.snn, model.name)
        start, n = time.perf_counter(), len(self.y)
        by_eps = {}
        for eps in self.setting.eps:
            unit = self.ensemble(model, eps)
            winner = torch.tensor(unit["winner"])
            first = ~torch.isin(winner, torch.tensor([WRONG_CLEAN, 0]))
            clean = int((winner != WRONG_CLEAN).sum())
            alone = [(p["name"], (clean - p["fooled"]) / n) for p in unit["pairs"] if p["ran"] == clean]
            by_eps[f"{eps:g}"] = {
                "clean_acc": clean / n,
                "single": {"pair": unit["pairs"][0]["name"], "acc": first.float().mean().item(),
                           "correct": first.tolist()},
                "best_single": dict(zip(("pair", "acc"), min(alone, key=lambda a: a[1]))),
                "worst_acc": (winner == ROBUST).float().mean().item(), "winner": unit["winner"],
                "pairs": unit["pairs"], "linf": unit["linf"], "l2": unit["l2"],
                "transfer": {s.name: self.transfer(model, s, eps)["acc"] for s in transfer},
            }
        curves = {e: self.curves(model, e) for e in suite.curve_sources(model.snn)}
        card = {
            "model": {"name": model.name, "kind": model.kind, "file": model.path.name, "sha256": model.sha256,
                      **({"neuron": model.snn.neuron, "T": model.snn.T, "encoding": model.snn.encoding,
                          "surrogate": model.snn.surrogate} if model.snn else {})},
            "suite": suite.name, "images": n, "curve_images": min(n, suite.curve_images),
            "eval_eps": self.setting.eps[0], "eps": by_eps,
            "curves": {e: {k: c[k] for k in ("eps", "steps", "trace", "zero_gradient_images",
                                             "zero_gradient_entries", "seconds")} for e, c in curves.items()},
            "eot": self.eot(model), "seed": self.setting.seed, "bf16": self.setting.bf16,
        }
        card["checks"] = checks.as_records(checks.check_card(card))
        card["seconds"] = round(time.perf_counter() - start, 1)
        return card
