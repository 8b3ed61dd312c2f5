"""The exact operation counter: a pure function of (graph, per-node spike tensors) -> per-node, per-step, per-sample
counts of every operation the intermediate graph performs, and of its memory traffic.

Counting rules (``docs/energy.md`` has the formulas and why):

* **Synaptic events** (``conv2d``, ``linear``): every active input (a spike, or a non-zero graded value) costs one
  accumulate per *real* target: ``sum(x * fanout)`` with a precomputed fan-out map, so border positions of padded
  convs are charged only for the output positions that exist. ``*_eff`` counts only targets whose weight is non-zero
  (NeuroBench's effective ops); ``dense`` counts every input as active (NeuroBench's Dense). Binary inputs give ACs,
  graded inputs (the image, DVS event counts) MACs. A conv on the *static* repeated image is counted at step 0 only,
  because a deployment (and the integer executor) convolves a constant input once and reuses the current.
* **Neurons** (``lif``): one update (leak, integrate, threshold compare) per neuron per step; a reset per spike.
* **Attention**: ``and`` gates cost one evaluation per incoming spike event (``in_events``), ``sum_tokens`` one add per
  incoming spike (the column sum), ``broadcast`` is free (its fan-out appears as events at the mask gate).
* **Pooling**: ``maxpool_binary``/``erode`` cost one OR write per input spike per window containing it (``or_writes``)
  and also report the dense window ``compares``; the real ``maxpool`` costs ``valid - 1`` compares per window.
* **Membrane stream**: ``add`` one add per element; ``mean_tokens`` adds and one scaling multiply per output;
  ``output`` one add per logit per step (the mean over T); BN/bias one add per conv output (``bias_adds``).
* **Memory** (bytes, :class:`~deploy.energy.constants.ByteWidths`): weight reads per synaptic event, accumulator
  read+write per synaptic event, membrane read+write per neuron per step, spike events written/read, graded tensors
  written/read densely.

Tensors are ``[T, B, *node.shape]`` (torch or NumPy, float/bool/int), keyed by graph node name: what
``export.run_graph.run_graph(graph, x, record=counter.required)`` returns, or the integer executor's outputs mapped to
node names. Only :attr:`EnergyCounter.required` nodes are read.
"""
from __future__ import annotations

import time

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from export.graph import BINARY_OPS, Graph, Node, check_handlers
from sdt.errors import UserError

from .constants import INTNET_WIDTHS, ByteWidths

SYNAPTIC = frozenset({"conv2d", "linear"})
POOL_BINARY = frozenset({"maxpool_binary", "erode"})


# ---------------------------------------------------------------------------------------------------- fan-out maps

def _tap_valid(size_in: int, size_out: int, k: int, stride: int, pad: int, dil: int) -> np.ndarray:
    """``[k, size_in]`` bool: tap ``j`` of some output position reads input ``i`` (``o*stride - pad + j*dil == i``)."""
    v = np.zeros((k, size_in), dtype=bool)
    o = np.arange(size_out)
    for j in range(k):
        i = o * stride - pad + j * dil
        v[j, i[(i >= 0) & (i < size_in)]] = True
    return v


