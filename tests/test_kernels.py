"""The Triton neuron kernels (spikeadv.models.kernels) against the Python loop of spikeadv.models.neurons.

On CPU they run in Triton's interpreter (TRITON_INTERPRET=1). The interpreter is chosen when a kernel is
jitted, and spikeadv.models.kernels jits on first use per mode, so setting the variable per test (monkeypatch)
is enough even when other modules imported spikeadv first. ``pytest -m cuda`` runs them compiled.
"""

import pytest
import torch
from conftest import dependency

from spikeadv.config.spiking import SURROGATES, Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.models import kernels, neurons
from spikeadv.models.network import Network
from spikeadv.models.neurons import spike_train

dependency("triton", linux_x86_only=True)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on one: pytest -m cuda)")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def run(backend, current, threshold, v0, snn, weights, split, count0=None):
    """Two chunks of time, the membrane carried over; a loss on all spikes and the final membrane, so
    gradients cross reset, leak, the chunk boundary and reach v0. Also the no-grad path (v_init).
    Signed spikes: the state is (membrane, net spike count), ``count0`` the count at the start."""
    signed = snn.reset == "signed"
    unpack = (lambda state: state) if signed else (lambda state: (state, None))
    current = current.detach().requires_grad_()
    v0 = v0.detach().requires_grad_()
    before = count0.clone() if signed else None
    a, state = spike_train(current[:split], threshold, (v0, count0) if signed else v0, snn, backend=backend)
    b, state = spike_train(current[split:], threshold, state, snn, backend=backend)
    v, count = unpack(state)
    spikes = torch.cat([a, b])
    ((spikes * weights).sum() + (v * v).sum()).backward()
    if signed:
        assert torch.equal(count0, before)  # the caller's state is left alone
    with torch.no_grad():
        s1, w = spike_train(current[:split], threshold, None, snn, backend=backend)
        s2, w = spike_train(current[split:], threshold, w, snn, backend=backend)
    return {"spikes": spikes, "v": v, "count": count, "v_strides": v.stride(), "s_strides": a.stride(),
            "c_strides": None if count is None else count.stride(), "grad": current.grad, "grad_v0": v0.grad,
            "nograd": (s1, s2, *w) if signed else (s1, s2, w)}


def compare(snn, dtype, channels_last, per_channel, device="cpu", T=6, shape=(4, 8, 8, 8)):
    gen = torch.Generator(device).manual_seed(0)
    B, C, H, W = shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    current = torch.rand(T * B, C, H, W, generator=gen, device=device) * 1.2 - 0.1
    signed = snn.reset == "signed"
    if signed:  # inputs that fall after they rose, so spikes are taken back
        current = current.view(T, -1).sub_(torch.linspace(-0.4, 0.8, T, device=device).view(T, 1)).view_as(current)
    current = current.to(dtype).contiguous(memory_format=layout).view(T, B, C, H, W)
    threshold = (torch.rand(C, 1, 1, generator=gen, device=device) * 0.5 + 0.5 if per_channel
                 else torch.tensor(0.7, device=device))
    v0 = torch.rand(B, C, H, W, generator=gen, device=device).contiguous(memory_format=layout) * 0.5
    weights = torch.randn(T, B, C, H, W, generator=gen, device=device)
    # signed: a count carried in from an earlier chunk (0, 1 or 2 net spikes), in the currents' layout
    count0 = (torch.randint(0, 3, (B, C, H, W), generator=gen, device=device).float()
              .contiguous(memory_format=layout)) if signed else None
    fused = run("triton", current, threshold, v0, snn, weights, split=T - 2, count0=count0)
    ref = run("reference", current, threshold, v0, snn, weights, split=T - 2, count0=count0)
    assert 0 < ref["spikes"].float().mean() < 1 and (ref["spikes"] > 0).any()  # some spikes, some silence
    assert (ref["spikes"] < 0).any() == signed and (ref["nograd"][0] < 0).any() == signed  # taken back
    # the forward pass is the same float32 operations in the same order (kernels' doc-string): identical
    for key in ("spikes", "v", "count") if signed else ("spikes", "v"):
        assert torch.equal(fused[key], ref[key]), key
    for key in ("v_strides", "s_strides", "c_strides"):
        assert fused[key] == ref[key], key
    assert fused["spikes"].dtype == dtype and fused["v"].dtype == torch.float32
    assert not signed or fused["count"].dtype == torch.float32
    assert len(fused["nograd"]) == len(ref["nograd"]) == (4 if signed else 3)
    assert all(torch.equal(x, y) for x, y in zip(fused["nograd"], ref["nograd"]))
    for key in ("grad", "grad_v0"):
        g1, g2 = fused[key].float(), ref[key].float()
        assert fused[key].dtype == ref[key].dtype and (g2.abs().sum() > 0 or snn.rate_mix == 1)
        if snn.surrogate != "sigmoid" and not (device == "cuda" and snn.surrogate == "triangle"):
            # add, mul, abs, max and correctly rounded division in the loop's order: identical as well
            assert torch.equal(g1, g2), key
            continue
        # sigmoid: exp differs in the last bits between libraries, so H' = alpha sig (1 - sig) carries an
        # absolute error of a few float32 ulp of alpha (sig <= 1): |d H'| <= alpha 2^-21. Each step passes
        # dL/dh_t = (g_s / V_th - g_v) H' + g_v on; the error of one step is |g_s / V_th - g_v| |d H'| plus
        # a few roundings of |dL/dh|, carried back with factor leak |1 - H'| <= 1 (alpha <= 4): summed over T.
        # triangle on CUDA: torch divides by a Python scalar as a multiplication by its reciprocal there
        # (the kernels divide, like torch on CPU): a few ulp of H' <= 1 / alpha, an error of the same size.
        # bf16 gradients may then round to the neighbouring bf16 value: 1 ulp <= 2^-7 relative.
        scale = 1 + g2.abs().max().item() + weights.abs().max().item() / threshold.min().item()
        atol = T * (snn.alpha + 4) * 2**-21 * scale
        rtol = 2**-7 if dtype == torch.bfloat16 else 0
        torch.testing.assert_close(g1, g2, rtol=rtol, atol=atol, msg=key)


