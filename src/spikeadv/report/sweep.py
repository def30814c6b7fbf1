"""The figure and table of ``spikeadv sweep`` (robustness against T and encoding, DESIGN section 8.5),
from its ``sweep.json`` alone: robust accuracy at each eps against T, one line per kind, the ANN as a
horizontal line, with 95% bootstrap intervals over the attacked images."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from ..errors import SpikeAdvError
from .figures import STYLE, publish, save_figure
from .paired import bootstrap

LINES = {  # series -> label, colour, line style
    "ann": ("ANN", "#1f5fbf", "-"),
    "ann-rate": ("ANN on the rate image", "#1f5fbf", ":"),
    "snn2": ("SNN-II (LIF, Poisson)", "#202020", "-"),
    "snn1": ("SNN-I (IF, Poisson)", "#a0a0a0", "-"),
    "snn1-signed": ("SNN-I (IF, Poisson, signed reset)", "#a0a0a0", "--"),
    "snn1-direct": ("SNN-I (IF, direct input)", "#a0a0a0", ":"),
}


def summary(points: list[dict]) -> list[dict]:
    """Per point and eps: robust accuracy (%, the mean expected correctness) and its 95% interval."""
    out = []
    for p in points:
        for eps, per_image in p["p"].items():
            d = 100.0 * np.asarray(per_image, dtype=np.float64)
            low, high = bootstrap(d)
            out.append({"series": p["series"], "T": p["T"], "eps": int(eps), "acc": float(d.mean()),
                        "low": low, "high": high, "n": len(d)})
    return out


def write(path: Path, out: Path | None = None) -> list[Path]:
    """``sweep.png``/``.svg`` and ``sweep.md`` beside ``path`` (a sweep.json) or in ``out``."""
    try:
        points = json.loads(Path(path).read_text())["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpikeAdvError(f"{path} is not a sweep's record ({e}); run `spikeadv sweep` first") from None
    out = Path(out or Path(path).parent)
    rows = summary(points)
    eps_values = sorted({r["eps"] for r in rows if r["eps"] > 0})
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.4 * len(eps_values), 3.0), layout="constrained")
        axes = fig.subplots(1, len(eps_values), squeeze=False, sharey=True)[0]
        for ax, eps in zip(axes, eps_values):
            for series, (label, color, style) in LINES.items():
                got = sorted((r for r in rows if r["series"] == series and r["eps"] == eps),
                             key=lambda r: r["T"] or 0)
                if not got:
                    continue
                if series == "ann":
                    r = got[0]
                    ax.axhline(r["acc"], color=color, linestyle=style, label=label)
                    ax.axhspan(r["low"], r["high"], color=color, alpha=0.12, linewidth=0)
                    continue
                T = [r["T"] for r in got]
                ax.errorbar(T, [r["acc"] for r in got], yerr=[[r["acc"] - r["low"] for r in got],
                                                               [r["high"] - r["acc"] for r in got]],
                            color=color, linestyle=style, marker="o", markersize=3, capsize=2, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["T"] for r in rows if r["T"]}), minor=False)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(f"eps = {eps}/255 (PGD, whitebox)")
            ax.set_xlabel("T (timesteps)")
        axes[0].set_ylabel("Robust accuracy (%)")
        axes[0].legend(fontsize=6)
    written = save_figure(fig, out / "sweep")
    table = ["| Model | T | eps (1/255) | Robust accuracy (%) | 95% interval | Images |", "|---|---|---|---|---|---|"]
    table += [f"| {LINES[r['series']][0]} | {r['T'] or '—'} | {r['eps']} | {r['acc']:.1f} | "
              f"[{r['low']:.1f}, {r['high']:.1f}] | {r['n']} |" for r in rows]
    return [*written, publish(out / "sweep.md", lambda tmp: tmp.write_text("\n".join(table) + "\n"))]
