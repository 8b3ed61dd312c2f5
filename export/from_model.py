"""Build the :class:`~export.graph.Graph` of a trained SDT: ``build_graph(model)`` (one block: ``build_fragment``).

The data flow is the model's own: each block's ``emit`` (next to its ``forward`` in :mod:`sdt.model`) tells the builder
here its nodes; this file turns the PyTorch modules into node parameters and attributes, the only place that looks at
them. BatchNorm is taken in eval form (running statistics) and stored with its conv as the per-channel
``bn_scale``/``bn_shift`` that PyTorch's own BatchNorm kernel computes (read back by probing the kernel), so that every
executor reproduces the model bit for bit; :func:`export.graph.fold_bn` gives the folded weights.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdt.errors import UserError
from sdt.graph_builder import LAYOUTS
from sdt.model import SpikeDrivenTransformer
from sdt.neurons import MultiStepLIF, MultiStepPLIF

from .graph import Graph, Node, Shape, infer_shape
from .shapes import pair, pool_window


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` such that eval ``bn(z) == z * scale + shift`` with PyTorch's own rounding.

    The kernel computes the scale from ``rsqrt(var + eps) * weight`` and the shift with a fused multiply-add; rather
    than re-deriving that, feed it z = 1 with mean = bias = 0 (gives the scale) and z = 0 (gives the shift).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise UserError(f"BatchNorm {bn} has no running statistics; export needs a model trained with them")
    c = bn.num_features
    with torch.no_grad():
        zeros = torch.zeros(c)
        scale = F.batch_norm(torch.ones(1, c, 1, 1), zeros, bn.running_var, bn.weight, zeros, False, 0.0, bn.eps)
        shift = F.batch_norm(torch.zeros(1, c, 1, 1), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                             bn.eps)
    return _np(scale.flatten()), _np(shift.flatten())


def lif_attrs(neuron: MultiStepLIF) -> dict[str, Any]:
    """The exact float32 charge factor and threshold of a model neuron."""
    if not isinstance(neuron, MultiStepLIF):
        raise UserError(f"expected an SDT LIF neuron, found {type(neuron).__name__}")
    with torch.no_grad():
        decay = neuron.decay()
        decay = float(decay.to(torch.float32)) if isinstance(decay, torch.Tensor) else float(np.float32(decay))
    if not 0.0 < decay <= 1.0 or not math.isfinite(decay):
        raise UserError(f"LIF decay {decay} is outside (0, 1]; the neuron cannot be exported")
    return {"v_threshold": float(neuron.v_threshold), "decay": decay, "v_reset": 0.0,
            "parametric": isinstance(neuron, MultiStepPLIF)}


class _Builder:
    """Collects the nodes a model emits (implements :class:`sdt.graph_builder.GraphBuilder`); output shapes come from
    the op table's shape rules."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.shapes: dict[str, Shape] = {}
        self.hooks: dict[str, tuple[str, str]] = {}

    def _add(self, name: str, op: str, inputs: tuple[str, ...], source: str,
             params: Mapping[str, np.ndarray] | None = None, shape: Shape = (), **attrs: Any) -> str:
        node = Node(name, op, inputs, shape, params or {}, attrs, source)
        if inputs:
            try:
                node = replace(node, shape=infer_shape(node, [self.shapes[i] for i in inputs]))
            except (ValueError, KeyError) as e:
                raise UserError(f"cannot build the export graph: node {name!r} ({op}): {e}") from None
        self.nodes.append(node)
        self.shapes[name] = node.shape
        return name

    def input(self, shape: Shape) -> str:
        return self._add("input", "input", (), "input", shape=shape)

    def conv(self, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_name: str) -> str:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError(f"{name}: only numeric zero padding is supported")
        params = {"weight": _np(conv.weight)}
        if conv.bias is not None:
            params["bias"] = _np(conv.bias)
        params["bn_scale"], params["bn_shift"] = bn_affine(bn)
        return self._add(name, "conv2d", (x,), f"{name}+{bn_name}", params, stride=pair(conv.stride),
                         padding=pair(conv.padding), dilation=pair(conv.dilation), groups=conv.groups, bn=bn_name)

    def linear(self, name: str, x: str, linear: nn.Linear, source: str) -> str:
        params = {"weight": _np(linear.weight)}
        if linear.bias is not None:
            params["bias"] = _np(linear.bias)
        return self._add(name, "linear", (x,), source, params)

    def lif(self, name: str, x: str, neuron: MultiStepLIF, source: str) -> str:
        return self._add(name, "lif", (x,), source, **lif_attrs(neuron))

    def maxpool(self, name: str, op: str, x: str, pool: nn.MaxPool2d, source: str) -> str:
        if pair(pool.dilation) != (1, 1) or pool.ceil_mode:
            raise UserError(f"max-pool {pool} uses dilation/ceil_mode, which the exporter does not support")
        kernel, stride, padding = pool_window(
            {"kernel_size": pool.kernel_size, "stride": pool.stride, "padding": pool.padding})
        return self._add(name, op, (x,), source, kernel_size=kernel, stride=stride, padding=padding)

    def op(self, name: str, op: str, inputs: tuple[str, ...], source: str, **attrs: Any) -> str:
        return self._add(name, op, inputs, source, **attrs)

    def shape(self, node: str) -> Shape:
        return self.shapes[node]

    def hook(self, name: str, node: str, layout: str = "plain") -> str:
        if layout not in LAYOUTS:
            raise ValueError(f"hook {name!r}: unknown layout {layout!r}")
        self.hooks[name] = (node, layout)
        return node

    def graph(self, T: int, encoding: str, metadata: Mapping[str, Any]) -> Graph:
        """The collected nodes as a :class:`Graph`."""
        try:
            return Graph(tuple(self.nodes), T=T, encoding=encoding, metadata=metadata)
        except ValueError as e:
            raise UserError(f"cannot build the export graph: {e}") from None


