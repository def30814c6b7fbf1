"""A synthetic run directory (run.json and results.jsonl) whose numbers make known report checks pass
or fail; the report's tests build on it."""

import base64
import json
import math

import numpy as np

from spikeadv import report
from spikeadv.records import digest_text

N = 200  # images attacked
GRADIENTS = {"ann": "ann", "snn1": "snnadv", "snn2": "snnadv"}
REPEATS = {"ann": 1, "snn1": 2, "snn2": 2}
CLEAN = {"ann": 180, "snn1": 180, "snn2": 180}  # images instance 0 gets right (the first ones), every repeat
# (the same for every kind, so that losses and adversarial errors order the models alike)
# Images lost per (scenario, target) under eps-bounded inputs: SNNs lose less than the ANN under blackbox
# and more under whitebox, SNN-crafted inputs cost more than ANN-crafted ones (but SNN-I-crafted inputs
# cost SNN-I exactly what ANN-crafted ones do), and SNN-II always loses more than SNN-I.
BASE = {
    "whitebox": {"ann": 20, "snn1": 40, "snn2": 60},
    "bb-snn1": {"ann": 40, "snn1": 2, "snn2": 12},
    "bb-snn2": {"ann": 40, "snn1": 10, "snn2": 25},
    "bb-ann": {"ann": 8, "snn1": 2, "snn2": 4},
}
# Faithful SNNAdv (its true L-inf exceeds eps, so the audit flags it) says the opposite everywhere.
FAITHFUL = {
    "whitebox": {"ann": 0, "snn1": 2, "snn2": 2},
    "bb-snn1": {"ann": 0, "snn1": 100, "snn2": 100},
    "bb-snn2": {"ann": 0, "snn1": 100, "snn2": 100},
}
FACTOR = {"fgsm": 1.0, "rfgsm": 0.8, "ifgsm": 1.2, "tifgsm": 0.5}
ATTACKS = [("fgsm", 1), ("rfgsm", 1), ("ifgsm", 2), ("ifgsm", 5), ("ifgsm", 7), ("tifgsm", 2), ("tifgsm", 5),
           ("tifgsm", 7)]
MISSING = ("snn1", "bb-snn2", "fgsm", 8, 1)  # a cell the run lacks
CLEAN_ACC = {("ann", 0): 91.23, ("ann", 1): 90.5, ("snn1", 0): 88.76, ("snn1", 1): 88.1, ("snn2", 0): 84.32,
             ("snn2", 1): 83.9}  # Table I as run.json records it


def lost(target, scenario, attack, steps, eps, gradient):
    """Images the cell's inputs turn from right to wrong (a mean over repeats)."""
    if (target, scenario, attack, eps) == ("ann", "whitebox", "rfgsm", 32):
        return 14  # 9 images fewer than at 16/255 (23): "loss grows with eps" fails beyond noise
    if (target, scenario, attack, eps) == ("ann", "whitebox", "tifgsm", 32):
        return 13  # one image fewer than at 16/255 (14): within noise, passes
    table = FAITHFUL if gradient == "snnadv" else BASE
    scale = 1.0 if gradient == "snnadv" else FACTOR[attack] * math.sqrt(eps / 8)
    extra = 20 if gradient == "bptt" else 0
    return min(CLEAN[target] - 1, round(table[scenario][target] * scale) + extra)


def outcomes(correct):
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def row(target, scenario, attack, steps, eps, gradient, repeat):
    source = target if scenario == "whitebox" else scenario[3:]
    count = lost(target, scenario, attack, steps, eps, gradient) + (0 if REPEATS[target] == 1 else 2 * repeat - 1)
    correct = np.arange(N) >= count
    correct[CLEAN[target]:] = False  # the clean mistakes stay mistakes; the first `count` images are lost
    clean, adv = 100 * CLEAN[target] / N, 100 * correct.mean()
    return {
        "target": target, "source_kind": source, "source_instance": 0 if scenario == "whitebox" else 1,
        "scenario": scenario, "gradient": gradient, "attack": attack, "eps": eps, "steps": steps,
        "repeat": repeat, "n": N, "clean_acc": clean, "adv_acc": adv, "loss": clean - adv, "success_rate": 50.0,
        "target_hit_rate": 10.0 if attack == "tifgsm" else None,
        "linf": eps + (3.0 if gradient == "snnadv" else 0.0), "l2": 0.5, "correct": outcomes(correct),
    }


def cells():
    """(target, scenario, attack, steps, eps, gradient) of every cell of the synthetic run."""
    for t in report.KINDS:
        for s in report.SCENARIOS:
            source = t if s == "whitebox" else s[3:]
            for gradient in (GRADIENTS[source],) if source == "ann" else ("snnadv", "snnadv-clean"):
                for a, k in ATTACKS:
                    for e in (8, 16, 32, 64):
                        if (t, s, a, e, k) != MISSING:
                            yield t, s, a, k, e, gradient
    yield "snn2", "whitebox", "fgsm", 1, 8, "bptt"


def make_run(path, paired=True, encoding="poisson", **preset):
    """A run directory of the synthetic cells; ``preset`` entries replace run.json's preset fields."""
    rows = [row(*c, r) for c in cells() for r in range(REPEATS[c[0]])]
    meta = {
        "version": "0.1.0",
        "preset": {"name": "synthetic", "dataset": "cifar10", "test_subset": 100, "snn1": {"encoding": encoding},
                   "study": {"attacks": ["fgsm", "rfgsm", "ifgsm", "tifgsm"], "steps": 2, "eps": [8, 16, 32]}},
        "models": [{"kind": k, "instance": i, "clean_acc": a, "clean_std": 0.25, "repeats": REPEATS[k],
                    "T": None if k == "ann" else 8, "path": f"{k}{i}.safetensors", "sha256": "0" * 64,
                    "clean_correct": [outcomes(np.arange(N) < CLEAN[k])] * REPEATS[k]}
                   for (k, i), a in CLEAN_ACC.items()],
        "stages": {"train": 12.5, "attack": 30.25},
        "gradients": GRADIENTS,
    }
    meta["preset"].update(preset)
    if not paired:  # a run saved before per-image outcomes
        rows = [{k: v for k, v in r.items() if k != "correct"} for r in rows]
        for m in meta["models"]:
            del m["clean_correct"]
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (path / "run.json").write_text(json.dumps({**meta, "results_sha256": digest_text(text)}))
    (path / "results.jsonl").write_text(text)
    return path



def restate(path, text: str) -> None:
    """Replace a run's results.jsonl as the study would (its digest in run.json): tests of what the
    report makes of unusual rows; an edit without this is refused (tests/test_guards.py)."""
    meta = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**meta, "results_sha256": digest_text(text)}))
    (path / "results.jsonl").write_text(text)
