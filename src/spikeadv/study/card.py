"""The robustness card of an evaluation (:mod:`.evaluation`): ``card.json`` (every number, the settings,
versions and the checks), ``card.md`` (a table per model, the winners, the checks), one plot per model of
accuracy vs eps and vs steps per estimator, and ``rows.jsonl`` in the study's results format
(``report.COLUMNS``): for each model and eps the suite's first attack and the worst case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..attack.checks import pct
from ..attack.suite import ROBUST
from ..config.grid import by_eps
from ..records import atomic_write, outcomes, write_json


def rows(card: dict) -> list[dict]:
    """Result rows (whitebox) of one card: the first pair alone and the ensemble's worst case."""
    out, model = [], card["model"]
    for eps, e in by_eps(card["eps"]):
        winner = np.array(e["winner"])
        clean = winner != -2
        for gradient, attack, steps, correct in (
            (e["pairs"][0]["estimator"], e["pairs"][0]["attack"], e["pairs"][0]["steps"], np.array(e["single"]["correct"])),
            ("ensemble", "worst-case", max(p["steps"] for p in e["pairs"]), winner == ROBUST),
        ):
            acc = 100 * correct.mean()
            out.append({
                "target": model["kind"], "source_kind": model["kind"], "source_instance": 0,
                "scenario": "whitebox", "gradient": gradient, "attack": attack, "eps": float(eps), "steps": steps,
                "repeat": 0, "n": len(winner), "clean_acc": round(100 * e["clean_acc"], 4), "adv_acc": round(acc, 4),
                "loss": round(100 * e["clean_acc"] - acc, 4),
                "success_rate": round(100 * (clean & ~correct).sum() / max(1, clean.sum()), 4),
                "target_hit_rate": None, "linf": e["linf"], "l2": e["l2"], "correct": outcomes.pack(correct),
            })
    return out


def markdown(cards: list[dict], meta: dict) -> str:
    """The card as Markdown: settings, one table of accuracies, the pairs that won, the checks."""
    lines = [f"# Robustness card: {meta['source']}", "",
             f"Suite `{meta['suite']}` ({meta['suite_doc']}); L-inf threat model in pixel space [0, 1], applied "
             "before normalisation and before the encoder; the model judged as deployed (its T, encoder, reset), "
             f"on {meta['images']} test images, seed {meta['seed']}; eps in 1/255 units. "
             f"spikeadv {meta['versions']['spikeadv']}, torch {meta['versions']['torch']}, device {meta['device']}.", "",
             "| model | runs as | eps | clean | best single pair run on every image | worst case | pair that won most images |",
             "|---|---|---|---|---|---|---|"]
    for card in cards:
        m = card["model"]
        runs = "ANN" if "neuron" not in m else f"{m['neuron'].upper()}, T={m['T']}, {m['encoding']} input"
        for eps, e in by_eps(card["eps"]):
            best = max(e["pairs"], key=lambda p: p["won"])
            lines.append(f"| {m['name']} | {runs} | {eps} | {pct(e['clean_acc'])} | {e['best_single']['pair']}: "
                         f"{pct(e['best_single']['acc'])} | **{pct(e['worst_acc'])}** | {best['name']} ({best['won']}) |")
    for card in cards:
        m = card["model"]
        lines += ["", f"## {m['name']} ({m['file']})", "", "Pairs in order (images each ran on, broke, broke first):", ""]
        for eps, e in by_eps(card["eps"]):
            lines.append(f"- eps {eps}: " + "; ".join(
                f"{p['name']} {p['fooled']}/{p['ran']} ({p['won']} first, {p['seconds']:.0f} s)" for p in e["pairs"]))
        lines += ["", f"![accuracy vs eps and steps]({m['name']}.png)", "", "Gradient-masking checks:", ""]
        lines += [f"- {c['name']} [{c['estimator']}]: "
                  + {True: "pass", False: "**FAIL: gradient masking suspected**", None: "n/a"}[c["passed"]]
                  + f": {c['detail']}" for c in card["checks"]]
    return "\n".join(lines) + "\n"


def plot(card: dict, path: Path) -> None:
    """Accuracy vs eps (left) and vs APGD-CE steps at the evaluated eps (right), one line per estimator."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    left, right = fig.subplots(1, 2, sharey=True)
    for name, c in card["curves"].items():
        eps = sorted(c["eps"], key=float)
        left.plot([float(e) for e in eps], [100 * c["eps"][e] for e in eps], marker="o", label=name)
        steps = sorted(c["steps"], key=int)
        right.plot([int(s) for s in steps], [100 * c["steps"][s] for s in steps], marker="o", label=name)
    left.set(xscale="log", xlabel="eps (1/255, log scale; 255 = unbounded)", ylabel="accuracy (%)",
             title=f"{card['model']['name']}: accuracy vs eps")
    right.set(xscale="log", xlabel="APGD-CE steps (log scale)", title=f"vs steps at eps {card['eval_eps']:g}/255")
    left.set_ylim(-2, 102)
    right.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def write(folder: Path, cards: list[dict], meta: dict) -> list[Path]:
    """card.json, card.md, rows.jsonl and a plot per model into ``folder`` (each written atomically)."""
    written = [folder / "card.json", folder / "card.md", folder / "rows.jsonl"]
    write_json(written[0], {**meta, "cards": cards})
    atomic_write(written[1], lambda tmp: tmp.write_text(markdown(cards, meta)))
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for c in cards for r in rows(c))
    atomic_write(written[2], lambda tmp: tmp.write_text(lines))
    for card in cards:
        written.append(folder / f"{card['model']['name']}.png")
        plot(card, written[-1])
    return written
