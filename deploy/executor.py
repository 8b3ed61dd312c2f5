"""Fast vectorised reference executor of an :class:`~deploy.intnet.IntNet` in the aligned schedule.

The network has no recurrent synapses (sources always precede targets), so the aligned schedule can be evaluated
**population by population over all T steps at once**, exactly as the float model runs layer by layer with time folded
into the batch: every incoming synapse of a population is applied to its source's outputs of all T steps in one call,
then the neuron recurrence runs over T. The result equals the step-by-step schedule of ``deploy/intnet.py``.

Synapses (exact integer arithmetic):
    ``conv`` through ``torch.nn.functional.conv2d``, ``dense`` through a matmul, ``sparse`` through scipy. They run in
    float32 when a per-synapse bound ``max_dst sum|w| * max|x| * 2**weight_exp`` (summed over everything that enters
    the population) is below 2**24, so every partial sum is an exactly representable integer; else float64 (< 2**53),
    else int64 (scipy / numpy). A source that is the same at every step (a static input) is convolved once, not T times.
Neurons:
    through ``deploy.fixed_point`` (``lif_step``, ``lifreset_step``) on int64 arrays, split over the batch into one chunk
    per thread (NumPy releases the GIL, so the recurrence uses every core without per-neuron Python loops).
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

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import numpy as np
import scipy.sparse as sps
import torch
import torch.nn.functional as F

from deploy.fixed_point import OverflowCounters, lif_step, lifreset_step, quantize_dense_weights
from deploy.intnet import IntNet, Population, Synapse

__all__ = ["ExecResult", "Executor", "run_intnet", "conv_to_sparse", "synapse_matrix", "population_input_shape",
           "current_bounds", "BINARY_KINDS", "GRADED_KINDS"]

BINARY_KINDS = frozenset({"lif", "gate", "integrator"})  # output 0/1 spikes
GRADED_KINDS = frozenset({"input", "maxpool"})  # output integers
F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32; partial sums stay below the bound
F64_EXACT = 1 << 53

Record = None | Iterable[str] | Literal["all"]


# ------------------------------------------------------------------------------------------------------ shapes

def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _conv_params(s: Synapse) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """stride, padding, dilation, groups of a conv synapse (defaults 1, 0, 1, 1)."""
    at = s.attrs
    return (_pair(at.get("stride", 1)), _pair(at.get("padding", 0)), _pair(at.get("dilation", 1)),
            int(at.get("groups", 1)))


def _conv_out_shape(s: Synapse, src_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(src_shape) != 3:
        raise ValueError(f"conv synapse {s.name!r}: source shape {src_shape} is not (C,H,W)")
    w = np.asarray(s.weight)
    (sh, sw), (ph, pw), (dh, dw), g = _conv_params(s)
    cout, cin_g, kh, kw = w.shape
    if cin_g * g != src_shape[0] or cout % g:
        raise ValueError(f"conv synapse {s.name!r}: weight {w.shape} with groups={g} does not fit input {src_shape}")
    ho = (src_shape[1] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (src_shape[2] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return cout, ho, wo


def _pool_params(p: Population) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    k = _pair(p.attrs["kernel"] if "kernel" in p.attrs else p.attrs["kernel_size"])
    s = _pair(p.attrs.get("stride", k))
    return k, s, _pair(p.attrs.get("padding", 0))


def population_input_shape(net: IntNet, p: Population) -> tuple[int, ...]:
    """Shape of the summed input ``a`` of ``p``: ``p.shape``, except for a max-pool relay, whose ``a`` is the pool's
    input (``attrs['in_shape']``, else the output shape of an incoming conv synapse or direct edge source)."""
    if p.kind != "maxpool":
        return tuple(p.shape)
    if "in_shape" in p.attrs:
        return tuple(int(v) for v in p.attrs["in_shape"])
    for s in net.synapses_into(p.name):
        if s.kind == "conv":
            return _conv_out_shape(s, tuple(net.population(s.src).shape))
    for src in net.edges_into(p.name):
        return tuple(net.population(src).shape)
    raise ValueError(f"maxpool population {p.name!r}: give attrs['in_shape'] (no conv synapse or edge to infer it)")


# -------------------------------------------------------------------------------------------- weight matrices

def conv_to_sparse(weight: np.ndarray, in_shape: tuple[int, int, int], stride: int | Sequence[int] = 1,
                   padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                   groups: int = 1) -> sps.csr_matrix:
    """The conv as a ``(n_out, n_in)`` CSR matrix over C-order flattened (C,H,W) tensors (PyTorch cross-correlation,
    zero padding); zero weights are dropped."""
    w = np.asarray(weight, dtype=np.int64)
    cout, cin_g, kh, kw = w.shape
    cin, hi, wi = in_shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho = (hi + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wi + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    co, ci, ky, kx = (a.ravel() for a in np.nonzero(w))
    vals = w[co, ci, ky, kx]
    cin_abs = (co // (cout // groups)) * cin_g + ci  # input channel of each kernel entry
    oy, ox = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")
    oy, ox = oy.ravel(), ox.ravel()
    iy = oy[None, :] * sh - ph + ky[:, None] * dh  # [entries, positions]
    ix = ox[None, :] * sw - pw + kx[:, None] * dw
    ok = (iy >= 0) & (iy < hi) & (ix >= 0) & (ix < wi)
    rows = (co[:, None] * ho + oy[None, :]) * wo + ox[None, :]
    cols = (cin_abs[:, None] * hi + iy) * wi + ix
    m = sps.coo_matrix((np.broadcast_to(vals[:, None], ok.shape)[ok], (rows[ok], cols[ok])),
                       shape=(cout * ho * wo, cin * hi * wi))
    return m.tocsr()


def synapse_matrix(net: IntNet, s: Synapse) -> sps.csr_matrix:
    """Any synapse as an int64 ``(n_dst, n_src)`` CSR matrix (what Lava's Sparse process receives)."""
    src = net.population(s.src)
    if s.kind == "conv":
        st, pa, di, g = _conv_params(s)
        return conv_to_sparse(np.asarray(s.weight), tuple(src.shape), st, pa, di, g)
    if s.kind == "dense":
        return sps.csr_matrix(np.asarray(s.weight, dtype=np.int64))
    if s.kind == "sparse":
        rows, cols, vals = s.weight
        m = sps.coo_matrix((np.asarray(vals, np.int64), (np.asarray(rows), np.asarray(cols))),
                           shape=tuple(int(v) for v in s.attrs["shape"])).tocsr()
        m.sum_duplicates()
        m.eliminate_zeros()
        return m
    raise ValueError(f"synapse {s.name!r}: unknown kind {s.kind!r}")


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

@dataclass
class _Syn:
    syn: Synapse
    src_shape: tuple[int, ...]
    out_size: int
    colsum: int  # max over destination neurons of sum |w| (before the exponent)
    w: np.ndarray | None = None  # conv / dense int64 weights
    csr: sps.csr_matrix | None = None  # sparse kind (and the int64 fallback of any kind)
    conv: tuple | None = None
    torch_w: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def kind_is_sparse(self) -> bool:
        return self.syn.kind == "sparse"

    def weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self.torch_w:
            self.torch_w[dtype] = torch.from_numpy(self.w).to(dtype)
        return self.torch_w[dtype]


@dataclass
class _Pop:
    pop: Population
    in_shape: tuple[int, ...]
    syns: list[_Syn]
    edges: list[str]
    binary: bool


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
        if p.bias_mant is not None and p.kind in ("maxpool", "input") and np.any(p.bias_mant):
            raise ValueError(f"{p.kind} population {p.name!r} has no bias in Lava; fold it into its consumers")
        syns = []
        for s in net.synapses_into(p.name):
            _check_lava_weights(s)
            src = net.population(s.src)
            if s.kind == "conv":
                out_shape = _conv_out_shape(s, tuple(src.shape))
                w = np.asarray(s.weight, dtype=np.int64)
                colsum = int(np.abs(w).reshape(w.shape[0], -1).sum(1).max()) if w.size else 0
                item = _Syn(s, tuple(src.shape), int(np.prod(out_shape)), colsum, w=w, conv=_conv_params(s))
            elif s.kind == "dense":
                w = np.asarray(s.weight, dtype=np.int64)
                if w.ndim != 2 or w.shape[1] != src.size:
                    raise ValueError(f"dense synapse {s.name!r}: weight {w.shape} does not take {src.size} inputs")
                colsum = int(np.abs(w).sum(1).max()) if w.size else 0
                item = _Syn(s, tuple(src.shape), w.shape[0], colsum, w=w)
            elif s.kind == "sparse":
                m = synapse_matrix(net, s)
                if m.shape[1] != src.size:
                    raise ValueError(f"sparse synapse {s.name!r}: shape {m.shape} does not take {src.size} inputs")
                colsum = int(abs(m).sum(1).max()) if m.nnz else 0
                item = _Syn(s, tuple(src.shape), m.shape[0], colsum, csr=m)
            else:
                raise ValueError(f"synapse {s.name!r}: unknown kind {s.kind!r}")
            if item.out_size != n_in:
                raise ValueError(f"synapse {s.name!r} delivers {item.out_size} currents but {p.name!r} takes {n_in}")
            syns.append(item)
        for src in net.edges_into(p.name):
            if net.population(src).size != n_in:
                raise ValueError(f"edge {src!r}->{p.name!r}: {net.population(src).size} values into {n_in} inputs")
        if p.kind == "maxpool":
            k, st, pa = _pool_params(p)
            c, h, w_ = in_shape
            exp = (c, (h + 2 * pa[0] - k[0]) // st[0] + 1, (w_ + 2 * pa[1] - k[1]) // st[1] + 1)
            if tuple(p.shape) != exp:
                raise ValueError(f"maxpool {p.name!r}: shape {tuple(p.shape)} but pooling {in_shape} gives {exp}")
        plan.append(_Pop(p, in_shape, syns, list(net.edges_into(p.name)), p.kind in BINARY_KINDS))
    return plan


def current_bounds(net: IntNet, input_max: int) -> dict[str, int]:
    """Worst-case ``max |a|`` per population (weight units, before Lava's ``<< 6``) for inputs with ``|x| <= input_max``.

    A population whose bound reaches ``2**17`` can wrap ``u`` (``(a << 6) > 2**23``); a quantiser can refuse such nets
    before running anything. Binary sources count 1; a max-pool relay passes on the bound of its input.
    """
    out_max: dict[str, int] = {}
    bounds: dict[str, int] = {}
    for item in _plan(net):
        p = item.pop
        if p.kind == "input":
            out_max[p.name] = int(input_max)
            continue
        b = sum(_scaled(s.colsum * (1 if not s.syn.graded else out_max[s.syn.src]), s.syn.weight_exp)
                for s in item.syns) + sum(out_max[e] for e in item.edges)
        bounds[p.name] = b
        out_max[p.name] = 1 if item.binary else b
    return bounds


def _scaled(bound: int, exp: int) -> int:
    return bound << exp if exp > 0 else bound


# -------------------------------------------------------------------------------------------------- execution

@dataclass
class ExecResult:
    """What :func:`run_intnet` returns. Arrays are NumPy; ``T`` is the number of model steps."""

    T: int
    final_v: dict[str, np.ndarray]  # integrator name -> [B, *shape] int64 final v
    outputs: dict[str, np.ndarray]  # recorded population -> [T, B, *shape] (bool spikes or int64 graded values)
    spike_counts: dict[str, np.ndarray]  # every population -> [B] int64: non-zero outputs over all steps
    overflow: OverflowCounters  # all populations together
    overflow_by_population: dict[str, OverflowCounters]

    @property
    def logits_int(self) -> np.ndarray:
        """The single integrator's final v, ``[B, n]`` (integer logits)."""
        if len(self.final_v) != 1:
            raise ValueError(f"the net has {len(self.final_v)} integrators; use final_v[name]")
        v = next(iter(self.final_v.values()))
        return v.reshape(v.shape[0], -1)


class Executor:
    """A prepared IntNet (weights checked and converted once); :meth:`run` executes a batch.

    ``threads``: worker threads for the neuron updates (default: ``torch.get_num_threads()``).
    """

    def __init__(self, net: IntNet, threads: int | None = None) -> None:
        self.net = net
        self.plan = _plan(net)
        self.threads = max(1, threads or torch.get_num_threads() or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        # last consumer of every population, so outputs nobody needs any more are freed early
        self._last_use: dict[str, int] = {}
        for i, item in enumerate(self.plan):
            for s in item.syns:
                self._last_use[s.syn.src] = i
            for e in item.edges:
                self._last_use[e] = i

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # the pool's threads are daemonic-free; shut them down with the executor
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------------------------------------------- input

    def _frames(self, x_int: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Input as int64 ``[T or 1, B, n]`` plus whether it is static (one frame repeated T times)."""
        p = self.plan[0].pop if self.plan[0].pop.kind == "input" else next(i.pop for i in self.plan
                                                                           if i.pop.kind == "input")
        x = torch.as_tensor(np.asarray(x_int) if not isinstance(x_int, torch.Tensor) else x_int)
        if x.is_floating_point():
            if not torch.equal(x, torch.round(x)):
                raise ValueError("x_int must hold integers (encode the input with net.encoding first)")
        x = x.to(torch.int64)
        shape, T = tuple(p.shape), self.net.T
        mode = _encoding_mode(self.net)
        if tuple(x.shape[1:]) == shape and mode != "frames":
            return x.reshape(1, x.shape[0], -1), True
        if x.dim() == len(shape) + 2 and tuple(x.shape[2:]) == shape and x.shape[1] == T and mode != "repeat":
            return x.transpose(0, 1).reshape(T, x.shape[0], -1).contiguous(), False
        raise ValueError(f"input must be [B, {', '.join(map(str, shape))}] (static) or [B, {T}, ...] (frames) "
                         f"as net.encoding says ({mode or 'unspecified'}); got {tuple(x.shape)}")

    # ------------------------------------------------------------------------------------------------- synapses

    def _apply(self, s: _Syn, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """Currents ``[S, B, n_dst]`` of synapse ``s`` for source outputs ``x`` ``[S, B, n_src]``; ``dtype=None``: int64."""
        syn = s.syn
        S, B = x.shape[:2]
        if not syn.graded and x.dtype == torch.int64:  # binary message mode: any non-zero value is a spike
            x = (x != 0).to(torch.float32)
        if dtype is None or s.kind_is_sparse():
            out = self._apply_scipy(s, x, dtype)
        elif syn.kind == "conv":
            st, pa, di, g = s.conv
            out = F.conv2d(x.reshape(S * B, *s.src_shape).to(dtype), s.weight_as(dtype), None, st, pa, di, g)
            out = out.reshape(S, B, -1)
        else:
            out = torch.matmul(x.to(dtype), s.weight_as(dtype).T)
        e = syn.weight_exp
        if e > 0:
            out = out * (1 << e) if out.is_floating_point() else out << e
        elif e < 0:  # Lava floors the *sum* (arithmetic right shift); exact in floating point for powers of two
            out = torch.floor(out * 2.0 ** e) if out.is_floating_point() else out >> -e
        return out

    @staticmethod
    def _apply_scipy(s: _Syn, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if s.csr is None:
            src = np.prod(s.src_shape)
            s.csr = (conv_to_sparse(s.w, s.src_shape, *s.conv) if s.conv is not None else sps.csr_matrix(s.w))
            assert s.csr.shape[1] == src
        S, B = x.shape[:2]
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64, None: np.int64}[dtype]
        xm = x.reshape(S * B, -1).numpy().astype(np_dtype, copy=False)
        out = np.asarray((s.csr.astype(np_dtype) @ xm.T).T)
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(S, B, -1)

    # -------------------------------------------------------------------------------------------------- neurons

    def _chunks(self, n: int) -> list[slice]:
        k = min(self.threads, n)
        edges = np.linspace(0, n, k + 1).astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def _map(self, fn, chunks: list[slice]) -> list:
        if self._pool is None or len(chunks) == 1:
            return [fn(c) for c in chunks]
        return list(self._pool.map(fn, chunks))

    def _neurons(self, item: _Pop, a: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray | None, OverflowCounters]:
        """Run the population's neurons over T steps on int64 currents ``a`` ``[T or 1, B, n]``.

        Returns spikes ``[T, B, n]`` (bool), the final v ``[B, n]`` (lif / integrator) and the overflow counts.
        """
        p = item.pop
        B, n = a.shape[1], a.shape[2]
        bias = 0 if p.bias_mant is None else np.asarray(p.bias_mant, dtype=np.int64)
        spikes = np.empty((T, B, n), dtype=bool)
        final_v = np.empty((B, n), dtype=np.int64) if p.kind != "gate" else None
        chunks = self._chunks(B)

        if p.kind == "gate":  # memoryless (LIFReset, reset_interval=1): all steps in one call
            def run(sl: slice) -> OverflowCounters:
                c = OverflowCounters()
                zero = np.zeros(1, np.int64)
                _, _, s = lifreset_step(zero, zero, a[:, sl], 1, 1, 0, p.du, p.dv, p.vth, bias, p.bias_exp,
                                        counters=c)
                spikes[:, sl] = s  # broadcasts a static a over T
                return c
        else:  # lif, integrator: the recurrence over T, per batch chunk
            def run(sl: slice) -> OverflowCounters:
                c = OverflowCounters()
                u = v = np.zeros((sl.stop - sl.start, n), np.int64)
                for t in range(T):
                    u, v, spikes[t, sl] = lif_step(u, v, a[min(t, a.shape[0] - 1), sl], p.du, p.dv, p.vth, bias,
                                                   p.bias_exp, counters=c)
                final_v[sl] = v
                return c

        counters = OverflowCounters()
        for c in self._map(run, chunks):
            counters.u_wraps += c.u_wraps
            counters.v_clips += c.v_clips
        return spikes, final_v, counters

    # ------------------------------------------------------------------------------------------------------ run

    def run(self, x_int: np.ndarray | torch.Tensor, record: Record = None) -> ExecResult:
        """Execute a batch. ``x_int``: integer input ``[B, *shape]`` (static, repeated T times) or ``[B, T, *shape]``.

        ``record``: population names whose per-step outputs to return, ``'all'``, or None.
        """
        names = [i.pop.name for i in self.plan]
        rec = set(names) if record == "all" else set(record or ())
        unknown = rec - set(names)
        if unknown:
            raise KeyError(f"unknown population(s) to record: {sorted(unknown)}")
        T = self.net.T
        with torch.inference_mode():
            return self._run(x_int, rec, T)

    def _run(self, x_int: np.ndarray | torch.Tensor, rec: set[str], T: int) -> ExecResult:
        outs: dict[str, torch.Tensor] = {}  # name -> [T or 1, B, n]; binary as float32 0/1, graded as int64
        out_max: dict[str, int] = {}
        final_v: dict[str, np.ndarray] = {}
        outputs: dict[str, np.ndarray] = {}
        counts: dict[str, np.ndarray] = {}
        by_pop: dict[str, OverflowCounters] = {}
        total = OverflowCounters()
        B = 0
        for i, item in enumerate(self.plan):
            p = item.pop
            if p.kind == "input":
                x, _static = self._frames(x_int)
                B = x.shape[1]
                out = x
                out_max[p.name] = int(x.abs().max()) if x.numel() else 0
            else:
                a = self._currents(item, outs, out_max, B)
                if p.kind == "maxpool":
                    k, st, pa = _pool_params(p)
                    S = a.shape[0]
                    pooled = F.max_pool2d(a.reshape(S * B, *item.in_shape), k, st, pa)  # -inf padding
                    out = pooled.reshape(S, B, -1).to(torch.int64)
                    out_max[p.name] = int(out.abs().max()) if out.numel() else 0
                else:
                    a_np = a.numpy() if a.dtype == torch.int64 else a.numpy().astype(np.int64)
                    spikes, v, c = self._neurons(item, a_np, T)
                    by_pop[p.name] = c
                    total.u_wraps += c.u_wraps
                    total.v_clips += c.v_clips
                    if p.kind == "integrator":
                        final_v[p.name] = v.reshape(B, *p.shape)
                    out = torch.from_numpy(spikes).to(torch.float32)
                    out_max[p.name] = 1
            outs[p.name] = out
            full = out.expand(T, *out.shape[1:])  # a static population repeats its single frame
            counts[p.name] = (full != 0).sum(dim=(0, 2)).numpy().astype(np.int64)
            if p.name in rec:
                arr = full.numpy()
                arr = arr.astype(bool) if item.binary else arr.astype(np.int64)
                outputs[p.name] = arr.reshape(T, B, *p.shape)
            for src in [s.syn.src for s in item.syns] + item.edges:  # free what no later population reads
                if self._last_use.get(src) == i:
                    outs.pop(src, None)
            if p.name not in self._last_use:
                outs.pop(p.name, None)
        return ExecResult(T, final_v, outputs, counts, total, by_pop)

    def _currents(self, item: _Pop, outs: dict[str, torch.Tensor], out_max: dict[str, int], B: int) -> torch.Tensor:
        """Sum of every synapse current and direct edge into ``item``: ``[T or 1, B, n]`` (float or int64, exact)."""
        bound = 0
        for s in item.syns:
            xm = out_max[s.syn.src] if s.syn.graded else min(out_max[s.syn.src], 1)
            bound += _scaled(s.colsum * xm, s.syn.weight_exp)
        bound += sum(out_max[e] for e in item.edges)
        dtype = torch.float32 if bound < F32_EXACT else torch.float64 if bound < F64_EXACT else None
        n = int(np.prod(item.in_shape))
        acc: torch.Tensor | None = None
        terms = [self._apply(s, outs[s.syn.src], dtype) for s in item.syns]
        terms += [outs[e] for e in item.edges]
        for t in terms:  # static terms ([1, B, n]) broadcast against per-step ones
            t = t.to(dtype if dtype is not None else torch.int64)
            acc = t if acc is None else acc + t
        if acc is None:
            acc = torch.zeros(1, B, n, dtype=dtype or torch.int64)
        return acc


def _encoding_mode(net: IntNet) -> str | None:
    """'repeat' or 'frames' if ``net.encoding`` says so (keys 'mode', 'kind' or 'encoding'), else None."""
    for key in ("mode", "kind", "encoding", "input"):
        v = net.encoding.get(key) if isinstance(net.encoding, dict) or hasattr(net.encoding, "get") else None
        if v in ("repeat", "static", "direct"):
            return "repeat"
        if v in ("frames", "events", "event"):
            return "frames"
    return None


def run_intnet(net: IntNet, x_int: np.ndarray | torch.Tensor, record: Record = None,
               threads: int | None = None) -> ExecResult:
    """Execute ``net`` on a batch in the aligned schedule (see :class:`Executor`; this prepares it once per call)."""
    with Executor(net, threads=threads) as ex:
        return ex.run(x_int, record)
