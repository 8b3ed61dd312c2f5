"""Fused CUDA (CuPy RawKernel) multi-step LIF / PLIF with hand-written BPTT, plus its pure-torch mirror.

Semantics are those of :func:`sdt.neurons.lif_multistep_torch` (spec §1): per neuron, with V[-1] = 0 and charge factor k
(1/tau for LIF, sigmoid(w) for PLIF), the equations are tagged so the CUDA source and the torch mirror can be read
side by side:

    (F1) H[t] = V[t-1] + (X[t] - V[t-1]) * k
    (F2) S[t] = (H[t] - vth >= 0)
    (F3) V[t] = H[t] * (1 - S[t])                                     (reset with S detached)
    backwards in t, gH[T] = 0, sg'(z) = alpha * sigmoid(alpha z) * (1 - sigmoid(alpha z)):
    (B1) gV[t] = gH[t+1] * (1 - k)                                   (grad reaching V[t] from step t+1)
    (B2) gH[t] = gS[t] * sg'(H[t] - vth) + gV[t] * (1 - S[t])
    (B3) gX[t] = gH[t] * k
    (B4) gk   += gH[t] * (X[t] - V[t-1])                            (PLIF only; per neuron, summed by torch)

``lif_multistep_cupy`` runs (F1-F3) in one kernel (one thread per neuron, the T loop inside) and (B1-B4) in another;
the forward saves only H (S and V[t-1] are recomputed from it). ``lif_multistep_manual_bptt`` is the same math as a
torch autograd.Function, which is how the kernel's equations are tested on machines without a GPU.

CuPy is an optional dependency (the ``gpu`` extra) and is imported only inside functions, so this module imports on
CPU-only machines; float16/bfloat16 inputs are computed in float32, float64 natively.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .errors import UserError
from .surrogate import SURROGATE_ALPHA

__all__ = ["lif_multistep_cupy", "lif_multistep_manual_bptt", "cupy_unavailable_reason", "CupyUnavailableError"]

BLOCK = 256  # threads per block; each thread owns one neuron for all T steps

# ``scalar_t`` and ``EXP`` are defined per dtype by ``kernel_source``. Compiled with --fmad=false so that (F1) is a
# separate multiply and add, rounded like torch's two elementwise ops, instead of a contracted FMA: the forward is
# then bit-identical to the torch reference in float32.
_KERNEL_BODY = r"""
__device__ __forceinline__ scalar_t heaviside_ge(scalar_t z) {   // (F2): fires on >=, like the reference
    return z >= (scalar_t)0 ? (scalar_t)1 : (scalar_t)0;
}

extern "C" __global__ void sdt_lif_fwd(
        const scalar_t* __restrict__ x,      // [T, N] input current X
        const scalar_t* __restrict__ k_ptr,  // [1] charge factor k, read on the device: no host sync for PLIF
        scalar_t* __restrict__ s_out,        // [T, N] spikes S
        scalar_t* __restrict__ h_out,        // [T, N] H saved for BPTT, or NULL when no gradient is needed
        const scalar_t vth, const long long N, const int T) {
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const scalar_t k = *k_ptr;
    const scalar_t one = 1;
    scalar_t v = 0;                                         // V[-1] = v_reset = 0
    for (int t = 0; t < T; ++t) {
        const long long i = (long long)t * N + n;
        const scalar_t h = v + (x[i] - v) * k;             // (F1)
        const scalar_t s = heaviside_ge(h - vth);          // (F2)
        v = h * (one - s);                                 // (F3)
        s_out[i] = s;
        if (h_out) h_out[i] = h;
    }
}

