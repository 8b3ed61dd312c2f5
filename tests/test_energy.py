"""deploy.energy: hand-counted graphs, exact == analytic where there are no borders, the rate-once guard, JSON totals.

The counter is a pure function of (graph, node tensors), so most tests feed hand-written spike tensors to hand-built
graphs; the model tests run the float graph executor on the tiny SDT of conftest.
"""
from __future__ import annotations

import json
import os
import stat
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deploy.energy import EnergyCounter, analyze, paper_vs_exact, write_report
from deploy.energy.analytic import attention_blocks, paper_sdsa_ops
from deploy.energy.constants import CONSTANTS, ByteWidths, sram_pj_per_byte
from deploy.energy.counter import conv_fanout
from deploy.energy.tiers import TIERS, break_even, paper_energy, price
from export.from_model import build_graph
from export.graph import Graph, Node
from export.run_graph import run_graph
from sdt.errors import UserError

from .conftest import tiny_model

LIF = {"v_threshold": 1.0, "decay": 0.5, "v_reset": 0.0}


def conv(name: str, x: str, w: np.ndarray, out_hw: tuple[int, int], stride=1, padding=1, groups=1,
         bn: bool = False, bias: np.ndarray | None = None) -> Node:
    params = {"weight": np.asarray(w, np.float32)}
    if bias is not None:
        params["bias"] = np.asarray(bias, np.float32)
    if bn:
        params["bn_scale"] = np.ones(w.shape[0], np.float32)
        params["bn_shift"] = np.zeros(w.shape[0], np.float32)
    return Node(name, "conv2d", (x,), (w.shape[0], *out_hw), params,
                {"stride": (stride, stride), "padding": (padding, padding), "dilation": (1, 1), "groups": groups})


def graph(*nodes: Node, T: int = 1, encoding: str = "repeat", **meta) -> Graph:
    last = nodes[-1]
    return Graph((*nodes, Node("output", "output", (last.name,), last.shape, attrs={"reduce": "mean"})), T=T,
                 encoding=encoding, metadata=meta)


def spikes(*steps: list) -> torch.Tensor:
    """[T, B=1, *shape] from per-step nested lists."""
    return torch.tensor(steps, dtype=torch.float32).unsqueeze(1)


# ------------------------------------------------------------------------------------------- hand-counted graphs

def padded_conv_graph(w_b: np.ndarray) -> Graph:
    """input (1,4,4) -> 1x1 conv -> lif_a -> 3x3 conv, padding 1 (weights w_b) -> lif_b."""
    return graph(
        Node("input", "input", (), (1, 4, 4)),
        conv("conv_a", "input", np.ones((1, 1, 1, 1)), (4, 4), padding=0),
        Node("lif_a", "lif", ("conv_a",), (1, 4, 4), attrs=LIF),
        conv("conv_b", "lif_a", w_b, (4, 4)),
        Node("lif_b", "lif", ("conv_b",), (2, 4, 4), attrs=LIF), T=2)


def test_padded_3x3_conv_hand_count():
    w = np.ones((2, 1, 3, 3))
    w[0, 0, 0, 0] = 0.0  # output channel 0 never uses its top-left tap
    g = padded_conv_graph(w)
    a = np.zeros((2, 4, 4))
    a[0, 0, 0] = a[0, 1, 1] = 1  # step 0: a corner and an interior position
    a[1, 0, 2] = 1  # step 1: a top-edge position
    c = EnergyCounter(g).count({"input": torch.full((2, 1, 1, 4, 4), 0.5), "lif_a": torch.tensor(a[:, None, None]),
                                "lif_b": torch.zeros(2, 1, 2, 4, 4)})
    nb = c.nodes["conv_b"]
    # a corner reaches 2x2 output positions, an edge 2x3, the interior 3x3; times 2 output channels
    assert nb.q["ac"][:, 0].tolist() == [(4 + 9) * 2, 6 * 2]
    # the top-left tap of (y, x) is used by output (y+1, x+1): it exists for all three spikes -> one target less each
    assert nb.q["ac_eff"][:, 0].tolist() == [(4 + 9) * 2 - 2, 6 * 2 - 1]
    assert nb.q["mac"].sum() == 0 and nb.kind == "ac"
    # NeuroBench Dense (every input active): 4 corners x 4 + 8 edges x 6 + 4 interior x 9 = 100 per output channel
    assert nb.q["dense"][:, 0].tolist() == [200, 200]
    assert c.nodes["lif_a"].q["spikes"][:, 0].tolist() == [2, 1]
    assert c.nodes["lif_b"].q["neuron_updates"][:, 0].tolist() == [32, 32]
    # the 1x1 conv on the static input: every non-zero pixel x 1 target, evaluated once (step 0)
    assert c.nodes["conv_a"].q["mac"][:, 0].tolist() == [16, 0] and c.nodes["conv_a"].kind == "mac"
    # a binary input (e.g. 0/1 event frames) makes the first layer an AC layer, as NeuroBench decides it
    binary = EnergyCounter(g).count({"input": torch.ones(2, 1, 1, 4, 4), "lif_a": torch.tensor(a[:, None, None]),
                                     "lif_b": torch.zeros(2, 1, 2, 4, 4)})
    assert binary.nodes["conv_a"].q["ac"][:, 0].tolist() == [16, 0] and binary.nodes["conv_a"].total("mac") == 0
    # memory: one 1-byte weight and a 3+3-byte accumulator read/write per synaptic event
    assert nb.q["weight_bytes"][:, 0].tolist() == [26, 12]
    assert nb.q["accum_bytes"][:, 0].tolist() == [26 * 6, 12 * 6]
    assert c.nodes["lif_b"].q["membrane_bytes"][0, 0] == 32 * 6


