"""deploy.fixed_point: Lava 0.10 fixed-point Dense/LIF reference; golden vectors without Lava, bit-exact with it."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from deploy.fixed_point import (
    V_CLIP_LIMIT,
    LIFParams,
    LIFState,
    OverflowCounters,
    SignMode,
    dense_accumulate,
    effective_bias,
    infer_sign_mode,
    lif_step,
    lifreset_step,
    quantize_dense_weights,
    run_dense_lif,
)

# ---------------------------------------------------------------------------------------------------------- no Lava


def test_golden_vector():
    """Lava's own test: du=0, dv=2048, no bias, one input of 128 at t=1."""
    u = v = np.zeros(1, np.int64)
    trace = []
    for t in range(8):
        u, v, s = lif_step(u, v, np.array([128 if t == 0 else 0]), du=0, dv=2048, vth=100_000)
        assert not s.any()
        trace.append(int(v[0]))
    assert trace == [8192, 12286, 14331, 15351, 15859, 16111, 16235, 16295]


def test_golden_vector_through_dense_delay():
    spikes = np.zeros((10, 1), np.int64)
    spikes[0, 0] = 1
    res = run_dense_lif(np.array([[128]]), spikes, du=0, dv=2048, vth=100_000)
    assert res.v[:, 0].tolist() == [0, 8192, 12286, 14331, 15351, 15859, 16111, 16235, 16295, 16323]
    assert res.counters.total == 0


@pytest.mark.parametrize(
    "bits, expected", [(8, [254, -256, 38]), (7, [252, -256, 36]), (6, [248, -256, 32])]
)
def test_quantize_mixed(bits, expected):
    assert quantize_dense_weights(np.array([300, -300, 39]), bits).tolist() == expected


def test_quantize_sign_modes():
    # excitatory: clip [0, 255], 8 bits keeps odd values
    assert quantize_dense_weights(np.array([300, 39, 0])).tolist() == [255, 39, 0]
    assert quantize_dense_weights(np.array([300, 39, 0]), 7).tolist() == [254, 38, 0]
    # inhibitory: clip [-255, 0], truncation acts on the magnitude (toward zero), not floor
    assert quantize_dense_weights(np.array([-300, -39, 0])).tolist() == [-255, -39, 0]
    assert quantize_dense_weights(np.array([-300, -39, 0]), 7).tolist() == [-254, -38, 0]
    # explicit sign mode overrides inference: a positive weight under INHIBITORY clips to 0
    assert quantize_dense_weights(np.array([5, -5]), sign_mode="inh").tolist() == [0, -5]
    assert infer_sign_mode(np.zeros(3)) is SignMode.EXCITATORY
    assert infer_sign_mode(np.array([0, -1])) is SignMode.INHIBITORY
    assert infer_sign_mode(np.array([1, -1])) is SignMode.MIXED
    with pytest.raises(ValueError):
        quantize_dense_weights(np.array([0.5, 1.0]))


def test_dense_accumulate_binary_graded_and_exponent():
    w = np.array([[3, -5, 7], [2, 2, -9]])
    s = np.array([1, 0, 2])
    assert dense_accumulate(w, s).tolist() == [10, -7]  # binary: the 2 counts as a spike
    assert dense_accumulate(w, s, graded=True).tolist() == [17, -16]
    assert dense_accumulate(w, s, weight_exp=2).tolist() == [40, -28]
    assert dense_accumulate(w, s, weight_exp=-1).tolist() == [5, -4]  # floor of the sum: -7 >> 1 == -4


def test_decay_truncates_toward_zero():
    # -3 * 2048 / 4096 = -1.5 -> -1 (floor would give -2); +3 -> +1
    _, v, _ = lif_step(0, np.array([-3, 3]), 0, du=0, dv=2048, vth=10)
    assert v.tolist() == [-1, 1]
    u, _, _ = lif_step(np.array([-3, 3]), 0, 0, du=2047, dv=0, vth=10)  # current factor (4096-2048)/4096
    assert u.tolist() == [-1, 1]


