"""The study: the paper's whole experiment grid (section V, Table III; DESIGN section 2 "Scenarios").

Six models (ann, snn1, snn2 x instances 0 and 1), attacks crafted from every one of them, and every
target evaluated whitebox and under the three blackbox scenarios:

- whitebox: target K (instance 0) attacked by inputs crafted from itself;
- ``bb-K``: every target attacked by inputs crafted from K's instance 1.

A run directory holds everything, each artifact named by the hash of the recipe that makes it, so a
rerun reuses what exists and an interrupted run resumes where it stopped::

    run.json                 the config, the models, stage wall times (written atomically)
    models/<kind><i>-<key>   checkpoints (training resumes epoch-wise)
    clean/<kind>-<key>.json  clean predictions of each target per encoder seed
    cells/<key>.json         one crafting job: its recipe and a result row per target and repeat
    results.jsonl            the tidy table (report.COLUMNS), gathered from cells/
    report/                  Table I, Fig. 2-4, Markdown and HTML (report.py)

An adversarial set is not stored: its recipe (source checkpoint hash, gradient, attack, eps, steps,
seeds) in the cell file regenerates it exactly.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from . import __version__, attacks, checkpoint, data, outcomes, sources
from .arch import Network
from .errors import SpikeAdvError
from .neurons import Spiking
from .presets import Preset, StudyConfig, as_dict
from .train import autocast

KINDS = ("ann", "snn1", "snn2")
EXTRA_ATTACKS = (("fgsm", 1), ("ifgsm", 2))  # crafted with every further gradient source


def digest(recipe: object) -> str:
    """A short content address: the SHA-256 of a recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def seed_of(*parts: object) -> int:
    """A 63-bit seed derived from a recipe, so every random draw is fixed by what it serves."""
    return int(digest(parts), 16) >> 1


# ---------------------------------------------------------------- models


@dataclass
class Model:
    """One trained model of the study, loaded, with how it runs (``snn`` None for the ANN)."""

    kind: str
    instance: int
    net: Network
    snn: Spiking | None
    path: Path
    sha256: str
    meta: dict

    @property
    def name(self) -> str:
        return f"{self.kind}{self.instance}"


def _recipe(kind: str, preset: Preset, seed: int, train_ds: data.Dataset, test_ds: data.Dataset) -> dict:
    """What determines a trained model's weights (and the data its checkpoint records)."""
    net = {"dataset": preset.dataset, "spec": preset.spec, "width": preset.width, "dropout": preset.dropout,
           "batchnorm": preset.batchnorm, "train": as_dict(preset.ann)}
    if kind == "snn2":
        net = {"dataset": preset.dataset, "spec": preset.spec, "width": preset.snn2.width or preset.width,
               "snn2": as_dict(preset.snn2)}
    return {"kind": kind, **net, "seed": seed, "data": [train_ds.digest, test_ds.digest]}


def models(
    preset: Preset, folder: Path, train_ds: data.Dataset, test_ds: data.Dataset, log: Callable[[str], None] = print,
) -> tuple[dict[tuple[str, int], Model], dict[str, float]]:
    """Train (or reuse) ann and snn2 and convert snn1 from ann, one instance per preset seed.
    Returns the models and the seconds each took to build (from the checkpoints, so reused models
    report the time they took when they were made)."""
    from .convert import convert_file
    from .train import fit

    out: dict[tuple[str, int], Model] = {}
    seconds: dict[str, float] = {}
    study = preset.study
    for instance, seed in enumerate(preset.seeds):
        for kind in ("ann", "snn2", "snn1"):
            if kind == "snn1":
                parent = out[("ann", instance)]
                key = digest({"kind": "snn1", "convert": as_dict(preset.snn1), "parent": parent.sha256, "seed": seed})
            else:
                key = digest(_recipe(kind, preset, seed, train_ds, test_ds))
            path = folder / f"{kind}{instance}-{key}.safetensors"
            meta = checkpoint.load(path)[1] if path.exists() else {}
            if kind == "snn1" and not meta:
                convert_file(parent.path, preset, train_ds, test_ds, seed, path)
            elif kind != "snn1" and not meta.get("complete"):
                fit(kind, preset, seed, path, train_ds, test_ds, resume=True, log=log)
            else:
                log(f"reusing {path.name}")
            net, meta = checkpoint.load_model(path)
            snn = checkpoint.spiking(meta, T=study.snn1_T if kind == "snn1" else None)
            seconds[f"{kind}{instance}"] = meta["seconds"] if kind == "snn1" else sum(
                m["seconds"] for m in meta["metrics"])
            out[(kind, instance)] = Model(kind, instance, net, snn, path, checkpoint.file_digest(path), meta)
    return out, seconds


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Job:
    """One adversarial set: crafted from ``source`` instance ``instance`` with ``gradient`` and evaluated
    on ``targets``. Instance 0 crafts whitebox inputs (for itself), instance 1 blackbox inputs."""

    source: str
    instance: int
    gradient: str
    attack: str
    eps: int
    steps: int
    targets: tuple[str, ...]

    def scenario(self) -> str:
        return "whitebox" if self.instance == 0 else f"bb-{self.source}"

    def __str__(self) -> str:
        steps = f"-{self.steps}" if self.attack in attacks.ITERATIVE else ""
        return f"{self.source}{self.instance}/{self.gradient} {self.attack}{steps} eps {self.eps}"