def test_padded_conv_paper_difference_is_the_border():
    """The paper's fr x T x FLOPs charges 9 targets per spike; the corner/edge spikes above have 4 and 6."""
    g = padded_conv_graph(np.ones((2, 1, 3, 3)))
    a = np.zeros((2, 1, 1, 4, 4))
    a[0, 0, 0, 0, 0] = a[1, 0, 0, 0, 2] = 1
    counter = EnergyCounter(g)
    counts = counter.count({"input": torch.ones(2, 1, 1, 4, 4), "lif_a": torch.tensor(a),
                            "lif_b": torch.zeros(2, 1, 2, 4, 4)})
    lc = {x.name: x for x in paper_vs_exact(counter, counts)}["conv_b"]
    assert lc.flops == 9 * 16 * 2 and lc.flops_valid == 200
    assert lc.exact == (4 + 6) * 2
    assert lc.paper == pytest.approx(2 / 32 * 2 * 288)  # fr = 2 spikes / (16 neurons x 2 steps), T = 2
    assert sum(lc.parts.values()) == pytest.approx(lc.paper - lc.exact, abs=1e-9)
    assert lc.parts["rate pairing"] == 0


def test_sdsa_block_hand_count():
    """One SDSA block (C=2, 2x2 tokens, T=1) on hand-written Q/K/V; the AND/column sum/gate/mask follow from them."""
    C, H, W = 2, 2, 2
    eye = np.eye(C).reshape(C, C, 1, 1)
    nodes = [Node("input", "input", (), (C, H, W))]
    for n in "qkv":
        nodes += [conv(f"{n}_conv", "input", eye, (H, W), padding=0, bn=True),
                  Node(f"{n}_lif", "lif", (f"{n}_conv",), (C, H, W), attrs=LIF)]
    nodes += [Node("kv_before", "and", ("k_lif", "v_lif"), (C, H, W)),
              Node("attn.kv_sum", "sum_tokens", ("kv_before",), (C, 1, 1)),
              Node("kv", "lif", ("attn.kv_sum",), (C, 1, 1), attrs={**LIF, "v_threshold": 0.5}),
              Node("attn.kv_broadcast", "broadcast", ("kv",), (C, H, W), attrs={"grid": (H, W)}),
              Node("x_after_qkv", "and", ("q_lif", "attn.kv_broadcast"), (C, H, W)),
              conv("proj_conv", "x_after_qkv", np.ones((3, C, 1, 1)), (H, W), padding=0, bias=np.zeros(3))]
    g = graph(*nodes, num_heads=1)
    tok = lambda c0, c1: [np.reshape(c0, (H, W)).tolist(), np.reshape(c1, (H, W)).tolist()]  # noqa: E731
    q, k, v = tok([1, 0, 1, 0], [0, 0, 0, 1]), tok([1, 1, 0, 0], [0] * 4), tok([1, 0, 0, 0], [1] * 4)
    kv_before = tok([1, 0, 0, 0], [0] * 4)  # K AND V
    kv = [[[1.0]], [[0.0]]]  # column sums (1, 0) -> the 0.5-threshold LIF fires for channel 0 only
    mask = tok([1, 0, 1, 0], [0] * 4)  # Q AND broadcast(kv)
    t = {"input": torch.full((1, 1, C, H, W), 0.5), "q_lif": spikes(q), "k_lif": spikes(k), "v_lif": spikes(v),
         "kv_before": spikes(kv_before), "kv": spikes(kv), "x_after_qkv": spikes(mask)}
    counter = EnergyCounter(g)
    c = counter.count(t)
    n = {k_: {q_: float(a.sum()) for q_, a in nc.q.items()} for k_, nc in c.nodes.items()}
    assert c.nodes["kv_before"].kind == "and" and c.nodes["x_after_qkv"].kind == "mask"
    assert n["kv_before"]["in_events"] == 2 + 5  # one gate evaluation per incoming K or V spike
    assert n["kv_before"]["spikes"] == 1
    assert n["attn.kv_sum"]["colsum_adds"] == 1  # one add per K AND V spike
    assert n["kv"]["neuron_updates"] == 2 and n["kv"]["spikes"] == 1
    assert n["attn.kv_broadcast"]["spikes"] == 4  # channel 0's gate spike reaches its 4 tokens
    assert n["x_after_qkv"]["in_events"] == 3 + 4  # Q spikes + broadcast spikes
    assert n["x_after_qkv"]["spikes"] == 2
    assert n["proj_conv"]["ac"] == 2 * 3 and n["proj_conv"]["bias_adds"] == 3 * H * W
    for x in "qkv":  # the q/k/v convs see the static input: 8 non-zero pixels x 2 output channels, once
        assert n[f"{x}_conv"]["mac"] == 8 * 2
        assert n[f"{x}_conv"]["mac_eff"] == 8  # identity weights: one non-zero weight per input channel
    blocks = attention_blocks(g)
    assert len(blocks) == 1 and blocks[0].mask == "x_after_qkv" and blocks[0].tokens == 4
    # paper: T * N * D * (R_KV + R_Q) = 1 * 4 * 2 * (1/8 + 3/8)
    assert paper_sdsa_ops(counter, c, blocks[0]) == 4.0


