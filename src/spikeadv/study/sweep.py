"""Robustness against T and encoding (``spikeadv sweep``, DESIGN section 8.5): per kind, robust accuracy
(the study's primary metric) at a few eps against the number of timesteps.

The models: the preset's ANN (one line across every T), and at each T of ``sweep.T`` SNN-II trained at
that T and the noise-matched ANN trained on the Poisson rate image of that T; at each T of
``sweep.snn1_T`` SNN-I converted from the ANN and run on Poisson input (reset by subtraction, and
signed) and on direct input. Each is attacked whitebox by PGD through its own gradient (the ANN's
exact one; BPTT with the straight-through encoder otherwise) and judged like the study (expected
correctness over K encoder draws with common random numbers). Every model file and every point is
named by the hash of what determines it, so a rerun reuses what exists and a run killed at any point
resumes with identical results; ``sweep.json`` gathers the points and the report draws its figure
from that file alone."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import data, runtime
from ..config.presets import Preset, as_dict
from ..errors import SpikeAdvError
from ..models.convert import convert_file
from ..models.kinds import fit
from ..models.network import Network
from ..models.trained import Trained, load_network, model_digest, spiking
from ..records import atomic_write, cached
from ..records.provenance import __version__, digest, versions
from . import compute
from .plan import Job, model_recipe
from .rundir import lock

SERIES = ("ann", "snn2", "ann-rate", "snn1", "snn1-signed", "snn1-direct")  # the figure's lines


@dataclass(frozen=True)
class Point:
    """One model of the sweep: ``series`` (a line of the figure) at ``T`` timesteps (None: the ANN),
    built from ``preset`` (the sweep's preset with that T) as ``kind``."""

    series: str
    T: int | None
    kind: str
    preset: Preset

    @property
    def name(self) -> str:
        return self.series if self.T is None else f"{self.series}-T{self.T}"


def points(preset: Preset) -> list[Point]:
    """Every model of the sweep, in the order they are built (the ANN first: SNN-I is converted from it)."""
    out = [Point("ann", None, "ann", preset)]
    for T in preset.sweep.T:
        at = dataclasses.replace(preset, snn2=dataclasses.replace(preset.snn2, T=T))
        out += [Point("snn2", T, "snn2", at), Point("ann-rate", T, "ann-rate", at)]
    for T in preset.sweep.snn1_T:
        for series, encoding, reset in (("snn1", "poisson", "subtract"), ("snn1-signed", "poisson", "signed"),
                                        ("snn1-direct", "direct", "subtract")):
            at = dataclasses.replace(preset, snn1=dataclasses.replace(preset.snn1, T=T, encoding=encoding, reset=reset))
            out.append(Point(series, T, "snn1", at))
    return out


def _costs(preset: Preset, splits: data.Splits) -> dict[str, float]:
    """Each point's expected work in ANN forward passes of one image: training (3 per image and epoch,
    times T), conversion's validation (T per image), the attack (3 per step and EOT draw, times T) and
    the judgement (K draws for a Poisson-coded model, at eps 0 and every eps)."""
    s, n, study = preset.sweep, preset.sweep.images, preset.study
    out = {}
    for p in points(preset):
        snn = p.preset.spiking(p.kind)
        T = snn.T if snn is not None and snn.neuron != "rate" else 1
        draws = study.draws if snn is not None and snn.encoding == "poisson" else 1
        cfg = {"ann": preset.ann, "ann-rate": preset.ann, "snn2": preset.snn2.train}.get(p.kind)
        build = T * len(splits.validation) if cfg is None else 3.0 * cfg.epochs * len(splits.train) * T
        attack = 3.0 * s.steps * T * (study.eot if draws > 1 else 1) * n * len(s.eps)
        out[p.name] = build + attack + draws * T * n * (1 + len(s.eps))
    return out


def estimate(preset: Preset, splits: data.Splits, device: torch.device) -> tuple[float, float]:
    """The sweep's cost in ANN forward passes and in seconds on ``device``, from a probe of the preset's
    ANN forward and backward pass on one batch there (an estimate: BPTT and the neuron loop cost more
    per timestep than a forward pass)."""
    info = splits.train.info
    net = Network(preset.spec, info.shape[0], info.mean, info.std, width=preset.width, dropout=0.0).to(device)
    x = torch.rand(64, *info.shape, device=device, requires_grad=True)
    net(x).sum().backward()  # warm-up
    runtime.synchronize(device)
    start = time.perf_counter()
    for _ in range(3):
        net(x).sum().backward()
    runtime.synchronize(device)
    per_forward = (time.perf_counter() - start) / (3 * 3 * len(x))  # a forward and backward: about 3 forwards
    total = sum(_costs(preset, splits).values())
    return total, total * per_forward


def _model(p: Point, out: Path, splits: data.Splits, ann: dict | None, device: torch.device,
           log: Callable[[str], None]) -> dict:
    """One point's model built (trained, or converted from the ANN) or reused: its file and digest."""
    seed = p.preset.seeds[0]
    data_digests = (splits.train.digest, splits.validation.digest, splits.test.digest)
    recipe = model_recipe(p.kind, p.preset, seed, data_digests)
    if p.kind == "snn1":
        recipe = {**recipe, "parent": ann["sha256"]}
    path = out / "models" / f"{p.name}-{digest(recipe)}.safetensors"
    if p.kind == "snn1":
        if not path.exists():
            convert_file(out / ann["path"], p.preset, splits, seed, path, recipe=recipe, device=device)
    else:
        fit(p.kind, p.preset, seed, path, splits, resume=True, log=log, recipe=recipe, device=device)
    net, meta = load_network(path, "cpu")
    if meta.get("recipe", recipe) != recipe or not meta.get("complete", True):
        raise SpikeAdvError(f"{path} holds another model than its name says; delete it and rerun the sweep")
    return {"path": str(path.relative_to(out)), "sha256": model_digest(net, meta)}


def _point(p: Point, built: dict, out: Path, x: torch.Tensor, y: torch.Tensor, device: torch.device,
           log: Callable[[str], None]) -> dict:
    """One point's robust accuracy per image at eps 0 (clean) and each eps, cached by its recipe."""
    net, meta = load_network(out / built["path"], device)
    snn = spiking(meta)
    model = Trained(p.kind, 0, net, snn, out / built["path"], built["sha256"], meta)
    study, sweep = p.preset.study, p.preset.sweep
    fixed = {k: getattr(study, k) for k in ("seed", "eot", "batch_size", "bf16", "draws", "vote")}
    recipe = {"model": built["sha256"], "snn": as_dict(snn) if snn else None, "eps": list(sweep.eps),
              "steps": sweep.steps, "images": len(y), "labels": digest(y.tolist()), "study": fixed,
              "version": __version__}

    def compute_point() -> dict:
        gradient = "ann" if snn is None else "bptt"
        p_by_eps = {"0": compute.judged(model, x, y, study).tolist()}
        for eps in sweep.eps:
            job = Job(p.name, 0, gradient, "pgd", eps, sweep.steps, (p.kind,))
            adv, _ = compute.craft(job, model, x, y, y, study)
            p_by_eps[str(eps)] = compute.judged(model, adv, y, study).tolist()
        return {"series": p.series, "T": p.T, "gradient": gradient, "p": p_by_eps}

    saved, _ = cached(out / "points" / f"{p.name}-{digest(recipe)}.json", recipe, compute_point, log)
    return saved


def run(preset: Preset, out: Path, root: Path | None = None, device: torch.device | None = None,
        log: Callable[[str], None] = print) -> Path:
    """The sweep of ``preset`` in ``out`` (its cost printed first): every model and point built or
    reused, then ``sweep.json`` (the points with each image's expected correctness, the preset,
    versions and data digests) written atomically. Returns its path."""
    device = runtime.device(device)
    data.ensure(preset.dataset, root, log)
    splits = data.splits(preset.dataset, preset.validation, preset.test_subset, root)
    if preset.sweep.images > len(splits.test):
        raise SpikeAdvError(f"sweep.images = {preset.sweep.images} exceeds the {len(splits.test)} test images")
    todo = points(preset)
    forwards, seconds = estimate(preset, splits, device)
    log(f"sweep: {len(todo)} models (SNN-II and the rate-input ANN at T = {', '.join(map(str, preset.sweep.T))}; "
        f"SNN-I at T = {', '.join(map(str, preset.sweep.snn1_T))}), eps {', '.join(map(str, preset.sweep.eps))}/255, "
        f"{preset.sweep.images} images: about {forwards:.3g} ANN forward passes, an estimated "
        f"{seconds / 60:.0f} min on {runtime.describe(device)} (what exists in {out} is reused)")
    test = splits.test
    x = data.to_float(test.images[:preset.sweep.images]).to(device)
    y = test.labels[:preset.sweep.images].long().to(device)
    with lock(out) as can_write:
        if not can_write:
            raise SpikeAdvError(f"{out} is read-only; pass another --out")
        ann, results = None, []
        for p in tqdm(todo, desc="sweep", unit="model", dynamic_ncols=True):
            built = _model(p, out, splits, ann, device, log)
            ann = built if p.series == "ann" else ann
            results.append({**_point(p, built, out, x, y, device, log), "model": built})
        record = {"preset": as_dict(preset), "versions": versions(), "device": str(device),
                  "data": {"train": splits.train.digest, "validation": splits.validation.digest,
                           "test": splits.test.digest}, "points": results}
        path = out / "sweep.json"
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, sort_keys=True)))
    log(f"sweep: {len(results)} points in {path}")
    return path
