"""The units of the adaptive evaluation (DESIGN section 8): the suite's ensemble worst case per image at
each eps, the accuracy-vs-eps and -steps curves of its main estimators, EOT convergence, transfer from
other models, and the gradient-masking checks (:mod:`spikeadv.attack.checks`), as one card per model
(:mod:`.evaluation` says what to evaluate and schedules the units; :mod:`.card` writes the cards).

Each unit (one model's ensemble at one eps, one estimator's curves, EOT, one transfer) is a record in
``FOLDER/cells/`` named by the hash of its recipe (the digest of the model's function,
:func:`spikeadv.models.foreign.identified`; the images' and labels' digests, suite pairs, eps, seed, version)
with a digest of its content, so a rerun reuses what exists and an interrupted evaluation resumes.
Every random draw (encoder spikes, random starts, Square's squares) is seeded by the unit's recipe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from .. import runtime
from ..attack import apgd, checks, convergence, estimators, registry
from ..attack.suite import Pair, Suite, check_pairs, worst_case
from ..models.foreign import runs_as
from ..models.trained import Trained
from ..records import cached, write_record
from ..records.checkpoint import tensors_digest
from ..records.provenance import __version__, digest, seed_of
from .judge import Judge, expected, stochastic

REVISION = 4  # of the attacks' semantics within a version: a change invalidates every cached unit


EPS_GRID = (0.5, 1, 2, 3, 4, 6, 8, 16, 32)  # 1/255 units: the robustness curve's default grid (DESIGN 8.3)


@dataclass(frozen=True)
class Setting:
    """What an evaluation runs: the suite, the eps grid (1/255 units, increasing) of the robustness curve,
    the seed of every draw, the batch size, bf16 autocast, and how the model is judged: its expected
    correctness over ``draws`` encoder draws (common random numbers), or with ``vote`` their majority."""

    suite: Suite
    eps: tuple[float, ...]
    seed: int = 0
    batch_size: int = 125
    bf16: bool = False
    draws: int = 32
    vote: bool = False

    @property
    def judge(self) -> Judge:
        return Judge(self.draws, self.vote, self.seed, self.batch_size, self.bf16)

    @property
    def focus(self) -> float:
        """The eps of the steps curve, EOT and transfer: 8/255 where the grid has it, else its middle."""
        return 8.0 if 8 in self.eps else self.eps[len(self.eps) // 2]

    @property
    def threat(self) -> dict:
        """The threat model, for the recipes of the units it changes (none for L-inf, the default)."""
        return {} if self.suite.norm == "linf" else {"norm": self.suite.norm}

    def eps_curve(self, dims: int) -> tuple[float, ...]:
        """The accuracy-vs-eps curve's eps (1/255 units) on images of ``dims`` pixels: the suite's, drawn
        around 8/255, scaled to this grid's evaluated eps (MNIST's 0.15 puts 2, 8, 32/255 at 0.04, 0.15,
        0.6), and the unbounded one: 255 in L-inf, the image space's diameter 255 sqrt(dims) in L2."""
        top = 255 if self.suite.norm == "linf" else math.floor(255e6 * math.sqrt(dims)) / 1e6  # within the box
        scaled = (round(e * self.focus / 8, 6) for e in self.suite.eps_curve if e < 255)
        return tuple(int(e) if e == int(e) else e for e in (*sorted({e for e in scaled if e < top}), top))


JudgeFn = Callable[[Trained, Tensor, Tensor], Tensor]  # (model, images, their indices) -> expected correctness


