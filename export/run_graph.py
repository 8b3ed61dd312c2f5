"""Reference executor of the :class:`~export.graph.Graph`: batched torch over T steps, bit-exact with the model.

Every backend is compared against this (and through it against ``sdt.observe``) node by node, under the shared node
names. Nodes are evaluated one after another over the whole ``[T, B, ...]`` sequence (the graph is feed-forward, so
this equals stepping time in the outer loop); stateless ops fold T into the batch exactly as the model does.
"""
from __future__ import annotations

from typing import Callable, Collection, Mapping

import torch
import torch.nn.functional as F

from sdt.errors import UserError

from . import kernels as K
from .graph import Graph, Node, check_handlers

Tensors = dict[str, torch.Tensor]


def encode_input(x: torch.Tensor, shape: tuple[int, ...], T: int) -> torch.Tensor:
    """Model input -> ``[T, B, C, H, W]``: ``[B,C,H,W]`` is repeated T times, ``[B,T,C,H,W]`` frames are transposed."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4 and tuple(x.shape[1:]) == shape:
        return x.to(torch.float32).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    if x.dim() == 5 and tuple(x.shape[2:]) == shape:
        if x.shape[1] != T:
            raise UserError(f"event input has {x.shape[1]} frames but the network runs T={T} steps")
        return x.to(torch.float32).transpose(0, 1).contiguous()
    dims = ",".join(map(str, shape))
    raise UserError(f"input of shape {tuple(x.shape)} does not fit the network: expected [B,{dims}] (image, repeated "
                    f"T={T} times) or [B,{T},{dims}] (event frames)")


# one handler per op: node -> a function of the node's input tensors (each ``[T, B, *shape]``)

def _conv(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    p, a = node.params, node.attrs
    w = torch.from_numpy(p["weight"].copy())
    bias = torch.from_numpy(p["bias"].copy()) if "bias" in p else None
    bn = (torch.from_numpy(p["bn_scale"].copy()), torch.from_numpy(p["bn_shift"].copy())) if "bn_scale" in p else None

    def frame(z: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(z, w, bias, a["stride"], a["padding"], a.get("dilation", (1, 1)), a.get("groups", 1))
        return K.channel_affine(z, *bn) if bn is not None else z

    return lambda x: K.per_frame(frame, x)


def _linear(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    w = torch.from_numpy(node.params["weight"].copy())
    bias = torch.from_numpy(node.params["bias"].copy()) if "bias" in node.params else None
    return lambda x: F.linear(x, w, bias)


def _lif(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    a = node.attrs
    decay = torch.tensor(a["decay"], dtype=torch.float32)
    return lambda x: K.lif(x, decay, a["v_threshold"], v_reset=float(a.get("v_reset", 0.0)))


def _maxpool(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    a = node.attrs
    return lambda x: K.per_frame(lambda z: F.max_pool2d(z, a["kernel_size"], a["stride"], a["padding"]), x)


def _avgpool(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    a = node.attrs
    return lambda x: K.per_frame(lambda z: F.avg_pool2d(z, a["kernel_size"], a["stride"], a["padding"]), x)


def _erode(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    if node.attrs["mode"] == "spatial":
        return K.erode_spatial
    return lambda x: K.erode_heads(x, int(node.attrs["num_heads"]))


def _broadcast(node: Node) -> Callable[[torch.Tensor], torch.Tensor]:
    grid = node.attrs["grid"]
    return lambda x: x.expand(*x.shape[:3], *grid).contiguous()


def _input(node: Node) -> Callable[..., torch.Tensor]:
    raise AssertionError("the input node is encoded by run_graph")  # never called: see run_graph


OP_HANDLERS: Mapping[str, Callable[[Node], Callable[..., torch.Tensor]]] = {
    "input": _input,
    "conv2d": _conv,
    "linear": _linear,
    "lif": _lif,
    "and": lambda node: lambda p, q: p * q,
    "add": lambda node: lambda p, q: p + q,
    "sum_tokens": lambda node: lambda x: x.sum(dim=(3, 4), keepdim=True),
    "broadcast": _broadcast,
    "maxpool_binary": _maxpool,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "erode": _erode,
    "mean_tokens": lambda node: lambda x: x.flatten(3).mean(3),  # the model's own reduction, same layout
    "output": lambda node: lambda x: x,
}
check_handlers(__name__, OP_HANDLERS)


def run_graph(graph: Graph, x: torch.Tensor, record: bool | Collection[str] = False,
              on_record: Callable[[str, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, Tensors]:
    """Run ``graph`` on a batch. Returns ``(logits, tensors)``.

    ``logits``: ``[B, classes]`` (mean over T), or ``[T, B, classes]`` for TET graphs. ``tensors``: each recorded
    node's output as ``[T, B, *node.shape]`` (``record=True``: every node; a collection: those names). With
    ``on_record``, recorded outputs are passed to it as they are computed instead (``tensors`` stays empty), and
    freed after their last consumer like any other.
    """
    wanted = set(n.name for n in graph) if record is True else set(record or ())
    missing = wanted - set(n.name for n in graph)
    if missing:
        raise UserError(f"cannot record unknown node(s): {', '.join(sorted(missing))}")
    users = {n.name: len(graph.consumers(n.name)) for n in graph}
    values: Tensors = {}
    out: Tensors = {}
    with torch.no_grad():
        for node in graph:
            if node.op == "input":
                y = encode_input(x, node.shape, graph.T)
            else:
                y = OP_HANDLERS[node.op](node)(*(values[i] for i in node.inputs))
                for i in node.inputs:  # free intermediate results as soon as the last consumer ran
                    users[i] -= 1
                    if users[i] == 0 and (i not in wanted or on_record is not None):
                        values.pop(i)
            values[node.name] = y
            if node.name in wanted:
                if on_record is not None:
                    on_record(node.name, y)
                else:
                    out[node.name] = y
    logits = values[graph.output.name]
    if graph.output.attrs.get("reduce", "mean") == "mean":
        logits = logits.mean(0)
    return logits, out


def hooks_in_graph_layout(graph: Graph, hooks: Mapping[str, torch.Tensor]) -> Tensors:
    """The model's ``sdt.observe`` tensors renamed to graph node names and reshaped to ``[T, B, *node.shape]``."""
    out: Tensors = {}
    for hook, (name, layout) in graph.hooks.items():
        if hook not in hooks:
            continue
        t = hooks[hook]
        if layout == "heads":  # [T,B,h,N or 1,d] -> [T,B,C,H,W] (channel c = head * d + slot)
            shape = graph.node(name).shape
            t = t.permute(0, 1, 2, 4, 3).reshape(t.shape[0], t.shape[1], *shape)
        out[name] = t
    return out


__all__ = ["run_graph", "encode_input", "hooks_in_graph_layout"]
