"""The protocol a graph builder implements so that the model's blocks can describe their data flow to it.

Each block of :mod:`sdt.model` has an ``emit(b, x) -> str`` next to its ``forward``: it tells the builder ``b``, node by
node, what ``forward`` computes, starting from node ``x`` and returning the name of its last node. Nodes are named by
strings (the official hook name for tensors ``forward`` records, else the official module path); ops are the export
graph's op names (``and``, ``add``, ``erode``, ``sum_tokens`` ...). ``sdt`` only describes; ``export.from_model``
implements the protocol and builds the graph, so ``sdt`` imports nothing from ``export``.
"""
from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from .neurons import MultiStepLIF

LAYOUTS = ("plain", "heads")  # how forward holds a recorded tensor: [T,B,C,H,W] or the head layout [T,B,h,N,d]


class GraphBuilder(Protocol):
    """Receives the nodes a model emits; every method returns the new node's name."""

    def conv(self, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_name: str) -> str:
        """``bn(conv(x))``, BatchNorm in eval form; ``bn_name``: the BatchNorm's module path."""
        ...

    def linear(self, name: str, x: str, linear: nn.Linear, source: str) -> str:
        """``linear(x)``."""
        ...

    def lif(self, name: str, x: str, neuron: MultiStepLIF, source: str) -> str:
        """The spikes of ``neuron`` driven by ``x`` over all time steps."""
        ...

    def maxpool(self, name: str, op: str, x: str, pool: nn.MaxPool2d, source: str) -> str:
        """``pool(x)`` as op ``maxpool_binary`` (of spikes: an OR) or ``maxpool`` (of a real tensor)."""
        ...

    def op(self, name: str, op: str, inputs: tuple[str, ...], source: str, **attrs: Any) -> str:
        """A parameter-free op of the export graph applied to ``inputs``."""
        ...

    def shape(self, node: str) -> tuple[int, ...]:
        """The per-sample, per-step shape of ``node``'s output."""
        ...

    def hook(self, name: str, node: str, layout: str = "plain") -> str:
        """Record that ``forward``'s hook tensor ``name`` is ``node``'s output (held by forward in ``layout``, one of
        :data:`LAYOUTS`); returns ``node``."""
        ...


__all__ = ["GraphBuilder", "LAYOUTS"]
