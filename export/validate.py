"""Check an exported file against the PyTorch model, spike for spike: the library the NIR and ONNX paths share.

:func:`validate_against_model` runs a candidate (any callable returning logits and named spike tensors: the NIR
runner, onnxruntime) and the model on the same random inputs, and reports logits, argmax and every spike tensor;
a spike that differs where the membrane lies within float rounding of the threshold is a rounding tie, not a
disagreement (:class:`Validation`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sdt.errors import UserError

from .graph import BINARY_OPS, Graph

TIE_TOL = 1e-4  # |h - threshold| below which float rounding (~1e-6 here) may legitimately flip a spike
ATOL = 1e-5


def spike_nodes(graph: Graph) -> tuple[str, ...]:
    """The graph's spike (binary) tensors, in graph order. ``broadcast`` copies of a gate are left out: the gate (a
    ``lif`` node) carries the same spikes."""
    return tuple(n.name for n in graph if n.op in BINARY_OPS)


def graph_stats(graph: Graph) -> dict[str, int]:
    """``nodes``, ``edges`` (data dependencies) and ``parameters`` (numbers held by nodes) of ``graph``."""
    return {"nodes": len(graph), "edges": sum(len(n.inputs) for n in graph),
            "parameters": int(sum(int(np.asarray(p).size) for n in graph for p in n.params.values()))}


@dataclass
class Validation:
    """The equality check of an exported file against the PyTorch model on ``n`` random inputs.

    An input is *clean* when every compared spike tensor is identical; then its logits must agree within ``atol``
    with the same argmax. Spike differences are accepted only as *rounding ties*: the first flip of a neuron is where
    the model's membrane ``h`` lay within ``tie_tol`` of the threshold, and every other differing spike node sits
    downstream of a flipped one (``strict`` accepts no ties at all).
    """

    label: str
    atol: float
    tie_tol: float
    strict: bool
    nodes: tuple[str, ...] = ()
    n: int = 0
    clean: int = 0
    argmax_clean: int = 0
    max_diff: float = 0.0
    ties: int = 0
    argmax_ties: int = 0
    max_diff_ties: float = 0.0
    worst_tie: float = 0.0
    tie_nodes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.n > 0 and not self.problems and not (self.strict and self.ties)

    def line(self) -> str:
        """A one-line verdict."""
        head = (f"{self.label} vs PyTorch on {self.n} inputs: argmax {self.argmax_clean + self.argmax_ties}/{self.n}, "
                f"max |dlogit| {self.max_diff:.2g} (bound {self.atol:g}), spikes identical in {len(self.nodes)} "
                f"nodes on {self.clean}/{self.n} inputs")
        if self.ties:
            where = ", ".join(f"{k} x{v}" for k, v in sorted(self.tie_nodes.items(), key=lambda kv: -kv[1])[:3])
            head += (f"; {self.ties} input(s) flipped spikes at float rounding ties (|h-threshold| <= "
                     f"{self.worst_tie:.1g}, at {where}): their max |dlogit| {self.max_diff_ties:.2g}, argmax "
                     f"{self.argmax_ties}/{self.ties}{' (not accepted: strict)' if self.strict else ''}")
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            head += f"; FAILED: {self.problems[0]}{more}"
        return head + f" [{self.seconds:.1f} s]"


def random_inputs(graph: Graph, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` reproducible inputs: normalised-image-like N(0,1) pixels, or non-negative event-frame counts."""
    g = torch.Generator().manual_seed(seed)
    if graph.encoding == "frames":
        return torch.randint(0, 3, (n, graph.T, *graph.input.shape), generator=g).to(torch.float32)
    return torch.randn(n, *graph.input.shape, generator=g)


def _spike_ancestors(graph: Graph, nodes: Collection[str]) -> dict[str, set[str]]:
    """For every node, the compared spike nodes it (transitively) reads."""
    anc: dict[str, set[str]] = {}
    for node in graph:
        s: set[str] = set()
        for i in node.inputs:
            s |= anc[i]
            if i in nodes:
                s.add(i)
        anc[node.name] = s
    return anc


def _membrane(x: torch.Tensor, decay: float, thr: float) -> torch.Tensor:
    """The model's pre-threshold membrane ``h`` ``[T, ...]`` of a LIF driven by ``x``, with the model's ops."""
    d = torch.tensor(decay, dtype=torch.float32)
    v = torch.zeros_like(x[0])
    hs = []
    for t in range(x.shape[0]):
        h = v + (x[t] - v) * d
        s = (h >= thr).to(x.dtype)
        v = h * (1.0 - s)
        hs.append(h)
    return torch.stack(hs)


