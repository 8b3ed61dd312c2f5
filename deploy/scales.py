"""Quantiser, step 2 (scale search): integer weights, exponents, thresholds and biases for each population plan, at
the largest current scale K for which Lava's 24-bit state provably never overflows (worst case over every input,
with the bound arithmetic of ``deploy/semantics.py``); ``deploy/quantize.py`` documents the rules."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np

from sdt.errors import UserError

from .fixed_point import V_CLIP_LIMIT, quantize_dense_weights, weight_shift
from .lowering import _Plan, _Term
from .quant_config import (A_LIMIT, BIAS_EXP_MAX, BIAS_MANT, BIAS_SOURCE, GRADED_LIMIT, INPUT_LEVELS, RELAY_KINDS,
                           VTH_MAX, QuantConfig, QuantizationError)
from .semantics import current_range, weight_sums

# ----------------------------------------------------------------------------------------- integer choices

@dataclass
class _QSyn:
    """A quantised synapse (or direct edge) with its worst-case contribution per destination neuron."""

    name: str
    src: str
    kind: str
    w: np.ndarray  # int64 (conv 4-D, dense 2-D, sparse values); edge: unused
    e: int
    graded: bool
    attrs: dict[str, Any]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    hi: np.ndarray | None = None  # per destination neuron: max / min of the delivered current (after the shift)
    lo: np.ndarray | None = None
    comp: np.ndarray | None = None  # per destination neuron: mean floor error to add back through the bias (v units)
    err: tuple[float, float] = (0.0, 0.0)  # (squared weight error, squared weights) of the whole term, float units
    node: str | None = None  # the graph node (term) the weights came from; None: ``name``
    part: int | None = None  # which of the term's synapses (hi/lo term, sign half, channel group)


def _fit(t: np.ndarray, e_lo: int, e_hi: int) -> tuple[np.ndarray, int] | None:
    """Smallest exponent in [e_lo, e_hi] at which ``t / 2**e`` rounds to weights Lava keeps unchanged (8 bits;
    even if mixed-sign). None if even ``e_hi`` is too small."""
    amax = float(np.abs(t).max()) if t.size else 0.0
    if amax == 0.0:
        return np.zeros(t.shape, np.int64), 0
    mixed = t.min() < 0 < t.max()
    e = max(e_lo, math.floor(math.log2(amax / 256.0)))
    while e <= e_hi:
        x = t / 2.0 ** e
        q = (2 * np.round(x / 2) if mixed else np.round(x)).astype(np.int64)
        if q.min() >= -256 and q.max() <= 255 and np.array_equal(quantize_dense_weights(q), q):
            return q, e
        e += 1
    return None


class _Infeasible(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _quantize_term(t: _Term, scale: float, dst_in_shape: tuple[int, ...], src_range: tuple[int, int],
                   cfg: QuantConfig) -> list[_QSyn]:
    """Integer synapses for term ``t`` at destination scale ``scale`` (integer current per float unit of ``t.w``)."""
    lo_x, hi_x = src_range
    n_dst = int(np.prod(dst_in_shape))
    if t.kind == "edge":
        if not math.isclose(scale, 1.0, rel_tol=1e-9):
            raise AssertionError(f"edge {t.src}: scales differ ({scale}); scale groups are broken")
        return [_QSyn(t.name, t.src, "edge", np.ones(1, np.int64), 0, t.graded, {},
                      hi=np.full(n_dst, hi_x, np.int64), lo=np.full(n_dst, lo_x, np.int64))]
    target = t.w * scale
    sparse = t.kind == "sparse"
    if t.exact:  # ones: kept exact, scale must make them integers
        q = np.round(target).astype(np.int64)
        if not np.allclose(q, target) or q.min() < -255 or q.max() > 255:
            raise AssertionError(f"{t.name}: exact weights {target.min()}..{target.max()} are not 8-bit integers")
        groups = [(q, 0)]
    else:
        e_lo, e_hi = cfg.weight_exp_range
        mixed = target.min() < 0 < target.max()
        # Lava infers the sign mode per synapse: a mixed matrix loses its lowest bit (even weights), one-signed
        # ones keep all 8 bits of magnitude, so splitting by sign doubles the resolution
        parts = [np.maximum(target, 0), np.minimum(target, 0)] if (cfg.split_sign and mixed) else [target]
        groups = []
        for part in parts:
            residual = part
            for _ in range(cfg.weight_terms):  # further terms quantise what the previous ones left over
                got = _fit_groups(residual, e_lo, e_hi, cfg.per_channel and not sparse, t.name)
                for w_full, e in got:
                    residual = residual - w_full * 2.0 ** e
                groups.extend(got)
                if not np.any(residual):
                    break
    out = []
    approx = np.zeros(target.shape)
    for gi, (w_full, e) in enumerate(groups):
        approx += w_full * 2.0 ** e
        # per output channel for convs (border neurons over-counted: conservative), the executor's bound arithmetic
        pos, neg = weight_sums(t.kind, w_full, n_dst, rows=t.rows)
        lo, hi = current_range(pos, neg, lo_x, hi_x)
        hi, lo = weight_shift(hi, e), weight_shift(lo, e)
        comp = None
        if e < 0:  # floor(y / 2**k) is low by (1 - 2**-k)/2 on average: give it back (v units: x 64)
            rows_hit = ((pos - neg) > 0).astype(float)  # neurons that receive any non-zero weight
            comp = rows_hit * (32.0 * (1.0 - 2.0 ** e))
        part = None if len(groups) == 1 else gi
        name = t.name if part is None else f"{t.name}@{gi}"
        out.append(_QSyn(name, t.src, t.kind, w_full, int(e), t.graded, dict(t.attrs), t.rows, t.cols, hi, lo, comp,
                         node=t.name, part=part))
    if out:
        out[0].err = (float(((approx - target) ** 2).sum()) / scale ** 2, float((t.w ** 2).sum()))
    return out


def _fit_groups(target: np.ndarray, e_lo: int, e_hi: int, per_channel: bool, what: str
                ) -> list[tuple[np.ndarray, int]]:
    """``[(w_int full-size, e)]`` with ``sum w_int * 2**e ~ target``: one synapse, or (``per_channel``) one per group of
    output channels that need the same exponent (zero rows elsewhere), so small channels keep their 8 bits."""
    if not np.any(target):
        return []
    if not per_channel:
        fit = _fit(target, e_lo, e_hi)
        if fit is None:
            raise _Infeasible("weight_exp", f"{what}: weights need an exponent > {e_hi}")
        return [fit]
    amax = np.abs(target.reshape(target.shape[0], -1)).max(1)
    nz = np.flatnonzero(amax > 0)
    need = np.maximum(e_lo, np.ceil(np.log2(amax[nz] / 254.0) - 1e-12).astype(int))
    out = []
    for e_need in np.unique(need):
        idx = nz[need == e_need]
        fit = _fit(target[idx], e_lo, e_hi)
        if fit is None:
            raise _Infeasible("weight_exp", f"{what}: weights need an exponent > {e_hi}")
        w_full = np.zeros(target.shape, np.int64)
        w_full[idx] = fit[0]
        out.append((w_full, fit[1]))
    return out


@dataclass
class _Solution:
    """The integer parameters of one population."""

    K: float
    vth: int
    dv: int
    du: int
    syns: list[_QSyn]
    bias_mant: np.ndarray | None
    bias_exp: int
    a_hi: int
    a_lo: int
    v_worst: int
    report: dict[str, Any]


class _Solver:
    def __init__(self, plans: list[_Plan], T: int, cfg: QuantConfig) -> None:
        self.plans = plans
        self.by_name = {p.name: p for p in plans}
        self.T = T
        self.cfg = cfg
        self.sol: dict[str, _Solution] = {}
        # output range of each population: binary spikes are known up front (group members may read populations
        # solved later); relays get theirs when their group is solved
        self.range: dict[str, tuple[int, int]] = {p.name: (0, 1) for p in plans if p.kind in ("lif", "gate")}
        self.range[BIAS_SOURCE] = (0, 1)
        self.group = self._groups()

    def _groups(self) -> dict[str, str]:
        """Union-find over direct edges from graded relays: readers of the same relay share its scale."""
        parent = {p.name: p.name for p in self.plans}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for p in self.plans:
            for t in p.terms:
                if t.kind == "edge" and t.graded:
                    parent[find(p.name)] = find(t.src)
        return {p.name: find(p.name) for p in self.plans}

    # ------------------------------------------------------------------------------------------ one population

    def _in_shape(self, p: _Plan) -> tuple[int, ...]:
        return tuple(p.attrs["in_shape"]) if p.kind in RELAY_KINDS else p.shape

    def _scale_of(self, t: _Term, K: float, K_src: Mapping[str, float]) -> float:
        if t.relay:
            return K / K_src[t.src]
        return K

    def _solve_one(self, p: _Plan, K: float, K_src: Mapping[str, float], vth: int | None = None) -> _Solution:
        """Quantise population ``p`` at scale K and check every 24-bit limit; raise _Infeasible naming the first."""
        shape = self._in_shape(p)
        n = int(np.prod(shape))
        syns: list[_QSyn] = []
        for t in p.terms:
            rng = self.range[t.src]
            syns.extend(_quantize_term(t, self._scale_of(t, K, K_src), shape, rng, self.cfg))
        hi = np.zeros(n, np.int64)
        lo = np.zeros(n, np.int64)
        comp = np.zeros(n)
        for s in syns:
            hi += s.hi
            lo += s.lo
            if s.comp is not None:
                comp += s.comp
        bias_mant, bias_exp, b_eff = None, 0, np.zeros(n, np.int64)
        if p.kind in ("lif", "integrator"):
            b_f = np.zeros(n) if p.bias is None else p.bias * 64.0 * K
            b_int = np.round(b_f + comp).astype(np.int64)
            bsyn = self._bias_synapse(p, b_int) if self.cfg.bias_synapse else None
            if bsyn is not None:  # the coarse bias arrives as a current: count it in the worst case of a
                syns.append(bsyn)
                hi += bsyn.hi
                lo += bsyn.lo
                b_int = b_int - 64 * (bsyn.w[:, 0].astype(np.int64) << bsyn.e)
            bias_mant, bias_exp = self._bias(b_int)
            b_eff = bias_mant.astype(np.int64) << bias_exp
        a_hi, a_lo = int(hi.max(initial=0)), int(-lo.min(initial=0))
        limit = GRADED_LIMIT if p.kind in RELAY_KINDS else A_LIMIT
        if max(a_hi, a_lo) >= limit:
            raise _Infeasible("relay_range" if p.kind in RELAY_KINDS else "u_bound",
                              f"worst-case |a| = {max(a_hi, a_lo)} >= {limit}")
        du, dv, v_worst = 4095, 0, 64 * max(a_hi, a_lo)
        if p.kind in RELAY_KINDS:
            vth = 0
        elif p.kind == "gate":
            vth = p.vth
            if v_worst > V_CLIP_LIMIT:
                raise _Infeasible("v_bound", f"gate input {v_worst}")
        elif p.kind == "integrator":
            vth = VTH_MAX
            per_step = 64 * np.maximum(hi, -lo) + np.abs(b_eff)
            v_worst = int(self.T * per_step.max(initial=0))
            if v_worst > 64 * VTH_MAX:
                raise _Infeasible("integrator_range", f"T * worst step = {v_worst} > {64 * VTH_MAX}")
        else:
            dv = int(min(4095, max(1, round(4096 * p.decay))))
            if vth is None:
                vth = int(round(K * p.theta / p.decay))
            if not 0 <= vth <= VTH_MAX:
                raise _Infeasible("vth_max", f"vth {vth}")
            keep = (4096 - dv) * 64 * vth // 4096  # a survivor's v is <= 64*vth before it decays
            v_pos = keep + 64 * hi + np.maximum(b_eff, 0)
            v_neg = (64 * -lo + np.maximum(-b_eff, 0)) * 4096 // dv + 1  # geometric series of the decay
            v_worst = int(max(v_pos.max(initial=0), v_neg.max(initial=0)))
            if v_worst > V_CLIP_LIMIT:
                raise _Infeasible("v_bound", f"worst-case |v| = {v_worst} > {V_CLIP_LIMIT}")
        sq = sum(s.err[0] for s in syns)
        tot = sum(s.err[1] for s in syns)
        report = {"kind": p.kind, "K": K, "vth": vth, "dv": dv, "worst_a": [-a_lo, a_hi],
                  "u_use": round(64 * max(a_hi, a_lo) / (1 << 23), 4), "v_use": round(v_worst / V_CLIP_LIMIT, 4),
                  "weight_exps": sorted({s.e for s in syns if s.kind != "edge"}),
                  "weight_rel_err": round(math.sqrt(sq / tot), 5) if tot > 0 else 0.0,
                  "bias_exp": bias_exp}
        return _Solution(K, int(vth), dv, du, syns, bias_mant, bias_exp, a_hi, a_lo, v_worst, report)

    def _bias_synapse(self, p: _Plan, b_int: np.ndarray) -> _QSyn | None:
        """Split a bias Lava's 13-bit mantissa cannot hold exactly into a coarse current from the always-on source
        (an 8-bit weight x 2**e per neuron, in a-units of 64) and a remainder the mantissa holds at exponent 0; None
        when the mantissa alone is exact or the split does not fit (then the mantissa/exponent bias is used)."""
        if int(np.abs(b_int).max(initial=0)) <= BIAS_MANT[1]:
            return None
        fit = _fit(b_int / 64.0, 0, 6)  # step <= 2 * 2**6 a-units: the remainder stays within +-4096 v-units
        if fit is None:
            return None
        w, e = fit
        rest = b_int - 64 * (w.astype(np.int64) << e)
        if rest.min() < BIAS_MANT[0] or rest.max() > BIAS_MANT[1]:
            return None
        c = w.astype(np.int64) << e
        return _QSyn(BIAS_SOURCE, BIAS_SOURCE, "dense", w.reshape(-1, 1), int(e), False, {},
                     hi=np.maximum(c, 0), lo=np.minimum(c, 0))

    @staticmethod
    def _bias(b: np.ndarray) -> tuple[np.ndarray, int]:
        amax = int(np.abs(b).max(initial=0))
        for e in range(BIAS_EXP_MAX + 1):
            m = np.round(b / 2.0 ** e).astype(np.int64)
            if m.min(initial=0) >= BIAS_MANT[0] and m.max(initial=0) <= BIAS_MANT[1]:
                return m.astype(np.int32), e
        raise _Infeasible("bias_range", f"bias up to {amax} needs more than 13 bits x 2**{BIAS_EXP_MAX}")

    # ------------------------------------------------------------------------------------------------ search

    def _search(self, name: str, candidates: Callable[[int], float], n: int,
                solve: Callable[[float], dict[str, _Solution]]) -> tuple[dict[str, _Solution], str, str]:
        """Largest index i in [1, n] whose scale ``candidates(i)`` is feasible (binary search, then verified)."""
        def attempt(i: int) -> dict[str, _Solution] | _Infeasible:
            try:
                return solve(candidates(i))
            except _Infeasible as e:
                return e

        lo, hi = 0, n  # invariant: i <= lo feasible (lo = 0: nothing known), i > hi infeasible
        first = attempt(n)
        if not isinstance(first, _Infeasible):
            return first, "vth_max", ""
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if isinstance(attempt(mid), _Infeasible):
                hi = mid - 1
            else:
                lo = mid
        for i in range(lo, max(0, lo - 64), -1):  # rounding can make feasibility non-monotone near the edge
            if i < 1:
                break
            got = attempt(i)
            if not isinstance(got, _Infeasible):
                why = attempt(i + 1) if i < n else first
                assert isinstance(why, _Infeasible)
                return got, why.reason, why.detail
        fail = attempt(1)
        reason = fail.reason if isinstance(fail, _Infeasible) else "unknown"
        detail = fail.detail if isinstance(fail, _Infeasible) else ""
        raise QuantizationError(f"layer {name}: no integer scale keeps Lava's 24-bit state from overflowing "
                                f"({reason}: {detail}); the layer's weights/biases are too large for 8-bit weights "
                                "and 24-bit state")

    def solve(self) -> None:
        for p in self.plans:
            if p.name in self.sol:
                continue
            if p.kind == "input":
                self.range[p.name] = (0, int(self.cfg.input_levels or INPUT_LEVELS))
                continue
            root = self.group[p.name]
            members = [q for q in self.plans if self.group[q.name] == root]
            if len(members) > 1:
                self._solve_group(members)
            elif p.kind == "relay":
                self._solve_relay_and_reader(p)
            elif p.kind == "gate":
                self._commit(p, self._fixed(p, 1.0), "exact")
            elif p.kind == "lif" and p.count and p.decay == 0.5 and 0 < p.theta <= 0.5:
                # talking-heads LIF on integer counts: fires iff count >= 1 and v stays 0 otherwise: exact
                self._commit(p, self._fixed(p, 1.0, vth=0), "exact")
            elif p.kind == "lif":
                relay_terms = [t for t in p.terms if t.relay]
                if relay_terms:
                    self._solve_via_relay(p, relay_terms)
                else:
                    p.terms = [replace(t, exact=False) for t in p.terms]  # counts (PLIF): weights scale with K
                    sols, why, det = self._search(p.name, lambda i, p=p: i * p.decay / p.theta, VTH_MAX,
                                                  lambda K, p=p: {p.name: self._solve_one(p, K, {})})
                    self._commit(p, sols[p.name], why, det)
            elif p.kind == "integrator":
                relay = {t.src: self.sol[t.src].K for t in p.terms if t.relay}
                sols, why, det = self._search(p.name, lambda i: i / 64.0, 1 << 30,
                                              lambda K, p=p: {p.name: self._solve_one(p, K, relay)})
                self._commit(p, sols[p.name], why, det)
            else:
                raise UserError(f"quantiser: population {p.name} ({p.kind}) has no scale group")

    def _fixed(self, p: _Plan, K: float, vth: int | None = None) -> _Solution:
        try:
            return self._solve_one(p, K, {}, vth=vth)
        except _Infeasible as e:
            raise QuantizationError(f"layer {p.name}: {e.reason} ({e.detail})") from None

    def _commit(self, p: _Plan, s: _Solution, limited_by: str, detail: str = "") -> None:
        s.report["limited_by"] = limited_by
        if detail:
            s.report["limit_detail"] = detail
        self.sol[p.name] = s
        self.range[p.name] = (-s.a_lo, s.a_hi) if p.kind in RELAY_KINDS else (0, 1)

    def _solve_group(self, members: list[_Plan]) -> None:
        """Relays and their direct-edge readers: one K for all (the edge delivers the relay's integers as they are)."""
        lifs = [m for m in members if m.kind == "lif"]
        if not lifs or any(m.kind not in ("lif", *RELAY_KINDS) for m in members):
            raise UserError(f"quantiser: unsupported scale group {[m.name for m in members]}")
        ref = lifs[0]
        order = [m for m in self.plans if m in members]  # topological: relays before their readers

        relays = [m.name for m in members if m.kind in RELAY_KINDS]

        def solve(K: float) -> dict[str, _Solution]:
            out: dict[str, _Solution] = {}
            saved = dict(self.range)
            try:
                for m in order:
                    s = self._solve_one(m, K, {r: K for r in relays})
                    out[m.name] = s
                    if m.kind in RELAY_KINDS:
                        self.range[m.name] = (-s.a_lo, s.a_hi)
            finally:
                self.range = saved
            return out

        sols, why, det = self._search(ref.name, lambda i: i * ref.decay / ref.theta, VTH_MAX, solve)
        for m in order:
            self._commit(m, sols[m.name], why, det)
            sols[m.name].report["group"] = ref.name

    def _solve_relay_and_reader(self, r: _Plan) -> None:
        """A stream relay in no scale group (no relay edge into it and no LIF reading it by edge: the NIR-clean SDT
        without blocks) and the one LIF that averages it: searched
        together over the LIF's K, the relay at ``K_r = c * K * 2**-e`` with the lowest weight exponent e that keeps the
        relay inside 24 bits, so that the averaging synapse's weight ``c * K / K_r = 2**e`` is exact."""
        readers = [q for q in self.plans if any(t.src == r.name for t in q.terms)]
        if len(readers) != 1 or readers[0].kind != "lif" or any(not t.relay for t in readers[0].terms):
            raise UserError(f"quantiser: relay {r.name} needs exactly one LIF that reads only relays")
        p = readers[0]
        c = float(p.terms[0].w.flat[0])
        e_lo, e_hi = self.cfg.weight_exp_range

        def solve(K: float) -> dict[str, _Solution]:
            err: _Infeasible | None = None
            for e in range(e_lo, e_hi + 1):
                K_r = c * K * 2.0 ** -e
                try:
                    rs = self._solve_one(r, K_r, {})
                except _Infeasible as x:
                    err = x
                    continue
                saved = self.range.get(r.name)
                self.range[r.name] = (-rs.a_lo, rs.a_hi)
                try:
                    return {r.name: rs, p.name: self._solve_one(p, K, {r.name: K_r})}
                finally:
                    if saved is None:
                        del self.range[r.name]
                    else:
                        self.range[r.name] = saved
            raise err or _Infeasible("relay_range", "no weight exponent fits")

        sols, why, det = self._search(p.name, lambda i: i * p.decay / p.theta, VTH_MAX, solve)
        for m in (r, p):
            self._commit(m, sols[m.name], why, det)
            sols[m.name].report["group"] = p.name

    def _solve_via_relay(self, p: _Plan, relay_terms: list[_Term]) -> None:
        """A LIF that reads a relay through a graded synapse of equal weights c (the head's mean over tokens): K must
        make ``K * c / K_relay`` an 8-bit integer times a power of two, so it is searched over those values."""
        K_src = {t.src: self.sol[t.src].K for t in relay_terms}
        t0 = relay_terms[0]
        c = float(t0.w.flat[0])
        if any(not np.allclose(t.w, c) or not math.isclose(K_src[t.src], K_src[t0.src]) for t in relay_terms):
            raise UserError(f"{p.name}: relay synapses of unequal weights are not supported")
        base = K_src[t0.src] / c
        e_lo, e_hi = self.cfg.weight_exp_range
        cands = sorted({k * 2.0 ** e * base for k in range(1, 256) for e in range(e_lo, e_hi + 1)})
        cands = [K for K in cands if round(K * p.theta / p.decay) <= VTH_MAX and K * p.theta / p.decay >= 1]
        sols, why, det = self._search(p.name, lambda i: cands[i - 1], len(cands),
                                      lambda K: {p.name: self._solve_one(p, K, K_src)})
        self._commit(p, sols[p.name], why, det)
