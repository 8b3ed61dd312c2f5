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
from typing import Any, Iterator, Mapping

import numpy as np

from sdt.errors import UserError

OPS = frozenset({"input", "conv2d", "linear", "lif", "and", "sum_tokens", "broadcast", "maxpool_binary", "maxpool",
                 "avgpool", "erode", "add", "mean_tokens", "output"})
ENCODINGS = ("repeat", "frames")
N_INPUTS = {"input": 0, "and": 2, "add": 2}  # every other op takes exactly one input

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


def _pool_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def infer_shape(node: Node, in_shapes: list[Shape]) -> Shape:
    """The output shape ``node`` must have given its input shapes; raises ValueError on inconsistent nodes."""
    op, a = node.op, node.attrs
    if op == "input":
        return node.shape
    x = in_shapes[0]
    if op in ("lif", "add", "and", "erode"):
        if any(s != x for s in in_shapes):
            raise ValueError(f"inputs of different shapes {in_shapes}")
        return x
    if op == "conv2d":
        w = node.params["weight"]
        (kh, kw), (sh, sw), (ph, pw) = w.shape[2:], a["stride"], a["padding"]
        dh, dw = a.get("dilation", (1, 1))
        if len(x) != 3 or x[0] != w.shape[1] * a.get("groups", 1):
            raise ValueError(f"input {x} does not fit weight {w.shape}")
        return (w.shape[0], _pool_out(x[1], dh * (kh - 1) + 1, sh, ph), _pool_out(x[2], dw * (kw - 1) + 1, sw, pw))
    if op == "linear":
        w = node.params["weight"]
        if x != (w.shape[1],):
            raise ValueError(f"input {x} does not fit weight {w.shape}")
        return (w.shape[0],)
    if op in ("maxpool_binary", "maxpool", "avgpool"):
        (kh, kw), (sh, sw), (ph, pw) = a["kernel_size"], a["stride"], a["padding"]
        return (x[0], _pool_out(x[1], kh, sh, ph), _pool_out(x[2], kw, sw, pw))
    if op == "sum_tokens":
        return (x[0], 1, 1)
    if op == "broadcast":
        if x[1:] != (1, 1):
            raise ValueError(f"broadcast needs a (C,1,1) input, got {x}")
        return (x[0], *a["grid"])
    if op == "mean_tokens":
        return (x[0],)
    if op == "output":
        return x
    raise ValueError(f"unknown op {op!r}")


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
            want = N_INPUTS.get(n.op, 1)
            if len(n.inputs) != want:
                raise ValueError(f"node {n.name!r} ({n.op}) takes {want} input(s), got {len(n.inputs)}")
            for i in n.inputs:
                if i not in index:
                    raise ValueError(f"node {n.name!r}: input {i!r} is not an earlier node (order must be topological)")
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


__all__ = ["OPS", "ENCODINGS", "Node", "Graph", "infer_shape", "fold_bn"]
