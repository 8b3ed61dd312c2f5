"""ONNX writer: a map over the :class:`~export.graph.Graph` (never over the PyTorch model) to an ONNX file.

    from export.onnx_writer import write_onnx, validate_onnx
    info = write_onnx(graph, "model.onnx", spikes=True)   # T unrolled, dynamic batch, opset 17, checker-valid
    report = validate_onnx("model.onnx", model, n=100)    # onnxruntime vs the PyTorch model
    print(report.line()); assert report.passed

Every graph node becomes a small torch module (:class:`OnnxGraphModule`) that the legacy TorchScript exporter
(``torch.onnx.export(dynamo=False)``) traces once: on a tiny SDT it gave a checker-valid file of the weights' size in
~1 s, where the dynamo exporter took ~25 s for a 2.4x larger file. Inside the network tensors are ``[T*B, ...]`` (time
folded into the batch, t-major, as the model folds it): conv, pooling and BN run once per layer, each LIF is unrolled
over its T steps. T is static, the batch axis dynamic (the file's inputs and outputs give every other axis its
size). The exporter is run without weights (``export_params=False``); :func:`write_onnx` streams them from the
graph's arrays into the file, so the weights are held once in memory, not five times (ImageNet 8-768: 1.8 GB peak RSS
instead of 2.75 GB, of which 0.74 GB is importing torch).

File layout:

- input ``input``: ``[B, C, H, W]`` for ``encoding='repeat'`` (repeated T times inside), ``[B, T, C, H, W]`` event
  frames for ``encoding='frames'``;
- output ``logits``: ``[B, classes]`` (mean over T), or ``[T, B, classes]`` for TET graphs, as the model returns;
- with ``spikes``: one extra output per spike node, named after the graph node, ``[T, B, *node.shape]``;
- every graph node's value is named ``<node>.tb`` (layout ``[T*B, *node.shape]``), parameters ``<node>.<param>``
  (``weight``, ``bias``, ``bn_scale``, ``bn_shift``, ``decay``, ``v_threshold``); metadata ``sdt.*`` keys record T,
  the encoding, the input shape, the model config, the value names and the spike nodes.

BatchNorm stays a per-channel ``Mul``/``Add`` after its conv with the graph's exact ``bn_scale``/``bn_shift``
(``fold_bn=True`` folds it into the conv with :func:`export.graph.fold_bn`). Either way onnxruntime's default graph
optimisations fuse it into the conv at load time, and its conv kernels sum in a different order than PyTorch's: logits
agree to ~1e-7, and a spike can flip where a membrane lands within float rounding of its threshold. The validation
(:func:`validate_onnx`) tells such rounding ties apart from real disagreements.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from sdt.atomic import atomic_path
from sdt.errors import UserError

from .graph import Graph, Node, check_handlers, fold_bn as _fold_bn
from .validate import ATOL, Validation, spike_nodes, validate_against_model

OPSET = 17
FORMAT = "sdt-onnx/1"
INPUT_NAME, LOGITS_NAME, VALUE_SUFFIX = "input", "logits", ".tb"
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for a single-file model
def _tensor(a: np.ndarray | float) -> torch.Tensor:
    """A float32 tensor sharing memory with ``a`` where possible (graph arrays are read-only; the exporter only reads
    them), so the module adds no second copy of the weights."""
    arr = np.asarray(a, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable": it is never written
        return torch.from_numpy(arr) if arr.ndim else torch.tensor(float(arr), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# The traced module
# ---------------------------------------------------------------------------------------------------------------------
class _NodeModule(nn.Module):
    """One graph node on ``[T*B, *shape]`` tensors; its own module so the exporter scopes its ops by the node."""

    def __init__(self, node: Node, T: int, fold_bn: bool, grid_encoding: tuple[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.node, self.T = node, T
        self.encoding, self.in_shape = grid_encoding
        p = node.params
        if node.op == "conv2d" and fold_bn:
            w, b = _fold_bn(node)
            self.register_buffer("weight", _tensor(w))
            self.register_buffer("bias", _tensor(b))
        elif node.op in ("conv2d", "linear"):
            for key in ("weight", "bias"):
                if key in p:
                    self.register_buffer(key, _tensor(p[key]))
            for key in ("bn_scale", "bn_shift"):  # stored [C,1,1]: a reshape in forward would be folded into an
                if key in p:                      # anonymous initializer
                    self.register_buffer(key, _tensor(p[key]).reshape(-1, 1, 1))
        elif node.op == "lif":
            # buffers, not Python floats: shared initializers named after the node instead of a Constant per step
            self.register_buffer("decay", _tensor(node.attrs["decay"]))
            self.register_buffer("v_threshold", _tensor(node.attrs["v_threshold"]))
            if float(node.attrs.get("v_reset", 0.0)) != 0.0:
                raise UserError(f"{node.name}: only hard reset to 0 is exported to ONNX")

    def _buf(self, key: str) -> torch.Tensor | None:
        return self._buffers.get(key)

    def _lif(self, x: torch.Tensor) -> torch.Tensor:
        decay, thr = self._buf("decay"), self._buf("v_threshold")
        out, v = [], None
        for xt in x.reshape(self.T, -1, *self.node.shape).unbind(0):
            # state 0 at t=0: v + (x - v) * decay is exactly x * decay there, so the no-op Sub/Add are skipped
            h = xt * decay if v is None else v + (xt - v) * decay
            s = (h >= thr).to(torch.float32)
            v = h * (1.0 - s)  # hard reset to 0, the model's own op
            out.append(s)
        return torch.cat(out, 0)

    def _erode_heads(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.node.shape
        nh = int(self.node.attrs["num_heads"])
        # [TB,C,H,W] -> [TB,h,N,d] (channel c = head*d + slot, tokens in raster order); 3x3 max over (N, d); back
        y = x.reshape(-1, nh, c // nh, h * w).transpose(2, 3)
        return F.max_pool2d(y, 3, 1, 1).transpose(2, 3).reshape(-1, c, h, w)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoding == "repeat":
            return torch.cat([x] * self.T, 0)  # frame t of sample b is row t*B + b
        return x.transpose(0, 1).reshape(-1, *self.in_shape)

    def _conv2d(self, x: torch.Tensor) -> torch.Tensor:
        a = self.node.attrs
        y = F.conv2d(x, self._buf("weight"), self._buf("bias"), a["stride"], a["padding"], a.get("dilation", (1, 1)),
                     a.get("groups", 1))
        if self._buf("bn_scale") is not None:
            y = y * self._buf("bn_scale") + self._buf("bn_shift")
        return y

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._buf("weight"), self._buf("bias"))

    def _maxpool(self, x: torch.Tensor) -> torch.Tensor:
        a = self.node.attrs
        return F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"])

    def _avgpool(self, x: torch.Tensor) -> torch.Tensor:
        a = self.node.attrs
        return F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"])

    def _erode(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 1, 1) if self.node.attrs["mode"] == "spatial" else self._erode_heads(x)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return OP_HANDLERS[self.node.op](self, *xs)


# graph op -> how its node module computes it on ``[T*B, *shape]`` tensors
OP_HANDLERS: Mapping[str, Callable[..., torch.Tensor]] = {
    "input": _NodeModule._input,
    "conv2d": _NodeModule._conv2d,
    "linear": _NodeModule._linear,
    "lif": lambda m, x: m._lif(x),  # looked up at call time (tests replace _lif)
    "and": lambda m, p, q: p * q,
    "add": lambda m, p, q: p + q,
    "sum_tokens": lambda m, x: x.sum(dim=(2, 3), keepdim=True),
    "broadcast": lambda m, x: x.expand(-1, -1, *m.node.attrs["grid"]),
    "maxpool_binary": _NodeModule._maxpool,
    "maxpool": _NodeModule._maxpool,
    "avgpool": _NodeModule._avgpool,
    "erode": _NodeModule._erode,
    "mean_tokens": lambda m, x: x.flatten(2).mean(2),
    "output": lambda m, x: x,
}
check_handlers(__name__, OP_HANDLERS)


def _scope(name: str) -> str:
    return name.replace(".", "__")  # module names cannot contain dots


class OnnxGraphModule(nn.Module):
    """The graph as a torch module for ``torch.onnx.export``: ``forward(x) -> (logits, *spike tensors)``."""

    def __init__(self, graph: Graph, *, fold_bn: bool = False, spikes: Sequence[str] = ()) -> None:
        super().__init__()
        self.graph, self.spikes, self.T = graph, tuple(spikes), int(graph.T)
        self.nodes = nn.ModuleDict({_scope(n.name): _NodeModule(n, self.T, fold_bn, (graph.encoding, graph.input.shape))
                                    for n in graph})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keep = set(self.spikes) | {self.graph.output.name}
        users = {n.name: len(self.graph.consumers(n.name)) for n in self.graph}
        values: dict[str, torch.Tensor] = {}
        for node in self.graph:
            args = (x,) if node.op == "input" else tuple(values[i] for i in node.inputs)
            values[node.name] = self.nodes[_scope(node.name)](*args)
            for i in node.inputs:  # drop activations after their last reader: tracing ImageNet models runs them
                users[i] -= 1
                if users[i] == 0 and i not in keep:
                    del values[i]
        out = self.graph.output
        logits = values[out.name].reshape(self.T, -1, *out.shape)
        if out.attrs.get("reduce", "mean") == "mean":
            logits = logits.mean(0)
        return (logits, *(values[n].reshape(self.T, -1, *self.graph.node(n).shape) for n in self.spikes))


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxInfo:
    """What :func:`write_onnx` wrote."""

    path: Path
    bytes: int
    opset: int
    ops: int  # ONNX nodes, Constant nodes excluded
    outputs: tuple[str, ...]
    fold_bn: bool
    seconds: float


def _select_spikes(graph: Graph, spikes: bool | Collection[str]) -> tuple[str, ...]:
    allowed = spike_nodes(graph)
    if spikes is True:
        return allowed
    if not spikes:
        return ()
    wanted = set(spikes)
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise UserError(f"not spike nodes of this graph: {', '.join(unknown[:5])}; choose among "
                        f"{', '.join(allowed[:5])}, ...")
    return tuple(n for n in allowed if n in wanted)


def _name_values(proto: onnx.ModelProto, module: OnnxGraphModule) -> tuple[dict[str, str], dict[str, str]]:
    """Give weights and each node's value stable graph names. Returns (node name -> value name, old -> new names)."""
    g = proto.graph
    renames: dict[str, str] = {}
    for node in module.graph:
        for key in module.nodes[_scope(node.name)]._buffers:
            renames[f"nodes.{_scope(node.name)}.{key}"] = f"{node.name}.{key}"
    # a node's value is the output of the last ONNX op traced in its scope ('/<scope>/Op_k'); graph order is the
    # trace order, so that op ends the node's computation
    last: dict[str, str] = {}
    for op in g.node:
        parts = op.name.split("/")
        if len(parts) >= 3 and op.op_type != "Constant":
            last[parts[1]] = op.output[0]
    outputs = {o.name for o in g.output}
    values: dict[str, str] = {}
    for node in module.graph:
        v = last.get(_scope(node.name))
        if v is None:  # an identity ('output'): no op of its own
            continue
        if v in outputs or v == INPUT_NAME:
            values[node.name] = v
            continue
        renames[v] = node.name + VALUE_SUFFIX
        values[node.name] = node.name + VALUE_SUFFIX
    for op in g.node:  # one pass over all edges: renaming value by value would be quadratic on large graphs
        for seq in (op.input, op.output):
            for i, v in enumerate(seq):
                if v in renames:
                    seq[i] = renames[v]
    return values, renames


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The legacy exporter warns that it is deprecated and that traced shapes are constants (intended: T is static)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


