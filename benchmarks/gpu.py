"""GPU throughput on one CUDA device: every contestant in this one process, interleaved, median of
repeats, peak GPU memory beside each (the GPU issue's goals in brackets):

1. SNN-I inference (IF, Poisson input, no grad): cost per image-timestep over an ANN forward of the
   same batch [<= 1.25x], with the fused neuron kernels and with the Python loop;
2. SNN-II training steps (LIF, Poisson input, BPTT, batch 64) at T = 8 and T = 70: ours against
   SpikingJelly 2.0 on its fastest path (its GPU kernels, which keep a float32 membrane: compared at
   fp32) [>= 2x], and against our Python loop; ours also under bf16 autocast;
3. ANN training: one whole epoch of ``spikeadv.models.train`` (data and augmentation on the GPU, schedule,
   evaluation, checkpoint) against bare steps on resident tensors [>= 0.9x];
4. the ``paper`` preset's GPU-hours: these rates, measured at the paper's settings, multiplied out over
   its task graph (benchmarks/scaling.py) [<= 8 on one H100].

    python benchmarks/gpu.py                          # on a machine with CUDA: about 3 minutes
    python benchmarks/gpu.py --json gpu.jsonl         # each result also appended as a JSON line when measured
    python benchmarks/gpu.py --device cpu --dry-run   # every code path at toy sizes (no timing value)

Without CUDA (and no ``--device cpu``) it says so and exits 0. The paper's VGG-9 (5x5), full width.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import scaling  # noqa: E402
import snn_throughput  # noqa: E402
import train_throughput  # noqa: E402

from spikeadv import runtime  # noqa: E402
from spikeadv.config.presets import get_preset  # noqa: E402
from spikeadv.config.spiking import Spiking  # noqa: E402
from spikeadv.data import synthetic  # noqa: E402
from spikeadv.models import neurons  # noqa: E402
from spikeadv.models.network import Network  # noqa: E402
from spikeadv.runtime import autocast  # noqa: E402
from spikeadv.study import plan  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass
class Sizes:
    spec: str = "vgg9"
    width: float = 1.0
    infer_batch: int = 500
    infer_T: int = 64
    train_batch: int = 64
    train_T: tuple[int, ...] = (8, 70)
    epoch_images: int = 25_600
    repeats: int = 5


DRY = Sizes(spec="32x32-8c3-2s-16c3-2s-32fc-10o", infer_batch=8, infer_T=4, train_batch=8, train_T=(2, 3),
            epoch_images=512, repeats=1)


def measure(fn: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, int]:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up, and its peak device memory."""
    fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        runtime.synchronize(device)
        start = time.perf_counter()
        fn()
        runtime.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(times), peak


