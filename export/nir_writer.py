"""Write the :class:`~export.graph.Graph` as a NIR file: ``write_nir(graph, path)`` (``to_nir`` gives the NIRGraph).

Standard NIR 1.0 primitives only, except the official SPS stage-3 max-pool on real values, which is a nested
``NIRGraph`` labelled ``metadata["sdt_extension"] = "maxpool2d"`` (stock ``nir.read`` loads it; our reader runs it
exactly). ``docs/nir_mapping.md`` has the full mapping table. The choices that make the file reproduce the model
exactly while staying small:

* BatchNorm stays beside its conv (bit-exact): folded into the consuming LIF as ``r = scale``, ``v_leak = shift``
  (NIR's Euler LIF ``v += dt/tau (v_leak - v + r I)`` is exactly the model's ``h = v + (bn(z) - v) k``), else a
  diagonal 1x1 ``Conv2d`` (weight = scale, bias = shift) named after the BN. ``fold_bn=True`` folds BN into the conv
  weights instead (no extra nodes; rounding then differs from the model).
* LIF thresholds are strict: ``v_threshold = nextafter32(theta, -inf)``, so ``v > v_threshold`` <=> ``h >= theta``
  in float32. The attention LIF (lif mode) sees ``0.5 * count`` and gets 0.375, the middle of its exact interval.
* Broadcast over tokens is a ``SumPool2d`` with kernel = grid, stride 1, padding grid - 1 (no weights at all);
  the column sum is ``SumPool2d`` with kernel = stride = grid. Binary max-pool / DVS erode: ``SumPool2d`` or 3x3
  ``Conv2d`` window sums, then ``Threshold(0.5)``. No grouped or non-square conv kernels (NIR shape-inference bugs).
* Membrane-shortcut sums are ``Scale(1)`` junction nodes with two in-edges, in the model's order.

The default ``engine="stream"`` writes exactly the HDF5 layout of ``nir.write`` node by node (``nir.write`` deep-copies
the whole graph twice, too much for ImageNet models); constant arrays are stored as HDF5 fill values, structured
arrays gzip-compressed, dense weights raw. ``engine="nir"`` calls ``nir.write`` itself.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import h5py
import nir
import numpy as np

import sdt
from sdt.atomic import atomic_path
from sdt.errors import UserError

from .graph import OPS, Graph, Node, check_handlers, fold_bn as _fold

DT = 1e-4  # seconds per step, the convention of released NIR exporters; only tau = dt / decay depends on it
FORMAT = "sdt-nir/1"
EXTENSION_KEY = "sdt_extension"
ENGINES = ("stream", "nir")
THRESHOLD_CONVENTION = ("NIR fires on v > v_threshold, the model on h >= theta. v_threshold = nextafter(float32(theta),"
                        " -inf), so both agree exactly in float32; the lif-mode attention LIF (input = integer token "
                        "count, decay 0.5, theta 0.5: membrane is exactly count/2) uses 0.375.")
LIF_DISCRETISATION = ("forward Euler per step: v = v + (dt/tau) * (v_leak - v + r * I); spike z = v > v_threshold; "
                      "v = v_reset where z; v starts at 0. r/v_leak carry the BatchNorm of the driving conv.")


def nir_name(name: str) -> str:
    """NIR node name of a graph node (dots would break nirtorch's module names)."""
    return name.replace(".", "_")


def strict_threshold(theta: float, decay: float, integer_input: bool) -> np.float32:
    """The NIR (``>``) threshold that reproduces the model's ``>= theta``."""
    if integer_input and decay == 0.5 and theta == 0.5:
        return np.float32(0.375)  # h = count / 2 exactly; any value in (0.25, 0.5) is exact, this one is robust
    return np.nextafter(np.float32(theta), np.float32(-np.inf))


def tau_array(decay: float, shape: tuple[int, ...], dt: float) -> np.ndarray:
    """``tau = dt / decay`` in float32 when ``float32(dt / tau) == decay`` round-trips, else in float64."""
    for dtype in (np.float32, np.float64):
        tau = np.asarray(dt / decay, dtype=dtype)
        if np.float32(dt / np.float64(tau)) == np.float32(decay):
            return np.broadcast_to(tau, shape)
    raise UserError(f"LIF decay {decay} cannot be written as tau = dt / decay exactly")  # pragma: no cover


def _per_channel(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.float32).reshape(-1, *([1] * (len(shape) - 1))), shape)


