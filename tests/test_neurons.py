"""IF/LIF neurons, surrogate derivatives, the encoder, and the SNN modes of one weight set."""

import math

import pytest
import torch
from torch import nn

from spikeadv import runtime
from spikeadv.config.spiking import SURROGATES, Spiking
from spikeadv.errors import SpikeAdvError
from spikeadv.models import neurons
from spikeadv.models.network import Network
from spikeadv.models.neurons import SpikeFn, encode, spike_train, surrogate_grad


@pytest.mark.parametrize("wx, vth", [(0.375, 1.0), (0.8125, 1.0), (0.25, 0.75), (1.5, 2.0), (0.0625, 0.5)])
@pytest.mark.parametrize("T", [1, 7, 64, 1000])
def test_if_spike_count_is_the_analytic_rate(wx, vth, T):
    # one IF layer, weight w, constant input x, reset by subtraction: count = floor(T * w x / V_th)
    w = torch.tensor([[wx * 2]])
    x = torch.full((T, 1, 1), 0.5)
    current = x @ w.T  # [T, 1, 1], exactly wx (dyadic values: no rounding)
    spikes, _ = spike_train(current, torch.tensor(vth), None, Spiking(T=T))
    assert spikes.sum().item() == math.floor(T * wx / vth)


@pytest.mark.parametrize("c", [0.0625, 0.25, 0.3125, 0.5, 0.6875, 0.9375])
@pytest.mark.parametrize("T", [1, 4, 16, 100])
def test_half_threshold_membrane_init_rounds_the_rate(c, T):
    # IF, reset by subtraction, v_0 = V_th / 2: after T steps v = V_th / 2 + T c - n V_th with
    # 0 <= v < V_th, so n = floor(T c / V_th + 1/2): the rate is rounded, not floored (Bu et al. 2022)
    current = torch.full((T, 1), c)
    half, _ = spike_train(current, torch.tensor(1.0), None, Spiking(T=T, v_init=0.5))
    zero, _ = spike_train(current, torch.tensor(1.0), None, Spiking(T=T))
    assert half.sum().item() == math.floor(T * c + 0.5)
    assert zero.sum().item() == math.floor(T * c)


def test_reset_to_zero_loses_the_residue():
    current = torch.full((10, 1), 0.75)
    sub, _ = spike_train(current, torch.tensor(1.0), None, Spiking(T=10))
    zero, _ = spike_train(current, torch.tensor(1.0), None, Spiking(T=10, reset="zero"))
    assert sub.sum() == 7 and zero.sum() == 5  # zero: fires every 2nd step, dropping 0.5 each time


def test_lif_leak_lowers_the_rate_and_matches_its_recursion():
    current = torch.full((50, 1), 0.3)
    lif, _ = spike_train(current, torch.tensor(1.0), None, Spiking(neuron="lif", T=50, leak=0.9))
    v, count = 0.0, 0
    for _ in range(50):
        v = 0.9 * v + 0.3
        if v >= 1.0:
            v -= 1.0
            count += 1
    assert lif.sum().item() == count < 15  # IF would fire floor(50 * 0.3) = 15 times


def test_membrane_carries_across_chunks_of_time():
    current = torch.rand(40, 3, 5)
    whole, _ = spike_train(current, torch.tensor(0.7), None, Spiking(T=40))
    a, v = spike_train(current[:13], torch.tensor(0.7), None, Spiking(T=40))
    b, _ = spike_train(current[13:], torch.tensor(0.7), v, Spiking(T=40))
    assert torch.equal(whole, torch.cat([a, b]))


