"""Vectorised NumPy reference of Lava 0.10's fixed-point ("fixed_pt" / "bit_accurate_loihi") Dense and LIF models.

Semantics follow ``nir_lava_semantics.md`` §4.2–§4.3 (Lava 0.10 ``PyLifModelBitAcc`` / ``PyDenseModelBitAcc``) and are
checked bit-exactly against a running Lava (``tests/test_fixed_point.py``). Per time step (Lava's time starts at 1):

Dense (``PyDenseModelBitAcc``)
    weights are clipped by sign mode and their low bits truncated once (:func:`quantize_dense_weights`); each step the
    process first *sends the sum computed at the previous step* (one-step delay, zero at step 1), then accumulates
    ``W @ s`` for the new input and shifts it by ``weight_exp`` (left, or arithmetic right = floor).
LIF (``PyLifModelBitAcc``)
    ``u = trunc0(u * (4096 - du - 1) / 4096) + (a << 6)``, wrapped once by ±2**24 into (-2**23, 2**23];
    ``v = trunc0(v * (4096 - dv) / 4096) + u + bias_mant * 2**bias_exp``, clipped to ±(2**23 - 1);
    ``s = v > vth << 6`` (strict); ``v = 0`` where ``s``; ``u`` is not reset.
LIFReset (``PyLifResetModelBitAcc``)
    as LIF, but ``u = v = 0`` before the update when ``time_step % reset_interval == reset_offset % reset_interval``.

All internal arithmetic is int64, so intermediate products never overflow; the only departures from 24-bit state are the
ones Lava itself performs (u wrap, v clip), and they are counted in :class:`OverflowCounters` so callers can assert that
a quantised network never hits them. Lava's CPU model does the ``u`` update in int32; results are identical as long as
``|a| < 2**25`` (int32 overflow of ``a << 6`` is not modelled).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DECAY_SHIFT", "DECAY_UNITY", "ACT_SHIFT", "VTH_SHIFT", "U_WRAP_LIMIT", "V_CLIP_LIMIT",
    "SignMode", "infer_sign_mode", "quantize_dense_weights", "dense_accumulate", "weight_shift", "effective_bias",
    "OverflowCounters", "LIFParams", "LIFState", "lif_step", "lifreset_step", "DenseLIFResult", "run_dense_lif",
]

DECAY_SHIFT = 12  # du, dv are 12-bit fractions of 4096
DECAY_UNITY = 1 << DECAY_SHIFT
ACT_SHIFT = 6  # synaptic input is MSB-aligned by 6 bits before it is added to u
VTH_SHIFT = 6  # so is the threshold
DS_OFFSET = 1  # current decay uses du + 1 (so du = 4095 means "no memory"); voltage uses dv + 0
U_WRAP_LIMIT = 1 << 23  # u lives in (-2**23, 2**23]; beyond that it wraps by 2**24 (modular, not saturating)
V_CLIP_LIMIT = (1 << 23) - 1  # v saturates at ±(2**23 - 1)


class SignMode(enum.Enum):
    """Dense weight sign modes, as Lava infers them from the raw weight matrix."""

    MIXED = "mixed"
    EXCITATORY = "exc"
    INHIBITORY = "inh"


def infer_sign_mode(weights: np.ndarray) -> SignMode:
    """EXCITATORY if all w >= 0 (so an all-zero matrix is excitatory), INHIBITORY if all w <= 0, else MIXED."""
    w = np.asarray(weights)
    if w.min() >= 0:
        return SignMode.EXCITATORY
    if w.max() <= 0:
        return SignMode.INHIBITORY
    return SignMode.MIXED


def _as_int64(x: np.ndarray | int, what: str) -> np.ndarray:
    """Integer view of ``x``; refuse non-integral floats rather than truncate them silently like Lava's int32 cast."""
    if type(x) is np.ndarray and x.dtype == np.int64:  # the executor's hot path: nothing to check or convert
        return x
    a = np.asarray(x)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{what} must be integer-valued (Lava's fixed-point models cast to int32), got dtype {a.dtype}")


def quantize_dense_weights(
    w: np.ndarray, num_weight_bits: int = 8, sign_mode: SignMode | str | None = None
) -> np.ndarray:
    """Weights as Lava's fixed-point Dense uses them: clip by sign mode, then drop low bits.

    Clip ranges: MIXED [-256, 255], EXCITATORY [0, 255], INHIBITORY [-255, 0]. Then ``8 - num_weight_bits + is_mixed``
    low bits are dropped: by an arithmetic shift (floor) for MIXED/EXCITATORY, and on the magnitude (toward zero) for
    INHIBITORY, because Lava negates inhibitory weights around the shift. So mixed 8-bit weights become even.
    ``sign_mode=None`` infers it from ``w`` (as Lava does when Dense gets no ``sign_mode``).
    """
    if not 1 <= num_weight_bits <= 8:
        raise ValueError(f"num_weight_bits must be in 1..8, got {num_weight_bits}")
    wi = _as_int64(w, "weights")
    mode = infer_sign_mode(wi) if sign_mode is None else SignMode(sign_mode)
    sign = -1 if mode is SignMode.INHIBITORY else 1
    mag = sign * wi  # work on the magnitude for INHIBITORY
    lo = -256 if mode is SignMode.MIXED else 0
    mag = np.clip(mag, lo, 255)
    drop = 8 - num_weight_bits + int(mode is SignMode.MIXED)
    mag = (mag >> drop) << drop  # numpy >> on signed ints is arithmetic (floor)
    return sign * mag


def dense_accumulate(
    wq: np.ndarray, s: np.ndarray, weight_exp: int = 0, graded: bool = False
) -> np.ndarray:
    """One Dense accumulation: ``W @ s`` over the last axis of ``s`` (batch dims allowed), then the exponent shift.

    Binary mode (Lava's ``num_message_bits = 0``) treats any non-zero input as 1. A negative ``weight_exp`` floors the
    *sum* (arithmetic right shift), not each weight.
    """
    x = _as_int64(s, "input")
    if not graded:
        x = (x != 0).astype(np.int64)
    acc = x @ np.asarray(wq, dtype=np.int64).T
    return acc << weight_exp if weight_exp > 0 else acc >> -weight_exp


def weight_shift(raw: np.ndarray, e: np.ndarray | int) -> np.ndarray:
    """Lava's per-synapse exponent on an int64 sum: left shift, or arithmetic right shift (floor)."""
    if isinstance(e, (int, np.integer)):
        return raw << e if e > 0 else raw >> -e if e < 0 else raw
    return np.where(e >= 0, raw << np.maximum(e, 0), raw >> np.maximum(-e, 0))


def effective_bias(bias_mant: np.ndarray | int, bias_exp: np.ndarray | int) -> np.ndarray:
    """``bias_mant * 2**bias_exp``; a negative exponent is an arithmetic right shift (floor), as in Lava's CPU model."""
    m = _as_int64(bias_mant, "bias_mant")
    e = _as_int64(bias_exp, "bias_exp")
    if e.ndim == 0:  # one exponent per population (the executor): a single shift, none for 0
        k = int(e)
        return m if k == 0 else (m << k if k > 0 else m >> -k)
    return np.where(e >= 0, m << np.maximum(e, 0), m >> np.maximum(-e, 0))


def _decay(x: np.ndarray, factor: np.ndarray | int) -> np.ndarray:
    """``x * factor / 4096`` truncated toward zero (sign * (|p| >> 12)), not floored: this matters for negative x.

    Computed as ``(p + 4095 * (p < 0)) >> 12`` (ceiling for negative p = truncation), in place on a fresh array: the
    executor's neuron updates are a chain of such whole-array passes, so each one saved counts."""
    f = np.asarray(factor)
    if f.ndim == 0 and 0 < int(f) < DECAY_UNITY and int(f) & (int(f) - 1) == 0:  # 2**k (dv = 2048: tau = 2)
        k = DECAY_SHIFT - int(f).bit_length() + 1  # x * 2**-k
        p = np.asarray(x, dtype=np.int64) >> 63
        p &= (1 << k) - 1
        p += x
        p >>= k
        return p
    p = np.asarray(np.multiply(x, factor, dtype=np.int64))
    t = p >> 63  # -1 where p < 0, else 0
    t &= DECAY_UNITY - 1
    p += t
    p >>= DECAY_SHIFT
    return p


@dataclass
class OverflowCounters:
    """Neuron-steps on which Lava's 24-bit state limits changed a value; both should stay 0 for a well-scaled net."""

    u_wraps: int = 0
    v_clips: int = 0

    @property
    def total(self) -> int:
        return self.u_wraps + self.v_clips

    def assert_none(self) -> None:
        """Raise AssertionError naming the counts if any wrap or clip happened."""
        if self.total:
            raise AssertionError(f"fixed-point overflow: {self.u_wraps} u wrap(s), {self.v_clips} v clip(s)")


def lif_step(
    u: np.ndarray,
    v: np.ndarray,
    a_in: np.ndarray,
    du: np.ndarray | int,
    dv: np.ndarray | int,
    vth: np.ndarray | int,
    bias_mant: np.ndarray | int = 0,
    bias_exp: np.ndarray | int = 0,
    *,
    counters: OverflowCounters | None = None,
    check: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``PyLifModelBitAcc`` step on arrays of any (broadcastable) shape; returns new ``(u, v, s)``.

    ``a_in`` is the summed synaptic input in weight units (it is shifted by 6 here). Parameters broadcast, so they
    may be scalars (Lava: du, dv, vth per population) or per-neuron arrays (Lava: bias). ``counters``, if given, is
    incremented by the number of wrapped u and clipped v entries.
    """
    u = _as_int64(u, "u")
    v = _as_int64(v, "v")
    a = _as_int64(a_in, "a_in")
    du = _as_int64(du, "du")
    dv = _as_int64(dv, "dv")

    fu = DECAY_UNITY - (du + DS_OFFSET)
    if fu.ndim == 0 and int(fu) == 0:  # du = 4095: no current memory (every SDT population)
        shape = np.broadcast_shapes(u.shape, a.shape)
        u = a << ACT_SHIFT
        if u.shape != shape:
            u = np.broadcast_to(u, shape).copy()
    else:
        u = _decay(u, fu)
        u += a << ACT_SHIFT
    # Lava wraps once (not modulo): > 2**23 loses 2**24, <= -2**23 gains 2**24. The masks only when needed;
    # ``check=False``: the caller proved that no value can leave the range (see Executor), so no pass at all
    if check and u.size and (u.max() > U_WRAP_LIMIT or u.min() <= -U_WRAP_LIMIT):
        hi = u > U_WRAP_LIMIT
        lo = u <= -U_WRAP_LIMIT
        u = u - (hi.astype(np.int64) << 24) + (lo.astype(np.int64) << 24)
        if counters is not None:
            counters.u_wraps += int(np.count_nonzero(hi | lo))

    v = _decay(v, DECAY_UNITY - dv)
    b = effective_bias(bias_mant, bias_exp)
    if v.shape == np.broadcast_shapes(v.shape, u.shape, b.shape):
        v += u
        v += b
    else:
        v = v + u + b
    if check and v.size and (v.max() > V_CLIP_LIMIT or v.min() < -V_CLIP_LIMIT):
        if counters is not None:
            counters.v_clips += int(np.count_nonzero(np.abs(v) > V_CLIP_LIMIT))
        np.clip(v, -V_CLIP_LIMIT, V_CLIP_LIMIT, out=v)

    s = v > (_as_int64(vth, "vth") << VTH_SHIFT)  # strict: v == threshold does not fire
    if v.ndim:
        np.putmask(v, s, 0)
    else:
        v = np.where(s, 0, v)
    return u, v, s


def _is_reset_step(time_step: int, reset_interval: int, reset_offset: int) -> bool:
    if reset_interval < 1 or reset_offset < 0:
        raise ValueError("reset_interval must be >= 1 and reset_offset >= 0 (as LIFReset requires)")
    return time_step % reset_interval == reset_offset % reset_interval


def lifreset_step(
    u: np.ndarray,
    v: np.ndarray,
    a_in: np.ndarray,
    time_step: int,
    reset_interval: int,
    reset_offset: int,
    du: np.ndarray | int,
    dv: np.ndarray | int,
    vth: np.ndarray | int,
    bias_mant: np.ndarray | int = 0,
    bias_exp: np.ndarray | int = 0,
    *,
    counters: OverflowCounters | None = None,
    check: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``PyLifResetModelBitAcc`` step: zero u and v first if this (1-based) ``time_step`` is a reset step.

    With ``reset_interval = 1`` every step resets: a memoryless threshold unit, ``s = (a << 6) + b > vth << 6``.
    """
    if _is_reset_step(time_step, reset_interval, reset_offset):
        u = np.zeros_like(_as_int64(u, "u"))
        v = np.zeros_like(_as_int64(v, "v"))
    return lif_step(u, v, a_in, du, dv, vth, bias_mant, bias_exp, counters=counters, check=check)


@dataclass(frozen=True)
class LIFParams:
    """Parameters of a Lava ``LIF`` (``LIFReset`` if ``reset_interval`` is set), range-checked like Loihi's registers."""

    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray | int = 0
    bias_exp: np.ndarray | int = 0
    reset_interval: int | None = None
    reset_offset: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("du", 0, 4095), ("dv", 0, 4095), ("vth", 0, (1 << 17) - 1)):
            val = getattr(self, name)
            if not lo <= int(val) <= hi:
                raise ValueError(f"{name}={val} outside Lava's {lo}..{hi}")
        bm = np.asarray(self.bias_mant)
        if bm.size and (bm.min() < -4096 or bm.max() > 4095):
            raise ValueError("bias_mant outside 13-bit signed range -4096..4095")
        if self.reset_interval is not None:
            _is_reset_step(1, self.reset_interval, self.reset_offset)


@dataclass
class LIFState:
    """Mutable u, v (int64) of a LIF population plus its overflow counters; ``time_step`` counts Lava steps done."""

    u: np.ndarray
    v: np.ndarray
    counters: OverflowCounters = field(default_factory=OverflowCounters)
    time_step: int = 0

    @classmethod
    def zeros(cls, shape: tuple[int, ...] | int) -> "LIFState":
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.int64))

    def step(self, a_in: np.ndarray, p: LIFParams) -> np.ndarray:
        """Advance one Lava time step in place and return the boolean spikes."""
        self.time_step += 1
        if p.reset_interval is None:
            self.u, self.v, s = lif_step(
                self.u, self.v, a_in, p.du, p.dv, p.vth, p.bias_mant, p.bias_exp, counters=self.counters
            )
        else:
            self.u, self.v, s = lifreset_step(
                self.u, self.v, a_in, self.time_step, p.reset_interval, p.reset_offset,
                p.du, p.dv, p.vth, p.bias_mant, p.bias_exp, counters=self.counters,
            )
        return s