def test_threshold_is_strict_and_u_not_reset():
    # vth=2 -> threshold 128. Input 2 gives v = 128 (no spike), input 3 gives 192 (spike, v reset, u kept)
    u, v, s = lif_step(np.zeros(2), np.zeros(2), np.array([2, 3]), du=4095, dv=0, vth=2)
    assert s.tolist() == [False, True]
    assert v.tolist() == [128, 0]
    assert u.tolist() == [128, 192]


def test_bias_mantissa_and_exponent():
    assert effective_bias(np.array([3, -3, 5]), np.array([2, 0, -1])).tolist() == [12, -3, 2]
    assert effective_bias(-5, -1).tolist() == -3  # arithmetic shift floors
    _, v, _ = lif_step(0, 0, 0, du=0, dv=0, vth=1000, bias_mant=np.array([7, -7]), bias_exp=3)
    assert v.tolist() == [56, -56]


def test_u_wrap_is_detected_and_matches_lava_rule():
    c = OverflowCounters()
    a = np.array([1 << 17, (1 << 17) + 1, -(1 << 17) + 1, -(1 << 17)])  # a << 6 = ±2**23 (+64)
    u, _, _ = lif_step(np.zeros(4), np.zeros(4), a, du=4095, dv=0, vth=131071, counters=c)
    # (-2**23, 2**23] is representable; outside it wraps once by 2**24
    assert u.tolist() == [1 << 23, (1 << 23) + 64 - (1 << 24), -(1 << 23) + 64, 1 << 23]
    # v = u here, and u = 2**23 is one above the v limit 2**23 - 1, so those two entries are also clipped
    assert c.u_wraps == 2 and c.v_clips == 2
    with pytest.raises(AssertionError, match="2 u wrap"):
        c.assert_none()


def test_v_clip_is_detected():
    c = OverflowCounters()
    u = v = np.zeros(1)
    vs = []
    for _ in range(3):  # u = -2**22 each step, no leak: v -> -2**22, -2**23 (clipped), clipped
        u, v, _ = lif_step(u, v, np.array([-(1 << 16)]), du=4095, dv=0, vth=0, counters=c)
        vs.append(int(v[0]))
    assert vs == [-(1 << 22), -V_CLIP_LIMIT, -V_CLIP_LIMIT]
    assert c.v_clips == 2 and c.u_wraps == 0


def test_no_overflow_counted_in_normal_operation():
    rng = np.random.default_rng(1)
    res = run_dense_lif(rng.integers(-256, 256, (16, 32)), rng.random((30, 32)) < 0.3, du=4095, dv=2048, vth=200)
    assert res.s.any() and res.counters.total == 0
    res.counters.assert_none()


def test_lifreset_interval_one_is_memoryless_threshold():
    rng = np.random.default_rng(2)
    a = rng.integers(-300, 300, (12, 50))
    bias = rng.integers(-100, 100, 50)
    u = v = np.zeros(50, np.int64)
    for t in range(12):
        u, v, s = lifreset_step(u, v, a[t], t + 1, 1, 0, du=123, dv=456, vth=40, bias_mant=bias, bias_exp=2)
        assert np.array_equal(s, (a[t] << 6) + (bias << 2) > 40 << 6)


def test_lifreset_resets_on_schedule():
    p = LIFParams(du=4095, dv=0, vth=100_000, reset_interval=3, reset_offset=2)
    st = LIFState.zeros(1)
    vs = [(st.step(np.array([1]), p), int(st.v[0]))[1] for _ in range(7)]
    # steps 1..7; reset before the update at t % 3 == 2, i.e. t = 2, 5
    assert vs == [64, 64, 128, 192, 64, 128, 192]


