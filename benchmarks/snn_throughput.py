"""SNN throughput: image-timesteps/s of our SNN forward and training step, against T x our ANN and
against snnTorch and SpikingJelly running the same network (same weights, T, batch, dtype), all
measured in this one process, interleaved, median of repeats. Prints cost ratios per image-timestep
relative to the ANN (lower is better; 1.0 = as cheap as an ANN pass per timestep).

    pip install -e '.[bench]' && pip install --no-deps spikingjelly   # peers (SpikingJelly without torchvision)
    python benchmarks/snn_throughput.py                 # VGG-9 width 0.5, T = 8, batch 32, fp32
    python benchmarks/snn_throughput.py --bf16          # CPU bf16 autocast for every contestant
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spikeadv.config.spiking import Spiking
from spikeadv.models.network import Network

LEAK = 0.9


def ours(net: Network, snn: Spiking) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: net(x, snn)


def snntorch_model(net: Network, snn: Spiking) -> Callable[[torch.Tensor], torch.Tensor]:
    """snnTorch's idiom: a Python loop over t, each layer called per step on [B, ...]."""
    import snntorch
    from snntorch import surrogate

    neurons = [snntorch.Leaky(beta=LEAK, threshold=1.0, spike_grad=surrogate.fast_sigmoid(slope=4),
                              reset_mechanism="subtract") for _ in net.layers[:-1]]

    def run(x: torch.Tensor) -> torch.Tensor:
        mems = [n.init_leaky() for n in neurons]
        out = 0
        for _ in range(snn.T):
            h = net.normalise((torch.rand_like(x) < x).to(x.dtype))
            for i, layer in enumerate(net.layers):
                if isinstance(layer, nn.Linear) and h.dim() > 2:
                    h = h.flatten(1)
                h = layer(h)
                if i < len(neurons):
                    h, mems[i] = neurons[i](h, mems[i])
            out = out + h
        return out / snn.T

    return run


def fastest_backend(device: torch.device) -> str:
    """SpikingJelly's fastest neuron backend on ``device``: its GPU kernels (``triton``, else ``cupy``) where
    it has them, else its per-step ``torch`` loop. Its GPU kernels keep a float32 membrane: run them at fp32,
    since under bf16 autocast they fall back to the loop (a win over that would be no win)."""
    from spikingjelly.activation_based import neuron

    offered = neuron.LIFNode(step_mode="m").supported_backends
    return next((b for b in ("triton", "cupy") if device.type == "cuda" and b in offered), "torch")


def spikingjelly_model(net: Network, snn: Spiking) -> Callable[[torch.Tensor], torch.Tensor]:
    """SpikingJelly's multi-step idiom: layers wrapped to fold [T, B] into the batch, LIF nodes in 'm' mode
    on its fastest backend (:func:`fastest_backend`)."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    backend = fastest_backend(next(net.parameters()).device)
    mods: list[nn.Module] = []
    for i, m in enumerate(net.layers):
        if isinstance(m, nn.Linear) and not isinstance(net.layers[i - 1], nn.Linear):
            mods.append(layer.Flatten(step_mode="m"))
        mods.append(layer.SeqToANNContainer(m))
        if i < len(net.layers) - 1:
            mods.append(neuron.LIFNode(tau=1 / (1 - LEAK), decay_input=False, v_threshold=1.0, v_reset=None,
                                       surrogate_function=surrogate.Sigmoid(), step_mode="m", backend=backend))
    seq = nn.Sequential(*mods)

    def run(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(seq)
        frames = (torch.rand((snn.T, *x.shape), device=x.device) < x).to(x.dtype)
        return seq(net.normalise(frames.flatten(0, 1)).view(snn.T, *x.shape)).mean(0)

    run.backend = backend  # type: ignore[attr-defined]
    return run


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return statistics.median(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="vgg9")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = Network(args.spec, 3, (0.5,) * 3, (0.25,) * 3, width=args.width, dropout=0.0)
    snn = Spiking(neuron="lif", T=args.T, leak=LEAK)
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    contestants = {"ours": ours(net, snn), "ann": lambda v: net(v)}
    for name, make in (("snntorch", snntorch_model), ("spikingjelly", spikingjelly_model)):
        try:
            contestants[name] = make(net, snn)
        except ImportError as e:
            print(f"{name}: not installed ({e.name}); pip install -e '.[bench]'")
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def forward(fn):
        def go():
            with torch.no_grad(), cast:
                fn(x)
        return go

    def train_step(fn):
        def go():
            with cast:
                loss = F.cross_entropy(fn(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return go

    print(f"{args.spec} width {args.width}, T={args.T}, batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads")
    for what, wrap in (("forward", forward), ("training step", train_step)):
        times = {name: [] for name in contestants}
        for _ in range(args.repeats):  # interleaved rounds, so drift hits every contestant alike
            for name, fn in contestants.items():
                times[name].append(timed(wrap(fn), 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        per_step_ann = med["ann"]  # one ANN pass = one image-timestep of work
        print(f"\n{what}: seconds per batch (median of {args.repeats}), cost per image-timestep vs ANN")
        for name, t in med.items():
            steps = 1 if name == "ann" else args.T
            print(f"  {name:13s} {t:8.4f} s  {args.batch * steps / t:9.0f} image-timesteps/s  "
                  f"cost {t / steps / per_step_ann:5.2f}x ANN")
        for peer in ("snntorch", "spikingjelly"):
            if peer in med:
                print(f"  ours / {peer}: {med[peer] / med['ours']:.2f}x faster")


if __name__ == "__main__":
    main()
