"""A SpikingJelly convolutional SNN for CIFAR-10, trained for the frontier table (README "Against the 2025
frontier"): three 3x3 conv layers (16, 32, 64 channels) with batch norm, LIF neurons (tau 2, ATan
surrogate, detached reset) and max pooling, a linear readout; T = 4, direct input, wrapped by
:class:`spikeadv.TimeLoop`. Trained 2 epochs (AdamW, one-cycle 2e-3, batch 128, flips) on the CPU.

    python benchmarks/sj_csnn.py csnn.safetensors            # train, then:
    PYTHONPATH=benchmarks python benchmarks/frontier.py --model sj_csnn:csnn --weights csnn.safetensors \\
        --T 4 --data cifar10 --images 256 --eps 2/255
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from spikingjelly.activation_based import layer, neuron, surrogate
from torch import nn

import spikeadv
from spikeadv import data


def csnn() -> nn.Module:
    def lif() -> nn.Module:
        return neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True)

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [layer.Conv2d(c_in, c_out, 3, padding=1, bias=False), layer.BatchNorm2d(c_out), lif(), layer.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), layer.Flatten(), layer.Linear(64 * 16, 10))


def main(out: str, epochs: int = 2, batch: int = 128) -> None:
    torch.manual_seed(0)
    train = data.load("cifar10", "train")
    x, y = data.to_float(train.images), train.labels.long()
    net = csnn()
    loop = spikeadv.TimeLoop(net, T=4)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * (len(y) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    start = time.time()
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i:i + batch]
            xb = x[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(loop(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}, {time.time() - start:.0f} s", flush=True)
    net.eval()
    test = data.load("cifar10", "test")
    xt, yt = data.to_float(test.images[:2000]), test.labels[:2000].long()
    with torch.no_grad():
        right = sum((loop(xt[i:i + 250]).argmax(1) == yt[i:i + 250]).sum().item() for i in range(0, 2000, 250))
    print(f"test accuracy on 2,000 images: {right / 2000:.1%}")
    save_file(net.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1])
