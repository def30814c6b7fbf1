"""The report rendered: a list of blocks written once as Markdown and once as self-contained HTML,
with the tables as CSV beside them. ``write_report`` regenerates all of it from a run directory."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from ..config.grid import KINDS, LABEL
from . import adaptive
from .analysis import UNPAIRED, Conclusion, conclusions, corrected, perturbation_audit
from .checks import sanity_checks
from .figures import figure2, figure3, figure4, glossary, publish, save_figure
from .load import COLUMNS, FIG3_EPS, FIG4_STYLE, LINF_SLACK, PAPER_CLEAN, SCENARIO_TITLE, Run, fmt_eps, load_run
from .paired import CONFIDENCE, RESAMPLES
from .tables import (
    COMPARISON_COLUMNS,
    PER_CELL,
    audit_table,
    comparison_rows,
    controls_table,
    fig2_table,
    gradient_table,
    paper_table,
    table1,
    to_csv,
)

# A report is a list of blocks, each rendered once as Markdown and once as HTML:
# ("h", level, text) | ("p", text) | ("items", [text]) | ("table", (headers, rows)) | ("figure", name, caption)
Block = tuple
SYNTHETIC = ("**Synthetic data: the comparison with the paper does not apply.** This run's dataset is `synthetic` "
             "(generated images, not CIFAR-10), so its numbers test the pipeline, not the paper: the paper's values "
             "and the verdicts are computed as for any run, but none of them is evidence for or against the "
             "paper's conclusions.")
SYNTHETIC_PAPER = ("**Synthetic data**: the paper's values are CIFAR-10 losses; this run's do not compare with "
                   "them.")
SYNTHETIC_MARK = " (synthetic data: not evidence about the paper)"
LINE_STYLE = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}
CAPTION = {
    "fig2": "Fig. 2: accuracy loss (pp) per attack (rows) and scenario (columns) on eps-bounded inputs, all "
            "panels on one y-scale; bars: ANN blue, SNN-I grey, SNN-II black, whiskers = std over encoder "
            "repeats; red triangle and red edge = the lowest loss of each group (ties all marked); hatched "
            "outline = the paper's faithful SNNAdv where its inputs are not eps-bounded. " + glossary("fig2"),
    "fig3": f"Fig. 3: SNN-I (grey) vs SNN-II (black) accuracy loss (pp) at eps {fmt_eps(FIG3_EPS)} per attack, "
            "all panels on one y-scale; hatched outline = faithful SNNAdv (not eps-bounded). " + glossary("fig3"),
    "fig4": "Fig. 4: SNN-II accuracy loss (pp) under I-FGSM on eps-bounded inputs, both panels on one y-scale; "
            "colour = number of I-FGSM steps (left legend); line style = where the inputs come from (right "
            "legend, grey): " + ", ".join(f"{LINE_STYLE[st]} = {SCENARIO_TITLE[sc]}"
                                           for sc, st in FIG4_STYLE.items()) + ". " + glossary("fig4"),
}


def _inline(text: str) -> str:
    """HTML for the little Markdown the report uses: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


class _Markdown:
    """Blocks as Markdown; figures point at the PNG/SVG files beside the report."""

    def h(self, level: int, text: str) -> str:
        return f"{'#' * level} {text}"

    def p(self, text: str) -> str:
        return text

    def items(self, items: list[str]) -> str:
        return "\n".join(f"- {item}" for item in items)

    def table(self, table: tuple[list[str], list[list[str]]]) -> str:
        headers, rows = table
        if not rows:
            return "(none)"
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])

    def figure(self, name: str, caption: str) -> str:
        return f"![{caption}]({name}.png)\n\n*{caption}* ([SVG]({name}.svg))"


class _Html:
    """Blocks as HTML; figures embedded as base64 PNG so the page needs no other file."""

    def __init__(self, images: Mapping[str, bytes]):
        self.images = images

    def h(self, level: int, text: str) -> str:
        return f"<h{level}>{_inline(text)}</h{level}>"

    def p(self, text: str) -> str:
        return f"<p>{_inline(text)}</p>"

    def items(self, items: list[str]) -> str:
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>"

    def table(self, table: tuple[list[str], list[list[str]]]) -> str:
        headers, rows = table
        if not rows:
            return "<p>(none)</p>"
        head = "".join(f"<th>{_inline(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def figure(self, name: str, caption: str) -> str:
        data = base64.b64encode(self.images[name]).decode("ascii")
        return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(caption)}</figcaption></figure>")


def _render(blocks: list[Block], renderer: _Markdown | _Html) -> list[str]:
    return [getattr(renderer, kind)(*args) for kind, *args in blocks]


