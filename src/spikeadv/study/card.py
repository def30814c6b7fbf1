"""The robustness card of an evaluation (:mod:`.evaluation`): ``card.json`` (every number, the settings,
versions and the checks), ``card.md`` (robust accuracy per eps, eps*, AUC, the null attack, the winners,
the checks), one plot per model of robust accuracy vs eps and accuracy vs steps per estimator, and ``rows.jsonl`` in the study's results format
(``report.COLUMNS``): for each model and eps of the grid the worst case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..attack.checks import pct, verdict
from ..config.grid import by_eps
from ..records import atomic_write, outcomes, write_json


def rows(card: dict) -> list[dict]:
    """Result rows (whitebox) of one card: the ensemble's worst case at each eps of the grid, judged by
    expected correctness (``correct``: p >= 1/2 per image)."""
    out, model = [], card["model"]
    clean = np.array(card["clean"])
    for eps, e in by_eps(card["eps"]):
        p = np.array(e["p"])
        right = clean >= 0.5
        out.append({
            "target": model["kind"], "source_kind": model["kind"], "source_instance": model.get("instance", 0),
            "scenario": "whitebox", "gradient": "ensemble", "attack": "worst-case", "eps": float(eps),
            "steps": max(q["steps"] for q in e["pairs"]), "repeat": 0, "n": len(p), "draws": card["judge"]["draws"],
            "clean_acc": round(100 * e["clean_acc"], 4), "adv_acc": round(100 * e["worst_acc"], 4),
            "loss": round(100 * (e["clean_acc"] - e["worst_acc"]), 4),
            "success_rate": round(100 * float((right & (p < 0.5)).sum()) / max(1, int(right.sum())), 4),
            "target_hit_rate": None, "linf": round(float(np.mean(e["linf"])), 4), "l2": round(float(np.mean(e["l2"])), 5),
            "correct": outcomes.pack(p >= 0.5),
        })
    return out


def _star(card: dict) -> str:
    star = card["median_eps_star"]
    return f"> {max(card['grid']):g}" if star is None else f"{star:g}"


def markdown(cards: list[dict], meta: dict) -> str:
    """The card as Markdown: settings, robust accuracy per eps with eps* and AUC, the null attack, the
    pairs that won, the checks."""
    grid = cards[0]["grid"] if cards else []
    lines = [f"# Robustness card: {meta['source']}", "",
             f"Suite `{meta['suite']}` (each model ran the pairs listed under it: those of the suite whose "
             f"estimator applies to it); {'L-inf' if meta.get('norm', 'linf') == 'linf' else 'L2 (eps: the radius)'} "
             "threat model in pixel space [0, 1], applied "
             "before normalisation and before the encoder; the model judged as deployed (its T, encoder, reset): "
             f"a stochastic model by its expected correctness over K = {meta['draws']} encoder draws"
             + (" (majority vote)" if meta.get("vote") else "") + ", the same draws for every input of an image; "
             f"{meta['images']} test images, seed {meta['seed']}; eps in 1/255 units, adversarial images found at "
             "one eps counted at every larger one. eps*: an image's smallest grid eps at which it is broken. "
             f"spikeadv {meta['versions']['spikeadv']}, torch {meta['versions']['torch']}, device {meta['device']}.", "",
             "| model | runs as | clean | " + " | ".join(f"{e:g}" for e in grid)
             + " | median eps* | AUC | null (eps 0) |",
             "|---|---|---|" + "---|" * len(grid) + "---|---|---|"]
    for card in cards:
        m = card["model"]
        lines.append(f"| {m['name']} | {m['runs']} | {pct(card['clean_acc'])} | "
                     + " | ".join(pct(e["worst_acc"]) for _, e in by_eps(card["eps"]))
                     + f" | {_star(card)} | {pct(card['auc'])} | {pct(card['null']['zero'])} |")
    for card in cards:
        m = card["model"]
        lines += ["", f"## {m['name']} ({m['file']})", "",
                  "Null attack, random +-eps signs: " + ", ".join(f"{pct(v)} at {k}" for k, v in
                                                                 sorted(card["null"]["noise"].items(), key=lambda i: float(i[0]))),
                  "", "Pairs in order (images each ran on, broke, broke first):", ""]
        for eps, e in by_eps(card["eps"]):
            lines.append(f"- eps {eps}: " + "; ".join(
                f"{p['name']} {p['fooled']}/{p['ran']} ({p['won']} first, {p['seconds']:.0f} s)" for p in e["pairs"]))
        lines += ["", f"![robust accuracy vs eps, accuracy vs steps]({m['name']}.png)", "", "Gradient-masking checks:", ""]
        lines += [f"- {c['name']} [{c['estimator']}]: {verdict(c['name'], c['passed'], bold=True)}: {c['detail']}"
                  for c in card["checks"]]
    return "\n".join(lines) + "\n"


def plot(card: dict, path: Path) -> None:
    """Robust accuracy vs eps (the ensemble, with the null attack's noise and each main estimator's
    APGD-CE) on the left, accuracy vs APGD-CE steps at the evaluated eps on the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    left, right = fig.subplots(1, 2, sharey=True)
    grid = [float(e) for e, _ in by_eps(card["eps"])]
    left.plot(grid, [100 * e["worst_acc"] for _, e in by_eps(card["eps"])], marker="o", color="black",
              linewidth=2, label="worst case (ensemble)")
    left.plot(grid, [100 * card["null"]["noise"][f"{e:g}"] for e in grid], linestyle=":", color="grey",
              label="null: random signs")
    for name, c in card["curves"].items():
        eps = sorted(c["eps"], key=float)
        left.plot([float(e) for e in eps], [100 * c["eps"][e] for e in eps], marker=".", alpha=0.6, label=name)
        steps = sorted(c["steps"], key=int)
        right.plot([int(s) for s in steps], [100 * c["steps"][s] for s in steps], marker="o", label=name)
    left.set(xscale="log", xlabel="eps (1/255, log scale; 255 = unbounded)", ylabel="robust accuracy (%)",
             title=f"{card['model']['name']}: robust accuracy vs eps")
    right.set(xscale="log", xlabel="APGD-CE steps (log scale)", title=f"vs steps at eps {card['eval_eps']:g}/255")
    left.set_ylim(-2, 102)
    left.legend(fontsize=7)
    right.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def write(folder: Path, cards: list[dict], meta: dict, paired: list[str] = ()) -> list[Path]:
    """card.json, card.md, rows.jsonl and a plot per model into ``folder`` (each written atomically);
    ``paired``: the lines of a paired comparison of the models, a section of their own."""
    written = [folder / "card.json", folder / "card.md", folder / "rows.jsonl"]
    cards = [{k: v for k, v in c.items() if not k.startswith("adversarial")} for c in cards]  # tensors: returned only
    write_json(written[0], {**meta, "cards": cards, **({"paired": list(paired)} if paired else {})})
    section = "".join(f"- {line}\n" for line in paired)
    text = markdown(cards, meta) + (f"\n## Paired comparison (the same images, Holm across the family)\n\n{section}"
                                    if paired else "")
    atomic_write(written[1], lambda tmp: tmp.write_text(text))
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for c in cards for r in rows(c))
    atomic_write(written[2], lambda tmp: tmp.write_text(lines))
    for card in cards:
        written.append(folder / f"{card['model']['name']}.png")
        plot(card, written[-1])
    return written
