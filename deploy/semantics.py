"""What an integer network means, shared by every executor ("how"): shapes, weight matrices, worst-case bounds.

The reference executor (``deploy/executor.py``), the Lava builder (``deploy/lava_net.py``), the quantiser and the
energy counter read an :class:`~deploy.intnet.IntNet` through these functions, so none of them imports another.

- :data:`BINARY_KINDS` / :data:`GRADED_KINDS`: which population kinds emit 0/1 spikes and which integers.
- :func:`population_input_shape`, :func:`conv_out_shape`, :func:`pool_params`, :func:`conv_params`: shapes.
- :func:`synapse_matrix` / :func:`conv_to_sparse`: any synapse as an exact ``(n_dst, n_src)`` integer matrix.
- :func:`weight_sums`, :func:`input_ranges`, :func:`current_bounds`: the worst case of every population's summed
  input over all inputs in a range (the 24-bit guarantee; the quantiser chooses scales with the same arithmetic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sps
import torch
import torch.nn.functional as F

from export.shapes import conv_out_hw, pair
from sdt.errors import UserError

from .fixed_point import U_WRAP_LIMIT, V_CLIP_LIMIT, OverflowCounters, weight_shift
from .intnet import IntNet, Population, Synapse
from .kinds import BINARY_KINDS, GRADED_KINDS


ConvParams = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]
GRADED_LIMIT = 1 << 23  # a graded payload (relay, max-pool relay) is a signed 24-bit value


# ------------------------------------------------------------------------------------------------------ shapes

def conv_params(s: Synapse) -> ConvParams:
    """stride, padding, dilation, groups of a conv synapse (defaults 1, 0, 1, 1)."""
    at = s.attrs
    return (pair(at.get("stride", 1)), pair(at.get("padding", 0)), pair(at.get("dilation", 1)),
            int(at.get("groups", 1)))


def conv_out_shape(s: Synapse, src_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` a conv synapse delivers from a source of shape ``src_shape``."""
    if len(src_shape) != 3:
        raise ValueError(f"conv synapse {s.name!r}: source shape {src_shape} is not (C,H,W)")
    w = np.asarray(s.weight)
    stride, padding, dilation, g = conv_params(s)
    cout, cin_g, kh, kw = w.shape
    if cin_g * g != src_shape[0] or cout % g:
        raise ValueError(f"conv synapse {s.name!r}: weight {w.shape} with groups={g} does not fit input {src_shape}")
    return (cout, *conv_out_hw(src_shape[1:], (kh, kw), stride, padding, dilation))


def pool_params(p: Population) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """kernel, stride, padding of a ``maxpool`` population (the file stores ``kernel``; ``kernel_size`` is read too)."""
    k = pair(p.attrs["kernel"] if "kernel" in p.attrs else p.attrs["kernel_size"])
    return k, pair(p.attrs.get("stride", k)), pair(p.attrs.get("padding", 0))


def population_input_shape(net: IntNet, p: Population) -> tuple[int, ...]:
    """Shape of the summed input ``a`` of ``p``: ``p.shape``, except for a max-pool relay, whose ``a`` is the pool's
    input (``attrs['in_shape']``, else the output shape of an incoming conv synapse or direct edge source)."""
    if p.kind != "maxpool":
        return tuple(p.shape)
    if "in_shape" in p.attrs:
        return tuple(int(v) for v in p.attrs["in_shape"])
    for s in net.synapses_into(p.name):
        if s.kind == "conv":
            return conv_out_shape(s, tuple(net.population(s.src).shape))
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
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    ho, wo = conv_out_hw((hi, wi), (kh, kw), stride, padding, dilation)
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
        return conv_to_sparse(np.asarray(s.weight), tuple(src.shape), *conv_params(s))
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


# ------------------------------------------------------------------------------------------- worst-case bounds

