"""Fused IF/LIF neuron loops as Triton kernels: one program per block of neurons, the loop over t inside.

They compute what :func:`spikeadv.models.neurons._membrane_loop` and ``_SpikeTrain.temporal`` compute, with the
same float32 operations in the same order (module doc-string of :mod:`spikeadv.models.neurons`):

    h_t = leak * v_{t-1} + I_t,  u_t = (h_t - V_th) / V_th,  s_t = H(u_t),  v_t = h_t - s_t V_th | h_t - s_t h_t

With signed spikes (``count``, each neuron's net spikes so far) s_t -= [h_t < 0 and count > 0], count += s_t,
then the reset by subtraction. Backward over t in reverse (``_SpikeTrain``'s doc-string), with g_v the
gradient of v_t (signed as subtract, the spikes taken back held constant):

    subtract: dL/dh_t = (g_s / V_th - g_v) H'(u_t) + g_v
    zero:     dL/dh_t = (g_s / V_th - (u_t + 1) g_v) H'(u_t) + g_v (1 - s_t),  g_v <- leak dL/dh_t

Launched with ``enable_fp_fusion=False`` (no a * b + c contracted into one rounding) and correctly
rounded divisions (``tl.div_rn``), so spikes, membranes and gradients equal the loop's bit for bit; the
``sigmoid`` surrogate's exp is the one exception (the GPU's and the CPU's exp differ in the last bits).
(torch itself on CUDA divides by a Python scalar as a product with its reciprocal, so its ``triangle``
gradients differ from its CPU ones by an ulp; the kernels give the CPU loop's on either device.)
Tensors are addressed as flat arrays in storage order, so channels_last currents are read in place.
Triton is imported on first use; with ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from ..config.spiking import Spiking

triton: Any = None  # imported by _jit
tl: Any = None
_JITTED: dict[tuple[str, bool], Any] = {}
BLOCK = 512  # neurons per program: 4 per thread of 4 warps (1024 spills registers on sm_80)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # currents; the membrane is float32


def _forward_kernel(cur, v0, th, spikes, u, v_out, cnt, n, stride_c, stride_s, stride_u, leak, T,
                    TH_STRIDE: tl.constexpr, LEAKY: tl.constexpr, SUBTRACT: tl.constexpr,
                    SAVE_U: tl.constexpr, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """h_t = leak v_{t-1} + I_t, s_t = H((h_t - V_th) / V_th) (or h_t >= V_th), the reset; u_t if SAVE_U;
    SIGNED: a spike taken back (s_t -= 1) where h_t < 0 and the count of net spikes ``cnt`` is > 0."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(v0 + offs, mask=mask, other=0.0)
    if SIGNED:
        c = tl.load(cnt + offs, mask=mask, other=0.0)
    vth = tl.load(th + offs * TH_STRIDE, mask=mask, other=1.0)  # stride 0: one threshold for all
    cur, spikes, u = cur + offs, spikes + offs, u + offs  # pointers step by whole steps (64-bit)
    for _ in range(T):
        i = tl.load(cur, mask=mask, other=0.0).to(tl.float32)
        if LEAKY:
            v = v * leak
        v = v + i
        if SAVE_U:
            ut = tl.div_rn(v - vth, vth)
            tl.store(u, ut, mask=mask)
            s = (ut >= 0.0).to(tl.float32)
        else:
            s = (v >= vth).to(tl.float32)
        if SIGNED:
            s = s - ((v < 0.0) & (c > 0.0)).to(tl.float32)
            c = c + s
        tl.store(spikes, s.to(spikes.dtype.element_ty), mask=mask)
        if SUBTRACT:
            v = v - s * vth
        else:
            v = v - s * v
        cur, spikes, u = cur + stride_c, spikes + stride_s, u + stride_u
    tl.store(v_out + offs, v, mask=mask)
    if SIGNED:
        tl.store(cnt + offs, c, mask=mask)  # in place: each program reads and writes its own neurons


