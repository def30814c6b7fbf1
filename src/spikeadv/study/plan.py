"""The study's plan (pure: no model, no file): the crafting jobs of the paper's grid (section V,
Table III; DESIGN section 2 "Scenarios") and the content addresses and seeds derived from recipes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config.grid import ITERATIVE, KINDS
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
                        add(kind, instance, gradient, attack, study.steps if attack in ITERATIVE else 1,
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


def model_recipe(kind: str, preset: Preset, seed: int, data: tuple[str, str]) -> dict:
    """What determines a trained model's weights (ann, snn2): the network, its training, the seed and the
    digests of the training and test data. SNN-I's recipe adds its parent's content hash at run time."""
    net = {"dataset": preset.dataset, "spec": preset.spec, "width": preset.width, "dropout": preset.dropout,
           "batchnorm": preset.batchnorm, "train": as_dict(preset.ann)}
    if kind == "snn2":
        net = {"dataset": preset.dataset, "spec": preset.spec, "width": preset.snn2.width or preset.width,
               "snn2": as_dict(preset.snn2)}
    return canonical({"kind": kind, **net, "seed": seed, "data": list(data)})


def _forward(preset: Preset) -> dict[str, float]:
    """The cost of one image's forward pass per kind, in ANN forwards: an SNN runs T timesteps."""
    return {"ann": 1.0, "snn1": float(preset.study.snn1_T or preset.snn1.T), "snn2": float(preset.snn2.T)}


def draws_of(preset: Preset, kind: str) -> int:
    """Forward passes per judged image: ``study.draws`` (K) for Poisson-coded SNNs, one otherwise."""
    encoding = {"ann": None, "snn1": preset.snn1.encoding, "snn2": preset.snn2.encoding}[kind]
    return preset.study.draws if encoding == "poisson" else 1


def cost(job: Job, forward: dict[str, float], draws: dict[str, int], images: int) -> float:
    """Expected work of one cell: crafting takes a forward and a backward pass (about 3 forwards) per
    step through the gradient's network (BPTT: the SNN itself; the ANN and SNNAdv: a network of ANN
    cost), evaluation one pass per target draw."""
    through = job.source if job.gradient == "bptt" else "ann"
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


def plan(preset: Preset, data: tuple[str, str], train_images: int, labels: str) -> list[Task]:
    """The study's task graph in an order that respects its dependencies (``data``: the digests of the
    training and test sets; ``labels``: of the attacked images' labels): per instance (one per preset
    seed) train the ANN, train SNN-II, convert SNN-I from the ANN; the clean predictions of every
    model; then one cell per job of :func:`grid` (its recipe: :func:`cell_recipe`), after its source,
    its targets and their clean predictions. Every recipe is made here, once."""
    study, images, forward = preset.study, preset.study.images, _forward(preset)
    draws = {k: draws_of(preset, k) for k in KINDS}
    train = {"ann": preset.ann.epochs * 3.0, "snn2": preset.snn2.train.epochs * 3.0 * forward["snn2"]}
    out: list[Task] = []
    for instance, seed in enumerate(preset.seeds):
        for kind in ("ann", "snn2"):
            out.append(Task(f"{kind}{instance}", "model", {"kind": kind, "instance": instance, "seed": seed,
                                                        "model": model_recipe(kind, preset, seed, data)},
                            cost=train[kind] * train_images))
        snn1 = canonical({"kind": "snn1", "convert": as_dict(preset.snn1), "seed": seed})  # + its parent's hash
        out.append(Task(f"snn1{instance}", "model", {"kind": "snn1", "instance": instance, "seed": seed, "model": snn1},
                        (f"ann{instance}",), cost=preset.snn1.images * forward["snn1"]))
    out += [Task(f"clean/{kind}{i}", "clean", {"model": f"{kind}{i}"}, (f"{kind}{i}",),
                 draws[kind] * images * forward[kind]) for i in range(len(preset.seeds)) for kind in KINDS]
    for job in grid(study, bounded_kinds(preset)):
        deps = (f"{job.source}{job.instance}", *(f"{t}0" for t in job.targets), *(f"clean/{t}0" for t in job.targets))
        out.append(Task(f"cell/{job}", "cell", cell_recipe(job, study, labels), tuple(dict.fromkeys(deps)),
                        cost(job, forward, draws, images)))
    return out
