"""Loading a run directory: ``run.json`` and ``results.jsonl`` validated, rows gathered into cells,
and each cell's per-image outcomes (:mod:`spikeadv.records.outcomes`) decoded for paired comparisons.

Also the names every part of the report shares: kinds, scenarios, attacks, the paper's values.
"""

from __future__ import annotations

import binascii
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config.grid import ITERATIVE, KINDS, STUDY_ATTACKS, TARGETS
from ..errors import SpikeAdvError
from ..records import digest_text, read_json
from ..records.outcomes import unpack, unpack_classes, unpack_halves

SCENARIOS = ("whitebox", "bb-snn1", "bb-snn2", "bb-ann")
SCENARIO_TITLE = {
    "whitebox": "Whitebox",
    "bb-snn1": "SNN-I-crafted blackbox",
    "bb-snn2": "SNN-II-crafted blackbox",
    "bb-ann": "ANN-crafted blackbox",
}
SCENARIO_SHORT = {"whitebox": "WB", "bb-snn1": "BB1", "bb-snn2": "BB2", "bb-ann": "BB3"}  # paper Fig. 3
# Rows of Fig. 2 and panels of Fig. 3: (attack, steps, title).
FIG2_ATTACKS = (
    ("fgsm", 1, "FGSM"),
    ("rfgsm", 1, "R-FGSM"),
    ("ifgsm", 2, "I-FGSM (2-step)"),
    ("tifgsm", 2, "Targeted I-FGSM (2-step)"),
)
FIG2_EPS = (8, 16, 32)
FIG3_EPS = 16
FIG4_EPS = (8, 16, 32, 64)
FIG4_STEPS = {2: "#000000", 5: "#1f5fbf", 7: "#d62728"}  # paper Fig. 4: black, blue, red
FIG4_STYLE = {"whitebox": "-", "bb-snn2": "--", "bb-ann": ":"}
PAPER_CLEAN = {"ann": 89.5, "snn1": 85.6, "snn2": 87.1}  # paper Table I
PAPER_FGSM_WB8 = {"ann": 27.8, "snn1": 43.5, "snn2": 35.5}  # paper V-A, FGSM whitebox at 8/255
COLUMNS = (
    "target", "source_kind", "source_instance", "scenario", "gradient", "attack", "eps", "steps",
    "repeat", "n", "clean_acc", "adv_acc", "loss", "success_rate", "target_hit_rate", "linf", "l2",
)
NUMERIC = ("eps", "steps", "repeat", "n", "clean_acc", "adv_acc", "loss", "success_rate", "linf", "l2")
LINF_SLACK = 0.5  # audit: flag a mean true L-inf above eps + this (1/255 units)

Key = tuple[str, str, str, str, int, int]  # target, scenario, gradient, attack, eps, steps


@dataclass(frozen=True)
class Cell:
    """One (target, scenario, gradient, attack, eps, steps) cell (averaged over its repeats, in runs
    before the K-draw judge). ``per_image``: each image's loss (clean - adversarial expected
    correctness; in {-1, 0, 1} for a deterministic target), its mean x 100 is ``loss`` (the paper's
    metric); ``errors``: each image's adversarial error (1 - expected correctness), whose mean x 100 is
    100 - adversarial accuracy (the verdicts' metric); ``linf_image``: each image's true L-inf (1/255).
    None for runs saved before per-image outcomes (or before per-image perturbations)."""

    loss: float
    loss_std: float
    clean_acc: float
    adv_acc: float
    success_rate: float
    linf: float
    l2: float
    repeats: int
    n: int
    per_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    errors: np.ndarray | None = field(default=None, compare=False, repr=False)
    linf_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    eps: int = 0

    @property
    def unperturbed(self) -> float | None:
        """The share of images the attack left exactly where they were (None without per-image sizes)."""
        return None if self.linf_image is None else float(np.mean(self.linf_image == 0))

    @property
    def under_budget(self) -> float | None:
        """The share of images whose perturbation used less than 99% of eps."""
        return None if self.linf_image is None else float(np.mean(self.linf_image < 0.99 * self.eps))