# --------------------------------------------------------------------------- fan-out maps against brute force

@pytest.mark.parametrize("k,stride,padding,dilation,groups", [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 2, 2, 1, 2),
                                                              (3, 1, 2, 2, 1), (2, 2, 0, 1, 4), (1, 1, 0, 1, 1)])
def test_conv_counts_equal_neurobench_definition(k, stride, padding, dilation, groups):
    """NeuroBench's definition, implemented from its documentation: binarise inputs and weights, zero the bias, run the
    layer and sum (effective ops); all-ones inputs and weights give Dense. Our fan-out maps must agree for any
    spike pattern, stride, padding, dilation and groups."""
    rng = np.random.default_rng(k * 100 + stride * 10 + padding)
    cin, cout, h, w = 4, 8, 9, 7
    wt = rng.normal(size=(cout, cin // groups, k, k)) * (rng.random((cout, cin // groups, k, k)) < 0.6)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    node = Node("c", "conv2d", ("x",), (cout, ho, wo), {"weight": wt.astype(np.float32)},
                {"stride": (stride, stride), "padding": (padding, padding), "dilation": (dilation, dilation),
                 "groups": groups})
    dense, eff, flops = conv_fanout(node, (cin, h, w))
    x = torch.tensor(rng.random((5, cin, h, w)) < 0.3, dtype=torch.float64)

    def nb(inp: torch.Tensor, weight: np.ndarray) -> np.ndarray:
        y = F.conv2d(inp, torch.tensor(weight != 0, dtype=torch.float64), None, stride, padding, dilation, groups)
        return y.sum(dim=(1, 2, 3)).numpy()

    ours = (x.numpy() * dense).sum(axis=(1, 2, 3))
    ours_eff = (x.numpy() * eff).sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(ours, nb(x, np.ones_like(wt)))
    np.testing.assert_array_equal(ours_eff, nb(x, wt))
    assert dense.sum() == nb(torch.ones(1, cin, h, w, dtype=torch.float64), np.ones_like(wt))[0]  # Dense
    assert flops == k * k * ho * wo * cin // groups * cout


# ----------------------------------------------------------------- exact == analytic on layers without borders

def _random_tensors(counter: EnergyCounter, rng: np.random.Generator, B: int, density: float) -> dict:
    g = counter.graph
    out = {}
    for name in counter.required:
        shape = (g.T, B, *g.node(name).shape)
        if g.node(name).op == "input":
            out[name] = torch.rand(shape)
        else:
            p = rng.random() * density
            out[name] = torch.tensor(rng.random(shape) < p, dtype=torch.float32)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_exact_equals_analytic_without_borders(seed):
    """On 1x1 convs and linear layers reading their hooked input, exact AC == fr x T x FLOPs for ANY spike pattern
    (random, sparse, dense, border-heavy); the 3x3 convs differ whenever spikes sit unevenly."""
    rng = np.random.default_rng(seed)
    g = build_graph(tiny_model(seed % 2))
    counter = EnergyCounter(g)
    counts = counter.count(_random_tensors(counter, rng, B=3, density=[0.05, 0.5, 1.0][seed % 3]))
    checked = 0
    for lc in paper_vs_exact(counter, counts):
        node = g.node(lc.name)
        borderless = node.op == "linear" or node.params["weight"].shape[2:] == (1, 1)
        if lc.kind == "ac" and borderless and lc.rate_source == node.inputs[0]:
            assert lc.exact == lc.paper, lc.name  # exact fractions on both sides
            assert lc.parts == {"rate pairing": 0.0, "padding": 0.0, "spike placement": 0.0}
            checked += 1
    assert checked == 7  # q, k, v, proj, fc1, fc2 and the head
    head = next(lc for lc in paper_vs_exact(counter, counts) if lc.name == "head")
    assert head.exact == head.paper


def test_exact_differs_from_analytic_on_borders():
    """Spikes only on the border of a padded 3x3 conv's input: exact < paper by exactly the missing targets."""
    g = build_graph(tiny_model())
    counter = EnergyCounter(g)
    t = {n: torch.zeros(g.T, 2, *g.node(n).shape) for n in counter.required}
    t["input"] = torch.rand(g.T, 2, *g.node("input").shape)
    t["MS_SPS_lif"][:, :, :, 0, :] = 1  # the whole top row of every channel
    counts = counter.count(t)
    lc = {x.name: x for x in paper_vs_exact(counter, counts)}["patch_embed.proj_conv1"]
    assert lc.exact < lc.paper
    c_out = g.node("patch_embed.proj_conv1").shape[0]
    # a top-row spike reaches 2 rows x (3 columns, or 2 at the corners) of output positions
    per_sample = g.T * 4 * c_out * 2 * (14 * 3 + 2 * 2)
    assert lc.exact == per_sample


# ------------------------------------------------------------------------------------------ rate applied once

def test_firing_rate_is_applied_exactly_once():
    """Paper energy of an AC layer = E_AC x fr x T x FLOPs: linear in the rate. Applying the rate twice (the
    Frontiers 2023 error) would make it quadratic, so doubling the spikes would quadruple the energy."""
    g = padded_conv_graph(np.ones((2, 1, 1, 1)).repeat(3, 2).repeat(3, 3))
    counter = EnergyCounter(g)

    def energy(n_spikes: int) -> tuple[float, float]:
        a = np.zeros((2, 1, 1, 4, 4))
        a.reshape(-1)[:n_spikes] = 1
        counts = counter.count({"input": torch.ones(2, 1, 1, 4, 4), "lif_a": torch.tensor(a),
                                "lif_b": torch.zeros(2, 1, 2, 4, 4)})
        layers = paper_vs_exact(counter, counts)
        e = paper_energy(layers, {}, g.T)
        return e["per_layer"]["conv_b"], float(Fraction(n_spikes, 32))

    e4, fr4 = energy(4)
    e8, fr8 = energy(8)
    e_ac = CONSTANTS["E_AC_fp32"].value
    assert fr4 == 0.125
    assert e4 == pytest.approx(e_ac * fr4 * 2 * 288)  # E_AC x fr x T x FLOPs
    assert e4 != pytest.approx(e_ac * fr4 * fr4 * 2 * 288)
    assert e8 == pytest.approx(2 * e4)


def test_paper_first_conv_counted_once_without_rate():
    g = build_graph(tiny_model())
    counter = EnergyCounter(g)
    _, t = run_graph(g, torch.rand(3, 3, 16, 16), record=counter.required)
    counts = counter.count(t)
    first = paper_vs_exact(counter, counts)[0]
    assert first.kind == "mac" and first.paper == first.flops  # no T, no rate
    e = paper_energy(paper_vs_exact(counter, counts), {}, g.T)
    assert e["by_label"]["synaptic MAC"] == pytest.approx(CONSTANTS["E_MAC_fp32"].value * first.flops)


# ------------------------------------------------------------------------------------------- report invariants

@pytest.fixture(scope="module")
def tiny_report():
    g = build_graph(tiny_model())
    counter = EnergyCounter(g)
    _, t = run_graph(g, torch.rand(4, 3, 16, 16), record=counter.required)
    counts = counter.count(t)
    return counter, counts, analyze(counter, counts, meta={"checkpoint": "tiny"})


def test_json_totals_equal_sum_of_layers(tiny_report):
    _, counts, doc = tiny_report
    doc = json.loads(json.dumps(doc))  # what is written
    layers = doc["layers"]
    assert {r["name"] for r in layers} == set(counts.nodes)
    for q, total in doc["totals"]["counts"].items():
        assert total == pytest.approx(sum(r["counts"].get(q, {}).get("per_sample", 0.0) for r in layers), rel=1e-12)
        per_step = doc["per_step"]["counts"][q]
        assert sum(per_step) == pytest.approx(total, rel=1e-12)
    for tier, total in doc["totals"]["energy_pj"].items():
        assert total == pytest.approx(sum(r["energy_pj"][tier] for r in layers), rel=1e-12)
        assert total == pytest.approx(doc["tiers"][tier]["total_pj_per_sample"], rel=1e-12)
        assert doc["comparison"][tier]["snn_pj"] == pytest.approx(total, rel=1e-12)
    for tier in ("fp32", "int", "int_mem", "chip"):
        t = doc["tiers"][tier]
        assert sum(t["by_label"].values()) == pytest.approx(t["total_pj_per_sample"], rel=1e-12)
        assert sum(ln["energy_pj_per_sample"] for ln in t["lines"]) == pytest.approx(t["total_pj_per_sample"])
        assert np.mean(doc["per_sample"]["energy_pj"][tier]) == pytest.approx(t["total_pj_per_sample"])
        assert sum(t["per_step_pj"]) == pytest.approx(t["total_pj_per_sample"])
    assert doc["estimate"] is True


def test_counts_match_brute_force_on_model(tiny_report):
    """On a real model run: AC of every conv == sum over all outputs of conv2d(input spikes, all-ones kernel)."""
    counter, counts, _ = tiny_report
    g = counter.graph
    _, t = run_graph(g, torch.rand(4, 3, 16, 16), record=True)  # the same generator state is not needed: recount
    c2 = counter.count(t)
    for node in g:
        if node.op != "conv2d" or g.node(node.inputs[0]).op == "input":
            continue
        x = t[node.inputs[0]].flatten(0, 1).double()
        a = node.attrs
        y = F.conv2d(x, torch.ones(node.params["weight"].shape, dtype=torch.float64), None, a["stride"],
                     a["padding"], a["dilation"], a["groups"])
        assert c2.nodes[node.name].total("ac") == float(y.sum()), node.name
    for node in g:
        if node.op == "lif":
            assert c2.nodes[node.name].total("spikes") == float(t[node.name].sum())


def test_tiers_price_counts_times_constants(tiny_report):
    counter, counts, doc = tiny_report
    ac = counts.total("ac") / counts.samples
    mac = counts.total("mac") / counts.samples
    lines = {(ln["label"], ln["quantity"]): ln for ln in doc["tiers"]["fp32"]["lines"]}
    assert lines[("synaptic AC", "ac")]["count_per_sample"] == pytest.approx(ac)
    assert lines[("synaptic AC", "ac")]["energy_pj_per_sample"] == pytest.approx(0.9 * ac)
    assert lines[("synaptic MAC", "mac")]["energy_pj_per_sample"] == pytest.approx(4.6 * mac)
    il = {(ln["label"], ln["quantity"]): ln for ln in doc["tiers"]["int"]["lines"]}
    assert il[("synaptic AC", "ac")]["pj_per_unit"] == 0.1
    assert il[("synaptic MAC", "mac")]["pj_per_unit"] == pytest.approx(0.3)
    # a memory tier adds memory on top of the same compute
    assert doc["tiers"]["int_mem"]["total_pj_per_sample"] > doc["tiers"]["int"]["total_pj_per_sample"]
    # the chip tier: every synaptic event at 23.6 pJ
    cl = {(ln["label"], ln["quantity"]): ln for ln in doc["tiers"]["chip"]["lines"]}
    assert cl[("synaptic AC", "ac")]["energy_pj_per_sample"] == pytest.approx(23.6 * ac)


def test_break_even_rate_balances_the_energies(tiny_report):
    counter, counts, doc = tiny_report
    for tier in ("fp32", "int", "int_mem", "chip"):
        c = doc["comparison"][tier]
        r = c["break_even_rate"]
        if r is None or r <= 0:
            continue
        factor = r / doc["mean_firing_rate"]
        res = price(counts.scaled(factor), TIERS[tier], counter.buffer_bytes(), 64)
        assert res.total_per_sample() == pytest.approx(c["ann_pj"], rel=1e-9)
    assert break_even(10.0, 0.0, 20.0, 0.1) is None
    assert break_even(10.0, 5.0, 20.0, 0.1) == pytest.approx(0.2)


def test_sram_cost_interpolation():
    assert sram_pj_per_byte(8 * 1024) == pytest.approx(10 / 8)
    assert sram_pj_per_byte(8 * 1024, access_bits=32) == pytest.approx(10 / 4)
    assert sram_pj_per_byte(20 * 1024) == pytest.approx(15 / 8)
    assert sram_pj_per_byte(10 * 2 ** 20) == pytest.approx(100 / 8)  # clamped at 1 MB
    assert sram_pj_per_byte(4 * 1024) == pytest.approx(5 / 8)
    with pytest.raises(ValueError):
        sram_pj_per_byte(1, access_bits=16)


def test_every_constant_has_a_source():
    for c in CONSTANTS.values():
        assert c.value > 0 and c.unit and c.source


def test_counter_is_deterministic_and_batch_additive():
    g = build_graph(tiny_model())
    counter = EnergyCounter(g)
    x = torch.rand(6, 3, 16, 16)
    _, t = run_graph(g, x, record=counter.required)
    a, b = counter.count(t), counter.count(t)
    _, t1 = run_graph(g, x[:2], record=counter.required)
    _, t2 = run_graph(g, x[2:], record=counter.required)
    from deploy.energy import Counts

    joined = Counts.concat([counter.count(t1), counter.count(t2)])
    for name in a.nodes:
        for q in a.nodes[name].q:
            np.testing.assert_array_equal(a.nodes[name].q[q], b.nodes[name].q[q])
            np.testing.assert_array_equal(a.nodes[name].q[q], joined.nodes[name].q[q])


def test_counter_rejects_bad_tensors():
    g = build_graph(tiny_model())
    counter = EnergyCounter(g)
    _, t = run_graph(g, torch.rand(2, 3, 16, 16), record=counter.required)
    with pytest.raises(UserError, match="no tensor for node"):
        counter.count({k: v for k, v in t.items() if k != "MS_SPS_lif"})
    bad = dict(t, MS_SPS_lif=t["MS_SPS_lif"][:, :, :2])
    with pytest.raises(UserError, match="has shape"):
        counter.count(bad)


def test_static_input_counted_once_or_every_step():
    g = build_graph(tiny_model())
    x = torch.rand(2, 3, 16, 16)
    once, every = EnergyCounter(g), EnergyCounter(g, static_input_once=False)
    _, t = run_graph(g, x, record=once.required)
    a, b = once.count(t), every.count(t)
    first = "patch_embed.proj_conv"
    assert b.nodes[first].total("mac") == g.T * a.nodes[first].total("mac")
    assert a.nodes[first].q["mac"][1:].sum() == 0
    assert a.nodes["patch_embed.proj_conv1"].total("ac") == b.nodes["patch_embed.proj_conv1"].total("ac")


def test_report_folder_is_complete_or_absent(tiny_report, tmp_path, monkeypatch):
    _, _, doc = tiny_report
    out = write_report(doc, tmp_path / "rep")
    names = {p.name for p in out.iterdir()}
    assert {"energy.json", "energy.md", "energy.html", "firing_rates.png", "energy_tiers.png",
            "paper_vs_exact.png", "attention.png"} <= names
    assert json.loads((out / "energy.json").read_text())["format"] == "sdt-energy"
    html = (out / "energy.html").read_text()
    assert "data:image/png;base64," in html and "estimate" in html
    # a failure while writing leaves the earlier report untouched and no temporary folder
    import deploy.energy.report as rep

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rep, "render_html", boom)
    with pytest.raises(RuntimeError):
        write_report(doc, tmp_path / "rep")
    with pytest.raises(RuntimeError):
        write_report(doc, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    assert {p.name for p in (tmp_path / "rep").iterdir()} == names
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="holds no energy report"):
        write_report(doc, tmp_path / "other")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_report_folder_gets_the_umask_mode(tiny_report, tmp_path, umask):
    # the folder is built with mkdtemp (0700) and renamed: it must end up as mkdir would make it
    _, _, doc = tiny_report
    old = os.umask(umask)
    try:
        out = write_report(doc, tmp_path / "rep")
        write_report(doc, tmp_path / "rep")  # replacing an earlier report too
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(os.stat(out / "energy.json").st_mode) == 0o666 & ~umask


