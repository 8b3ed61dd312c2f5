"""Fast vectorised reference executor of an :class:`~deploy.intnet.IntNet` in the aligned schedule.

The network has no recurrent synapses (sources always precede targets), so the aligned schedule can be evaluated
**population by population over all T steps at once**, exactly as the float model runs layer by layer with time folded
into the batch: every incoming synapse of a population is applied to its source's outputs of all T steps in one call,
then the neuron recurrence runs over T. The result equals the step-by-step schedule of ``deploy/intnet.py``
(``tests/test_executor.py`` checks it against a literal step-by-step loop).

Synapses (exact integer arithmetic; each produces its raw sum ``W @ x``, the exponent is applied per synapse):
    on spikes (0/1) with weights that fit int8 (mixed 8-bit weights are even, so ``w/2`` does): **int8 x int8 -> int32
    GEMMs** (``torch._int_mm``, exact), convs through an int8 im2col shared by the weight terms of one conv; neurons
    are stored channels-last internally so that no layout copies are needed. Otherwise (graded inputs, odd weights
    above 127, grouped convs) ``conv2d`` / matmul in float32 when ``max_row sum|w| * max|x| < 2**24`` (every partial
    sum is then an exactly representable integer), float64 below 2**53, else scipy int64. ``sparse`` synapses: scipy.
    Synapses with disjoint output rows from one source (per-channel exponent groups) are merged into one kernel.
Neurons:
    through ``deploy.fixed_point`` (``lif_step``, ``lifreset_step``) on int64 blocks of ~256k neurons (in parallel
    threads: NumPy releases the GIL); each block first sums its exact input ``a`` from the synapses' raw sums (shifted
    by their exponents, arithmetic right shift = Lava's floor) and the direct edges. Before a batch,
    :meth:`Executor.proven_safe` bounds every population's input for ANY input in the batch's range (per neuron,
    border-aware): where u can never wrap and v never clip, the per-step overflow checks are skipped (the counters
    read 0 because 0 is proven), and where in addition every term fits int32 and the decay is a shift (tau = 2), the
    same arithmetic runs on int32 (``_neurons(int32=True)``, relays likewise): half the memory traffic. Every other
    network (hand-made, damaged, overflowing) takes the checked int64 path.
Weights:
    must already be what Lava's fixed-point Dense/Sparse uses (clipped, low bits truncated, 8 weight bits); a weight
    Lava would change is refused with a ``ValueError`` rather than silently altered.

Usage::

    res = run_intnet(net, x_int, record={"MS_SPS_lif"})   # or Executor(net).run(...) to reuse the prepared weights
    res.logits_int            # [B, n_classes] final integrator v (integer units; decode with net.decode)
    res.outputs["MS_SPS_lif"] # [T, B, C, H, W] spikes (bool) or graded values (int64)
    res.overflow.assert_none()
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sps
import torch
import torch.nn.functional as F

from deploy.fixed_point import (ACT_SHIFT, DECAY_SHIFT, VTH_SHIFT, OverflowCounters,
                                effective_bias, lif_step, lifreset_step, quantize_dense_weights, weight_shift)
from deploy.intnet import IntNet, Population, Synapse
from deploy.semantics import (BINARY_KINDS, GRADED_KINDS, ExecResult, conv_out_shape, conv_params, conv_to_sparse,
                              overflow_proof, pool_params, population_input_shape, synapse_matrix)
from export.shapes import conv_out_hw

__all__ = ["Executor", "run_intnet", "int8_gemm_fast"]

F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32; partial sums stay below the bound
F64_EXACT = 1 << 53
# neurons per fixed-point call; measured on CIFAR 2-256 (executor / float model, noisy): 2**15 0.73x, 2**17 0.76x,
# 2**18 0.90x
BLOCK = 1 << 18

Record = None | Iterable[str] | Literal["all"]


def _weight_values(s: Synapse) -> np.ndarray:
    return np.asarray(s.weight[2] if s.kind == "sparse" else s.weight)


def _check_lava_weights(s: Synapse) -> None:
    """Refuse weights that Lava's fixed-point synapses would clip or truncate (the IntNet contract)."""
    w = _weight_values(s)
    if w.size == 0:
        return
    if not (np.issubdtype(w.dtype, np.integer) or np.all(w == np.round(w))):
        raise ValueError(f"synapse {s.name!r}: weights must be integers")
    wi = w.astype(np.int64)
    q = quantize_dense_weights(wi)  # sign mode inferred from all weights, as Lava does
    if not np.array_equal(q, wi):
        bad = int(np.flatnonzero((q != wi).ravel())[0])
        raise ValueError(f"synapse {s.name!r}: weight {wi.ravel()[bad]} is not representable in Lava's 8-bit "
                         f"fixed-point synapse (it would become {q.ravel()[bad]}); the quantiser must emit clipped, "
                         "truncated weights (mixed-sign weights even, in [-256, 254])")