extern "C" __global__ void sdt_lif_bwd(
        const scalar_t* __restrict__ grad_s,  // [T, N] dL/dS
        const scalar_t* __restrict__ h_seq,   // [T, N] H from the forward
        const scalar_t* __restrict__ x,       // [T, N] X, read only for (B4)
        const scalar_t* __restrict__ k_ptr,   // [1] k
        scalar_t* __restrict__ grad_x,        // [T, N] dL/dX, or NULL
        scalar_t* __restrict__ gk_part,       // [N] per-neuron dL/dk partial sums (B4), or NULL (LIF)
        const scalar_t vth, const scalar_t alpha, const long long N, const int T) {
    const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N || T <= 0) return;
    const scalar_t k = *k_ptr;
    const scalar_t one = 1, zero = 0;
    const scalar_t one_minus_k = one - k;
    scalar_t gh_next = zero;                               // dL/dH[t+1]: nothing flows back into the last step
    scalar_t gk = zero;
    scalar_t h = h_seq[(long long)(T - 1) * N + n];
    for (int t = T - 1; t >= 0; --t) {
        const long long i = (long long)t * N + n;
        const scalar_t z = h - vth;
        const scalar_t s = heaviside_ge(z);                // (F2) recomputed from H
        const scalar_t sig = one / (one + EXP(-(alpha * z)));
        const scalar_t g_v = gh_next * one_minus_k;        // (B1)
        const scalar_t gh = grad_s[i] * alpha * sig * (one - sig) + g_v * (one - s);   // (B2)
        if (grad_x) grad_x[i] = gh * k;                    // (B3)
        // H[t-1] gives V[t-1] for (B4) and is the next iteration's H: one load serves both
        const scalar_t h_prev = t > 0 ? h_seq[i - N] : zero;
        if (gk_part) {
            const scalar_t v_prev = t > 0 ? h_prev * (one - heaviside_ge(h_prev - vth)) : zero;   // (F3) recomputed
            gk += gh * (x[i] - v_prev);                    // (B4)
        }
        gh_next = gh;
        h = h_prev;
    }
    if (gk_part) gk_part[n] = gk;
}
"""

KERNEL_NAMES = ("sdt_lif_fwd", "sdt_lif_bwd")
NVRTC_OPTIONS = ("--fmad=false",)
_CTYPES = {torch.float32: ("float", "expf"), torch.float64: ("double", "exp")}


class CupyUnavailableError(UserError, ImportError):
    """The cupy backend was selected but CuPy cannot be imported."""


def kernel_source(dtype: torch.dtype) -> str:
    """The exact CUDA source compiled for ``dtype`` (float32 or float64)."""
    ctype, exp = _CTYPES[dtype]
    return f"typedef {ctype} scalar_t;\n#define EXP {exp}\n" + _KERNEL_BODY


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise CupyUnavailableError(f"neuron_backend='cupy' needs CuPy ({e}): install the gpu extra: "
                                   "pip install -e '.[gpu]'") from e
    return cupy


def cupy_unavailable_reason() -> str | None:
    """None when the cupy backend can run here, else why not (never raises; imports cupy only if CUDA is present)."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    try:
        cp = _import_cupy()
    except CupyUnavailableError as e:
        return str(e)
    try:  # cupy raises (rather than returning 0) when the driver is missing or too old
        if cp.cuda.runtime.getDeviceCount() < 1:
            return "cupy sees no CUDA device"
    except Exception as e:  # noqa: BLE001 - any failure here means "unusable", reported verbatim
        return f"cupy cannot use CUDA: {type(e).__name__}: {e}"
    return None


_MODULES: dict[torch.dtype, Any] = {}  # dtype -> cupy.RawModule; cupy itself caches the binary per device


def _cupy_launch(name: str, dtype: torch.dtype, n_threads: int, args: tuple, device: torch.device) -> None:
    """Launch kernel ``name`` over ``n_threads`` threads on torch's current stream of ``device``."""
    cp = _import_cupy()
    module = _MODULES.get(dtype)
    if module is None:
        module = _MODULES[dtype] = cp.RawModule(code=kernel_source(dtype), options=NVRTC_OPTIONS)
    grid = (n_threads + BLOCK - 1) // BLOCK
    with cp.cuda.Device(device.index):
        # same stream as the surrounding torch ops, so ordering and the caching allocator's reuse stay correct
        with cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
            module.get_function(name)((grid,), (BLOCK,), args)


# Kernel launcher: (kernel name, dtype, threads, args, device). Replaceable so tests can run the same source on CPU.
Launcher = Callable[[str, torch.dtype, int, tuple, torch.device], None]
_LAUNCH: Launcher = _cupy_launch


def _ptr(t: torch.Tensor | None) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())  # 0 is the NULL the kernels test for


def _real(v: float, dtype: torch.dtype) -> np.floating:
    return np.float32(v) if dtype == torch.float32 else np.float64(v)


