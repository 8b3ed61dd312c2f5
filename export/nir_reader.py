"""Load and run NIR files: ``read_nir(path)`` -> :class:`NIRProgram`; ``run_nir(path_or_graph, x)``.

The program executes the ``nir.NIRGraph`` itself (edges summed in file order, left to right), batched over
``[T, B, ...]``, node after node over the whole sequence (valid for feed-forward graphs, as ours are). It reproduces
the PyTorch model bit for bit on files written by :mod:`export.nir_writer`: each primitive is evaluated with the
kernel the model uses for the same arithmetic (a diagonal 1x1 ``Conv2d`` and a LIF's ``r``/``v_leak`` through the
BatchNorm kernel, a full-grid ``AvgPool2d`` as the model's token mean). Supported: ``Input``, ``Output``,
``Conv2d``, ``Affine``, ``Linear``, ``Scale``, ``LIF``, ``Threshold``, ``SumPool2d``, ``AvgPool2d``, ``Flatten``
and our ``maxpool2d`` extension (a nested ``NIRGraph``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import nir
import numpy as np
import torch
import torch.nn.functional as F

from sdt.errors import UserError

from . import kernels as K
from .graph import Graph
from .nir_writer import DT, EXTENSION_KEY, to_nir
from .run_graph import encode_input

Tensors = dict[str, torch.Tensor]
Fn = Callable[[torch.Tensor], torch.Tensor]


def _ints(v: Any, n: int = 2) -> tuple[int, ...]:
    a = np.asarray(v).astype(int).reshape(-1)
    return tuple(int(i) for i in (np.repeat(a, n) if a.size == 1 else a))


def _uniform(a: np.ndarray) -> bool:
    return a.size > 0 and bool(np.all(a == a.flat[0]))


def _per_channel(a: np.ndarray) -> np.ndarray | None:
    """The per-channel values of ``a`` (channel = axis 0) if it is constant within each channel, else None."""
    flat = a.reshape(a.shape[0], -1) if a.ndim else a.reshape(1, 1)
    return flat[:, 0].copy() if np.all(flat == flat[:, :1]) else None


def _tensor(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _conv2d(node: nir.Conv2d) -> Fn:
    w = np.asarray(node.weight, np.float32)
    b = None if node.bias is None or not np.any(node.bias) else _tensor(node.bias)
    stride, dilation, groups = _ints(node.stride), _ints(node.dilation), int(node.groups)
    padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
    c_out, c_in = w.shape[:2]
    if (w.shape[2:] == (1, 1) and c_out == c_in and groups == 1 and stride == (1, 1) and padding == (0, 0)
            and not np.any(w[:, :, 0, 0] - np.diag(np.diag(w[:, :, 0, 0])))):
        # a diagonal 1x1 conv is a per-channel affine (our BatchNorm); evaluate it with the BN kernel's rounding
        scale = _tensor(np.diag(w[:, :, 0, 0]))
        shift = b if b is not None else torch.zeros(c_out)
        return lambda x: K.per_frame(lambda z: K.channel_affine(z, scale, shift), x)
    wt = torch.from_numpy(w.copy())
    return lambda x: K.per_frame(lambda z: F.conv2d(z, wt, b, stride, padding, dilation, groups), x)


def _lif(node: nir.LIF, dt: float) -> tuple[Fn, Fn]:
    """(input current from the summed input, spikes from the current) of a NIR LIF under forward Euler."""
    decay = (dt / np.asarray(node.tau, np.float64)).astype(np.float32)  # exact inverse of the writer's tau
    k = _tensor(decay.flat[0]) if _uniform(decay) else _tensor(decay)
    thr = np.asarray(node.v_threshold, np.float32)
    theta = _tensor(thr.flat[0]) if _uniform(thr) else _tensor(thr)
    reset = np.asarray(node.v_reset, np.float32)
    v_reset: float | torch.Tensor = float(reset.flat[0]) if _uniform(reset) else _tensor(reset)
    r, v_leak = np.asarray(node.r, np.float32), np.asarray(node.v_leak, np.float32)
    if _uniform(r) and r.flat[0] == 1 and _uniform(v_leak) and v_leak.flat[0] == 0:
        current: Fn = lambda x: x  # noqa: E731
    else:
        rc, lc = _per_channel(r), _per_channel(v_leak)
        if rc is not None and lc is not None:  # BatchNorm carried by the neuron: the BN kernel's rounding
            rs, ls = _tensor(rc), _tensor(lc)
            current = lambda x: K.per_frame(lambda z: K.channel_affine(z, rs, ls), x)  # noqa: E731
        else:
            rt, lt = _tensor(r), _tensor(v_leak)
            current = lambda x: torch.addcmul(lt, x, rt)  # noqa: E731
    return current, lambda i: K.lif(i, k, theta, strict=True, v_reset=v_reset)


def _sum_pool(node: nir.SumPool2d) -> Fn:
    k, s, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1) and s == (1, 1) and p == (k[0] - 1, k[1] - 1):
            return x.expand(*x.shape[:-2], *k).contiguous()  # broadcast: every window holds the one value once
        return K.per_frame(lambda z: K.sum_pool(z, k, s, p), x)

    return run


def _avg_pool(node: nir.AvgPool2d) -> Fn:
    k, s, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)

    def run(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == k == s and p == (0, 0):  # the token mean, as the model computes it
            return x.flatten(-2).mean(-1)[..., None, None]
        return K.per_frame(lambda z: F.avg_pool2d(z, k, s, p, count_include_pad=True), x)

    return run


def _flatten(node: nir.Flatten) -> Fn:
    shape = tuple(int(v) for v in np.asarray(node.input_type["input"]))
    start, end = int(node.start_dim) % len(shape), int(node.end_dim) % len(shape)
    out = shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:]
    return lambda x: x.reshape(*x.shape[:2], *out)


def _extension(node: nir.NIRGraph) -> Fn:
    kind = str(node.metadata.get(EXTENSION_KEY))
    if kind != "maxpool2d":
        raise UserError(f"unknown sdt extension {kind!r} in the NIR file; this reader knows 'maxpool2d'")
    k, s, p = (_ints(node.metadata[key]) for key in ("kernel_size", "stride", "padding"))
    return lambda x: K.per_frame(lambda z: F.max_pool2d(z, k, s, p), x)


@dataclass
class _Step:
    name: str
    inputs: list[str]
    fn: Fn
    record_as: str
    current: Fn | None = None   # LIF only: input current (BN in r / v_leak)
    current_as: str = ""        # record name of that current (the conv node whose BN the LIF carries)


def _nested(name: str, node: nir.NIRGraph) -> Fn:
    if EXTENSION_KEY in (node.metadata or {}):
        return _extension(node)
    raise UserError(f"nested NIR graph {name!r} is not an sdt extension; this reader runs flat graphs")


def _affine(name: str, node: nir.Affine | nir.Linear) -> Fn:
    w = _tensor(node.weight)
    b = _tensor(node.bias) if isinstance(node, nir.Affine) else None
    return lambda x: F.linear(x, w, b)


def _scale(name: str, node: nir.Scale) -> Fn:
    s = np.asarray(node.scale, np.float32)
    if _uniform(s) and s.flat[0] == 1:
        return lambda x: x  # a summing junction
    st = _tensor(s)
    return lambda x: x * st


def _threshold(name: str, node: nir.Threshold) -> Fn:
    thr = np.asarray(node.threshold, np.float32)
    theta = _tensor(thr.flat[0]) if _uniform(thr) else _tensor(thr)
    return lambda x: (x > theta).to(torch.float32)


# NIR primitive -> handler(name, node) -> the step's function; one entry per primitive this reader runs
NIR_HANDLERS: Mapping[type, Callable[[str, Any], Fn]] = {
    nir.NIRGraph: _nested,
    nir.Conv2d: lambda name, node: _conv2d(node),
    nir.Affine: _affine,
    nir.Linear: _affine,
    nir.Scale: _scale,
    nir.Threshold: _threshold,
    nir.SumPool2d: lambda name, node: _sum_pool(node),
    nir.AvgPool2d: lambda name, node: _avg_pool(node),
    nir.Flatten: lambda name, node: _flatten(node),
    nir.LIF: lambda name, node: (lambda x: x),  # replaced by _lif in _compile (the neuron keeps state)
    nir.Output: lambda name, node: (lambda x: x),
}


class NIRProgram:
    """An executable NIR graph. ``run(x)`` -> ``(logits, tensors)``; see :meth:`run`."""

    def __init__(self, graph: nir.NIRGraph, T: int | None = None) -> None:
        self.graph = graph
        meta = graph.metadata or {}
        self.T = int(T if T is not None else meta.get("T", 0))
        if self.T < 1:
            raise UserError("the NIR file does not say how many steps to run (metadata 'T'); pass T explicitly")
        self.dt = float(meta.get("dt", DT))
        self.reduction = str(meta.get("output_reduction", "mean_over_T"))
        self.metadata = meta
        self._input, self._output, self._steps = self._compile(graph)

    @property
    def hooks(self) -> dict[str, tuple[str, str]]:
        """Official hook name -> (graph node name, model layout), as written by our writer."""
        raw = self.metadata.get("hooks")
        return {k: tuple(v) for k, v in json.loads(raw).items()} if raw else {}

    def _compile(self, g: nir.NIRGraph) -> tuple[str, str, list[_Step]]:
        inputs = [n for n, v in g.nodes.items() if isinstance(v, nir.Input)]
        outputs = [n for n, v in g.nodes.items() if isinstance(v, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"expected one Input and one Output node, found {len(inputs)} and {len(outputs)}")
        preds: dict[str, list[str]] = {n: [] for n in g.nodes}
        for src, dst in g.edges:
            preds[dst].append(src)
        order, done = [], set()
        pending = list(g.nodes)  # Kahn's algorithm, stable in node order: deterministic
        while pending:
            ready = [n for n in pending if all(p in done for p in preds[n])]
            if not ready:
                raise UserError(f"the NIR graph has a cycle through {', '.join(sorted(pending)[:5])}; only "
                                "feed-forward graphs are supported")
            for n in ready:
                order.append(n)
                done.add(n)
            pending = [n for n in pending if n not in done]
        steps = []
        for name in order:
            node = g.nodes[name]
            meta = node.metadata or {}
            record = str(meta.get("sdt_node", name))
            if name in inputs:
                continue
            if not preds[name]:
                raise UserError(f"NIR node {name!r} has no input edge")
            step = _Step(name, preds[name], self._fn(name, node), record)
            if isinstance(node, nir.LIF):
                step.current, step.fn = _lif(node, self.dt)
                step.current_as = str(meta.get("sdt_input_node", ""))
            steps.append(step)
        return inputs[0], outputs[0], steps

    def _fn(self, name: str, node: nir.NIRNode) -> Fn:
        handler = NIR_HANDLERS.get(type(node))
        if handler is None:
            raise UserError(f"NIR node {name!r} has type {type(node).__name__}, which this reader does not run "
                            "(files from export.nir_writer never contain it)")
        return handler(name, node)

    def _execute(self, x: torch.Tensor, wanted: set[str] | bool) -> tuple[torch.Tensor, Tensors]:
        values: dict[str, torch.Tensor] = {self._input: x}
        out: Tensors = {}
        keep = lambda key: wanted is True or key in wanted  # noqa: E731
        for step in self._steps:
            acc = values[step.inputs[0]]
            for src in step.inputs[1:]:  # edges into a node are summed, in file order
                acc = acc + values[src]
            if step.current is not None:
                acc = step.current(acc)
                if step.current_as and keep(step.current_as):
                    out[step.current_as] = acc
            y = step.fn(acc)
            values[step.name] = y
            if keep(step.record_as):
                out[step.record_as] = y
        return values[self._output], out

    def run(self, x: torch.Tensor, record: bool | Collection[str] = False) -> tuple[torch.Tensor, Tensors]:
        """Run a batch (``[B,C,H,W]`` images, repeated T times, or ``[B,T,C,H,W]`` frames).

        Returns ``(logits, tensors)``: logits ``[B, K]`` (mean over T; ``[T, B, K]`` if the file says
        ``output_reduction = none``); with ``record=True``, every node's output ``[T, B, *shape]`` keyed by the
        graph node it carries (``metadata['sdt_node']``) or else its NIR name, plus the BN'd input current of LIFs
        that carry a BatchNorm, keyed by the conv node (``sdt_input_node``); a collection records those keys only.
        """
        shape = tuple(int(v) for v in np.asarray(self.graph.nodes[self._input].input_type["input"]))
        seq = encode_input(x, shape, self.T)
        with torch.no_grad():
            y, tensors = self._execute(seq, True if record is True else set(record or ()))
        if self.reduction == "mean_over_T":
            y = y.mean(0)
        key = str((self.graph.nodes[self._input].metadata or {}).get("sdt_node", self._input))
        if record is True or (record and key in record):
            tensors[key] = seq
        return y, tensors

    __call__ = run


def read_nir(path: str | os.PathLike, T: int | None = None) -> NIRProgram:
    """Load a NIR file with ``nir.read`` (type checking on) and compile it into a :class:`NIRProgram`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"NIR file not found: {p}")
    try:
        graph = nir.read(p, type_check=True)
    except (OSError, KeyError, ValueError, AssertionError, TypeError) as e:
        raise UserError(f"cannot read NIR file {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(graph, nir.NIRGraph):
        raise UserError(f"{p} holds a single {type(graph).__name__}, not a NIR graph")
    return NIRProgram(graph, T=T)


def run_nir(path_or_graph: str | os.PathLike | nir.NIRGraph | Graph, x: torch.Tensor,
            record: bool | Collection[str] = True) -> tuple[torch.Tensor, Tensors]:
    """Run a NIR file, an ``nir.NIRGraph`` or an export :class:`Graph` (converted with ``to_nir``) on ``x``."""
    if isinstance(path_or_graph, Graph):
        program = NIRProgram(to_nir(path_or_graph))
    elif isinstance(path_or_graph, nir.NIRGraph):
        program = NIRProgram(path_or_graph)
    else:
        program = read_nir(path_or_graph)
    return program.run(x, record=record)


__all__ = ["NIRProgram", "read_nir", "run_nir"]
