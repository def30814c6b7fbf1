"""The paper's whitebox claims re-judged under the strongest evaluation (``spikeadv evaluate RUN``): the
robust accuracy of ANN, SNN-I and SNN-II under the paper's FGSM, the strongest pair run on every image and the
worst case over its (estimator, attack) pairs per image, and claims (b) and (c) as paired comparisons of
the worst-case per-image losses on the same images. Reads the saved card only (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.grid import KINDS, LABEL, by_eps
from ..records import read_json
from .load import Run
from .paired import Paired, compare

SUITE_ORDER = ("full", "standard", "quick")  # the strongest evaluation a run holds is the one shown


def load_card(run_dir: Path) -> dict | None:
    """The strongest evaluation card in ``run_dir/evaluation`` (None when the run was not evaluated)."""
    for suite in SUITE_ORDER:
        path = run_dir / "evaluation" / suite / "card.json"
        if path.is_file():
            return read_json(path, "; rerun spikeadv evaluate to rewrite it")
    return None


def _losses(eps_result: dict) -> np.ndarray:
    """Per image: clean correct - correct under the worst case, in {0, 1}."""
    winner = np.array(eps_result["winner"])
    return (winner != -2).astype(float) - (winner == -1).astype(float)


@dataclass(frozen=True)
class Rejudged:
    """A whitebox claim judged on worst-case per-image losses: ``low`` is claimed to lose less than ``high``."""

    claim: str
    what: str
    eps: str
    stats: Paired


def table(run: Run, card: dict) -> tuple[list[str], list[list[str]]]:
    """Accuracy (%) per model and eps: clean, FGSM whitebox with the paper's gradient (the study's cell),
    the strongest pair among those run on every image (with pruning, the suite's first; with
    ``--every-image``, every pair), the worst case, and the masking checks that failed."""
    header = ["model", "eps", "clean", "FGSM (paper)", "best single pair run on every image", "worst case",
              "failed masking checks"]
    body = []
    for c in card["cards"]:
        kind = c["model"]["kind"]
        failed = sorted({f"{k['name']} [{k['estimator']}]" for k in c["checks"] if k["passed"] is False})
        for eps, e in by_eps(c["eps"]):
            fgsm = run.cell(kind, "whitebox", "fgsm", int(float(eps)), 1) if kind in KINDS else None
            body.append([LABEL.get(kind, kind), eps, f"{100 * e['clean_acc']:.1f}",
                         "-" if fgsm is None else f"{fgsm.adv_acc:.1f}",
                         f"{100 * e['best_single']['acc']:.1f} ({e['best_single']['pair']})",
                         f"**{100 * e['worst_acc']:.1f}**",
                         "; ".join(failed) or "none"])
    return header, body


def rejudge(card: dict) -> list[Rejudged]:
    """Claims (b) ANN loses less than each SNN and (c) SNN-II loses less than SNN-I, whitebox, worst case."""
    by_kind = {c["model"]["kind"]: c for c in card["cards"]}
    out = []
    for claim, low, high in (("b", "ann", "snn1"), ("b", "ann", "snn2"), ("c", "snn2", "snn1")):
        if low not in by_kind or high not in by_kind:
            continue
        for eps, _ in by_eps(by_kind[low]["eps"]):
            if eps in by_kind[high]["eps"]:
                stats = compare([(_losses(by_kind[low]["eps"][eps]), _losses(by_kind[high]["eps"][eps]))], binary=True)
                out.append(Rejudged(claim, f"{LABEL[low]} vs {LABEL[high]}", eps, stats))
    return out


CLAIMS = {"b": "Under whitebox attacks, SNNs lose more accuracy than the ANN (paper V-A)",
          "c": "SNN-II (spike-based training) is more robust than SNN-I (conversion) (paper V-B)"}


def items(found: list[Rejudged]) -> list[str]:
    """One line per comparison: the claim, the verdict and the paired statistics."""
    out = []
    for r in found:
        s = r.stats
        test = f"; McNemar b={s.mcnemar[0]}, c={s.mcnemar[1]}, p={s.mcnemar[2]:.3g}" if s.mcnemar else ""
        out.append(f"({r.claim}) {CLAIMS[r.claim]}: {r.what} at eps {r.eps}/255, worst case: **{s.verdict}** "
                   f"(loss {s.low:.1f} vs {s.high:.1f} pp, difference {s.interval()}, n = {s.n}{test})")
    return out