@dataclass(frozen=True)
class Run:
    """A run directory's saved results: the metadata of ``run.json`` and the rows of ``results.jsonl``."""

    path: Path
    meta: dict
    rows: list[dict]
    cells: dict[Key, Cell]

    @cached_property
    def paired(self) -> bool:
        """Whether every cell has per-image outcomes (runs before them have only accuracies)."""
        return all(c.per_image is not None for c in self.cells.values())

    def main_gradient(self, target: str, scenario: str) -> str:
        """The paper's gradient source for the model that crafted this scenario's inputs."""
        return self.meta["gradients"][source_kind(target, scenario)]

    def cell(self, target: str, scenario: str, attack: str, eps: int, steps: int,
             gradient: str | None = None) -> Cell | None:
        """A cell under ``gradient`` (default: the main one), or None when the run lacks it."""
        gradient = gradient or self.main_gradient(target, scenario)
        return self.cells.get((target, scenario, gradient, attack, eps, steps))

    def loss(self, target: str, scenario: str, attack: str, eps: int, steps: int) -> float | None:
        cell = self.cell(target, scenario, attack, eps, steps)
        return None if cell is None else cell.loss

    def main_cells(self) -> dict[Key, Cell]:
        """The cells crafted with the main gradient of their source kind."""
        return {k: c for k, c in self.cells.items() if k[2] == self.main_gradient(k[0], k[1])}


def source_kind(target: str, scenario: str) -> str:
    """Paper Table III: whitebox inputs come from the target itself, ``bb-K`` inputs from kind K."""
    return target if scenario == "whitebox" else scenario[len("bb-"):]


def _check_meta(path: Path, meta: dict) -> None:
    missing = [k for k in ("preset", "models", "gradients") if k not in meta]
    if missing:
        raise SpikeAdvError(f"{path} lacks {', '.join(missing)}")
    gradients = meta["gradients"]
    if not isinstance(gradients, dict) or any(not isinstance(gradients.get(k), str) for k in KINDS):
        raise SpikeAdvError(f"{path}: 'gradients' must name a gradient source for each of {', '.join(KINDS)}")
    stages = meta.get("stages", {})
    if not isinstance(stages, dict) or not all(isinstance(v, (int, float)) for v in stages.values()):
        raise SpikeAdvError(f"{path}: 'stages' must map stage names to seconds")
    if not isinstance(meta["preset"], dict):
        raise SpikeAdvError(f"{path}: 'preset' must be a JSON object")
    if not isinstance(meta["models"], list) or not all(isinstance(m, dict) and "kind" in m for m in meta["models"]):
        raise SpikeAdvError(f"{path}: 'models' must be a list of objects with a 'kind'")


def _check_row(path: Path, line: int, row: object) -> dict:
    where = f"{path} line {line}"
    if not isinstance(row, dict):
        raise SpikeAdvError(f"{where} is not a JSON object")
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise SpikeAdvError(f"{where} lacks {', '.join(missing)}")
    if row["target"] not in TARGETS or row["source_kind"] not in TARGETS:
        raise SpikeAdvError(f"{where}: target/source_kind must be one of {', '.join(TARGETS)}")
    if row["scenario"] not in SCENARIOS:
        raise SpikeAdvError(f"{where}: unknown scenario {row['scenario']!r} (one of {', '.join(SCENARIOS)})")
    bad = [c for c in NUMERIC if isinstance(row[c], bool) or not isinstance(row[c], (int, float))]
    if bad:
        raise SpikeAdvError(f"{where}: {', '.join(bad)} must be numbers")
    return row


def _read_rows(path: Path, recorded: str | None) -> list[dict]:
    """The rows of ``results.jsonl``, refused unless its content is the one whose digest run.json
    recorded (``recorded``) when the study wrote it: an edited table never reaches a report."""
    if not path.is_file():
        raise SpikeAdvError(f"{path} does not exist; run the study (spikeadv run) before the report")
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpikeAdvError(f"{path} cannot be read ({e})") from None
    if recorded is None:
        raise SpikeAdvError(f"{path.parent / 'run.json'} records no digest of {path.name} (a run written before "
                            "digests, or an unfinished one): rerun the study with the same settings to restate it")
    if digest_text(text) != recorded:
        raise SpikeAdvError(f"{path} is not the table the study wrote (its digest differs from run.json's: edited or "
                            "damaged); rerun the study with the same settings to rebuild it from its cells")
    lines = text.splitlines()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpikeAdvError(f"{path} line {number} is not valid JSON ({e.msg}); is the file truncated?") from None
        rows.append(_check_row(path, number, row))
    if not rows:
        raise SpikeAdvError(f"{path} holds no results")
    return rows


Outcome = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # per image: clean p, adversarial p, true L-inf


