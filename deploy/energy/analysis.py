"""Turn counts into the energy report's JSON document (:func:`analyze`): per node, per step and per sample counts,
the paper's analytic count beside them, the priced energy tiers, the equivalent ANN and the break-even rate.
Rendering (Markdown, HTML, plots) and writing are ``report.py``."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from export.graph import BINARY_OPS
from sdt.errors import UserError

from .analytic import (ann_buffers, ann_counts, ann_paper_energy_terms, attention_blocks, paper_sdsa_ops,
                       paper_vs_exact)
from .constants import CONSTANTS, constant
from .counter import Counts, EnergyCounter
from .tiers import TIERS, break_even, mean_firing_rate, paper_energy, price, price_with_split

FORMAT, VERSION = "sdt-energy", 1
PRICED_TIERS = ("fp32", "int", "int_mem", "chip")
NOT_COUNTED = [
    "control, routing between cores and spike addressing beyond the per-event I/O bytes",
    "DRAM: every buffer is assumed on chip (E_DRAM_64b is listed, not used)",
    "leakage / static power and clocking",
    "the 1/T of the output mean and the 1/N of the token mean when they are folded into the next layer",
    "training-only operations (surrogate gradients, BN statistics)",
]


def _clean(x: Any) -> Any:
    """JSON-safe: numpy -> python, non-finite floats -> None."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _per_step(a: np.ndarray) -> list[float]:
    return [float(v) for v in a.mean(1)]


# ------------------------------------------------------------------------------------------------------- analysis

