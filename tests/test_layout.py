"""The house in order (README "Layout"): the walls between the package's layers hold (import-linter's
contracts in pyproject.toml), the report, the presets and the records load without torch, and no
function grows past 60 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "spikeadv"
TORCH_FREE = ("spikeadv.report", "spikeadv.config.presets", "spikeadv.config.grid", "spikeadv.config.spec",
              "spikeadv.config.spiking", "spikeadv.config.datasets", "spikeadv.records", "spikeadv.records.outcomes",
              "spikeadv.records.provenance")


def test_the_walls_between_layers_hold():
    """Every contract: layers (cli > api > study | report > attack > models > data > runtime | config |
    records > errors), the report and the plain-data packages' forbidden imports, no import loop."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_the_report_presets_and_records_load_without_torch():
    code = f"import sys\nfor m in {TORCH_FREE!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'safetensors')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_report_regenerates_without_torch(run_dir, tmp_path):
    """Not only importable: writing a whole report from saved results never loads torch."""
    code = ("import sys\nfrom pathlib import Path\nfrom spikeadv.report import write_report\n"
            f"written = write_report(Path({str(run_dir)!r}), Path({str(tmp_path / 'report')!r}))\n"
            "print(len(written), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, torch_loaded = out.split()
    assert int(count) > 5 and torch_loaded == "False"


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long