def _const(value: float, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=dtype), shape)


def _head_band(channels: int, heads: int) -> np.ndarray:
    """``band[o, i] = 1`` where channels o, i are in the same head and their slots differ by at most 1."""
    d = channels // heads
    c = np.arange(channels)
    same_head = (c[:, None] // d) == (c[None, :] // d)
    return (same_head & (np.abs(c[:, None] % d - c[None, :] % d) <= 1)).astype(np.float32)


@dataclass
class _Builder:
    graph: Graph
    fold_bn: bool
    dt: float
    nodes: dict[str, nir.NIRNode] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    out_of: dict[str, str] = field(default_factory=dict)  # graph node -> NIR node that carries its value
    fused: dict[str, Node] = field(default_factory=dict)   # lif name -> conv whose BN lives in the lif's r/v_leak
    extensions: set[str] = field(default_factory=set)

    def put(self, name: str, node: nir.NIRNode, inputs: tuple[str, ...] = (), **meta: str) -> str:
        if name in self.nodes:
            raise UserError(f"NIR node name clash: {name!r}; rename the graph node")
        node.metadata = {**node.metadata, **{k: v for k, v in meta.items() if v}}
        self.nodes[name] = node
        self.edges.extend((i, name) for i in inputs)
        return name

    def src(self, node: Node) -> tuple[str, ...]:
        return tuple(self.out_of[i] for i in node.inputs)

    def in_shape(self, node: Node) -> tuple[int, ...]:
        return self.graph.node(node.inputs[0]).shape

    # --- one method per graph op -------------------------------------------------------------------------------
    def input(self, n: Node) -> str:
        return self.put("input", nir.Input(input_type=np.array(n.shape)), sdt_node=n.name, sdt_source=n.source)

    def conv2d(self, n: Node) -> str:
        a = n.attrs
        c_in = self.in_shape(n)
        if a.get("groups", 1) != 1:
            raise UserError(f"{n.name}: grouped convs do not survive NIR type checking; the SDT has none")
        w, b = (_fold(n) if self.fold_bn else (n.params["weight"], n.params.get("bias")))
        if b is None:
            b = np.zeros(w.shape[0], np.float32)
        has_bn = "bn_scale" in n.params and not self.fold_bn
        name = nir_name(n.name)
        conv = nir.Conv2d(input_shape=tuple(c_in[1:]), weight=w, stride=tuple(a["stride"]),
                          padding=tuple(a["padding"]), dilation=tuple(a.get("dilation", (1, 1))), groups=1, bias=b)
        users = self.graph.consumers(n.name)
        if has_bn and len(users) == 1 and users[0].op == "lif":
            self.fused[users[0].name] = n
            return self.put(name, conv, self.src(n), sdt_part_of=n.name, sdt_source=n.source,
                            sdt_bn=f"{a.get('bn', '')} in {nir_name(users[0].name)}.r / v_leak")
        if not has_bn:
            return self.put(name, conv, self.src(n), sdt_node=n.name, sdt_source=n.source)
        self.put(name, conv, self.src(n), sdt_part_of=n.name, sdt_source=n.source)
        c = w.shape[0]
        diag = np.zeros((c, c, 1, 1), np.float32)
        diag[np.arange(c), np.arange(c), 0, 0] = n.params["bn_scale"]
        bn = nir.Conv2d(input_shape=tuple(n.shape[1:]), weight=diag, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                        groups=1, bias=np.asarray(n.params["bn_shift"], np.float32))
        return self.put(nir_name(a.get("bn") or f"{n.name}_bn"), bn, (name,), sdt_node=n.name,
                        sdt_role="BatchNorm as a diagonal 1x1 conv")

    def linear(self, n: Node) -> str:
        w, b = _fold(n)  # a linear node carries no BN in the SDT; folding is then the identity
        return self.put(nir_name(n.name), nir.Affine(weight=w, bias=b), self.src(n), sdt_node=n.name,
                        sdt_source=n.source)

    def lif(self, n: Node) -> str:
        a, shape = n.attrs, n.shape
        conv = self.fused.get(n.name)
        r = _per_channel(conv.params["bn_scale"], shape) if conv is not None else _const(1.0, shape)
        v_leak = _per_channel(conv.params["bn_shift"], shape) if conv is not None else _const(0.0, shape)
        counts = self.graph.node(n.inputs[0]).op == "sum_tokens"
        node = nir.LIF(tau=tau_array(a["decay"], shape, self.dt), r=r, v_leak=v_leak,
                       v_threshold=_const(strict_threshold(a["v_threshold"], a["decay"], counts), shape),
                       v_reset=_const(a.get("v_reset", 0.0), shape))
        return self.put(nir_name(n.name), node, self.src(n), sdt_node=n.name, sdt_source=n.source,
                        sdt_input_node=conv.name if conv is not None else "")

    def _threshold(self, n: Node, inputs: tuple[str, ...], theta: float) -> str:
        return self.put(nir_name(n.name), nir.Threshold(threshold=_const(theta, n.shape)), inputs, sdt_node=n.name,
                        sdt_source=n.source)

    def and_(self, n: Node) -> str:
        return self._threshold(n, self.src(n), 1.5)  # inputs are spikes: their sum is 2 only when both fire

    def _sum_pool(self, name: str, inputs: tuple[str, ...], k, s, p, **meta: str) -> str:
        return self.put(name, nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p)),
                        inputs, **meta)

    def sum_tokens(self, n: Node) -> str:
        grid = self.in_shape(n)[1:]
        return self._sum_pool(nir_name(n.name), self.src(n), grid, grid, (0, 0), sdt_node=n.name, sdt_source=n.source)

    def broadcast(self, n: Node) -> str:
        (h, w) = n.attrs["grid"]  # each output window covers the single input value exactly once
        return self._sum_pool(nir_name(n.name), self.src(n), (h, w), (1, 1), (h - 1, w - 1), sdt_node=n.name,
                              sdt_source=n.source)

    def maxpool_binary(self, n: Node) -> str:
        a = n.attrs
        s = self._sum_pool(f"{nir_name(n.name)}_sum", self.src(n), a["kernel_size"], a["stride"], a["padding"],
                           sdt_part_of=n.name)
        return self._threshold(n, (s,), 0.5)

    def maxpool(self, n: Node) -> str:
        a, c_in = n.attrs, self.in_shape(n)
        inner = nir.NIRGraph(
            nodes={"input": nir.Input(input_type=np.array(c_in)),
                   "stand_in": nir.AvgPool2d(kernel_size=np.array(a["kernel_size"]), stride=np.array(a["stride"]),
                                             padding=np.array(a["padding"])),
                   "output": nir.Output(output_type=np.array(n.shape))},
            edges=[("input", "stand_in"), ("stand_in", "output")],
            metadata={EXTENSION_KEY: "maxpool2d", "kernel_size": np.array(a["kernel_size"]),
                      "stride": np.array(a["stride"]), "padding": np.array(a["padding"]),
                      "doc": "max-pool of real values (padding -inf); no NIR primitive exists. The inner AvgPool2d "
                             "only keeps the shapes valid for stock readers, which will compute an average instead."})
        self.extensions.add("maxpool2d")
        return self.put(nir_name(n.name), inner, self.src(n), sdt_node=n.name, sdt_source=n.source)

    def avgpool(self, n: Node) -> str:
        a = n.attrs
        pool = nir.AvgPool2d(kernel_size=np.array(a["kernel_size"]), stride=np.array(a["stride"]),
                             padding=np.array(a["padding"]))
        return self.put(nir_name(n.name), pool, self.src(n), sdt_node=n.name, sdt_source=n.source)

    def erode(self, n: Node) -> str:
        name, (c, h, w) = nir_name(n.name), n.shape
        if n.attrs["mode"] == "spatial":
            s = self._sum_pool(f"{name}_sum", self.src(n), (3, 3), (1, 1), (1, 1), sdt_part_of=n.name)
            return self._threshold(n, (s,), 0.5)
        # head layout window: slots j±1 of the same head (channel band) x tokens n±1 in raster order. In the (H, W)
        # grid, n±1 is the row neighbour (j±1) plus, at row ends, the wrap to the next/previous row: offsets
        # (+1, -(W-1)) and (-1, +(W-1)), i.e. the two corner taps of a 3x3 kernel with dilation (1, W-1).
        band = _head_band(c, int(n.attrs["num_heads"]))
        row = np.zeros((c, c, 3, 3), np.float32)
        if w > 1:
            row[:, :, 1, :] = band[:, :, None]
        else:  # a single column: raster neighbours are the rows above and below
            row[:, :, :, 1] = band[:, :, None]
        parts = [self.put(f"{name}_row", nir.Conv2d(input_shape=(h, w), weight=row, stride=(1, 1), padding=(1, 1),
                                                    dilation=(1, 1), groups=1, bias=np.zeros(c, np.float32)),
                          self.src(n), sdt_part_of=n.name)]
        if h > 1 and w > 1:
            wrap = np.zeros((c, c, 3, 3), np.float32)
            wrap[:, :, 2, 0] = band
            wrap[:, :, 0, 2] = band
            parts.append(self.put(f"{name}_wrap", nir.Conv2d(input_shape=(h, w), weight=wrap, stride=(1, 1),
                                                             padding=(1, w - 1), dilation=(1, w - 1), groups=1,
                                                             bias=np.zeros(c, np.float32)),
                                  self.src(n), sdt_part_of=n.name))
        return self._threshold(n, tuple(parts), 0.5)

    def add(self, n: Node) -> str:
        # a junction: NIR sums in-edges; one node per two-term sum keeps the model's float rounding order
        return self.put(nir_name(n.name), nir.Scale(scale=_const(1.0, n.shape)), self.src(n), sdt_node=n.name,
                        sdt_source=n.source)

    def mean_tokens(self, n: Node) -> str:
        c_in = self.in_shape(n)
        pool = self.put(f"{nir_name(n.name)}_pool", nir.AvgPool2d(kernel_size=np.array(c_in[1:]),
                                                                   stride=np.array(c_in[1:]),
                                                                   padding=np.array((0, 0))),
                        self.src(n), sdt_part_of=n.name)
        flat = nir.Flatten(input_type={"input": np.array((c_in[0], 1, 1))}, start_dim=0, end_dim=-1)
        return self.put(nir_name(n.name), flat, (pool,), sdt_node=n.name, sdt_source=n.source)

    def output(self, n: Node) -> str:
        return self.put("output", nir.Output(output_type=np.array(n.shape)), self.src(n), sdt_node=n.name,
                        sdt_source=n.source)


