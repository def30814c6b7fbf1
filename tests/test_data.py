"""Data: decoders of each source format, digest verification, atomic preparation, augmentation."""

import gzip
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from spikeadv import data
from spikeadv.data import (DATASETS, DatasetInfo, batches, decode_idx, decode_sprite, flip_crop, load,
                           prepare, synthetic)
from spikeadv.errors import SpikeAdvError


def sha(a):
    return data._sha256(a)


def test_sprite_decodes_to_channel_major_official_layout():
    rng = np.random.default_rng(0)
    official = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)  # N, C, H, W
    # tfjs sprite: one image per row, pixels row-major with RGB interleaved
    sprite = official.transpose(0, 2, 3, 1).reshape(5, 1024, 3)
    buf = io.BytesIO()
    Image.fromarray(sprite, "RGB").save(buf, format="PNG")
    decoded = decode_sprite(buf.getvalue())
    assert decoded.shape == (5, 3, 32, 32)
    assert np.array_equal(decoded, official)
    assert decoded[2, 1, 7, 9] == official[2, 1, 7, 9]  # green channel of image 2 at row 7, col 9


def idx_bytes(a: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()


def test_idx_decoder_plain_and_gzipped():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(decode_idx(idx_bytes(a)), a)
    assert np.array_equal(decode_idx(gzip.compress(idx_bytes(a))), a)
    with pytest.raises(ValueError, match="truncated"):
        decode_idx(idx_bytes(a)[:-1])
    with pytest.raises(ValueError, match="not an IDX"):
        decode_idx(b"PNG....")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A fake 'mnist' whose official digests are those of small arrays made here."""
    rng = np.random.default_rng(1)
    arrays = {s: (rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
              for s, n in (("train", 6), ("test", 4))}
    digests = {s: (sha(x), sha(y)) for s, (x, y) in arrays.items()}
    info = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), (0.1307,), (0.3081,), digests)
    monkeypatch.setitem(DATASETS, "mnist", info)
    calls = []

    def broken(tmp):
        calls.append("broken")
        raise OSError("no network")

    def foreign(tmp):  # decodes fine but is not the official data
        calls.append("foreign")
        return {s: (x ^ 1, y) for s, (x, y) in arrays.items()}

    def good(tmp):
        calls.append("good")
        return arrays

    return tmp_path, arrays, calls, broken, foreign, good


def test_prepare_tries_sources_in_order_verifies_and_is_idempotent(monkeypatch, tiny):
    root, arrays, calls, broken, foreign, good = tiny
    monkeypatch.setitem(data.SOURCES, "mnist", [("a", broken), ("b", foreign), ("c", good)])
    folder, already = prepare("mnist", root, log=lambda s: None)
    assert not already and calls == ["broken", "foreign", "good"]
    assert json.loads((folder / "manifest.json").read_text())["source"] == "c"
    ds = load("mnist", "test", root)
    assert torch.equal(ds.images, torch.from_numpy(arrays["test"][0]))
    assert ds.labels.dtype == torch.int64
    folder, already = prepare("mnist", root, log=lambda s: None)
    assert already and calls == ["broken", "foreign", "good"]  # no source touched again
    assert sorted(p.name for p in root.iterdir()) == ["mnist"]


def test_no_verified_source_writes_nothing(monkeypatch, tiny):
    root, _, _, broken, foreign, _ = tiny
    monkeypatch.setitem(data.SOURCES, "mnist", [("a", broken), ("b", foreign)])
    with pytest.raises(SpikeAdvError, match="could not prepare mnist.*a: OSError.*b: train split does not match"):
        prepare("mnist", root, log=lambda s: None)
    assert list(root.iterdir()) == []


def test_corrupt_and_tampered_files_are_named(monkeypatch, tiny):
    root, _, _, _, _, good = tiny
    monkeypatch.setitem(data.SOURCES, "mnist", [("c", good)])
    folder, _ = prepare("mnist", root, log=lambda s: None)
    path = folder / "train.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SpikeAdvError, match="train.safetensors is corrupt or truncated"):
        load("mnist", "train", root)
    from safetensors.numpy import save_file

    x, y = tiny[1]["train"]
    save_file({"images": x ^ 2, "labels": y}, str(path))
    with pytest.raises(SpikeAdvError, match="does not match the official release"):
        load("mnist", "train", root)
    # prepare repairs it from a source
    _, already = prepare("mnist", root, log=lambda s: None)
    assert not already and load("mnist", "train", root).images.shape == (6, 1, 28, 28)


def test_unknown_and_unprepared(tmp_path):
    with pytest.raises(SpikeAdvError, match="unknown dataset 'cifar100'.*cifar10"):
        load("cifar100")
    with pytest.raises(SpikeAdvError, match="unknown split"):
        load("cifar10", "validation", tmp_path)
    with pytest.raises(SpikeAdvError, match="spikeadv data prepare cifar10"):
        load("cifar10", "train", tmp_path)


def test_synthetic_is_seeded_balanced_and_split():
    a, b = synthetic("train"), synthetic("train")
    assert torch.equal(a.images, b.images) and a.digest == b.digest
    assert not torch.equal(synthetic("train", seed=1).images, a.images)
    test = synthetic("test")
    assert a.images.shape == (2048, 3, 32, 32) and a.images.dtype == torch.uint8 and len(test) == 512
    assert a.digest != test.digest
    counts = torch.bincount(a.labels, minlength=10)
    assert counts.min() >= 204 and counts.max() <= 205
    # same class templates in both splits: class means agree far better across splits than across classes
    m_train = torch.stack([a.images[a.labels == c].float().mean(0) for c in range(10)])
    m_test = torch.stack([test.images[test.labels == c].float().mean(0) for c in range(10)])
    d = torch.cdist(m_train.flatten(1), m_test.flatten(1))
    assert torch.equal(d.argmin(1), torch.arange(10))


def test_flip_crop_is_seeded_and_geometric():
    x = torch.rand(64, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(flip_crop(x, g()), flip_crop(x, g()))
    assert torch.equal(flip_crop(x, g(), pad=0, flip=False), x)
    flipped = flip_crop(x, g(), pad=0)
    assert all(torch.equal(f, s) or torch.equal(f, s.flip(2)) for f, s in zip(flipped, x))
    assert 10 < sum(not torch.equal(f, s) for f, s in zip(flipped, x)) < 54
    shifted = flip_crop(x, g(), pad=2, flip=False)
    for out, src in zip(shifted, x):  # each output is src shifted by (dy, dx) in [-2, 2], zero filled
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        assert any(torch.equal(out, padded[:, i:i + 8, j:j + 8]) for i in range(5) for j in range(5))


def test_batches_resume_at_a_batch_and_cover_the_epoch():
    ds = synthetic("test", n=100)
    full = list(batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5), augment=True))
    late = list(batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5), augment=True, start=3))
    assert len(full) == 7 and len(late) == 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], late))
    labels = torch.cat([y for _, y in full])
    assert torch.equal(labels.sort().values, ds.labels.sort().values)
    plain = next(batches(ds, 10, shuffle=False))
    assert torch.equal(plain[0], ds.images[:10].float() / 255)


def test_info_reports_preparation_and_verification(monkeypatch, tiny):
    root, _, _, _, _, good = tiny
    assert data.info("mnist", root)["prepared"] is False
    monkeypatch.setitem(data.SOURCES, "mnist", [("c", good)])
    prepare("mnist", root, log=lambda s: None)
    report = data.info("mnist", root)
    assert report["prepared"] and report["verified"] and report["source"] == "c"
    assert report["sizes"] == {"train": 6, "test": 4}
    (root / "mnist" / "test.safetensors").write_bytes(b"garbage")
    report = data.info("mnist", root)
    assert report["prepared"] is False and "test.safetensors" in report["problem"]
