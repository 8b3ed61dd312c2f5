"""The fused LIF backend (sdt/lif_cupy.py) against the torch reference (spec §1).

On CPU: the torch mirror of the kernels' math; the exact CUDA source compiled by NVRTC (no GPU needed) and run on the
CPU through g++ with a thread-grid emulator, driven by the real autograd.Function and its argument marshalling; the
import-without-cupy contract. On CUDA with cupy: the kernels themselves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sdt.lif_cupy as lc
from sdt.errors import UserError
from sdt.neurons import MultiStepLIF, MultiStepPLIF, lif_multistep_torch
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[1]
ALPHA = 4.0


def _run(fn, x: torch.Tensor, grad_s: torch.Tensor, plif: bool, tau: float, vth: float):
    """Spikes and grads (x, and w for PLIF) of ``fn(x, decay, vth, alpha)`` under ``(S * grad_s).sum()``."""
    xx = x.detach().clone().requires_grad_()
    w = torch.tensor(-math.log(tau - 1.0), dtype=x.dtype, device=x.device, requires_grad=True)
    decay = torch.sigmoid(w) if plif else 1.0 / tau
    s = fn(xx, decay, vth, ALPHA)
    s.backward(grad_s)
    return s.detach(), xx.grad, (w.grad if plif else None)


def _l1_mass_of_dk(x: torch.Tensor, gx: torch.Tensor, tau: float, vth: float) -> float:
    """sum_{t,n} |gH[t] (X[t] - V[t-1])|, the scale of float32 rounding in the reduced dL/dk (any sum order)."""
    k = 1.0 / tau
    v, mass = torch.zeros_like(x[0]), 0.0
    for t in range(x.shape[0]):
        mass += (gx[t] / k * (x[t] - v)).abs().sum().item()
        h = v + (x[t] - v) * k
        v = h * (h < vth)
    return mass


def _inputs(T: int, shape=(3, 7, 29), dtype=torch.float32, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, *shape, generator=g, dtype=torch.float64) * 1.5 + 0.6  # fires often, but not always
    gs = torch.randn(T, *shape, generator=g, dtype=torch.float64)
    # H[0] = X[0] k lands exactly on vth = 1.0 / 0.5 when k = 0.5 (tau=2, PLIF w=0): '>=' must fire there
    x.view(T, -1)[0, :2] = torch.tensor([2.0, 1.0], dtype=torch.float64)
    return x.to(dtype=dtype, device=device), gs.to(dtype=dtype, device=device)


CASES = [(T, vth, plif, tau) for T in (1, 2, 4, 9) for vth in (1.0, 0.5) for plif in (False, True)
         for tau in (2.0, 3.0)]


def _check_against_reference(fn, T: int, vth: float, plif: bool, tau: float, device: str, atol: float,
                             dk_rel: float) -> None:
    x, gs = _inputs(T, device=device, seed=T)
    s_ref, gx_ref, gw_ref = _run(lif_multistep_torch, x, gs, plif, tau, vth)
    s, gx, gw = _run(fn, x, gs, plif, tau, vth)
    assert 0.05 < s_ref.mean().item() < 0.6  # both spike and silence occur, so every branch is exercised
    assert torch.equal(s, s_ref)  # forward: bit-exact
    assert gx_ref.abs().max() > 0.1
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=atol)
    if plif:
        # dL/dk is one sum over T*N terms whose order differs (per step in autograd, per neuron here), so the
        # float32 error scales with the summands' L1 mass, not with the (possibly cancelling) result
        tol = dk_rel * _l1_mass_of_dk(x.double().cpu(), gx_ref.double().cpu(), tau, vth)
        dk_dw = (1 / tau) * (1 - 1 / tau)  # d sigmoid(w)/dw at k = 1/tau
        assert abs(gw.item() - gw_ref.item()) <= tol * dk_dw + 1e-12, (gw.item(), gw_ref.item(), tol)
        assert abs(gw_ref.item()) > 1e-3


# ------------------------------------------------------------------------------------------------ (a) torch mirror
@pytest.mark.parametrize("T,vth,plif,tau", CASES)
def test_manual_bptt_matches_autograd_float32(T, vth, plif, tau):
    _check_against_reference(lc.lif_multistep_manual_bptt, T, vth, plif, tau, "cpu", atol=1e-6, dk_rel=1e-7)


@pytest.mark.parametrize("plif", [False, True])
def test_manual_bptt_matches_autograd_float64(plif):
    x, gs = _inputs(6, dtype=torch.float64, seed=3)
    ref = _run(lif_multistep_torch, x, gs, plif, 2.0, 1.0)
    got = _run(lc.lif_multistep_manual_bptt, x, gs, plif, 2.0, 1.0)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-13)
    if plif:
        torch.testing.assert_close(got[2], ref[2], rtol=1e-12, atol=1e-12)


def test_manual_bptt_half_input_computes_in_float32():
    x, gs = _inputs(4, seed=5)
    xh = x.half()
    s, gx, _ = _run(lc.lif_multistep_manual_bptt, xh, gs.half(), False, 2.0, 1.0)
    s_ref, gx_ref, _ = _run(lif_multistep_torch, xh.float(), gs.half().float(), False, 2.0, 1.0)
    assert s.dtype == torch.float16 and gx.dtype == torch.float16
    assert torch.equal(s.float(), s_ref)
    torch.testing.assert_close(gx, gx_ref.half(), rtol=0, atol=0)


def test_bad_decay_and_input_rejected():
    with pytest.raises(ValueError, match="scalar"):
        lc.lif_multistep_manual_bptt(torch.ones(2, 3), torch.ones(3), 1.0)
    with pytest.raises(TypeError, match="floating"):
        lc.lif_multistep_manual_bptt(torch.ones(2, 3, dtype=torch.int64), 0.5, 1.0)


# ------------------------------------------------------------------------------- (b) CPU machines without cupy
def test_import_and_cupy_backend_model_on_cpu_never_import_cupy():
    # a fresh interpreter: on a GPU machine another test in this process may legitimately have imported cupy
    code = (
        "import sys, torch, sdt, sdt.lif_cupy\n"
        "from tests.conftest import tiny_model\n"
        "m = tiny_model(neuron_backend='cupy')\n"
        "r = tiny_model(neuron_backend='torch')\n"
        "x = torch.rand(2, 3, 16, 16)\n"
        "assert all(n.backend == 'cupy' for n in m.neurons())\n"
        "assert torch.equal(m(x), r(x))\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "print('ok')\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU tensors everywhere, even on a GPU machine
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_cupy_backend_falls_back_to_torch_for_cpu_tensors():
    x, _ = _inputs(4)
    for cls in (MultiStepLIF, MultiStepPLIF):
        assert torch.equal(cls(backend="cupy")(x), cls(backend="torch")(x))
    img = torch.rand(1, 3, 16, 16)
    assert torch.equal(tiny_model(neuron_backend="cupy")(img), tiny_model(neuron_backend="torch")(img))


def test_missing_cupy_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail even where cupy is installed
    with pytest.raises(lc.CupyUnavailableError, match=r"pip install -e '\.\[gpu\]'"):
        lc._import_cupy()
    assert issubclass(lc.CupyUnavailableError, ImportError) and issubclass(lc.CupyUnavailableError, UserError)
    if torch.cuda.is_available():
        with pytest.raises(lc.CupyUnavailableError):
            lc.lif_multistep_cupy(torch.ones(2, 3, device="cuda"), 0.5, 1.0)
        assert "pip install" in lc.cupy_unavailable_reason()


def test_cupy_function_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensor"):
        lc.lif_multistep_cupy(torch.ones(2, 3), 0.5, 1.0)


# ------------------------------------------------------- (d) the exact CUDA source, compiled by NVRTC without a GPU
def _load_nvrtc() -> ctypes.CDLL | None:
    patterns = [os.path.join(p, "nvidia", "*", "lib", "libnvrtc.so*") for p in sys.path if p]
    patterns += [os.path.join(p, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*") for p in sys.path if p]
    patterns += ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/local/cuda*/targets/*/lib/libnvrtc.so*"]
    paths = [f for pat in patterns for f in sorted(glob.glob(pat)) if "builtins" not in f and ".alt." not in f]
    found = ctypes.util.find_library("nvrtc")
    for path in paths + ([found] if found else []):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _nvrtc_ptx(lib: ctypes.CDLL, source: str, options: list[str]) -> str:
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"sdt_lif.cu", 0, None, None) == 0
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0, f"NVRTC failed ({rc}):\n{log.value.decode()}"
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, ptx)
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_source_compiles_with_nvrtc_without_fma_in_forward(dtype):
    lib = _load_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (comes with torch's CUDA wheels or the CUDA toolkit)")
    arch = ["--gpu-architecture=compute_90"]  # the H200; cupy picks the real device's arch itself
    ptx = _nvrtc_ptx(lib, lc.kernel_source(dtype), list(lc.NVRTC_OPTIONS) + arch)
    for name in lc.KERNEL_NAMES:
        assert f".entry {name}(" in ptx
    fwd = ptx.split(".entry sdt_lif_fwd(")[1].split(".entry")[0]
    assert "fma.rn" not in fwd  # (F1) stays a separate mul and add, as in torch
    # ... and that is the option's doing: without it NVRTC contracts (F1) into an FMA
    fwd_default = _nvrtc_ptx(lib, lc.kernel_source(dtype), arch).split(".entry sdt_lif_fwd(")[1].split(".entry")[0]
    assert "fma.rn" in fwd_default


# ------------------------------------------- (e) the exact CUDA source, run on the CPU by a g++ thread-grid emulator
_SHIM = r"""
#include <math.h>
struct sdt_uint3 { unsigned int x, y, z; };
static sdt_uint3 threadIdx, blockIdx, blockDim;
extern "C" void sdt_emu_set(unsigned int block, unsigned int block_dim, unsigned int thread) {
    blockIdx.x = block; blockDim.x = block_dim; threadIdx.x = thread;
}
#define __global__
#define __device__
#define __forceinline__ inline
"""


def _kernel_signatures(source: str, dtype: torch.dtype) -> dict[str, list[type]]:
    """Kernel name -> numpy scalar type each parameter must be launched with (pointers as uint64)."""
    real = np.float32 if dtype == torch.float32 else np.float64
    code = re.sub(r"//[^\n]*", "", source)
    sigs = {}
    for name, params in re.findall(r'extern "C" __global__ void (\w+)\((.*?)\)\s*\{', code, flags=re.S):
        types = []
        for p in params.split(","):
            p = " ".join(p.replace("const", " ").replace("__restrict__", " ").split()[:-1])
            types.append({"scalar_t*": np.uint64, "scalar_t": real, "long long": np.int64, "int": np.int32}[
                p.replace(" *", "*")])
        sigs[name] = types
    return sigs


_CT = {np.uint64: ctypes.c_void_p, np.float32: ctypes.c_float, np.float64: ctypes.c_double,
       np.int64: ctypes.c_longlong, np.int32: ctypes.c_int}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """A launcher running the kernels on the CPU: one call per (block, thread), exactly the CUDA source."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to emulate the kernel on the CPU")
    libs, sigs = {}, {}
    for dtype in (torch.float32, torch.float64):
        d = tmp_path_factory.mktemp(str(dtype).split(".")[-1])
        (d / "k.cpp").write_text(_SHIM + lc.kernel_source(dtype))
        # -ffp-contract=off: the counterpart of --fmad=false
        subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-o", str(d / "k.so"), str(d / "k.cpp")],
                       check=True, capture_output=True)
        libs[dtype] = ctypes.CDLL(str(d / "k.so"))
        sigs[dtype] = _kernel_signatures(lc.kernel_source(dtype), dtype)
    calls = []

    def launch(name: str, dtype: torch.dtype, n_threads: int, args: tuple, device: torch.device) -> None:
        assert device.type == "cpu"
        want = sigs[dtype][name]
        assert [type(a) for a in args] == want, f"{name}: launched with {[type(a) for a in args]}, kernel takes {want}"
        fn = getattr(libs[dtype], name)
        fn.argtypes, fn.restype = [_CT[t] for t in want], None
        values = [a.item() for a in args]
        grid = (n_threads + lc.BLOCK - 1) // lc.BLOCK
        for b in range(grid):
            for th in range(lc.BLOCK):  # includes the tail threads past N, which must do nothing
                libs[dtype].sdt_emu_set(b, lc.BLOCK, th)
                fn(*values)
        calls.append((name, dtype, n_threads))

    launch.calls = calls  # type: ignore[attr-defined]
    return launch