def aggregate(rows: Sequence[Mapping], per_image: Sequence[Outcome] | None = None) -> dict[Key, Cell]:
    """Average the rows of each cell (one per cell since the K-draw judge; earlier runs had R repeats:
    mean and sample std); with ``per_image`` (:func:`per_image_outcomes`) each cell's per-image loss,
    adversarial error and perturbation too."""
    groups: dict[Key, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r["target"], r["scenario"], r["gradient"], r["attack"], int(r["eps"]), int(r["steps"]))].append(i)

    def mean(idx: list[int], key: str) -> float:
        return statistics.fmean(float(rows[i][key]) for i in idx)

    def per(idx: list[int], f) -> np.ndarray | None:
        values = [f(per_image[i]) for i in idx] if per_image is not None else [None]
        return None if any(v is None for v in values) else np.mean(values, axis=0)

    return {
        key: Cell(
            loss=mean(idx, "loss"),
            loss_std=statistics.stdev(float(rows[i]["loss"]) for i in idx) if len(idx) > 1 else 0.0,
            clean_acc=mean(idx, "clean_acc"),
            adv_acc=mean(idx, "adv_acc"),
            success_rate=mean(idx, "success_rate"),
            linf=mean(idx, "linf"),
            l2=mean(idx, "l2"),
            repeats=len(idx),
            n=int(min(rows[i]["n"] for i in idx)),
            per_image=per(idx, lambda o: o[0] - o[1]),
            errors=per(idx, lambda o: 1 - o[1]),
            linf_image=per(idx, lambda o: o[2]),
            eps=key[4],
        )
        for key, idx in sorted(groups.items())
    }


def _p(correct: str, hits: str | None, draws: int, n: int) -> np.ndarray:
    """Per image the expected correctness: correct draws / K where counted, else the 0/1 outcome."""
    return unpack_classes(hits, n) / draws if hits is not None else unpack(correct, n).astype(np.float64)


def per_image_outcomes(path: Path, meta: dict, rows: Sequence[Mapping]) -> list[Outcome] | None:
    """Each row's per-image clean and adversarial expected correctness (its target's clean outcome:
    ``run.json``, instance 0, in the same repeat for runs before the K-draw judge) and true L-inf (None
    before per-image perturbations). None when the run predates per-image outcomes."""
    clean_of = {m["kind"]: m for m in meta["models"] if m.get("instance") == 0}
    if not rows or any("correct" not in r for r in rows) or any(
            "clean_correct" not in m for m in clean_of.values()):
        return None
    out = []
    for line, r in enumerate(rows, 1):
        try:
            model, n = clean_of[r["target"]], int(r["n"])
            draws = int(r.get("draws", 1))
            clean = _p(model["clean_correct"][int(r["repeat"])], model.get("clean_hits"), draws, n)
            adv = _p(r["correct"], r.get("hits"), draws, n)
            linf = unpack_halves(r["linf_image"], n) if "linf_image" in r else None
            out.append((clean, adv, linf))
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, binascii.Error) as e:
            raise SpikeAdvError(f"{path / 'results.jsonl'} row {line}: per-image outcomes do not decode against "
                                f"run.json's clean outcomes ({type(e).__name__}: {e})") from None
    return out


def load_run(run_dir: Path) -> Run:
    """Read and validate a run directory; any problem is a SpikeAdvError naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpikeAdvError(f"run directory {run_dir} does not exist")
    meta_path = run_dir / "run.json"
    meta = read_json(meta_path, "; is this a spikeadv run directory?")
    _check_meta(meta_path, meta)
    rows = _read_rows(run_dir / "results.jsonl", meta.get("results_sha256"))
    return Run(path=run_dir, meta=meta, rows=rows, cells=aggregate(rows, per_image_outcomes(run_dir, meta, rows)))


def lowest(values: Mapping[str, float | None]) -> set[str]:
    """The keys holding the smallest loss (ties all marked; missing values ignored): paper Fig. 2's red boxes."""
    present = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
    if not present:
        return set()
    best = min(present.values())
    return {k for k, v in present.items() if v <= best + 1e-9}


def attack_name(attack: str, steps: int) -> str:
    return f"{attack}-{steps}" if attack in ITERATIVE else attack


def attack_key(attack_steps: tuple[str, int]) -> tuple[int, str, int]:
    attack, steps = attack_steps
    return (STUDY_ATTACKS.index(attack) if attack in STUDY_ATTACKS else len(STUDY_ATTACKS), attack, steps)


def fmt_eps(eps: int) -> str:
    return f"{eps}/255"
