"""The study's computations on loaded models (:class:`spikeadv.models.trained.Trained`): clean
predictions, one adversarial set crafted and its result rows (with per-image outcomes) on each target."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from .. import runtime
from ..attack import attacks, estimators, registry
from ..config.presets import StudyConfig
from ..models.neurons import backend_on
from ..models.trained import Trained
from ..records import cached, outcomes
from ..records.provenance import __version__, digest, seed_of
from .plan import Job


def _batches(n: int, size: int) -> Iterator[tuple[int, slice]]:
    yield from enumerate(slice(i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def predict(model: Trained, x: Tensor, study: StudyConfig, repeat: int) -> Tensor:
    """Predicted classes of ``x``; an SNN's encoder is seeded by (study seed, repeat, batch), so the clean
    and adversarial evaluations of one repeat see the same random draws (paired comparisons)."""
    out = []
    with runtime.autocast(study.bf16, x.device):
        for b, part in _batches(len(x), study.batch_size):
            if model.snn is None:
                logits = model.net(x[part])
            else:
                gen = runtime.generator(seed_of(study.seed, "eval", repeat, b), x.device)
                logits = model.net(x[part], model.snn, gen)
            out.append(logits.argmax(1))
    return torch.cat(out)


def repeats(model: Trained, study: StudyConfig) -> int:
    """Evaluations per target: ``study.repeats`` encoder seeds for Poisson-coded SNNs, one for the
    deterministic ones (the ANN, direct-encoded SNNs)."""
    return study.repeats if model.snn is not None and model.snn.encoding == "poisson" else 1


def random_targets(y: Tensor, classes: int, study: StudyConfig) -> Tensor:
    """The paper's random targets (II-C): one class != y per image, the same for every source model,
    drawn on the labels' device (the study draws them from its CPU labels: part of its data, the same
    targets on every device, so a run resumed on another device attacks the same targets)."""
    return attacks.targets(y, classes, "random", runtime.generator(seed_of(study.seed, "targets"), y.device))


def craft(job: Job, model: Trained, x: Tensor, y: Tensor, goal: Tensor, study: StudyConfig) -> tuple[Tensor, Tensor | None]:
    """The adversarial set of one job, batch by batch, and its targets (targeted attack only: ``goal``,
    the random targets, or the source's least-likely classes). Every random draw (SNN encoder, R-FGSM
    noise, PGD start) is seeded by the job's recipe and the batch index."""
    out, aims = [], []
    for b, part in _batches(len(x), study.batch_size):
        seed = seed_of(study.seed, job.seed_key(), b)
        source = estimators.make(job.gradient, model.net, model.snn, seed=seed, eot_n=study.eot if model.snn else 1)
        gen = runtime.generator(seed, x.device)
        xb, yb, eps = x[part], y[part], job.eps / 255
        attack, aim = registry.get(job.attack), None
        with runtime.autocast(study.bf16, x.device):
            if attack.targeted:
                aim = goal[part]
                if study.target == "least-likely":
                    with torch.no_grad():
                        aim = attacks.targets(yb, model.net.classes, study.target, gen, source.logits(xb))
                aims.append(aim)
            adv = attack.run(source, xb, yb, eps, steps=job.steps, generator=gen, target=aim)
        out.append(adv.float())
    return torch.cat(out), torch.cat(aims) if aims else None


def rows(job: Job, target: Trained, x: Tensor, y: Tensor, adv: Tensor, aim: Tensor | None,
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
            "linf": linf, "l2": l2, "correct": outcomes.pack((pred == y).cpu().numpy()),
            **({} if aim is None else {"pred": outcomes.pack_classes(pred.cpu().numpy()),
                                       "hit": outcomes.pack((pred == aim).cpu().numpy())}),
        })
    return out


def clean_predictions(target: Trained, x: Tensor, y: Tensor, study: StudyConfig, folder: Path,
                      can_write: bool = True, log: Callable[[str], None] = print) -> tuple[list[Tensor], dict]:
    """Clean predictions of a target per repeat (cached by model hash and evaluation recipe, with an
    integrity digest: an edited or corrupted file is recomputed), and where they are: ``path``, the
    ``seconds`` they took and whether they were ``reused``."""
    recipe = {"model": target.sha256, "T": target.snn.T if target.snn else None, "images": len(x),
              "labels": digest(y.tolist()), "repeats": repeats(target, study), "seed": study.seed,
              "bf16": study.bf16, "batch": study.batch_size, "version": __version__}
    path = folder / f"{target.name}-{digest(recipe)}.json"

    def predictions() -> dict:
        start = time.perf_counter()
        preds = [predict(target, x, study, r).tolist() for r in range(recipe["repeats"])]
        return {"preds": preds, "seconds": round(time.perf_counter() - start, 2), "device": str(x.device),
                "neurons": backend_on(x.device)}

    saved, reused = cached(path, recipe, predictions, log, None if can_write else (
        f"{folder.parent} is read-only and the clean predictions of {target.name} need computing; make it "
        "writable or pass another --out"))
    return ([torch.tensor(p, device=x.device) for p in saved["preds"]],
            {"path": path, "seconds": saved["seconds"], "reused": reused})