def window_fanout(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis tap validity ``(vy [kh, H], vx [kw, W])``; the number of (output position, tap) pairs that read input
    ``(y, x)`` is ``vy.sum(0)[y] * vx.sum(0)[x]`` (zero-padded positions read nothing)."""
    vy = _tap_valid(in_hw[0], out_hw[0], kernel[0], stride[0], padding[0], dilation[0])
    vx = _tap_valid(in_hw[1], out_hw[1], kernel[1], stride[1], padding[1], dilation[1])
    return vy, vx


def conv_fanout(node: Node, in_shape: tuple[int, ...], weight_mask: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(dense [C,H,W], effective [C,H,W], flops)`` of a ``conv2d``: targets per input position, all weights /
    non-zero weights only; ``flops`` is the paper's ``k^2 * H_out * W_out * C_in/groups * C_out``."""
    w = node.params["weight"]
    cout, cin_g, kh, kw = w.shape
    a = node.attrs
    g = int(a.get("groups", 1))
    c, h, wd = in_shape
    vy, vx = window_fanout((h, wd), node.shape[1:], (kh, kw), a["stride"], a["padding"], a.get("dilation", (1, 1)))
    spatial = np.outer(vy.sum(0), vx.sum(0)).astype(np.float64)
    dense = np.broadcast_to(spatial * (cout // g), (c, h, wd)).copy()
    nz = _nonzero_weights(node, weight_mask)  # [Cout, Cin/g, kh, kw]
    # nnz[c, ky, kx]: non-zero weights input channel c meets at tap (ky, kx), over the output channels of its group
    per_group = nz.reshape(g, cout // g, cin_g, kh, kw).sum(1).astype(np.float64)  # [g, Cin/g, kh, kw]
    nnz = per_group.reshape(c, kh, kw)
    eff = np.einsum("ckl,ky,lx->cyx", nnz, vy.astype(np.float64), vx.astype(np.float64))
    flops = float(kh * kw * node.shape[1] * node.shape[2] * cin_g * cout)
    return dense, eff, flops


def linear_fanout(node: Node, weight_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(dense [in], effective [in], flops)`` of a ``linear`` node."""
    w = node.params["weight"]
    nz = _nonzero_weights(node, weight_mask)
    return np.full(w.shape[1], float(w.shape[0])), nz.sum(0).astype(np.float64), float(w.shape[0] * w.shape[1])


def _nonzero_weights(node: Node, weight_mask: np.ndarray | None) -> np.ndarray:
    w = node.params["weight"]
    if weight_mask is not None:
        m = np.asarray(weight_mask) != 0
        if m.shape != w.shape:
            raise UserError(f"weight mask for {node.name!r} has shape {m.shape}, the weight {w.shape}")
        return m
    nz = w != 0
    if "bn_scale" in node.params:  # a zero BN scale removes the whole output channel
        nz = nz & (node.params["bn_scale"] != 0).reshape(-1, *([1] * (w.ndim - 1)))
    return nz


def pool_fanout(node: Node, in_shape: tuple[int, ...], num_heads: int | None = None) -> np.ndarray:
    """Windows containing each input position of a max-pool / erode node, ``[C,H,W]``."""
    c, h, w = in_shape
    if node.op == "erode":
        if node.attrs["mode"] == "spatial":
            vy, vx = window_fanout((h, w), (h, w), (3, 3), (1, 1), (1, 1))
            return np.broadcast_to(np.outer(vy.sum(0), vx.sum(0)), (c, h, w)).astype(np.float64)
        # head layout [heads, N, d]: the window is tokens n+-1 (raster order) x slots j+-1 inside a head
        heads = int(node.attrs["num_heads"])
        d, n = c // heads, h * w
        vn, vd = window_fanout((n, d), (n, d), (3, 3), (1, 1), (1, 1))
        fan_nd = np.outer(vn.sum(0), vd.sum(0)).astype(np.float64)  # [N, d]
        chan_slot = np.arange(c) % d
        return fan_nd[:, chan_slot].T.reshape(c, h, w)
    a = node.attrs
    vy, vx = window_fanout((h, w), node.shape[1:], a["kernel_size"], a["stride"], a["padding"])
    return np.broadcast_to(np.outer(vy.sum(0), vx.sum(0)), (c, h, w)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------- results

@dataclass
class NodeCounts:
    """Counts of one node: ``q[name]`` is a float64 array ``[T, N]`` (per step, per sample), exact integers."""

    name: str
    op: str
    kind: str  # report category: mac/ac layer ('synaptic'), 'neuron', 'and', 'mask', 'colsum', 'pool', 'stream', ...
    q: dict[str, np.ndarray]
    spike_driven: frozenset[str] = frozenset()  # quantities proportional to spike counts (for the break-even rate)
    attrs: dict[str, Any] = field(default_factory=dict)

    def total(self, name: str) -> float:
        """Sum over steps and samples (0 if the node has no such quantity)."""
        a = self.q.get(name)
        return float(a.sum()) if a is not None else 0.0


@dataclass
class Counts:
    """Everything the counter measured: per node, per quantity, ``[T, N]`` arrays. ``N`` = samples."""

    T: int
    samples: int
    nodes: dict[str, NodeCounts]
    widths: ByteWidths
    meta: dict[str, Any] = field(default_factory=dict)

    def total(self, quantity: str, nodes: Iterable[str] | None = None) -> float:
        """Sum of ``quantity`` over the given nodes (default all), steps and samples."""
        names = self.nodes if nodes is None else nodes
        return sum(self.nodes[n].total(quantity) for n in names)

    def per_sample(self, quantity: str) -> np.ndarray:
        """``[N]``: ``quantity`` summed over nodes and steps, for every sample."""
        out = np.zeros(self.samples)
        for nc in self.nodes.values():
            if quantity in nc.q:
                out += nc.q[quantity].sum(0)
        return out

    @staticmethod
    def concat(parts: Sequence["Counts"]) -> "Counts":
        """Join batches (same graph, same counter) along the sample axis."""
        if not parts:
            raise ValueError("no counts to join")
        first = parts[0]
        nodes = {}
        for name, nc in first.nodes.items():
            q = {k: np.concatenate([p.nodes[name].q[k] for p in parts], axis=1) for k in nc.q}
            nodes[name] = NodeCounts(nc.name, nc.op, nc.kind, q, nc.spike_driven, dict(nc.attrs))
        meta = dict(first.meta)
        meta["input_binary"] = all(p.meta.get("input_binary", False) for p in parts)
        return Counts(first.T, sum(p.samples for p in parts), nodes, first.widths, meta)

    def drop(self, quantities: Iterable[str]) -> "Counts":
        """A copy without the given quantities (e.g. a memory component, for a sensitivity figure)."""
        gone = set(quantities)
        nodes = {name: NodeCounts(nc.name, nc.op, nc.kind, {k: v for k, v in nc.q.items() if k not in gone},
                                  nc.spike_driven - gone, dict(nc.attrs)) for name, nc in self.nodes.items()}
        return Counts(self.T, self.samples, nodes, self.widths, dict(self.meta))

    def scaled(self, factor: float) -> "Counts":
        """A copy with every spike-driven quantity multiplied by ``factor`` (all firing rates scaled alike)."""
        nodes = {}
        for name, nc in self.nodes.items():
            q = {k: (v * factor if k in nc.spike_driven else v) for k, v in nc.q.items()}
            nodes[name] = NodeCounts(nc.name, nc.op, nc.kind, q, nc.spike_driven, dict(nc.attrs))
        return Counts(self.T, self.samples, nodes, self.widths, dict(self.meta))


# ---------------------------------------------------------------------------------------------------------- counter

def _map_form(m: np.ndarray) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """The cheapest exact form of a ``[C, HW]`` map: ``const`` (one value), ``pos`` (the same for every channel),
    ``chan`` (the same for every position), ``border`` (per channel, except at the returned positions: the border of
    a padded conv, with the per-channel value ``ref`` everywhere else), or ``full``. Returns ``(form, positions, ref)``."""
    if (m == m.flat[0]).all():
        return "const", None, None
    if (m == m[:1]).all():
        return "pos", None, None
    if (m == m[:, :1]).all():
        return "chan", None, None
    cols, counts = np.unique(m.T, axis=0, return_counts=True)
    ref = cols[counts.argmax()]  # the most common per-position column: the interior, away from any border
    diff = np.flatnonzero((m != ref[:, None]).any(0))
    if len(diff) <= m.shape[1] // 2:
        return "border", diff, ref
    return "full", None, None


@dataclass
class _Source:
    """A recorded tensor ``X [S, C, HW]`` (0/1) and the weighted sums ``sum(X * map)`` its consumers need, all
    computed as one product ``features(X) @ weights``. ``features`` are the few reductions the maps need, in order:
    ``pos`` (``X`` summed over channels, ``[HW]``), ``chan`` (summed over positions, ``[C]``), ``border`` (``X`` at
    the positions ``idx``, ``[C*|idx|]``), ``full`` (``X`` itself), ``tot`` (the total); column 0 of ``weights`` is
    the spike count, column ``j+1`` the sum for ``keys[j]`` = ``(consumer, quantity)``."""

    name: str
    shape: tuple[int, ...]  # the node's shape (per sample and step)
    binary: bool  # by op semantics (lif, and, pools of spikes); graded sources are binarised (non-zero -> 1)
    keys: list[tuple[str, str]]
    features: tuple[str, ...]
    weights: torch.Tensor  # float64 [F, 1 + len(keys)]
    idx: torch.Tensor | None = None
    static: bool = False  # the repeated static input: identical at every step, counted at step 0 only
    is_input: bool = False
    c: int = field(init=False)  # channels: the first dimension of the shape (the features of a 1-D tensor)
    hw: int = field(init=False)  # positions per channel

    def __post_init__(self) -> None:  # derived once: the counting hot path reads them for every tensor
        self.c, self.hw = _channels_positions(self.shape)


def _channels_positions(shape: Sequence[int]) -> tuple[int, int]:
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


def _plan_source(name: str, shape: tuple[int, ...], binary: bool, maps: Sequence[tuple[str, str, np.ndarray]],
                 static: bool = False, is_input: bool = False) -> _Source:
    """Choose the fewest reductions that give every map exactly, and stack the maps into one weight matrix."""
    c, hw = _channels_positions(shape)
    ms = [(cons, q, np.asarray(m, dtype=np.float64).reshape(c, hw)) for cons, q, m in maps]
    forms = [_map_form(m) for _, _, m in ms]
    kinds = {f for f, _, _ in forms}
    use = set(kinds - {"const"})
    if "border" in use:
        use.add("chan")
    # constant maps need only the spike count, from whichever reduction is there or is the faster one: torch's CPU
    # sum over channels (``pos``) is quick for small feature maps, its sum over positions (``chan``) for large ones
    faster = "pos" if hw < 64 else "chan"
    if not use:  # a float32 total is exact below 2**24 spikes per sample and step; channel sums past that
        use.add(faster if ms else ("tot" if c * hw < 2 ** 24 else "chan"))
    elif "const" in kinds and not use & {"pos", "chan"}:
        use.add(faster)
    features = tuple(f for f in ("pos", "chan", "border", "full", "tot") if f in use)
    border = np.unique(np.concatenate([d for f, d, _ in forms if f == "border"])) if "border" in use else None
    size = {"pos": hw, "chan": c, "border": c * (0 if border is None else len(border)), "full": c * hw, "tot": 1}
    offset, o = {}, 0
    for f in features:
        offset[f], o = o, o + size[f]
    W = np.zeros((o, 1 + len(ms)))
    # the spike count: the sum of the first whole-tensor reduction
    first = next(f for f in features if f in ("pos", "chan", "full", "tot"))
    W[offset[first]:offset[first] + size[first], 0] = 1.0
    const_into = faster if faster in use else ("chan" if "chan" in use else "pos")
    for j, ((_, _, m), (form, _, ref)) in enumerate(zip(ms, forms), start=1):
        if form == "const":
            form = const_into
        if form == "pos":
            W[offset["pos"]:offset["pos"] + hw, j] = m[0]
        elif form == "full":
            W[offset["full"]:offset["full"] + c * hw, j] = m.reshape(-1)
        else:  # chan, or chan plus corrections at the border positions
            if form == "chan":
                ref = m[:, 0]
            else:
                W[offset["border"]:offset["border"] + size["border"], j] = (m[:, border] - ref[:, None]).reshape(-1)
            W[offset["chan"]:offset["chan"] + c, j] = ref
    return _Source(name, tuple(shape), binary, [(cons, q) for cons, q, _ in ms], features, torch.from_numpy(W),
                   None if border is None else torch.from_numpy(border), static, is_input)


def binary_nodes(graph: Graph) -> set[str]:
    """Nodes whose output is a 0/1 spike tensor by the op semantics (the input is decided per batch)."""
    out: set[str] = set()
    for n in graph:
        if n.op in BINARY_OPS or (n.op == "broadcast" and n.inputs[0] in out):
            out.add(n.name)
    return out


@dataclass
class _NodeCtx:
    """What one node's count handler reads (the run's sums, the node's inputs) and fills (``q``, ``driven``, ...)."""

    g: Graph
    T: int
    wb: Any
    numel: float
    sums: Mapping[str, Mapping[tuple[str, str], np.ndarray]]
    B: int
    input_binary: bool
    in_nodes: list[Node]
    in_binary: list[bool]
    numels: Mapping[str, float]
    kind: str = "stream"
    q: dict[str, np.ndarray] = field(default_factory=dict)
    driven: set[str] = field(default_factory=set)
    attrs: dict[str, Any] = field(default_factory=dict)

    def const(self, v: float) -> np.ndarray:  # the same value at every step and sample: a read-only broadcast view
        return np.broadcast_to(np.float64(v), (self.T, self.B))

    def graded_read(self, src: Node) -> np.ndarray:
        return self.const(self.numels[src.name] * self.wb.graded)


class EnergyCounter:
    """Precomputes fan-out maps of ``graph`` once; :meth:`count` turns one batch of node tensors into :class:`Counts`.

    ``widths``: byte widths for memory traffic (default: the integer network's). ``static_input_once``: with the
    'repeat' encoding, count the first conv (and its input reads) at step 0 only. ``weight_masks``: node name ->
    array of the weight's shape whose non-zeros are the weights a backend really holds (e.g. the quantised integer
    weights), for the effective counts; default: the graph's float weights.
    """

    def __init__(self, graph: Graph, widths: ByteWidths = INTNET_WIDTHS, static_input_once: bool = True,
                 weight_masks: Mapping[str, np.ndarray] | None = None) -> None:
        self.graph = graph
        self.widths = widths
        self.static_input_once = bool(static_input_once) and graph.encoding == "repeat"
        self.binary = binary_nodes(graph)
        self.weight_masks = dict(weight_masks or {})
        unknown = set(self.weight_masks) - {n.name for n in graph if n.op in SYNAPTIC}
        if unknown:
            raise UserError(f"weight masks for unknown synaptic node(s): {', '.join(sorted(unknown))}")
        self.flops: dict[str, float] = {}  # the paper's FLOPs of every synaptic node
        self.flops_valid: dict[str, float] = {}  # the same without padded taps (= NeuroBench Dense per step)
        self._dense_per_step: dict[str, float] = {}
        self._pool_compares: dict[str, float] = {}
        self._buffers: dict[str, dict[str, float]] = {}
        self._numel = {n.name: float(np.prod(n.shape)) for n in graph}
        self.sources = self._plan()
        self._by_name = {src.name: src for src in self.sources}

    # -------------------------------------------------------------------------------------------------- planning

    @property
    def required(self) -> list[str]:
        """Node names whose ``[T, B, *shape]`` tensors :meth:`count` needs."""
        return [s.name for s in self.sources]

    def _plan(self) -> list[_Source]:
        g = self.graph
        maps: dict[str, list[tuple[str, str, np.ndarray]]] = {}

        def need(src: str) -> list[tuple[str, str, np.ndarray]]:
            return maps.setdefault(src, [])

        for node in g:
            if node.op in BINARY_OPS:
                need(node.name)
            if node.op in SYNAPTIC:
                src = g.node(node.inputs[0])
                if src.op == "broadcast":
                    raise UserError(f"{node.name}: a synaptic layer on a broadcast tensor is not supported")
                mask = self.weight_masks.get(node.name)
                if node.op == "conv2d":
                    dense, eff, flops = conv_fanout(node, src.shape, mask)
                else:
                    dense, eff, flops = linear_fanout(node, mask)
                self.flops[node.name] = flops
                self.flops_valid[node.name] = self._dense_per_step[node.name] = float(dense.sum())
                need(src.name).extend([(node.name, "syn", dense), (node.name, "eff", eff)])
            elif node.op in POOL_BINARY:
                src = g.node(node.inputs[0])
                fan = pool_fanout(node, src.shape)
                need(src.name).append((node.name, "pool", fan))
                self._pool_compares[node.name] = float(fan.sum()) - float(np.prod(node.shape))
            elif node.op in ("maxpool", "avgpool"):
                fan = pool_fanout(node, g.node(node.inputs[0]).shape)
                self._pool_compares[node.name] = float(fan.sum()) - float(np.prod(node.shape))
        need(g.input.name)
        sources = []
        for name, ms in maps.items():
            node = g.node(name)
            is_input = node.op == "input"
            sources.append(_plan_source(name, node.shape, name in self.binary, ms,
                                        static=is_input and self.static_input_once, is_input=is_input))
        order = {n.name: i for i, n in enumerate(g)}
        return sorted(sources, key=lambda s: order[s.name])

    # -------------------------------------------------------------------------------------------------- counting

    def count(self, tensors: Mapping[str, Any]) -> Counts:
        """Counts of one batch. ``tensors``: node name -> ``[T, B, *shape]`` for every :attr:`required` node."""
        tally = self.tally()
        for src in self.sources:
            if src.name not in tensors:
                raise UserError(f"energy counter: no tensor for node {src.name!r} (record every counter.required node)")
            tally.add(src.name, tensors[src.name])
        return tally.counts()

    def tally(self) -> "Tally":
        """Batches counted tensor by tensor, as the run produces them (``run_graph(..., on_record=tally.add)`` then
        ``tally.end_batch()``), so that no recorded tensor outlives its last consumer; the per-node counts are built
        once, for all batches, by ``tally.counts()``."""
        return Tally(self)

    def _add(self, tally: "Tally", name: str, x: Any, channels_last: bool = False) -> None:
        src = self._by_name.get(name)
        if src is None:
            return  # not needed for counting
        x = x if isinstance(x, torch.Tensor) else np.asarray(x)
        T, shape = self.graph.T, src.shape
        want = (src.c * src.hw,) if channels_last else shape
        if len(x.shape) != 2 + len(want) or x.shape[0] != T or tuple(x.shape[2:]) != want:
            raise UserError(f"energy counter: tensor {src.name!r} has shape {tuple(x.shape)}, expected "
                            f"[{T}, B, {', '.join(map(str, want))}]")
        if tally.B is None:
            tally.B = int(x.shape[1])
        elif x.shape[1] != tally.B:
            raise UserError(f"energy counter: tensor {src.name!r} has batch {x.shape[1]}, others {tally.B}")
        if src.static:
            x = x[:1]
        if isinstance(x, np.ndarray):  # torch shares writable memory only (the executor hands out read-only views)
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        x = x.detach() if x.requires_grad else x
        x = x.reshape(x.shape[0] * tally.B, src.hw, src.c) if channels_last else \
            x.reshape(x.shape[0] * tally.B, src.c, src.hw)
        if not src.binary:
            if src.is_input:
                tally.input_binary = bool(((x == 0) | (x == 1)).all())
            x = x != 0
        tally.sums[src.name] = self._reduce(src, x, channels_last).reshape(-1, tally.B, 1 + len(src.keys))

    def _finish(self, batches: Sequence[tuple[dict[str, np.ndarray], int, bool]]) -> Counts:
        """Per-node counts of batches ``(sums, B, input_binary)``, joined along the sample axis."""
        if not batches:
            raise UserError("energy counter: no batch was counted")
        T = self.graph.T
        B, input_binary = sum(b[1] for b in batches), all(b[2] for b in batches)
        sums: dict[str, dict[tuple[str, str], np.ndarray]] = {}
        for src in self.sources:
            a = batches[0][0][src.name] if len(batches) == 1 else np.concatenate([b[0][src.name] for b in batches], 1)
            if src.static:  # step 0 carries the only evaluation of a constant input
                a = np.concatenate([a, np.zeros((T - 1, *a.shape[1:]))])
            sums[src.name] = {key: a[:, :, j] for j, key in enumerate([("", "nnz"), *src.keys])}
        nodes = {n.name: self._node_counts(n, sums, B, input_binary) for n in self.graph}
        return Counts(T, B, nodes, self.widths,
                      {"input_binary": input_binary, "static_input_once": self.static_input_once})

    @staticmethod
    def _reduce(src: _Source, x: torch.Tensor, channels_last: bool = False) -> np.ndarray:
        """``[S, 1 + len(src.keys)]``: the spike count and every weighted sum ``src`` needs from ``x`` (``[S, C, HW]``,
        or ``[S, HW, C]`` if ``channels_last``; 0/1), as one product of a few reductions with the stacked maps (few
        torch calls: on small models their dispatch, not the arithmetic, is the counter's cost). Reductions run in
        float32, exact because each is an integer below 2**24 (at most C, HW, or for ``tot`` C*HW < 2**24 ones); the
        product with the maps is float64."""
        xf = x if x.dtype == torch.float32 else x.to(torch.float32)
        S = xf.shape[0]
        c_dim, p_dim = (2, 1) if channels_last else (1, 2)
        parts = []
        for f in src.features:
            if f == "pos":
                parts.append(xf.sum(c_dim) if src.c > 1 else xf.reshape(S, src.hw))
            elif f == "chan":
                parts.append(xf.sum(p_dim) if src.hw > 1 else xf.reshape(S, src.c))
            elif f == "border":
                b = xf[:, src.idx, :].transpose(1, 2) if channels_last else xf[:, :, src.idx]
                parts.append(b.reshape(S, -1))
            elif f == "full":
                parts.append((xf.transpose(1, 2) if channels_last else xf).reshape(S, -1))
            else:
                parts.append(xf.reshape(S, -1).sum(1, keepdim=True))
        feats = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return (feats.to(torch.float64) @ src.weights).numpy()

    def _nnz(self, name: str, sums: Mapping[str, Mapping[tuple[str, str], np.ndarray]], B: int) -> np.ndarray:
        node = self.graph.node(name)
        if node.op == "broadcast":  # each spike of the (C,1,1) input is copied to every token
            return self._nnz(node.inputs[0], sums, B) * (self._numel[node.name] / self._numel[node.inputs[0]])
        return sums[name][("", "nnz")]

    def _node_counts(self, node: Node, sums: Mapping[str, Mapping[tuple[str, str], np.ndarray]], B: int,
                     input_binary: bool) -> NodeCounts:
        g = self.graph
        in_nodes = [g.node(i) for i in node.inputs]
        c = _NodeCtx(g, g.T, self.widths, self._numel[node.name], sums, B, input_binary, in_nodes,
                     [i.name in self.binary for i in in_nodes], self._numel)
        OP_HANDLERS[node.op](self, node, c)
        return NodeCounts(node.name, node.op, c.kind, c.q, frozenset(c.driven), c.attrs)

    def _count_input(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "input"
        c.q["nonzero"] = c.sums[node.name][("", "nnz")]

    def _count_synaptic(self, node: Node, c: _NodeCtx) -> None:
        src = c.in_nodes[0]
        s = c.sums[src.name]
        syn, eff, nnz = s[(node.name, "syn")], s[(node.name, "eff")], s[("", "nnz")]
        spiking = c.in_binary[0] or (src.op == "input" and c.input_binary)
        zero = np.zeros_like(syn)
        c.kind = "ac" if spiking else "mac"
        c.q["ac"], c.q["ac_eff"] = (syn, eff) if spiking else (zero, zero)
        c.q["mac"], c.q["mac_eff"] = (zero, zero) if spiking else (syn, eff)
        static = src.op == "input" and self.static_input_once
        if static:
            steps = np.zeros((c.T, c.B))
            steps[0] = 1.0
        else:
            steps = c.const(1.0)
        c.q["dense"] = steps * self._dense_per_step[node.name]
        c.q["in_events"] = nnz
        has_bias = "bias" in node.params or "bn_scale" in node.params
        c.q["bias_adds"] = steps * (c.numel if has_bias else 0.0)
        c.q["weight_bytes"] = syn * c.wb.weight
        c.q["accum_bytes"] = syn * 2 * c.wb.state
        c.q["io_read_bytes"] = nnz * c.wb.event if spiking else steps * (self._numel[src.name] * c.wb.graded)
        if c.in_binary[0]:
            c.driven |= {"ac", "ac_eff", "in_events", "weight_bytes", "accum_bytes", "io_read_bytes"}
        c.attrs.update(input=src.name, flops=self.flops[node.name], flops_valid=self.flops_valid[node.name],
                       static_input=static, spiking_input=spiking)

    def _count_lif(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "neuron"
        c.q["neuron_updates"] = c.const(c.numel)
        c.q["spikes"] = self._nnz(node.name, c.sums, c.B)
        c.q["membrane_bytes"] = c.const(c.numel * 2 * c.wb.state)
        c.q["io_read_bytes"] = c.graded_read(c.in_nodes[0])
        c.q["io_write_bytes"] = c.q["spikes"] * c.wb.event
        c.driven |= {"spikes", "io_write_bytes"}
        decay = float(node.attrs["decay"])
        c.attrs.update(decay=decay, leak_is_shift=bool(decay == 1.0 or np.log2(decay).is_integer()),
                       v_threshold=float(node.attrs["v_threshold"]))

    def _count_and(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "mask" if any(i.op == "broadcast" for i in c.in_nodes) else "and"
        c.q["in_events"] = sum(self._nnz(i.name, c.sums, c.B) for i in c.in_nodes)
        c.q["spikes"] = self._nnz(node.name, c.sums, c.B)
        c.q["gate_updates"] = c.const(c.numel)  # dense: one gate evaluation per element (a neuron on a chip)
        c.q["io_read_bytes"] = c.q["in_events"] * c.wb.event
        c.q["io_write_bytes"] = c.q["spikes"] * c.wb.event
        c.driven |= {"in_events", "spikes", "io_read_bytes", "io_write_bytes"}

    def _count_sum_tokens(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "colsum"
        src = c.in_nodes[0].name
        nnz_in = self._nnz(src, c.sums, c.B) if c.in_binary[0] else c.const(self._numel[src])
        c.q["colsum_adds"] = nnz_in
        c.q["dense"] = c.const(self._numel[src] - c.numel)
        c.q["io_read_bytes"] = nnz_in * c.wb.event
        c.q["io_write_bytes"] = c.const(c.numel * c.wb.graded)
        if c.in_binary[0]:
            c.driven |= {"colsum_adds", "io_read_bytes"}

    def _count_broadcast(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "mask"
        c.q["spikes"] = self._nnz(node.name, c.sums, c.B)
        c.driven.add("spikes")

    def _count_binary_pool(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "pool"
        src = c.in_nodes[0]
        c.q["or_writes"] = c.sums[src.name][(node.name, "pool")]
        c.q["compares"] = c.const(self._pool_compares[node.name])
        c.q["gate_updates"] = c.const(c.numel)
        c.q["spikes"] = self._nnz(node.name, c.sums, c.B)
        c.q["io_read_bytes"] = self._nnz(src.name, c.sums, c.B) * c.wb.event
        c.q["io_write_bytes"] = c.q["spikes"] * c.wb.event
        c.driven |= {"or_writes", "spikes", "io_read_bytes", "io_write_bytes"}

    def _count_maxpool(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "pool"
        c.q["compares"] = c.const(self._pool_compares[node.name])
        c.q["io_read_bytes"] = c.graded_read(c.in_nodes[0])
        c.q["io_write_bytes"] = c.const(c.numel * c.wb.graded)

    def _count_avgpool(self, node: Node, c: _NodeCtx) -> None:
        c.q["adds"] = c.const(self._pool_compares[node.name])
        c.q["mults"] = c.const(c.numel)
        c.q["io_read_bytes"] = c.graded_read(c.in_nodes[0])
        c.q["io_write_bytes"] = c.const(c.numel * c.wb.graded)

    def _count_add(self, node: Node, c: _NodeCtx) -> None:
        c.q["adds"] = c.const(c.numel)
        c.q["io_read_bytes"] = sum(c.graded_read(i) for i in c.in_nodes)
        c.q["io_write_bytes"] = c.const(c.numel * c.wb.graded)

    def _count_mean_tokens(self, node: Node, c: _NodeCtx) -> None:
        n_in = self._numel[c.in_nodes[0].name]
        c.q["adds"] = c.const(n_in - c.numel)
        c.q["mults"] = c.const(c.numel)
        c.q["io_read_bytes"] = c.graded_read(c.in_nodes[0])
        c.q["io_write_bytes"] = c.const(c.numel * c.wb.graded)

    def _count_output(self, node: Node, c: _NodeCtx) -> None:
        c.kind = "readout"
        c.q["adds"] = c.const(c.numel)  # logits accumulated over the T steps (the 1/T scale does not change argmax)
        c.q["io_read_bytes"] = c.graded_read(c.in_nodes[0])

    # -------------------------------------------------------------------------------------------------- buffers

    def buffer_bytes(self) -> dict[str, dict[str, float]]:
        """SRAM buffer size (bytes) behind each node's memory quantity, for the size-dependent access cost:
        weights of the layer, its accumulators, its membranes, and the spike FIFO or graded tensor it reads/writes."""
        if self._buffers:
            return self._buffers
        wb, g = self.widths, self.graph

        def io_buf(node: Node) -> float:
            if node.name in self.binary:
                return wb.fifo_events * wb.event
            return float(np.prod(node.shape)) * wb.graded

        for node in g:
            b: dict[str, float] = {"io_write_bytes": io_buf(node)}
            if node.inputs:
                b["io_read_bytes"] = io_buf(g.node(node.inputs[0]))
            if node.op in SYNAPTIC:
                b["weight_bytes"] = float(node.params["weight"].size) * wb.weight
                b["accum_bytes"] = float(np.prod(node.shape)) * wb.state
            if node.op == "lif":
                b["membrane_bytes"] = float(np.prod(node.shape)) * wb.state
            self._buffers[node.name] = b
        return self._buffers


MEMORY_QUANTITIES = ("weight_bytes", "accum_bytes", "membrane_bytes", "io_read_bytes", "io_write_bytes")

# graph op -> the EnergyCounter method that counts one node of it
OP_HANDLERS: Mapping[str, Callable[[EnergyCounter, Node, _NodeCtx], None]] = {
    "input": EnergyCounter._count_input,
    "conv2d": EnergyCounter._count_synaptic,
    "linear": EnergyCounter._count_synaptic,
    "lif": EnergyCounter._count_lif,
    "and": EnergyCounter._count_and,
    "sum_tokens": EnergyCounter._count_sum_tokens,
    "broadcast": EnergyCounter._count_broadcast,
    "maxpool_binary": EnergyCounter._count_binary_pool,
    "erode": EnergyCounter._count_binary_pool,
    "maxpool": EnergyCounter._count_maxpool,
    "avgpool": EnergyCounter._count_avgpool,
    "add": EnergyCounter._count_add,
    "mean_tokens": EnergyCounter._count_mean_tokens,
    "output": EnergyCounter._count_output,
}
check_handlers(__name__, OP_HANDLERS)


__all__ = ["EnergyCounter", "Tally", "Counts", "NodeCounts", "binary_nodes", "conv_fanout", "linear_fanout", "pool_fanout",
           "window_fanout", "MEMORY_QUANTITIES", "SYNAPTIC"]


class Tally:
    """Batches being counted: :meth:`add` each required node's ``[T, B, *shape]`` tensor of a batch (others are
    ignored), :meth:`end_batch`, and at the end :meth:`counts` for all of them. ``count_s`` is the time spent in
    :meth:`add` (the counter's share of a streamed run; :meth:`counts` runs once per report)."""

    def __init__(self, counter: EnergyCounter) -> None:
        self.counter = counter
        self.sums: dict[str, np.ndarray] = {}  # source -> [T or 1, B, 1 + maps] of the open batch
        self.B: int | None = None
        self.input_binary = False
        self.count_s = 0.0
        self._done: list[tuple[dict[str, np.ndarray], int, bool]] = []

    def add(self, name: str, x: Any, channels_last: bool = False) -> None:
        """Count node ``name``'s ``[T, B, *shape]`` tensor; ``channels_last``: ``[T, B, H*W*C]`` with channels fastest
        (the integer executor's own layout, so that it needs no transposed copy)."""
        t0 = time.perf_counter()
        self.counter._add(self, name, x, channels_last)  # noqa: SLF001
        self.count_s += time.perf_counter() - t0

    def end_batch(self) -> None:
        """Close the current batch: every required node must have been added."""
        missing = [s.name for s in self.counter.sources if s.name not in self.sums]
        if missing:
            raise UserError(f"energy counter: no tensor for node {missing[0]!r} (record every counter.required node)")
        assert self.B is not None
        self._done.append((self.sums, self.B, self.input_binary))
        self.sums, self.B, self.input_binary = {}, None, False

    def counts(self) -> Counts:
        """Counts of every batch so far (an open batch is closed first)."""
        if self.sums or not self._done:
            self.end_batch()
        return self.counter._finish(self._done)  # noqa: SLF001