def _batch_size(graph: Graph, nodes: Sequence[str], budget_bytes: float = 1.5e9) -> int:
    per_sample = 3 * 4 * graph.T * sum(math.prod(graph.node(n).shape) for n in nodes)  # ref + candidate + masks
    return int(max(1, min(128, budget_bytes // max(1, per_sample))))


Candidate = Callable[[torch.Tensor], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


def validate_against_model(candidate: Candidate, graph: Graph, model: nn.Module, n: int, *, label: str,
                           nodes: Sequence[str] | None = None, seed: int = 0, batch_size: int | None = None,
                           atol: float = ATOL, tie_tol: float = TIE_TOL, strict: bool = False) -> Validation:
    """Run ``candidate`` (``x -> (logits, {node: [T,B,...] spikes})``) and the model on the same ``n`` random inputs.

    The model gives the reference logits; the graph executor (bit-exact with it, checked here on every batch) gives
    the reference spikes and, for diagnosing a flip, the LIF input currents.
    """
    from .run_graph import run_graph

    if n < 1:
        raise UserError(f"--validate needs at least 1 input, got {n}")
    t0 = time.perf_counter()
    nodes = tuple(spike_nodes(graph) if nodes is None else nodes)
    report = Validation(label, atol, tie_tol, strict, nodes)
    anc = _spike_ancestors(graph, set(nodes))
    bs = batch_size or _batch_size(graph, nodes)
    xs = random_inputs(graph, n, seed)
    model = getattr(model, "module", model).eval()
    for start in range(0, n, bs):
        x = xs[start:start + bs]
        with torch.no_grad():
            ref = model(x)
            g_logits, ref_sp = run_graph(graph, x, record=nodes)
        if not torch.equal(g_logits, ref):
            raise RuntimeError("the graph executor does not reproduce the model's logits; the export graph is wrong")
        logits, cand_sp = candidate(x)
        logits = torch.as_tensor(logits, dtype=torch.float32).reshape(ref.shape)
        B = x.shape[0]
        differs = torch.zeros(B, len(nodes), dtype=torch.bool)
        masks: dict[str, torch.Tensor] = {}
        for j, name in enumerate(nodes):
            c = torch.as_tensor(cand_sp[name]).reshape(ref_sp[name].shape)
            m = c != ref_sp[name]
            if m.any():
                masks[name] = m
                differs[:, j] = m.transpose(0, 1).reshape(B, -1).any(1)
        tied = _classify(graph, nodes, differs, masks, anc, x, report, start) if masks else torch.zeros(B, dtype=bool)
        tet = ref.dim() == 3  # TET logits are [T, B, K]; compare every step, judge argmax on the mean over T
        per = (logits - ref).abs().amax(dim=(0, 2) if tet else 1)
        agree = (logits.mean(0) if tet else logits).argmax(-1) == (ref.mean(0) if tet else ref).argmax(-1)
        clean = ~differs.any(1)
        for b in range(B):
            if clean[b]:
                report.clean += 1
                report.argmax_clean += int(agree[b])
                report.max_diff = max(report.max_diff, float(per[b]))
                if per[b] > atol:
                    report.problems.append(f"input {start + b}: logits differ by {float(per[b]):.3g} > {atol:g} with "
                                           "identical spikes")
                elif not agree[b]:
                    report.problems.append(f"input {start + b}: argmax differs with identical spikes")
            elif tied[b]:
                report.ties += 1
                report.argmax_ties += int(agree[b])
                report.max_diff_ties = max(report.max_diff_ties, float(per[b]))
    report.n = n
    report.seconds = time.perf_counter() - t0
    return report


def _classify(graph: Graph, nodes: Sequence[str], differs: torch.Tensor, masks: Mapping[str, torch.Tensor],
              anc: Mapping[str, set[str]], x: torch.Tensor, report: Validation, start: int) -> torch.Tensor:
    """Which inputs' spike differences are all explained by rounding ties (records problems for the others).

    The network is causal: a difference at step t can only cause differences at steps >= t downstream. So in each
    input, a neuron whose first difference comes before every differing upstream spike node's first difference is a
    *cause*, and a cause must be a LIF whose model membrane was within ``tie_tol`` of its threshold at that step.
    """
    from .run_graph import run_graph

    B, T = differs.shape[0], masks[next(iter(masks))].shape[0]
    ok = torch.ones(B, dtype=torch.bool)
    causes: dict[tuple[int, str], torch.Tensor] = {}  # (input, node) -> [*shape] mask of neurons that must be ties
    for b in range(B):
        bad = [nodes[j] for j in torch.nonzero(differs[b]).flatten().tolist()]
        first = {n: int(masks[n][:, b].reshape(T, -1).any(1).to(torch.int8).argmax()) for n in bad}
        for n in bad:
            t_up = min((first[m] for m in anc[n] if m in first), default=T)
            m = masks[n][:, b]
            step = m.to(torch.int8).argmax(0)  # first differing step of each neuron
            early = m.any(0) & (step < t_up)
            if early.any():
                causes[(b, n)] = early
    need = sorted({n for _, n in causes if graph.node(n).op == "lif"})
    dist = {}
    if need:
        with torch.no_grad():
            _, rec = run_graph(graph, x, record={graph.node(n).inputs[0] for n in need})
        for n in need:
            a = graph.node(n).attrs
            dist[n] = (_membrane(rec[graph.node(n).inputs[0]], a["decay"], a["v_threshold"]) - a["v_threshold"]).abs()
    for (b, n), early in causes.items():
        if graph.node(n).op != "lif":
            ok[b] = False
            report.problems.append(f"input {start + b}: {n} ({graph.node(n).op}) differs although its spike inputs "
                                   "are identical")
            continue
        step = masks[n][:, b].to(torch.int8).argmax(0, keepdim=True)
        worst = float(dist[n][:, b].gather(0, step)[0][early].max())
        if worst > report.tie_tol:
            ok[b] = False
            report.problems.append(f"input {start + b}: {n} spikes differ where the membrane is {worst:.3g} from "
                                   "threshold (not a rounding tie)")
        else:
            report.worst_tie = max(report.worst_tie, worst)
            report.tie_nodes[n] = report.tie_nodes.get(n, 0) + 1
    return ok


__all__ = ["ATOL", "TIE_TOL", "spike_nodes", "graph_stats", "Validation", "random_inputs", "validate_against_model",
           "Candidate"]