def test_lif_params_are_range_checked():
    for bad in (dict(du=4096, dv=0, vth=1), dict(du=0, dv=-1, vth=1), dict(du=0, dv=0, vth=1 << 17),
                dict(du=0, dv=0, vth=1, bias_mant=5000), dict(du=0, dv=0, vth=1, reset_interval=0)):
        with pytest.raises(ValueError):
            LIFParams(**bad)


def test_run_dense_lif_batch_dims_and_delay():
    rng = np.random.default_rng(3)
    w = rng.integers(-100, 100, (6, 10))
    x = (rng.random((15, 4, 10)) < 0.4).astype(np.int64)  # [T, batch, n_in]
    res = run_dense_lif(w, x, du=1000, dv=300, vth=50)
    assert res.s.shape == (15, 4, 6)
    assert np.array_equal(res.a[0], np.zeros((4, 6)))
    assert np.array_equal(res.a[1:], x[:-1] @ quantize_dense_weights(w).T)
    for b in range(4):
        single = run_dense_lif(w, x[:, b], du=1000, dv=300, vth=50)
        assert np.array_equal(single.s, res.s[:, b]) and np.array_equal(single.v, res.v[:, b])


# ------------------------------------------------------------------------------------------- bit-exact vs. Lava

LAVA_CASES = [
    # (du, dv, vth, |bias_mant| max, bias_exp, Dense kwargs, LIFReset (interval, offset), |w| max)
    # |w| max 300 > 256 exercises clipping and the even-truncation of mixed weights.
    pytest.param(4095, 2048, 150, 0, 0, {}, (5, 2), 300, id="sdt-like_du4095_dv2048"),
    pytest.param(0, 2048, 400, 0, 0, {}, (1, 0), 300, id="golden_decay_du0_dv2048"),
    pytest.param(1024, 512, 300, 200, 3, {}, (4, 0), 300, id="leaky_bias_exp3"),
    pytest.param(2000, 100, 250, 100, 1, dict(num_weight_bits=6, weight_exp=-1), (3, 1), 300, id="6bit_wexp-1"),
    # small weights + memoryless LIFReset: v == threshold ties occur, so '>' vs '>=' is tested against Lava
    pytest.param(4095, 4095, 8, 0, 0, {}, (1, 0), 12, id="ties_memoryless"),
]


def _run_lava(w, spikes, du, dv, vth, bias_mant, bias_exp, dense_kwargs, reset):
    """RingBuffer -> Dense -> {LIF, LIFReset} -> sinks in Lava fixed_pt; returns spikes and voltage traces."""
    from deploy.lava_compat import ensure_lava

    ensure_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF, LIFReset
    from lava.proc.monitor.process import Monitor

    T, n_out = spikes.shape[0], w.shape[0]
    src = Source(data=spikes.T.astype(float))
    dense = Dense(weights=w, **dense_kwargs)
    lif = LIF(shape=(n_out,), du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp)
    lifr = LIFReset(shape=(n_out,), du=du, dv=dv, vth=vth, bias_mant=bias_mant, bias_exp=bias_exp,
                    reset_interval=reset[0], reset_offset=reset[1])
    sink, sinkr = Sink(shape=(n_out,), buffer=T), Sink(shape=(n_out,), buffer=T)
    mon = Monitor()
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    dense.a_out.connect(lifr.a_in)  # fan-out: both neuron groups see the same delayed Dense output
    lif.s_out.connect(sink.a_in)
    lifr.s_out.connect(sinkr.a_in)
    mon.probe(lif.v, T)
    try:
        lif.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        out = dict(
            s=sink.data.get().T.astype(bool),
            v=mon.get_data()[lif.name]["v"].astype(np.int64),
            u_end=lif.u.get().astype(np.int64),
            sr=sinkr.data.get().T.astype(bool),
            vr_end=lifr.v.get().astype(np.int64),
            ur_end=lifr.u.get().astype(np.int64),
        )
    finally:
        lif.stop()
    return out