def _md(blocks: list[Block]) -> str:
    return "\n\n".join(_render(blocks, _Markdown())) + "\n"


def _html(blocks: list[Block], images: Mapping[str, bytes], title: str) -> str:
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(_render(blocks, _Html(images)))
            + "\n</body></html>\n")


def synthetic(run: Run) -> bool:
    """Whether the run's data is the generated ``synthetic`` dataset, which the paper says nothing about."""
    return run.meta["preset"].get("dataset", "").startswith("synthetic")


def _subset(size: object) -> str:
    """The test subset as run.json records it: a number of images, or all of them (None or absent)."""
    return "all" if size is None else str(size)


def _facts(run: Run) -> list[str]:
    meta, preset = run.meta, run.meta["preset"]
    sizes = sorted({int(r["n"]) for r in run.rows})
    facts = [
        f"Preset: `{preset.get('name', '?')}`; dataset: `{preset.get('dataset', '?')}`; "
        f"test subset: {_subset(preset.get('test_subset'))}; images per cell: "
        + (str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"),
        f"spikeadv version: {meta.get('version', '?')}",
        "Main gradient per source kind: " + ", ".join(f"{LABEL[k]} `{meta['gradients'][k]}`" for k in KINDS),
        f"Results: {len(run.rows)} rows in {len(run.cells)} cells; per-image outcomes: "
        + ("yes (paired statistics)" if run.paired else f"no ({UNPAIRED})"),
        f"Trained instances per kind: {len({m.get('instance') for m in meta['models']})} (the study's targets: "
        "instance 0, its blackbox inputs from instance 1; the adaptive evaluation's: every instance)",
        "Judge: " + (f"expected correctness over K = {preset['study']['draws']} encoder draws per image"
                     + (" (majority vote)" if preset["study"].get("vote") else "")
                     + ", common random numbers" if "draws" in preset.get("study", {})
                     else "earlier protocol: encoder repeats averaged per image (no common draws)"),
    ]
    augment = {f"{LABEL.get(m['kind'], m['kind'])}": m["augmentation"] for m in meta["models"]
               if m.get("instance") == 0 and "augmentation" in m}
    if augment:
        facts.append("Training augmentation: " + ", ".join(
            f"{k} " + ("none" if a is None else f"random crop (pad {a.get('pad')})"
                       + (" + horizontal flip" if a.get("flip") else ", no flip")) for k, a in augment.items()))
    versions = meta.get("versions")
    if isinstance(versions, dict):
        facts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    stages = meta.get("stages") or {}
    if stages:
        total = sum(float(s) for s in stages.values())
        facts.append("Stage wall times: " + ", ".join(f"{k} {float(s):.1f} s" for k, s in stages.items())
                     + f" (total {total:.1f} s)")
    return facts


def conclusion_items(found: list[Conclusion], mark: str = "") -> list[str]:
    """Each conclusion's verdict, then each of its judgements with its interval and the cells it rests on;
    ``mark`` follows every verdict (the synthetic-data caveat)."""
    items = []
    for c in found:
        items.append(f"({c.key}) {c.claim}: **{c.verdict}**{mark}")
        for j in c.judgements:
            p = j.stats
            stats = "" if p is None else (f"adversarial accuracy {100 - p.low:.1f}% vs {100 - p.high:.1f}%, error "
                                          f"difference {p.interval()} over {p.n} images ({p.test()}); ")
            pooled = "" if j.q is None else (f"; opposite signs (Gail-Simon) p = {j.q[1]:.3g}"
                                             + (f"; cells the other way: {', '.join(j.opposite)}" if j.opposite else ""))
            pooled += (f"; images using less than 99% of eps in: {', '.join(j.short)}" if j.short else "")
            items.append(f"({c.key}) {j.what} [{j.gradient}]: {stats}**{j.verdict}** — cells: "
                         + (j.cells() if j.pairs else "none in this run") + pooled + mark)
        items += [f"({c.key}) {why}" for why in c.excluded]
    return items


def _adaptive(card: dict | None, rejudged: list[adaptive.Rejudged]) -> list[Block]:
    """The section that judges the whitebox claims on the run's robustness curves (adaptive evaluation)."""
    title = ("h", 2, "Robustness curves and minimal perturbations (adaptive evaluation)")
    if card is None:
        return [title, ("p", "Not evaluated: `spikeadv evaluate RUN_DIR` runs the adaptive suite (APGD, "
                             "Square, several gradient estimators, worst case per image over an eps grid, the null "
                             "attack, gradient-masking checks) and this section then shows it.")]
    if not adaptive.curves(card):
        return [title, ("p", f"The evaluation in this run directory (suite `{card['suite']}`) predates robustness "
                             "curves and judged stochastic models on single encoder draws, so it is not shown; "
                             "`spikeadv evaluate RUN_DIR` writes a new one.")]
    focus = card["cards"][0]["eval_eps"] if card["cards"] else 8
    return [
        title,
        ("p", f"`spikeadv evaluate`, suite `{card['suite']}` ({card['suite_doc']}), on {card['images']} test "
              "images, every trained instance. **Robust accuracy** at eps (%, the primary metric): per image the "
              "worst case over every (estimator, attack) pair, a stochastic model judged by its expected "
              f"correctness over K = {card.get('draws', 1)} encoder draws, the same draws for every input of an "
              "image (common random numbers); adversarial images found at one eps count at every larger one. "
              "**eps*** is an image's smallest grid eps at which it is broken (expected correctness below 1/2; "
              "0 when already below on the clean image; beyond the grid counted as twice its largest eps). AUC: "
              "the mean robust accuracy over [0, largest eps]. The null attack runs through the identical "
              "pipeline: the image itself (must keep clean accuracy) and random +-eps signs."),
        ("table", adaptive.table(card)),
        ("p", "One judgement per claim and model pair on eps* (Wilcoxon's signed-rank test; the median paired "
              "difference with a bootstrap interval over instance pairs, then images), Holm-adjusted together "
              "with the study's judgements above; the per-eps robust accuracies (McNemar) and the attack "
              "success rate on images both models get right (secondary) beside it."),
        ("items", adaptive.items(rejudged, focus)),
    ]


PAIRED = ("Each verdict is a paired comparison over the attacked images on **adversarial accuracy** (not "
          "the paper's loss, which is capped by clean accuracy: a weaker model has less to lose): per image, "
          "the difference of the two sides' adversarial errors (1 - expected correctness over K encoder "
          "draws, averaged over the cell pairs it pools), with a "
          f"{CONFIDENCE:.0%} percentile bootstrap interval ({RESAMPLES} resamples of the images) and McNemar's "
          "exact test (one pair of 0/1 outcomes) or Wilcoxon's signed-rank test. One family: every "
          "judgement here and in the adaptive section, Holm-adjusted (family-wise 5%). **supported**: "
          "adjusted p < 0.05 in the claimed direction; **not supported**: in the other; otherwise **not "
          "distinguishable at this sample size**. Cells are pooled only where Gail and Simon's test finds no "
          "effects of opposite sign beyond noise; a pooled line names any cell of opposite sign. Cells come "
          "from the Table III grid (Fig. 2 attacks and eps), crafted with the "
          "paper's gradient where its inputs are eps-bounded and with eps-bounded SNNAdv (`snnadv-clean`) "
          "where the audit flags the faithful one; (b) and (c) are judged again under the strongest "
          "gradient the run evaluated.")


def _blocks(run: Run, found: list[Conclusion], notes: list[str], card: dict | None = None,
            rejudged: list[adaptive.Rejudged] = ()) -> list[Block]:
    checks, audit = sanity_checks(run), perturbation_audit(run)
    flagged = [a for a in audit if a.flagged]
    paired = PAIRED
    if not run.paired:
        paired = (f"**{UNPAIRED}**: this run's results predate per-image outcomes, so no verdict or sanity "
                  "check can be judged; the tables and figures above are complete. Rerun the study to judge them.")
    fake = synthetic(run)
    caveat: list[Block] = [("p", SYNTHETIC)] if fake else []
    return [
        ("h", 1, f"spikeadv report: {run.meta['preset'].get('name', run.path.name)}"),
        ("p", "Reproduction of Sharmin et al., \"A Comprehensive Analysis on Adversarial Robustness of Spiking "
              "Neural Networks\". Loss = clean accuracy - adversarial accuracy, in percentage points (pp)."),
        *caveat,
        ("h", 2, "Run"),
        ("items", _facts(run)),
        ("h", 2, "Table I: clean accuracy"),
        ("table", table1(run)),
        ("h", 2, "Figures"),
        *(("figure", name, caption) for name, caption in CAPTION.items()),
        ("items", notes or ["Every figure cell has a result."]),
        ("h", 2, "Paper vs this run: FGSM whitebox loss at 8/255"),
        *([("p", SYNTHETIC_PAPER)] if fake else []),
        ("table", paper_table(run)),
        ("h", 2, "Fig. 2 numbers (loss, pp; lowest per row in bold; faithful SNNAdv rows marked)"),
        ("table", fig2_table(run)),
        *_controls(run),
        ("h", 2, "Other gradient sources vs the main one"),
        ("table", gradient_table(run)),
        ("h", 2, "Perturbation audit"),
        ("p", "Mean true L-inf of x_adv - x (1/255 units) next to eps. SNNAdv in faithful mode perturbs the "
              "rate-coded image X_rate, so the rate noise adds to eps; rows with mean L-inf > eps + "
              f"{LINF_SLACK} are flagged ({len(flagged)} here)."),
        ("table", audit_table(audit)),
        ("h", 2, "Sanity checks"),
        ("p", "On the ANN target, main gradient. An ordering fails only where a paired comparison of the two "
              f"cells over the same images ({CONFIDENCE:.0%} bootstrap interval, McNemar's exact test beside it) "
              "shows it broken beyond noise; any cell that goes the other way is named."),
        ("items", [f"**{c.verdict}** {c.name}: {c.detail}" for c in checks]),
        ("h", 2, "The paper's conclusions in this run" + (" (synthetic data: not a test of the paper)"
                                                          if fake else "")),
        *caveat,
        ("p", paired),
        ("items", conclusion_items(found, SYNTHETIC_MARK if fake else "")),
        ("h", 3, "Every paired comparison (also in comparisons.csv, with each cell pair spelled out)"),
        ("table", (COMPARISON_COLUMNS, comparison_rows(found))),
        *_adaptive(card, list(rejudged)),
    ]


def _controls(run: Run) -> list[Block]:
    """The controls' table (DESIGN section 8.5), where the run has them."""
    table = controls_table(run)
    if table is None:
        return []
    return [("h", 2, "Controls: adversarial accuracy (%) beside an ANN of each SNN's accuracy and an ANN on its input"),
            ("p", "The accuracy-matched ANNs are the ANN's weights at the snapshot of its training whose validation "
                  "accuracy is closest to each SNN's (Table I gives the gap); the rate-input ANN is the same network "
                  "trained and run on the mean of SNN-II's T Poisson frames, judged like SNN-II over its encoder "
                  "draws and attacked through its straight-through encoder. Conclusions (a') and (b') judge the "
                  "paper's (a) and (b) against them."),
            ("table", table)]


def _write_text(path: Path, text: str) -> Path:
    return publish(path, lambda tmp: tmp.write_text(text))


# relative cost of each part of the report (measured on the cpu study), for an honest progress bar
_COST = {"conclusions": 2, "tables": 1, "fig2": 6, "fig3": 2, "fig4": 1, "report": 1}


def write_report(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Regenerate the whole report of a run directory (default into ``run_dir/report``); returns its files."""
    run = load_run(run_dir)
    bar = tqdm(total=sum(_COST.values()), desc="report", leave=False, dynamic_ncols=True, mininterval=0.5,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")

    def done(part: str) -> None:
        bar.set_postfix_str(part, refresh=False)
        bar.update(_COST[part])

    card = adaptive.load_card(Path(run_dir))
    rejudged = adaptive.rejudge(card) if adaptive.curves(card) else []
    found, adjusted = corrected(conclusions(run), [r.stats for r in rejudged])  # one family, Holm
    rejudged = [replace(r, stats=a) for r, a in zip(rejudged, adjusted)]
    done("conclusions")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _write_text(out / "table1.md", _md([("table", table1(run))])),
        _write_text(out / "table1.csv", to_csv(
            ["kind", "instance", "clean_acc", "clean_std", "draws", "T", "encoding", "val_acc", "matched_gap",
             "matched_within", "paper_clean_acc"],
            ([m["kind"], m.get("instance"), m.get("clean_acc"), m.get("clean_std"), m.get("draws", m.get("repeats")), m.get("T"),
              m.get("encoding"), m.get("val_acc"), (m.get("matched") or {}).get("gap"),
              (m.get("matched") or {}).get("matched"), PAPER_CLEAN.get(m["kind"])] for m in run.meta["models"]))),
        _write_text(out / "results.csv", to_csv(COLUMNS, ([r[c] for c in COLUMNS] for r in run.rows))),
        _write_text(out / "comparisons.csv", to_csv([*COMPARISON_COLUMNS, PER_CELL], comparison_rows(found, False))),
    ]
    done("tables")
    notes, images = [], {}
    for name, build in (("fig2", figure2), ("fig3", figure3), ("fig4", figure4)):
        fig, fig_notes = build(run)
        paths = save_figure(fig, out / name)
        images[name] = paths[0].read_bytes()
        notes += fig_notes
        written += paths
        done(name)
    blocks = _blocks(run, found, notes, card, rejudged)
    written.append(_write_text(out / "report.md", _md(blocks)))
    written.append(_write_text(out / "report.html", _html(blocks, images, blocks[0][2])))
    done("report")
    bar.close()
    return written
