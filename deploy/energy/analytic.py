"""The paper-compatible analytic count, its per-layer difference from the exact count, and the equivalent ANN.

Paper formula (SDT supplementary; ``sdt_v1_spec.md`` §8.2): ``E = E_MAC * FLOPs(first conv) + E_AC * sum_l SOP_l`` with
``SOP_l = fr_l * T * FLOPs_l``; ``FLOPs`` of a conv is ``k^2 * H_out * W_out * C_in * C_out`` (padded taps included),
of a linear layer ``in * out``; ``fr_l`` is the firing rate of the layer's *input* spike tensor under the official
hook names (so ``proj_conv1`` takes ``MS_SPS_lif``'s rate measured *before* the max-pool, as the paper's table does);
the first conv is MACs counted once (no ``T``, no rate). The rate enters exactly once: it multiplies FLOPs to give a
count, and the energy line multiplies counts by constants only (``tests/test_energy.py`` guards this).

The difference exact - paper of every layer splits exactly into named parts (see :func:`paper_vs_exact`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from export.graph import Graph

from .counter import SYNAPTIC, Counts, EnergyCounter, NodeCounts


def paper_rate_source(graph: Graph, node_name: str) -> str:
    """The hooked spike tensor whose rate the paper pairs with synaptic layer ``node_name``: its input, or, when that
    is an un-hooked binary max-pool of spikes, the pool's input (the paper measured the LIF before the pool)."""
    hooked = {n for n, _ in graph.hooks.values()}
    src = graph.node(graph.node(node_name).inputs[0])
    while src.op == "maxpool_binary" and src.name not in hooked:
        src = graph.node(src.inputs[0])
    return src.name


def _frac(x: float) -> Fraction:
    return Fraction(int(round(x)))


@dataclass
class LayerComparison:
    """Paper-formula vs exact count of one synaptic layer, per sample. ``parts`` sum exactly to ``paper - exact``."""

    name: str
    kind: str  # 'mac' (first conv) or 'ac'
    flops: float
    flops_valid: float
    rate_source: str | None
    rate_paper: float | None
    rate_actual: float | None
    paper: float
    exact: float
    exact_eff: float
    parts: dict[str, float] = field(default_factory=dict)
    explanation: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.name, "kind": self.kind, "flops": self.flops, "flops_valid": self.flops_valid,
                "rate_source": self.rate_source, "rate_paper": self.rate_paper, "rate_actual": self.rate_actual,
                "paper": self.paper, "exact": self.exact, "exact_eff": self.exact_eff,
                "paper_minus_exact": self.paper - self.exact, "parts": dict(self.parts),
                "explanation": self.explanation}


def _rate(counts: Counts, counter: EnergyCounter, node: str) -> Fraction:
    n = counter.graph.node(node)
    spikes = _frac(counts.nodes[node].total("spikes"))
    return spikes / (int(np.prod(n.shape)) * counts.T * counts.samples)


def paper_vs_exact(counter: EnergyCounter, counts: Counts) -> list[LayerComparison]:
    """Per synaptic layer: the paper's count next to the exact one, with the difference split into

    * ``rate pairing``: the paper's rate tensor is not the layer's real input (``fr_paper - fr_input``) x T x FLOPs;
    * ``padding``: FLOPs include padded taps that read nothing: ``fr_input * T * (FLOPs - FLOPs_valid)``;
    * ``spike placement``: spikes sit on positions with more or fewer targets than average (border positions of a
      padded conv have fewer): ``fr_input * T * FLOPs_valid - exact``; zero for 1x1 convs and linear layers;
    * first conv: ``time steps`` (counted once by the paper; the exact count evaluates it once for a static image and
      every step for event frames), ``padding``, and ``zero inputs`` (inputs equal to 0 trigger nothing).

    Arithmetic is in exact fractions, so the parts add up to ``paper - exact`` and a layer without borders gives
    ``exact == paper`` exactly whenever the paired tensor is its real input.
    """
    g, T, N = counter.graph, counts.T, counts.samples
    out = []
    for node in g:
        if node.op not in SYNAPTIC:
            continue
        nc = counts.nodes[node.name]
        flops, valid = Fraction(int(counter.flops[node.name])), Fraction(int(counter.flops_valid[node.name]))
        if g.node(node.inputs[0]).op == "input":  # the paper's MAC layer, even when the input happens to be 0/1
            exact = _frac(nc.total("mac") + nc.total("ac")) / N
            exact_eff = _frac(nc.total("mac_eff") + nc.total("ac_eff")) / N
            steps = Fraction(int(round(float((nc.q["dense"].sum(1) > 0).sum()))))  # steps actually evaluated
            paper = flops
            parts = {"time steps": paper - flops * steps, "padding": (flops - valid) * steps,
                     "zero inputs": valid * steps - exact}
            expl = (f"paper counts FLOPs once; exact evaluates {int(steps)} step(s) "
                    f"({'static image, convolved once' if nc.attrs.get('static_input') else 'a new frame every step'})"
                    f", skips {float(flops - valid):.0f} padded taps per step and inputs equal to 0")
            out.append(LayerComparison(node.name, "mac", float(flops), float(valid), None, None, None, float(paper),
                                       float(exact), float(exact_eff), {k: float(v) for k, v in parts.items()}, expl))
            continue
        src_paper = paper_rate_source(g, node.name)
        src_real = node.inputs[0]
        fr_p, fr_a = _rate(counts, counter, src_paper), _rate(counts, counter, src_real)
        exact = _frac(nc.total("ac")) / N
        exact_eff = _frac(nc.total("ac_eff")) / N
        paper = fr_p * T * flops
        parts = {"rate pairing": (fr_p - fr_a) * T * flops, "padding": fr_a * T * (flops - valid),
                 "spike placement": fr_a * T * valid - exact}
        bits = []
        if src_paper != src_real:
            bits.append(f"paper pairs the rate of {src_paper} ({float(fr_p):.4f}) but the layer reads {src_real} "
                        f"({float(fr_a):.4f})")
        if flops != valid:
            bits.append(f"{float(flops - valid):.0f} of {float(flops):.0f} FLOPs are padded taps")
            bits.append("spikes at the border have fewer targets" if parts["spike placement"] > 0 else
                        "spikes sit away from the border more than uniformly")
        if not bits:
            bits.append("no border, rate of the real input: exact == paper")
        out.append(LayerComparison(node.name, "ac", float(flops), float(valid), src_paper, float(fr_p), float(fr_a),
                                   float(paper), float(exact), float(exact_eff),
                                   {k: float(v) for k, v in parts.items()}, "; ".join(bits)))
    return out


