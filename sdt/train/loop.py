"""One training epoch and one validation pass, as the official loop runs them (timm ``train_one_epoch`` / ``validate``).

The SDT resets its neurons inside every forward call, so no ``reset_net`` is needed between batches.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import skip_batches
from .distributed import DistInfo, all_reduce_sum


def _mininterval() -> float:
    """Bars redraw often on a terminal, rarely in a log file."""
    return 0.2 if sys.stderr.isatty() else 30.0


@dataclass
class StepState:
    """Where a training epoch stands: completed steps and the running loss sum (what a recovery file stores)."""

    step: int = 0
    loss_sum: float = 0.0
    count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """CUDA float16 autocast when AMP is on (the official native AMP), else nothing."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(epoch: int, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, info: DistInfo, *, scheduler: Any = None, scaler: Any = None,
                    ema: Any = None, mixup_fn: Any = None, clip_grad: float | None = None, clip_mode: str = "norm",
                    amp: bool = False, start: StepState | None = None, before_first: Callable[[], None] | None = None,
                    after_step: Callable[[StepState], None] | None = None, progress: bool = True,
                    desc: str = "train") -> dict[str, float]:
    """Train over ``loader`` once, from ``start.step`` on (earlier batches are loaded and skipped).

    ``before_first`` runs after the skip and before the first batch (the resume path restores RNG state there);
    ``after_step`` runs after every optimizer step (recovery checkpoints). Returns ``{'loss': mean over samples}``.
    """
    from timm.utils import dispatch_clip_grad

    state = StepState(**vars(start)) if start is not None else StepState()
    model.train()
    n = len(loader)
    it = skip_batches(iter(loader), state.step)
    if before_first is not None:
        before_first()
    num_updates = epoch * n + state.step
    bar = tqdm(total=n, initial=state.step, desc=desc, disable=not (progress and info.is_main), leave=False,
               dynamic_ncols=True, mininterval=_mininterval())
    for _ in range(state.step, n):
        x, y = next(it)
        x = x.to(info.device, non_blocking=True)
        y = y.to(info.device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        with autocast(info.device, amp):
            out = model(x)
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler(loss, optimizer, clip_grad=clip_grad, clip_mode=clip_mode, parameters=model.parameters())
        else:
            loss.backward()
            if clip_grad is not None:
                dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
            optimizer.step()
        if ema is not None:
            ema.update(model)
        num_updates += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)
        state.step += 1
        state.loss_sum += float(loss.detach()) * x.shape[0]
        state.count += x.shape[0]
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss_sum / state.count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if after_step is not None:
            after_step(state)
    bar.close()
    total, count = all_reduce_sum([state.loss_sum, float(state.count)], info)
    return {"loss": total / max(count, 1.0)}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, info: DistInfo, *, amp: bool = False, progress: bool = True,
             desc: str = "eval", batch_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
             ) -> dict[str, float]:
    """Loss (plain CE), top-1 and top-5 (%) over this rank's share, summed exactly over all ranks.

    TET outputs ``[T, B, classes]`` are averaged over T first, as in the official validation. ``batch_fn(x, y,
    logits)`` sees every batch (the firing-rate evaluation hooks in there).
    """
    from timm.utils import accuracy

    model.eval()
    loss_sum = top1 = top5 = count = 0.0
    for x, y in tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False, dynamic_ncols=True,
                     mininterval=_mininterval()):
        x = x.to(info.device, non_blocking=True)
        y = y.to(info.device, non_blocking=True)
        with autocast(info.device, amp):
            out = model(x)
        if out.dim() == 3:
            out = out.mean(0)
        out = out.float()
        if batch_fn is not None:
            batch_fn(x, y, out)
        b = x.shape[0]
        k5 = min(5, out.shape[-1])
        a1, a5 = accuracy(out, y, topk=(1, k5))
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        top1 += round(float(a1) * b / 100.0)  # timm returns percentages; back to exact counts
        top5 += round(float(a5) * b / 100.0)
        count += b
    loss_sum, top1, top5, count = all_reduce_sum([loss_sum, top1, top5, count], info)
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count}