def test_byte_widths_scale_memory():
    g = build_graph(tiny_model())
    x = torch.rand(2, 3, 16, 16)
    c1 = EnergyCounter(g)
    c2 = EnergyCounter(g, widths=ByteWidths(weight=2.0, state=4.0))
    _, t = run_graph(g, x, record=c1.required)
    a, b = c1.count(t), c2.count(t)
    assert b.total("weight_bytes") == 2 * a.total("weight_bytes")
    assert b.total("membrane_bytes") == pytest.approx(4 / 3 * a.total("membrane_bytes"))


def test_pool_and_erode_or_writes_brute_force():
    """DVS model: every binary max-pool and erode (spatial and head layout) charges one OR write per input spike per
    window containing it = the sum over outputs of the spikes in their window (a ones-kernel sum pool)."""
    from export.kernels import to_heads

    g = build_graph(tiny_model(0, dvs_mode=True, in_channels=2, pooling_stat="1111", img_size_h=32, img_size_w=32))
    assert g.encoding == "frames"
    counter = EnergyCounter(g)
    x = (torch.rand(2, g.T, 2, 32, 32) < 0.3).float() * torch.randint(1, 4, (2, g.T, 2, 32, 32))
    _, t = run_graph(g, x, record=True)
    counts = counter.count(t)
    ops = set()
    for node in g:
        if node.op not in ("maxpool_binary", "erode"):
            continue
        s = t[node.inputs[0]].double()
        if node.op == "erode" and node.attrs["mode"] == "heads":
            s = to_heads(s, int(node.attrs["num_heads"]))  # [T, B, h, N, d]: window over (N, d)
            win = F.avg_pool2d(s.flatten(0, 2), 3, 1, 1, count_include_pad=True, divisor_override=1)
        elif node.op == "erode":
            win = F.avg_pool2d(s.flatten(0, 2), 3, 1, 1, count_include_pad=True, divisor_override=1)
        else:
            a = node.attrs
            win = F.avg_pool2d(s.flatten(0, 1), a["kernel_size"], a["stride"], a["padding"], count_include_pad=True,
                               divisor_override=1)
        assert counts.nodes[node.name].total("or_writes") == float(win.sum()), node.name
        ops.add((node.op, node.attrs.get("mode")))
    assert ops == {("maxpool_binary", None), ("erode", "spatial"), ("erode", "heads")}
    # event frames: the first conv runs every step and skips zero inputs
    first = counts.nodes["patch_embed.proj_conv"]
    assert (first.q["mac"] > 0).all() and first.total("mac") < first.total("dense")


