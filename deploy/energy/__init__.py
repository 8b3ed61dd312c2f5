"""Energy estimation for the SDT toolchain: an exact operation counter over the intermediate graph, the paper's
analytic count next to it, energy tiers (paper FP32, integer, integer + memory, neuromorphic chip), the equivalent
ANN and the break-even firing rate. Every energy figure is an estimate; see docs/energy.md.

    from export.from_model import build_graph
    from export.run_graph import run_graph
    from deploy.energy import EnergyCounter, analyze, write_report

    graph = build_graph(model)
    counter = EnergyCounter(graph)
    _, tensors = run_graph(graph, x, record=counter.required)
    counts = counter.count(tensors)                  # per node, per step, per sample
    write_report(analyze(counter, counts), "energy_out")
"""
from __future__ import annotations

from .analytic import ann_counts, attention_blocks, paper_rate_source, paper_sdsa_ops, paper_vs_exact
from .constants import CONSTANTS, INTNET_WIDTHS, ByteWidths, Constant, constant, sram_pj_per_byte
from .counter import Counts, EnergyCounter, NodeCounts, binary_nodes
from .analysis import analyze
from .report import render_html, render_markdown, write_report
from .tiers import TIERS, break_even, mean_firing_rate, paper_energy, price

__all__ = ["EnergyCounter", "Counts", "NodeCounts", "binary_nodes", "CONSTANTS", "Constant", "constant",
           "ByteWidths", "INTNET_WIDTHS", "sram_pj_per_byte", "paper_vs_exact", "paper_rate_source",
           "paper_sdsa_ops", "attention_blocks", "ann_counts", "TIERS", "price", "paper_energy", "break_even",
           "mean_firing_rate", "analyze", "render_markdown", "render_html", "write_report"]