class _LIFKernel(torch.autograd.Function):
    """(F1-F3) forward and (B1-B4) backward through ``_LAUNCH``; x is [T, ...] contiguous, k a 1-element tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, v_threshold: float,  # type: ignore[override]
                alpha: float) -> torch.Tensor:
        need_x, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        T = x.shape[0]
        n = x.numel() // T if T else 0
        s = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device) if (need_x or need_k) else None
        if x.numel():
            _LAUNCH("sdt_lif_fwd", x.dtype, n,
                    (_ptr(x), _ptr(k), _ptr(s), _ptr(h), _real(v_threshold, x.dtype), np.int64(n), np.int32(T)),
                    x.device)
        ctx.save_for_backward(h, x if need_k else None, k)
        ctx.v_threshold, ctx.alpha, ctx.n = v_threshold, alpha, n
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: torch.Tensor):  # type: ignore[override]
        h, x, k = ctx.saved_tensors
        need_x, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_s = grad_s.to(h.dtype).contiguous()
        gx = torch.empty_like(h) if need_x else None
        gk_part = torch.empty(ctx.n, dtype=h.dtype, device=h.device) if need_k else None
        if h.numel():
            dt = h.dtype
            _LAUNCH("sdt_lif_bwd", dt, ctx.n,
                    (_ptr(grad_s), _ptr(h), _ptr(x), _ptr(k), _ptr(gx), _ptr(gk_part),
                     _real(ctx.v_threshold, dt), _real(ctx.alpha, dt), np.int64(ctx.n), np.int32(h.shape[0])),
                    h.device)
        gk = gk_part.sum().reshape(k.shape) if need_k else None
        return gx, gk, None, None


class _LIFManualBPTT(torch.autograd.Function):
    """The kernels' math in torch, line for line (same tags), for testing on any device."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: torch.Tensor, v_threshold: float,  # type: ignore[override]
                alpha: float) -> torch.Tensor:
        s_seq, h_seq = torch.empty_like(x), torch.empty_like(x)
        v = torch.zeros_like(x[0])                          # V[-1] = v_reset = 0
        for t in range(x.shape[0]):
            h = v + (x[t] - v) * k                          # (F1)
            s = (h - v_threshold >= 0).to(x.dtype)          # (F2)
            v = h * (1 - s)                                 # (F3)
            s_seq[t], h_seq[t] = s, h
        ctx.save_for_backward(h_seq, x if ctx.needs_input_grad[1] else None, k)
        ctx.v_threshold, ctx.alpha = v_threshold, alpha
        return s_seq

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_s: torch.Tensor):  # type: ignore[override]
        h_seq, x, k = ctx.saved_tensors
        vth, alpha = ctx.v_threshold, ctx.alpha
        T = h_seq.shape[0]
        grad_x = torch.empty_like(h_seq)
        zero = torch.zeros_like(h_seq[0])
        one_minus_k = 1 - k
        gh_next = zero                                      # dL/dH[t+1]: nothing flows back into the last step
        gk = zero
        h = h_seq[T - 1] if T else zero
        for t in range(T - 1, -1, -1):
            z = h - vth
            s = (z >= 0).to(h.dtype)                        # (F2) recomputed from H
            sig = torch.sigmoid(alpha * z)
            g_v = gh_next * one_minus_k                     # (B1)
            gh = grad_s[t] * alpha * sig * (1 - sig) + g_v * (1 - s)   # (B2)
            grad_x[t] = gh * k                              # (B3)
            h_prev = h_seq[t - 1] if t > 0 else zero
            if x is not None:
                v_prev = h_prev * (1 - (h_prev - vth >= 0).to(h.dtype)) if t > 0 else zero   # (F3) recomputed
                gk = gk + gh * (x[t] - v_prev)              # (B4)
            gh_next = gh
            h = h_prev
        gk_total = gk.sum().reshape(k.shape) if ctx.needs_input_grad[1] else None
        return (grad_x if ctx.needs_input_grad[0] else None), gk_total, None, None


def _prepare(x_seq: torch.Tensor, decay: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous compute-dtype input and a 0-dim k on its device (differentiable casts, so grads flow back)."""
    if not x_seq.is_floating_point():
        raise TypeError(f"LIF input must be floating point, got {x_seq.dtype}")
    if x_seq.dim() < 1:
        raise ValueError("LIF input must be [T, ...] with a leading time axis")
    dtype = x_seq.dtype if x_seq.dtype in _CTYPES else torch.float32  # half/bfloat16: float32 inside
    x = x_seq.to(dtype).contiguous()
    if isinstance(decay, torch.Tensor):
        if decay.numel() != 1:
            raise ValueError(f"decay must be a scalar (one per neuron module), got shape {tuple(decay.shape)}")
        k = decay.reshape(()).to(device=x.device, dtype=dtype)
    else:
        k = torch.full((), float(decay), dtype=dtype, device=x.device)  # a fill kernel, no host-to-device copy
    return x, k


def lif_multistep_cupy(x_seq: torch.Tensor, decay: torch.Tensor | float, v_threshold: float,
                       alpha: float = SURROGATE_ALPHA) -> torch.Tensor:
    """Spikes of a multi-step LIF over dim 0 of a CUDA ``x_seq``, by the fused CuPy kernels (forward and BPTT).

    ``decay`` is k = 1/tau (float) or sigmoid(w) (0-dim tensor; its gradient is computed). Output has x_seq's dtype.
    """
    if not x_seq.is_cuda:
        raise ValueError("lif_multistep_cupy needs a CUDA tensor; use sdt.neurons.lif_multistep_torch on CPU")
    _import_cupy()  # fail before building the graph, with the install hint
    x, k = _prepare(x_seq, decay)
    return _LIFKernel.apply(x, k, float(v_threshold), float(alpha)).to(x_seq.dtype)


def lif_multistep_manual_bptt(x_seq: torch.Tensor, decay: torch.Tensor | float, v_threshold: float,
                              alpha: float = SURROGATE_ALPHA) -> torch.Tensor:
    """Same forward, backward and dtype handling as :func:`lif_multistep_cupy`, in torch, on any device."""
    x, k = _prepare(x_seq, decay)
    return _LIFManualBPTT.apply(x, k, float(v_threshold), float(alpha)).to(x_seq.dtype)