def test_signed_spikes_keep_the_net_count_at_the_cumulative_input():
    # signed IF, v_0 = 0, |I_t| < V_th = 1: the net count is max(0, floor(sum_t I_t)) after every step
    # (v = S_t - count V_th stays in [0, V_th) once the neuron has fired); currents in 1/64 steps, exact
    gen = torch.Generator().manual_seed(0)
    current = torch.randint(-40, 41, (200, 64), generator=gen).float() / 64
    signed = Spiking(T=200, reset="signed")
    spikes, (v, count) = spike_train(current, torch.tensor(1.0), None, signed)
    expected = current.cumsum(0).floor().clamp(min=0)
    assert torch.equal(spikes.cumsum(0), expected) and torch.equal(count, expected[-1])
    assert (spikes < 0).any() and torch.equal(v, current.sum(0) - count)
    plain, _ = spike_train(current, torch.tensor(1.0), None, Spiking(T=200))
    assert (plain.sum(0) > expected[-1]).any()  # reset by subtraction keeps spikes early input drew
    a, state = spike_train(current[:77], torch.tensor(1.0), None, signed)  # carried across chunks of time
    b, _ = spike_train(current[77:], torch.tensor(1.0), state, signed)
    assert torch.equal(torch.cat([a, b]), spikes)


def reference_spike_train(current, threshold, v, snn):
    """The plain loop, autograd through every step: what the fused neuron loop must reproduce (signed
    spikes: the spike taken back held constant, as the fused loop's backward does)."""

    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u):
            ctx.save_for_backward(u)
            return (u >= 0).to(u.dtype)

        @staticmethod
        def backward(ctx, grad):
            (u,) = ctx.saved_tensors
            return grad * surrogate_grad(u, snn.surrogate, snn.alpha)

    dtype = torch.promote_types(current.dtype, torch.float32)
    v, count = (v if snn.reset == "signed" else (v, None)) if v is not None else (None, None)
    v = torch.zeros_like(current[0], dtype=dtype) if v is None else v
    count = torch.zeros_like(v) if count is None else count
    spikes = []
    for i_t in current:
        v = snn.leak * v + i_t.to(dtype) if snn.leak != 1 else v + i_t.to(dtype)
        s = Spike.apply((v - threshold) / threshold)
        if snn.reset == "signed":
            s = s - ((v < 0) & (count > 0)).to(s.dtype)
            count = count + s.detach()
        v = v * (1 - s) if snn.reset == "zero" else v - s * threshold
        spikes.append(s)
    return torch.stack(spikes).to(current.dtype), ((v, count) if snn.reset == "signed" else v)


@pytest.mark.parametrize("reset, neuron, leak", [("subtract", "if", 1.0), ("subtract", "lif", 0.8), ("zero", "if", 1.0),
                                                 ("zero", "lif", 0.8), ("signed", "if", 1.0)])
