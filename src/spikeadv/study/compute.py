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
from .judge import Judge, classes, expected, stochastic
from .plan import Job


def _batches(n: int, size: int) -> Iterator[tuple[int, slice]]:
    yield from enumerate(slice(i, min(i + size, n)) for i in range(0, n, size))


def judge_of(study: StudyConfig) -> Judge:
    """How the study judges a model's predictions: K draws (or their majority), seeded by the study."""
    return Judge(study.draws, study.vote, study.seed, study.batch_size, study.bf16)


def judged(model: Trained, x: Tensor, y: Tensor, study: StudyConfig) -> Tensor:
    """Per image, the model's expected correctness on ``x`` (:func:`.judge.expected`): image i of the
    attacked set is judged on the same K encoder draws whatever input it is given, so the clean and
    every adversarial evaluation of it are paired."""
    return expected(model, x, y, torch.arange(len(x), device=x.device), judge_of(study))


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
         clean: Tensor, study: StudyConfig) -> list[dict]:
    """The result row of one adversarial set on one target (DESIGN "Metrics"), the target judged by its
    expected correctness over K encoder draws (:func:`judged`): accuracies in percent, loss = clean -
    adversarial accuracy (pp, the paper's metric), success rate over the images the target gets right
    (p >= 1/2) that the attack breaks (p < 1/2), target hit rate (targeted attacks), mean true L-inf
    (1/255) and L2 and the share of images left unperturbed or under 99% of eps; per image
    (:mod:`outcomes`) whether the target was right (p >= 1/2), its correct draws out of K (stochastic
    targets), the true L-inf and L2, and for targeted attacks its predicted class and whether that was
    the target (on draw 0 for a stochastic target)."""
    delta = (adv - x).flatten(1)
    linf, l2 = delta.abs().amax(1) * 255, delta.norm(dim=1)
    p = judged(target, adv, y, study)
    right, broken = clean >= 0.5, p < 0.5
    k = study.draws if stochastic(target) else 1
    row = {
        "target": target.kind, "source_kind": job.source, "source_instance": job.instance,
        "scenario": job.scenario(), "gradient": job.gradient, "attack": job.attack, "eps": job.eps,
        "steps": job.steps, "repeat": 0, "n": len(y), "draws": k, "vote": study.vote,
        "clean_acc": round(100.0 * clean.mean().item(), 4), "adv_acc": round(100.0 * p.mean().item(), 4),
        "loss": round(100.0 * (clean.mean() - p.mean()).item(), 4),
        "success_rate": round(100.0 * (right & broken).sum().item() / max(1, right.sum().item()), 4),
        "target_hit_rate": None, "linf": round(linf.mean().item(), 4), "l2": round(l2.mean().item(), 5),
        "unperturbed": round((linf == 0).float().mean().item(), 4),
        "under_budget": round((linf < 0.99 * job.eps).float().mean().item(), 4),
        "correct": outcomes.pack((~broken).cpu().numpy()),
        "linf_image": outcomes.pack_halves(linf.cpu().numpy()), "l2_image": outcomes.pack_halves(l2.cpu().numpy()),
        **({"hits": outcomes.pack_classes((p * k).round().cpu().numpy())} if k > 1 else {}),
    }
    if aim is not None:
        pred = classes(target, adv, torch.arange(len(y), device=y.device), judge_of(study))
        row.update(target_hit_rate=round(100.0 * (pred == aim).float().mean().item(), 4),
                   pred=outcomes.pack_classes(pred.cpu().numpy()), hit=outcomes.pack((pred == aim).cpu().numpy()))
    return [row]


def clean_predictions(target: Trained, x: Tensor, y: Tensor, study: StudyConfig, folder: Path,
                      can_write: bool = True, log: Callable[[str], None] = print) -> tuple[Tensor, dict]:
    """A target's expected correctness per clean image (:func:`judged`; cached by model hash and judge,
    with an integrity digest: an edited or corrupted file is recomputed), and where it is: ``path``, the
    ``seconds`` it took and whether it was ``reused``."""
    recipe = {"model": target.sha256, "T": target.snn.T if target.snn else None, "images": len(x),
              "labels": digest(y.tolist()), "draws": study.draws if stochastic(target) else 1, "vote": study.vote,
              "seed": study.seed, "bf16": study.bf16, "batch": study.batch_size, "version": __version__}
    path = folder / f"{target.name}-{digest(recipe)}.json"

    def predictions() -> dict:
        start = time.perf_counter()
        return {"p": judged(target, x, y, study).tolist(), "seconds": round(time.perf_counter() - start, 2), "device": str(x.device),
                "neurons": backend_on(x.device)}

    saved, reused = cached(path, recipe, predictions, log, None if can_write else (
        f"{folder.parent} is read-only and the clean predictions of {target.name} need computing; make it "
        "writable or pass another --out"))
    return (torch.tensor(saved["p"], device=x.device),
            {"path": path, "seconds": saved["seconds"], "reused": reused})
