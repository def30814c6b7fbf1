"""Fixtures shared by several test modules, and how a test takes an optional dependency."""

import importlib
import platform

import pytest
from fake_run import make_run

from spikeadv import cli, report, runtime


@pytest.fixture(autouse=True)
def on_the_cpu():
    """Every test starts with this process's device chosen as the CPU, on any machine (the API's
    ``device=None`` follows it); tests of the GPU path name their device."""
    runtime.use("cpu")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted smoke study, run once per session (the tests that share it must not change it;
    copy it to change it). On the CPU on every machine: the tests that compare with it run there."""
    out = tmp_path_factory.mktemp("study") / "run"
    assert cli.main(["run", "--preset", "smoke", "--out", str(out), "--device", "cpu"]) == 0
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



def dependency(module: str, linux_x86_only: bool = False):
    """A test dependency the test extra installs (pyproject ``[test]``): missing where the extra installs
    it is a failure, not a silent skip; on a platform where it cannot install (``linux_x86_only``:
    Triton's wheels) the test is skipped and says why."""
    if linux_x86_only and (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        return pytest.importorskip(module, reason=f"{module} installs on Linux x86_64 only, not on "
                                                  f"{platform.system()} {platform.machine()}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is missing ({e}); install the test extra: pip install -e '.[test]'")