def interleaved(contestants: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict:
    """{name: (median seconds, peak bytes)}, rounds interleaved so drift hits every contestant alike."""
    runs: dict[str, list] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            runs[name].append(measure(fn, device, 1))
    return {name: (statistics.median(t for t, _ in r), max(p for _, p in r)) for name, r in runs.items()}


def with_backend(backend: str, fn: Callable[[], None]) -> Callable[[], None]:
    def go() -> None:
        saved, neurons.BACKEND = neurons.BACKEND, backend
        try:
            fn()
        finally:
            neurons.BACKEND = saved
    return go


def inference(net: Network, s: Sizes, device: torch.device, bf16: bool) -> dict:
    """SNN-I (IF, Poisson) forward vs the ANN forward on one batch: seconds and cost per image-timestep."""
    snn = Spiking(neuron="if", T=s.infer_T, encoding="poisson", v_init=0.5)
    x = torch.rand(s.infer_batch, 3, 32, 32, device=device)
    gen = runtime.generator(0, device)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            with torch.no_grad(), autocast(bf16, device):
                fn()
        return go

    res = interleaved({"ann": run(lambda: net(x)),
                       "snn1 fused": with_backend("auto", run(lambda: net(x, snn, gen))),
                       "snn1 loop": with_backend("reference", run(lambda: net(x, snn, gen)))}, device, s.repeats)
    return {name: {"seconds": t, "peak_gib": p / 2**30, "images_per_s": s.infer_batch / t,
                   "cost_vs_ann": t / (1 if name == "ann" else s.infer_T) / res["ann"][0]} for name, (t, p) in res.items()}


def training(net: Network, s: Sizes, T: int, device: torch.device, bf16: bool, peers: bool = True) -> dict:
    """SNN-II training steps (LIF, Poisson, BPTT, AdamW): ours fused, and with ``peers`` ours looped and
    SpikingJelly on its fastest backend."""
    snn = Spiking(neuron="lif", T=T, leak=snn_throughput.LEAK, surrogate="fast-sigmoid", alpha=4.0)
    x = torch.rand(s.train_batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (s.train_batch,), device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)

    def step(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def go() -> None:
            with autocast(bf16, device):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return go

    ours = snn_throughput.ours(net, snn)
    contestants = {"ours fused": with_backend("auto", step(ours))}
    if peers:
        contestants["ours loop"] = with_backend("reference", step(ours))
        try:
            sj = snn_throughput.spikingjelly_model(net, snn)
            contestants[f"spikingjelly {sj.backend}"] = step(sj)
        except ImportError as e:
            print(f"  spikingjelly: not installed ({e.name}): pip install --no-deps spikingjelly", flush=True)
    res = interleaved(contestants, device, s.repeats)
    return {name: {"seconds": t, "peak_gib": p / 2**30, "images_per_s": s.train_batch / t} for name, (t, p) in res.items()}


def emit(path: Path | None, part: str, value: object) -> None:
    """One result as a JSON line appended to ``path`` the moment it is measured (a cut call keeps it)."""
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps({"part": part, "value": value}, default=str) + "\n")


def ann_epoch(preset_name: str, s: Sizes, device: torch.device, spec: str | None = None) -> dict:
    """One epoch of our training loop vs bare steps on resident tensors (the preset's ANN recipe)."""
    preset = get_preset(preset_name, [f"spec={spec}"] if spec else [])
    preset = dataclasses.replace(preset, ann=dataclasses.replace(preset.ann, epochs=1, eval_every=1))
    ds = synthetic("train", n=s.epoch_images)
    eval_ds = synthetic("test", n=preset.ann.batch_size)
    train_throughput.bare(preset, synthetic("train", n=2 * preset.ann.batch_size), device)  # warm-up
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(max(1, s.repeats // 2)):
            rows.append((train_throughput.ours(preset, ds, eval_ds, Path(tmp) / "b.safetensors", device),
                         train_throughput.bare(preset, ds, device)))
    ours, bare = statistics.median(a for a, _ in rows), statistics.median(b for _, b in rows)
    return {"ours_images_per_s": ours, "bare_images_per_s": bare, "ratio": ours / bare,
            "batch": preset.ann.batch_size, "bf16": preset.ann.bf16}


def paper_hours(s: Sizes, device: torch.device) -> dict:
    """The paper preset's GPU-hours: its rates measured here at its settings (fp32; ANN batch 64; SNN-II
    T = 70, batch 64; inference at the study's batch 100), multiplied out over its task graph."""
    paper = get_preset("paper")
    net = Network(s.spec, 3, MEAN, STD, width=s.width, dropout=0.0).to(device)
    infer = inference(net.eval(), dataclasses.replace(s, infer_batch=paper.study.batch_size), device, bf16=False)
    T = max(s.train_T)
    snn2 = training(net.train(), dataclasses.replace(s, train_batch=paper.snn2.train.batch_size), T, device, bf16=False,
                    peers=False)
    ann = ann_epoch("paper", dataclasses.replace(s, epoch_images=min(s.epoch_images, 6400)), device,
                    None if s.spec == "vgg9" else s.spec)
    rates = {"ann_train": ann["ours_images_per_s"], "snn2_train": snn2["ours fused"]["images_per_s"], "snn2_T": T,
             "forward": infer["ann"]["images_per_s"], "snn_factor": infer["snn1 fused"]["cost_vs_ann"]}
    tasks = plan(paper, ("train", "test"), scaling.TRAIN_IMAGES[paper.dataset], "labels")
    seconds = scaling.estimated(paper, tasks, rates)
    by_kind: dict[str, float] = {}
    for t in tasks:
        by_kind[scaling.group(t)] = by_kind.get(scaling.group(t), 0.0) + seconds[t.name] / 3600
    return {"rates": rates, "gpu_hours": sum(seconds.values()) / 3600, "by_kind_hours": by_kind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --dry-run")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes: every code path, no meaningful timing")
    ap.add_argument("--json", type=Path, help="also append each result here as a JSON line, as it is measured")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run on a GPU machine, or --device cpu --dry-run)")
        return
    device = runtime.resolve(args.device)
    s = DRY if args.dry_run else Sizes()
    torch.manual_seed(0)
    print(f"device {runtime.describe(device)}, torch {torch.__version__}, {s.spec} width {s.width}"
          + (" (dry run: toy sizes)" if args.dry_run else ""))
    emit(args.json, "machine", {"device": runtime.describe(device), "torch": torch.__version__,
                                "sizes": dataclasses.asdict(s)})
    net = Network(s.spec, 3, MEAN, STD, width=s.width, dropout=0.0).to(device)

    result = inference(net.eval(), s, device, bf16=True)
    emit(args.json, "inference", result)
    print(f"\n1. SNN-I inference, IF, Poisson, T = {s.infer_T}, batch {s.infer_batch}, bf16 [goal: <= 1.25x ANN]")
    for name, r in result.items():
        print(f"  {name:12s} {r['seconds']:8.4f} s  {r['images_per_s']:9.0f} img/s  cost {r['cost_vs_ann']:5.2f}x ANN "
              f"per image-timestep  peak {r['peak_gib']:.2f} GiB", flush=True)

    for T in s.train_T:
        r = {**training(net.train(), s, T, device, bf16=False),
             **{f"{k} bf16": v for k, v in training(net.train(), s, T, device, bf16=True, peers=False).items()}}
        emit(args.json, f"training T={T}", r)
        print(f"\n2. SNN-II training step, LIF, Poisson, T = {T}, batch {s.train_batch}, fp32 unless marked "
              "[goal: >= 2x SpikingJelly on its fastest path, both fp32]")
        for name, v in r.items():
            print(f"  {name:20s} {v['seconds']:8.4f} s  {v['images_per_s']:8.0f} img/s  peak {v['peak_gib']:.2f} GiB")
        for peer in [k for k in r if k.startswith("spikingjelly")] + ["ours loop"]:
            if peer in r:
                print(f"  ours fused / {peer}: {r[peer]['seconds'] / r['ours fused']['seconds']:.2f}x faster", flush=True)

    r = ann_epoch("gpu", s, device, None if s.spec == "vgg9" else s.spec)
    emit(args.json, "ann_epoch", r)
    print(f"\n3. ANN training, the gpu preset's recipe (batch {r['batch']}, bf16 {r['bf16']}), "
          f"{s.epoch_images} images [goal: >= 0.9x bare]")
    print(f"  ours (whole epoch) {r['ours_images_per_s']:.0f} img/s, bare steps {r['bare_images_per_s']:.0f} img/s, "
          f"ratio {r['ratio']:.3f}", flush=True)

    p = paper_hours(s, device)
    emit(args.json, "paper", p)
    print("\n4. paper preset on this GPU [goal: <= 8 GPU-hours on one H100]: rates "
          + ", ".join(f"{k} {v:,.2f}" for k, v in p["rates"].items()))
    print(f"  {p['gpu_hours']:.1f} GPU-hours: " + ", ".join(f"{k} {v:.2f} h" for k, v in p["by_kind_hours"].items()),
          flush=True)


if __name__ == "__main__":
    main()
