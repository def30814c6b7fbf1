"""The report: Table I, Fig. 2-4, checks and the paper's conclusions, from a run directory alone.

Reads ``run.json`` and ``results.jsonl`` (DESIGN section 2, "Metrics" and "Report") and writes
Markdown/CSV tables, PNG/SVG figures and a self-contained HTML page. Nothing here runs a model: every
number comes from the saved tidy table and its per-image outcomes, so a report can be regenerated at
any time. ``load`` reads a run, ``paired`` compares cells image by image, ``analysis`` judges the
audit and conclusions, ``checks`` the sanity checks, ``figures`` and ``tables`` draw them, ``render``
writes the report.
"""

from ..config.grid import KINDS, SNNS
from .analysis import (
                       Conclusion,
                       Judgement,
                       conclusions,
                       flagged,
                       perturbation_audit,
                       shown,
                       strongest,
                       verdict_key,
)
from .checks import Check, sanity_checks
from .figures import figure2, figure3, figure4
from .load import COLUMNS, FIG2_ATTACKS, SCENARIOS, Cell, Run, aggregate, load_run, lowest, source_kind
from .paired import Paired, bootstrap, compare, mcnemar_p
from .render import write_report
from .tables import fig2_table, gradient_table, paper_table, table1

__all__ = [
    "COLUMNS", "FIG2_ATTACKS", "KINDS", "SCENARIOS", "SNNS", "Cell", "Check", "Conclusion", "Judgement", "Paired",
    "Run", "aggregate", "bootstrap", "compare", "conclusions", "fig2_table", "figure2", "figure3", "figure4",
    "flagged", "gradient_table", "load_run", "lowest", "mcnemar_p", "paper_table", "perturbation_audit",
    "sanity_checks", "shown", "source_kind", "strongest", "table1", "verdict_key", "write_report",
]
