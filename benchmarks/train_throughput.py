"""Training throughput: our whole training loop vs a bare PyTorch loop, same model, batch and dtype.

Both run in this one process, alternating, on the same in-memory data; the ratio ours / bare is printed
(>= 1.0 means ours is at least as fast). Ours is ``spikeadv.models.train.train`` itself: batched augmentation,
the lr schedule, progress bar and the per-epoch atomic checkpoint included. The bare loop indexes a
float tensor, runs forward/backward/step and nothing else.

    python benchmarks/train_throughput.py                       # the cpu preset's model, bf16
    python benchmarks/train_throughput.py --preset smoke --images 4096 --fp32
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spikeadv.config.presets import get_preset
from spikeadv.data import synthetic, to_float
from spikeadv.models.network import Network
from spikeadv.models.train import train
from spikeadv.runtime import autocast, synchronize


def build(preset) -> Network:
    return Network(preset.spec, 3, (0.5,) * 3, (0.25,) * 3, width=preset.width, dropout=preset.dropout,
                   batchnorm=preset.batchnorm)


def ours(preset, ds, eval_ds, out: Path, device: torch.device = torch.device("cpu")) -> float:
    """Images/s of one epoch of our training loop on ``device`` (data moved there, as it does)."""
    net = build(preset)
    synchronize(device)
    start = time.perf_counter()
    cfg = dataclasses.replace(preset.ann, snapshots=0)  # the training steps, not the validation snapshots
    train(net, ds, eval_ds, cfg, seed=0, out=out, meta={"kind": "ann", "data": {}}, log=lambda s: None,
          device=device)
    synchronize(device)
    elapsed = time.perf_counter() - start
    out.unlink()
    return (len(ds) // preset.ann.batch_size) * preset.ann.batch_size / elapsed


def bare(preset, ds, device: torch.device = torch.device("cpu")) -> float:
    """Images/s of bare training steps on float tensors already resident on ``device``."""
    cfg = preset.ann
    net = build(preset).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    x_all, y_all = to_float(ds.images).to(device), ds.labels.to(device)
    steps = len(ds) // cfg.batch_size
    synchronize(device)
    start = time.perf_counter()
    perm = torch.randperm(len(ds), device=device)
    for i in range(steps):
        idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = x_all[idx]
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg.bf16, device):
            loss = F.cross_entropy(net(x).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--images", type=int, default=5120, help="training images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast for both")
    args = ap.parse_args()
    preset = get_preset(args.preset)
    cfg = dataclasses.replace(preset.ann, epochs=1, eval_every=1, bf16=preset.ann.bf16 and not args.fp32)
    preset = dataclasses.replace(preset, ann=cfg)
    ds = synthetic("train", n=args.images)
    eval_ds = synthetic("test", n=cfg.batch_size)  # our loop evaluates at the end of the epoch
    print(f"model {preset.spec} width {preset.width}, batch {cfg.batch_size}, "
          f"{'bf16 autocast' if cfg.bf16 else 'fp32'}, channels_last {cfg.channels_last}, "
          f"{torch.get_num_threads()} threads, {args.images} images per run")
    bare(preset, synthetic("train", n=2 * cfg.batch_size))  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for r in range(args.repeats):
            a = ours(preset, ds, eval_ds, Path(tmp) / "bench.safetensors")
            b = bare(preset, ds)
            rows.append((a, b))
            print(f"run {r + 1}: ours {a:.0f} img/s, bare {b:.0f} img/s, ratio {a / b:.3f}")
    ratio = statistics.median(a / b for a, b in rows)
    print(f"median ratio ours / bare: {ratio:.3f}")


if __name__ == "__main__":
    main()