# graph op -> the _Builder method that writes it (one method per op, named after the op; ``and_`` for ``and``)
OP_HANDLERS: Mapping[str, Callable[[_Builder, Node], str]] = {
    op: getattr(_Builder, m) for op in sorted(OPS) if hasattr(_Builder, m := "and_" if op == "and" else op)}
check_handlers(__name__, OP_HANDLERS)


def to_nir(graph: Graph, *, fold_bn: bool = False, dt: float = DT) -> nir.NIRGraph:
    """The type-checked ``nir.NIRGraph`` of ``graph`` (arrays may be read-only broadcast views)."""
    b = _Builder(graph, fold_bn, float(dt))
    for n in graph:
        b.out_of[n.name] = OP_HANDLERS[n.op](b, n)
    meta = {
        "sdt_format": FORMAT,
        "sdt_version": sdt.__version__,
        "dt": float(dt),
        "T": int(graph.T),
        "input_encoding": graph.encoding,
        "input_encoding_doc": ("image [B,C,H,W] repeated T times" if graph.encoding == "repeat" else
                               "event frames [B,T,C,H,W], frame t at step t"),
        "normalization": json.dumps(graph.metadata.get("normalization")),
        "output_reduction": "mean_over_T" if graph.output.attrs.get("reduce", "mean") == "mean" else "none",
        "output_doc": "logits = mean over the T steps of the Output values (TET models: per step)",
        "threshold_convention": THRESHOLD_CONVENTION,
        "lif_discretisation": LIF_DISCRETISATION,
        "bn_encoding": "folded" if fold_bn else "exact",
        "extensions": ",".join(sorted(b.extensions)),
        "model_config": str(graph.metadata.get("model_config", "{}")),
        "hooks": json.dumps({k: list(v) for k, v in graph.hooks.items()}, sort_keys=True),
        "num_heads": int(graph.metadata.get("num_heads", 1)),
    }
    try:
        return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta, type_check=True)
    except (ValueError, AssertionError) as e:
        raise UserError(f"NIR type check of the exported graph failed: {e}") from None