CASES = [(n, leak, reset, sur) for n, leak in (("if", 1.0), ("lif", 0.8)) for reset in ("subtract", "zero")
         for sur in SURROGATES] + [("if", 1.0, "signed", sur) for sur in SURROGATES]


@pytest.mark.parametrize("neuron, leak, reset, surrogate", CASES)
def test_kernels_match_the_python_loop(interpret, neuron, leak, reset, surrogate):
    # dtype x layout x threshold: every pair of the three choices occurs once in these four runs
    snn = Spiking(neuron=neuron, leak=leak, reset=reset, surrogate=surrogate, alpha=2.0, T=6, v_init=0.3)
    for dtype, channels_last, per_channel in ((torch.float32, False, False), (torch.float32, True, True),
                                              (torch.bfloat16, False, True), (torch.bfloat16, True, False)):
        compare(snn, dtype, channels_last, per_channel)


@pytest.mark.parametrize("rate_mix", [0.3, 1.0])
def test_rate_path_mixes_with_the_kernels_temporal_backward(interpret, rate_mix):
    compare(Spiking(neuron="lif", leak=0.9, rate_mix=rate_mix, T=6), torch.float32, True, True)


def test_strided_and_mismatched_layouts_are_copied_and_outputs_keep_the_references_strides(interpret):
    snn = Spiking(neuron="lif", leak=0.9, T=5, surrogate="atan")
    base = torch.rand(5, 3, 8, 12) * 0.8
    current = base[..., ::2].transpose(1, 2)  # [T, 8, 3, 6], no step dense
    v0 = torch.rand(8, 3, 6).transpose(0, 1).contiguous().transpose(0, 1) * 0.3  # another order
    weights = torch.randn(5, 8, 3, 6)
    results = [run(b, current, torch.tensor(0.6), v0, snn, weights, split=3) for b in ("triton", "reference")]
    for key in ("spikes", "v", "grad", "grad_v0"):
        assert torch.equal(results[0][key], results[1][key]), key
        assert results[0][key].stride() == results[1][key].stride(), key
    assert results[0]["v_strides"] == results[1]["v_strides"] and results[0]["s_strides"] == results[1]["s_strides"]


def test_signed_counts_in_another_layout_are_updated_through_a_buffer(interpret):
    # the count (carried state of signed spikes) stored in neither the currents' order nor the membrane's:
    # the kernel writes a buffer in its own order, copied back into the count the caller's state holds
    snn = Spiking(T=6, reset="signed", surrogate="lee")
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(6, 3, 8, 12, generator=gen) - torch.linspace(-0.5, 0.7, 6).view(6, 1, 1, 1)
    current = base[..., ::2].transpose(1, 2)  # [T, 8, 3, 6], no step dense
    v0 = torch.rand(8, 3, 6, generator=gen).transpose(0, 1).contiguous().transpose(0, 1) * 0.3
    count0 = torch.randint(0, 3, (6, 3, 8), generator=gen).float().permute(2, 1, 0)  # [8, 3, 6], a third order
    weights = torch.randn(6, 8, 3, 6, generator=gen)
    results = [run(b, current, torch.tensor(0.6), v0, snn, weights, split=4, count0=count0)
               for b in ("triton", "reference")]
    assert (results[1]["spikes"] < 0).any()
    for key in ("spikes", "v", "count", "grad", "grad_v0"):
        assert torch.equal(results[0][key], results[1][key]), key
        assert results[0][key].stride() == results[1][key].stride(), key
    assert results[0]["count"].stride() == count0.stride()
    assert all(torch.equal(x, y) for x, y in zip(results[0]["nograd"], results[1]["nograd"]))


