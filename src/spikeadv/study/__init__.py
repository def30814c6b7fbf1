"""The study: the paper's whole experiment grid (section V, Table III; DESIGN section 2 "Scenarios"),
and the adaptive evaluation of its models (DESIGN section 8), both scheduled over a run directory.

Six models (ann, snn1, snn2 x instances 0 and 1), attacks crafted from every one of them, and every
target evaluated whitebox and under the three blackbox scenarios:

- whitebox: target K (instance 0) attacked by inputs crafted from itself;
- ``bb-K``: every target attacked by inputs crafted from K's instance 1.

A run directory holds everything, each artifact named by the hash of the recipe that makes it and
carrying a digest of its content (checked on every read; a mismatch is recomputed), so a rerun
reuses what exists and an interrupted run resumes where it stopped::

    .lock                    held by the one process writing here (who: pid, host, command)
    run.json                 the config, the models, stage wall times (written atomically)
    models/<kind><i>-<key>   checkpoints (training resumes epoch-wise)
    clean/<kind>-<key>.json  each target's expected correctness per clean image (K encoder draws)
    cells/<key>.json         one crafting job: its recipe and a result row per target and repeat
    results.jsonl            the tidy table (report.COLUMNS), gathered from cells/
    report/                  Table I, Fig. 2-4, Markdown and HTML (spikeadv.report)
    evaluation/<suite>/      the adaptive evaluation: its units (cells/), card and rows

An adversarial set is not stored: its recipe (source checkpoint hash, gradient, attack, eps, steps,
seeds) in the cell file regenerates it exactly.

The run is plan -> tasks -> gather. :mod:`.plan` (pure) lists every task (build a model, predict its
clean classes, craft and evaluate one cell) with its recipe, made there once, and its dependencies;
:func:`.tasks.run_task` runs one task from its recipe, the run directory and its dependencies'
results, on any process, through the computations of :mod:`.compute`; an executor
(:mod:`.executors`: ``local``, or ``ray`` on a local Ray or a cluster) runs the graph; the driver
(:mod:`.runner`) gathers the cells into ``results.jsonl``, hands the run to the report writer it was
given and is the one writer of ``run.json`` (:mod:`.rundir`: identity, lock, models of a run).
The adaptive evaluation: :mod:`.evaluation` (what to evaluate, units as tasks), :mod:`.units` (each
unit), :mod:`.card` (the robustness card).
"""

from .compute import clean_predictions, craft, judged, random_targets, rows
from .executors import Executor
from .plan import EXTRA_ATTACKS, Job, Task, bounded_kinds, cell_recipe, grid, main_gradients, plan
from .plan import cost as plan_cost
from .rundir import identity, load_model, lock, open_run
from .runner import run
from .tasks import run_task

__all__ = ["EXTRA_ATTACKS", "Executor", "Job", "Task", "bounded_kinds", "cell_recipe", "clean_predictions", "craft",
           "grid", "identity", "load_model", "lock", "main_gradients", "open_run", "plan", "plan_cost", "judged",
           "random_targets", "rows", "run", "run_task"]