@dataclass
class DenseLIFResult:
    """Per-step traces of :func:`run_dense_lif`; row ``t`` is Lava time step ``t + 1`` (what a sink/Monitor records)."""

    s: np.ndarray  # bool  [T, ..., n_out]
    v: np.ndarray  # int64 [T, ..., n_out], after the spike reset
    u: np.ndarray  # int64 [T, ..., n_out]
    a: np.ndarray  # int64 [T, ..., n_out], the delayed Dense output the LIF received
    weights: np.ndarray  # the quantised weights actually used
    counters: OverflowCounters


def run_dense_lif(
    weights: np.ndarray,
    spikes_in: np.ndarray,
    du: int,
    dv: int,
    vth: int,
    bias_mant: np.ndarray | int = 0,
    bias_exp: np.ndarray | int = 0,
    *,
    num_weight_bits: int = 8,
    sign_mode: SignMode | str | None = None,
    weight_exp: int = 0,
    graded: bool = False,
    reset_interval: int | None = None,
    reset_offset: int = 0,
) -> DenseLIFResult:
    """Reference of ``RingBuffer(spikes_in.T) -> Dense(weights) -> LIF -> sink`` in Lava fixed point.

    ``weights`` is ``(n_out, n_in)`` (Lava's layout); ``spikes_in`` is ``[T, ..., n_in]``, row t being what the source
    sends at step t + 1. Because Dense sends the previous step's sum, the LIF sees ``a[0] = 0`` and
    ``a[t] = W @ spikes_in[t - 1]``; the last input row therefore never reaches the LIF within T steps.
    """
    wq = quantize_dense_weights(weights, num_weight_bits, sign_mode)
    x = np.asarray(spikes_in)
    acc = dense_accumulate(wq, x, weight_exp, graded)  # all steps at once: [T, ..., n_out]
    a = np.zeros_like(acc)
    a[1:] = acc[:-1]  # the one-step Dense delay
    p = LIFParams(du, dv, vth, bias_mant, bias_exp, reset_interval, reset_offset)
    state = LIFState.zeros(a.shape[1:])
    s_tr = np.zeros(a.shape, bool)
    v_tr = np.zeros(a.shape, np.int64)
    u_tr = np.zeros(a.shape, np.int64)
    for t in range(a.shape[0]):  # the recurrence is sequential in time; everything else is vectorised
        s_tr[t] = state.step(a[t], p)
        v_tr[t], u_tr[t] = state.v, state.u
    return DenseLIFResult(s_tr, v_tr, u_tr, a, wq, state.counters)
