"""Training (paper section IV-B) and clean accuracy.

One loop: SGD with the preset's schedule, batched augmentation, optional CPU bf16 autocast and
channels_last. Every epoch's randomness (data order, augmentation, dropout) is derived from
(seed, epoch), and every epoch ends with an atomic checkpoint holding the weights, the optimizer's
momentum and the metrics so far, so ``resume`` after a kill -9 redoes only the unfinished epoch and
reaches bit-identical final weights on the same machine. Under ``torchrun --nproc-per-node N`` the
processes share every global batch (:mod:`spikeadv.runtime.distributed`) and reach the weights of one process within
float tolerance; rank 0 logs and writes, and a checkpoint resumes with any number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .. import runtime
from ..config.presets import TrainConfig, as_dict
from ..config.spiking import Spiking
from ..data import Dataset, augmentation, batches
from ..errors import SpikeAdvError
from ..records import checkpoint, provenance
from ..runtime import distributed
from ..runtime.draws import Draws
from .network import Network, fold_batchnorm
from .neurons import backend_on
from .trained import load_network, model_state

CHECK_EVERY = 32  # training steps between checks for a diverged loss (each check waits for the device)
SNAPSHOT_META = ("kind", "preset", "data", "seed", "train", "format", "versions", "device")  # a snapshot's record


def snapshot_path(out: Path, step: int) -> Path:
    """Where the snapshot after global step ``step`` of the training written to ``out`` is kept."""
    return out.with_name(f"{out.stem}.snapshots") / f"step{step:07d}.safetensors"


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global optimizer step: the paper's step annealing or a one-cycle ramp."""
    if cfg.schedule == "multistep":  # milestones are 1-based epoch numbers, as the paper counts them
        epoch = step // steps_per_epoch + 1
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, round(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def prepare_input(x: Tensor, cfg: TrainConfig) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x


@torch.no_grad()
def accuracy(
    net: Network,
    ds: Dataset,
    *,
    snn: Spiking | None = None,
    seed: int = 0,
    spikes: dict[int, Tensor] | None = None,
    batch_size: int = 500,
    bf16: bool = False,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy (percent) on a whole dataset, of the ANN or (``snn``) of the same weights as an
    SNN, its encoder seeded by ``seed``. ``spikes`` accumulates per-site spike counts (see Network)."""
    was_training = net.training
    net.eval()
    device = runtime.device(device)
    correct, seen = torch.zeros((), dtype=torch.long, device=device), 0
    with runtime.autocast(bf16, device), tqdm(total=len(ds), desc="evaluating", unit="img", leave=False,
                                              dynamic_ncols=True, mininterval=1.0) as bar:
        for x, y in batches(ds, batch_size, shuffle=False, device=device):
            draws = Draws.of(seed, torch.arange(seen, seen + len(y), device=device), 1)  # image i's, on any device
            logits = net(x) if snn is None else net(x, snn, draws, spikes)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            bar.update(len(y))
    net.train(was_training)
    return 100.0 * correct.item() / len(ds)


def _optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (paper) or AdamW; weight decay on weights only, not on norm parameters."""
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def _optimizer_state(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict[str, Tensor]:
    """The optimizer's per-parameter tensors (momentum, Adam moments and step) as flat tensors."""
    return {
        f"optim.{i}.{key}": value
        for i, p in enumerate(params)
        for key, value in opt.state.get(p, {}).items()
        if isinstance(value, Tensor)
    }


def _restore(net: Network, opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    """Weights and optimizer state from a checkpoint, onto the net's device (the optimizer's own
    loading puts each state tensor where its parameter is, and keeps Adam's step count on the CPU)."""
    net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    ids = {p: i for i, p in enumerate(p for group in opt.param_groups for p in group["params"])}
    saved = opt.state_dict()
    for i, p in enumerate(net.parameters()):
        prefix = f"optim.{i}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            saved["state"][ids[p]] = state
    opt.load_state_dict(saved)


def _identity(meta: dict) -> dict:
    """The parts of a checkpoint's metadata that must agree for a resume to be valid."""
    return provenance.canonical(({k: meta[k] for k in ("kind", "trained_network", "train", "spiking", "augmentation", "seed", "data")}))


def train(
    net: Network,
    train_ds: Dataset,
    validation: Dataset,
    cfg: TrainConfig,
    *,
    seed: int,
    out: Path,
    meta: dict,
    resume: bool = False,
    snn: Spiking | None = None,
    device: torch.device | str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Network, dict]:
    """Train ``net`` and write it to ``out`` (atomically, once per epoch). Returns (final net, metadata).

    The ANN (paper IV-B) or, with ``snn``, the same network as an SNN by backpropagation through time
    with the surrogate derivative (SNN-II, paper III-B): one loop, two forwards. ``meta`` is the
    caller's record (kind, preset, data digests...); training adds its config, seed, versions and
    per-epoch metrics, accuracy measured on ``validation`` only (never on test images). With
    ``cfg.snapshots`` the weights at that many evenly spaced steps are kept beside ``out``
    (:func:`snapshot_path`), each with its validation accuracy (``meta["snapshots"]``). The finished file
    holds the batch-norm-folded network. Under torchrun each process trains on its rows of every batch of
    ``cfg.batch_size`` (see :mod:`spikeadv.runtime.distributed`).
    """
    world = distributed.join(runtime.device(device))
    device, log = world.device, distributed.on_main(log)
    train_ds, validation = train_ds.to(device), validation.to(device)  # batches and augmentation on the device
    aug = augmentation(train_ds.info, cfg.augment, cfg.flip)
    meta = _start_meta(meta, net, cfg, snn, aug, seed, device)
    opt = _fresh(net, cfg, seed, device)
    done = _resume(Path(out), net, opt, meta, cfg, resume, device, log)
    if done is not None:
        return done
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SpikeAdvError(f"batch size {cfg.batch_size} exceeds the {len(train_ds)} training images")
    params = list(net.parameters())
    model = world.wrap(net)
    total = cfg.epochs * steps_per_epoch
    at = {round(k * total / cfg.snapshots) for k in range(1, cfg.snapshots + 1)}  # by rank 0; the others go on

    def snapshot(step: int) -> None:
        _snapshot(net, validation, cfg, meta, Path(out), step, step / steps_per_epoch, device)

    for epoch in range(meta["epochs_done"], cfg.epochs):
        record = _epoch(model, opt, world, train_ds, aug, cfg, snn, seed, epoch, steps_per_epoch, Path(out),
                        dict.fromkeys(at, snapshot) if world.main else {})
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:  # by rank 0, as one process would
            acc = accuracy(net, validation, snn=snn, bf16=cfg.bf16, device=device) if world.main else None
            record["val_acc"] = round(world.from_main(acc), 3)
        meta["metrics"].append(record)
        meta["epochs_done"] = epoch + 1
        log(
            f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.3f}, train {record['train_acc']:.1f}%"
            + (f", validation {record['val_acc']:.2f}%" if "val_acc" in record else "")
            + f", {record['images_per_s']:.0f} img/s, {record['seconds']:.0f} s"
        )
        net = _save(net, opt, params, meta, Path(out), world, final=epoch + 1 == cfg.epochs)
    return net.eval(), meta


def _snapshot(net: Network, validation: Dataset, cfg: TrainConfig, meta: dict, out: Path, step: int, epoch: float,
              device: torch.device) -> None:
    """Keep the weights as they are after global step ``step`` (batch-norm folded) beside ``out``, with
    their validation accuracy, listed in ``meta["snapshots"]``; training goes on unchanged (no random
    number is drawn)."""
    folded = fold_batchnorm(net.eval())
    acc = accuracy(folded, validation, bf16=cfg.bf16, device=device)
    path = snapshot_path(out, step)
    taken = {"step": step, "epoch": round(epoch, 4), "val_acc": round(acc, 3)}
    checkpoint.save(path, model_state(folded), {**{k: meta[k] for k in SNAPSHOT_META if k in meta},
                                                "network": folded.config(), "complete": True, "snapshot": taken})
    meta["snapshots"].append({**taken, "path": path.name})
    net.train()


def _start_meta(meta: dict, net: Network, cfg: TrainConfig, snn: Spiking | None, aug: object, seed: int,
                device: torch.device) -> dict:
    """The checkpoint's metadata at the start: the caller's record, the network, the training config,
    seed, versions and device, and no epoch done yet."""
    return {
        **meta,
        "format": checkpoint.FORMAT,
        "network": net.config(),
        "trained_network": net.config(),
        "train": as_dict(cfg),
        "spiking": as_dict(snn) if snn else None,
        "augmentation": as_dict(aug) if aug else None,
        "seed": seed,
        "versions": provenance.versions(),
        "command": provenance.command_line(),
        "device": str(device),
        "neurons": backend_on(device),
        "epochs_done": 0,
        "complete": False,
        "metrics": [],
        "snapshots": [],
    }


def _fresh(net: Network, cfg: TrainConfig, seed: int, device: torch.device) -> torch.optim.Optimizer:
    """The network's seeded initial weights on ``device`` and its optimizer."""
    torch.manual_seed(seed)
    net.reset_parameters()
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    return _optimizer(net, cfg)


def _resume(out: Path, net: Network, opt: torch.optim.Optimizer, meta: dict, cfg: TrainConfig, resume: bool,
            device: torch.device, log: Callable[[str], None]) -> tuple[Network, dict] | None:
    """Continue the checkpoint at ``out``, if any: weights, optimizer and metrics restored (``meta``
    updated in place), or the finished model and its metadata when it is complete. A checkpoint of
    another training is refused."""
    if not out.exists():
        return None
    if not resume:
        raise SpikeAdvError(f"{out} exists; pass --resume to continue it, or choose another --out")
    tensors, saved = checkpoint.load(out)
    if _identity(saved) != _identity(meta):
        diff = [k for k, v in _identity(meta).items() if _identity(saved)[k] != v]
        raise SpikeAdvError(f"{out} was written with a different {', '.join(diff)}; cannot resume it")
    if saved["complete"]:
        log(f"{out} is already trained ({saved['epochs_done']} epochs); nothing to do")
        model, _ = load_network(out, device)
        return model, saved
    _restore(net, opt, tensors)
    meta.update(epochs_done=saved["epochs_done"], metrics=saved["metrics"], snapshots=saved.get("snapshots", []))
    log(f"resuming {out} after epoch {saved['epochs_done']}/{cfg.epochs}")
    return None


def _epoch(model: nn.Module, opt: torch.optim.Optimizer, world: distributed.Group, train_ds: Dataset, aug: object,
           cfg: TrainConfig, snn: Spiking | None, seed: int, epoch: int, steps_per_epoch: int, out: Path,
           after: dict[int, Callable[[int], None]]) -> dict:
    """One epoch of training (dropout, order and augmentation seeded by the epoch); its metrics. A loss
    that is no longer finite stops training with one line (checked every :data:`CHECK_EVERY` steps).
    ``after``: what to do after a global step (snapshots); it must draw no random numbers."""
    device, rows = world.device, world.rows(cfg.batch_size)
    es = epoch_seed(seed, epoch)
    torch.manual_seed(es)  # dropout
    gen = runtime.generator(es, device)  # order and augmentation
    model.train()
    start, seen = time.perf_counter(), 0
    # kept on the device and checked every CHECK_EVERY steps: no step waits for the device
    losses = torch.zeros(steps_per_epoch, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(
        batches(train_ds, cfg.batch_size, shuffle=True, generator=gen, augmentation=aug,
                drop_last=True, device=device, rows=rows),
        total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img", unit_scale=cfg.batch_size,
        leave=False, dynamic_ncols=True, mininterval=1.0, disable=not world.main,
    )
    for i, (x, y) in enumerate(bar):
        lr = lr_at(cfg, epoch * steps_per_epoch + i, steps_per_epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        with runtime.autocast(cfg.bf16, device):
            x = prepare_input(x, cfg)
            logits = model(x, snn, rows=rows)  # an SNN's encoder draws from the seeded global RNG
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[i] = world.mean(loss.detach())
        loss_sum += losses[i]
        if ((i + 1) % CHECK_EVERY == 0 or i + 1 == steps_per_epoch) and not torch.isfinite(loss_sum):
            bar.close()
            bad = int(torch.isfinite(losses[:i + 1]).logical_not().nonzero()[0])
            kept = f"the last good checkpoint (epoch {epoch}) is kept at {out}" if epoch else "nothing was saved"
            raise SpikeAdvError(f"training diverged in epoch {epoch + 1}/{cfg.epochs}, step {bad + 1} (loss "
                                f"{losses[bad].item()}); {kept}; lower the learning rate (lr = {cfg.lr:g})")
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if epoch * steps_per_epoch + i + 1 in after:
            after[epoch * steps_per_epoch + i + 1](epoch * steps_per_epoch + i + 1)
    bar.close()
    correct, seen = world.sum(correct).item(), world.sum(torch.tensor(seen)).item()
    seconds = time.perf_counter() - start
    return {"epoch": epoch + 1, "train_loss": round(loss_sum.item() / steps_per_epoch, 5),
            "train_acc": round(100.0 * correct / seen, 3), "lr_end": lr, "seconds": round(seconds, 2),
            "images_per_s": round(seen / seconds, 1), "world_size": world.size}


def _save(net: Network, opt: torch.optim.Optimizer, params: list[nn.Parameter], meta: dict, out: Path,
          world: distributed.Group, final: bool) -> Network:
    """The epoch's checkpoint (rank 0 writes it, every process waits for it): weights and optimizer
    state, or after the last epoch the batch-norm-folded network alone. Returns the network trained on."""
    if final:
        net = fold_batchnorm(net.eval()).to(memory_format=torch.contiguous_format)
        meta.update(complete=True, network=net.config(), batchnorm_folded=meta["trained_network"]["batchnorm"])
        tensors = model_state(net)
    else:
        tensors = {**model_state(net), **_optimizer_state(opt, params)}
    if world.main:
        checkpoint.save(out, tensors, meta)
    world.barrier()  # every process sees the file before it goes on
    return net