class Evaluation:
    """The evaluation of models on images ``x``, ``y`` with a :class:`Setting`; units cached in
    ``folder/cells`` (None: nothing written). ``judge`` (default: :func:`.judge.expected` with the
    setting's draws) says how a model's prediction on an input is judged. ``keep``: the worst-case
    images of each model and eps are kept in ``adversarial`` (those units then computed, not read);
    ``"pairs"``: each pair's own too, in ``by_pair``."""

    def __init__(self, setting: Setting, x: Tensor, y: Tensor, folder: Path | None,
                 log: Callable[[str], None] = print, judge: JudgeFn | None = None, keep: bool | str = False) -> None:
        self.setting, self.x, self.y, self.folder, self.log, self.keep = setting, x, y, folder, log, keep
        self.adversarial: dict[tuple[str, float], Tensor] = {}
        self.by_pair: dict[tuple[str, float], dict[str, Tensor]] = {}
        self.labels, self.pixels = digest(y.tolist()), tensors_digest({"x": x.detach().cpu()}, "images")
        self.transfer_sets: dict[tuple[str, float], Tensor] = {}
        self.cleans: dict[str, Tensor] = {}
        self.judge = judge or (lambda model, adv, idx: expected(model, adv, self.y[idx], idx, setting.judge))

    # --- plumbing --------------------------------------------------------------------------------------

    def _unit(self, name: str, recipe: dict, compute: Callable[[], dict], read: bool = True) -> dict:
        """A cached unit: its record if one with this recipe exists (and ``read``), else computed and written."""
        recipe = {**recipe, "images": len(self.y), "labels": self.labels, "pixels": self.pixels, "seed": self.setting.seed,
                  "bf16": self.setting.bf16, "batch": self.setting.batch_size, "draws": self.setting.draws,
                  "vote": self.setting.vote, "version": __version__, "revision": REVISION}
        path = None if self.folder is None else self.folder / "cells" / f"{name}-{digest(recipe)}.json"

        def timed() -> dict:
            start = time.perf_counter()
            return {**compute(), "seconds": round(time.perf_counter() - start, 2)}

        if not read:  # computed again, and its record rewritten
            record = {"recipe": recipe, **timed()}
            if path is not None:
                write_record(path, record)
            return record
        return cached(path, recipe, timed, self.log)[0]

    def clean(self, model: Trained) -> Tensor:
        """The model's expected correctness on each clean image, judged once per evaluation."""
        if model.sha256 not in self.cleans:
            every = torch.arange(len(self.y), device=self.x.device)
            size = self.setting.batch_size
            self.cleans[model.sha256] = torch.cat([self.judge(model, self.x[i:i + size], every[i:i + size])
                                                   for i in range(0, len(self.y), size)])
        return self.cleans[model.sha256]

    def accuracy(self, model: Trained, x: Tensor) -> float:
        """The model's expected accuracy on images ``x`` (the first len(x) of this evaluation's)."""
        return self.judge(model, x, torch.arange(len(x), device=x.device)).mean().item()

    def attack(self, model: Trained, pair: Pair, x: Tensor, y: Tensor, eps: float, tag: object,
               trace: list | None = None) -> Tensor:
        """``pair`` on ``model`` for one batch: the source and generator seeded by what it serves."""
        seed = seed_of(self.setting.seed, model.sha256, pair.name, eps, tag)
        source = estimators.make(pair.estimator, model.net, model.snn, seed=seed)
        gen = runtime.generator(seed, x.device)
        with runtime.autocast(self.setting.bf16, x.device):
            if trace is not None:  # the curves' APGD-CE keeps its loss trace for the masking check
                return apgd.apgd(source, x, y, eps / 255, pair.steps, generator=gen, trace=trace,
                                 norm=self.setting.suite.norm).float()
            return registry.get(pair.attack).run(source, x, y, eps / 255, steps=pair.steps, generator=gen,
                                                 restarts=pair.restarts).float()

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="pass", leave=False, dynamic_ncols=True)

    @staticmethod
    def _advance(bar: tqdm) -> Callable[[int, int], None]:
        """A worst case's ``progress(done, left)`` on ``bar``: the total shrinks as images are broken."""
        def progress(done: int, left: int) -> None:
            bar.total = bar.n + done + left
            bar.update(done)

        return progress

    # --- units -----------------------------------------------------------------------------------------

    def ensemble(self, model: Trained, eps: float, before: dict | None = None) -> dict:
        """The worst case over the suite's pairs at ``eps`` (:func:`.suite.worst_case`), starting from
        ``before``, the record at the grid's previous eps (its adversarial images lie in this ball too:
        an image broken there stays broken, and only images some draw still gets right are attacked)."""
        pairs, grid = self.setting.suite.pairs(model.snn, model.net), self.setting.eps
        prefix = [e for e in grid if e <= eps]

        def compute() -> dict:
            start = None if before is None else torch.tensor(before["p"], device=self.x.device)
            with self._bar(len(self.y) * sum(p.work for p in pairs), f"{model.name} eps {eps:g}") as bar:
                result = worst_case(pairs, self.x, self.y, lambda v, idx: self.judge(model, v, idx),
                                    lambda pair, xb, yb, b: self.attack(model, pair, xb, yb, eps, b),
                                    self.setting.batch_size, self.setting.suite.prune, self._advance(bar), start,
                                    self.clean(model), each=self.keep == "pairs")
            self.by_pair[(model.sha256, eps)] = {p.name: a for p, a in zip(pairs, result.each)}
            adv = result.adv
            if before is not None and self.keep:  # an image no pair improved keeps the smaller eps's input
                kept = result.p >= torch.tensor(before["p"], device=self.x.device)
                adv = torch.where(kept.view(-1, *[1] * (adv.dim() - 1)), self.adversarial[(model.sha256, prefix[-2])], adv)
            if self.keep:
                self.adversarial[(model.sha256, eps)] = adv
            delta = (adv - self.x).flatten(1)
            linf, l2 = delta.abs().amax(1) * 255, delta.norm(dim=1)
            if before is not None:  # the adversarial images carried from the smaller eps keep their size
                kept = result.p >= torch.tensor(before["p"], device=self.x.device)
                linf = torch.where(kept, torch.tensor(before["linf"], device=self.x.device), linf)
                l2 = torch.where(kept, torch.tensor(before["l2"], device=self.x.device), l2)
            stats = [{**asdict(p), "name": p.name, "ran": r, "fooled": f, "won": w, "seconds": s}
                     for p, r, f, w, s in zip(pairs, result.ran, result.fooled, result.won, result.seconds)]
            for pair in stats:
                self.log(f"  {model.name} eps {eps:g}: {pair['name']}: broke {pair['fooled']} of {pair['ran']} "
                         f"images ({pair['won']} first) in {pair['seconds']:.0f} s")
            return {"clean": _rounded(result.clean), "p": _rounded(result.p), "winner": result.winner.tolist(), "pairs": stats,
                    "linf": _rounded(linf), "l2": _rounded(l2)}

        return self._unit(f"{model.name}-eps{eps:g}", {"unit": "ensemble", "model": model.sha256, "eps": eps,
                                                        "grid": prefix, "pairs": [p.name for p in pairs],
                                                        "prune": self.setting.suite.prune}, compute,
                          read=not self.keep)

    def sweep(self, model: Trained) -> dict[float, dict]:
        """The ensemble at every eps of the grid, smallest first, each starting where the last left off."""
        out, before = {}, None
        for eps in self.setting.eps:
            out[eps] = before = self.ensemble(model, eps, before)
        return out

    def null(self, model: Trained) -> dict:
        """The null attack through the identical pipeline (judge, ensemble, batches): the image itself
        (eps 0), and uniformly random +-eps signs at each eps of the grid. With common random numbers the
        first gives exactly the clean accuracy; a noisy judge shows here as accuracy lost to nothing."""
        source = self.setting.suite.pairs(model.snn, model.net)[0].estimator

        def run(attack: str, eps: float) -> float:
            result = worst_case((Pair(source, attack, 1),), self.x, self.y, lambda v, idx: self.judge(model, v, idx),
                                lambda pair, xb, yb, b: self.attack(model, pair, xb, yb, eps, ("null", b)),
                                self.setting.batch_size, clean=None if attack == "null" else self.clean(model))
            return result.p.mean().item()

        def compute() -> dict:
            return {"zero": run("null", 0.0), "noise": {f"{e:g}": run(self.setting.suite.noise, e) for e in self.setting.eps}}

        return self._unit(f"{model.name}-null", {"unit": "null", "model": model.sha256, "grid": list(self.setting.eps),
                                                 **self.setting.threat},
                          compute)

    def curves(self, model: Trained, estimator: str) -> dict:
        """Accuracy vs eps and vs steps (APGD-CE) on the first ``curve_images`` images (the unbounded eps
        with the most steps), the loss trace of the longest run and the share of exactly-zero input
        gradients at the clean images."""
        suite, eps = self.setting.suite, self.setting.focus
        x, y = self.x[:suite.curve_images], self.y[:suite.curve_images]
        curve = self.setting.eps_curve(self.x[0].numel())
        longest, unbounded = max(suite.steps_curve), max(curve)
        on_eps = {e: longest if e == unbounded else suite.curve_steps for e in curve}
        points = set(on_eps.items()) | {(eps, s) for s in suite.steps_curve}

        def compute() -> dict:
            acc, per_image, trace = {}, {}, []
            pairs = {point: Pair(estimator, suite.curve_attack, point[1]) for point in points}
            with self._bar(len(y) * sum(p.work for p in pairs.values()), f"{model.name} curves {estimator}") as bar:
                for (e, steps), pair in sorted(pairs.items()):
                    keep = [] if (e, steps) == (eps, longest) else None
                    adv = self.attack(model, pair, x, y, e, "curve", keep)
                    per_image[(e, steps)] = self.judge(model, adv, torch.arange(len(adv), device=adv.device))
                    acc[(e, steps)] = per_image[(e, steps)].mean().item()
                    trace = keep if keep is not None else trace
                    bar.update(len(y) * pair.work)
            source = estimators.make(estimator, model.net, model.snn, seed=seed_of(self.setting.seed, "zero"))
            with runtime.autocast(self.setting.bf16, x.device):
                grad = source.grad(x, y).flatten(1)
            return {"eps": {f"{e:g}": acc[(e, steps)] for e, steps in on_eps.items()},
                    "steps": {str(s): acc[(eps, s)] for s in suite.steps_curve}, "trace": trace,
                    "steps_p": {str(s): _rounded(per_image[(eps, s)]) for s in suite.steps_curve},
                    "zero_gradient_images": (grad == 0).all(1).float().mean().item(),
                    "zero_gradient_entries": (grad == 0).float().mean().item()}

        return self._unit(f"{model.name}-curves", {"unit": "curves", "model": model.sha256, "estimator": estimator,
                                                   "eps": eps, "eps_curve": list(curve),
                                                   "steps_curve": list(suite.steps_curve),
                                                   "curve_steps": suite.curve_steps, "unbounded_steps": longest,
                                                   **self.setting.threat},
                          compute)

    def eot(self, model: Trained) -> dict | None:
        """EOT convergence: APGD-CE through BPTT (a model's own autograd where it has no SNN estimator)
        averaged over n and 2n encoder draws (stochastic models only)."""
        if not stochastic(model):
            return None
        suite, eps = self.setting.suite, self.setting.focus
        x, y = self.x[:suite.curve_images], self.y[:suite.curve_images]
        estimator = "ann" if estimators.kind_of(model.net, model.snn) == "ann" else "bptt"

        def compute() -> dict:
            acc = {}
            for n in suite.eot_draws:
                adv = self.attack(model, Pair(f"{estimator}:eot={n}", suite.curve_attack, suite.curve_steps), x, y, eps,
                                  "eot")
                acc[str(n)] = self.accuracy(model, adv)
            return {"estimator": estimator, "acc": acc}

        return self._unit(f"{model.name}-eot", {"unit": "eot", "model": model.sha256, "eps": eps,
                                                "draws": list(suite.eot_draws), "steps": suite.curve_steps,
                                                **self.setting.threat}, compute)

    def converge(self, model: Trained, base: dict, eps: float) -> dict | None:
        """The convergence check (:mod:`spikeadv.attack.convergence`) of the worst case ``base`` (the
        ensemble's record at ``eps``) on its first ``suite.converge`` images: each budget doubled in turn;
        None where the suite claims no bound."""
        suite = self.setting.suite
        if not suite.converge:
            return None
        m, pairs = min(len(self.y), suite.converge), suite.pairs(model.snn, model.net)

        def compute() -> dict:
            p = torch.tensor(base["p"][:m], device=self.x.device)
            with self._bar(0, f"{model.name} convergence eps {eps:g}") as bar:
                return convergence.check(pairs, self.x[:m], self.y[:m], lambda v, idx: self.judge(model, v, idx),
                                         lambda pair, xb, yb, b: self.attack(model, pair, xb, yb, eps, ("converge", b)),
                                         self.setting.batch_size, p, stochastic(model), self._advance(bar))

        return self._unit(f"{model.name}-converge", {"unit": "converge", "model": model.sha256, "eps": eps,
                                                     "pairs": [p.name for p in pairs], "images_checked": m,
                                                     "base": digest(base["p"][:m])}, compute)

    def transfer(self, target: Trained, source: Trained, eps: float) -> dict:
        """Accuracy of ``target`` on the suite's first attack crafted on ``source`` with its first
        estimator (blackbox transfer, paper section V)."""
        pair = self.setting.suite.pairs(source.snn, source.net)[0]

        def compute() -> dict:
            key = (source.sha256, eps)
            if key not in self.transfer_sets:
                parts = [self.attack(source, pair, self.x[i:i + self.setting.batch_size],
                                     self.y[i:i + self.setting.batch_size], eps, ("transfer", i))
                         for i in range(0, len(self.y), self.setting.batch_size)]
                self.transfer_sets[key] = torch.cat(parts)
            return {"acc": self.accuracy(target, self.transfer_sets[key]), "pair": pair.name}

        return self._unit(f"{target.name}-from-{source.name}-eps{eps:g}",
                          {"unit": "transfer", "model": target.sha256, "source": source.sha256, "eps": eps,
                           "pair": pair.name}, compute)

    # --- one model -------------------------------------------------------------------------------------

    def card(self, model: Trained, transfer: list[Trained] = ()) -> dict:
        """Everything evaluated on ``model`` and its masking checks, as a JSON-ready card: the robust
        accuracy at each eps of the grid (the mean worst-case expected correctness), each image's minimal
        perturbation eps* on the grid, their median and the area under the curve, the null attack, the
        curves of the main estimators, EOT, transfer and the checks."""
        suite, focus = self.setting.suite, self.setting.focus
        check_pairs(suite.pairs(model.snn, model.net), estimators.kind_of(model.net, model.snn), model.name)
        start, n = time.perf_counter(), len(self.y)
        sweep = self.sweep(model)
        clean = next(iter(sweep.values()))["clean"]
        by_eps = {f"{eps:g}": {
            "clean_acc": sum(clean) / n, "worst_acc": sum(unit["p"]) / n, "p": unit["p"], "winner": unit["winner"],
            "pairs": unit["pairs"], "linf": unit["linf"], "l2": unit["l2"],
            "transfer": {s.name: self.transfer(model, s, eps)["acc"] for s in transfer} if eps == focus else {},
        } for eps, unit in sweep.items()}
        star = eps_star(clean, [sweep[e]["p"] for e in self.setting.eps], self.setting.eps)
        curves = {e: self.curves(model, e) for e in suite.curve_sources(model.snn, model.net)}
        card = {
            "model": {"name": model.name, "kind": model.kind, "instance": model.instance, "file": model.path.name,
                      "sha256": model.sha256, "runs": runs_as(model), "estimator_kind": estimators.kind_of(model.net, model.snn),
                      **({"neuron": model.snn.neuron, "T": model.snn.T, "encoding": model.snn.encoding,
                          "surrogate": model.snn.surrogate} if model.snn else {})},
            "suite": suite.name, "images": n, "curve_images": min(n, suite.curve_images),
            "judge": {"draws": self.setting.draws if stochastic(model) else 1, "vote": self.setting.vote,
                      "stochastic": stochastic(model)},
            "grid": list(self.setting.eps), "eval_eps": focus, "clean": clean, "clean_acc": sum(clean) / n,
            "eps": by_eps, "eps_star": star, "median_eps_star": median_star(star),
            "auc": auc(sum(clean) / n, [by_eps[f"{e:g}"]["worst_acc"] for e in self.setting.eps], self.setting.eps),
            "null": self.null(model),
            "curves": {e: {k: c[k] for k in ("eps", "steps", "steps_p", "trace", "zero_gradient_images",
                                             "zero_gradient_entries", "seconds") if k in c} for e, c in curves.items()},
            "eot": self.eot(model),
            "convergence": {f"{e:g}": self.converge(model, unit, e) for e, unit in sweep.items()} if suite.converge else None,
            "seed": self.setting.seed, "bf16": self.setting.bf16,
        }
        card["checks"] = checks.as_records(checks.check_card(card))
        card["seconds"] = round(time.perf_counter() - start, 1)
        return card


