"""Conv / pool window arithmetic: the one copy in the tree (NumPy only, so the Lava host process can import it).

Every backend (graph shape rules, quantiser, executor, Lava processes, energy counter) computes output sizes and
reads 2-D size attributes through these helpers.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Pair = tuple[int, int]


def pair(v: int | Sequence[int]) -> Pair:
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``: the one reading of a 2-D size attribute."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def window_out(size: int, k: int, s: int = 1, p: int = 0, d: int = 1) -> int:
    """Output length of a conv/pool window along one axis (PyTorch's floor rule, zero padding)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv_out_hw(hw: Sequence[int], kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1) -> Pair:
    """``(H, W)`` after a conv or pool window: the only copy of this arithmetic in the tree."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pair(kernel), pair(stride), pair(padding), pair(dilation)
    return window_out(int(hw[0]), kh, sh, ph, dh), window_out(int(hw[1]), kw, sw, pw, dw)


def pool_window(attrs: Mapping[str, Any]) -> tuple[Pair, Pair, Pair]:
    """``(kernel, stride, padding)`` of a pooling node's attributes (stride defaults to the kernel)."""
    k = pair(attrs["kernel_size"])
    return k, pair(attrs.get("stride") or k), pair(attrs.get("padding", 0))


def conv_window(attrs: Mapping[str, Any]) -> tuple[Pair, Pair, Pair, int]:
    """``(stride, padding, dilation, groups)`` of a conv node's attributes."""
    return (pair(attrs.get("stride", 1)), pair(attrs.get("padding", 0)), pair(attrs.get("dilation", 1)),
            int(attrs.get("groups", 1)))


__all__ = ["Pair", "pair", "window_out", "conv_out_hw", "pool_window", "conv_window"]