def main_gradients(study: StudyConfig) -> dict[str, str]:
    """The paper's gradient per source kind: exact for the ANN, SNNAdv (Algorithm 2) for SNNs."""
    return {k: "ann" if k == "ann" else study.gradients[0] for k in KINDS}


def bounded_kinds(preset: Preset) -> frozenset[str]:
    """SNN kinds whose faithful SNNAdv is already eps-bounded: under direct (analog) encoding the rate
    image X_rate is the image itself, so ``snnadv`` and ``snnadv-clean`` craft the same inputs."""
    return frozenset(k for k, c in (("snn1", preset.snn1), ("snn2", preset.snn2)) if c.encoding == "direct")


def grid(study: StudyConfig, bounded: frozenset[str] = frozenset()) -> list[Job]:
    """Every crafting job of the study (paper Table III and Figs. 2-4):

    - Fig. 2/3: each of ``attacks`` (paper: FGSM, R-FGSM, I-FGSM and targeted I-FGSM with 2 steps) at
      each eps, from every kind's instance 0 (whitebox, on itself) and instance 1 (blackbox, on all
      three targets);
    - Fig. 4: (targeted) I-FGSM with each of ``fig4_steps`` at each of ``fig4_eps`` on the SNN-II
      target, whitebox and crafted by SNN-II and ANN instance 1;
    - with ``snnadv-clean`` among ``gradients``: all of the above from SNN sources once more with the
      eps-bounded SNNAdv (the faithful one perturbs the rate image, DESIGN "Gradient sources"), except
      for the ``bounded`` kinds, whose faithful SNNAdv is eps-bounded already;
    - every further gradient source (e.g. BPTT): FGSM and 2-step I-FGSM at ``extra_eps``, whitebox on
      each SNN."""
    wanted: dict[tuple, set[str]] = {}

    def add(source: str, instance: int, gradient: str, attack: str, steps: int, eps: int, targets) -> None:
        wanted.setdefault((source, instance, gradient, attack, eps, steps), set()).update(targets)

    main = main_gradients(study)
    variants = {k: (main[k], "snnadv-clean") if k != "ann" and k not in bounded and "snnadv-clean" in study.gradients
                else (main[k],) for k in KINDS}
    for kind in KINDS:
        for gradient in variants[kind]:
            for instance, targets in ((0, (kind,)), (1, KINDS)):
                for attack in study.attacks:
                    for eps in study.eps:
                        add(kind, instance, gradient, attack, study.steps if attack in attacks.ITERATIVE else 1,
                            eps, targets)
    for kind, instance in (("snn2", 0), ("snn2", 1), ("ann", 1)):
        for gradient in variants[kind]:
            for attack in ("ifgsm", "tifgsm"):
                for steps in study.fig4_steps:
                    for eps in study.fig4_eps:
                        add(kind, instance, gradient, attack, steps, eps, ("snn2",))
    for gradient in study.gradients[1:]:
        if gradient == "snnadv-clean":  # crafted for the whole grid above, where it differs from snnadv
            continue
        for kind in ("snn1", "snn2"):
            for attack, steps in EXTRA_ATTACKS:
                for eps in study.extra_eps:
                    add(kind, 0, gradient, attack, steps, eps, (kind,))
    return [Job(*key[:3], key[3], key[4], key[5], tuple(t for t in KINDS if t in targets))
            for key, targets in wanted.items()]


