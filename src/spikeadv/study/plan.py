"""The study's plan (pure: no model, no file): the crafting jobs of the paper's grid (section V,
Table III; DESIGN section 2 "Scenarios") and the content addresses and seeds derived from recipes."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..config.grid import CONTROLS, ITERATIVE, KINDS, MATCH_WITHIN, MATCHED, TARGETS
from ..config.presets import Preset, StudyConfig, as_dict
from ..records.provenance import __version__, canonical

EXTRA_ATTACKS = (("fgsm", 1), ("ifgsm", 2))  # crafted with every further gradient source


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

    def seed_key(self) -> str:
        """What the crafting seeds derive from: the recipe's fields except the targets (which evaluate a
        set, not craft it), in a fixed form. Frozen: changing it changes every cell's random draws."""
        steps = f"-{self.steps}" if self.attack in ITERATIVE else ""
        return f"{self.source}{self.instance}/{self.gradient} {self.attack}{steps} eps {self.eps}"

    def __str__(self) -> str:
        return self.seed_key()


def main_gradients(study: StudyConfig) -> dict[str, str]:
    """The paper's gradient per source kind: exact for the ANN, SNNAdv (Algorithm 2) for SNNs; for the
    controls (whitebox only) their exact gradient: the accuracy-matched ANNs' own, and through the
    noise-matched ANN's straight-through encoder (``bptt``: there are no spikes to differentiate)."""
    return {**{k: "ann" if k == "ann" else study.gradients[0] for k in KINDS},
            **{c: "bptt" if c == "ann-rate" else "ann" for c in CONTROLS}}


def targets_of(study: StudyConfig) -> tuple[str, ...]:
    """The study's targets: the three kinds, and the controls beside them unless ``study.controls`` is off."""
    return TARGETS if study.controls else KINDS


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
      each SNN;
    - with ``controls``: each control (DESIGN section 8.5) a target of every blackbox set of Figs. 2/3
      and attacked whitebox with its exact gradient on the same attacks and eps, so every SNN-vs-ANN
      comparison is also made against the ANN of the SNN's accuracy and the ANN on its input noise."""
    wanted: dict[tuple, set[str]] = {}
    everyone = targets_of(study)

    def add(source: str, instance: int, gradient: str, attack: str, steps: int, eps: int, targets) -> None:
        wanted.setdefault((source, instance, gradient, attack, eps, steps), set()).update(targets)

    main = main_gradients(study)
    variants = {k: (main[k], "snnadv-clean") if k != "ann" and k not in bounded and "snnadv-clean" in study.gradients
                else (main[k],) for k in KINDS}
    for kind in KINDS:
        for gradient in variants[kind]:
            for instance, targets in ((0, (kind,)), (1, everyone)):
                for attack in study.attacks:
                    for eps in study.eps:
                        add(kind, instance, gradient, attack, study.steps if attack in ITERATIVE else 1,
                            eps, targets)
    for control in everyone[len(KINDS):]:
        for attack in study.attacks:
            for eps in study.eps:
                add(control, 0, main[control], attack, study.steps if attack in ITERATIVE else 1, eps, (control,))
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
    return [Job(*key[:3], key[3], key[4], key[5], tuple(t for t in TARGETS if t in targets))
            for key, targets in wanted.items()]


@dataclass(frozen=True)
class Task:
    """One unit of the study's task graph: build a model (``model``), predict a model's clean classes
    (``clean``) or craft one adversarial set and evaluate it on its targets (``cell``). ``recipe`` is
    what it computes; ``deps`` name the tasks whose results it takes; ``cost`` is its expected work in
    ANN forward passes of one image (for the ETA, not for scheduling)."""

    name: str
    kind: str
    recipe: dict = field(hash=False)
    deps: tuple[str, ...] = ()
    cost: float = 1.0


def model_recipe(kind: str, preset: Preset, seed: int, data: tuple[str, ...]) -> dict:
    """What determines a model's weights: for a trained kind (ann, snn2, ann-rate) the network, its
    training, the seed and the digests of the training part, validation part and test images; SNN-I's
    recipe (conversion, seed) and the accuracy-matched ANN's (its rule) add their parents' content
    hashes at run time."""
    net = {"dataset": preset.dataset, "spec": preset.spec, "width": preset.width}
    if kind == "snn1":
        return canonical({"kind": kind, "convert": as_dict(preset.snn1), "after_pool": preset.spike_after_pool,
                          "seed": seed, "data": list(data)})
    if kind in MATCHED:
        return canonical({"kind": kind, "to": MATCHED[kind], "within": MATCH_WITHIN, "data": list(data)})
    if kind == "snn2":
        net.update(snn2=as_dict(preset.snn2), after_pool=preset.spike_after_pool)
    else:
        net.update(dropout=preset.dropout, batchnorm=preset.batchnorm, train=as_dict(preset.ann))
    if kind == "ann-rate":
        net.update(train=as_dict(dataclasses.replace(preset.ann, snapshots=0)), rate=as_dict(preset.spiking(kind)))
    return canonical({"kind": kind, **net, "seed": seed, "data": list(data)})