@pytest.mark.skipif(importlib.util.find_spec("lava") is None, reason="lava-nc is not installed")
@pytest.mark.parametrize("du, dv, vth, bias_range, bias_exp, dense_kwargs, reset, w_max", LAVA_CASES)
def test_bit_exact_against_lava(du, dv, vth, bias_range, bias_exp, dense_kwargs, reset, w_max):
    rng = np.random.default_rng(1234 + du + dv)
    T, n_in, n_out = 20, 12, 8
    spikes = (rng.random((T, n_in)) < 0.35).astype(np.int64)
    w = rng.integers(-w_max, w_max + 1, (n_out, n_in))
    bias = rng.integers(-bias_range, bias_range + 1, n_out) if bias_range else np.zeros(n_out, np.int64)

    lava = _run_lava(w, spikes, du, dv, vth, bias, bias_exp, dense_kwargs, reset)
    ref = run_dense_lif(w, spikes, du, dv, vth, bias, bias_exp, **dense_kwargs)
    refr = run_dense_lif(w, spikes, du, dv, vth, bias, bias_exp, **dense_kwargs,
                         reset_interval=reset[0], reset_offset=reset[1])

    assert ref.counters.total == 0 and refr.counters.total == 0
    assert 0 < ref.s.sum() < ref.s.size, "degenerate case: the comparison would not test the threshold"
    np.testing.assert_array_equal(lava["s"], ref.s)
    np.testing.assert_array_equal(lava["v"], ref.v)
    np.testing.assert_array_equal(lava["u_end"], ref.u[-1])
    np.testing.assert_array_equal(lava["sr"], refr.s)
    np.testing.assert_array_equal(lava["vr_end"], refr.v[-1])
    np.testing.assert_array_equal(lava["ur_end"], refr.u[-1])


def _lif_step_literal(u, v, a, du, dv, vth, bias):
    """Lava's PyLifModelBitAcc equations written out plainly (sign * (|p| >> 12) decays, wrap, clip, reset)."""
    def decay(x, f):
        p = x * f
        return np.sign(p) * (np.abs(p) >> 12)

    u = decay(u, 4096 - (du + 1)) + (a << 6)
    wraps = int(np.count_nonzero((u > 2 ** 23) | (u <= -2 ** 23)))
    u = np.where(u > 2 ** 23, u - 2 ** 24, np.where(u <= -2 ** 23, u + 2 ** 24, u))
    v = decay(v, 4096 - dv) + u + bias
    clips = int(np.count_nonzero(np.abs(v) > 2 ** 23 - 1))
    v = np.clip(v, -(2 ** 23 - 1), 2 ** 23 - 1)
    s = v > (vth << 6)
    return u, np.where(s, 0, v), s, wraps, clips


@pytest.mark.parametrize("du,dv", [(4095, 2048), (0, 0), (1234, 4095), (4095, 1), (2048, 3000)])
def test_lif_step_equals_the_literal_equations(du, dv):
    """The executor's lif_step (in-place passes, masks only when needed) against the plain formulas, with currents
    large enough to wrap u and clip v, negative values, per-neuron bias and arrays as parameters."""
    rng = np.random.default_rng(du + dv)
    n = 4000
    u = rng.integers(-2 ** 23 + 1, 2 ** 23, n)
    v = rng.integers(-2 ** 23 + 1, 2 ** 23, n)
    bias = rng.integers(-4096, 4096, n) << 3
    overflows = 0
    for step in range(6):
        a = rng.integers(-2 ** 17, 2 ** 17, n) * (1 if step % 2 else 40)  # every other step: wraps and clips
        c = OverflowCounters()
        got = lif_step(u, v, a, du, dv, 300, bias, 0, counters=c)
        want = _lif_step_literal(u, v, a, du, dv, 300, bias)
        for g, w in zip(got, want[:3]):
            np.testing.assert_array_equal(g, w)
        assert (c.u_wraps, c.v_clips) == want[3:]
        overflows += c.u_wraps + c.v_clips
        u, v = got[0], got[1]
    assert overflows > 0  # the loud steps did overflow