Weights = list[tuple[str, np.ndarray]]


def _static_dims(proto: onnx.ModelProto, graph: Graph, spikes: Sequence[str]) -> None:
    """Give the graph inputs and outputs their concrete sizes on every axis but the batch one.

    The exporter names every axis it cannot fold to a constant (``logits: [batch, 'ReduceMeanlogits_dim_1']``), so
    the file would not say how many classes or steps it has. The sizes are the graph's own: those the module reshapes
    its outputs to. A size the exporter did fix must agree (else the module and the graph disagree: a writer bug)."""
    T, out = int(graph.T), graph.output
    tet = out.attrs.get("reduce", "mean") != "mean"
    shapes: dict[str, tuple[int | None, ...]] = {  # None: the batch axis
        INPUT_NAME: (None, *((T,) if graph.encoding == "frames" else ()), *graph.input.shape),
        LOGITS_NAME: (*((T, None) if tet else (None,)), *out.shape),
        **{n: (T, None, *graph.node(n).shape) for n in spikes},
    }
    for vi in (*proto.graph.input, *proto.graph.output):
        dims, want = vi.type.tensor_type.shape.dim, shapes[vi.name]
        if len(dims) != len(want):
            raise RuntimeError(f"ONNX value {vi.name!r} has rank {len(dims)}, the graph says {len(want)}")
        for d, size in zip(dims, want):
            if size is None:
                d.dim_param = "batch"
            elif d.HasField("dim_value") and d.dim_value != size:
                raise RuntimeError(f"ONNX value {vi.name!r} has size {d.dim_value} where the graph says {size}")
            else:
                d.dim_value = size  # replaces the exporter's symbolic name (dim_value / dim_param are a oneof)


