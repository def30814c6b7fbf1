"""Bad input: one readable line on stderr, a non-zero exit, no traceback, nothing written."""

import subprocess
import sys

import pytest
import torch


def run(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "spikeadv", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEADV_DATA", str(tmp_path / "data"))
    (tmp_path / "pickle.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickle.pt")
    return tmp_path


CASES = {
    "malformed spec": (["train", "ann", "--preset", "smoke", "--set", "spec=32x32-8c3-2q-10o"], "'2q'"),
    "unknown dataset": (["data", "prepare", "cifar100"], "cifar100"),
    "unknown dataset in a preset": (["train", "ann", "--preset", "smoke", "--set", "dataset=imagenet"], "imagenet"),
    "dataset not prepared": (["train", "ann", "--preset", "cpu"], "spikeadv data prepare cifar10"),
    "missing checkpoint": (["eval", "nope.safetensors"], "nope.safetensors does not exist"),
    "pickle checkpoint": (["eval", "pickle.pt"], "never unpickles"),
    "foreign file": (["eval", "README.txt"], "README.txt"),
    "bad override": (["train", "ann", "--preset", "smoke", "--set", "ann.epochs=-2"], "epochs"),
    "unknown preset": (["train", "ann", "--preset", "huge"], "unknown preset"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(workdir, case):
    args, needle = CASES[case]
    (workdir / "README.txt").write_text("not a checkpoint\n")
    before = files(workdir)
    r = run(args, workdir)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spikeadv: error:"), r.stderr
    assert needle in lines[0]
    assert files(workdir) == before, "a failed command wrote something"


def test_existing_output_is_not_overwritten_without_resume(workdir):
    out = workdir / "ann.safetensors"
    out.write_bytes(b"precious")
    r = run(["train", "ann", "--preset", "smoke", "--out", out], workdir)
    assert r.returncode != 0 and "--resume" in r.stderr
    assert out.read_bytes() == b"precious"