# ---------------------------------------------------------------- running models and attacks


def _batches(n: int, size: int) -> Iterator[tuple[int, slice]]:
    yield from enumerate(slice(i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def predict(model: Model, x: Tensor, study: StudyConfig, repeat: int) -> Tensor:
    """Predicted classes of ``x``; an SNN's encoder is seeded by (study seed, repeat, batch), so the clean
    and adversarial evaluations of one repeat see the same random draws (paired comparisons)."""
    out = []
    with autocast(study.bf16):
        for b, part in _batches(len(x), study.batch_size):
            if model.snn is None:
                logits = model.net(x[part])
            else:
                gen = torch.Generator().manual_seed(seed_of(study.seed, "eval", repeat, b))
                logits = model.net(x[part], model.snn, gen)
            out.append(logits.argmax(1))
    return torch.cat(out)


def repeats(model: Model, study: StudyConfig) -> int:
    """Evaluations per target: ``study.repeats`` encoder seeds for Poisson-coded SNNs, one for the
    deterministic ones (the ANN, direct-encoded SNNs)."""
    return study.repeats if model.snn is not None and model.snn.encoding == "poisson" else 1


def random_targets(y: Tensor, classes: int, study: StudyConfig) -> Tensor:
    """The paper's random targets (II-C): one class != y per image, the same for every source model."""
    return attacks.targets(y, classes, "random", torch.Generator().manual_seed(seed_of(study.seed, "targets")))


def craft(job: Job, model: Model, x: Tensor, y: Tensor, goal: Tensor, study: StudyConfig) -> tuple[Tensor, Tensor | None]:
    """The adversarial set of one job, batch by batch, and its targets (targeted attack only: ``goal``,
    the random targets, or the source's least-likely classes). Every random draw (SNN encoder, R-FGSM
    noise, PGD start) is seeded by the job's recipe and the batch index."""
    out, aims = [], []
    for b, part in _batches(len(x), study.batch_size):
        seed = seed_of(study.seed, str(job), b)
        source = sources.make(job.gradient, model.net, model.snn, seed=seed, eot_n=study.eot if model.snn else 1)
        gen = torch.Generator().manual_seed(seed)
        xb, yb, eps = x[part], y[part], job.eps / 255
        with autocast(study.bf16):
            if job.attack == "fgsm":
                adv = attacks.fgsm(source, xb, yb, eps)
            elif job.attack == "rfgsm":
                adv = attacks.rfgsm(source, xb, yb, eps, gen)
            elif job.attack == "pgd":
                adv = attacks.pgd(source, xb, yb, eps, job.steps, generator=gen)
            elif job.attack == "ifgsm":
                adv = attacks.ifgsm(source, xb, yb, eps, job.steps)
            else:
                aim = goal[part]
                if study.target == "least-likely":
                    with torch.no_grad():
                        aim = attacks.targets(yb, model.net.classes, study.target, gen, source.logits(xb))
                adv = attacks.ifgsm(source, xb, yb, eps, job.steps, target=aim)
                aims.append(aim)
        out.append(adv.float())
    return torch.cat(out), torch.cat(aims) if aims else None


def rows(job: Job, target: Model, x: Tensor, y: Tensor, adv: Tensor, aim: Tensor | None,
         clean: list[Tensor], study: StudyConfig) -> list[dict]:
    """The result rows of one adversarial set on one target, one per evaluation repeat (DESIGN
    "Metrics"): accuracies in percent, loss = clean - adversarial accuracy (pp), success rate over the
    initially correct images, target hit rate (targeted attacks), mean true L-inf (1/255) and L2; and
    per image (:mod:`outcomes`) whether the target was right and, for targeted attacks, its predicted
    class and whether that was the target."""
    delta = (adv - x).flatten(1)
    linf = round(delta.abs().amax(1).mean().item() * 255, 4)
    l2 = round(delta.norm(dim=1).mean().item(), 5)
    out = []
    for r in range(repeats(target, study)):
        pred = predict(target, adv, study, r)
        correct = clean[r] == y
        clean_acc = 100.0 * correct.float().mean().item()
        adv_acc = 100.0 * (pred == y).float().mean().item()
        fooled = (correct & (pred != y)).sum().item()
        out.append({
            "target": target.kind, "source_kind": job.source, "source_instance": job.instance,
            "scenario": job.scenario(), "gradient": job.gradient, "attack": job.attack, "eps": job.eps,
            "steps": job.steps, "repeat": r, "n": len(y), "clean_acc": round(clean_acc, 4),
            "adv_acc": round(adv_acc, 4), "loss": round(clean_acc - adv_acc, 4),
            "success_rate": round(100.0 * fooled / max(1, correct.sum().item()), 4),
            "target_hit_rate": None if aim is None else round(100.0 * (pred == aim).float().mean().item(), 4),
            "linf": linf, "l2": l2, "correct": outcomes.pack((pred == y).numpy()),
            **({} if aim is None else {"pred": outcomes.pack_classes(pred.numpy()),
                                       "hit": outcomes.pack((pred == aim).numpy())}),
        })
    return out


# ---------------------------------------------------------------- the run directory


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({json.dumps(old)} -> {json.dumps(new)})"]


def identity(preset: Preset) -> dict:
    """What a run directory is for: the version of this program and the whole preset (as JSON)."""
    return json.loads(json.dumps({"version": __version__, "preset": as_dict(preset)}))


def open_run(out: Path, preset: Preset) -> dict:
    """The run directory's record; a directory made for another config or version is refused, untouched."""
    path = out / "run.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpikeAdvError(f"{path} is not valid JSON ({e}); move it away or choose another --out") from None
    old = {"version": meta.get("version"), "preset": meta.get("preset")}
    diff = _differences(old, identity(preset))
    if diff:
        shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise SpikeAdvError(f"{out} holds a run with another config: {shown}. Nothing was changed; "
                            "rerun with the same preset and --set values, or pass another --out")
    return meta


def _json(path: Path) -> dict | None:
    """A finished artifact (JSON), or None when it is missing or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


@dataclass
class Stages:
    """Wall time per stage; artifacts reused from an earlier call keep the time they took when made."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + value, 2)


def clean_predictions(target: Model, x: Tensor, y: Tensor, study: StudyConfig, folder: Path) -> tuple[list[Tensor], float]:
    """Clean predictions of a target per repeat (cached by model hash and evaluation recipe)."""
    recipe = {"model": target.sha256, "T": target.snn.T if target.snn else None, "images": len(x),
              "labels": digest(y.tolist()), "repeats": repeats(target, study), "seed": study.seed,
              "bf16": study.bf16, "batch": study.batch_size, "version": __version__}
    path = folder / f"{target.name}-{digest(recipe)}.json"
    saved = _json(path)
    if saved is None or saved.get("recipe") != recipe:
        start = time.perf_counter()
        preds = [predict(target, x, study, r).tolist() for r in range(recipe["repeats"])]
        saved = {"recipe": recipe, "preds": preds, "seconds": round(time.perf_counter() - start, 2)}
        checkpoint.write_json(path, saved)
    return [torch.tensor(p) for p in saved["preds"]], saved["seconds"]


STAGE = {"ann": "train ANN", "snn2": "train SNN-II", "snn1": "convert SNN-I"}


def run(preset: Preset, out: Path, root: Path | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """The whole study of ``preset`` in ``out``: models, clean accuracy (Table I), every job of
    :func:`grid` on its targets, ``results.jsonl`` and the report. Returns the report's files."""
    from .report import write_report

    call = time.perf_counter()
    meta = open_run(out, preset)
    study = preset.study
    data.ensure(preset.dataset, root, log)
    train_ds = data.load(preset.dataset, "train", root)
    test_ds = data.load(preset.dataset, "test", root)
    test_ds = test_ds.subset(preset.test_subset) if preset.test_subset else test_ds
    if study.images > len(test_ds):
        raise SpikeAdvError(f"study.images = {study.images} exceeds the {len(test_ds)} test images of the preset")
    x = data.to_float(test_ds.images[:study.images])
    y = test_ds.labels[:study.images].long()
    bounded = bounded_kinds(preset)
    record = {**identity(preset), "gradients": main_gradients(study), "eps_bounded_snnadv": sorted(bounded),
              "labels": digest(y.tolist()), "versions": checkpoint.versions(),
              "command": checkpoint.command_line(), "data": {"train": train_ds.digest, "test": test_ds.digest},
              "models": meta.get("models", []), "stages": meta.get("stages", {}), "complete": False}
    checkpoint.write_json(out / "run.json", record)  # first: a later call checks its config against this
    stages = Stages()

    built, seconds = models(preset, out / "models", train_ds, test_ds, log)
    for name, s in seconds.items():
        stages.add(STAGE[name[:-1]], s)
    clean: dict[tuple[str, int], list[Tensor]] = {}
    record["models"] = []
    for (kind, instance), model in built.items():
        clean[(kind, instance)], s = clean_predictions(model, x, y, study, out / "clean")
        stages.add("clean eval", s)
        accs = [100.0 * (p == y).float().mean().item() for p in clean[(kind, instance)]]
        test_acc = [m["test_acc"] for m in model.meta.get("metrics", []) if "test_acc" in m]
        record["models"].append({
            "kind": kind, "instance": instance, "clean_acc": round(statistics.fmean(accs), 3),
            "clean_std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0, "repeats": len(accs),
            "T": model.snn.T if model.snn else None, "images": len(y), "path": str(model.path.relative_to(out)),
            "sha256": model.sha256, "seed": model.meta.get("seed"), "checkpoint_test_acc": test_acc[-1] if test_acc else None,
            "build_seconds": round(seconds[model.name], 1),
            "encoding": model.snn.encoding if model.snn else None,
            "augmentation": built[("ann" if kind == "snn1" else kind, instance)].meta.get("augmentation"),
            "clean_correct": [outcomes.pack((p == y).numpy()) for p in clean[(kind, instance)]],
        })
    log("clean accuracy: " + ", ".join(f"{m['kind']}{m['instance']} {m['clean_acc']:.1f}%" for m in record["models"])
        + f" on {len(y)} test images")

    targets = {k: built[(k, 0)] for k in KINDS}
    goal = random_targets(y, built[("ann", 0)].net.classes, study)
    fixed = {k: getattr(study, k) for k in ("seed", "eot", "target", "batch_size", "bf16", "repeats")}
    jobs, results, reused, labels = grid(study, bounded), [], 0, record["labels"]
    start = time.perf_counter()
    bar = tqdm(jobs, desc="attacks", unit="set", dynamic_ncols=True, mininterval=1.0)
    for job in bar:
        bar.set_postfix_str(str(job), refresh=False)
        recipe = {"job": asdict(job), "source": built[(job.source, job.instance)].sha256,
                  "targets": [targets[t].sha256 for t in job.targets], "study": fixed, "images": len(y),
                  "labels": labels, "version": __version__}
        recipe = json.loads(json.dumps(recipe))  # as it reads back from disk (tuples become lists)
        path = out / "cells" / f"{digest(recipe)}.json"
        saved = _json(path)
        if saved is None or saved.get("recipe") != recipe:
            t0 = time.perf_counter()
            adv, aim = craft(job, built[(job.source, job.instance)], x, y, goal, study)
            t1 = time.perf_counter()
            found = [row for t in job.targets
                     for row in rows(job, targets[t], x, y, adv, aim, clean[(t, 0)], study)]
            saved = {"recipe": recipe, "rows": found,
                     "seconds": {"craft": round(t1 - t0, 3), "evaluate": round(time.perf_counter() - t1, 3)}}
            checkpoint.write_json(path, saved)
        else:
            reused += 1
        stages.add("craft", saved["seconds"]["craft"])
        stages.add("evaluate", saved["seconds"]["evaluate"])
        results += saved["rows"]
    bar.close()
    log(f"attacks: {len(jobs)} adversarial sets ({len(jobs) - reused} crafted, {reused} reused), "
        f"{len(results)} result rows, {time.perf_counter() - start:.0f} s this call")
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in results)
    checkpoint.atomic_write(out / "results.jsonl", lambda tmp: tmp.write_text(text))

    record.update(stages=stages.seconds, complete=True)
    checkpoint.write_json(out / "run.json", record)
    t0 = time.perf_counter()
    written = write_report(out)
    record.update(report_seconds=round(time.perf_counter() - t0, 2),
                  this_call_seconds=round(time.perf_counter() - call, 1))
    checkpoint.write_json(out / "run.json", record)
    return written
