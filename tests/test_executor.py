"""deploy.executor: the vectorised aligned-schedule executor against a literal step-by-step NumPy schedule.

The reference below (:func:`step_reference`) walks the aligned schedule of ``deploy/intnet.py`` one model step and one
population at a time, with its own naive conv / pooling loops and ``deploy.fixed_point`` for the neurons, so it shares
no synapse or pooling code with the executor. The hand-built nets (:func:`chain_net`, :func:`mini_sdt_net`) are reused
by ``tests/test_lava_net.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.executor import Executor, run_intnet
from deploy.semantics import conv_to_sparse, current_bounds
from deploy.fixed_point import lif_step, lifreset_step
from deploy.intnet import IntNet, Population, Synapse

# ------------------------------------------------------------------------------------------- hand-built nets


def _even(rng: np.random.Generator, lo: int, hi: int, shape) -> np.ndarray:
    """Mixed-sign weights as Lava's 8-bit fixed-point synapse keeps them: even, in [-256, 254]."""
    return (rng.integers(lo // 2, hi // 2 + 1, shape) * 2).astype(np.int64)


def _pop(name: str, kind: str, shape, **kw) -> Population:
    return Population(name=name, kind=kind, shape=tuple(shape), **kw)


def chain_net(seed: int = 0, T: int = 5) -> IntNet:
    """input (graded) -> conv 3x3 -> lif -> dense -> integrator."""
    rng = np.random.default_rng(seed)
    pops = (
        _pop("inp", "input", (2, 5, 5)),
        _pop("lif", "lif", (3, 5, 5), du=4095, dv=2048, vth=40, bias_mant=rng.integers(-60, 60, 75), bias_exp=6),
        _pop("out", "integrator", (4,), du=4095, dv=0, vth=131071, bias_mant=rng.integers(-50, 50, 4), bias_exp=6),
    )
    syns = (
        Synapse("conv", "inp", "lif", "conv", _even(rng, -40, 60, (3, 2, 3, 3)), graded=True,
                attrs=dict(stride=1, padding=1, groups=1)),
        Synapse("fc", "lif", "out", "dense", _even(rng, -120, 120, (4, 75)), weight_exp=1),
    )
    return IntNet(pops, syns, (), T, {"mode": "repeat"}, {"scale": 1.0})


def chain_inputs(seed: int = 0, B: int = 10) -> np.ndarray:
    return np.random.default_rng(100 + seed).integers(0, 16, (B, 2, 5, 5))


def _ones_sumtokens(C: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C,H,W) -> (C,1,1): row c sums the N tokens of channel c."""
    rows = np.repeat(np.arange(C), N)
    cols = np.arange(C * N)
    return rows, cols, np.ones(C * N, np.int64)


def _ones_broadcast(C: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C,1,1) -> (C,H,W): every token of channel c copies input c."""
    rows = np.arange(C * N)
    cols = np.repeat(np.arange(C), N)
    return rows, cols, np.ones(C * N, np.int64)


def mini_sdt_net(seed: int = 0, T: int = 4) -> IntNet:
    """The SDT's structure in miniature (one of everything the quantiser emits).

    stem LIF on a graded conv; binary max-pool = OR gate; a real-valued max-pool relay (``bn3``) on currents; its
    output as a graded direct edge (lif3, residual into ``first``) and as a graded synapse (into ``mlp``); q/k/v LIFs;
    K AND V gate; sum over tokens into a low-threshold LIF; broadcast AND Q; a residual LIF (``mlp``) whose currents come
    from synapses at depths 8 (proj), 4 (rpe, bn3 graded); an integrator head. Lava path depths differ by up to 4 hops,
    so the builder must add delays at ``first``, ``qkv`` and ``mlp``.
    """
    rng = np.random.default_rng(seed)
    C = 4
    lif = dict(du=4095, dv=2048)
    pops = (
        _pop("inp", "input", (2, 6, 6)),
        _pop("stem", "lif", (C, 6, 6), **lif, vth=500, bias_mant=rng.integers(-40, 40, C * 36), bias_exp=6),
        _pop("pool_or", "gate", (C, 3, 3), du=4095, dv=0, vth=0),
        _pop("bn3", "maxpool", (C, 2, 2), attrs=dict(kernel=3, stride=2, padding=1, in_shape=[C, 3, 3])),
        _pop("lif3", "lif", (C, 2, 2), **lif, vth=120, bias_mant=rng.integers(-20, 40, C * 4), bias_exp=6),
        _pop("first", "lif", (C, 2, 2), **lif, vth=150, bias_mant=rng.integers(-30, 30, C * 4), bias_exp=6),
        _pop("q", "lif", (C, 2, 2), **lif, vth=30, bias_mant=rng.integers(-20, 40, C * 4), bias_exp=6),
        _pop("k", "lif", (C, 2, 2), **lif, vth=30, bias_mant=rng.integers(-20, 40, C * 4), bias_exp=6),
        _pop("v", "lif", (C, 2, 2), **lif, vth=30, bias_mant=rng.integers(-20, 40, C * 4), bias_exp=6),
        _pop("kv", "gate", (C, 2, 2), du=4095, dv=0, vth=1),
        _pop("attn", "lif", (C, 1, 1), **lif, vth=0),  # theta-0.5-like: fires on v > 0 with integer counts
        _pop("qkv", "gate", (C, 2, 2), du=4095, dv=0, vth=1),
        _pop("mlp", "lif", (2 * C, 2, 2), **lif, vth=200, bias_mant=rng.integers(-30, 50, 2 * C * 4), bias_exp=6),
        _pop("head", "integrator", (3,), du=4095, dv=0, vth=131071, bias_mant=rng.integers(-100, 100, 3),
             bias_exp=6),
    )
    syns = (
        Synapse("stem_conv", "inp", "stem", "conv", _even(rng, -40, 40, (C, 2, 3, 3)), graded=True,
                attrs=dict(stride=1, padding=1)),
        Synapse("pool_sum", "stem", "pool_or", "conv", np.ones((C, 1, 3, 3), np.int64),
                attrs=dict(stride=2, padding=1, groups=C)),
        Synapse("conv3", "pool_or", "bn3", "conv", _even(rng, -120, 120, (C, C, 1, 1)), attrs=dict(stride=1)),
        Synapse("rpe", "lif3", "first", "conv", _even(rng, -80, 80, (C, C, 3, 3)), attrs=dict(padding=1)),
        Synapse("q_fc", "first", "q", "dense", _even(rng, -80, 80, (C * 4, C * 4))),
        Synapse("k_fc", "first", "k", "conv", _even(rng, -80, 80, (C, C, 1, 1))),
        Synapse("v_fc", "first", "v", "conv", _even(rng, -80, 80, (C, C, 1, 1)), weight_exp=-1),
        Synapse("sum_tokens", "kv", "attn", "sparse", _ones_sumtokens(C, 4), attrs=dict(shape=[C, C * 4])),
        Synapse("bcast", "attn", "qkv", "sparse", _ones_broadcast(C, 4), attrs=dict(shape=[C * 4, C])),
        Synapse("proj", "qkv", "mlp", "conv", _even(rng, -80, 80, (2 * C, C, 1, 1))),
        Synapse("rpe_res", "lif3", "mlp", "conv", _even(rng, -30, 30, (2 * C, C, 3, 3)), attrs=dict(padding=1)),
        Synapse("bn3_res", "bn3", "mlp", "dense", _even(rng, -2, 2, (2 * C * 4, C * 4)), graded=True),
        Synapse("head_fc", "mlp", "head", "dense", _even(rng, -100, 100, (3, 2 * C * 4)), weight_exp=2),
    )
    edges = (("bn3", "lif3"), ("bn3", "first"), ("k", "kv"), ("v", "kv"), ("q", "qkv"))
    return IntNet(pops, syns, edges, T, {"mode": "repeat"}, {"scale": 1.0})


def mini_sdt_inputs(seed: int = 0, B: int = 10) -> np.ndarray:
    return np.random.default_rng(200 + seed).integers(0, 8, (B, 2, 6, 6))


# ------------------------------------------------------------------------------------- literal step reference


def _two(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _naive_conv(x: np.ndarray, w: np.ndarray, stride, padding, groups: int) -> np.ndarray:
    """Cross-correlation of one (C,H,W) tensor by explicit loops (zero padding)."""
    cout, cin_g, kh, kw = w.shape
    c, h, wd = x.shape
    (sh, sw), (ph, pw) = _two(stride), _two(padding)
    xp = np.zeros((c, h + 2 * ph, wd + 2 * pw), np.int64)
    xp[:, ph:ph + h, pw:pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((cout, ho, wo), np.int64)
    per_group = cout // groups
    for co in range(cout):
        g = co // per_group
        for oy in range(ho):
            for ox in range(wo):
                patch = xp[g * cin_g:(g + 1) * cin_g, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw]
                out[co, oy, ox] = int((patch * w[co]).sum())
    return out


def _naive_maxpool(a: np.ndarray, k, s, p) -> np.ndarray:
    c, h, w = a.shape
    (kh, kw), (sh, sw), (ph, pw) = _two(k), _two(s), _two(p)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((c, ho, wo), np.int64)
    for ch in range(c):
        for oy in range(ho):
            for ox in range(wo):
                ys = [y for y in range(oy * sh - ph, oy * sh - ph + kh) if 0 <= y < h]  # -inf padding: skip
                xs = [x for x in range(ox * sw - pw, ox * sw - pw + kw) if 0 <= x < w]
                out[ch, oy, ox] = a[ch][np.ix_(ys, xs)].max()
    return out


def _syn_current(net: IntNet, s: Synapse, x: np.ndarray) -> np.ndarray:
    """Flat current of one synapse for one sample's flat source output ``x`` (int64)."""
    src = net.population(s.src)
    x = x if s.graded else (x != 0).astype(np.int64)
    if s.kind == "conv":
        acc = _naive_conv(x.reshape(src.shape), np.asarray(s.weight, np.int64), s.attrs.get("stride", 1),
                          s.attrs.get("padding", 0), int(s.attrs.get("groups", 1))).ravel()
    elif s.kind == "dense":
        acc = np.asarray(s.weight, np.int64) @ x
    else:
        rows, cols, vals = s.weight
        acc = np.zeros(int(s.attrs["shape"][0]), np.int64)
        np.add.at(acc, np.asarray(rows), np.asarray(vals, np.int64) * x[np.asarray(cols)])
    e = s.weight_exp
    return acc << e if e >= 0 else acc >> -e


def step_reference(net: IntNet, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """The aligned schedule for ONE sample, literally: returns outputs [T, *shape], final v per integrator, overflows."""
    T = net.T
    state = {p.name: (np.zeros(p.size, np.int64), np.zeros(p.size, np.int64)) for p in net.populations}
    outs = {p.name: np.zeros((T, p.size), np.int64) for p in net.populations}
    overflow = 0
    from deploy.fixed_point import OverflowCounters

    c = OverflowCounters()
    for t in range(T):
        for p in net.populations:
            if p.kind == "input":
                outs[p.name][t] = (x if x.ndim == len(p.shape) else x[t]).ravel()
                continue
            n_a = int(np.prod(p.attrs["in_shape"])) if p.kind == "maxpool" else p.size
            a = np.zeros(n_a, np.int64)
            for s in net.synapses_into(p.name):
                a += _syn_current(net, s, outs[s.src][t])
            for src in net.edges_into(p.name):
                a += outs[src][t]
            bias = 0 if p.bias_mant is None else p.bias_mant
            u, v = state[p.name]
            if p.kind == "relay":
                outs[p.name][t] = a
                continue
            if p.kind == "maxpool":
                k = p.attrs.get("kernel", p.attrs.get("kernel_size"))
                st, pa = p.attrs.get("stride", k), p.attrs.get("padding", 0)
                outs[p.name][t] = _naive_maxpool(a.reshape(p.attrs["in_shape"]), k, st, pa).ravel()
                continue
            if p.kind == "gate":
                u, v, s_ = lifreset_step(u, v, a, t + 1, 1, 0, p.du, p.dv, p.vth, bias, p.bias_exp, counters=c)
            else:
                u, v, s_ = lif_step(u, v, a, p.du, p.dv, p.vth, bias, p.bias_exp, counters=c)
            state[p.name] = (u, v)
            outs[p.name][t] = s_
    final_v = {p.name: state[p.name][1] for p in net.populations if p.kind == "integrator"}
    overflow = c.total
    return outs, final_v, overflow


# ------------------------------------------------------------------------------------------------------ tests


def _compare_with_reference(net: IntNet, xs: np.ndarray) -> None:
    res = run_intnet(net, xs, record="all")
    assert res.overflow.total == 0
    active = {p.name: 0 for p in net.populations}
    for b in range(xs.shape[0]):
        outs, final_v, overflow = step_reference(net, xs[b])
        assert overflow == 0
        for p in net.populations:
            got = res.outputs[p.name][:, b].reshape(net.T, -1).astype(np.int64)
            np.testing.assert_array_equal(got, outs[p.name], err_msg=f"population {p.name}, sample {b}")
            assert res.spike_counts[p.name][b] == np.count_nonzero(outs[p.name])
            active[p.name] += int(np.count_nonzero(outs[p.name]))
        for name, v in final_v.items():
            np.testing.assert_array_equal(res.final_v[name][b].ravel(), v)
    # the comparison is only meaningful if every population does something, and not everything
    for p in net.populations:
        total = xs.shape[0] * net.T * p.size
        if p.kind == "integrator":  # never fires by design; its v must carry information
            assert np.unique(res.final_v[p.name]).size > 1
            continue
        assert 0 < active[p.name], f"{p.name} never active: the test would not exercise it"
        if p.kind in ("lif", "gate") and (net.synapses_into(p.name) or net.edges_into(p.name)):  # not a constant
            assert active[p.name] < total, f"{p.name} always active"


def test_chain_matches_step_reference():
    _compare_with_reference(chain_net(), chain_inputs())


def test_mini_sdt_matches_step_reference():
    _compare_with_reference(mini_sdt_net(), mini_sdt_inputs())


def test_frames_input_matches_step_reference():
    net = chain_net(seed=3)
    net = IntNet(net.populations, net.synapses, net.edges, net.T, {"mode": "frames"}, net.decode)
    xs = np.random.default_rng(7).integers(0, 16, (4, net.T, 2, 5, 5))
    _compare_with_reference(net, xs)


def test_batch_equals_per_sample_and_is_deterministic():
    net, xs = mini_sdt_net(seed=1), mini_sdt_inputs(seed=1, B=6)
    with Executor(net, threads=2) as ex:
        full = ex.run(xs, record="all")
        again = ex.run(xs, record="all")
        for b in range(xs.shape[0]):
            one = ex.run(xs[b:b + 1], record="all")
            for name, arr in full.outputs.items():
                np.testing.assert_array_equal(arr[:, b:b + 1], one.outputs[name])
            np.testing.assert_array_equal(full.logits_int[b:b + 1], one.logits_int)
    for name, arr in full.outputs.items():
        np.testing.assert_array_equal(arr, again.outputs[name])
    single_thread = run_intnet(net, xs, record="all", threads=1)
    np.testing.assert_array_equal(single_thread.logits_int, full.logits_int)


def test_per_channel_exponent_groups_match_step_reference():
    """The quantiser splits a conv into synapses with disjoint output channels and their own exponents; the executor
    merges those into one kernel with per-channel exponents. Overlapping ones must stay separate (floors differ)."""
    rng = np.random.default_rng(11)
    C = 6
    pops = (_pop("inp", "input", (2, 5, 5)),
            _pop("a", "lif", (C, 5, 5), du=4095, dv=2048, vth=30, bias_mant=rng.integers(-40, 40, C * 25), bias_exp=6),
            _pop("b", "lif", (C, 5, 5), du=4095, dv=2048, vth=20))
    syns = []
    for g, (chans, e) in enumerate([((0, 1), -2), ((2, 3, 4), 1), ((5,), 0)]):
        w = np.zeros((C, 2, 3, 3), np.int64)
        w[list(chans)] = _even(rng, -60, 60, (len(chans), 2, 3, 3))
        syns.append(Synapse(f"in@{g}", "inp", "a", "conv", w, weight_exp=e, graded=True, attrs=dict(padding=1)))
    for g, (chans, e) in enumerate([((0, 1, 2), 0), ((1, 2, 3, 4, 5), -1), ((3,), 2)]):  # overlapping rows
        w = np.zeros((C, C, 1, 1), np.int64)
        w[list(chans)] = _even(rng, -40, 40, (len(chans), C, 1, 1))
        syns.append(Synapse(f"ab@{g}", "a", "b", "conv", w, weight_exp=e))
    net = IntNet(pops, tuple(syns), (), 4, {}, {})
    ex = Executor(net)
    merged = {tuple(s.names) for item in ex.plan for s in item.syns}
    assert ("in@0", "in@1", "in@2") in merged  # disjoint: one kernel
    assert ("ab@0", "ab@2") in merged and ("ab@1",) in merged  # overlapping ab@1 kept apart
    _compare_with_reference(net, np.random.default_rng(4).integers(0, 16, (5, 2, 5, 5)))


def test_every_kernel_path_matches_step_reference(monkeypatch):
    """int8 GEMMs (3x3 stride 2 / 2x2 stride 2 / 1x1 convs, dense), float convs (graded, grouped), float dense (odd
    weights above 127 do not fit int8), scipy sparse: all against the literal schedule."""
    import deploy.executor as exe

    monkeypatch.setattr(exe, "_INT8_GEMM", True)  # the int8 paths, also on CPUs where the executor avoids them
    rng = np.random.default_rng(21)
    lif = dict(du=4095, dv=2048)
    pops = (
        _pop("inp", "input", (3, 8, 8)),
        _pop("s0", "lif", (6, 8, 8), **lif, vth=200, bias_mant=rng.integers(-30, 30, 6 * 64), bias_exp=6),
        _pop("s1", "lif", (8, 4, 4), **lif, vth=40, bias_mant=rng.integers(-30, 30, 8 * 16), bias_exp=6),
        _pop("s2", "lif", (8, 2, 2), **lif, vth=40, bias_mant=rng.integers(-30, 40, 32), bias_exp=6),
        _pop("g", "gate", (8, 2, 2), du=4095, dv=0, vth=0),
        _pop("s3", "lif", (5, 2, 2), **lif, vth=60),
        _pop("o", "integrator", (4,), du=4095, dv=0, vth=131071),
    )
    odd = (rng.integers(64, 125, (20, 32)) * 2 + 1) * rng.choice([0, 1], (20, 32), p=[0.8, 0.2])  # odd, > 127
    syns = (
        Synapse("c0", "inp", "s0", "conv", _even(rng, -40, 40, (6, 3, 3, 3)), graded=True, attrs=dict(padding=1)),
        Synapse("c1", "s0", "s1", "conv", _even(rng, -80, 80, (8, 6, 3, 3)), attrs=dict(stride=2, padding=1)),
        # a second weight term of the same conv (overlapping rows, own exponent): shares the im2col with c1
        Synapse("c1b", "s0", "s1", "conv", _even(rng, -120, 120, (8, 6, 3, 3)), weight_exp=-3,
                attrs=dict(stride=2, padding=1)),
        Synapse("c2", "s1", "s2", "conv", _even(rng, -100, 100, (8, 8, 2, 2)), attrs=dict(stride=2), weight_exp=1),
        Synapse("c3", "s2", "s3", "conv", _even(rng, -120, 120, (5, 8, 1, 1)), weight_exp=-1),
        Synapse("dw", "s2", "g", "conv", np.ones((8, 1, 3, 3), np.int64), attrs=dict(padding=1, groups=8)),
        Synapse("odd", "g", "s3", "dense", odd, weight_exp=-3),
        Synapse("fc", "s3", "o", "dense", _even(rng, -100, 100, (4, 20))),
        Synapse("sp", "s2", "o", "sparse", (np.array([0, 1, 3]), np.array([5, 17, 31]), np.array([8, -10, 12])),
                attrs=dict(shape=[4, 32])),
    )
    net = IntNet(pops, syns, (), 3, {}, {})
    modes = {s.names[0]: s.mode for item in Executor(net).plan for s in item.syns}
    assert modes == {"c0": "float", "c1": "int8", "c1b": "int8", "c2": "int8", "c3": "int8", "dw": "float",
                     "odd": "float", "fc": "int8", "sp": "sparse"}
    _compare_with_reference(net, np.random.default_rng(8).integers(0, 10, (6, 3, 8, 8)))


def test_always_on_bias_source_and_batch_of_one(monkeypatch):
    """A (1,) always-on gate feeding per-neuron biases through a dense synapse (as the quantiser emits), batch size 1:
    size-1 dimensions must not confuse the int8 GEMM."""
    import deploy.executor as exe

    monkeypatch.setattr(exe, "_INT8_GEMM", True)  # the int8 path, also on CPUs where the executor avoids it
    rng = np.random.default_rng(3)
    pops = (_pop("inp", "input", (2, 4, 4)), _pop("on", "gate", (1,), du=4095, dv=0, vth=0, bias_mant=np.array([1])),
            _pop("l", "lif", (4, 4, 4), du=4095, dv=2048, vth=300),
            _pop("o", "integrator", (3,), du=4095, dv=0, vth=131071))
    syns = (Synapse("c", "inp", "l", "conv", _even(rng, -40, 40, (4, 2, 3, 3)), graded=True, attrs=dict(padding=1)),
            Synapse("b", "on", "l", "dense", _even(rng, -250, 250, (64, 1)), weight_exp=1),
            Synapse("b2", "on", "o", "dense", np.array([[6], [-8], [100]]), weight_exp=3),
            Synapse("fc", "l", "o", "dense", _even(rng, -60, 60, (3, 64))))
    net = IntNet(pops, syns, (), 3, {}, {})
    assert {s.names[0]: s.mode for i in Executor(net).plan for s in i.syns}["b"] == "int8"
    xs = np.random.default_rng(5).integers(0, 8, (2, 2, 4, 4))
    _compare_with_reference(net, xs[:1])
    _compare_with_reference(net, xs)


def test_quantised_tiny_sdt_matches_step_reference():
    """The real quantiser's tiny SDT (weight terms, per-term exponents, always-on bias source, relay, gates)."""
    from deploy.encoding import encode_input
    from deploy.quantize import quantize
    from export.from_model import build_graph
    from tests.conftest import tiny_model

    g = torch.Generator().manual_seed(1)
    net = quantize(build_graph(tiny_model()), calib=torch.rand(8, 3, 16, 16, generator=g))
    xs = encode_input(net, torch.rand(2, 3, 16, 16, generator=g))
    _compare_with_reference(net, xs)


def test_record_shapes_and_dtypes():
    net = mini_sdt_net()
    res = run_intnet(net, mini_sdt_inputs(B=3), record={"stem", "bn3"})
    assert set(res.outputs) == {"stem", "bn3"}
    assert res.outputs["stem"].shape == (4, 3, 4, 6, 6) and res.outputs["stem"].dtype == bool
    assert res.outputs["bn3"].shape == (4, 3, 4, 2, 2) and res.outputs["bn3"].dtype == np.int64
    assert res.logits_int.shape == (3, 3)
    assert set(res.spike_counts) == {p.name for p in net.populations}
    with pytest.raises(KeyError):
        run_intnet(net, mini_sdt_inputs(B=1), record={"nope"})


def test_on_record_hands_out_the_recorded_outputs_in_the_executor_layout():
    """``on_record`` passes each recorded population as computed, ``[T, B, n]`` in the executor's own order (channels
    fastest where ``channels_last``): the same values ``record`` returns, after the layout change."""
    net = mini_sdt_net()
    x = mini_sdt_inputs(B=3)
    names = {p.name for p in net.populations}
    ref = run_intnet(net, x, record="all").outputs
    seen: dict[str, tuple[np.ndarray, bool]] = {}
    res = Executor(net).run(x, record="all", on_record=lambda n, a, cl: seen.setdefault(n, (a.copy(), cl)))
    assert res.outputs == {} and set(seen) == names
    assert any(cl for _, cl in seen.values())  # the conv populations run channels-last
    for name, (a, channels_last) in seen.items():
        shape = net.population(name).shape
        assert a.shape == (4, 3, int(np.prod(shape)))
        if channels_last:
            a = a.reshape(4, 3, *shape[1:], shape[0]).transpose(0, 1, 4, 2, 3)
        np.testing.assert_array_equal(a.reshape(ref[name].shape).astype(ref[name].dtype), ref[name], err_msg=name)


def test_maxpool_pads_with_minus_infinity():
    """A relay over all-negative currents must not see the zero padding (PyTorch max-pool semantics)."""
    pops = (_pop("inp", "input", (1, 3, 3)),
            _pop("mp", "maxpool", (1, 2, 2), attrs=dict(kernel=3, stride=2, padding=1)))
    syns = (Synapse("neg", "inp", "mp", "conv", np.full((1, 1, 1, 1), -2), graded=True),)
    net = IntNet(pops, syns, (), 2, {}, {})
    x = np.arange(1, 10).reshape(1, 1, 3, 3)
    res = run_intnet(net, x, record={"mp"})
    assert res.outputs["mp"][0, 0, 0].tolist() == [[-2, -4], [-8, -10]]  # zero padding would give 0s


def test_binary_synapse_from_graded_source_sees_spikes():
    """num_message_bits = 0: any non-zero graded value counts as 1 (Lava casts to bool)."""
    pops = (_pop("inp", "input", (3,)), _pop("g", "integrator", (1,), du=4095, dv=0, vth=131071))
    syns = (Synapse("s", "inp", "g", "dense", np.array([[10, 20, 40]]), graded=False),)
    net = IntNet(pops, syns, (), 3, {}, {})
    res = run_intnet(net, np.array([[5, 0, -7]]))
    assert res.logits_int.tolist() == [[3 * (10 + 40) * 64]]


def test_overflow_counters_fire_on_a_24_bit_overflowing_layer():
    """Worst-case current (254 * 600 = 152400 > 2**17, so a << 6 > 2**23) wraps u; the counters must say so."""
    n_in = 600
    pops = (_pop("inp", "input", (n_in,)), _pop("big", "lif", (2,), du=4095, dv=0, vth=131071),
            _pop("out", "integrator", (2,), du=4095, dv=0, vth=131071))
    w = np.full((2, n_in), 254)
    w[1, :] = 2  # the second neuron stays small
    syns = (Synapse("s", "inp", "big", "dense", w), Synapse("o", "big", "out", "dense", np.eye(2, dtype=int)))
    net = IntNet(pops, syns, (), 2, {}, {})
    bounds = current_bounds(net, input_max=1)
    assert bounds["big"] == 254 * n_in and (bounds["big"] << 6) > 1 << 23
    res = run_intnet(net, np.ones((1, n_in), np.int64))
    assert res.overflow_by_population["big"].u_wraps == 2  # neuron 0 at both steps
    assert res.overflow.total > 0
    with pytest.raises(AssertionError, match="u wrap"):
        res.overflow.assert_none()
    quiet = run_intnet(net, np.zeros((1, n_in), np.int64))  # same net, sane input: nothing wraps
    quiet.overflow.assert_none()


def test_overflow_checks_are_skipped_only_where_overflow_is_proven_impossible(monkeypatch):
    """The executor skips the per-step wrap/clip checks of a population only if a worst case over ANY input proves
    they cannot fire: true for every population the quantiser makes, false for the crafted overflowing layer; and
    forcing every check on changes nothing on the quantised net."""
    from deploy.encoding import encode_input
    from deploy.quantize import quantize
    from export.from_model import build_graph
    from tests.conftest import tiny_model

    loud = IntNet((_pop("inp", "input", (600,)), _pop("big", "lif", (2,), du=4095, dv=0, vth=131071)),
                  (Synapse("s", "inp", "big", "dense", np.full((2, 600), 254), graded=True),), (), 2, {}, {})
    with Executor(loud) as ex:  # graded input 0..1: 254 * 600 << 6 wraps; all-zero input cannot
        assert ex.proven_safe(1) == frozenset() and ex.proven_safe(0) == {"big"}

    g = torch.Generator().manual_seed(3)
    net = quantize(build_graph(tiny_model()), calib=torch.rand(8, 3, 16, 16, generator=g))
    x = encode_input(net, torch.rand(4, 3, 16, 16, generator=g))
    with Executor(net) as ex:
        safe = ex.proven_safe(int(net.encoding["max"]))
        assert safe == {p.name for p in net.populations if p.kind in ("lif", "gate", "integrator")}
        # tau = 2 LIFs and the relays also take the int32 path (checked against the step reference elsewhere)
        assert ex._fast32[(0, int(net.encoding["max"]))] == {p.name for p in net.populations
                                                         if p.kind in ("lif", "maxpool", "relay")}
        fast = ex.run(x, record="all")
        monkeypatch.setattr(Executor, "proven_safe", lambda self, hi, lo=0: frozenset())
        slow = ex.run(x, record="all")
    assert slow.overflow.total == 0
    for k in fast.outputs:
        np.testing.assert_array_equal(fast.outputs[k], slow.outputs[k])
    np.testing.assert_array_equal(fast.logits_int, slow.logits_int)



def test_negative_graded_inputs_are_bounded_by_their_own_range():
    """a = 100*x0 - 100*x1 reaches 200,000 (u = a << 6 wraps) for x = (1000, -1000); a bound that assumed inputs in
    0..max|x| would say 100,000 (no wrap) and skip the check. The wrap must be counted."""
    net = IntNet((_pop("inp", "input", (2,)), _pop("n", "lif", (1,), du=4095, dv=2048, vth=131071)),
                 (Synapse("s", "inp", "n", "dense", np.array([[100, -100]]), graded=True),), (), 1, {}, {})
    res = run_intnet(net, np.array([[1000, -1000]], np.int64))
    assert res.overflow_by_population["n"].u_wraps == 1
    quiet = run_intnet(net, np.array([[600, 0]], np.int64))  # 60,000 << 6 < 2**23: proven, nothing to count
    quiet.overflow.assert_none()


def test_exact_beyond_float32_and_float64_ranges():
    """Graded sums above 2**24 (float64 path) and 2**53 (scipy int64 path) stay exact: a 1x1 max-pool relay passes the
    summed current through unchanged, so its output is the raw sum itself."""
    pops = (_pop("inp", "input", (1, 2, 2)),
            _pop("relay", "maxpool", (1, 2, 2), attrs=dict(kernel=1, stride=1, padding=0)))
    syns = (Synapse("c", "inp", "relay", "conv", np.full((1, 1, 1, 1), 254), graded=True),)
    net = IntNet(pops, syns, (), 2, {}, {})
    for big in ((1 << 24) + 1, (1 << 52) + 3):
        x = np.array([[[[big, 3], [-big - 2, 1]]]], dtype=np.int64)
        res = run_intnet(net, x, record={"relay"})
        np.testing.assert_array_equal(res.outputs["relay"][0, 0, 0], x[0, 0] * 254)
        assert float(np.float32(big * 254)) != big * 254  # float32 alone would have rounded it


def test_weights_lava_would_change_are_refused():
    net = chain_net()
    odd = Synapse("conv", "inp", "lif", "conv", np.full((3, 2, 3, 3), 3) * np.array([1, -1, 1])[:, None, None, None],
                  graded=True, attrs=dict(padding=1))
    bad = IntNet(net.populations, (odd, net.synapses[1]), (), net.T, {}, {})
    with pytest.raises(ValueError, match="not representable"):
        Executor(bad)


def test_conv_to_sparse_matches_torch():
    rng = np.random.default_rng(5)
    for (cin, cout, k, s, p, g) in [(4, 6, 3, 1, 1, 1), (4, 4, 3, 2, 1, 4), (6, 4, 2, 2, 0, 2), (3, 5, 1, 1, 0, 1)]:
        w = rng.integers(-5, 6, (cout, cin // g, k, k))
        x = rng.integers(-3, 4, (cin, 7, 7))
        m = conv_to_sparse(w, (cin, 7, 7), s, p, 1, g)
        ref = torch.nn.functional.conv2d(torch.tensor(x[None], dtype=torch.float64),
                                         torch.tensor(w, dtype=torch.float64), stride=s, padding=p, groups=g)
        np.testing.assert_array_equal(m @ x.ravel(), ref.numpy().ravel().astype(np.int64))


def test_shape_errors_are_reported():
    net = chain_net()
    wrong = Synapse("fc", "lif", "out", "dense", np.zeros((4, 74), np.int64))
    with pytest.raises(ValueError, match="74|75"):
        Executor(IntNet(net.populations, (net.synapses[0], wrong), (), net.T, {}, {}))
    with pytest.raises(ValueError, match="input must be"):
        run_intnet(net, np.zeros((2, 2, 4, 5), np.int64))


@pytest.mark.parametrize("int8", [True, False], ids=["int8-gemm", "float-gemm"])
def test_both_spike_gemm_paths_are_bit_exact(int8, monkeypatch):
    """The int8 GEMM (CPUs with int8 dot products) and the float32/float64 GEMM (chosen where torch's int8 GEMM is
    slow) give the step reference's results exactly, on the real quantiser's tiny SDT."""
    import deploy.executor as exe
    from deploy.encoding import encode_input
    from deploy.quantize import quantize
    from export.from_model import build_graph
    from tests.conftest import tiny_model

    monkeypatch.setattr(exe, "_INT8_GEMM", int8)
    g = torch.Generator().manual_seed(3)
    net = quantize(build_graph(tiny_model(seed=3)), calib=torch.rand(8, 3, 16, 16, generator=g))
    ex = exe.Executor(net)
    modes = {s.mode for item in ex.plan for s in item.syns}
    assert ("int8" in modes) == int8
    _compare_with_reference(net, encode_input(net, torch.rand(3, 3, 16, 16, generator=g)))