def _forward(preset: Preset) -> dict[str, float]:
    """The cost of one image's forward pass per kind, in ANN forwards: an SNN runs T timesteps."""
    return {"snn1": float(preset.study.snn1_T or preset.snn1.T), "snn2": float(preset.snn2.T),
            **{k: 1.0 for k in ("ann", *CONTROLS)}}


def draws_of(preset: Preset, kind: str) -> int:
    """Forward passes per judged image: ``study.draws`` (K) for Poisson-coded models, one otherwise."""
    snn = preset.spiking(kind)
    return preset.study.draws if snn is not None and snn.encoding == "poisson" else 1


def cost(job: Job, forward: dict[str, float], draws: dict[str, int], images: int) -> float:
    """Expected work of one cell: crafting takes a forward and a backward pass (about 3 forwards) per
    step through the gradient's network (BPTT: the SNN itself; the ANN and SNNAdv: a network of ANN
    cost), evaluation one pass per target draw."""
    through = "ann" if job.gradient.startswith("snnadv") or job.source not in forward else job.source
    return images * (3 * job.steps * forward[through] + sum(draws[t] * forward[t] for t in job.targets))


def cell_recipe(job: Job, study: StudyConfig, labels: str) -> dict:
    """What determines one cell's result rows, but for the content hashes of its source and targets,
    which its task adds once they are built: the job, the study settings its draws and batches depend
    on, the attacked images and the version. The cell's file is named by the hash of the whole."""
    fixed = {k: getattr(study, k) for k in ("seed", "eot", "target", "batch_size", "bf16", "draws", "vote")}
    if study.snn1_T is not None:  # SNN-I run at another T than its checkpoint's: not in the model's hash
        fixed["snn1_T"] = study.snn1_T
    return canonical({"job": asdict(job), "study": fixed, "images": study.images, "labels": labels,
                      "version": __version__})


def plan(preset: Preset, data: tuple[str, ...], train_images: int, labels: str) -> list[Task]:
    """The study's task graph in an order that respects its dependencies (``data``: the digests of the
    training part, validation part and test images; ``labels``: of the attacked images' labels): per
    instance (one per preset seed) train the ANN, SNN-II and the noise-matched ANN, convert SNN-I from
    the ANN, choose the ANN snapshots matched to each SNN's validation accuracy; the clean predictions
    of every model; then one cell per job of :func:`grid` (its recipe: :func:`cell_recipe`), after its
    source, its targets and their clean predictions. Every recipe is made here, once."""
    study, images, forward = preset.study, preset.study.images, _forward(preset)
    kinds = targets_of(study)
    draws = {k: draws_of(preset, k) for k in kinds}
    train = {"ann": preset.ann.epochs * 3.0, "ann-rate": preset.ann.epochs * 3.0,
             "snn2": preset.snn2.train.epochs * 3.0 * forward["snn2"]}
    out: list[Task] = []
    for instance, seed in enumerate(preset.seeds):
        def task(kind: str, deps: tuple[str, ...] = (), cost: float = 0.0) -> Task:
            recipe = {"kind": kind, "instance": instance, "seed": seed, "model": model_recipe(kind, preset, seed, data)}
            return Task(f"{kind}{instance}", "model", recipe, tuple(f"{d}{instance}" for d in deps), cost)

        out += [task(kind, cost=train[kind] * train_images) for kind in ("ann", "snn2", "ann-rate") if kind in kinds]
        out.append(task("snn1", ("ann",), preset.snn1.images * forward["snn1"]))  # recipe + its parent's hash
        out += [task(kind, ("ann", snn)) for kind, snn in MATCHED.items() if kind in kinds]  # + their parents'
    out += [Task(f"clean/{kind}{i}", "clean", {"model": f"{kind}{i}"}, (f"{kind}{i}",),
                 draws[kind] * images * forward[kind]) for i in range(len(preset.seeds)) for kind in kinds]
    for job in grid(study, bounded_kinds(preset)):
        deps = (f"{job.source}{job.instance}", *(f"{t}0" for t in job.targets), *(f"clean/{t}0" for t in job.targets))
        out.append(Task(f"cell/{job}", "cell", cell_recipe(job, study, labels), tuple(dict.fromkeys(deps)),
                        cost(job, forward, draws, images)))
    return out
