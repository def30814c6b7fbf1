"""The adaptive evaluation against the 2025 frontier, on the same models and images, image by image.

For each SNN of a run directory (or one checkpoint), at one eps: the strong suite's worst case (the
ensemble, with its convergence check) and each frontier method run alone on every image at the suite's
budget: ASSG + SA-PGD (Wang et al. 2025), PDSG + APGD-CE (Lun et al. 2025), MDSE + APGD-CE (Xu et al.
2025) and BPTT + APGD-CE, each with the suite's EOT draws on Poisson input, once with the seeds the
ensemble gives it (the strong suite runs these four on every image, so that is the very run the ensemble
contains) and once with other seeds (how much a randomised method moves from run to run). It prints, per
model, each method's robust accuracy, the ensemble's, and the images on which the ensemble's expected
correctness is above the method's (none against the contained run; against another seed, the attacks'
own randomness), and the wall time of each, all judged by the study's judge (K encoder draws, common
random numbers).

    python benchmarks/frontier.py RUN_DIR_OR_CKPT [--eps 8/255] [--images 256] [--suite strong] [--kinds snn1,snn2]
                                  [--steps 100] [--draws 20] [--queries 5000]
    python benchmarks/frontier.py --model MODULE:FUNCTION --weights FILE --T 4 --data cifar10 ...   # your own SNN

``--steps``, ``--draws`` and ``--queries`` scale the suite's budget down (every gradient pair's steps, the
EOT draws of every pair on Poisson input, Square's queries) where a CPU cannot afford the strong one;
the methods alone then get the same reduced budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch

from spikeadv import data
from spikeadv.attack import suite as suites
from spikeadv.attack.suite import Pair, worst_case
from spikeadv.models.foreign import as_model, identified
from spikeadv.study.evaluation import targets
from spikeadv.study.judge import stochastic
from spikeadv.study.units import Evaluation, Setting
from spikeadv.study.yours import load_factory

ROUNDED = 1e-4  # a unit record keeps p to 4 decimals (0.96875 -> 0.9688): differences below are rounding
FRONTIER = (("assg", "sa-pgd"), ("pdsg", "apgd-ce"), ("mdse", "apgd-ce"), ("bptt", "apgd-ce"))


def scaled(suite: suites.Suite, steps: int | None, draws: int | None, queries: int | None) -> suites.Suite:
    """``suite`` with its budget scaled: gradient steps, EOT draws, Square's queries (None: as it is)."""
    def pair(p: Pair) -> Pair:
        if p.attack == "square":
            return dataclasses.replace(p, steps=queries or p.steps)
        return dataclasses.replace(p, steps=steps or p.steps)

    return dataclasses.replace(suite, ann=tuple(map(pair, suite.ann)), snn=tuple(map(pair, suite.snn)),
                               poisson=tuple(map(pair, suite.poisson)), eot=draws or suite.eot,
                               square_eot=min(draws or suite.square_eot, suite.square_eot), converge=0)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, nargs="?")
    p.add_argument("--model", help="a SpikingJelly, snnTorch or Norse SNN of your own: module.path:function")
    p.add_argument("--weights", type=Path)
    p.add_argument("--T", type=int)
    p.add_argument("--encoding")
    p.add_argument("--data", default="cifar10")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--suite", default=suites.DEFAULT)
    p.add_argument("--kinds", default="snn1,snn2")
    p.add_argument("--steps", type=int)
    p.add_argument("--draws", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    return p.parse_args()


def main() -> None:
    args = arguments()
    eps = float(Fraction(args.eps)) * 255
    if args.model:  # one model of your own, on the first test images of --data
        net = load_factory(args.model, args.weights, args.T, args.encoding)
        test = data.load(args.data, "test")
        x, y = data.to_float(test.images[:args.images]), test.labels[:args.images].long()
        models, recorded = [identified(as_model(net, args.model.partition(":")[2]), x)], {}
    else:
        models, _, x, y, recorded = targets(args.path, args.images, None)
    chosen = scaled(suites.get(args.suite), args.steps, args.draws, args.queries)
    setting = Setting(chosen, (eps,), **recorded)
    evaluation = Evaluation(setting, x, y, None, log=lambda line: None)
    rows = []
    for model in models:
        if not args.model and (model.kind not in args.kinds.split(",") or model.instance != 0):
            continue
        pairs = chosen.pairs(model.snn, model.net)
        steps = next(p.steps for p in pairs if p.attack == "apgd-ce")
        start = time.perf_counter()
        ensemble = torch.tensor(evaluation.ensemble(model, eps)["p"])
        row = {"model": model.name, "images": len(y), "eps": eps, "clean": evaluation.clean(model).mean().item(),
               "ensemble": ensemble.mean().item(), "ensemble_s": round(time.perf_counter() - start, 1)}
        for estimator, attack in FRONTIER:
            same = [q for q in pairs if q.estimator.partition(":")[0] == estimator and q.attack == attack]
            pair = same[0] if same else Pair(suites.with_eot(estimator, chosen.eot if stochastic(model) else 1),
                                             attack, steps)
            def alone(tag: Callable[[int], object]) -> torch.Tensor:  # the method on every image, nothing pruned
                return worst_case((pair,), x, y, lambda v, idx: evaluation.judge(model, v, idx),
                                  lambda q, xb, yb, b: evaluation.attack(model, q, xb, yb, eps, tag(b)),
                                  setting.batch_size, prune=False, clean=evaluation.clean(model)).p.cpu()

            start = time.perf_counter()
            same = alone(lambda b: b)  # the ensemble's own seeds: the very run it contains (every-image pairs)
            seconds = round(time.perf_counter() - start, 1)
            other = alone(lambda b: ("alone", b))  # another seed: the method's spread from run to run
            row[pair.name] = {"acc": same.mean().item(), "ensemble_above": int((ensemble > same + ROUNDED).sum()),
                              "acc_other_seed": other.mean().item(),
                              "ensemble_above_other_seed": int((ensemble > other + ROUNDED).sum()), "seconds": seconds}
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