# --- serialisation -------------------------------------------------------------------------------------------------
def _is_constant(a: np.ndarray) -> bool:
    if a.ndim == 0 or a.size < 2 or a.flat[1] != a.flat[0]:  # cheap rejection for weights
        return False
    if all(s == 0 for s in a.strides):  # a broadcast scalar
        return True
    return bool(np.all(a == a.flat[0]))


def _structured(a: np.ndarray) -> bool:
    """Arrays worth compressing: broadcast views (per-channel LIF parameters) and mostly-zero ones (diagonal BN and
    band convs). Dense weights are stored raw: gzip barely shrinks float weights and is slow."""
    if a.ndim and 0 in a.strides:
        return True
    sample = a.reshape(-1)[:: max(1, a.size // 4096)]
    return np.count_nonzero(sample) <= sample.size // 2


def _write_array(group: h5py.Group, key: str, a: np.ndarray) -> None:
    if _is_constant(a):
        # stored as the dataset's fill value, no data written; HDF5 reads it back as the full array
        group.create_dataset(key, shape=a.shape, dtype=a.dtype, fillvalue=a.flat[0])
    elif a.ndim and a.size > 16 and _structured(a):
        per_row = a.size // a.shape[0] * a.itemsize
        # chunks of whole channels (~64 KiB): per-channel constants then deflate to almost nothing, quickly
        rows = min(a.shape[0], max(1, (64 << 10) // per_row))
        chunks = (rows, *a.shape[1:]) if a.ndim > 1 and 0 in a.strides and per_row <= (4 << 20) else True
        group.create_dataset(key, data=np.ascontiguousarray(a), dtype=a.dtype, compression="gzip",
                             compression_opts=4, chunks=chunks)
    else:
        group.create_dataset(key, data=np.ascontiguousarray(a), dtype=a.dtype)


def _write_dict(group: h5py.Group, d: dict[str, Any]) -> None:
    """The value dispatch of ``nir.write`` (strings, arrays, nested dicts, plain values; empty metadata skipped)."""
    for k, v in d.items():
        if k == "metadata" and v == {}:
            continue
        if isinstance(v, str):
            group.create_dataset(k, data=v, dtype=h5py.string_dtype())
        elif isinstance(v, np.ndarray):
            _write_array(group, k, v)
        elif isinstance(v, dict):
            _write_dict(group.create_group(str(k)), v)
        else:
            group.create_dataset(k, data=v)


def node_dict(node: nir.NIRNode) -> dict[str, Any]:
    """What ``node.to_dict()`` returns for a leaf node, without its deep copy of every array."""
    d: dict[str, Any] = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
                         if f.name not in ("input_type", "output_type")}
    d["type"] = type(node).__name__
    if isinstance(node, nir.Input):
        d["shape"] = node.input_type["input"]
    elif isinstance(node, nir.Output):
        d["shape"] = node.output_type["output"]
    elif isinstance(node, nir.Flatten):
        d["input_type"] = node.input_type["input"]
    d["metadata"] = dict(node.metadata or {})
    return d


def _write_node(group: h5py.Group, node: nir.NIRNode) -> None:
    if isinstance(node, nir.NIRGraph):  # never call NIRGraph.to_dict: it deep-copies every array twice
        _write_dict(group, {"type": "NIRGraph"})
        nodes = group.create_group("nodes")
        for name, child in node.nodes.items():
            _write_node(nodes.create_group(name), child)
        group.create_dataset("edges", data=np.array(node.edges, dtype=object).reshape(-1, 2),
                             dtype=h5py.string_dtype())
        _write_dict(group, {"metadata": node.metadata})
    else:
        _write_dict(group, node_dict(node))


def write_nir(graph: Graph, path: str | os.PathLike, *, fold_bn: bool = False, dt: float = DT,
              engine: str = "stream") -> Path:
    """Write ``graph`` to ``path`` atomically as a NIR (HDF5) file that ``nir.read`` loads with type checking on."""
    if engine not in ENGINES:
        raise UserError(f"unknown NIR writer engine {engine!r}; choose one of {', '.join(ENGINES)}")
    ng = to_nir(graph, fold_bn=fold_bn, dt=dt)
    target = Path(path)
    with atomic_path(target) as tmp:
        if engine == "nir":
            nir.write(tmp, ng)
        else:
            # built in memory, then written with plain file I/O: HDF5 writing straight to a full disk floods stderr
            # and can crash the interpreter (segfault measured on a full tmpfs); a plain write raises ENOSPC cleanly
            with h5py.File(target.name, "w", driver="core", backing_store=False) as f:
                f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
                _write_node(f.create_group("node"), ng)
                f.flush()
                image = f.id.get_file_image()
            with open(tmp, "wb") as out:
                out.write(image)
    return target


__all__ = ["DT", "FORMAT", "EXTENSION_KEY", "to_nir", "write_nir", "nir_name", "strict_threshold", "tau_array",
           "node_dict"]