def _rounded(t: Tensor) -> list[float]:
    return [round(v, 4) for v in t.tolist()]


def eps_star(clean: list[float], worst: list[list[float]], grid: tuple[float, ...]) -> list[float | None]:
    """Per image its minimal L-inf perturbation on the grid: the smallest eps at which the worst case
    brought its expected correctness below 1/2 (0 where it is below 1/2 on the clean image; None where no
    eps of the grid did: beyond the grid)."""
    out = []
    for i, c in enumerate(clean):
        broken = [e for e, p in zip(grid, worst) if p[i] < 0.5]
        out.append(0.0 if c < 0.5 else (float(broken[0]) if broken else None))
    return out


def median_star(star: list[float | None]) -> float | None:
    """The median eps* (None, beyond the grid, where more than half the images were never broken)."""
    ordered = sorted(star, key=lambda s: math.inf if s is None else s)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def auc(clean: float, robust: list[float], grid: tuple[float, ...]) -> float:
    """The area under the robust-accuracy curve from eps 0 (clean accuracy) to the grid's largest eps,
    trapezoidal in eps, divided by that eps: the mean robust accuracy over [0, eps_max]."""
    xs, ys = (0.0, *grid), (clean, *robust)
    return sum((b - a) * (u + v) / 2 for a, b, u, v in zip(xs, xs[1:], ys, ys[1:])) / grid[-1]
