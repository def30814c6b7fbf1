"""The fused neuron kernels compiled for real GPUs on a machine without one: every constexpr
configuration the code can launch (neuron, reset, signed spikes, saved membrane, threshold stride,
surrogate) to a cubin for sm_90 (H100/H200), and the dtype, size and alignment variants of one of them
for sm_80 (A100) and sm_90, with Triton's own ptxas. A compile error or a register spill fails.

Everything the launcher varies is covered: ``kernels.forward`` and ``kernels.temporal`` pass currents
and spike gradients in fp32, bf16 or fp16, membranes, thresholds and u_t in fp32, sizes and strides as
32- or 64-bit integers (Triton types a Python int by its value), and pointers aligned to 16 bytes or not.
"""

import itertools
import os
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest
from conftest import dependency

from spikeadv.config.spiking import SURROGATES
from spikeadv.models import kernels

triton = dependency("triton", linux_x86_only=True)

FORWARD = {"cur": "*fp32", "v0": "*fp32", "th": "*fp32", "spikes": "*fp32", "u": "*fp32", "v_out": "*fp32",
           "cnt": "*fp32", "n": "i64", "stride_c": "i64", "stride_s": "i64", "stride_u": "i64", "leak": "fp32",
           "T": "i32"}
BACKWARD = {"u": "*fp32", "th": "*fp32", "g_s": "*fp32", "g_v0": "*fp32", "grad": "*fp32", "grad_v0": "*fp32",
            "n": "i64", "stride_u": "i64", "stride_g": "i64", "stride_i": "i64", "leak": "fp32", "T": "i32"}


def forward_configs():
    """(LEAKY, SUBTRACT, SAVE_U, SIGNED, TH_STRIDE) as forward() can set them: signed spikes only for
    IF neurons (no leak) with the subtractive reset (Spiking refuses anything else)."""
    for leaky, subtract, save_u, signed, stride in itertools.product((False, True), repeat=5):
        if not signed or (not leaky and subtract):
            yield {"LEAKY": leaky, "SUBTRACT": subtract, "SAVE_U": save_u, "SIGNED": signed, "TH_STRIDE": int(stride)}


def backward_configs():
    for leaky, subtract, stride, surrogate in itertools.product((False, True), (False, True), (0, 1), SURROGATES):
        yield {"LEAKY": leaky, "SUBTRACT": subtract, "TH_STRIDE": stride, "SURROGATE": surrogate, "ALPHA": 4.0}


def compile_kernel(name, signature, constants, arch, aligned=True):
    """The kernel compiled as ``_launch`` compiles it (4 warps, no FMA contraction): its SASS."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels._jit(name)
    fn = kernels._JITTED[(name, kernels.interpreting())]
    full = {**signature, **{k: "constexpr" for k in (*constants, "BLOCK")}}
    names = list(full)
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, t in signature.items()
             if aligned and (t.startswith("*") or k.startswith("stride"))}
    source = ASTSource(fn, full, constexprs={(names.index(k),): v for k, v in {**constants, "BLOCK": kernels.BLOCK}.items()},
                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": 4, "enable_fp_fusion": False})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        return subprocess.run([tool, "-sass", cubin.name], capture_output=True, text=True, check=True).stdout


def assert_no_spill(sass, what):
    assert "STL" not in sass and "LDL" not in sass, f"{what} spills registers to local memory"


@pytest.fixture(autouse=True)
def compiled_not_interpreted(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def compiled_everywhere(name, signature, configs):
    """Each configuration compiled for sm_90 in a pool of processes (one per core): its SASS."""
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=get_context("spawn")) as pool:
        jobs = [pool.submit(compile_kernel, name, signature, c, 90) for c in configs]
        return [job.result() for job in jobs]


@pytest.mark.slow
def test_every_forward_configuration_compiles_for_sm90_without_spills():
    configs = list(forward_configs())
    for constants, sass in zip(configs, compiled_everywhere("_forward_kernel", FORWARD, configs)):
        assert_no_spill(sass, f"forward {constants}")


@pytest.mark.slow
def test_every_backward_configuration_compiles_for_sm90_without_spills():
    configs = list(backward_configs())
    for constants, sass in zip(configs, compiled_everywhere("_backward_kernel", BACKWARD, configs)):
        assert_no_spill(sass, f"backward {constants}")


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype, ints, aligned", [("bf16", "i64", True), ("fp16", "i64", True),
                                                  ("fp32", "i32", True), ("bf16", "i32", False)])
def test_dtype_size_and_alignment_variants_compile(arch, dtype, ints, aligned):
    """Currents (forward) and spike gradients (backward) in each dtype, 32-bit sizes and strides, and
    pointers not known to be 16-byte aligned (a view into another tensor)."""
    forward = {**FORWARD, "cur": f"*{dtype}", "spikes": f"*{dtype}",
               **{k: ints for k in ("n", "stride_c", "stride_s", "stride_u")}}
    backward = {**BACKWARD, "g_s": f"*{dtype}", **{k: ints for k in ("n", "stride_u", "stride_g", "stride_i")}}
    signed = {"LEAKY": False, "SUBTRACT": True, "SAVE_U": True, "SIGNED": True, "TH_STRIDE": 1}
    assert_no_spill(compile_kernel("_forward_kernel", forward, signed, arch, aligned), f"forward {dtype} {ints}")
    rich = {"LEAKY": True, "SUBTRACT": False, "TH_STRIDE": 1, "SURROGATE": "sigmoid", "ALPHA": 4.0}
    assert_no_spill(compile_kernel("_backward_kernel", backward, rich, arch, aligned), f"backward {dtype} {ints}")
