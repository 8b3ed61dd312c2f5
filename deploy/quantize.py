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

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from export.graph import Graph, Node, fold_bn
from sdt.errors import UserError

from .fixed_point import V_CLIP_LIMIT, quantize_dense_weights, weight_shift
from .intnet import IntNet, Population, Synapse, save, synapse_name
from .semantics import current_range, weight_sums

__all__ = ["QuantConfig", "QuantizationError", "quantize", "quantize_graph", "quantize_model", "export_lava",
           "detect_input_levels", "grid_inputs", "load_model_and_normalization"]

VTH_MAX = (1 << 17) - 1  # Lava vth is uint17
A_LIMIT = 1 << 17  # |a| < 2**17 keeps u = a << 6 strictly inside (-2**23, 2**23]: never wraps
GRADED_LIMIT = 1 << 23  # a graded relay payload is a signed 24-bit value
BIAS_MANT = (-4096, 4095)  # int13
BIAS_EXP_MAX = 7  # 3-bit
INPUT_LEVELS = 255  # 8-bit input
BIAS_SOURCE = "bias"  # the always-on population (a gate that fires every step) that carries coarse biases
LEVEL_CANDIDATES = (255, 256, 510, 512, 1020, 1024)
RELAY_KINDS = ("maxpool", "relay")  # graded populations that pass their summed input on (no state, no bias)


class QuantizationError(UserError):
    """A layer that cannot be quantised without risking a 24-bit overflow (or another Lava limit)."""


@dataclass(frozen=True)
class QuantConfig:
    """Knobs of the quantiser (the defaults are what ``sdt-export --to lava`` uses)."""

    weight_exp_range: tuple[int, int] = (-8, 7)  # Loihi's weight exponent range; negative ones floor the sum
    # synapses per connection, each with 8-bit weights: the 2nd carries the rounding residual of the 1st (16-bit
    # effective weights for 2x the synaptic memory). 2 by default: trained SDTs flip spikes at ~1e-4 relative weight
    # error (docs/integer.md), far below what one 8-bit synapse reaches
    weight_terms: int = 2
    # one synapse (own exponent) per output-channel group of equal magnitude; None: only when weight_terms == 1
    per_channel: bool | None = None
    # mixed-sign weights as an excitatory + an inhibitory synapse (8-bit magnitudes, Lava keeps odd values in
    # one-signed matrices); None: only when weight_terms == 1
    split_sign: bool | None = None
    # biases beyond the 13-bit mantissa: the coarse part as a current from an always-on source population, the
    # remainder in the mantissa (exact to one v unit; costs a synapse per population and its synaptic events
    # every step). Off by default: it sharpens spike agreement, not top-1, on trained models (docs/integer.md)
    bias_synapse: bool = False

    def resolved(self) -> "QuantConfig":
        one = self.weight_terms == 1
        return replace(self, per_channel=one if self.per_channel is None else self.per_channel,
                       split_sign=one if self.split_sign is None else self.split_sign)
    # pixels in [0,1] -> 0..levels (DVS counts are clipped to 0..levels); None: the smallest of LEVEL_CANDIDATES on
    # whose grid the calibration inputs lie exactly (255 for uint8 images, 256 for the 2x-upsampled 17-level digits)
    input_levels: int | None = None


# ------------------------------------------------------------------------------------------ float-level plan

@dataclass
class _Term:
    """A float linear map from a source population into a destination's current.

    ``w``: float current per integer unit of the source (binary: per spike, input: per level); for a relay source
    (``relay=True``) per *float* unit of the relay value, converted with the relay's K at quantisation time.
    ``kind``: conv (4-D kernel), dense (n_dst, n_src), sparse (``rows``, ``cols``, ``w`` values) or edge (identity).
    """

    name: str
    src: str
    kind: str
    w: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    graded: bool = False
    relay: bool = False
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    exact: bool = False  # small integer weights (ones) that must be kept as they are


@dataclass
class _Current:
    """A real-valued graph tensor as a sum of terms plus a per-neuron float bias (shape = the node's shape)."""

    terms: list[_Term]
    bias: np.ndarray
    count: bool = False  # an integer spike count (sum over tokens of binary spikes)