def test_integer_weight_masks_follow_the_quantised_weights():
    """--integer counts effective ACs over the weights the integer network keeps: a weight that rounds to 0 in every
    8-bit synapse carrying it no longer counts; the float mask still does."""
    from deploy.energy.run import integer_weight_masks
    from deploy.quantize import quantize_model

    model = tiny_model(0)
    with torch.no_grad():  # 1e-9 of the layer's scale: zero in both 8-bit terms of the hi/lo pair
        model.block[0].mlp.fc1_conv.weight[:, :5] = 1e-9
    net, _, graph = quantize_model(model)
    node = next(n for n in graph if n.op == "conv2d" and n.params["weight"].shape[0] == 128
                and np.allclose(n.params["weight"], model.block[0].mlp.fc1_conv.weight.detach().numpy()))
    masks = integer_weight_masks(net, graph)
    m = masks[node.name]
    assert m.shape == node.params["weight"].shape
    assert not m[:, :5].any() and m[:, 5:].mean() > 0.95  # the tiny weights are gone, the rest survive
    assert node.params["weight"][:, :5].all()  # ... although non-zero in float
    assert {"patch_embed.proj_conv", "head"} & set(masks)  # first conv and the head are covered too

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    float_c, int_c = EnergyCounter(graph), EnergyCounter(graph, weight_masks=masks)
    _, t = run_graph(graph, x, record=float_c.required)
    a, b = float_c.count(t), int_c.count(t)
    assert b.total("ac_eff", [node.name]) < a.total("ac_eff", [node.name])
    assert b.total("ac", [node.name]) == a.total("ac", [node.name])  # dense counts do not depend on weights


