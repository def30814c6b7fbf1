"""Fixtures shared by several test modules."""

import pytest
from fake_run import make_run

from spikeadv import cli, report


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted smoke study, run once per session (the tests that share it must not change it;
    copy it to change it)."""
    out = tmp_path_factory.mktemp("study") / "run"
    assert cli.main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A synthetic run directory for the report's tests (fake_run)."""
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def written(run_dir):
    return report.write_report(run_dir)


@pytest.fixture(scope="module")
def run(run_dir):
    return report.load_run(run_dir)