def _build(graph: Graph, spikes: bool | Collection[str], fold_bn: bool, opset: int
           ) -> tuple[onnx.ModelProto, Weights]:
    """The model without its weights (initializers) and the weights, in file order, under their final names."""
    if opset < 17:
        raise UserError(f"opset {opset} is too old; the writer needs opset >= 17")
    chosen = _select_spikes(graph, spikes)
    module = OnnxGraphModule(graph, fold_bn=fold_bn, spikes=chosen).eval()
    tet = graph.output.attrs.get("reduce", "mean") != "mean"
    example = torch.zeros(1, *((graph.T,) if graph.encoding == "frames" else ()), *graph.input.shape)
    names = [LOGITS_NAME, *chosen]
    axes = {INPUT_NAME: {0: "batch"}, LOGITS_NAME: {1 if tet else 0: "batch"}, **{n: {1: "batch"} for n in chosen}}
    buf = io.BytesIO()
    with _quiet_export(), torch.no_grad():
        # export_params=False: the exporter's own weight copies (its proto, a string, bytes) cost ~4x the weights in
        # memory; it leaves every weight a graph input instead, turned into an initializer from the module's buffer
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=axes, do_constant_folding=True, export_params=False)
    proto = onnx.ModelProto()
    proto.ParseFromString(buf.getbuffer())
    del buf
    buffers = dict(module.named_buffers())
    raw: Weights = []
    for vi in [vi for vi in proto.graph.input if vi.name != INPUT_NAME]:
        if vi.name not in buffers:
            raise RuntimeError(f"the ONNX export left an unknown graph input {vi.name!r}")
        proto.graph.input.remove(vi)
        raw.append((vi.name, np.ascontiguousarray(buffers[vi.name].numpy())))
    _static_dims(proto, graph, chosen)
    values, renames = _name_values(proto, module)
    weights = [(renames.get(name, name), arr) for name, arr in raw]
    del module, buffers
    meta = {
        "sdt.format": FORMAT,
        "sdt.T": str(graph.T),
        "sdt.encoding": graph.encoding,
        "sdt.input_shape": json.dumps(list(graph.input.shape)),
        "sdt.output_reduce": str(graph.output.attrs.get("reduce", "mean")),
        "sdt.fold_bn": json.dumps(bool(fold_bn)),
        "sdt.spike_nodes": json.dumps(list(spike_nodes(graph))),
        "sdt.spike_outputs": json.dumps(list(chosen)),
        "sdt.values": json.dumps(values),
        "sdt.model_config": str(graph.metadata.get("model_config", "")),
        "sdt.normalization": json.dumps(graph.metadata.get("normalization")),
    }
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name, proto.producer_version = "sdt-export", _version()
    proto.doc_string = (f"Spike-Driven Transformer, T={graph.T} unrolled, encoding={graph.encoding}. Values "
                        f"'<node>{VALUE_SUFFIX}' are [T*B, ...] (t-major); spike outputs are [T, B, ...].")
    size = proto.ByteSize() + sum(a.nbytes for _, a in weights)
    if size > MAX_PROTO_BYTES:
        raise UserError(f"the ONNX model would be {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for a single "
                        "file")
    return proto, weights