def test_streamed_tally_equals_counting_recorded_tensors():
    """sdt-energy counts each tensor as the graph makes it (nothing kept alive): same counts as recording them all."""
    g = build_graph(tiny_model(seed=4))
    counter = EnergyCounter(g)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    _, tensors = run_graph(g, x, record=counter.required)
    seen: list[str] = []
    tally = counter.tally()
    logits, kept = run_graph(g, x, record=counter.required, on_record=lambda n, t: (seen.append(n), tally.add(n, t)))
    assert kept == {} and sorted(seen) == sorted(counter.required)
    a, b = counter.count(tensors), tally.counts()
    for name in a.nodes:
        for q in a.nodes[name].q:
            np.testing.assert_array_equal(a.nodes[name].q[q], b.nodes[name].q[q])
    with pytest.raises(UserError, match="no tensor for node"):
        counter.tally().counts()


def test_tally_over_batches_equals_joined_counts():
    from deploy.energy import Counts

    g = build_graph(tiny_model(seed=5))
    counter = EnergyCounter(g)
    xs = [torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(b)) for b in (3, 2)]
    tally = counter.tally()
    parts = []
    for x in xs:
        run_graph(g, x, record=counter.required, on_record=tally.add)
        tally.end_batch()
        parts.append(counter.count(run_graph(g, x, record=counter.required)[1]))
    a, b = Counts.concat(parts), tally.counts()
    assert b.samples == 5
    for name in a.nodes:
        for q in a.nodes[name].q:
            np.testing.assert_array_equal(a.nodes[name].q[q], b.nodes[name].q[q])
    with pytest.raises(UserError, match="no tensor for node"):  # a batch that missed a node
        t = counter.tally()
        t.add(counter.required[0], run_graph(g, xs[0], record=counter.required)[1][counter.required[0]])
        t.end_batch()


