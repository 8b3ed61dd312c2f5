"""Quantiser, step 1 (lowering): the graph as float population plans. Every graph op has one :class:`_Lowering`
method (:data:`OP_HANDLERS`) that turns it into populations (LIFs, gates, relays, the integrator) and the float linear
terms (conv, dense, sparse, direct edge) that feed them; ``deploy/quantize.py`` documents the mapping."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from export.graph import Graph, Node, check_handlers, fold_bn
from export.shapes import pair
from sdt.errors import UserError

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


def _compose_avgpool(term: _Term, pool: Mapping[str, Any], node: str) -> _Term:
    """``avgpool(conv(x))`` as one conv (pool padding 0): kernel k + (k2-1)*s, stride s*s2, same padding."""
    if term.kind != "conv":
        raise UserError(f"{node}: average pooling of a {term.kind} term is not supported by the quantiser")
    (k2h, k2w), (s2h, s2w), (p2h, p2w) = (pair(pool[k]) for k in ("kernel_size", "stride", "padding"))
    a = term.attrs
    (sh, sw), (dh, dw) = pair(a["stride"]), pair(a["dilation"])
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
    y = F.avg_pool2d(t, pair(pool["kernel_size"]), pair(pool["stride"]), pair(pool["padding"]))
    return y[0].numpy()


def _maxpool_map(x: np.ndarray, pool: Mapping[str, Any]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]
    y = F.max_pool2d(t, pair(pool["kernel_size"]), pair(pool["stride"]), pair(pool["padding"]))
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


class _Lowering:
    """Graph -> population plans (topological), the input encoding and the output description; one method per graph
    op (:data:`OP_HANDLERS`), sharing the lowering state below."""

    def __init__(self, graph: Graph, levels: int) -> None:
        self.graph, self.levels = graph, levels
        self.plans: list[_Plan] = []
        self.by_name: dict[str, _Plan] = {}
        self.spikes: dict[str, Any] = {}  # spike node -> population name, or ("broadcast", pop, shape)
        self.currents: dict[str, _Current] = {}
        self.sources: dict[str, str] = {}  # non-spike source node -> population ("input")
        self.norm = graph.metadata.get("normalization") or None
        self.encoding: dict[str, Any] = {}
        self.out: dict[str, Any] = {}
        self.enc_fold: tuple[np.ndarray, np.ndarray | None] | None = None

    def add(self, p: _Plan) -> _Plan:
        if p.name in self.by_name:
            raise UserError(f"quantiser: duplicate population name {p.name!r}")
        self.plans.append(p)
        self.by_name[p.name] = p
        return p

    def spike_pop(self, name: str, for_node: str) -> str:
        s = self.spikes.get(name)
        if isinstance(s, str):
            return s
        raise UserError(f"quantiser: {for_node} reads {name!r}, which is not a spike population")

    def _input(self, node: Node) -> None:
        C = node.shape[0]
        if self.graph.encoding == "frames":
            self.encoding = {"mode": "frames", "kind": "event_counts", "levels": self.levels,
                             "rule": f"x_int = clip(round(x), 0, {self.levels}) (event counts per frame, clipped)"}
            unit, mean, std = np.ones(C), np.zeros(C), np.ones(C)
        else:
            mean = np.asarray(self.norm["mean"], np.float64) if self.norm else np.zeros(C)
            std = np.asarray(self.norm["std"], np.float64) if self.norm else np.ones(C)
            if mean.size == 1:
                mean, std = np.full(C, float(mean[0])), np.full(C, float(std[0]))
            if mean.size != C or std.size != C:
                raise UserError(f"normalization mean/std have {mean.size} channels, the input has {C}")
            unit = 1.0 / (self.levels * std)
            L, norm = self.levels, self.norm
            self.encoding = {"mode": "repeat", "kind": "pixel_levels", "levels": L, "bits": int(L).bit_length(),
                             "mean": mean.tolist() if norm else None, "std": std.tolist() if norm else None,
                             "rule": (f"x_int = clip(round({L} * (x * std + mean)), 0, {L})" if norm else
                                      f"x_int = clip(round({L} * x), 0, {L})")}
        self.encoding.update(shape=list(node.shape), min=0, max=self.levels)  # the integer input range
        self.add(_Plan(node.name, "input", node.shape, node.name, attrs={}))
        self.sources[node.name] = node.name
        self.enc_fold = (unit, mean / std if self.norm and self.graph.encoding != "frames" else None)

    def _conv2d_linear(self, node: Node) -> None:
        op = node.op
        a = node.attrs
        w, b = (x.astype(np.float64) for x in fold_bn(node))
        src_node = node.inputs[0]
        graded = src_node in self.sources
        src = self.sources[src_node] if graded else self.spike_pop(src_node, node.name)
        bias = np.broadcast_to(b.reshape(-1, *([1] * (len(node.shape) - 1))), node.shape).copy()
        if op == "conv2d":
            attrs = {"stride": pair(a["stride"]), "padding": pair(a["padding"]),
                     "dilation": pair(a.get("dilation", (1, 1))), "groups": int(a.get("groups", 1))}
            if graded:  # the input: weights per 8-bit level, normalisation folded in
                unit, shift = self.enc_fold
                g = attrs["groups"]
                cin_idx = (np.arange(w.shape[0])[:, None] // (w.shape[0] // g)) * w.shape[1] + \
                    np.arange(w.shape[1])[None, :]
                if shift is not None:  # zero padding is 0 in normalised units: per-neuron correction
                    const = torch.from_numpy(np.broadcast_to(shift[:, None, None],
                                                             self.graph.input.shape).copy())[None]
                    corr = F.conv2d(const, torch.from_numpy(w), None, attrs["stride"], attrs["padding"],
                                    attrs["dilation"], g)[0].numpy()
                    bias = bias - corr
                w = w * unit[cin_idx][:, :, None, None]
            term = _Term(node.name, src, "conv", w, attrs, graded=graded)
        else:
            if graded:
                raise UserError(f"{node.name}: a linear layer on the raw input is not supported")
            term = _Term(node.name, src, "dense", w, {}, graded=False)
        self.currents[node.name] = _Current([term], bias)

    def _lif(self, node: Node) -> None:
        a = node.attrs
        cur = self.currents.get(node.inputs[0])
        if cur is None:
            raise UserError(f"{node.name}: LIF input {node.inputs[0]!r} is not a real-valued current")
        if float(a.get("v_reset", 0.0)) != 0.0:
            raise UserError(f"{node.name}: only v_reset = 0 (hard reset to zero) maps onto Lava's LIF")
        if not a["v_threshold"] > 0:
            raise UserError(f"{node.name}: threshold {a['v_threshold']} must be > 0")
        self.add(_Plan(node.name, "lif", node.shape, node.name, list(cur.terms), cur.bias.reshape(-1).copy(),
                       decay=float(a["decay"]), theta=float(a["v_threshold"]), count=cur.count,
                       attrs={"decay": float(a["decay"]), "theta": float(a["v_threshold"])}))
        self.spikes[node.name] = node.name

    def _and(self, node: Node) -> None:
        terms = []
        for i in node.inputs:
            s = self.spikes.get(i)
            if isinstance(s, tuple):  # broadcast (C,1,1) -> (C,H,W): ones-synapse
                _, pop, shape = s
                C, n = shape[0], int(np.prod(shape[1:]))
                terms.append(_Term(i, pop, "sparse", np.ones(C * n), {"shape": [C * n, C]},
                                   rows=np.arange(C * n), cols=np.repeat(np.arange(C), n), exact=True))
            else:
                terms.append(_Term(i, self.spike_pop(i, node.name), "edge", np.ones(1), exact=True))
        self.add(_Plan(node.name, "gate", node.shape, node.name, terms, None, vth=1, attrs={"op": "and"}))
        self.spikes[node.name] = node.name

    def _maxpool_erode(self, node: Node) -> None:
        op = node.op
        a = node.attrs
        src = self.spike_pop(node.inputs[0], node.name)
        C = node.shape[0]
        if op == "maxpool_binary":
            k, s, p = (pair(a[x]) for x in ("kernel_size", "stride", "padding"))
            term = _Term(node.name, src, "conv", np.ones((C, 1, *k)),
                         {"stride": s, "padding": p, "dilation": (1, 1), "groups": C}, exact=True)
        elif a["mode"] == "spatial":
            term = _Term(node.name, src, "conv", np.ones((C, 1, 3, 3)),
                         {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": C}, exact=True)
        else:
            in_shape = self.graph.node(node.inputs[0]).shape
            rows, cols = _window_members(node, in_shape, int(a["num_heads"]))
            n = int(np.prod(node.shape))
            term = _Term(node.name, src, "sparse", np.ones(rows.size), {"shape": [n, int(np.prod(in_shape))]},
                         rows=rows, cols=cols, exact=True)
        self.add(_Plan(node.name, "gate", node.shape, node.name, [term], None, vth=0, attrs={"op": op}))
        self.spikes[node.name] = node.name

    def _sum_tokens(self, node: Node) -> None:
        src = self.spike_pop(node.inputs[0], node.name)
        C, H, W = self.graph.node(node.inputs[0]).shape
        n = H * W
        term = _Term(node.name, src, "sparse", np.ones(C * n), {"shape": [C, C * n]},
                     rows=np.repeat(np.arange(C), n), cols=np.arange(C * n), exact=True)
        self.currents[node.name] = _Current([term], np.zeros(node.shape), count=True)

    def _broadcast(self, node: Node) -> None:
        self.spikes[node.name] = ("broadcast", self.spike_pop(node.inputs[0], node.name), node.shape)

    def _maxpool(self, node: Node) -> None:
        a = node.attrs
        cur = self.currents[node.inputs[0]]
        b = cur.bias
        if not np.all(b == b[:, :1, :1]):
            raise UserError(f"{node.name}: max-pool of a current with a per-position bias is not supported")
        in_shape = self.graph.node(node.inputs[0]).shape
        k, s, p = (pair(a[x]) for x in ("kernel_size", "stride", "padding"))
        self.add(_Plan(node.name, "maxpool", node.shape, node.name, list(cur.terms), None,
                       attrs={"kernel": list(k), "stride": list(s), "padding": list(p), "in_shape": list(in_shape),
                              "padding_value": "-inf"}))
        # the relay passes max(a) on; the bias (per channel) commutes with the max and goes to the readers
        self.currents[node.name] = _Current([_Term(node.name, node.name, "edge", np.ones(1), graded=True,
                                                   relay=True)], _maxpool_map(b, a))

    def _avgpool(self, node: Node) -> None:
        a = node.attrs
        cur = self.currents[node.inputs[0]]
        self.currents[node.name] = _Current([_compose_avgpool(t, a, node.name) for t in cur.terms],
                                            _avgpool_map(cur.bias, a), cur.count)

    def _add(self, node: Node) -> None:
        # the membrane stream, materialised at every residual add: a graded relay that its readers take by a
        # direct edge, so each conv term is one synapse (copied into every later reader it would be O(depth^2))
        x, y = (self.currents[i] for i in node.inputs)
        self.add(_Plan(node.name, "relay", node.shape, node.name, x.terms + y.terms, None,
                       attrs={"op": "sum", "in_shape": list(node.shape)}))
        self.currents[node.name] = _Current([_Term(node.name, node.name, "edge", np.ones(1), graded=True, relay=True)],
                                            x.bias + y.bias)

    def _mean_tokens(self, node: Node) -> None:
        cur = self.currents[node.inputs[0]]
        in_shape = self.graph.node(node.inputs[0]).shape
        C = node.shape[0]
        n = int(np.prod(in_shape[1:]))
        if len(cur.terms) != 1 or cur.terms[0].kind != "edge" or not cur.terms[0].relay:
            raise UserError(f"{node.name}: the mean over tokens must read the membrane stream (a relay); got "
                            f"{', '.join(t.kind for t in cur.terms)} terms")
        src = cur.terms[0].src
        # relay (C,H,W) -> (C,): graded, equal weights 1/n over the tokens (the per-channel bias goes to the reader)
        self.currents[node.name] = _Current([_Term(f"{node.name}.mean", src, "sparse", np.full(C * n, 1.0 / n),
                                                   {"shape": [C, C * n]}, graded=True, relay=True,
                                                   rows=np.repeat(np.arange(C), n), cols=np.arange(C * n))],
                                            cur.bias.reshape(C, -1).mean(1))

    def _output(self, node: Node) -> None:
        a = node.attrs
        src = node.inputs[0]
        if src not in self.currents or self.graph.node(src).op != "linear":
            raise UserError("quantiser: the model needs a Linear head (num_classes > 0); a head-less model "
                            "has no integer read-out")
        cur = self.currents[src]
        self.add(_Plan(src, "integrator", self.graph.node(src).shape, src, list(cur.terms), cur.bias.reshape(-1).copy(),
                       attrs={"reduce": a.get("reduce", "mean")}))
        self.out = {"population": src, "reduce": a.get("reduce", "mean")}


# graph op -> the _Lowering method that maps it onto populations and terms
OP_HANDLERS: Mapping[str, Callable[[_Lowering, Node], None]] = {
    "input": _Lowering._input,
    "conv2d": _Lowering._conv2d_linear,
    "linear": _Lowering._conv2d_linear,
    "lif": _Lowering._lif,
    "and": _Lowering._and,
    "maxpool_binary": _Lowering._maxpool_erode,
    "erode": _Lowering._maxpool_erode,
    "sum_tokens": _Lowering._sum_tokens,
    "broadcast": _Lowering._broadcast,
    "maxpool": _Lowering._maxpool,
    "avgpool": _Lowering._avgpool,
    "add": _Lowering._add,
    "mean_tokens": _Lowering._mean_tokens,
    "output": _Lowering._output,
}
check_handlers(__name__, OP_HANDLERS)


def _lower(graph: Graph, levels: int) -> tuple[list[_Plan], dict[str, Any], dict[str, Any]]:
    """Graph -> population plans (topological), the input encoding and the output description."""
    low = _Lowering(graph, levels)
    for node in graph:
        OP_HANDLERS[node.op](low, node)
    return low.plans, low.encoding, low.out


__all__ = ["OP_HANDLERS"]