def analyze(counter: EnergyCounter, counts: Counts, *, access_bits: int = 64,
            meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole report as one JSON-able dict: counts per layer and step, every tier for the SNN and its equivalent
    ANN, the paper's formula next to the exact count, the break-even firing rate and the SDSA/VSA comparison."""
    g, T, N = counter.graph, counts.T, counts.samples
    if N < 1:
        raise UserError("no samples were counted")
    layers_cmp = paper_vs_exact(counter, counts)
    blocks = attention_blocks(g)
    sdsa = {b.mask: paper_sdsa_ops(counter, counts, b) for b in blocks}
    paper = paper_energy(layers_cmp, sdsa, T)
    buffers = counter.buffer_bytes()
    rate = mean_firing_rate(counts)

    tiers: dict[str, Any] = {}
    results = {}
    splits = {}
    for key in PRICED_TIERS:
        res, fixed, var = price_with_split(counts, TIERS[key], buffers, access_bits)
        results[key], splits[key] = res, (fixed, var)
        tiers[key] = {"title": res.tier.title, "description": res.tier.description, "constants": res.constants,
                      "access_bits": res.access_bits, "lines": res.lines,
                      "total_pj_per_sample": res.total_per_sample(), "by_label": res.by_label(),
                      "per_step_pj": list(res.per_step()), "e_fixed": fixed, "e_spike_driven": var}
    tiers = {"paper": {"title": TIERS["paper"].title, "description": TIERS["paper"].description,
                       "constants": ["E_MAC_fp32", "E_AC_fp32"], "access_bits": None, "lines": paper["lines"],
                       "total_pj_per_sample": paper["total_pj_per_sample"], "by_label": paper["by_label"],
                       "per_step_pj": None, "e_fixed": paper["e_fixed"], "e_spike_driven": paper["e_var"]}, **tiers}

    # the equivalent ANN under the same tiers
    ann = ann_counts(counter)
    ann_buf = ann_buffers(counter, ann)
    terms = ann_paper_energy_terms(counter)
    ann_paper = (constant("E_MAC_fp32") * (terms["layer_flops"] + terms["attn_mac"] + terms["softmax"])
                 + constant("E_MULT_fp32") * terms["scale_mults"])
    ann_tiers: dict[str, Any] = {"paper": {"total_pj_per_sample": ann_paper, "terms": terms,
                                           "by_label": {"synaptic MAC": constant("E_MAC_fp32") * terms["layer_flops"],
                                                        "attention": ann_paper - constant("E_MAC_fp32")
                                                        * terms["layer_flops"]}}}
    ann_results = {}
    for key in PRICED_TIERS:
        r = price(ann, TIERS[key], ann_buf, access_bits)
        ann_results[key] = r
        ann_tiers[key] = {"total_pj_per_sample": r.total_per_sample(), "by_label": r.by_label(), "lines": r.lines}

    comparison = {}
    for key in ("paper",) + PRICED_TIERS:
        snn = tiers[key]["total_pj_per_sample"]
        a = ann_tiers[key]["total_pj_per_sample"]
        fixed, var = tiers[key]["e_fixed"], tiers[key]["e_spike_driven"]
        comparison[key] = {"snn_pj": snn, "ann_pj": a, "ann_over_snn": a / snn if snn else None,
                           "break_even_rate": break_even(fixed, var, a, rate), "snn_fixed_pj": fixed,
                           "snn_spike_driven_pj": var}

    # how much the memory tier depends on two modelling choices: per-event accumulator traffic in SRAM (Lemaire,
    # SpikingJelly) and the ANN's data reuse
    mem = TIERS["int_mem"]
    no_acc = counts.drop({"accum_bytes"})
    snn_no_acc = price(no_acc, mem, buffers, access_bits).total_per_sample()
    snn_no_acc_fixed = price(no_acc.scaled(0.0), mem, buffers, access_bits).total_per_sample()
    ann_no_reuse = price(ann_counts(counter, reuse=False), mem, ann_buf, access_bits).total_per_sample()
    fixed, var = splits["int_mem"]
    comparison["int_mem"]["variants"] = {
        "snn_without_accumulator_traffic_pj": snn_no_acc, "ann_without_reuse_pj": ann_no_reuse,
        "break_even_rate_without_accumulator_traffic": break_even(snn_no_acc_fixed, snn_no_acc - snn_no_acc_fixed,
                                                                  ann_tiers["int_mem"]["total_pj_per_sample"], rate),
        "break_even_rate_ann_without_reuse": break_even(fixed, var, ann_no_reuse, rate),
        "break_even_rate_both": break_even(snn_no_acc_fixed, snn_no_acc - snn_no_acc_fixed, ann_no_reuse, rate),
    }

    attention = _attention_table(counter, counts, blocks, results["fp32"], layers_cmp, sdsa)

    layer_rows = []
    tot_counts: dict[str, float] = {}
    tot_energy: dict[str, float] = {k: 0.0 for k in tiers}
    step_counts: dict[str, np.ndarray] = {}
    for node in g:
        nc = counts.nodes[node.name]
        c = {q: {"per_sample": float(a.sum()) / N, "per_step": _per_step(a)} for q, a in nc.q.items()}
        energy = {"paper": paper["per_layer"].get(node.name, 0.0)}
        by_label = {}
        for key in PRICED_TIERS:
            energy[key] = results[key].node_total(node.name)
            by_label[key] = {lab: float(a.sum()) / N for lab, a in results[key].per_node[node.name].items()}
        row = {"name": node.name, "op": node.op, "kind": nc.kind, "shape": list(node.shape), "source": node.source,
               "counts": c, "energy_pj": energy, "energy_by_label_pj": by_label, "attrs": nc.attrs}
        if nc.op in BINARY_OPS:
            numel = float(np.prod(node.shape))
            row["firing_rate"] = nc.total("spikes") / (numel * T * N)
            row["firing_rate_per_step"] = [float(v) / numel for v in nc.q["spikes"].mean(1)]
        layer_rows.append(row)
        for q, a in nc.q.items():
            tot_counts[q] = tot_counts.get(q, 0.0) + float(a.sum()) / N
            step_counts[q] = step_counts.get(q, np.zeros(T)) + a.mean(1)
        for key, e in energy.items():
            tot_energy[key] += e

    # what the paper's formula leaves out: every kind of operation other than synaptic MAC/AC and the SDSA mask/add
    counted = ("synaptic MAC", "synaptic AC", "attention")
    omissions = {}
    for key in PRICED_TIERS:
        by = tiers[key]["by_label"]
        left = {lab: v for lab, v in by.items() if lab not in counted}
        total = tiers[key]["total_pj_per_sample"]
        omissions[key] = {"by_label_pj": left, "total_pj": sum(left.values()),
                          "share": sum(left.values()) / total if total else None,
                          "counted_kinds_pj": sum(v for lab, v in by.items() if lab in counted)}

    per_sample = {"energy_pj": {k: list(results[k].per_sample()) for k in PRICED_TIERS},
                  "ac": list(counts.per_sample("ac")), "mac": list(counts.per_sample("mac")),
                  "spikes": list(counts.per_sample("spikes"))}
    doc = {
        "format": FORMAT, "version": VERSION, "estimate": True,
        "note": "Every energy figure is an estimate from operation counts x published per-operation constants; "
                "none is a measurement.",
        "meta": dict(meta or {}), "T": T, "samples": N, "encoding": g.encoding,
        "counting": {"widths": counts.widths.as_dict(), "access_bits": access_bits,
                     "static_input_once": counts.meta.get("static_input_once", False),
                     "input_binary": counts.meta.get("input_binary", False), "not_counted": NOT_COUNTED},
        "constants": [c.as_dict() for c in CONSTANTS.values()],
        "mean_firing_rate": rate,
        "layers": layer_rows,
        "totals": {"counts": tot_counts, "energy_pj": tot_energy},
        "per_step": {"counts": {q: list(v) for q, v in step_counts.items()},
                     "energy_pj": {k: tiers[k]["per_step_pj"] for k in PRICED_TIERS}},
        "tiers": tiers,
        "paper_vs_exact": [lc.as_dict() for lc in layers_cmp],
        "paper_sdsa_ops": sdsa,
        "ann": {"description": ann_counts.__doc__.split("\n\n")[1].strip() if ann_counts.__doc__ else "",
                "tiers": ann_tiers},
        "comparison": comparison,
        "paper_omissions": omissions,
        "attention": attention,
        "per_sample": per_sample,
    }
    return _clean(doc)


def _attention_table(counter: EnergyCounter, counts: Counts, blocks: list, fp32: Any, layers_cmp: list,
                     sdsa: Mapping[str, float]) -> list[dict[str, Any]]:
    """SDSA (exact and paper) vs vanilla self-attention per block, the paper's Table 1 terms, FP32 45 nm constants."""
    e_mac, e_ac, e_m = constant("E_MAC_fp32"), constant("E_AC_fp32"), constant("E_MULT_fp32")
    paper = {lc.name: lc.paper for lc in layers_cmp}
    g = counter.graph
    out = []
    for b in blocks:
        n, d, h = b.tokens, b.dim, b.heads
        f_nodes = [b.and_node, b.colsum, b.gate, b.mask]
        f_nodes += [c.name for c in g.consumers(b.gate) if c.op == "broadcast"]
        f_nodes += [x.name for x in g if x.op == "erode" and x.attrs.get("mode") == "heads"
                    and (b.and_node in x.inputs or b.mask in x.inputs)]
        row = {
            "block": b.name, "tokens": n, "dim": d, "heads": h,
            "sdsa_exact_pj": {"QKV": sum(fp32.node_total(x) for x in b.qkv), "f(Q,K,V)": sum(fp32.node_total(x)
                                                                                        for x in f_nodes),
                              "scale": 0.0, "softmax": 0.0},
            "sdsa_paper_pj": {"QKV": e_ac * sum(paper[x] for x in b.qkv), "f(Q,K,V)": e_ac * sdsa[b.mask],
                              "scale": 0.0, "softmax": 0.0},
            "vsa_pj": {"QKV": e_mac * 3 * n * d * d, "f(Q,K,V)": e_mac * 2 * n * n * d, "scale": e_m * h * n * n,
                       "softmax": e_mac * 2 * h * n * n},
        }
        for k in ("sdsa_exact_pj", "sdsa_paper_pj", "vsa_pj"):
            row[k.replace("_pj", "_total_pj")] = sum(row[k].values())
        vsa = row["vsa_total_pj"]
        row["vsa_over_sdsa_exact"] = vsa / row["sdsa_exact_total_pj"] if row["sdsa_exact_total_pj"] else None
        row["vsa_over_sdsa_paper"] = vsa / row["sdsa_paper_total_pj"] if row["sdsa_paper_total_pj"] else None
        f_exact, f_paper = row["sdsa_exact_pj"]["f(Q,K,V)"], row["sdsa_paper_pj"]["f(Q,K,V)"]
        vsa_f = row["vsa_pj"]["f(Q,K,V)"] + row["vsa_pj"]["scale"] + row["vsa_pj"]["softmax"]
        row["f_vsa_over_sdsa_exact"] = vsa_f / f_exact if f_exact else None
        row["f_vsa_over_sdsa_paper"] = vsa_f / f_paper if f_paper else None
        out.append(row)
    return out


__all__ = ["analyze", "FORMAT", "VERSION", "PRICED_TIERS"]