@pytest.mark.parametrize("forms", [("const",), ("pos",), ("chan",), ("border",), ("full",), (),
                                   ("const", "pos"), ("const", "border", "border2"), ("pos", "chan", "border", "full"),
                                   ("const", "pos", "chan", "border", "border2", "full")])
def test_stacked_maps_equal_brute_force(forms):
    """The counter computes every consumer's ``sum(X * map)`` of a source as one product of a few reductions with
    the stacked maps; for maps of every form (and sources mixing them, border sets that differ), each column equals
    the brute-force weighted sum for every sample, and column 0 is the spike count."""
    from deploy.energy.counter import _map_form, _plan_source

    rng = np.random.default_rng(len(forms))
    c, hw = 5, 12
    make = {
        "const": lambda: np.full((c, hw), 7.0),
        "pos": lambda: np.tile(rng.integers(0, 9, hw), (c, 1)).astype(float),
        "chan": lambda: np.tile(rng.integers(1, 9, (c, 1)), (1, hw)).astype(float),
        "border": lambda: _with_border(rng, c, hw, [0, 1]),
        "border2": lambda: _with_border(rng, c, hw, [1, 11]),
        "full": lambda: rng.integers(0, 9, (c, hw)).astype(float),
    }
    maps = [("n%d" % i, "q", make[f]()) for i, f in enumerate(forms)]
    assert [_map_form(m)[0] for _, _, m in maps] == [f.rstrip("2") for f in forms]
    src = _plan_source("s", (c, hw), True, maps)
    x = torch.from_numpy(rng.random((6, c, hw)) < 0.4).float()
    out = EnergyCounter._reduce(src, x)
    assert out.shape == (6, 1 + len(maps))
    np.testing.assert_array_equal(out[:, 0], x.sum((1, 2)).numpy())
    for j, (_, _, m) in enumerate(maps, start=1):
        np.testing.assert_array_equal(out[:, j], (x.double().numpy() * m).sum((1, 2)))
    # the integer executor's layout (channels fastest) and dtype give the same sums
    x_hwc = x.transpose(1, 2).contiguous().to(torch.int8)
    np.testing.assert_array_equal(EnergyCounter._reduce(src, x_hwc, channels_last=True), out)