@pytest.mark.parametrize("surrogate, alpha", [("fast-sigmoid", 4.0), ("lee", 1.0), ("atan", 2.0), ("triangle", 1.5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_neuron_loop_matches_the_step_by_step_reference(reset, neuron, leak, surrogate, alpha, dtype):
    # two chunks of time with the membrane carried over; a loss on the spikes of both chunks and on the
    # final membrane, so gradients flow through reset, leak and the chunk boundary
    snn = Spiking(neuron=neuron, leak=leak, reset=reset, surrogate=surrogate, alpha=alpha, T=11)
    threshold = torch.tensor(0.7, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    current = (torch.rand(11, 3, 4, 5, generator=gen, dtype=dtype) * 1.2 - 0.1).requires_grad_()
    weights = torch.randn(11, 3, 4, 5, generator=gen, dtype=dtype)
    if reset == "signed":  # inputs that fall after they rose, so spikes are taken back
        current = (current.detach() - torch.linspace(-0.3, 0.6, 11, dtype=dtype).view(11, 1, 1, 1)).requires_grad_()
    membrane = (lambda state: state[0]) if reset == "signed" else (lambda state: state)
    results = []
    for fn in (spike_train, reference_spike_train):
        current.grad = None
        a, v = fn(current[:6], threshold, None, snn)
        b, v = fn(current[6:], threshold, v, snn)
        spikes, v = torch.cat([a, b]), membrane(v)
        ((spikes * weights).sum() + (v * v).sum()).backward()
        results.append((spikes.detach(), v.detach(), current.grad.clone()))
    (s1, v1, g1), (s2, v2, g2) = results
    assert torch.equal(s1, s2)
    assert 0 < s1.mean() < 1  # some spikes, some silence
    assert (s1 < 0).any() == (reset == "signed")
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    assert torch.allclose(v1, v2, **tol)
    assert torch.allclose(g1, g2, **tol) and g1.abs().sum() > 0
    with torch.no_grad():  # the inference path: nothing saved, same spikes and membrane
        a, v = spike_train(current[:6], threshold, None, snn)
        b, v = spike_train(current[6:], threshold, v, snn)
    assert torch.equal(torch.cat([a, b]), s1) and torch.allclose(membrane(v), v1, **tol)


def test_channels_last_currents_give_the_same_spikes_grads_and_keep_their_layout():
    # conv layers under channels_last hand the neurons [T, B, C, H, W] currents with channels-last
    # strides; state and saved tensors follow that layout (mixing layouts only costs time)
    snn = Spiking(neuron="lif", leak=0.9, T=5)
    base = torch.rand(5 * 2, 3, 4, 4) * 0.6
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        current = base.contiguous(memory_format=layout).view(5, 2, 3, 4, 4).requires_grad_()
        spikes, v = spike_train(current, torch.tensor(0.5), None, snn)
        (spikes * torch.arange(1.0, 6.0).view(5, 1, 1, 1, 1)).sum().backward()
        results.append((spikes, v, current.grad))
        assert v.is_contiguous(memory_format=layout)
    (s1, v1, g1), (s2, v2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(v1, v2) and torch.equal(g1, g2) and g1.abs().sum() > 0


def test_fused_neuron_loop_keeps_bf16_currents_and_a_float32_membrane():
    snn = Spiking(neuron="lif", leak=0.9, T=8)
    current = (torch.rand(8, 2, 64) * 0.8).bfloat16().requires_grad_()
    threshold = torch.tensor(0.6)
    grads = []
    for fn in (spike_train, reference_spike_train):
        current.grad = None
        spikes, v = fn(current, threshold, None, snn)
        assert spikes.dtype == torch.bfloat16 and v.dtype == torch.float32
        (spikes.float().sum() + v.sum()).backward()
        grads.append((spikes, v, current.grad))
    (s1, v1, g1), (s2, v2, g2) = grads
    assert torch.equal(s1, s2) and torch.equal(v1, v2) and g1.dtype == torch.bfloat16
    assert torch.allclose(g1.float(), g2.float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name", SURROGATES)
def test_surrogate_is_the_derivative_of_a_smooth_step(name):
    u = torch.linspace(-2, 2, 401, dtype=torch.float64, requires_grad=True)
    SpikeFn.apply(u, name, 2.0).sum().backward()
    assert torch.allclose(u.grad, surrogate_grad(u.detach(), name, 2.0))
    prim = PRIMITIVES[name](u.detach(), 2.0)
    fd = torch.gradient(prim, spacing=(u.detach(),))[0]  # central differences of the primitive
    # central differences err by at most h * L, L the Lipschitz constant of the surrogate (kinks incl.)
    lipschitz_times_h = u.grad.diff().abs().max()
    inner = slice(2, -2)
    assert (fd[inner] - u.grad[inner]).abs().max() <= lipschitz_times_h + 1e-9, name
    assert u.grad.max() > 0


PRIMITIVES = {  # smooth steps whose derivatives are the surrogates
    "lee": lambda u, a: a * torch.where(u.abs() < 1, u - u * u.abs() / 2, 0.5 * torch.sign(u)),
    "fast-sigmoid": lambda u, a: u / (1 + a * u.abs()),
    "atan": lambda u, a: torch.atan(math.pi * a * u / 2) / math.pi,
    "triangle": lambda u, a: torch.where(u.abs() < a, (u - u * u.abs() / (2 * a)) / a, 0.5 * torch.sign(u)),
    "rectangular": lambda u, a: a * u.clamp(-0.5 / a, 0.5 / a),
    "sigmoid": lambda u, a: torch.sigmoid(a * u),
}


def _layer_grad(snn, current, weights):
    """d sum_t,i weights_t,i s_t,i / d current of one spiking layer."""
    current = current.clone().requires_grad_(True)
    spikes, _ = spike_train(current, torch.tensor(0.7, dtype=torch.float64), None, snn)
    (spikes * weights).sum().backward()
    return current.grad, spikes


@pytest.mark.parametrize("neuron, leak", [("if", 1.0), ("lif", 0.9)])
def test_rate_backward_is_the_rate_relation_and_mixes_linearly(neuron, leak):
    # BPTR / RGA: every s_t read as the rate r = f(mean_t I_t), f' = 1 / V_th where the neuron fired:
    # dL/dI_t = sum_t' dL/ds_t' / T / V_th on firing neurons, 0 on silent ones, the same at every t
    gen = torch.Generator().manual_seed(0)
    T, threshold = 6, 0.7
    current = torch.randn(T, 50, generator=gen, dtype=torch.float64) * 0.5
    weights = torch.randn(T, 50, generator=gen, dtype=torch.float64)
    rate, spikes = _layer_grad(Spiking(neuron=neuron, leak=leak, T=T, rate_mix=1.0), current, weights)
    fired = spikes.amax(0) > 0
    assert 0 < fired.sum() < 50  # both cases occur
    expected = (weights.mean(0) / threshold * fired).expand(T, -1)
    assert torch.allclose(rate, expected, rtol=0, atol=1e-12)
    temporal, _ = _layer_grad(Spiking(neuron=neuron, leak=leak, T=T), current, weights)
    mixed, _ = _layer_grad(Spiking(neuron=neuron, leak=leak, T=T, rate_mix=0.3), current, weights)
    assert not torch.allclose(temporal, rate)
    assert torch.allclose(mixed, 0.7 * temporal + 0.3 * rate, rtol=0, atol=1e-12)


def test_poisson_encoder_rates_seeds_and_straight_through():
    x = torch.linspace(0, 1, 11).view(1, 11)
    keep = x.clone()
    T = 4000
    s = encode(x, T, generator=torch.Generator().manual_seed(0))
    assert s.shape == (T, 1, 11) and set(s.unique().tolist()) <= {0.0, 1.0}
    # mean_t s_t -> x: Bernoulli std of the mean <= 0.5 / sqrt(T); 5 sigma
    assert (s.mean(0) - x).abs().max() <= 5 * 0.5 / math.sqrt(T)
    assert torch.equal(s, encode(x, T, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(s, encode(x, T, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(x, keep)  # the caller's tensor is untouched
    xg = x.clone().requires_grad_()
    encode(xg, 8).mean(0).sum().backward()
    assert torch.allclose(xg.grad, torch.ones_like(x))  # d mean_t(s_t) / dx = 1
    assert torch.equal(encode(x, 3, "direct"), x.expand(3, 1, 11))


def small_net(**kw):
    torch.manual_seed(0)
    return Network("16x16-6c3-2s-8c3-2s-12fc-4o", 2, (0.5, 0.5), (0.25, 0.25), **kw)


def test_time_folding_in_chunks_equals_one_pass():
    net = small_net(bias=True).eval()
    net.thresholds.fill_(0.3)
    x = torch.rand(5, 2, 16, 16)
    whole = net(x, Spiking(T=12, encoding="direct"))
    chunked = net(x, Spiking(T=12, encoding="direct", chunk=5))
    assert torch.allclose(whole, chunked, atol=1e-6)
    # and the conv layers really see [t*B, ...]: one call per chunk
    calls = []
    net.layers[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    net(x, Spiking(T=12, encoding="direct", chunk=5))
    assert calls == [25, 25, 10]


def test_batchnorm_training_sees_all_timesteps_in_one_call(monkeypatch):
    # batch-norm statistics in training must pool all T steps: chunks of time would each be normalised
    # by their own statistics, which the running statistics used in evaluation do not reproduce
    monkeypatch.setattr(runtime, "CPU_FOLD_BYTES", 4 * 16 * 16 * 4 * 2)  # room for two frames per call
    net = Network("16x16-4c3-2s-8fc-3o", 2, (0.5, 0.5), (0.25, 0.25), dropout=0.0, batchnorm=True).train()
    calls = []
    net.layers[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    net(torch.rand(3, 2, 16, 16), Spiking(T=6, encoding="direct"))
    assert calls == [18]
    calls.clear()
    net.eval()(torch.rand(3, 2, 16, 16), Spiking(T=6, encoding="direct"))
    assert len(calls) == 6  # evaluation may chunk: running statistics do not depend on the call


def test_output_is_accumulated_potential_over_T():
    net = small_net().eval()
    x = torch.rand(3, 2, 16, 16)
    snn = Spiking(T=6, encoding="direct")
    outputs = torch.cat(list(net.timesteps(x, snn)))
    assert torch.allclose(net(x, snn), outputs.mean(0), atol=1e-6)


def test_dropout_mask_is_held_across_timesteps():
    net = small_net(dropout=0.5).train()
    with torch.no_grad():
        net.layers[0].weight.abs_()
    net.thresholds.fill_(1e-6)  # every neuron with positive input fires at every step
    seen = []
    net.layers[1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    T = 5
    net(torch.rand(4, 2, 16, 16) + 0.5, Spiking(T=T, encoding="direct"))
    frames = seen[0].view(T, 4, *seen[0].shape[1:])
    assert all(torch.equal(frames[0], f) for f in frames[1:])
    dropped = (frames[0] == 0).float().mean().item()
    n = frames[0].numel()
    assert abs(dropped - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_snn_input_gradient_in_eval_mode_is_finite_and_nonzero():
    net = small_net(dropout=0.2).eval()
    net.thresholds.fill_(0.5)
    x = torch.rand(4, 2, 16, 16, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    snn = Spiking(neuron="lif", leak=0.9, T=8)
    loss = nn.functional.cross_entropy(net(x, snn, torch.Generator().manual_seed(0)), y)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("surrogate, reset", [("fast-sigmoid", "subtract"), ("atan", "subtract"), ("fast-sigmoid", "zero")])
def test_bptt_gradient_matches_finite_differences_with_a_smooth_spike(monkeypatch, surrogate, reset):
    # With the Heaviside replaced by its smooth primitive, the fused backward through the whole time
    # loop (membrane, reset, leak, chunks, folding) must equal central finite differences.
    monkeypatch.setattr(neurons, "heaviside", lambda u, out: torch.add(PRIMITIVES[surrogate](u, 1.0), 0.5, out=out))
    net = small_net(bias=True).double().eval()
    net.thresholds.fill_(0.4)
    snn = Spiking(neuron="lif", leak=0.8, T=4, encoding="direct", surrogate=surrogate, alpha=1.0, reset=reset,
                  chunk=3)  # the membrane's gradient crosses a chunk boundary too
    x = torch.rand(2, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: net(v, snn), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(T=0), "T"), (dict(neuron="lif", leak=0.0), "leak"), (dict(neuron="lif", leak=1.5), "leak"),
    (dict(leak=0.9), "IF neurons have no leak"), (dict(reset="soft"), "reset"),
    (dict(neuron="lif", leak=0.9, reset="signed"), "for converted IF neurons"),
    (dict(surrogate="relu"), "surrogate"), (dict(encoding="latency"), "encoding"),
    (dict(v_init=1.0), "v_init"), (dict(v_init=-0.5), "v_init"), (dict(rate_mix=1.5), "rate_mix"),
])
def test_bad_spiking_settings(bad, match):
    with pytest.raises(SpikeAdvError, match=match):
        Spiking(**bad)