def weight_sums(kind: str, w: np.ndarray, n_dst: int, *, rows: np.ndarray | None = None,
                conv: ConvParams | None = None, src_shape: tuple[int, ...] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per destination neuron (C,H,W order): the sum of the positive and of the negative weights it receives
    (int64). Convs are border-aware when ``conv`` and ``src_shape`` are given (a padded position has fewer taps),
    else every position of an output channel gets the full kernel (an upper bound). Sparse weights need ``rows``."""
    if kind == "conv":
        if conv is not None and src_shape is not None:
            wt = torch.from_numpy(np.asarray(w, np.float64))
            stride, padding, dilation, g = conv
            ones = torch.ones(1, *src_shape, dtype=torch.float64)  # float64 sums of integer weights are exact
            pos = F.conv2d(ones, wt.clamp(min=0), None, stride, padding, dilation, g).reshape(-1).numpy()
            neg = F.conv2d(ones, wt.clamp(max=0), None, stride, padding, dilation, g).reshape(-1).numpy()
            return np.rint(pos).astype(np.int64), np.rint(neg).astype(np.int64)
        w = np.asarray(w, np.int64)
        c = w.shape[0]
        per = n_dst // c
        return (np.repeat(np.maximum(w, 0).reshape(c, -1).sum(1), per),
                np.repeat(np.minimum(w, 0).reshape(c, -1).sum(1), per))
    if kind == "dense":
        w = np.asarray(w, np.int64)
        return np.maximum(w, 0).sum(1), np.minimum(w, 0).sum(1)
    if rows is None:
        raise ValueError("weight_sums: a sparse synapse needs its rows")
    vals = np.asarray(w, np.int64)
    pos = np.bincount(rows, np.maximum(vals, 0), n_dst)
    neg = np.bincount(rows, np.minimum(vals, 0), n_dst)
    return np.rint(pos).astype(np.int64), np.rint(neg).astype(np.int64)


def current_range(pos: np.ndarray, neg: np.ndarray, x_lo: int, x_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of ``W @ x`` per destination neuron over every ``x`` in ``[x_lo, x_hi]`` (sums of
    :func:`weight_sums`)."""
    return pos * x_lo + neg * x_hi, pos * x_hi + neg * x_lo


def _synapse_sums(s: Synapse, src_shape: tuple[int, ...], n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    if s.kind == "sparse":
        rows, _cols, vals = (np.asarray(a) for a in s.weight)
        return weight_sums("sparse", vals, n_dst, rows=rows)
    return weight_sums(s.kind, np.asarray(s.weight), n_dst, conv=conv_params(s) if s.kind == "conv" else None,
                       src_shape=src_shape)


def input_ranges(net: IntNet, input_range: tuple[int, int], term_max: dict[str, int] | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per population, per neuron of its summed input ``a`` (C,H,W order): the lowest and highest value any input in
    ``input_range`` can produce (weight units; a negative exponent floors, which is monotone, so bounds stay bounds).
    Binary sources span 0..1, graded ones (relays, the input) the range of their own outputs. ``term_max``, if given,
    receives per population the largest magnitude any single incoming term (a synapse's sum before and after its
    exponent, or an edge's value) can take."""
    out_rng: dict[str, tuple[int, int]] = {}
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in net.populations:
        if p.kind == "input":
            out_rng[p.name] = (int(input_range[0]), int(input_range[1]))
            continue
        n = int(np.prod(population_input_shape(net, p)))
        hi, lo = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for s in net.synapses_into(p.name):
            x_lo, x_hi = out_rng[s.src] if s.graded else (0, 1)
            pos, neg = _synapse_sums(s, tuple(net.population(s.src).shape), n)
            lw, h = current_range(pos, neg, x_lo, x_hi)
            sh, slw = weight_shift(h, s.weight_exp), weight_shift(lw, s.weight_exp)
            hi += sh
            lo += slw
            if term_max is not None:
                big = max(int(np.abs(h).max(initial=0)), int(np.abs(lw).max(initial=0)),
                          int(np.abs(sh).max(initial=0)), int(np.abs(slw).max(initial=0)))
                term_max[p.name] = max(term_max.get(p.name, 0), big)
        for src in net.edges_into(p.name):
            hi += out_rng[src][1]
            lo += out_rng[src][0]
            if term_max is not None:
                term_max[p.name] = max(term_max.get(p.name, 0), *(abs(v) for v in out_rng[src]))
        ranges[p.name] = (lo, hi)
        out_rng[p.name] = (0, 1) if p.kind in BINARY_KINDS else (int(lo.min(initial=0)), int(hi.max(initial=0)))
    return ranges


def current_bounds(net: IntNet, input_max: int) -> dict[str, int]:
    """Worst-case ``max |a|`` per population (weight units, before Lava's ``<< 6``) for inputs with ``|x| <= input_max``.

    A population whose bound reaches ``2**17`` can wrap ``u`` (``(a << 6) > 2**23``); a quantiser can refuse such nets
    before running anything. The per-neuron ranges of :func:`input_ranges`, reduced to one number per population.
    """
    return {name: max(int(hi.max(initial=0)), -int(lo.min(initial=0)))
            for name, (lo, hi) in input_ranges(net, (-int(input_max), int(input_max))).items()}


@dataclass(frozen=True)
class OverflowProof:
    """Which populations provably never overflow Lava's 24-bit state for ANY input in the proof's range.

    ``safe``: spiking populations (lif, gate, integrator) whose u never wraps and v never clips; ``int32``: those
    whose every term and partial sum also fits in int32 (LIFs with a shift decay; graded relays); ``relay_ok``: graded
    relays whose payload stays inside 24 bits; ``worst``: per population, the worst-case ``max |a|``."""

    safe: frozenset[str]
    int32: frozenset[str]
    relay_ok: frozenset[str]
    worst: dict[str, int]

    def unsafe(self, net: IntNet) -> list[str]:
        """Populations not proven safe (spiking ones outside ``safe``, relays outside ``relay_ok``), in net order."""
        return [p.name for p in net.populations if p.kind != "input" and p.name not in self.safe | self.relay_ok]


def overflow_proof(net: IntNet, input_range: tuple[int, int]) -> OverflowProof:
    """The per-neuron input ranges (:func:`input_ranges`) through Lava's equations: du = 4095, so u = a << 6; v after
    a step is <= 64*vth, else it was reset; negative v is a geometric series of the decay; a gate resets every step;
    an integrator (dv = 0) sums T steps. The quantiser's scales satisfy these bounds by construction."""
    safe, fast, relays = set(), set(), set()
    terms: dict[str, int] = {}
    worst_a: dict[str, int] = {}
    for p_name, (lo, hi) in input_ranges(net, input_range, terms).items():
        p = net.population(p_name)
        a_max = max(int(hi.max(initial=0)), -int(lo.min(initial=0)))
        worst_a[p_name] = a_max
        if p.kind in GRADED_KINDS:
            if a_max < GRADED_LIMIT:
                relays.add(p_name)
            if terms.get(p_name, 0) < 1 << 30 and a_max < 1 << 30:
                fast.add(p_name)  # its sums fit in int32
            continue
        if p.kind not in BINARY_KINDS or p.du != 4095 or 64 * a_max >= U_WRAP_LIMIT:
            continue
        b = p.bias().reshape(-1)
        if p.kind == "gate":  # reset every step: v = (a << 6) + b
            worst = max(int((64 * hi + b).max(initial=0)), int((-64 * lo - b).max(initial=0)))
        elif p.dv == 0:  # no leak (the integrator): v sums every step
            worst = net.T * int((64 * np.maximum(hi, -lo) + np.abs(b)).max(initial=0))
        else:  # v <= 64*vth after a step (else it fired and was reset); below zero a geometric series
            keep = (4096 - p.dv) * 64 * p.vth // 4096
            worst = max(int((keep + 64 * hi + np.maximum(b, 0)).max(initial=0)),
                        int(((-64 * lo + np.maximum(-b, 0)) * 4096 // p.dv + 1).max(initial=0)))
        if worst <= V_CLIP_LIMIT:
            safe.add(p_name)
            # every term and every partial sum also fits in int32, and the decay is a shift: the int32 path
            if p.kind == "lif" and 0 < p.dv < 4096 and p.dv & (p.dv - 1) == 0 and terms.get(p_name, 0) < 1 << 30:
                fast.add(p_name)
    return OverflowProof(frozenset(safe), frozenset(fast), frozenset(relays), worst_a)


def prove_no_overflow(net: IntNet, where: str = "integer network") -> OverflowProof:
    """Re-prove the 24-bit guarantee of a network read from a file, for every input its encoding allows; a population
    that could wrap u, clip v or overflow a 24-bit relay payload is a one-line UserError naming it."""
    enc = net.input_encoding
    proof = overflow_proof(net, (min(enc.min, 0), enc.levels if enc.levels is not None else 255))
    bad = proof.unsafe(net)
    if bad:
        raise UserError(f"{where}: population {bad[0]!r} can overflow Lava's 24-bit state (worst-case |a| = "
                        f"{proof.worst.get(bad[0], '?')}, {len(bad)} population(s) in all); re-export it with "
                        "sdt-export --to lava")
    return proof


# ------------------------------------------------------------------------------------------------ results

@dataclass
class ExecResult:
    """What an executor returns (reference executor and Lava alike). Arrays are NumPy in the populations' (C,H,W) layout; ``T`` model steps."""

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


__all__ = ["BINARY_KINDS", "GRADED_KINDS", "conv_params", "conv_out_shape", "pool_params", "population_input_shape",
           "conv_to_sparse", "synapse_matrix", "weight_sums", "current_range", "input_ranges", "current_bounds",
           "OverflowProof", "overflow_proof", "prove_no_overflow", "GRADED_LIMIT", "ExecResult"]