def _version() -> str:
    try:
        import sdt

        return str(sdt.__version__)
    except Exception:  # noqa: BLE001 - only a label
        return "0"


def _check(model: onnx.ModelProto | str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a writer bug, not bad input: keep the detail
        raise RuntimeError(f"the exported ONNX model fails onnx.checker: {str(e).splitlines()[0]}") from None


def to_onnx(graph: Graph, *, spikes: bool | Collection[str] = False, fold_bn: bool = False,
            opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX model of ``graph`` in memory (checked with ``onnx.checker``, ``full_check``); see the module
    docstring. :func:`write_onnx` writes the same bytes without holding the model in memory."""
    proto, weights = _build(graph, spikes, fold_bn, opset)
    for name, arr in weights:
        proto.graph.initializer.append(numpy_helper.from_array(arr, name))
    _check(proto)
    return proto


# Protobuf wire format, to stream the weights into the file (see _stream): a length-delimited field is the varint
# (number << 3 | 2), the varint byte length, then the bytes.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _header(number: int, length: int) -> bytes:
    return _varint(number << 3 | 2) + _varint(length)


_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def _split(msg: Any, below: int) -> tuple[bytes, bytes]:
    """``msg`` serialized as (fields numbered < below, fields numbered > below), both in canonical order."""
    head, tail = type(msg)(), type(msg)()
    head.CopyFrom(msg)
    tail.CopyFrom(msg)
    for fd, _ in msg.ListFields():
        (tail if fd.number < below else head).ClearField(fd.name)
    return head.SerializeToString(deterministic=True), tail.SerializeToString(deterministic=True)


def _stream(f: Any, proto: onnx.ModelProto, weights: Weights) -> int:
    """Write ``proto`` with ``weights`` appended as raw-data initializers, byte for byte what
    ``SerializeToString`` of the full model gives (fields in number order), without building it: each weight goes from
    its array to the file. Returns the bytes written."""
    tensors = []
    for name, arr in weights:
        meta = onnx.TensorProto(name=name, dims=arr.shape, data_type=onnx.TensorProto.FLOAT)
        head = meta.SerializeToString(deterministic=True) + _header(_RAW_DATA, arr.nbytes)
        tensors.append((head, arr))
    graph = proto.graph
    g_head, g_tail = _split(graph, _INITIALIZER)
    g_len = len(g_head) + len(g_tail) + sum(len(_header(_INITIALIZER, len(h) + a.nbytes)) + len(h) + a.nbytes
                                            for h, a in tensors)
    rest = onnx.ModelProto()
    rest.CopyFrom(proto)
    rest.ClearField("graph")
    m_head, m_tail = _split(rest, _GRAPH)
    n = 0
    for part in (m_head, _header(_GRAPH, g_len), g_head):
        n += f.write(part)
    for head, arr in tensors:
        n += f.write(_header(_INITIALIZER, len(head) + arr.nbytes)) + f.write(head)
        n += f.write(memoryview(arr.astype("<f4", copy=False)).cast("B"))  # ONNX raw data is little-endian
    for part in (g_tail, m_tail):
        n += f.write(part)
    return n


def write_onnx(graph: Graph, path: str | os.PathLike, *, spikes: bool | Collection[str] = False,
               fold_bn: bool = False, opset: int = OPSET) -> OnnxInfo:
    """Write ``graph`` to ``path`` atomically as ONNX, checked by ``onnx.checker`` (``full_check``) before it is put
    in place; the same graph always gives the same bytes (those of ``to_onnx(graph).SerializeToString()``)."""
    t0 = time.perf_counter()
    proto, weights = _build(graph, spikes, fold_bn, opset)
    ops = sum(1 for n in proto.graph.node if n.op_type != "Constant")
    outputs = tuple(o.name for o in proto.graph.output)
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            size = _stream(f, proto, weights)
        del proto, weights
        _check(str(tmp))
    return OnnxInfo(target, size, opset, ops, outputs, bool(fold_bn), time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------------------
# Running and validating
# ---------------------------------------------------------------------------------------------------------------------
def _meta(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


class OnnxProgram:
    """An onnxruntime CPU session on a file written by :func:`write_onnx`; ``run(x, record)`` mirrors the graph
    executor: ``(logits, {node: [T, B, *shape]})`` for the recorded nodes (any named graph value, spike or not)."""

    def __init__(self, path: str | os.PathLike, record: Collection[str] = (), optimize: bool = True) -> None:
        import onnxruntime as ort

        p = Path(path)
        if not p.is_file():
            raise UserError(f"ONNX file not found: {p}")
        try:
            proto = onnx.load(str(p))
        except Exception as e:  # noqa: BLE001 - protobuf raises several types on a damaged file
            raise UserError(f"cannot read ONNX file {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None
        meta = _meta(proto)
        if meta.get("sdt.format") != FORMAT:
            raise UserError(f"{p} was not written by sdt-export (no '{FORMAT}' metadata)")
        self.T = int(meta["sdt.T"])
        self.encoding = meta["sdt.encoding"]
        self.input_shape = tuple(json.loads(meta["sdt.input_shape"]))
        self.values: dict[str, str] = json.loads(meta["sdt.values"])
        self.spike_outputs = tuple(json.loads(meta["sdt.spike_outputs"]))
        missing = sorted(set(record) - set(self.values))
        if missing:
            raise UserError(f"{p} has no named value for node(s) {', '.join(missing[:5])}")
        self.record = tuple(record)
        present = {o.name for o in proto.graph.output}
        for n in self.record:  # intermediate values become extra outputs of this session only
            if self.values[n] not in present:
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(self.values[n]))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self.session.get_outputs()]

    def run(self, x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        res = dict(zip(self._outputs, self.session.run(None, {INPUT_NAME: arr})))
        rec = {}
        for n in self.record:
            v = torch.from_numpy(res[self.values[n]])
            rec[n] = v.reshape(self.T, -1, *v.shape[1:])  # internal values are [T*B, ...], t-major
        return torch.from_numpy(res[LOGITS_NAME]), rec


def validate_onnx(path: str | os.PathLike, model: nn.Module, n: int = 100, *, graph: Graph | None = None,
                  seed: int = 0, batch_size: int | None = None, atol: float = ATOL, strict: bool = False,
                  optimize: bool = True) -> Validation:
    """Check an ONNX file from :func:`write_onnx` in onnxruntime (CPU, default optimisations unless ``optimize`` is
    False) against ``model``: logits within ``atol`` with identical argmax, every spike node identical (all of them,
    exported as outputs or not), rounding ties reported; see :class:`Validation`."""
    from .from_model import build_graph

    graph = graph or build_graph(model)
    nodes = spike_nodes(graph)
    program = OnnxProgram(path, record=nodes, optimize=optimize)
    if program.T != graph.T or program.input_shape != tuple(graph.input.shape) or program.encoding != graph.encoding:
        raise UserError(f"{path} does not match the model (T, input shape or encoding differ)")
    return validate_against_model(program.run, graph, model, n, label="onnxruntime", nodes=nodes, seed=seed,
                                  batch_size=batch_size, atol=atol, strict=strict)


__all__ = ["OPSET", "FORMAT", "OnnxGraphModule", "OnnxInfo", "to_onnx", "write_onnx", "OnnxProgram", "validate_onnx"]