# ------------------------------------------------------------------------------------------------------- plan

def _hwc_perm(shape: Sequence[int]) -> np.ndarray | None:
    """Internal neuron order of a (C,H,W) population: channels fastest (NHWC, what the int8 GEMMs read and write).
    ``internal[k] = chw_flat[perm[k]]``; None when the orders coincide."""
    if len(shape) != 3 or shape[1] * shape[2] == 1 or shape[0] == 1:
        return None
    c, h, w = shape
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()


def _to_internal(a: np.ndarray, perm: np.ndarray | None, axis: int = -1) -> np.ndarray:
    return a if perm is None else np.take(a, perm, axis=axis)


def _to_chw(a: np.ndarray, perm: np.ndarray | None, axis: int = -1) -> np.ndarray:
    return a if perm is None else np.take(a, np.argsort(perm), axis=axis)


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides. NumPy gives size-1 dimensions arbitrary strides (e.g. (1, 1) for a [1, N] view)
    and torch calls such tensors contiguous, but ``torch._int_mm`` then reads garbage: copy them."""
    want, acc = [], 1
    for size in reversed(t.shape):
        want.append(acc)
        acc *= size
    if tuple(reversed(want)) == tuple(t.stride()):
        return t
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


_INT8_GEMM: bool | None = None


def int8_gemm_fast() -> bool:
    """Whether ``torch._int_mm`` beats a float32 GEMM of the same size on this CPU (measured once per process).

    Without int8 dot-product instructions (e.g. AVX2-only CPUs) PyTorch's int8 GEMM falls back to a scalar loop:
    measured 60x slower than the float path on an AVX2 AMD EPYC. There the executor multiplies spikes in float32
    (exact: it is used only while every partial sum stays below 2**24, else float64). ``SDT_INT8_GEMM=on|off``
    forces the choice."""
    global _INT8_GEMM
    if _INT8_GEMM is None:
        forced = os.environ.get("SDT_INT8_GEMM", "auto").lower()
        if forced in ("on", "off"):
            _INT8_GEMM = forced == "on"
        else:
            import time

            a8 = torch.randint(0, 2, (256, 512), dtype=torch.int8)
            b8 = torch.randint(-128, 128, (512, 256), dtype=torch.int8)
            af, bf = a8.float(), b8.float()

            def best(fn: Callable[[], object]) -> float:
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                return min(times)

            _INT8_GEMM = best(lambda: torch._int_mm(a8, b8)) < 2.0 * best(lambda: af @ bf)
    return _INT8_GEMM


def _int8_weights(w: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(w8, extra_exp)`` with ``w == w8 * 2**extra_exp`` and w8 in int8, or None (mixed 8-bit weights are even)."""
    if w.size == 0 or (w.min() >= -128 and w.max() <= 127):
        return w.astype(np.int8), 0
    if np.all(w % 2 == 0) and w.min() >= -256 and w.max() <= 254:
        return (w // 2).astype(np.int8), 1
    return None


@dataclass
class _Syn:
    """One synapse, or several merged ones (same source, kind and geometry, disjoint output rows: the quantiser's
    per-channel-group exponents), run as one kernel; currents are ``shift(raw, exp)`` per output row."""

    syn: Synapse
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]  # shape of the currents (the target's input shape)
    row_exp: np.ndarray  # weight exponent per output row (conv: per output channel)
    w: np.ndarray | None = None  # conv [Cout, Cin/g, kh, kw] / dense [n_dst, n_src] int64 weights (CHW order)
    csr: sps.csr_matrix | None = None  # sparse kind: (n_dst, n_src) in CHW order
    conv: tuple | None = None
    names: tuple[str, ...] = ()
    # prepared kernels (internal neuron orders), built once by prepare()
    mode: str = ""  # 'int8' | 'float' | 'sparse'
    w8: torch.Tensor | None = None  # int8 GEMM matrix [K, n_out_rows]
    wf: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)
    csr_int: sps.csr_matrix | None = None  # internal orders, int64 (sparse kind and the exact fallback)
    exp_elem: np.ndarray | int = 0  # exponent per output element in internal order, or one int

    @property
    def out_size(self) -> int:
        return int(np.prod(self.dst_shape))

    def row_abs_sums(self) -> np.ndarray:
        if self.w is not None:
            return np.abs(self.w).reshape(self.w.shape[0], -1).sum(1)
        return np.asarray(abs(self.csr).sum(1)).ravel()

    def prepare(self, binary_source: bool) -> None:
        """Choose the kernel and lay weights out for the internal (channels-last) orders. Called once."""
        sums = self.row_abs_sums()
        self.raw_unit = int(sums.max()) if sums.size else 0  # bound of the raw accumulator per unit input
        src_perm, dst_perm = _hwc_perm(self.src_shape), _hwc_perm(self.dst_shape)
        extra = 0
        # int8 GEMM when the synapse only ever sees 0/1 (a spiking source, or binary message mode) and the weights fit
        int8_ok = (binary_source or not self.syn.graded) and int8_gemm_fast()
        if self.syn.kind == "sparse" or self.w is None:
            self.mode = "sparse"
        elif int8_ok:
            packed = _int8_weights(self.w) if (self.conv is None or self.conv[3] == 1) else None
            if packed is not None:
                self.mode = "int8"
                w8, extra = packed
                if self.conv is not None:  # rows of the im2col matrix: (ky, kx, cin), cin fastest
                    m = w8.transpose(2, 3, 1, 0).reshape(-1, w8.shape[0])
                else:
                    m = _to_internal(_to_internal(w8, src_perm, axis=1), dst_perm, axis=0).T
                self.w8 = _canonical(torch.from_numpy(np.ascontiguousarray(m)))
            else:
                self.mode = "float"
        else:
            self.mode = "float"
        if self.mode == "float" and self.conv is None:  # dense, float matmul in internal orders
            m = _to_internal(_to_internal(self.w, src_perm, axis=1), dst_perm, axis=0)
            self.w_dense_int = np.ascontiguousarray(m)
        # exponent per output element, internal order (conv rows are channels: channel fastest in NHWC)
        e = self.row_exp + extra
        if np.all(e == e[0]):
            self.exp_elem = int(e[0]) if e.size else 0
        elif self.conv is not None:  # internal order is channels-last: channel fastest (same as CHW if perm is None)
            reps = self.out_size // len(e)
            self.exp_elem = np.tile(e, reps) if dst_perm is not None else np.repeat(e, reps)
        else:
            self.exp_elem = _to_internal(e, dst_perm)
        if self.mode == "sparse":
            self.csr_int = self._internal_csr()

    def _internal_csr(self) -> sps.csr_matrix:
        if self.csr is not None:
            m = self.csr
        elif self.conv is not None:
            m = conv_to_sparse(self.w, self.src_shape, *self.conv)
        else:
            m = sps.csr_matrix(self.w)
        src_perm, dst_perm = _hwc_perm(self.src_shape), _hwc_perm(self.dst_shape)
        m = m.tocsr()
        if dst_perm is not None:
            m = m[dst_perm]
        if src_perm is not None:
            m = m[:, src_perm]
        return m.astype(np.int64).tocsr()

    def weight_float(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self.wf:
            self.wf[dtype] = torch.from_numpy(self.w if self.conv is not None else self.w_dense_int).to(dtype)
        return self.wf[dtype]


@dataclass
class _Pop:
    pop: Population
    in_shape: tuple[int, ...]
    syns: list[_Syn]
    edges: list[str]
    binary: bool
    perm: np.ndarray | None = None  # internal order of the outputs (and of ``a`` unless max-pool)
    bias: np.ndarray | None = None  # internal order


def _plan(net: IntNet) -> list[_Pop]:
    net.validate()
    inputs = [p for p in net.populations if p.kind == "input"]
    if len(inputs) != 1:
        raise ValueError(f"the executor needs exactly one input population, found {len(inputs)}")
    plan: list[_Pop] = []
    for p in net.populations:
        in_shape = population_input_shape(net, p)
        n_in = int(np.prod(in_shape))
        if p.kind == "input" and (net.synapses_into(p.name) or net.edges_into(p.name)):
            raise ValueError(f"input population {p.name!r} cannot receive synapses or edges")
        if p.bias_mant is not None and p.kind in GRADED_KINDS and np.any(p.bias_mant):
            raise ValueError(f"{p.kind} population {p.name!r} has no bias in Lava; fold it into its consumers")
        syns = []
        for s in net.synapses_into(p.name):
            _check_lava_weights(s)
            src = net.population(s.src)
            if s.kind == "conv":
                out_shape = conv_out_shape(s, tuple(src.shape))
                w = np.asarray(s.weight, dtype=np.int64)
                item = _Syn(s, tuple(src.shape), out_shape, np.full(w.shape[0], s.weight_exp), w=w,
                            conv=conv_params(s), names=(s.name,))
            elif s.kind == "dense":
                w = np.asarray(s.weight, dtype=np.int64)
                if w.ndim != 2 or w.shape[1] != src.size:
                    raise ValueError(f"dense synapse {s.name!r}: weight {w.shape} does not take {src.size} inputs")
                item = _Syn(s, tuple(src.shape), in_shape if w.shape[0] == n_in else (w.shape[0],),
                            np.full(w.shape[0], s.weight_exp), w=w, names=(s.name,))
            elif s.kind == "sparse":
                m = synapse_matrix(net, s)
                if m.shape[1] != src.size:
                    raise ValueError(f"sparse synapse {s.name!r}: shape {m.shape} does not take {src.size} inputs")
                item = _Syn(s, tuple(src.shape), in_shape if m.shape[0] == n_in else (m.shape[0],),
                            np.full(m.shape[0], s.weight_exp), csr=m, names=(s.name,))
            else:
                raise ValueError(f"synapse {s.name!r}: unknown kind {s.kind!r}")
            if item.out_size != n_in:
                raise ValueError(f"synapse {s.name!r} delivers {item.out_size} currents but {p.name!r} takes {n_in}")
            if s.kind == "conv" and tuple(item.dst_shape) != tuple(in_shape):
                raise ValueError(f"conv synapse {s.name!r} makes {item.dst_shape}, {p.name!r} takes {in_shape}")
            syns.append(item)
        for src in net.edges_into(p.name):
            if tuple(net.population(src).shape) != tuple(in_shape) and net.population(src).size != n_in:
                raise ValueError(f"edge {src!r}->{p.name!r}: {net.population(src).size} values into {n_in} inputs")
            if tuple(net.population(src).shape) != tuple(in_shape) and \
                    (_hwc_perm(net.population(src).shape) is not None or _hwc_perm(in_shape) is not None):
                raise ValueError(f"edge {src!r}->{p.name!r}: shapes {net.population(src).shape} and {in_shape} differ")
        if p.kind == "maxpool":
            k, st, pa = pool_params(p)
            exp = (in_shape[0], *conv_out_hw(in_shape[1:], k, st, pa))
            if tuple(p.shape) != exp:
                raise ValueError(f"maxpool {p.name!r}: shape {tuple(p.shape)} but pooling {in_shape} gives {exp}")
        syns = _merge(syns)
        for s in syns:
            s.prepare(net.population(s.syn.src).kind in BINARY_KINDS)
        perm = _hwc_perm(p.shape)
        bias = None
        if p.kind in BINARY_KINDS:
            b = np.zeros(p.size, np.int64) if p.bias_mant is None else np.asarray(p.bias_mant, np.int64)
            bias = _to_internal(b, perm)
        plan.append(_Pop(p, in_shape, syns, list(net.edges_into(p.name)), p.kind in BINARY_KINDS, perm, bias))
    return plan


def _merge(syns: list[_Syn]) -> list[_Syn]:
    """Merge conv / dense synapses from one source with the same geometry whose non-zero output rows are disjoint
    (exact: each row then gets exactly its own synapse's sum and exponent)."""
    out: list[_Syn] = []
    buckets: dict[tuple, list[list]] = {}
    for s in syns:
        if s.w is None:
            out.append(s)
            continue
        key = (s.syn.src, s.syn.kind, s.syn.graded, s.conv, s.w.shape)
        rows = np.abs(s.w).reshape(s.w.shape[0], -1).sum(1) > 0
        for group in buckets.setdefault(key, []):
            merged, used = group
            if not np.any(used & rows):
                merged.w = merged.w + s.w
                merged.row_exp = np.where(rows, s.row_exp, merged.row_exp)
                merged.names = merged.names + s.names
                group[1] = used | rows
                break
        else:
            buckets[key].append([_Syn(s.syn, s.src_shape, s.dst_shape, s.row_exp.copy(), w=s.w.copy(), conv=s.conv,
                                      names=s.names), rows])
    for groups in buckets.values():
        out.extend(m for m, _ in groups)
    return out


# -------------------------------------------------------------------------------------------------- execution

# A term of a population's input: raw accumulator [S, B, n] (S = T, or 1 for a static one; internal order) and the
# exponent it must be shifted by (one int, or one per element).
_Term = tuple[np.ndarray, "np.ndarray | int"]


def _shift_inplace(x: np.ndarray, e: np.ndarray | int) -> None:
    """:func:`deploy.fixed_point.weight_shift` on a fresh int64 array, in place (one pass where every exponent has the same sign)."""
    if isinstance(e, (int, np.integer)):
        if e > 0:
            x <<= e
        elif e < 0:
            x >>= -e
    elif e.min(initial=0) >= 0:
        np.left_shift(x, e, out=x)
    elif e.max(initial=0) <= 0:
        np.right_shift(x, -e, out=x)
    else:
        x[...] = weight_shift(x, e)


class Executor:
    """A prepared IntNet (weights checked, laid out and converted once); :meth:`run` executes a batch.

    Internally every (C,H,W) population is stored channels-last (so 1x1 and 3x3 convs on spikes are int8 GEMMs with
    exact int32 accumulation, no layout copies); results are returned in (C,H,W) order.
    ``threads``: worker threads for the neuron updates (default: ``torch.get_num_threads()``).
    """

    IM2COL_BYTES = 1 << 25  # chunk the int8 im2col buffer to ~32 MB

    def __init__(self, net: IntNet, threads: int | None = None) -> None:
        self.net = net
        self.plan = _plan(net)
        self.threads = max(1, threads or torch.get_num_threads() or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._safe: dict[tuple[int, int], frozenset[str]] = {}  # input range -> populations proven overflow-free
        self._fast32: dict[tuple[int, int], frozenset[str]] = {}  # LIFs and relays that may run in int32
        # last consumer of every population, so outputs nobody needs any more are freed early
        self._last_use: dict[str, int] = {}
        for i, item in enumerate(self.plan):
            for s in item.syns:
                self._last_use[s.syn.src] = i
            for e in item.edges:
                self._last_use[e] = i

    def proven_safe(self, input_max: int, input_min: int = 0) -> frozenset[str]:
        """Populations whose u can never wrap and v never clip for ANY input in ``input_min..input_max``: per-neuron
        input ranges through Lava's equations (:func:`deploy.semantics.overflow_proof`). Their per-step overflow checks are skipped: the counters read 0 because 0 is proven, not because nobody
        looked. The quantiser's scales satisfy these bounds; hand-made or damaged networks are checked step by step."""
        key = (min(int(input_min), 0), int(input_max))
        got = self._safe.get(key)
        if got is not None:
            return got
        proof = overflow_proof(self.net, key)
        safe, fast = proof.safe, proof.int32
        self._safe[key] = safe
        self._fast32[key] = fast
        return self._safe[key]

    def _proof_range(self, x: np.ndarray) -> tuple[int, int]:
        """The input range the overflow proof is made for: the encoding's declared range when the batch lies inside
        it (one proof for the whole data set, computed once), else the batch's own range (negative values included)."""
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        enc = self.net.encoding if hasattr(self.net.encoding, "get") else {}
        e_lo, e_hi = enc.get("min"), enc.get("max")
        if isinstance(e_lo, int) and isinstance(e_hi, int) and e_lo <= lo and hi <= e_hi:
            return e_lo, e_hi
        return lo, hi

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------------------------------------------- input

    def _frames(self, x_int: np.ndarray | torch.Tensor, item: _Pop) -> np.ndarray:
        """Input as int64 ``[T or 1, B, n]`` in internal order (one frame when static: repeated T times)."""
        p = item.pop
        x = x_int.detach().cpu().numpy() if isinstance(x_int, torch.Tensor) else np.asarray(x_int)
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
            if not np.all(x == np.round(x)):
                raise ValueError("x_int must hold integers (encode the input with net.encoding first)")
        x = x.astype(np.int64)
        shape, T = tuple(p.shape), self.net.T
        mode = self.net.input_encoding.mode
        if tuple(x.shape[1:]) == shape and mode != "frames":
            out = x.reshape(1, x.shape[0], -1)
        elif x.ndim == len(shape) + 2 and tuple(x.shape[2:]) == shape and x.shape[1] == T and mode != "repeat":
            out = x.reshape(x.shape[0], T, -1).transpose(1, 0, 2)
        else:
            raise ValueError(f"input must be [B, {', '.join(map(str, shape))}] (static) or [B, {T}, ...] (frames) "
                             f"as net.encoding says ({mode or 'unspecified'}); got {tuple(x.shape)}")
        return np.ascontiguousarray(_to_internal(out, item.perm))

    # ------------------------------------------------------------------------------------------------- synapses

    def _terms(self, item: _Pop, outs: dict[str, np.ndarray], out_max: dict[str, int]) -> list[_Term]:
        """Every incoming synapse's raw accumulator with its exponent; int8 convs that read the same source with the
        same geometry (the quantiser's weight terms) share one im2col."""
        raws: dict[int, np.ndarray] = {}
        groups: dict[tuple, list[_Syn]] = {}
        for s in item.syns:
            x = outs[s.syn.src]
            if s.mode == "int8" and s.conv is not None and x.dtype == np.int8 \
                    and s.raw_unit * max(out_max[s.syn.src], 1) < (1 << 31):
                groups.setdefault((s.syn.src, s.conv, s.w.shape[2:], s.src_shape), []).append(s)
            else:
                raws[id(s)] = self._raw(s, x, out_max[s.syn.src])
        for (src, *_), group in groups.items():
            x = outs[src]
            for s, raw in zip(group, self._int8_convs(group, x)):
                raws[id(s)] = raw.reshape(x.shape[0], x.shape[1], -1)
        return [(raws[id(s)], s.exp_elem) for s in item.syns]

    def _raw(self, s: _Syn, x: np.ndarray, xmax: int) -> np.ndarray:
        """Raw accumulator ``W @ x`` (before the exponent) ``[S, B, n_dst]`` in internal order, exact.

        ``x``: the source's outputs ``[S, B, n_src]`` (int8 spikes, or int64 graded values), internal order."""
        syn = s.syn
        S, B = x.shape[:2]
        if not syn.graded and x.dtype != np.int8:  # binary message mode: any non-zero value is a spike
            x = (x != 0).astype(np.int8)
            xmax = min(xmax, 1)
        bound = s.raw_unit * max(xmax, 1)
        if s.mode == "int8" and bound < (1 << 31) and x.dtype == np.int8:
            if s.conv is not None:
                return self._int8_convs([s], x)[0].reshape(S, B, -1)
            xt = _canonical(torch.from_numpy(x).reshape(S * B, -1))
            return torch._int_mm(xt, s.w8).numpy().reshape(S, B, -1)
        if s.mode in ("int8", "float") and bound < F64_EXACT:
            return self._float(s, x, torch.float32 if bound < F32_EXACT else torch.float64).reshape(S, B, -1)
        if s.csr_int is None:
            s.csr_int = s._internal_csr()
        xm = x.reshape(S * B, -1).astype(np.int64)
        return np.ascontiguousarray((s.csr_int @ xm.T).T).reshape(S, B, -1)

    def _int8_convs(self, group: list[_Syn], x: np.ndarray) -> list[np.ndarray]:
        """int8 x int8 -> int32 GEMMs (exact) of convs sharing source and geometry, on channels-last spikes: one
        im2col (a strided view copied in chunks of ~32 MB), one GEMM per synapse."""
        s0 = group[0]
        SB = x.shape[0] * x.shape[1]
        (sh, sw), (ph, pw), (dh, dw), _g = s0.conv
        cin, h, w = s0.src_shape
        _, ho, wo = s0.dst_shape
        kh, kw = s0.w.shape[2:]
        img = torch.from_numpy(x).view(SB, h, w, cin)
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            cols = _canonical(img.reshape(-1, cin))
            return [torch._int_mm(cols, s.w8).numpy() for s in group]
        outs = [torch.empty(SB * ho * wo, s.w8.shape[1], dtype=torch.int32) for s in group]
        xp = F.pad(img, (0, 0, pw, pw, ph, ph)) if ph or pw else img
        st = xp.stride()
        step = max(1, self.IM2COL_BYTES // max(1, ho * wo * kh * kw * cin))
        for b0 in range(0, SB, step):
            b1 = min(SB, b0 + step)
            # patches [b, ho, wo, kh, kw, cin] as a view of the padded grid; reshape copies them row-major
            view = xp[b0:b1].as_strided((b1 - b0, ho, wo, kh, kw, cin),
                                        (st[0], st[1] * sh, st[2] * sw, st[1] * dh, st[2] * dw, st[3]),
                                        xp[b0:b1].storage_offset())
            cols = _canonical(view.reshape(-1, kh * kw * cin))
            for s, out in zip(group, outs):
                torch._int_mm(cols, s.w8, out=out[b0 * ho * wo:b1 * ho * wo])
        return [o.numpy() for o in outs]

    def _float(self, s: _Syn, x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
        """Exact float GEMM / conv (every partial sum is an integer below the dtype's exact range)."""
        SB = x.shape[0] * x.shape[1]
        xt = torch.from_numpy(x).reshape(SB, -1)
        if s.conv is None:
            return torch.matmul(xt.to(dtype), s.weight_float(dtype).T).numpy()
        st, pa, di, g = s.conv
        cin, h, w = s.src_shape
        img = xt.view(SB, h, w, cin).permute(0, 3, 1, 2).to(dtype)  # NCHW view of channels-last memory
        out = F.conv2d(img, s.weight_float(dtype), None, st, pa, di, g)
        return out.permute(0, 2, 3, 1).contiguous().numpy()  # no copy when the conv kept channels-last

    # -------------------------------------------------------------------------------------------------- neurons

    def _blocks(self, B: int, n: int) -> list[tuple[slice, slice]]:
        """(batch slice, neuron slice) blocks of about BLOCK elements: a few MB per int64 array, so that the ~15 array
        passes of one fixed-point step mostly stay in cache, while each NumPy call is large enough for two threads
        not to queue on the GIL."""
        if n >= BLOCK:
            js = [slice(j, min(j + BLOCK, n)) for j in range(0, n, BLOCK)]
            return [(slice(b, b + 1), j) for b in range(B) for j in js]
        rows = max(1, BLOCK // n)
        return [(slice(b, min(b + rows, B)), slice(0, n)) for b in range(0, B, rows)]

    def _map(self, fn, items: list) -> list:
        if self._pool is None or len(items) == 1:
            return [fn(i) for i in items]
        return list(self._pool.map(fn, items))

    @staticmethod
    def _block_input(terms: list[_Term], edges: list[np.ndarray], ts: slice | int, bs: slice, js: slice,
                     dtype: type = np.int64) -> np.ndarray:
        """Exact int64 input ``a`` of one block: every synapse's raw sum shifted by its exponent, plus the edges."""
        a = None
        for raw, e in terms:
            r = raw[ts if raw.shape[0] > 1 else slice(0, 1) if isinstance(ts, slice) else 0, bs, js]
            r = r.astype(dtype)  # a fresh copy: shifted and summed in place
            _shift_inplace(r, e if isinstance(e, (int, np.integer)) else e[js])
            if a is None or a.shape != np.broadcast_shapes(a.shape, r.shape):
                a = r if a is None else a + r
            else:
                a += r
        for ed in edges:
            r = ed[ts if ed.shape[0] > 1 else slice(0, 1) if isinstance(ts, slice) else 0, bs, js]
            if a is None or a.shape != np.broadcast_shapes(a.shape, r.shape):
                a = r.astype(dtype) if a is None else a + r
            else:
                a += r
        return a

    def _neurons(self, item: _Pop, terms: list[_Term], edges: list[np.ndarray], T: int, B: int, check: bool = True,
                 int32: bool = False) -> tuple[np.ndarray, np.ndarray | None, OverflowCounters, np.ndarray]:
        """Sum the inputs and run the population's neurons over T steps, block by block in parallel threads.

        Returns int8 spikes ``[T, B, n]``, the final v ``[B, n]`` (lif / integrator), the overflow counts and the spike
        count per sample (all in internal order)."""
        p = item.pop
        n = p.size
        bias = item.bias
        if not terms and not edges:
            terms = [(np.zeros((1, B, n), np.int64), 0)]
        # a memoryless gate whose every input is the same at each step (e.g. an always-on bias source) is static
        static = p.kind == "gate" and all(t[0].shape[0] == 1 for t in terms) and all(e.shape[0] == 1 for e in edges)
        spikes = np.empty((1 if static else T, B, n), dtype=np.int8)
        final_v = np.empty((B, n), dtype=np.int64) if p.kind != "gate" else None
        zero = np.zeros(1, np.int64)

        if p.kind == "gate":  # memoryless (LIFReset, reset_interval=1): all steps in one call
            def run(block: tuple[slice, slice]) -> tuple:
                bs, js = block
                c = OverflowCounters()
                a = self._block_input(terms, edges, slice(None), bs, js)
                _, _, s = lifreset_step(zero, zero, a, 1, 1, 0, p.du, p.dv, p.vth, bias[js], p.bias_exp, counters=c,
                                        check=check)
                spikes[:, bs, js] = s  # (a static gate keeps one frame)
                cnt = np.count_nonzero(s, axis=2).sum(0) * (T // s.shape[0])
                return c, bs, cnt
        elif int32:  # a LIF proven overflow-free with a shift decay: lif_step's arithmetic on int32 (half the traffic)
            k = DECAY_SHIFT - p.dv.bit_length() + 1  # decay = x * 2**-k, truncated toward zero
            th = p.vth << VTH_SHIFT
            b32 = effective_bias(bias, p.bias_exp).astype(np.int32)

            def run(block: tuple[slice, slice]) -> tuple:
                bs, js = block
                v = None
                cnt = 0
                for t in range(T):
                    a = self._block_input(terms, edges, t, bs, js, np.int32)
                    a <<= ACT_SHIFT  # u = a << 6 (du = 4095: no current memory)
                    if v is None:  # v starts at 0, which decays to 0
                        v = a
                    else:
                        d = v >> 31
                        d &= (1 << k) - 1
                        v += d
                        v >>= k
                        v += a
                    v += b32[js]
                    s = v > th  # strict
                    np.putmask(v, s, 0)
                    spikes[t, bs, js] = s
                    cnt = cnt + np.count_nonzero(s, axis=1)
                final_v[bs, js] = v
                return OverflowCounters(), bs, cnt
        else:  # lif, integrator: the recurrence over T
            def run(block: tuple[slice, slice]) -> tuple:
                bs, js = block
                c = OverflowCounters()
                u = v = zero
                cnt = 0
                for t in range(T):
                    a = self._block_input(terms, edges, t, bs, js)
                    u, v, s = lif_step(u, v, a, p.du, p.dv, p.vth, bias[js], p.bias_exp, counters=c, check=check)
                    spikes[t, bs, js] = s
                    cnt = cnt + np.count_nonzero(s, axis=1)
                final_v[bs, js] = v
                return c, bs, cnt

        counters = OverflowCounters()
        counts = np.zeros(B, np.int64)
        for c, bs, cnt in self._map(run, self._blocks(B, n)):
            counters.u_wraps += c.u_wraps
            counters.v_clips += c.v_clips
            counts[bs] += cnt
        return spikes, final_v, counters, counts

    def _relay(self, item: _Pop, terms: list[_Term], edges: list[np.ndarray], B: int, int32: bool = False
               ) -> np.ndarray:
        """A graded relay: exact int64 currents (internal order of its input grid), max-pooled with -inf padding for a
        ``maxpool`` relay, passed on as they are for a ``relay``. ``int32``: every term and sum is proven to fit."""
        S = max([t[0].shape[0] for t in terms] + [e.shape[0] for e in edges] + [1])
        dtype = np.int32 if int32 else np.int64
        a = np.zeros((S, B, int(np.prod(item.in_shape))), dtype)
        for raw, e in terms:
            r = raw.astype(dtype)
            _shift_inplace(r, e)
            a += r
        for ed in edges:
            a += ed
        if item.pop.kind == "relay":
            return a
        k, st, pa = pool_params(item.pop)
        c, h, w = item.in_shape
        nchw = torch.from_numpy(a).view(S * B, h, w, c).permute(0, 3, 1, 2)  # channels-last memory
        pooled = F.max_pool2d(nchw, k, st, pa)
        return np.ascontiguousarray(pooled.permute(0, 2, 3, 1).numpy()).reshape(S, B, -1)

    # ------------------------------------------------------------------------------------------------------ run

    def run(self, x_int: np.ndarray | torch.Tensor, record: Record = None,
            on_record: Callable[[str, np.ndarray, bool], None] | None = None) -> ExecResult:
        """Execute a batch. ``x_int``: integer input ``[B, *shape]`` (static, repeated T times) or ``[B, T, *shape]``.

        ``record``: population names whose per-step outputs to return, ``'all'``, or None. With ``on_record``, each
        recorded output is passed to it as it is computed instead, in the executor's own layout and without a copy:
        ``on_record(name, a, channels_last)`` with ``a`` ``[T, B, n]`` (int8 spikes or int64 values; do not modify) whose
        last axis is the population's flat shape, channels fastest (HWC) where ``channels_last``, else in its order.
        """
        names = [i.pop.name for i in self.plan]
        rec = set(names) if record == "all" else set(record or ())
        unknown = rec - set(names)
        if unknown:
            raise KeyError(f"unknown population(s) to record: {sorted(unknown)}")
        with torch.inference_mode():
            return self._run(x_int, rec, self.net.T, on_record)

    def _run(self, x_int: np.ndarray | torch.Tensor, rec: set[str], T: int,
             on_record: Callable[[str, np.ndarray, bool], None] | None = None) -> ExecResult:
        outs: dict[str, np.ndarray] = {}  # name -> [T or 1, B, n] internal order; int8 spikes or int64 values
        out_max: dict[str, int] = {}
        final_v: dict[str, np.ndarray] = {}
        outputs: dict[str, np.ndarray] = {}
        counts: dict[str, np.ndarray] = {}
        by_pop: dict[str, OverflowCounters] = {}
        total = OverflowCounters()
        B = 0
        safe: frozenset[str] = frozenset()
        fast32: frozenset[str] = frozenset()
        for i, item in enumerate(self.plan):
            p = item.pop
            if p.kind == "input":
                out = self._frames(x_int, item)
                B = out.shape[1]
                out_max[p.name] = int(np.abs(out).max()) if out.size else 0
                x_lo, x_hi = self._proof_range(out)
                safe = self.proven_safe(x_hi, x_lo)
                fast32 = self._fast32.get((min(x_lo, 0), x_hi), frozenset())
            else:
                terms = self._terms(item, outs, out_max)
                edges = [outs[e] for e in item.edges]
                if p.kind in ("maxpool", "relay"):
                    out = self._relay(item, terms, edges, B, p.name in fast32)
                    out_max[p.name] = int(np.abs(out).max()) if out.size else 0
                else:
                    out, v, c, counts[p.name] = self._neurons(item, terms, edges, T, B, p.name not in safe,
                                                              p.name in fast32 and p.name in safe)
                    by_pop[p.name] = c
                    total.u_wraps += c.u_wraps
                    total.v_clips += c.v_clips
                    if p.kind == "integrator":
                        final_v[p.name] = _to_chw(v, item.perm).reshape(B, *p.shape)
                    out_max[p.name] = 1
            outs[p.name] = out
            if not item.binary:  # non-zero messages per sample; a static population repeats its frame T times
                counts[p.name] = (np.count_nonzero(out, axis=2).sum(0) * (T // out.shape[0])).astype(np.int64)
            if p.name in rec and on_record is not None:
                on_record(p.name, out if out.shape[0] == T else np.broadcast_to(out, (T, *out.shape[1:])),
                          item.perm is not None)
            elif p.name in rec:
                full = np.broadcast_to(out, (T, *out.shape[1:]))
                full = _to_chw(full, item.perm)
                outputs[p.name] = (full.astype(bool) if item.binary else full.astype(np.int64)).reshape(T, B, *p.shape)
            for src in [s.syn.src for s in item.syns] + item.edges:  # free what no later population reads
                if self._last_use.get(src) == i:
                    outs.pop(src, None)
            if p.name not in self._last_use:
                outs.pop(p.name, None)
        return ExecResult(T, final_v, outputs, counts, total, by_pop)


def run_intnet(net: IntNet, x_int: np.ndarray | torch.Tensor, record: Record = None,
               threads: int | None = None) -> ExecResult:
    """Execute ``net`` on a batch in the aligned schedule (see :class:`Executor`; this prepares it once per call)."""
    with Executor(net, threads=threads) as ex:
        return ex.run(x_int, record)
