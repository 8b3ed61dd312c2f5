"""Torch kernels that reproduce the model's float32 arithmetic bit for bit (shared by the graph and NIR executors).

Tensors are ``[T, B, *shape]``. Per-frame ops fold T into the batch exactly as the model does (``_seq``), because a
different batch layout may pick a different conv/GEMM algorithm and round differently.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame op to ``[T, B, ...]`` by folding T into the batch (the model's ``_seq``)."""
    t, b = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` per channel (dim 1 of ``[N, C, ...]``), rounded exactly as eval BatchNorm rounds it.

    PyTorch's CPU BatchNorm fuses the multiply-add; calling the same kernel with mean 0, var 1, eps 0 reproduces
    it on any build instead of guessing whether FMA is used.
    """
    c = x.shape[1]
    zeros = torch.zeros(c, dtype=x.dtype)
    ones = torch.ones(c, dtype=x.dtype)
    return F.batch_norm(x, zeros, ones, scale, shift, False, 0.0, 0.0)


def lif(x: torch.Tensor, decay: float | torch.Tensor, threshold: float | torch.Tensor, strict: bool = False,
        v_reset: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Multi-step LIF over dim 0, state 0 at t=0: ``h = v + (x - v) * decay``; fire on ``h >= threshold`` (on
    ``h > threshold`` if ``strict``, the NIR convention); hard reset to ``v_reset``. Returns the spikes."""
    v = torch.zeros_like(x[0])
    spikes = []
    zero_reset = isinstance(v_reset, float) and v_reset == 0.0
    for t in range(x.shape[0]):
        h = v + (x[t] - v) * decay
        s = ((h > threshold) if strict else (h >= threshold)).to(x.dtype)
        v = h * (1.0 - s) if zero_reset else torch.where(s.bool(), v_reset, h)  # the model's op when v_reset = 0
        spikes.append(s)
    return torch.stack(spikes)


def to_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T,B,C,H,W] -> [T,B,h,N,d]``: channel c -> head c // d, slot c % d; tokens in raster order (official)."""
    t, b, c = x.shape[:3]
    return x.flatten(3).transpose(-1, -2).reshape(t, b, -1, num_heads, c // num_heads).permute(0, 1, 3, 2, 4)


def from_heads(y: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_heads` (the official re-merge): ``[T,B,h,N,d] -> [T,B,C,H,W]``."""
    t, b = y.shape[:2]
    return y.transpose(3, 4).reshape(t, b, -1, *grid).contiguous()


def erode_spatial(x: torch.Tensor) -> torch.Tensor:
    """Official Erode on ``[T,B,C,H,W]``: max over a 3x3 spatial window per channel."""
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))


def erode_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Official Erode applied in the head layout: window tokens n±1 (raster order) x slots j±1 within a head."""
    return from_heads(erode_spatial(to_heads(x, num_heads)), tuple(x.shape[3:]))


def sum_pool(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
             padding: tuple[int, int]) -> torch.Tensor:
    """Sum over each window of a zero-padded ``[N, C, H, W]`` tensor (any padding)."""
    (kh, kw), (ph, pw) = kernel, padding
    if ph > kh // 2 or pw > kw // 2:  # avg_pool2d refuses padding over half the kernel
        x = F.pad(x, (pw, pw, ph, ph))
        ph = pw = 0
    return F.avg_pool2d(x, kernel, stride, (ph, pw), ceil_mode=False, count_include_pad=True, divisor_override=1)


__all__ = ["per_frame", "channel_affine", "lif", "to_heads", "from_heads", "erode_spatial", "erode_heads", "sum_pool"]