def count_calls(monkeypatch):
    calls = {"forward": 0, "temporal": 0}

    def counting(name, fn):
        def counted(*args, **kw):
            calls[name] += 1
            return fn(*args, **kw)
        return counted

    for name in calls:
        monkeypatch.setattr(kernels, name, counting(name, getattr(kernels, name)))
    return calls


def train_step(current, backend=None):
    current = current.clone().requires_grad_()
    spikes, v = spike_train(current, torch.tensor(0.5), None, Spiking(neuron="lif", leak=0.9, T=4), backend)
    (spikes.sum() + v.sum()).backward()
    return spikes, v, current.grad


def test_auto_dispatch_takes_the_kernels_where_available(interpret, monkeypatch):
    calls = count_calls(monkeypatch)
    current = torch.rand(4, 2, 50)
    fused = train_step(current)
    assert calls == {"forward": 1, "temporal": 1}  # the auto backend ran the kernels, both ways
    with torch.no_grad():
        spike_train(current, torch.tensor(0.5), None, Spiking(T=4))
    assert calls["forward"] == 2
    signed = Spiking(T=4, reset="signed")  # signed spikes run in the kernels too, auto and triton
    for backend in (None, "triton"):
        spike_train(current - 0.3, torch.tensor(0.5), None, signed, backend)  # inference: forward only
        x = (current - 0.3).requires_grad_()
        spike_train(x, torch.tensor(0.5), None, signed, backend)[0].sum().backward()
    assert calls == {"forward": 6, "temporal": 3}
    assert kernels.available(torch.device("cuda")) and kernels.available("cpu")  # CUDA tensors: the kernels
    reference = train_step(current, "reference")
    assert calls["forward"] == 6 and all(torch.equal(a, b) for a, b in zip(fused, reference))
    monkeypatch.setattr(neurons, "BACKEND", "reference")  # the module switch forces the loop everywhere
    train_step(current)
    train_step(current.double(), "auto")  # float64: the kernels do not take it, the loop runs
    spike_train(current, torch.tensor(0.5), None, Spiking(T=4, reset="signed"))
    assert calls["forward"] == 6
    with pytest.raises(SpikeAdvError, match="float32"):
        train_step(current.double(), "triton")
    with pytest.raises(SpikeAdvError, match="unknown neuron backend"):
        train_step(current, "cuda")


def test_cpu_without_the_interpreter_never_touches_the_kernels(monkeypatch):
    # the CPU results must stay bit for bit what they were: the loop, and triton is not even needed
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernels, "forward", None)
    monkeypatch.setattr(kernels, "temporal", None)
    assert not kernels.available("cpu")
    train_step(torch.rand(4, 2, 50))
    spike_train(torch.rand(4, 2, 50) - 0.3, torch.tensor(0.5), None, Spiking(T=4, reset="signed"))
    with pytest.raises(SpikeAdvError, match="needs CUDA"):
        train_step(torch.rand(4, 2, 50), "triton")


def test_network_through_the_kernels_equals_the_loop(interpret, monkeypatch):
    # the neurons inside a network (0-d thresholds of the buffer, folding, chunks, channels_last convs)
    torch.manual_seed(0)
    net = Network("16x16-6c3-2s-8c3-2s-12fc-4o", 2, (0.5, 0.5), (0.25, 0.25)).eval()
    net = net.to(memory_format=torch.channels_last)
    net.thresholds.fill_(0.3)
    x = torch.rand(3, 2, 16, 16).contiguous(memory_format=torch.channels_last)
    snn = Spiking(neuron="lif", leak=0.9, T=5, encoding="direct", chunk=3, surrogate="triangle")
    results = []
    for backend in ("auto", "reference"):
        monkeypatch.setattr(neurons, "BACKEND", backend)
        xg = x.clone().requires_grad_()
        out = net(xg, snn)
        out.square().sum().backward()
        results.append((out, xg.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("neuron, leak, reset, surrogate", CASES)
def test_compiled_kernels_match_the_python_loop_on_cuda(monkeypatch, neuron, leak, reset, surrogate):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    snn = Spiking(neuron=neuron, leak=leak, reset=reset, surrogate=surrogate, alpha=2.0, T=8, v_init=0.3)
    for dtype, channels_last, per_channel in ((torch.float32, False, False), (torch.float32, True, True),
                                              (torch.bfloat16, False, True), (torch.bfloat16, True, False)):
        compare(snn, dtype, channels_last, per_channel, device="cuda", T=8, shape=(16, 32, 24, 24))


def test_the_backend_recorded_is_the_one_that_runs(monkeypatch):
    """What a run records as its neuron backend (models.neurons.backend_on) is what spike_train uses."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert neurons.backend_on("cpu") == "reference"  # compiled kernels need CUDA tensors
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert neurons.backend_on("cpu") == "triton"
    monkeypatch.setattr(neurons, "BACKEND", "reference")
    assert neurons.backend_on("cpu") == "reference"
