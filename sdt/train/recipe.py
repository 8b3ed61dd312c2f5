"""The official SDT recipe, built from timm's parts: optimizer, lr schedule, Mixup/CutMix, losses, EMA, AMP."""
from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2``: weight decay only on parameters with ndim > 1 (biases, BN, PLIF w: none).

    Lamb is timm's, with its built-in global grad-norm clipping at 1.0, as in the official runs.
    """
    from timm.optim import create_optimizer_v2

    kw: dict[str, Any] = dict(opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum)
    if args.opt_eps is not None:
        kw["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kw["betas"] = tuple(args.opt_betas)
    try:
        return create_optimizer_v2(model, **kw)
    except (ValueError, AssertionError, KeyError) as e:
        raise UserError(f"--opt {args.opt!r}: {e}") from None


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> tuple[Any, int]:
    """timm's scheduler stepped per epoch (``t_in_epochs``); returns ``(scheduler, total_epochs)``.

    For cosine: warm-up from ``warmup_lr`` over ``warmup_epochs`` (not a prefix: the cosine runs on absolute epochs),
    decay to ``min_lr`` at ``epochs``, then ``cooldown_epochs`` at ``min_lr``.
    """
    from timm.scheduler import create_scheduler_v2

    try:
        sched, total = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            cooldown_epochs=args.cooldown_epochs, patience_epochs=args.patience_epochs, decay_rate=args.decay_rate,
            min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, warmup_prefix=False,
            noise=args.lr_noise, noise_pct=args.lr_noise_pct, noise_std=args.lr_noise_std, noise_seed=args.seed,
            cycle_mul=args.lr_cycle_mul, cycle_limit=args.lr_cycle_limit, step_on_epochs=True)
    except (ValueError, AssertionError) as e:
        raise UserError(f"--sched {args.sched!r}: {e}") from None
    if sched is None:
        raise UserError(f"--sched {args.sched!r}: unknown schedule")
    return sched, int(total)


def build_mixup(args: argparse.Namespace, num_classes: int) -> Any | None:
    """``timm.data.Mixup`` (label smoothing folded into the soft targets) when mixup or cutmix is on."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


class TETLoss(nn.Module):
    """TET loss (official ``criterion.TET_loss``) over outputs ``[T, B, classes]``.

    ``(1 - lamb) * mean_t base(o_t, y) + lamb * MSE(o, means)``; the MSE runs over every logit at every step.
    """

    def __init__(self, base: nn.Module, means: float = 1.0, lamb: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.means = float(means)
        self.lamb = float(lamb)

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_step = sum(self.base(outputs[t], target) for t in range(outputs.shape[0])) / outputs.shape[0]
        if self.lamb == 0:
            return per_step
        reg = F.mse_loss(outputs, torch.full_like(outputs, self.means))
        return (1.0 - self.lamb) * per_step + self.lamb * reg


def build_train_loss(args: argparse.Namespace, mixup_on: bool) -> nn.Module:
    """Official choice: mixup -> SoftTargetCrossEntropy; smoothing -> LabelSmoothingCrossEntropy; else CE.

    With TET the chosen loss is applied per time step inside :class:`TETLoss`.
    """
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_on:
        base: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing:
        base = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return TETLoss(base, args.TET_means, args.TET_lamb) if args.TET else base


def build_ema(model: nn.Module, args: argparse.Namespace) -> Any | None:
    """``timm.utils.ModelEmaV2`` when ``--model-ema`` (off in every official config)."""
    if not args.model_ema:
        return None
    from timm.utils import ModelEmaV2

    return ModelEmaV2(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)


def build_scaler(use_amp: bool, device: torch.device) -> Any | None:
    """timm's ``NativeScaler`` (a torch GradScaler) for CUDA AMP."""
    if not use_amp:
        return None
    from timm.utils import NativeScaler

    return NativeScaler(device=device.type)