def _emulated(x_seq, decay, vth, alpha=ALPHA):
    x, k = lc._prepare(x_seq, decay)
    return lc._LIFKernel.apply(x, k, float(vth), float(alpha)).to(x_seq.dtype)


@pytest.mark.parametrize("T,vth,plif,tau", [c for c in CASES if c[0] in (1, 4, 9)])
def test_emulated_kernel_matches_autograd(emulator, monkeypatch, T, vth, plif, tau):
    monkeypatch.setattr(lc, "_LAUNCH", emulator)
    _check_against_reference(_emulated, T, vth, plif, tau, "cpu", atol=1e-6, dk_rel=1e-7)
    assert {c[0] for c in emulator.calls} == set(lc.KERNEL_NAMES)


def test_emulated_kernel_matches_mirror_and_skips_h_without_grad(emulator, monkeypatch):
    monkeypatch.setattr(lc, "_LAUNCH", emulator)
    x, gs = _inputs(5, shape=(300,), dtype=torch.float64, seed=11)
    for plif in (False, True):
        got = _run(_emulated, x, gs, plif, 2.0, 0.5)
        mirror = _run(lc.lif_multistep_manual_bptt, x, gs, plif, 2.0, 0.5)
        assert torch.equal(got[0], mirror[0])
        torch.testing.assert_close(got[1], mirror[1], rtol=0, atol=1e-14)
        if plif:
            torch.testing.assert_close(got[2], mirror[2], rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # inference path: h_out is NULL
        assert torch.equal(_emulated(x, 0.5, 1.0), lif_multistep_torch(x, 0.5, 1.0))
    # non-contiguous input, half input, empty input
    xt = x.float().transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(_emulated(xt[:, ::2], 0.5, 1.0), lif_multistep_torch(xt[:, ::2], 0.5, 1.0))
    xh = x.half()
    assert torch.equal(_emulated(xh, 0.5, 1.0), lif_multistep_torch(xh.float(), 0.5, 1.0).half())
    e = torch.zeros(3, 0, requires_grad=True)
    _emulated(e, 0.5, 1.0).sum().backward()
    assert e.grad.shape == (3, 0)


# ----------------------------------------------------------------------------------- (c) the kernels on the GPU
@pytest.fixture
def gpu() -> torch.device:
    reason = lc.cupy_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs CUDA and cupy (gpu extra); none on this machine ({reason})")
    return torch.device("cuda")


@pytest.mark.parametrize("T,vth,plif,tau", CASES)
def test_cupy_kernel_matches_reference_on_cuda(gpu, T, vth, plif, tau):
    _check_against_reference(lc.lif_multistep_cupy, T, vth, plif, tau, "cuda", atol=1e-5, dk_rel=1e-6)


def test_cupy_kernel_float64_half_stream_and_no_grad(gpu):
    x, gs = _inputs(7, shape=(1000,), dtype=torch.float64, device="cuda", seed=2)
    for plif in (False, True):  # float64: the kernel against its own mirror, to ~1e-12
        got = _run(lc.lif_multistep_cupy, x, gs, plif, 2.0, 1.0)
        mirror = _run(lc.lif_multistep_manual_bptt, x, gs, plif, 2.0, 1.0)
        assert torch.equal(got[0], mirror[0])
        torch.testing.assert_close(got[1], mirror[1], rtol=0, atol=1e-12)
        if plif:
            torch.testing.assert_close(got[2], mirror[2], rtol=1e-10, atol=1e-10)
    xf = x.float()
    with torch.no_grad():
        assert torch.equal(lc.lif_multistep_cupy(xf, 0.5, 1.0), lif_multistep_torch(xf, 0.5, 1.0))
        xh = xf.half()
        sh = lc.lif_multistep_cupy(xh, 0.5, 1.0)
        assert sh.dtype == torch.float16 and torch.equal(sh, lif_multistep_torch(xh.float(), 0.5, 1.0).half())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the kernels must run on torch's current stream, whichever it is
        xs = _inputs(4, shape=(64, 1024), device="cuda", seed=4)[0]
        s_side = lc.lif_multistep_cupy(xs, 0.5, 1.0)
        ref = lif_multistep_torch(xs, 0.5, 1.0)
        same = torch.equal(s_side, ref)
    torch.cuda.synchronize()
    assert same


def test_model_with_cupy_backend_matches_torch_on_cuda(gpu):
    for mode in ("lif", "plif"):
        m_torch = tiny_model(spike_mode=mode).cuda()
        m_cupy = tiny_model(spike_mode=mode, neuron_backend="cupy").cuda()
        x = torch.rand(2, 3, 16, 16, device="cuda")
        y_t, y_c = m_torch(x), m_cupy(x)
        torch.testing.assert_close(y_c, y_t, rtol=0, atol=1e-5)
        y_t.square().sum().backward()
        y_c.square().sum().backward()
        for (name, p_t), (_, p_c) in zip(m_torch.named_parameters(), m_cupy.named_parameters()):
            if p_t.grad is not None:
                torch.testing.assert_close(p_c.grad, p_t.grad, rtol=1e-4, atol=1e-4, msg=name)