@dataclass
class AttentionBlock:
    """The nodes of one SDSA block in the graph."""

    name: str
    qkv: tuple[str, str, str]  # q/k/v conv nodes
    and_node: str  # K AND V
    colsum: str
    gate: str  # the LIF after the column sum
    mask: str  # Q AND broadcast(kv)
    q_spikes: str
    tokens: int
    dim: int
    heads: int


def attention_blocks(graph: Graph) -> list[AttentionBlock]:
    """Find every SDSA block: sum_tokens -> lif -> broadcast -> and(q, .)."""
    blocks = []
    heads = int(graph.metadata.get("num_heads", 1) or 1)
    for n in graph:
        if n.op != "sum_tokens":
            continue
        gate = next((c for c in graph.consumers(n.name) if c.op == "lif"), None)
        bc = next((c for c in graph.consumers(gate.name) if c.op == "broadcast"), None) if gate else None
        mask = next((c for c in graph.consumers(bc.name) if c.op == "and"), None) if bc else None
        if mask is None:
            continue
        q = next(i for i in mask.inputs if i != bc.name)
        src = graph.node(n.inputs[0])
        while src.op == "erode":
            src = graph.node(src.inputs[0])
        and_node = src.name

        def conv_of(spike: str) -> str:
            s = graph.node(spike)
            while s.op in ("erode", "lif"):
                s = graph.node(s.inputs[0])
            return s.name

        k_sp, v_sp = graph.node(and_node).inputs
        qkv = (conv_of(q), conv_of(k_sp), conv_of(v_sp))
        c, h, w = mask.shape
        blocks.append(AttentionBlock(n.name.rsplit(".", 1)[0], qkv, and_node, n.name, gate.name, mask.name, q,
                                     h * w, c, heads))
    return blocks


def paper_sdsa_ops(counter: EnergyCounter, counts: Counts, block: AttentionBlock) -> float:
    """The paper's SDSA mask/add term per sample, ``T * N * D * (R_KV + R_Q)``: the column sum adds the K AND V
    spikes and the mask is driven by Q's spikes (our reading of Table 1's ``R_hat``; issue #24 uses R_Q + R_K)."""
    r = _rate(counts, counter, block.and_node) + _rate(counts, counter, block.q_spikes)
    return float(r * counts.T * block.tokens * block.dim)


# ------------------------------------------------------------------------------------------- the equivalent ANN

