"""The one intermediate graph between a trained SDT and every backend (NIR, ONNX, integer/Lava, energy counter).

A :class:`Graph` is a tuple of :class:`Node` in topological order. Every node has one output tensor of per-sample
shape ``node.shape`` at every time step; executors hold it as ``[T, B, *shape]``. The op set is small and closed
(:data:`OPS`); ``docs/nir_mapping.md`` lists which official layer becomes which node and NIR primitive.

Op semantics (x = the input tensor(s), all ops per time step unless stated):

==================  ===================================================================================================
``input``           the encoded model input: the image repeated T times (``encoding='repeat'``) or event frames
``conv2d``          ``y = BN(conv2d(x, weight, bias))``; BN (optional) is the per-channel affine
                    ``y = z * bn_scale + bn_shift``, evaluated as PyTorch's eval BatchNorm does (see :func:`fold_bn`)
``linear``          ``y = x @ weight.T + bias``
``lif``             multi-step LIF over T, state 0 at t=0: ``h = v + (x - v) * decay``; ``s = h >= v_threshold``;
                    ``v = h * (1 - s)`` (hard reset to ``v_reset`` = 0). Output: spikes ``s``
``and``             binary AND of two spike tensors (their product)
``sum_tokens``      ``(C,H,W) -> (C,1,1)``: sum over the token grid
``broadcast``       ``(C,1,1) -> (C,H,W)``: copy over the token grid
``maxpool_binary``  max-pool of a spike tensor (an OR over each window); zero padding
``maxpool``         max-pool of a real tensor (official SPS stage 3; a NIR extension)
``avgpool``         average pool (zero padding counted)
``erode``           DVS max filter of a spike tensor: ``mode='spatial'``: 3x3 window per channel; ``mode='heads'``:
                    the official head layout ``[h, N, d]`` window, tokens n±1 in raster order x slots j±1 in a head
``add``             sum of two real tensors (membrane-shortcut junction)
``mean_tokens``     ``(C,H,W) -> (C,)``: mean over the token grid
``output``          the logits: mean over T of the input (``reduce='mean'``) or all steps (``reduce='none'``, TET)
==================  ===================================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from sdt.errors import UserError

from .shapes import conv_out_hw, conv_window, pool_window

ENCODINGS = ("repeat", "frames")

Shape = tuple[int, ...]


def _frozen_array(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Node:
    """One operation. ``name``: the official hook name for tensors the model records (``MS_SSA_Conv0_q_lif``), else the
    official module path (``block.0.attn.q_conv``); ``source``: the official module(s) it came from."""

    name: str
    op: str
    inputs: tuple[str, ...]
    shape: Shape
    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "params", MappingProxyType({k: _frozen_array(v) for k, v in self.params.items()}))
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op}, inputs={self.inputs}, shape={self.shape})"


# ------------------------------------------------------------------------------------------------ op table

def _same(node: Node, x: list[Shape]) -> Shape:
    if any(s != x[0] for s in x):
        raise ValueError(f"inputs of different shapes {x}")
    return x[0]


def _conv_shape(node: Node, x: list[Shape]) -> Shape:
    w = node.params["weight"]
    stride, padding, dilation, groups = conv_window(node.attrs)
    if len(x[0]) != 3 or x[0][0] != w.shape[1] * groups:
        raise ValueError(f"input {x[0]} does not fit weight {w.shape}")
    return (w.shape[0], *conv_out_hw(x[0][1:], w.shape[2:], stride, padding, dilation))


def _linear_shape(node: Node, x: list[Shape]) -> Shape:
    w = node.params["weight"]
    if x[0] != (w.shape[1],):
        raise ValueError(f"input {x[0]} does not fit weight {w.shape}")
    return (w.shape[0],)


def _pool_shape(node: Node, x: list[Shape]) -> Shape:
    k, s, p = pool_window(node.attrs)
    return (x[0][0], *conv_out_hw(x[0][1:], k, s, p))


def _broadcast_shape(node: Node, x: list[Shape]) -> Shape:
    if x[0][1:] != (1, 1):
        raise ValueError(f"broadcast needs a (C,1,1) input, got {x[0]}")
    return (x[0][0], *node.attrs["grid"])


@dataclass(frozen=True)
class OpSpec:
    """What one graph op is: its input count, whether its output is binary spikes or a graded (real) tensor, the
    attributes and parameters it carries, and its shape rule ``shape(node, input_shapes) -> output shape``."""

    name: str
    inputs: int
    output: str  # "binary" | "graded"
    shape: Callable[[Node, list[Shape]], Shape]
    attrs: tuple[str, ...] = ()  # required attributes
    optional: tuple[str, ...] = ()  # attributes with defaults
    params: tuple[str, ...] = ()  # required parameter arrays
    optional_params: tuple[str, ...] = ()
    doc: str = ""

    @property
    def binary(self) -> bool:
        return self.output == "binary"


_POOL = ("kernel_size", "stride", "padding")
OP_TABLE: Mapping[str, OpSpec] = MappingProxyType({s.name: s for s in (
    OpSpec("input", 0, "graded", lambda n, x: n.shape, doc="the encoded model input"),
    OpSpec("conv2d", 1, "graded", _conv_shape, ("stride", "padding"), ("dilation", "groups", "bn"), ("weight",),
           ("bias", "bn_scale", "bn_shift"), "conv2d + optional eval BatchNorm affine"),
    OpSpec("linear", 1, "graded", _linear_shape, (), (), ("weight",), ("bias",), "x @ weight.T + bias"),
    OpSpec("lif", 1, "binary", lambda n, x: x[0], ("v_threshold", "decay"), ("v_reset", "parametric"),
           doc="multi-step LIF, hard reset"),
    OpSpec("and", 2, "binary", _same, doc="binary AND of two spike tensors"),
    OpSpec("sum_tokens", 1, "graded", lambda n, x: (x[0][0], 1, 1), doc="sum over the token grid"),
    OpSpec("broadcast", 1, "graded", _broadcast_shape, ("grid",), doc="copy over the token grid"),
    OpSpec("maxpool_binary", 1, "binary", _pool_shape, _POOL, doc="max-pool (OR) of spikes"),
    OpSpec("maxpool", 1, "graded", _pool_shape, _POOL, doc="max-pool of a real tensor (NIR extension)"),
    OpSpec("avgpool", 1, "graded", _pool_shape, _POOL, doc="average pool, zero padding counted"),
    OpSpec("erode", 1, "binary", _same, ("mode",), ("num_heads",), doc="DVS max filter of spikes"),
    OpSpec("add", 2, "graded", _same, doc="sum of two real tensors"),
    OpSpec("mean_tokens", 1, "graded", lambda n, x: (x[0][0],), doc="mean over the token grid"),
    OpSpec("output", 1, "graded", lambda n, x: x[0], (), ("reduce",), doc="logits: mean over T (default) or every step"),
)})
OPS = frozenset(OP_TABLE)
BINARY_OPS = frozenset(n for n, s in OP_TABLE.items() if s.binary)  # ops whose output is 0/1 spikes


def op_spec(op: str) -> OpSpec:
    try:
        return OP_TABLE[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}") from None


def check_handlers(backend: str, handlers: Mapping[str, Any] | Iterable[str],
                   unsupported: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` unless ``handlers`` (op -> handler) and ``unsupported`` (op -> reason) together cover
    exactly the ops of :data:`OP_TABLE`: a backend that misses an op fails here, not on the first model using it."""
    have = set(handlers) | set(unsupported or {})
    missing, unknown = sorted(OPS - have), sorted(have - OPS)
    if missing or unknown:
        raise ValueError(f"{backend}: no handler for op(s) {missing}; handlers for unknown op(s) {unknown}")