def _default_encoding(cfg: Mapping[str, Any]) -> str:
    # event datasets (2 polarity channels) feed frames; static images are repeated T times (the model accepts both)
    return "frames" if cfg.get("dvs_mode") or cfg.get("in_channels") == 2 else "repeat"


def build_graph(model: SpikeDrivenTransformer, *, encoding: str | None = None,
                normalization: Mapping[str, Any] | None = None) -> Graph:
    """The graph of ``model`` (any config, variant, spike mode; eval semantics: BN running statistics).

    ``encoding``: 'repeat' (image repeated T times) or 'frames' (event frames ``[B,T,C,H,W]``); by default 'frames'
    for DVS/2-channel models. ``normalization``: e.g. ``{"mean": [...], "std": [...]}`` applied by the data pipeline
    before the model, recorded in the metadata only.
    """
    model = getattr(model, "module", model)
    if not isinstance(model, SpikeDrivenTransformer):
        raise UserError(f"build_graph needs an SDT model (sdt.create_model / sdt.load_checkpoint), got "
                        f"{type(model).__name__}")
    cfg = dict(model.model_config)
    b = _Builder()
    model.emit(b, b.input((cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"])))
    metadata = {
        "model_config": json.dumps(cfg, sort_keys=True),
        "hooks": b.hooks,
        "num_heads": int(cfg["num_heads"]),
        "variant": model.patch_embed.variant,
        "normalization": dict(normalization) if normalization else None,
        "threshold_rule": "model fires on h >= v_threshold",
    }
    return b.graph(int(cfg["T"]), encoding or _default_encoding(cfg), metadata)


def build_fragment(block: nn.Module, in_shape: Shape, T: int) -> Graph:
    """The graph of one block's ``emit`` alone (``MS_SPS``, ``MS_SSA_Conv``, ``MS_MLP_Conv``, ``MS_Block_Conv``): an
    ``input`` of per-step shape ``in_shape`` that takes the block's input ``[T,B,*in_shape]`` as frames
    ``[B,T,*in_shape]``, the block's nodes, and an ``output`` holding every step of its last node."""
    b = _Builder()
    x = block.emit(b, b.input(tuple(in_shape)))
    b.op("output", "output", (x,), f"{type(block).__name__} (fragment)", reduce="none")
    return b.graph(T, "frames", {"hooks": b.hooks})


__all__ = ["build_graph", "build_fragment", "bn_affine", "lif_attrs"]