def ann_counts(counter: EnergyCounter, act_bytes: float = 1.0, reuse: bool = True) -> Counts:
    """The equivalent ANN of the graph, one inference (T = 1, N = 1), as :class:`Counts` so every tier prices it.

    Same layers with real-valued activations: every conv/linear is dense MACs over its real targets (``mac`` =
    FLOPs without padded taps; ``flops`` kept for the paper formula), every LIF becomes a ReLU (one compare), pools and
    the membrane stream stay, and each SDSA becomes vanilla self-attention as in the paper's Table 1: ``Q K^T`` and
    ``A V`` (``N^2 D`` MACs each), the ``1/sqrt(d)`` scale (``h N^2`` multiplies) and the softmax (``2 h N^2``,
    counted as MACs like the paper). Memory: weights read once per layer (full reuse), activations written once and
    read once per consumer at ``act_bytes`` (int8 by default), accumulators in registers (no traffic). With
    ``reuse=False`` every MAC reads its weight and its input activation (Lemaire's FNN model, no data reuse).
    """
    g = counter.graph
    blocks = attention_blocks(g)
    replaced = {n for b in blocks for n in (b.and_node, b.colsum, b.gate, b.mask)}
    replaced |= {c.name for b in blocks for c in g.consumers(b.gate) if c.op == "broadcast"}
    # DVS erode nodes around the attention product disappear with it
    for b in blocks:
        for n in g:
            if n.op == "erode" and n.attrs.get("mode") == "heads" and (
                    b.and_node in n.inputs or b.mask in n.inputs):
                replaced.add(n.name)
    one = lambda v: np.array([[float(v)]])  # noqa: E731  [T=1, N=1]
    nodes: dict[str, NodeCounts] = {}
    for node in g:
        if node.name in replaced or node.op in ("input", "output", "broadcast"):
            continue
        numel = float(np.prod(node.shape))
        q: dict[str, np.ndarray] = {}
        kind = "stream"
        attrs: dict[str, Any] = {}
        in_numel = sum(float(np.prod(g.node(i).shape)) for i in node.inputs)
        if node.op in SYNAPTIC:
            kind = "mac"
            q["mac"] = one(counter.flops_valid[node.name])
            q["mac_eff"] = q["mac"]
            q["bias_adds"] = one(numel)
            w_reads = node.params["weight"].size if reuse else counter.flops_valid[node.name]
            q["weight_bytes"] = one(w_reads * counter.widths.weight)
            attrs["flops"] = counter.flops[node.name]
        elif node.op == "lif":
            kind = "neuron"
            q["relu"] = one(numel)
        elif node.op in ("maxpool_binary", "erode", "maxpool"):
            kind = "pool"
            q["compares"] = one(counter._pool_compares[node.name])
        elif node.op == "avgpool":
            q["adds"], q["mults"] = one(counter._pool_compares[node.name]), one(numel)
        elif node.op == "add":
            q["adds"] = one(numel)
        elif node.op == "mean_tokens":
            q["adds"], q["mults"] = one(in_numel - numel), one(numel)
        elif node.op == "sum_tokens":
            q["adds"] = one(in_numel - numel)
        elif node.op == "and":  # an element-wise product outside an SDSA block (not in SDT v1)
            q["mults"] = one(numel)
        reads = in_numel if reuse or node.op not in SYNAPTIC else counter.flops_valid[node.name]
        q["io_read_bytes"] = one(reads * act_bytes)
        q["io_write_bytes"] = one(numel * act_bytes)
        nodes[node.name] = NodeCounts(node.name, node.op, kind, q, frozenset(), attrs)
    for b in blocks:
        n, d, h = b.tokens, b.dim, b.heads
        q = {"attn_mac": one(2 * n * n * d), "softmax": one(2 * h * n * n), "scale_mults": one(h * n * n),
             # Q, K, V read for the two products, the score matrix written/read twice (scale, softmax), A V written
             "io_read_bytes": one((3 * n * d + 3 * h * n * n) * act_bytes),
             "io_write_bytes": one((2 * h * n * n + n * d) * act_bytes)}
        nodes[b.name + "_vanilla_attention"] = NodeCounts(b.name + "_vanilla_attention", "attention", "attention", q,
                                                          frozenset(), {"tokens": n, "dim": d, "heads": h})
    return Counts(1, 1, nodes, counter.widths, {"ann": True, "act_bytes": act_bytes, "reuse": reuse})


def ann_buffers(counter: EnergyCounter, ann: Counts) -> dict[str, dict[str, float]]:
    """SRAM buffer sizes of the ANN's memory quantities (layer weights; tensors at the activation width)."""
    g, act = counter.graph, float(ann.meta.get("act_bytes", 1.0))
    out: dict[str, dict[str, float]] = {}
    for name, nc in ann.nodes.items():
        if name in g:
            node = g.node(name)
            b = {"io_write_bytes": float(np.prod(node.shape)) * act,
                 "io_read_bytes": float(np.prod(g.node(node.inputs[0]).shape)) * act if node.inputs else 0.0}
            if node.op in SYNAPTIC:
                b["weight_bytes"] = float(node.params["weight"].size) * counter.widths.weight
        else:  # vanilla attention: the score matrix dominates the buffer
            a = nc.attrs
            b = {"io_write_bytes": float(a["heads"] * a["tokens"] ** 2) * act,
                 "io_read_bytes": float(a["heads"] * a["tokens"] ** 2) * act}
        out[name] = b
    return out


def ann_paper_energy_terms(counter: EnergyCounter) -> dict[str, float]:
    """The equivalent ANN in the paper's own terms: FLOPs of every synaptic layer plus Table 1's attention."""
    flops = sum(counter.flops.values())
    terms = {"layer_flops": flops, "attn_mac": 0.0, "softmax": 0.0, "scale_mults": 0.0}
    for b in attention_blocks(counter.graph):
        terms["attn_mac"] += 2 * b.tokens ** 2 * b.dim
        terms["softmax"] += 2 * b.heads * b.tokens ** 2
        terms["scale_mults"] += b.heads * b.tokens ** 2
    return terms


__all__ = ["paper_rate_source", "paper_vs_exact", "LayerComparison", "AttentionBlock", "attention_blocks",
           "paper_sdsa_ops", "ann_counts", "ann_buffers", "ann_paper_energy_terms"]