def _with_border(rng: np.random.Generator, c: int, hw: int, border: list[int]) -> np.ndarray:
    m = np.tile(rng.integers(1, 9, (c, 1)), (1, hw)).astype(float)
    m[:, border] += rng.integers(1, 4, (c, len(border)))
    return m


def test_integer_counts_streamed_in_executor_layout_equal_counting_its_outputs():
    """--integer counts each population as the executor makes it, in its channels-last layout (no transposed copy):
    the same counts as counting the outputs it records in node layout."""
    from deploy.energy.run import count_integer, integer_population_map
    from deploy.executor import Executor
    from deploy.encoding import encode_input
    from deploy.quantize import quantize_model

    net, _, graph = quantize_model(tiny_model(3))
    counter = EnergyCounter(graph)
    xs = [torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(b)) for b in (3, 2)]
    streamed, info = count_integer(net, graph, counter, xs)
    mapping = integer_population_map(net, graph, counter.required)
    parts = []
    with Executor(net) as ex:
        for x in xs:
            out = ex.run(encode_input(net, x), record=sorted(set(mapping.values()))).outputs
            parts.append(counter.count({n: out[p] for n, p in mapping.items()}))
    from deploy.energy import Counts

    recorded = Counts.concat(parts)
    assert streamed.samples == 5 and info["overflow_events"] == 0
    for name, nc in recorded.nodes.items():
        for q, v in nc.q.items():
            np.testing.assert_array_equal(streamed.nodes[name].q[q], v, err_msg=f"{name}.{q}")
    assert recorded.total("ac") > 0
