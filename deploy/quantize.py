"""The quantiser: intermediate graph (``export/graph.py``) -> integer network (``deploy/intnet.py``).

Everything the integer network does is Lava 0.10 fixed point (``deploy/fixed_point.py``); this module only chooses
integers. The mapping, per graph op:

=====================  =============================================================================================
graph                  integer network
=====================  =============================================================================================
``input``              ``input`` population: integers 0..L on the data's grid (255: 8-bit images; ``encode_input``);
                       normalisation folded into conv 1 (per-neuron bias at the zero-padded borders)
``conv2d``/``linear``  synapses (BN folded) into every population that reads the current; never a population
``add`` (stream)       a graded ``relay`` population (its terms as synapses, the previous relay by a direct edge);
                       readers take it by a direct edge, their bias the sum of the term biases
``avgpool`` of conv    one composed conv synapse (NIR-clean SPS stage 3)
``mean_tokens``        one graded synapse of equal weights averages the last stream relay over tokens into the head
                       LIF
``maxpool`` (real)     ``maxpool`` relay population on the stage-3 current; consumers read it by direct edges (bias
                       commutes: maxpool(x + b) = maxpool(x) + b per channel, so biases go to the consumers)
``lif``                ``lif`` population: du=4095 (u = a << 6), dv = 4096*decay, vth, per-neuron bias
``and``                ``gate`` (vth=1: fires iff both binary inputs are 1); the broadcast is a ones-synapse
``sum_tokens`` -> lif  ones-synapse into the talking-heads LIF; with decay 1/2 and threshold <= 1/2 it fires iff the
                       count is >= 1, encoded exactly (vth=0)
``maxpool_binary``,    window-of-ones synapse into a ``gate`` with vth=0 (OR)
``erode``
``linear`` -> output   ``integrator`` population (du=4095, dv=0, vth unreachable); logits = v / decode['scale']
=====================  =============================================================================================

Scales. A LIF with charge factor d and threshold theta gets a current scale K (integer current per float unit):
weights ``w_int * 2**e ~ K * W`` (the 1/2 input decay folded in through K = d*S/64), bias ``64*K*b`` (v units) and
``vth = K*theta/d``; then ``v ~ S*H`` with ``S = 64*K/d``. Each synapse has its own exponent, so every synapse uses
its full 8-bit mantissa whatever K is; by default a second 8-bit synapse carries the first one's rounding residual
(``QuantConfig.weight_terms``; with one term, per-output-channel exponent groups and a sign split instead).
K is the largest value for which Lava's 24-bit state provably never overflows for ANY input (worst case over binary
spikes / input levels, sign-split): ``|a| < 2**17`` (u = a << 6 never wraps), ``v`` never clips, vth <= 131071,
bias mantissa 13 bits with exponent 0..7, weight exponent in [-8, 7]. Populations joined by direct edges from a
relay must share K (union-find). If no K passes, quantisation fails naming the layer; which constraint bound K is
reported per population (``limited_by``), so nothing ever wraps silently.

Exactness. Gates, OR windows, the talking-heads count LIF and all ones-synapses are exact; so is the input on its
data grid. LIF thresholds are exact for tau=2 (``vth = 2K``). Approximate: the weights (8-bit mantissas, mixed-sign
ones even), the bias (13-bit mantissa per neuron, one exponent per population; exact with ``bias_synapse``), the
floor of negative weight exponents (the bias compensates its mean), the integer v halving (truncates toward zero),
PLIF decays (dv rounded) and the strict '>' threshold against the model's '>='. The float <-> integer agreement is
measured by ``deploy/agreement.py``; docs/integer.md has the numbers.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Mapping

import numpy as np
import torch

from export.graph import Graph
from sdt.errors import UserError

from .intnet import IntNet, Population, Synapse, synapse_name
from .lowering import _lower
from .quant_config import BIAS_SOURCE, INPUT_LEVELS, LEVEL_CANDIDATES, QuantConfig, QuantizationError
from .scales import _QSyn, _Solver


# -------------------------------------------------------------------------------------------------- assembly

def _to_synapse(s: _QSyn, dst: str) -> Synapse:
    node = s.node if s.node is not None else s.name
    name = synapse_name(node, dst, s.part)
    if s.kind == "conv":
        a = s.attrs
        attrs = {"stride": list(a["stride"]), "padding": list(a["padding"]), "groups": int(a["groups"])}
        if tuple(a["dilation"]) != (1, 1):
            attrs["dilation"] = list(a["dilation"])
        return Synapse(name, s.src, dst, "conv", s.w.astype(np.int32), s.e, s.graded, attrs, node)
    if s.kind == "dense":
        return Synapse(name, s.src, dst, "dense", s.w.astype(np.int32), s.e, s.graded, {}, node)
    keep = s.w != 0
    return Synapse(name, s.src, dst, "sparse", (s.rows[keep].astype(np.int32), s.cols[keep].astype(np.int32),
                                                s.w[keep].astype(np.int32)), s.e, s.graded,
                   {"shape": list(s.attrs["shape"])}, node)


def detect_input_levels(graph: Graph, x: torch.Tensor | np.ndarray | None) -> tuple[int, float | None]:
    """The smallest of :data:`LEVEL_CANDIDATES` whose grid holds every calibration pixel (normalisation undone), and
    the largest distance to the grid at that level (``None`` without data: 255 is assumed)."""
    if x is None or graph.encoding == "frames":
        return INPUT_LEVELS, None
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    norm = graph.metadata.get("normalization")
    if norm:
        a = a * np.asarray(norm["std"]).reshape(-1, 1, 1) + np.asarray(norm["mean"]).reshape(-1, 1, 1)
    errs = {L: float(np.abs(a * L - np.round(a * L)).max()) for L in LEVEL_CANDIDATES}
    for L in LEVEL_CANDIDATES:
        if errs[L] < 1e-3:  # float32 data: a grid point is off by ~1e-5 levels at most
            return L, errs[L]
    return INPUT_LEVELS, errs[INPUT_LEVELS]


def quantize_graph(graph: Graph, config: QuantConfig | None = None, metadata: Mapping[str, Any] | None = None,
                   calib_x: torch.Tensor | np.ndarray | None = None) -> tuple[IntNet, dict[str, Any]]:
    """Quantise ``graph``; returns the validated :class:`IntNet` and a report (per population: scale K, vth, dv,
    worst-case |a| and |v| use of the 24-bit range, weight exponents and relative weight error, and ``limited_by``:
    which limit fixed the scale). Raises :class:`QuantizationError` for a layer no scale can fit.

    ``calib_x`` (float model inputs) is only used by ``input_levels=None`` to find the input grid; the scales come
    from worst-case bounds, never from data."""
    cfg = (config or QuantConfig()).resolved()
    if not 1 <= cfg.weight_terms <= 4:
        raise UserError(f"weight_terms must be 1..4, got {cfg.weight_terms}")
    grid_err = None
    if cfg.input_levels is None:
        levels, grid_err = detect_input_levels(graph, calib_x)
        cfg = replace(cfg, input_levels=levels)
    plans, encoding, out = _lower(graph, int(cfg.input_levels))
    if encoding.get("kind") == "pixel_levels":
        encoding["grid_error_on_calib"] = grid_err  # max |L*x - round(L*x)| on the calibration inputs (or None)
    solver = _Solver(plans, graph.T, cfg)
    solver.solve()
    pops, syns, edges = [], [], []
    for p in plans:
        if p.kind == "input":
            pops.append(Population(p.name, "input", tuple(p.shape), attrs={"node": p.node}))
            continue
        s = solver.sol[p.name]
        attrs = dict(p.attrs, node=p.node, K=s.K)
        pops.append(Population(p.name, p.kind, tuple(p.shape), du=s.du, dv=s.dv, vth=s.vth,
                               bias_mant=s.bias_mant if s.bias_mant is not None and np.any(s.bias_mant) else None,
                               bias_exp=s.bias_exp, attrs=attrs))
        for q in s.syns:
            if q.kind == "edge":
                edges.append((q.src, p.name))
            elif np.any(q.w):
                syns.append(_to_synapse(q, p.name))
    if any(s.src == BIAS_SOURCE for s in syns):
        if BIAS_SOURCE in {p.name for p in pops}:
            raise UserError(f"quantiser: a graph node is called {BIAS_SOURCE!r}, the name of the bias source")
        # a gate without inputs and bias 1: v = 1 > 0 every step, so it spikes at every step
        pops.insert(1, Population(BIAS_SOURCE, "gate", (1,), du=4095, dv=0, vth=0, bias_mant=np.ones(1, np.int32),
                                  bias_exp=0, attrs={"op": "always_on", "node": None}))
    names = [s.name for s in syns]
    if len(set(names)) != len(names):
        raise UserError("quantiser: synapse names collide")
    head = solver.sol[out["population"]]
    decode = {"population": out["population"], "scale": 64.0 * head.K * graph.T, "reduce": "mean",
              "rule": "logits = v / scale (v: the integrator's value after T steps)"}
    if out["reduce"] == "none":
        decode["note"] = "TET model: the integrator gives the mean over T of the per-step logits"
    report = {p.name: solver.sol[p.name].report for p in plans if p.name in solver.sol}
    # LIFs / relays whose scale the 24-bit guard (not vth's 17 bits, the bias or weight ranges) chose; the integrator is
    # always bounded by its range, which only sets the logit resolution
    rescaled = sorted(n for n, r in report.items() if r["limited_by"] in ("u_bound", "v_bound", "relay_range"))
    low = sorted(n for n, r in report.items() if r["kind"] == "lif" and 0 < r["vth"] < 64)
    summary = {"populations": len(pops), "synapses": len(syns), "edges": len(edges),
               "weights_nonzero": int(sum(np.count_nonzero(s.weight[2] if s.kind == "sparse" else s.weight)
                                          for s in syns)),
               "limited_by_overflow_guard": rescaled, "low_threshold_resolution": low, "layers": report}
    meta = {"producer": "deploy.quantize", "quant_config": asdict(cfg),
            "graph_metadata": {k: graph.metadata.get(k) for k in ("model_config", "variant", "normalization",
                                                                  "threshold_rule") if k in graph.metadata},
            "quantization": summary}
    meta.update(dict(metadata or {}))
    net = IntNet(tuple(pops), tuple(syns), tuple(edges), graph.T, encoding, decode, meta)
    net.validate()
    return net, summary


# --------------------------------------------------------------------------------------- encode / decode

def quantize(graph: Graph, calib: torch.Tensor | np.ndarray | None = None,
             config: QuantConfig | None = None) -> IntNet:
    """Shorthand for ``quantize_graph(graph, config, calib_x=calib)[0]``."""
    return quantize_graph(graph, config, calib_x=calib)[0]


# ----------------------------------------------------------------------------------------------- model API

def quantize_model(model: Any, normalization: Mapping[str, Any] | None = None, config: QuantConfig | None = None,
                   metadata: Mapping[str, Any] | None = None, calib_x: torch.Tensor | None = None
                   ) -> tuple[IntNet, dict[str, Any], Graph]:
    """Build the graph of ``model`` and quantise it; returns ``(net, report, graph)``."""
    from export.from_model import build_graph

    graph = build_graph(model, normalization=normalization)
    net, report = quantize_graph(graph, config, metadata, calib_x)
    return net, report, graph


__all__ = ["QuantConfig", "QuantizationError", "quantize", "quantize_graph", "quantize_model", "detect_input_levels"]