@dataclass
class _Plan:
    """A population before quantisation."""

    name: str
    kind: str  # input | lif | gate | maxpool | relay | integrator
    shape: tuple[int, ...]
    node: str
    terms: list[_Term] = field(default_factory=list)
    bias: np.ndarray | None = None  # float, per neuron (of the population's *input* for a relay: unused)
    decay: float = 0.5
    theta: float = 1.0
    vth: int = 0  # gates
    count: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _conv_out(hw: tuple[int, int], k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
              d: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return tuple((hw[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))  # type: ignore[return-value]


def _compose_avgpool(term: _Term, pool: Mapping[str, Any], node: str) -> _Term:
    """``avgpool(conv(x))`` as one conv (pool padding 0): kernel k + (k2-1)*s, stride s*s2, same padding."""
    if term.kind != "conv":
        raise UserError(f"{node}: average pooling of a {term.kind} term is not supported by the quantiser")
    (k2h, k2w), (s2h, s2w), (p2h, p2w) = (_pair(pool[k]) for k in ("kernel_size", "stride", "padding"))
    a = term.attrs
    (sh, sw), (dh, dw) = _pair(a["stride"]), _pair(a["dilation"])
    if (p2h, p2w) != (0, 0) or (dh, dw) != (1, 1):
        raise UserError(f"{node}: average pooling with padding or after a dilated conv is not supported")
    cout, cin_g, kh, kw = term.w.shape
    w = np.zeros((cout, cin_g, kh + (k2h - 1) * sh, kw + (k2w - 1) * sw))
    for u in range(k2h):
        for v in range(k2w):
            w[:, :, u * sh:u * sh + kh, v * sw:v * sw + kw] += term.w / (k2h * k2w)
    return _Term(f"{term.name}+{node}", term.src, "conv", w,
                 dict(a, stride=(sh * s2h, sw * s2w)), term.graded, term.relay)


def _avgpool_map(x: np.ndarray, pool: Mapping[str, Any]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]
    y = F.avg_pool2d(t, _pair(pool["kernel_size"]), _pair(pool["stride"]), _pair(pool["padding"]))
    return y[0].numpy()


def _maxpool_map(x: np.ndarray, pool: Mapping[str, Any]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]
    y = F.max_pool2d(t, _pair(pool["kernel_size"]), _pair(pool["stride"]), _pair(pool["padding"]))
    return y[0].numpy()


def _window_members(node: Node, in_shape: tuple[int, ...], num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the OR windows of an ``erode`` in head layout, found by probing the official kernel."""
    from export import kernels as K

    n = int(np.prod(in_shape))
    rows, cols = [], []
    for start in range(0, n, 1024):  # one-hot probes in chunks: n x n would not fit for large grids
        idx = np.arange(start, min(n, start + 1024))
        x = torch.zeros(1, len(idx), n)
        x[0, np.arange(len(idx)), idx] = 1.0
        y = K.erode_heads(x.reshape(1, len(idx), *in_shape), num_heads).reshape(len(idx), n)
        j, i = np.nonzero(y.numpy() > 0)
        rows.append(i)
        cols.append(idx[j])
    r, c = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((c, r))
    return r[order], c[order]


def _lower(graph: Graph, levels: int) -> tuple[list[_Plan], dict[str, Any], dict[str, Any]]:
    """Graph -> population plans (topological), the input encoding and the output description."""
    plans: list[_Plan] = []
    by_name: dict[str, _Plan] = {}
    spikes: dict[str, Any] = {}  # spike node -> population name, or ("broadcast", pop, shape)
    currents: dict[str, _Current] = {}
    sources: dict[str, str] = {}  # non-spike source node -> population ("input")
    norm = graph.metadata.get("normalization") or None
    encoding: dict[str, Any] = {}
    out: dict[str, Any] = {}

    def add(p: _Plan) -> _Plan:
        if p.name in by_name:
            raise UserError(f"quantiser: duplicate population name {p.name!r}")
        plans.append(p)
        by_name[p.name] = p
        return p

    def spike_pop(name: str, for_node: str) -> str:
        s = spikes.get(name)
        if isinstance(s, str):
            return s
        raise UserError(f"quantiser: {for_node} reads {name!r}, which is not a spike population")

    for node in graph:
        op, a = node.op, node.attrs
        if op == "input":
            C = node.shape[0]
            if graph.encoding == "frames":
                encoding = {"mode": "frames", "kind": "event_counts", "levels": levels,
                            "rule": f"x_int = clip(round(x), 0, {levels}) (event counts per frame, clipped)"}
                unit, mean, std = np.ones(C), np.zeros(C), np.ones(C)
            else:
                mean = np.asarray(norm["mean"], np.float64) if norm else np.zeros(C)
                std = np.asarray(norm["std"], np.float64) if norm else np.ones(C)
                if mean.size == 1:
                    mean, std = np.full(C, float(mean[0])), np.full(C, float(std[0]))
                if mean.size != C or std.size != C:
                    raise UserError(f"normalization mean/std have {mean.size} channels, the input has {C}")
                unit = 1.0 / (levels * std)
                encoding = {"mode": "repeat", "kind": "pixel_levels", "levels": levels,
                            "bits": int(levels).bit_length(),
                            "mean": mean.tolist() if norm else None, "std": std.tolist() if norm else None,
                            "rule": (f"x_int = clip(round({levels} * (x * std + mean)), 0, {levels})" if norm else
                                     f"x_int = clip(round({levels} * x), 0, {levels})")}
            encoding.update(shape=list(node.shape), min=0, max=levels)  # the integer input range
            add(_Plan(node.name, "input", node.shape, node.name, attrs={}))
            sources[node.name] = node.name
            enc_fold = (unit, mean / std if norm and graph.encoding != "frames" else None)
        elif op in ("conv2d", "linear"):
            w, b = (x.astype(np.float64) for x in fold_bn(node))
            src_node = node.inputs[0]
            graded = src_node in sources
            src = sources[src_node] if graded else spike_pop(src_node, node.name)
            bias = np.broadcast_to(b.reshape(-1, *([1] * (len(node.shape) - 1))), node.shape).copy()
            if op == "conv2d":
                attrs = {"stride": _pair(a["stride"]), "padding": _pair(a["padding"]),
                         "dilation": _pair(a.get("dilation", (1, 1))), "groups": int(a.get("groups", 1))}
                if graded:  # the input: weights per 8-bit level, normalisation folded in
                    unit, shift = enc_fold
                    g = attrs["groups"]
                    cin_idx = (np.arange(w.shape[0])[:, None] // (w.shape[0] // g)) * w.shape[1] + \
                        np.arange(w.shape[1])[None, :]
                    if shift is not None:  # zero padding is 0 in normalised units: per-neuron correction
                        const = torch.from_numpy(np.broadcast_to(shift[:, None, None],
                                                                 graph.input.shape).copy())[None]
                        corr = F.conv2d(const, torch.from_numpy(w), None, attrs["stride"], attrs["padding"],
                                        attrs["dilation"], g)[0].numpy()
                        bias = bias - corr
                    w = w * unit[cin_idx][:, :, None, None]
                term = _Term(node.name, src, "conv", w, attrs, graded=graded)
            else:
                if graded:
                    raise UserError(f"{node.name}: a linear layer on the raw input is not supported")
                term = _Term(node.name, src, "dense", w, {}, graded=False)
            currents[node.name] = _Current([term], bias)
        elif op == "lif":
            cur = currents.get(node.inputs[0])
            if cur is None:
                raise UserError(f"{node.name}: LIF input {node.inputs[0]!r} is not a real-valued current")
            if float(a.get("v_reset", 0.0)) != 0.0:
                raise UserError(f"{node.name}: only v_reset = 0 (hard reset to zero) maps onto Lava's LIF")
            if not a["v_threshold"] > 0:
                raise UserError(f"{node.name}: threshold {a['v_threshold']} must be > 0")
            add(_Plan(node.name, "lif", node.shape, node.name, list(cur.terms), cur.bias.reshape(-1).copy(),
                      decay=float(a["decay"]), theta=float(a["v_threshold"]), count=cur.count,
                      attrs={"decay": float(a["decay"]), "theta": float(a["v_threshold"])}))
            spikes[node.name] = node.name
        elif op == "and":
            terms = []
            for i in node.inputs:
                s = spikes.get(i)
                if isinstance(s, tuple):  # broadcast (C,1,1) -> (C,H,W): ones-synapse
                    _, pop, shape = s
                    C, n = shape[0], int(np.prod(shape[1:]))
                    terms.append(_Term(i, pop, "sparse", np.ones(C * n), {"shape": [C * n, C]},
                                       rows=np.arange(C * n), cols=np.repeat(np.arange(C), n), exact=True))
                else:
                    terms.append(_Term(i, spike_pop(i, node.name), "edge", np.ones(1), exact=True))
            add(_Plan(node.name, "gate", node.shape, node.name, terms, None, vth=1, attrs={"op": "and"}))
            spikes[node.name] = node.name
        elif op in ("maxpool_binary", "erode"):
            src = spike_pop(node.inputs[0], node.name)
            C = node.shape[0]
            if op == "maxpool_binary":
                k, s, p = (_pair(a[x]) for x in ("kernel_size", "stride", "padding"))
                term = _Term(node.name, src, "conv", np.ones((C, 1, *k)),
                             {"stride": s, "padding": p, "dilation": (1, 1), "groups": C}, exact=True)
            elif a["mode"] == "spatial":
                term = _Term(node.name, src, "conv", np.ones((C, 1, 3, 3)),
                             {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": C}, exact=True)
            else:
                in_shape = graph.node(node.inputs[0]).shape
                rows, cols = _window_members(node, in_shape, int(a["num_heads"]))
                n = int(np.prod(node.shape))
                term = _Term(node.name, src, "sparse", np.ones(rows.size), {"shape": [n, int(np.prod(in_shape))]},
                             rows=rows, cols=cols, exact=True)
            add(_Plan(node.name, "gate", node.shape, node.name, [term], None, vth=0, attrs={"op": op}))
            spikes[node.name] = node.name
        elif op == "sum_tokens":
            src = spike_pop(node.inputs[0], node.name)
            C, H, W = graph.node(node.inputs[0]).shape
            n = H * W
            term = _Term(node.name, src, "sparse", np.ones(C * n), {"shape": [C, C * n]},
                         rows=np.repeat(np.arange(C), n), cols=np.arange(C * n), exact=True)
            currents[node.name] = _Current([term], np.zeros(node.shape), count=True)
        elif op == "broadcast":
            spikes[node.name] = ("broadcast", spike_pop(node.inputs[0], node.name), node.shape)
        elif op == "maxpool":
            cur = currents[node.inputs[0]]
            b = cur.bias
            if not np.all(b == b[:, :1, :1]):
                raise UserError(f"{node.name}: max-pool of a current with a per-position bias is not supported")
            in_shape = graph.node(node.inputs[0]).shape
            k, s, p = (_pair(a[x]) for x in ("kernel_size", "stride", "padding"))
            add(_Plan(node.name, "maxpool", node.shape, node.name, list(cur.terms), None,
                      attrs={"kernel": list(k), "stride": list(s), "padding": list(p), "in_shape": list(in_shape),
                             "padding_value": "-inf"}))
            # the relay passes max(a) on; the bias (per channel) commutes with the max and goes to the readers
            currents[node.name] = _Current([_Term(node.name, node.name, "edge", np.ones(1), graded=True,
                                                  relay=True)], _maxpool_map(b, a))
        elif op == "avgpool":
            cur = currents[node.inputs[0]]
            currents[node.name] = _Current([_compose_avgpool(t, a, node.name) for t in cur.terms],
                                           _avgpool_map(cur.bias, a), cur.count)
        elif op == "add":
            # the membrane stream, materialised at every residual add: a graded relay that its readers take by a
            # direct edge, so each conv term is one synapse (copied into every later reader it would be O(depth^2))
            x, y = (currents[i] for i in node.inputs)
            add(_Plan(node.name, "relay", node.shape, node.name, x.terms + y.terms, None,
                      attrs={"op": "sum", "in_shape": list(node.shape)}))
            currents[node.name] = _Current([_Term(node.name, node.name, "edge", np.ones(1), graded=True, relay=True)],
                                           x.bias + y.bias)
        elif op == "mean_tokens":
            cur = currents[node.inputs[0]]
            in_shape = graph.node(node.inputs[0]).shape
            C = node.shape[0]
            n = int(np.prod(in_shape[1:]))
            if len(cur.terms) != 1 or cur.terms[0].kind != "edge" or not cur.terms[0].relay:
                raise UserError(f"{node.name}: the mean over tokens must read the membrane stream (a relay); got "
                                f"{', '.join(t.kind for t in cur.terms)} terms")
            src = cur.terms[0].src
            # relay (C,H,W) -> (C,): graded, equal weights 1/n over the tokens (the per-channel bias goes to the reader)
            currents[node.name] = _Current([_Term(f"{node.name}.mean", src, "sparse", np.full(C * n, 1.0 / n),
                                                  {"shape": [C, C * n]}, graded=True, relay=True,
                                                  rows=np.repeat(np.arange(C), n), cols=np.arange(C * n))],
                                           cur.bias.reshape(C, -1).mean(1))
        elif op == "output":
            src = node.inputs[0]
            if src not in currents or graph.node(src).op != "linear":
                raise UserError("quantiser: the model needs a Linear head (num_classes > 0); a head-less model "
                                "has no integer read-out")
            cur = currents[src]
            add(_Plan(src, "integrator", graph.node(src).shape, src, list(cur.terms), cur.bias.reshape(-1).copy(),
                      attrs={"reduce": a.get("reduce", "mean")}))
            out = {"population": src, "reduce": a.get("reduce", "mean")}
        else:  # pragma: no cover - Graph validates ops
            raise UserError(f"quantiser: unsupported op {op!r} ({node.name})")
    return plans, encoding, out


# ----------------------------------------------------------------------------------------- integer choices

@dataclass
class _QSyn:
    """A quantised synapse (or direct edge) with its worst-case contribution per destination neuron."""

    name: str
    src: str
    kind: str
    w: np.ndarray  # int64 (conv 4-D, dense 2-D, sparse values); edge: unused
    e: int
    graded: bool
    attrs: dict[str, Any]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    hi: np.ndarray | None = None  # per destination neuron: max / min of the delivered current (after the shift)
    lo: np.ndarray | None = None
    comp: np.ndarray | None = None  # per destination neuron: mean floor error to add back through the bias (v units)
    err: tuple[float, float] = (0.0, 0.0)  # (squared weight error, squared weights) of the whole term, float units
    node: str | None = None  # the graph node (term) the weights came from; None: ``name``
    part: int | None = None  # which of the term's synapses (hi/lo term, sign half, channel group)


def _fit(t: np.ndarray, e_lo: int, e_hi: int) -> tuple[np.ndarray, int] | None:
    """Smallest exponent in [e_lo, e_hi] at which ``t / 2**e`` rounds to weights Lava keeps unchanged (8 bits;
    even if mixed-sign). None if even ``e_hi`` is too small."""
    amax = float(np.abs(t).max()) if t.size else 0.0
    if amax == 0.0:
        return np.zeros(t.shape, np.int64), 0
    mixed = t.min() < 0 < t.max()
    e = max(e_lo, math.floor(math.log2(amax / 256.0)))
    while e <= e_hi:
        x = t / 2.0 ** e
        q = (2 * np.round(x / 2) if mixed else np.round(x)).astype(np.int64)
        if q.min() >= -256 and q.max() <= 255 and np.array_equal(quantize_dense_weights(q), q):
            return q, e
        e += 1
    return None


class _Infeasible(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _quantize_term(t: _Term, scale: float, dst_in_shape: tuple[int, ...], src_range: tuple[int, int],
                   cfg: QuantConfig) -> list[_QSyn]:
    """Integer synapses for term ``t`` at destination scale ``scale`` (integer current per float unit of ``t.w``)."""
    lo_x, hi_x = src_range
    n_dst = int(np.prod(dst_in_shape))
    if t.kind == "edge":
        if not math.isclose(scale, 1.0, rel_tol=1e-9):
            raise AssertionError(f"edge {t.src}: scales differ ({scale}); scale groups are broken")
        return [_QSyn(t.name, t.src, "edge", np.ones(1, np.int64), 0, t.graded, {},
                      hi=np.full(n_dst, hi_x, np.int64), lo=np.full(n_dst, lo_x, np.int64))]
    target = t.w * scale
    sparse = t.kind == "sparse"
    if t.exact:  # ones: kept exact, scale must make them integers
        q = np.round(target).astype(np.int64)
        if not np.allclose(q, target) or q.min() < -255 or q.max() > 255:
            raise AssertionError(f"{t.name}: exact weights {target.min()}..{target.max()} are not 8-bit integers")
        groups = [(q, 0)]
    else:
        e_lo, e_hi = cfg.weight_exp_range
        mixed = target.min() < 0 < target.max()
        # Lava infers the sign mode per synapse: a mixed matrix loses its lowest bit (even weights), one-signed
        # ones keep all 8 bits of magnitude, so splitting by sign doubles the resolution
        parts = [np.maximum(target, 0), np.minimum(target, 0)] if (cfg.split_sign and mixed) else [target]
        groups = []
        for part in parts:
            residual = part
            for _ in range(cfg.weight_terms):  # further terms quantise what the previous ones left over
                got = _fit_groups(residual, e_lo, e_hi, cfg.per_channel and not sparse, t.name)
                for w_full, e in got:
                    residual = residual - w_full * 2.0 ** e
                groups.extend(got)
                if not np.any(residual):
                    break
    out = []
    approx = np.zeros(target.shape)
    for gi, (w_full, e) in enumerate(groups):
        approx += w_full * 2.0 ** e
        # per output channel for convs (border neurons over-counted: conservative), the executor's bound arithmetic
        pos, neg = weight_sums(t.kind, w_full, n_dst, rows=t.rows)
        lo, hi = current_range(pos, neg, lo_x, hi_x)
        hi, lo = weight_shift(hi, e), weight_shift(lo, e)
        comp = None
        if e < 0:  # floor(y / 2**k) is low by (1 - 2**-k)/2 on average: give it back (v units: x 64)
            rows_hit = ((pos - neg) > 0).astype(float)  # neurons that receive any non-zero weight
            comp = rows_hit * (32.0 * (1.0 - 2.0 ** e))
        part = None if len(groups) == 1 else gi
        name = t.name if part is None else f"{t.name}@{gi}"
        out.append(_QSyn(name, t.src, t.kind, w_full, int(e), t.graded, dict(t.attrs), t.rows, t.cols, hi, lo, comp,
                         node=t.name, part=part))
    if out:
        out[0].err = (float(((approx - target) ** 2).sum()) / scale ** 2, float((t.w ** 2).sum()))
    return out


def _fit_groups(target: np.ndarray, e_lo: int, e_hi: int, per_channel: bool, what: str
                ) -> list[tuple[np.ndarray, int]]:
    """``[(w_int full-size, e)]`` with ``sum w_int * 2**e ~ target``: one synapse, or (``per_channel``) one per group of
    output channels that need the same exponent (zero rows elsewhere), so small channels keep their 8 bits."""
    if not np.any(target):
        return []
    if not per_channel:
        fit = _fit(target, e_lo, e_hi)
        if fit is None:
            raise _Infeasible("weight_exp", f"{what}: weights need an exponent > {e_hi}")
        return [fit]
    amax = np.abs(target.reshape(target.shape[0], -1)).max(1)
    nz = np.flatnonzero(amax > 0)
    need = np.maximum(e_lo, np.ceil(np.log2(amax[nz] / 254.0) - 1e-12).astype(int))
    out = []
    for e_need in np.unique(need):
        idx = nz[need == e_need]
        fit = _fit(target[idx], e_lo, e_hi)
        if fit is None:
            raise _Infeasible("weight_exp", f"{what}: weights need an exponent > {e_hi}")
        w_full = np.zeros(target.shape, np.int64)
        w_full[idx] = fit[0]
        out.append((w_full, fit[1]))
    return out


@dataclass
class _Solution:
    """The integer parameters of one population."""

    K: float
    vth: int
    dv: int
    du: int
    syns: list[_QSyn]
    bias_mant: np.ndarray | None
    bias_exp: int
    a_hi: int
    a_lo: int
    v_worst: int
    report: dict[str, Any]


class _Solver:
    def __init__(self, plans: list[_Plan], T: int, cfg: QuantConfig) -> None:
        self.plans = plans
        self.by_name = {p.name: p for p in plans}
        self.T = T
        self.cfg = cfg
        self.sol: dict[str, _Solution] = {}
        # output range of each population: binary spikes are known up front (group members may read populations
        # solved later); relays get theirs when their group is solved
        self.range: dict[str, tuple[int, int]] = {p.name: (0, 1) for p in plans if p.kind in ("lif", "gate")}
        self.range[BIAS_SOURCE] = (0, 1)
        self.group = self._groups()

    def _groups(self) -> dict[str, str]:
        """Union-find over direct edges from graded relays: readers of the same relay share its scale."""
        parent = {p.name: p.name for p in self.plans}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for p in self.plans:
            for t in p.terms:
                if t.kind == "edge" and t.graded:
                    parent[find(p.name)] = find(t.src)
        return {p.name: find(p.name) for p in self.plans}

    # ------------------------------------------------------------------------------------------ one population

    def _in_shape(self, p: _Plan) -> tuple[int, ...]:
        return tuple(p.attrs["in_shape"]) if p.kind in RELAY_KINDS else p.shape

    def _scale_of(self, t: _Term, K: float, K_src: Mapping[str, float]) -> float:
        if t.relay:
            return K / K_src[t.src]
        return K

    def _solve_one(self, p: _Plan, K: float, K_src: Mapping[str, float], vth: int | None = None) -> _Solution:
        """Quantise population ``p`` at scale K and check every 24-bit limit; raise _Infeasible naming the first."""
        shape = self._in_shape(p)
        n = int(np.prod(shape))
        syns: list[_QSyn] = []
        for t in p.terms:
            rng = self.range[t.src]
            syns.extend(_quantize_term(t, self._scale_of(t, K, K_src), shape, rng, self.cfg))
        hi = np.zeros(n, np.int64)
        lo = np.zeros(n, np.int64)
        comp = np.zeros(n)
        for s in syns:
            hi += s.hi
            lo += s.lo
            if s.comp is not None:
                comp += s.comp
        bias_mant, bias_exp, b_eff = None, 0, np.zeros(n, np.int64)
        if p.kind in ("lif", "integrator"):
            b_f = np.zeros(n) if p.bias is None else p.bias * 64.0 * K
            b_int = np.round(b_f + comp).astype(np.int64)
            bsyn = self._bias_synapse(p, b_int) if self.cfg.bias_synapse else None
            if bsyn is not None:  # the coarse bias arrives as a current: count it in the worst case of a
                syns.append(bsyn)
                hi += bsyn.hi
                lo += bsyn.lo
                b_int = b_int - 64 * (bsyn.w[:, 0].astype(np.int64) << bsyn.e)
            bias_mant, bias_exp = self._bias(b_int)
            b_eff = bias_mant.astype(np.int64) << bias_exp
        a_hi, a_lo = int(hi.max(initial=0)), int(-lo.min(initial=0))
        limit = GRADED_LIMIT if p.kind in RELAY_KINDS else A_LIMIT
        if max(a_hi, a_lo) >= limit:
            raise _Infeasible("relay_range" if p.kind in RELAY_KINDS else "u_bound",
                              f"worst-case |a| = {max(a_hi, a_lo)} >= {limit}")
        du, dv, v_worst = 4095, 0, 64 * max(a_hi, a_lo)
        if p.kind in RELAY_KINDS:
            vth = 0
        elif p.kind == "gate":
            vth = p.vth
            if v_worst > V_CLIP_LIMIT:
                raise _Infeasible("v_bound", f"gate input {v_worst}")
        elif p.kind == "integrator":
            vth = VTH_MAX
            per_step = 64 * np.maximum(hi, -lo) + np.abs(b_eff)
            v_worst = int(self.T * per_step.max(initial=0))
            if v_worst > 64 * VTH_MAX:
                raise _Infeasible("integrator_range", f"T * worst step = {v_worst} > {64 * VTH_MAX}")
        else:
            dv = int(min(4095, max(1, round(4096 * p.decay))))
            if vth is None:
                vth = int(round(K * p.theta / p.decay))
            if not 0 <= vth <= VTH_MAX:
                raise _Infeasible("vth_max", f"vth {vth}")
            keep = (4096 - dv) * 64 * vth // 4096  # a survivor's v is <= 64*vth before it decays
            v_pos = keep + 64 * hi + np.maximum(b_eff, 0)
            v_neg = (64 * -lo + np.maximum(-b_eff, 0)) * 4096 // dv + 1  # geometric series of the decay
            v_worst = int(max(v_pos.max(initial=0), v_neg.max(initial=0)))
            if v_worst > V_CLIP_LIMIT:
                raise _Infeasible("v_bound", f"worst-case |v| = {v_worst} > {V_CLIP_LIMIT}")
        sq = sum(s.err[0] for s in syns)
        tot = sum(s.err[1] for s in syns)
        report = {"kind": p.kind, "K": K, "vth": vth, "dv": dv, "worst_a": [-a_lo, a_hi],
                  "u_use": round(64 * max(a_hi, a_lo) / (1 << 23), 4), "v_use": round(v_worst / V_CLIP_LIMIT, 4),
                  "weight_exps": sorted({s.e for s in syns if s.kind != "edge"}),
                  "weight_rel_err": round(math.sqrt(sq / tot), 5) if tot > 0 else 0.0,
                  "bias_exp": bias_exp}
        return _Solution(K, int(vth), dv, du, syns, bias_mant, bias_exp, a_hi, a_lo, v_worst, report)

    def _bias_synapse(self, p: _Plan, b_int: np.ndarray) -> _QSyn | None:
        """Split a bias Lava's 13-bit mantissa cannot hold exactly into a coarse current from the always-on source
        (an 8-bit weight x 2**e per neuron, in a-units of 64) and a remainder the mantissa holds at exponent 0; None
        when the mantissa alone is exact or the split does not fit (then the mantissa/exponent bias is used)."""
        if int(np.abs(b_int).max(initial=0)) <= BIAS_MANT[1]:
            return None
        fit = _fit(b_int / 64.0, 0, 6)  # step <= 2 * 2**6 a-units: the remainder stays within +-4096 v-units
        if fit is None:
            return None
        w, e = fit
        rest = b_int - 64 * (w.astype(np.int64) << e)
        if rest.min() < BIAS_MANT[0] or rest.max() > BIAS_MANT[1]:
            return None
        c = w.astype(np.int64) << e
        return _QSyn(BIAS_SOURCE, BIAS_SOURCE, "dense", w.reshape(-1, 1), int(e), False, {},
                     hi=np.maximum(c, 0), lo=np.minimum(c, 0))

    @staticmethod
    def _bias(b: np.ndarray) -> tuple[np.ndarray, int]:
        amax = int(np.abs(b).max(initial=0))
        for e in range(BIAS_EXP_MAX + 1):
            m = np.round(b / 2.0 ** e).astype(np.int64)
            if m.min(initial=0) >= BIAS_MANT[0] and m.max(initial=0) <= BIAS_MANT[1]:
                return m.astype(np.int32), e
        raise _Infeasible("bias_range", f"bias up to {amax} needs more than 13 bits x 2**{BIAS_EXP_MAX}")

    # ------------------------------------------------------------------------------------------------ search

    def _search(self, name: str, candidates: Callable[[int], float], n: int,
                solve: Callable[[float], dict[str, _Solution]]) -> tuple[dict[str, _Solution], str, str]:
        """Largest index i in [1, n] whose scale ``candidates(i)`` is feasible (binary search, then verified)."""
        def attempt(i: int) -> dict[str, _Solution] | _Infeasible:
            try:
                return solve(candidates(i))
            except _Infeasible as e:
                return e

        lo, hi = 0, n  # invariant: i <= lo feasible (lo = 0: nothing known), i > hi infeasible
        first = attempt(n)
        if not isinstance(first, _Infeasible):
            return first, "vth_max", ""
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if isinstance(attempt(mid), _Infeasible):
                hi = mid - 1
            else:
                lo = mid
        for i in range(lo, max(0, lo - 64), -1):  # rounding can make feasibility non-monotone near the edge
            if i < 1:
                break
            got = attempt(i)
            if not isinstance(got, _Infeasible):
                why = attempt(i + 1) if i < n else first
                assert isinstance(why, _Infeasible)
                return got, why.reason, why.detail
        fail = attempt(1)
        reason = fail.reason if isinstance(fail, _Infeasible) else "unknown"
        detail = fail.detail if isinstance(fail, _Infeasible) else ""
        raise QuantizationError(f"layer {name}: no integer scale keeps Lava's 24-bit state from overflowing "
                                f"({reason}: {detail}); the layer's weights/biases are too large for 8-bit weights "
                                "and 24-bit state")

    def solve(self) -> None:
        for p in self.plans:
            if p.name in self.sol:
                continue
            if p.kind == "input":
                self.range[p.name] = (0, int(self.cfg.input_levels or INPUT_LEVELS))
                continue
            root = self.group[p.name]
            members = [q for q in self.plans if self.group[q.name] == root]
            if len(members) > 1:
                self._solve_group(members)
            elif p.kind == "relay":
                self._solve_relay_and_reader(p)
            elif p.kind == "gate":
                self._commit(p, self._fixed(p, 1.0), "exact")
            elif p.kind == "lif" and p.count and p.decay == 0.5 and 0 < p.theta <= 0.5:
                # talking-heads LIF on integer counts: fires iff count >= 1 and v stays 0 otherwise: exact
                self._commit(p, self._fixed(p, 1.0, vth=0), "exact")
            elif p.kind == "lif":
                relay_terms = [t for t in p.terms if t.relay]
                if relay_terms:
                    self._solve_via_relay(p, relay_terms)
                else:
                    p.terms = [replace(t, exact=False) for t in p.terms]  # counts (PLIF): weights scale with K
                    sols, why, det = self._search(p.name, lambda i, p=p: i * p.decay / p.theta, VTH_MAX,
                                                  lambda K, p=p: {p.name: self._solve_one(p, K, {})})
                    self._commit(p, sols[p.name], why, det)
            elif p.kind == "integrator":
                relay = {t.src: self.sol[t.src].K for t in p.terms if t.relay}
                sols, why, det = self._search(p.name, lambda i: i / 64.0, 1 << 30,
                                              lambda K, p=p: {p.name: self._solve_one(p, K, relay)})
                self._commit(p, sols[p.name], why, det)
            else:
                raise UserError(f"quantiser: population {p.name} ({p.kind}) has no scale group")

    def _fixed(self, p: _Plan, K: float, vth: int | None = None) -> _Solution:
        try:
            return self._solve_one(p, K, {}, vth=vth)
        except _Infeasible as e:
            raise QuantizationError(f"layer {p.name}: {e.reason} ({e.detail})") from None

    def _commit(self, p: _Plan, s: _Solution, limited_by: str, detail: str = "") -> None:
        s.report["limited_by"] = limited_by
        if detail:
            s.report["limit_detail"] = detail
        self.sol[p.name] = s
        self.range[p.name] = (-s.a_lo, s.a_hi) if p.kind in RELAY_KINDS else (0, 1)

    def _solve_group(self, members: list[_Plan]) -> None:
        """Relays and their direct-edge readers: one K for all (the edge delivers the relay's integers as they are)."""
        lifs = [m for m in members if m.kind == "lif"]
        if not lifs or any(m.kind not in ("lif", *RELAY_KINDS) for m in members):
            raise UserError(f"quantiser: unsupported scale group {[m.name for m in members]}")
        ref = lifs[0]
        order = [m for m in self.plans if m in members]  # topological: relays before their readers

        relays = [m.name for m in members if m.kind in RELAY_KINDS]

        def solve(K: float) -> dict[str, _Solution]:
            out: dict[str, _Solution] = {}
            saved = dict(self.range)
            try:
                for m in order:
                    s = self._solve_one(m, K, {r: K for r in relays})
                    out[m.name] = s
                    if m.kind in RELAY_KINDS:
                        self.range[m.name] = (-s.a_lo, s.a_hi)
            finally:
                self.range = saved
            return out

        sols, why, det = self._search(ref.name, lambda i: i * ref.decay / ref.theta, VTH_MAX, solve)
        for m in order:
            self._commit(m, sols[m.name], why, det)
            sols[m.name].report["group"] = ref.name

    def _solve_relay_and_reader(self, r: _Plan) -> None:
        """A stream relay in no scale group (no relay edge into it and no LIF reading it by edge: the NIR-clean SDT
        without blocks) and the one LIF that averages it: searched
        together over the LIF's K, the relay at ``K_r = c * K * 2**-e`` with the lowest weight exponent e that keeps the
        relay inside 24 bits, so that the averaging synapse's weight ``c * K / K_r = 2**e`` is exact."""
        readers = [q for q in self.plans if any(t.src == r.name for t in q.terms)]
        if len(readers) != 1 or readers[0].kind != "lif" or any(not t.relay for t in readers[0].terms):
            raise UserError(f"quantiser: relay {r.name} needs exactly one LIF that reads only relays")
        p = readers[0]
        c = float(p.terms[0].w.flat[0])
        e_lo, e_hi = self.cfg.weight_exp_range

        def solve(K: float) -> dict[str, _Solution]:
            err: _Infeasible | None = None
            for e in range(e_lo, e_hi + 1):
                K_r = c * K * 2.0 ** -e
                try:
                    rs = self._solve_one(r, K_r, {})
                except _Infeasible as x:
                    err = x
                    continue
                saved = self.range.get(r.name)
                self.range[r.name] = (-rs.a_lo, rs.a_hi)
                try:
                    return {r.name: rs, p.name: self._solve_one(p, K, {r.name: K_r})}
                finally:
                    if saved is None:
                        del self.range[r.name]
                    else:
                        self.range[r.name] = saved
            raise err or _Infeasible("relay_range", "no weight exponent fits")

        sols, why, det = self._search(p.name, lambda i: i * p.decay / p.theta, VTH_MAX, solve)
        for m in (r, p):
            self._commit(m, sols[m.name], why, det)
            sols[m.name].report["group"] = p.name

    def _solve_via_relay(self, p: _Plan, relay_terms: list[_Term]) -> None:
        """A LIF that reads a relay through a graded synapse of equal weights c (the head's mean over tokens): K must
        make ``K * c / K_relay`` an 8-bit integer times a power of two, so it is searched over those values."""
        K_src = {t.src: self.sol[t.src].K for t in relay_terms}
        t0 = relay_terms[0]
        c = float(t0.w.flat[0])
        if any(not np.allclose(t.w, c) or not math.isclose(K_src[t.src], K_src[t0.src]) for t in relay_terms):
            raise UserError(f"{p.name}: relay synapses of unequal weights are not supported")
        base = K_src[t0.src] / c
        e_lo, e_hi = self.cfg.weight_exp_range
        cands = sorted({k * 2.0 ** e * base for k in range(1, 256) for e in range(e_lo, e_hi + 1)})
        cands = [K for K in cands if round(K * p.theta / p.decay) <= VTH_MAX and K * p.theta / p.decay >= 1]
        sols, why, det = self._search(p.name, lambda i: cands[i - 1], len(cands),
                                      lambda K: {p.name: self._solve_one(p, K, K_src)})
        self._commit(p, sols[p.name], why, det)


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


# ------------------------------------------------------------------------------------------ model / file API

def load_model_and_normalization(source: Any, dataset: str | None = None, *, use_ema: bool = False,
                                 strict: bool = True) -> tuple[Any, dict[str, Any] | None, str | None]:
    """``(model, normalization, dataset)`` from a checkpoint path or a model. The dataset (argument, else the one
    recorded in the checkpoint) decides the input normalisation (``sdt.data`` conventions). An unknown dataset name is
    an error, or with ``strict=False`` (where the normalisation is only documentation) gives ``None``."""
    import sdt
    from sdt.checkpoint import read_checkpoint

    recorded = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        ckpt = read_checkpoint(path)
        args = ckpt.get("args")
        args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else (args or {})
        recorded = args.get("dataset") if isinstance(args, Mapping) else None
        model = sdt.load_checkpoint(path, use_ema=use_ema)
    else:
        model = source
    name = dataset or recorded
    norm = None
    if name:
        from sdt.data import canonical_name, dataset_info

        try:
            info = dataset_info(canonical_name(str(name)))
        except ValueError as e:
            if not strict:
                return model.eval(), None, str(name)
            raise UserError(str(e)) from None
        name = info.name
        if info.normalize_default and info.kind == "image":
            norm = {"mean": list(info.mean), "std": list(info.std)}
    return model.eval(), norm, name


def quantize_model(model: Any, normalization: Mapping[str, Any] | None = None, config: QuantConfig | None = None,
                   metadata: Mapping[str, Any] | None = None, calib_x: torch.Tensor | None = None
                   ) -> tuple[IntNet, dict[str, Any], Graph]:
    """Build the graph of ``model`` and quantise it; returns ``(net, report, graph)``."""
    from export.from_model import build_graph

    graph = build_graph(model, normalization=normalization)
    net, report = quantize_graph(graph, config, metadata, calib_x)
    return net, report, graph


def _calib_batches(calib: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    if calib is None:
        return []
    if isinstance(calib, torch.Tensor):
        return [(calib, None)]
    if isinstance(calib, tuple) and len(calib) == 2 and isinstance(calib[0], torch.Tensor):
        return [(calib[0], calib[1])]
    batches = []
    for item in calib:
        x, y = (item if isinstance(item, (tuple, list)) else (item, None))[:2]
        batches.append((torch.as_tensor(x), None if y is None else torch.as_tensor(y)))
    return batches


def grid_inputs(dataset: str, img_size: int, T: int, data_dir: str | None = None, n: int = 64
                ) -> torch.Tensor | None:
    """The first ``n`` *training* inputs of ``dataset`` as the model sees them (to find the input grid), or None if
    the data are not available here. The evaluated split is never used for quantisation."""
    import argparse

    from sdt.data import dataset_info
    from sdt.train.data import build_dataset

    info = dataset_info(dataset)
    if info.kind != "image":
        return None
    ns = argparse.Namespace(data_dir=data_dir, input_size=None, img_size=img_size, time_steps=T, crop_pct=None,
                            mean=None, std=None)
    try:
        ds = build_dataset(ns, info.name, "train", train=False, size=img_size)
    except UserError:
        return None
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))]) if len(ds) else None


def export_lava(checkpoint_or_model: Any, out_path: str | os.PathLike, calib: Any = None, *,
                dataset: str | None = None, config: QuantConfig | None = None,
                data_dir: str | None = None) -> dict[str, Any]:
    """Quantise a checkpoint (path) or model and write the integer network to ``out_path`` (``deploy.intnet``
    format, atomic, byte-reproducible). ``calib``: optional inputs (a tensor, ``(x, y)``, or an iterable of such) on
    which float <-> integer agreement is measured and returned (scales never depend on them: they come from the
    worst-case bounds). The input grid (``QuantConfig.input_levels=None``) is found on the training split of the
    checkpoint's data set when it is available here, else on ``calib``, else 8-bit. Returns a JSON-able summary."""
    model, norm, name = load_model_and_normalization(checkpoint_or_model, dataset)
    meta = {"dataset": name}
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        meta["source"] = Path(checkpoint_or_model).name
    batches = _calib_batches(calib)
    grid_x = None
    if name:  # the data set's own training inputs define its grid; calibration inputs may be random
        cfg = model.model_config
        grid_x = grid_inputs(name, int(cfg["img_size_h"]), int(cfg["T"]), data_dir)
    if grid_x is None and batches:
        grid_x = torch.cat([torch.as_tensor(x, dtype=torch.float32) for x, _ in batches])
    net, report, graph = quantize_model(model, norm, config, meta, grid_x)
    save(net, out_path)
    summary: dict[str, Any] = {"path": str(out_path), "format": "sdt-intnet v1", "T": net.T,
                               "dataset": name, "encoding": dict(net.encoding), "decode": dict(net.decode),
                               "bytes": Path(out_path).stat().st_size,
                               **{k: v for k, v in report.items() if k != "layers"}}
    if batches:
        from .agreement import compare

        # calibration inputs may lie off the integer input's range (sdt-export --validate draws N(0,1) pixels):
        # the float side gets what the integer input represents, so the network is compared, not the clipping
        summary["calibration"] = compare(net, batches, graph=graph, progress=False, float_input="encoded")
    return summary