def infer_shape(node: Node, in_shapes: list[Shape]) -> Shape:
    """The output shape ``node`` must have given its input shapes (the op table's rule); raises ValueError on
    inconsistent nodes."""
    return op_spec(node.op).shape(node, in_shapes)


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes in topological order, the number of time steps ``T``, the input ``encoding`` and free ``metadata``.

    ``metadata`` keys written by :func:`export.from_model.build_graph`: ``model_config``, ``hooks`` (official hook name
    -> ``(node name, layout)``), ``num_heads``, ``normalization``, ``threshold_rule``.
    """

    nodes: tuple[Node, ...]
    T: int
    encoding: str = "repeat"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        index: dict[str, Node] = {}
        consumers: dict[str, list[Node]] = {}
        for n in self.nodes:
            if n.op not in OPS:
                raise ValueError(f"node {n.name!r}: unknown op {n.op!r}")
            if n.name in index:
                raise ValueError(f"duplicate node name {n.name!r}")
            want = OP_TABLE[n.op].inputs
            if len(n.inputs) != want:
                raise ValueError(f"node {n.name!r} ({n.op}) takes {want} input(s), got {len(n.inputs)}")
            for i in n.inputs:
                if i not in index:
                    raise ValueError(f"node {n.name!r}: input {i!r} is not an earlier node (order must be topological)")
            spec = OP_TABLE[n.op]
            lacking = [k for k in spec.attrs if k not in n.attrs] + [k for k in spec.params if k not in n.params]
            if lacking:
                raise ValueError(f"node {n.name!r} ({n.op}) lacks {', '.join(lacking)}")
            try:
                shape = infer_shape(n, [index[i].shape for i in n.inputs])
            except (ValueError, KeyError) as e:
                raise ValueError(f"node {n.name!r} ({n.op}): {e}") from None
            if shape != n.shape:
                raise ValueError(f"node {n.name!r} ({n.op}): shape {n.shape}, expected {shape}")
            index[n.name] = n
            consumers[n.name] = []
            for i in n.inputs:
                consumers[i].append(n)
        ops = [n.op for n in self.nodes]
        if ops.count("input") != 1 or ops.count("output") != 1 or self.nodes[-1].op != "output":
            raise ValueError("a graph needs exactly one 'input' node and one 'output' node, the output last")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if int(self.T) < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_consumers", {k: tuple(v) for k, v in consumers.items()})

    def node(self, name: str) -> Node:
        try:
            return self._index[name]  # type: ignore[attr-defined]
        except KeyError:
            raise UserError(f"graph has no node {name!r}") from None

    def consumers(self, name: str) -> tuple[Node, ...]:
        """The nodes that read ``name``'s output, in graph order."""
        self.node(name)
        return self._consumers[name]  # type: ignore[attr-defined]

    def inputs_of(self, name: str) -> tuple[Node, ...]:
        return tuple(self.node(i) for i in self.node(name).inputs)

    @property
    def input(self) -> Node:
        return next(n for n in self.nodes if n.op == "input")

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._index  # type: ignore[attr-defined]

    @property
    def hooks(self) -> Mapping[str, tuple[str, str]]:
        """Official hook name -> (node name, layout of the model's tensor: 'plain' or 'heads')."""
        return self.metadata.get("hooks", {})


def fold_bn(node: Node) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm folded into a ``conv2d``/``linear`` node: ``(weight, bias)`` in float32, computed in float64.

    Use it where one affine layer is wanted (ONNX, quantisation). Folding changes float32 rounding; the graph executor
    keeps conv and BN apart so that it reproduces the model bit for bit.
    """
    if node.op not in ("conv2d", "linear"):
        raise ValueError(f"fold_bn needs a conv2d/linear node, got {node.op!r} ({node.name})")
    w = node.params["weight"].astype(np.float64)
    b = node.params["bias"].astype(np.float64) if "bias" in node.params else np.zeros(w.shape[0])
    if "bn_scale" in node.params:
        s = node.params["bn_scale"].astype(np.float64)
        w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
        b = b * s + node.params["bn_shift"].astype(np.float64)
    return w.astype(np.float32), b.astype(np.float32)


__all__ = ["OPS", "OP_TABLE", "OpSpec", "BINARY_OPS", "ENCODINGS", "Node", "Graph", "infer_shape", "fold_bn", "op_spec",
           "check_handlers"]