def _backward_kernel(u, th, g_s, g_v0, grad, grad_v0, n, stride_u, stride_g, stride_i, leak, T,
                     TH_STRIDE: tl.constexpr, LEAKY: tl.constexpr, SUBTRACT: tl.constexpr,
                     SURROGATE: tl.constexpr, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    """BPTT over t in reverse: dL/dI_t = dL/dh_t, g_v <- leak dL/dh_t, with H' = surrogate_grad(u_t)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gv = tl.load(g_v0 + offs, mask=mask, other=0.0)
    vth = tl.load(th + offs * TH_STRIDE, mask=mask, other=1.0)  # stride 0: one threshold for all
    u, g_s, grad = u + offs, g_s + offs, grad + offs  # at step T - 1, stepping back by whole steps
    for _ in range(T):
        ut = tl.load(u, mask=mask, other=0.0)
        a = tl.abs(ut)
        if SURROGATE == "lee":
            sg = tl.maximum(1.0 - a, 0.0) * ALPHA
        elif SURROGATE == "fast-sigmoid":
            x = a * ALPHA + 1.0
            sg = tl.div_rn(1.0, x * x)
        elif SURROGATE == "atan":
            x = ut * (3.141592653589793 * ALPHA / 2)  # math.pi * alpha / 2, rounded to float32
            sg = tl.div_rn(1.0, x * x + 1.0) * (ALPHA / 2)
        elif SURROGATE == "rectangular":
            sg = tl.where(a < 0.5 / ALPHA, ALPHA, 0.0)
        elif SURROGATE == "sigmoid":
            e = tl.exp(-tl.abs(ut * ALPHA))  # sig(x) = 1 / (1 + e^-x) = e^x / (1 + e^x), never overflowing
            sig = tl.div_rn(tl.where(ut >= 0.0, 1.0, e), 1.0 + e)
            sg = sig * (1.0 - sig) * ALPHA
        else:  # triangle
            sg = tl.div_rn(tl.maximum(tl.div_rn(a, -ALPHA) + 1.0, 0.0), ALPHA)
        g = tl.div_rn(tl.load(g_s, mask=mask, other=0.0).to(tl.float32), vth)
        if SUBTRACT:
            g = (g - gv) * sg + gv
        else:
            s = (ut >= 0.0).to(tl.float32)
            g = (g - (ut + 1.0) * gv) * sg + gv * (1.0 - s)
        tl.store(grad, g, mask=mask)
        u, g_s, grad = u - stride_u, g_s - stride_g, grad - stride_i
        if LEAKY:
            gv = g * leak
        else:
            gv = g
    tl.store(grad_v0 + offs, gv, mask=mask)


def interpreting() -> bool:
    """TRITON_INTERPRET=1: the kernels run in Triton's interpreter, on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes", "y")


def available(device: torch.device | str) -> bool:
    """Whether the kernels can run on ``device``: CUDA (or CPU under TRITON_INTERPRET=1) and triton imports."""
    kind = torch.device(device).type
    if kind != "cuda" and not (kind == "cpu" and interpreting()):
        return False  # decided before importing triton: the CPU path costs nothing
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def supports(current: Tensor, v: Tensor, threshold: Tensor) -> bool:
    """Whether the kernels take these operands: float32/bf16/fp16 currents ``[T, ...]``, a float32 membrane
    of shape ``current[0]``, a float32 threshold that broadcasts to it; all on one device."""
    step = current.shape[1:]
    if current.dim() < 2 or current.numel() == 0 or current.dtype not in DTYPES or v.shape != step:
        return False
    if v.dtype != torch.float32 or threshold.dtype != torch.float32 or threshold.dim() > len(step):
        return False
    if not current.device == v.device == threshold.device:
        return False
    try:
        return torch.broadcast_shapes(threshold.shape, step) == step
    except RuntimeError:
        return False


def _jit(name: str) -> Any:
    """The kernel ``name`` compiled (or interpreted, per TRITON_INTERPRET at the call) on first use."""
    global triton, tl
    key = (name, interpreting())
    if key not in _JITTED:
        import triton as _triton
        import triton.language as _tl
        triton, tl = _triton, _tl
        _JITTED[key] = triton.jit(globals()[name])
    return _JITTED[key]


def _dense(x: Tensor) -> bool:
    """x's elements fill x.numel() consecutive storage slots, in any order of dimensions."""
    expect = 1
    for stride, size in sorted((s, n) for n, s in zip(x.shape, x.stride()) if n > 1):
        if stride != expect:
            return False
        expect *= size
    return True


def _ordered(x: Tensor, ref: Tensor) -> bool:
    """x (per step, or [T, ...] with every step) addresses elements at the same flat offsets as dense ref."""
    s = x[0] if x.dim() > ref.dim() else x
    same = all(a == b for n, a, b in zip(s.shape, s.stride(), ref.stride()) if n > 1)
    return s.shape == ref.shape and _dense(s) and same


def _new(x: Tensor, ref: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor shaped like x whose steps are stored in ref's order."""
    strides = ((ref.numel(),) if x.dim() > ref.dim() else ()) + ref.stride()
    return torch.empty_strided(x.shape, strides, dtype=dtype or x.dtype, device=ref.device)


def _src(x: Tensor, ref: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """x in ref's storage order: x itself when it already is, else a copy."""
    if _ordered(x, ref) and (dtype is None or x.dtype == dtype):
        return x
    return _new(x, ref, dtype).copy_(x)


def _dst(x: Tensor, ref: Tensor) -> Tensor:
    """Where the kernel writes output x: x itself when stored in ref's order, else a buffer copied back."""
    return x if _ordered(x, ref) else _new(x, ref)


def _layout(step: Tensor) -> Tensor:
    """The storage order the kernels use: ``step``'s own when dense, else row-major."""
    return step if _dense(step) else torch.empty_like(step, memory_format=torch.contiguous_format)


def _threshold(threshold: Tensor, ref: Tensor) -> tuple[Tensor, bool]:
    if threshold.numel() == 1:
        return threshold, True
    return _src(threshold.expand(ref.shape), ref), False


def _launch(name: str, n: int, device: torch.device, *args: Any, **constants: Any) -> None:
    kernel = _jit(name)
    block = BLOCK if not interpreting() else 4096  # the interpreter runs each program in Python
    grid = (triton.cdiv(n, block),)
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **constants, BLOCK=block, num_warps=4, enable_fp_fusion=False)
    else:
        kernel[grid](*args, **constants, BLOCK=block, enable_fp_fusion=False)


def forward(current: Tensor, v: Tensor, threshold: Tensor, snn: Spiking, save_u: bool,
            count: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The membrane recursion: (spikes in the currents' dtype and layout, final membrane, u_t or None).
    ``count`` (reset ``signed``; shape of ``v``): each neuron's net spikes so far, updated in place."""
    ref = _layout(current[0])
    cur = _src(current, ref)
    spikes, v_out = torch.empty_like(current), torch.empty_like(v)
    u = torch.empty_like(current, dtype=torch.float32) if save_u else None
    s_buf, v_buf = _dst(spikes, ref), _dst(v_out, ref)
    u_buf = _dst(u, ref) if u is not None else s_buf  # not written without save_u
    c_buf = _src(count, ref, torch.float32) if count is not None else None  # read and written in place
    th, scalar = _threshold(threshold, ref)
    _launch("_forward_kernel", ref.numel(), current.device, cur, _src(v, ref), th, s_buf, u_buf, v_buf,
            v_buf if c_buf is None else c_buf, ref.numel(), cur.stride(0), s_buf.stride(0), u_buf.stride(0),
            snn.leak, current.shape[0], TH_STRIDE=0 if scalar else 1, LEAKY=snn.leak != 1,
            SUBTRACT=snn.reset != "zero", SAVE_U=save_u, SIGNED=c_buf is not None)
    for out, buf in ((spikes, s_buf), (v_out, v_buf), (u, u_buf), (count, c_buf)):
        if out is not None and buf is not out:
            out.copy_(buf)
    return spikes, v_out, u


def temporal(u: Tensor, threshold: Tensor, snn: Spiking, grad_spikes: Tensor, grad_v: Tensor
             ) -> tuple[Tensor, Tensor]:
    """Backpropagation through time over the saved u_t: (dL/dI_t for every t, float32; dL/dv_0)."""
    ref = _layout(u[0])
    u_in = _src(u, ref)
    grad, grad_v0 = torch.empty_like(u), torch.empty_like(u[0])
    g_buf, v0_buf = _dst(grad, ref), _dst(grad_v0, ref)
    g_s = _src(grad_spikes, ref)
    th, scalar = _threshold(threshold, ref)
    _launch("_backward_kernel", ref.numel(), u.device, u_in[-1], th, g_s[-1], _src(grad_v, ref, torch.float32),
            g_buf[-1], v0_buf, ref.numel(), u_in.stride(0), g_s.stride(0), g_buf.stride(0), snn.leak, u.shape[0],
            TH_STRIDE=0 if scalar else 1, LEAKY=snn.leak != 1, SUBTRACT=snn.reset != "zero",
            SURROGATE=snn.surrogate, ALPHA=float(snn.alpha))
    for out, buf in ((grad, g_buf), (grad_v0, v0_buf)):
        if buf is not out:
            out.copy_(buf)
    return grad, grad_v0
