"""Energy tiers: small functions of counts x constants. Every figure is an estimate, printed with counts and constants.

==================  ==================================================================================================
``paper``           the SDT paper's formula on its analytic counts: 4.6 pJ x first-conv FLOPs + 0.9 pJ x sum SOP
``fp32``            the paper's 45 nm FP32 constants on the *exact* counts, every operation included
``int``             45 nm integer arithmetic (int8 multiply, int32 add for the 24-bit accumulators/membranes)
``int_mem``         ``int`` + SRAM traffic in the Lemaire style (cost per byte by buffer size)
``chip``            a neuromorphic-chip profile: energy per synaptic event and per neuron update (Loihi 1)
==================  ==================================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .constants import CONSTANTS, constant, sram_pj_per_byte
from .counter import MEMORY_QUANTITIES, Counts, NodeCounts

# (label, quantity, pJ per unit, constants used)
Rule = tuple[str, str, float, str]

LABELS = ("synaptic MAC", "synaptic AC", "bias", "neuron", "attention", "pool", "membrane stream",
          "mem: weights", "mem: accumulators", "mem: membranes", "mem: I/O")
MEM_LABELS = {"weight_bytes": "mem: weights", "accum_bytes": "mem: accumulators", "membrane_bytes": "mem: membranes",
              "io_read_bytes": "mem: I/O", "io_write_bytes": "mem: I/O"}


def _c(*names: str) -> float:
    return sum(constant(n) for n in names)


def _common(node: NodeCounts, mac: tuple[str, ...], add: str, mult: str, gate: str, leak_mult: str,
            compare: str, shift_as_add: bool) -> list[Rule]:
    """Pricing shared by the fp32 and integer tiers (they differ only in which constants play which role)."""
    k, q = node.kind, node.q
    r: list[Rule] = []
    joined = " + ".join(mac)
    if "mac" in q and (k == "mac" or q["mac"].any()):
        r.append(("synaptic MAC", "mac", _c(*mac), joined))
    if k in ("ac", "mac") and "ac" in q and (k == "ac" or q["ac"].any()):
        r.append(("synaptic AC", "ac", _c(add), add))
    if "bias_adds" in q:
        r.append(("bias", "bias_adds", _c(add), add))
    if "neuron_updates" in q:
        leak = add if node.attrs.get("leak_is_shift") and shift_as_add else leak_mult
        # leak (a multiply, or a shift priced as an add when the decay is 2^-k) + integrate add + threshold compare
        r.append(("neuron", "neuron_updates", _c(leak, add, compare), f"{leak} + {add} + {compare}"))
    if "relu" in q:
        r.append(("neuron", "relu", _c(compare), compare))
    if k in ("and", "mask") and "in_events" in q:
        r.append(("attention", "in_events", _c(gate), gate))
    if "colsum_adds" in q:
        r.append(("attention", "colsum_adds", _c(add), add))
    if "attn_mac" in q:
        r.append(("attention", "attn_mac", _c(*mac), joined))
        r.append(("attention", "softmax", _c(*mac), joined))
        r.append(("attention", "scale_mults", _c(mult), mult))
    if k == "pool":
        if "or_writes" in q:
            r.append(("pool", "or_writes", _c(gate), gate))
        else:
            r.append(("pool", "compares", _c(compare), compare))
    if "adds" in q:
        r.append(("membrane stream", "adds", _c(add), add))
    if "mults" in q:
        r.append(("membrane stream", "mults", _c(mult), mult))
    return r


def rules_fp32(node: NodeCounts) -> list[Rule]:
    # the float model multiplies by the decay even when it is 0.5
    return _common(node, ("E_MAC_fp32",), "E_AC_fp32", "E_MULT_fp32", "E_AC_fp32", "E_MULT_fp32", "E_AC_fp32", False)


def rules_int(node: NodeCounts) -> list[Rule]:
    # a decay of 2^-k is a shift in integer hardware (Horowitz has no shift figure: priced as an int32 add)
    return _common(node, ("E_MULT_int8", "E_ADD_int32"), "E_ADD_int32", "E_MULT_int32", "E_ADD_int8",
                   "E_MULT_int32", "E_ADD_int32", True)


def rules_chip(node: NodeCounts) -> list[Rule]:
    syn, neu = "E_SYNOP_loihi1", "E_NEURON_loihi1"
    k, q = node.kind, node.q
    r: list[Rule] = []
    if "mac" in q and (k == "mac" or q["mac"].any()):
        r.append(("synaptic MAC", "mac", _c(syn), syn + " (graded event)"))
    if k in ("ac", "mac") and "ac" in q and (k == "ac" or q["ac"].any()):
        r.append(("synaptic AC", "ac", _c(syn), syn))
    if "neuron_updates" in q:
        r.append(("neuron", "neuron_updates", _c(neu), neu))
    if "relu" in q:
        r.append(("neuron", "relu", _c(neu), neu))
    if k in ("and", "mask") and "in_events" in q:
        r.append(("attention", "in_events", _c(syn), syn))
    if "colsum_adds" in q:
        r.append(("attention", "colsum_adds", _c(syn), syn))
    if "gate_updates" in q:
        r.append(("attention" if k in ("and", "mask") else "pool", "gate_updates", _c(neu), neu))
    if "or_writes" in q:
        r.append(("pool", "or_writes", _c(syn), syn))
    if "attn_mac" in q:  # the products of vanilla attention as graded synaptic events (a lower bound)
        for name in ("attn_mac", "softmax", "scale_mults"):
            r.append(("attention", name, _c(syn), syn + " (graded event)"))
    return r


@dataclass(frozen=True)
class Tier:
    key: str
    title: str
    description: str
    rules: Callable[[NodeCounts], list[Rule]] | None
    memory: bool = False


TIERS: dict[str, Tier] = {t.key: t for t in (
    Tier("paper", "(a) paper formula, 45 nm FP32",
         "E_MAC x first-conv FLOPs (once) + E_AC x sum fr x T x FLOPs + SDSA mask/add ops; the SDT paper's method",
         None),
    Tier("fp32", "(a') paper constants on exact counts",
         "E_MAC 4.6 / E_AC 0.9 / FP32 mult 3.7 pJ on every counted operation (neurons, attention, pools, stream)",
         rules_fp32),
    Tier("int", "(b) 45 nm integer compute",
         "int8 x int8 multiply + int32 add per MAC, int32 add per AC / 24-bit state op, int8 add per 1-bit gate",
         rules_int),
    Tier("int_mem", "(c) integer compute + SRAM memory (Lemaire style)",
         "(b) plus weight reads per synaptic event, accumulator and membrane read/write, spike and graded I/O, "
         "priced per byte by buffer size", rules_int, memory=True),
    Tier("chip", "(d) neuromorphic chip profile (Loihi 1)",
         "23.6 pJ per synaptic event + 52 pJ per neuron/gate update (Davies et al. 2018, unverified figures)",
         rules_chip),
)}


@dataclass
class TierResult:
    """Energy of one tier: per node and label, ``[T, N]`` arrays in pJ; ``lines`` are the priced counts."""

    tier: Tier
    per_node: dict[str, dict[str, np.ndarray]]
    lines: list[dict[str, Any]]
    samples: int
    T: int
    access_bits: int | None = None
    constants: list[str] = field(default_factory=list)

    def per_sample(self) -> np.ndarray:
        out = np.zeros(self.samples)
        for labels in self.per_node.values():
            for a in labels.values():
                out += a.sum(0)
        return out

    def total_per_sample(self) -> float:
        """Mean energy per sample (pJ)."""
        return float(self.per_sample().mean()) if self.samples else 0.0

    def by_label(self) -> dict[str, float]:
        """Mean pJ per sample for every operation kind."""
        out: dict[str, float] = {}
        for labels in self.per_node.values():
            for lab, a in labels.items():
                out[lab] = out.get(lab, 0.0) + float(a.sum()) / self.samples
        return out

    def node_total(self, node: str) -> float:
        return sum(float(a.sum()) for a in self.per_node.get(node, {}).values()) / self.samples

    def per_step(self) -> np.ndarray:
        """``[T]``: mean pJ per sample at each step, all nodes."""
        out = np.zeros(self.T)
        for labels in self.per_node.values():
            for a in labels.values():
                out += a.mean(1)
        return out


def price(counts: Counts, tier: Tier, buffers: Mapping[str, Mapping[str, float]] | None = None,
          access_bits: int = 64) -> TierResult:
    """Price ``counts`` under ``tier``. ``buffers`` (node -> memory quantity -> bytes) is needed for memory tiers."""
    if tier.rules is None:
        raise ValueError(f"tier {tier.key!r} is computed from the analytic counts (see paper_energy)")
    if tier.memory and buffers is None:
        raise ValueError(f"tier {tier.key!r} needs the buffer sizes")
    per_node: dict[str, dict[str, np.ndarray]] = {}
    lines: dict[tuple[str, str, str], dict[str, Any]] = {}
    used: set[str] = set()
    for name, nc in counts.nodes.items():
        rules = [(lab, qn, coef, consts, None) for lab, qn, coef, consts in tier.rules(nc)]
        if tier.memory:
            for qn in MEMORY_QUANTITIES:
                if qn in nc.q:
                    size = buffers[name].get(qn, 0.0)
                    rules.append((MEM_LABELS[qn], qn, sram_pj_per_byte(size, access_bits), "SRAM", size))
        acc: dict[str, np.ndarray] = {}
        for label, qn, coef, consts, size in rules:
            if qn not in nc.q:
                continue
            e = nc.q[qn] * coef
            acc[label] = acc[label] + e if label in acc else e
            # one line per (kind, quantity, pricing); memory lines gather every buffer size of that quantity
            key = (label, qn, consts if size is not None else f"{consts}@{coef!r}")
            line = lines.setdefault(key, {"count": 0.0, "energy": 0.0, "coef": coef, "consts": consts,
                                          "sizes": []})
            line["count"] += float(nc.q[qn].sum()) / counts.samples
            line["energy"] += float(e.sum()) / counts.samples
            if size is not None:
                line["sizes"].append(size)
            used.update(c for c in consts.split(" ") if c in CONSTANTS)
        per_node[name] = acc
    out_lines = []
    for (label, qn, _), ln in lines.items():
        consts, coef = ln["consts"], ln["coef"]
        if ln["sizes"]:  # SRAM: the mean cost per byte over the buffers, and their size range
            lo, hi = min(ln["sizes"]) / 1024, max(ln["sizes"]) / 1024
            consts = f"SRAM by buffer size ({lo:.2f}-{hi:.2f} KB), per {access_bits}-bit access"
            coef = ln["energy"] / ln["count"] if ln["count"] else 0.0
        out_lines.append({"label": label, "quantity": qn, "count_per_sample": ln["count"], "pj_per_unit": coef,
                          "constants": consts, "energy_pj_per_sample": ln["energy"]})
    if tier.memory:
        used.update(("E_SRAM_8KB", "E_SRAM_32KB", "E_SRAM_1MB"))
    return TierResult(tier, per_node, out_lines, counts.samples, counts.T, access_bits if tier.memory else None,
                      sorted(used))


def mean_firing_rate(counts: Counts) -> float:
    """Average firing rate of all LIF neurons: spikes / neuron updates over the whole run."""
    spikes = sum(nc.total("spikes") for nc in counts.nodes.values() if nc.op == "lif")
    updates = sum(nc.total("neuron_updates") for nc in counts.nodes.values() if nc.op == "lif")
    return spikes / updates if updates else 0.0


def break_even(e_fixed: float, e_var: float, e_ann: float, rate: float) -> float | None:
    """The average firing rate at which the SNN's energy equals the ANN's, assuming every spike-driven count scales
    with the rate: ``E(r) = e_fixed + e_var * r / rate``. ``None`` when no spike-driven energy was measured
    (``rate`` 0); a value <= 0 means the SNN loses even without spikes; > 1 means it wins at any rate."""
    if e_var <= 0 or rate <= 0:
        return None
    return rate * (e_ann - e_fixed) / e_var


def price_with_split(counts: Counts, tier: Tier, buffers: Mapping[str, Mapping[str, float]] | None,
                     access_bits: int) -> tuple[TierResult, float, float]:
    """``(result, e_fixed, e_var)`` per sample: the part that does not scale with spikes and the part that does."""
    res = price(counts, tier, buffers, access_bits)
    fixed = price(counts.scaled(0.0), tier, buffers, access_bits).total_per_sample()
    return res, fixed, res.total_per_sample() - fixed


__all__ = ["Tier", "TIERS", "TierResult", "price", "price_with_split", "break_even", "mean_firing_rate", "LABELS",
           "rules_fp32", "rules_int", "rules_chip"]


def paper_energy(layers: list[Any], sdsa_ops: Mapping[str, float], T: int) -> dict[str, Any]:
    """The paper's formula on its analytic counts (per sample): ``E_MAC * first-conv FLOPs + E_AC * (sum SOP + SDSA
    mask/add ops)``. ``layers``: :class:`~deploy.energy.analytic.LayerComparison` list; ``sdsa_ops``: mask node ->
    ops. Returns per-layer pJ, the priced lines and the total."""
    e_mac, e_ac = constant("E_MAC_fp32"), constant("E_AC_fp32")
    per_layer: dict[str, float] = {}
    mac = sum(lc.paper for lc in layers if lc.kind == "mac")
    sop = sum(lc.paper for lc in layers if lc.kind == "ac")
    for lc in layers:
        per_layer[lc.name] = lc.paper * (e_mac if lc.kind == "mac" else e_ac)
    for node, ops in sdsa_ops.items():
        per_layer[node] = per_layer.get(node, 0.0) + ops * e_ac
    mask_ops = float(sum(sdsa_ops.values()))
    lines = [
        {"label": "synaptic MAC", "quantity": "first-conv FLOPs (once)", "count_per_sample": mac, "pj_per_unit": e_mac,
         "constants": "E_MAC_fp32", "energy_pj_per_sample": mac * e_mac},
        {"label": "synaptic AC", "quantity": "SOP = fr x T x FLOPs", "count_per_sample": sop, "pj_per_unit": e_ac,
         "constants": "E_AC_fp32", "energy_pj_per_sample": sop * e_ac},
        {"label": "attention", "quantity": "SDSA T x N x D x (R_KV + R_Q)", "count_per_sample": mask_ops,
         "pj_per_unit": e_ac, "constants": "E_AC_fp32", "energy_pj_per_sample": mask_ops * e_ac},
    ]
    total = sum(per_layer.values())
    return {"per_layer": per_layer, "lines": lines, "total_pj_per_sample": total,
            "by_label": {"synaptic MAC": mac * e_mac, "synaptic AC": sop * e_ac, "attention": mask_ops * e_ac},
            "e_fixed": mac * e_mac, "e_var": (sop + mask_ops) * e_ac, "T": T}


__all__ += ["paper_energy"]
