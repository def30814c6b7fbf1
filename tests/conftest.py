"""Fixtures shared by several test modules."""

import pytest

from spikeadv import cli


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted smoke study, run once per session (the tests that share it must not change it;
    copy it to change it)."""
    out = tmp_path_factory.mktemp("study") / "run"
    assert cli.main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    return out
