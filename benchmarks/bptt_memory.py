"""What backpropagation through time keeps for the backward pass, per frame (image x timestep), with and
without recomputing chunks of time (gradient checkpointing, ``Network._recomputes``), measured with
saved-tensor hooks on a few frames on the CPU and projected to a crafting batch:

    python benchmarks/bptt_memory.py                           # the gpu preset's SNN-I: VGG-9, T = 256, batch 500
    python benchmarks/bptt_memory.py --T 2000 --batch 100     # the paper preset's

The bytes per frame do not depend on T or the batch (each frame keeps its own); the projection is
frames x bytes, plus one chunk's activations while it is recomputed (bounded by the fold policy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from test_devices import saved_bytes_and_grad  # noqa: E402

from spikeadv import runtime  # noqa: E402
from spikeadv.config.presets import get_preset  # noqa: E402
from spikeadv.config.spiking import Spiking  # noqa: E402
from spikeadv.models.network import SAVED_BYTES, Network  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--T", type=int, default=256, help="timesteps of the projected craft")
    ap.add_argument("--batch", type=int, default=500, help="images of the projected craft")
    ap.add_argument("--memory-gib", type=float, default=80.0, help="the device's memory (H100: 80)")
    args = ap.parse_args()
    preset = get_preset(args.preset)
    net = Network(preset.spec, 3, (0.5,) * 3, (0.25,) * 3, width=preset.width, dropout=0.0).eval()
    x, y = torch.rand(1, 3, 32, 32), torch.arange(1)
    budget = runtime.saved_budget
    runtime.saved_budget = lambda device: 10**18
    kept, _ = saved_bytes_and_grad(net, Spiking(neuron="if", T=4, encoding="poisson", chunk=1), x, y)
    runtime.saved_budget = lambda device: 0
    # recomputing keeps each frame's input and, per image, the neuron state at each boundary of chunks:
    # two chunkings of T = 16 (1 and 3 boundaries) separate the two
    one, three = (16 * saved_bytes_and_grad(net, Spiking(neuron="if", T=16, encoding="poisson", chunk=c), x, y)[0]
                  for c in (8, 4))
    runtime.saved_budget = budget
    state = (three - one) / 2
    frame = (one - state) / 16
    frames = args.T * args.batch
    estimate = SAVED_BYTES * sum(net._sizes())
    memory = args.memory_gib * 2**30
    step = max(1, min(args.T, min(runtime.MAX_ELEMENTS * 4, int(memory * runtime.CUDA_FOLD_SHARE))
                      // (4 * net._largest_activation()) // args.batch,
                      int(memory * runtime.SAVED_SHARE) // (estimate * args.batch)))  # as Network.timesteps sizes it
    boundaries = -(-args.T // step) - 1
    recomputed = frames * frame + boundaries * args.batch * state
    print(f"{args.preset} preset network ({preset.spec}, width {preset.width}), kept for the backward pass:")
    print(f"  all of BPTT     {kept / 2**20:8.3f} MiB per frame (the policy's estimate: {estimate / 2**20:.3f} MiB)")
    print(f"  recomputing     {frame / 2**20:8.3f} MiB per frame + {state / 2**20:.3f} MiB per image per chunk boundary")
    print(f"T = {args.T} x batch {args.batch} = {frames:,} frames on a {args.memory_gib:g} GiB device "
          f"(chunks of {step} timesteps by the fold policy):")
    print(f"  all of BPTT     {kept * frames / 2**30:8.1f} GiB")
    print(f"  recomputing     {recomputed / 2**30:8.1f} GiB kept, plus one chunk's activations while it is recomputed "
          f"({kept * step * args.batch / 2**30:.1f} GiB measured, {estimate * step * args.batch / 2**30:.1f} GiB by the "
          f"policy's estimate, which keeps it under {runtime.SAVED_SHARE:.3g} of memory); it recomputes: "
          f"{estimate * frames > memory * runtime.SAVED_SHARE}")

if __name__ == "__main__":
    main()
