"""``train.py``'s body: build everything from the parsed arguments, resume if asked, run the epochs, save.

Resume is exact: a checkpoint holds model, optimizer, scheduler, AMP scaler, EMA, the RNG states of every rank, the
saver's top-k list and, for a mid-epoch ``recovery`` file, the step reached and the running loss. The data order is a
function of (seed, epoch), and a mid-epoch resume re-reads and drops the batches already trained on, so a run killed
at any instant and resumed ends with the same weights as an uninterrupted one (bit-exact on CPU with
``--deterministic``, the default).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import nn

from ..atomic import write_text
from ..checkpoint import check_state_dict, clean_state_dict, read_checkpoint
from ..config import ConfigError, model_kwargs
from ..errors import CheckpointError, UserError
from . import distributed as D
from .args import parse_args
from .data import build_loaders
from .loop import StepState, train_one_epoch, validate
from .recipe import build_ema, build_mixup, build_optimizer, build_scaler, build_scheduler, build_train_loss
from .rng import get_rng_state, seed_everything, set_deterministic, set_rng_state
from .saver import CheckpointSaver, load_resume
from .summary import Summary


def log(info: D.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)


def plain(value: Any) -> Any:
    """``value`` reduced to YAML/weights_only-safe python (str/int/float/bool/None, lists, dicts)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: plain(v) for k, v in vars(args).items()}


def build_model(args: argparse.Namespace, dataset: str) -> nn.Module:
    """The SDT the official train.py would build for ``args`` (``dataset`` canonical, for the DVS mode)."""
    from .. import create_model

    try:
        kwargs = model_kwargs({**vars(args), "dataset": dataset})
    except ConfigError as e:
        raise UserError(str(e)) from None
    try:
        return create_model(**kwargs, neuron_backend=args.neuron_backend)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build the model: {e}") from None


def output_dir(args: argparse.Namespace, dataset: str) -> Path:
    """``--output/--experiment``; official default name ``<time>-sdt-data-<ds>-t-<T>-spike-<mode>``.

    Resuming without ``--experiment`` continues in the folder of the resumed checkpoint.
    """
    if args.resume and not args.experiment:
        p = Path(args.resume)
        return p if p.is_dir() else p.parent
    base = Path(args.output or "./output/train")
    name = args.experiment or "-".join([datetime.now().strftime("%Y%m%d-%H%M%S"), args.model,
                                        "data-" + dataset.replace("/", "-"), f"t-{args.time_steps}",
                                        f"spike-{args.spike_mode}"])
    return base / name


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    state = clean_state_dict(state)
    check_state_dict(model, state, source=source)
    model.load_state_dict(state, strict=True)


def _check_data(args: argparse.Namespace, loaders: Any) -> None:
    if args.in_channels != loaders.in_channels:
        raise UserError(f"dataset {loaders.name} has {loaders.in_channels} input channel(s) but the config says "
                        f"in_channels {args.in_channels}; pass --in-channels {loaders.in_channels}")
    if args.num_classes != loaders.num_classes:
        raise UserError(f"dataset {loaders.name} has {loaders.num_classes} classes but the config says num_classes "
                        f"{args.num_classes}; pass --num-classes {loaders.num_classes}")


def restore_checkpoint(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                       scheduler: Any) -> tuple[int, StepState, dict[str, Any]]:
    """Load ``--resume`` into the model (strict) and, unless ``--no-resume-opt``, optimizer, scaler, scheduler.

    Returns ``(start_epoch, step state within it, the checkpoint dict)``.
    """
    path, resumed = load_resume(args.resume)
    resumed["_path"] = str(path)
    cfg = resumed.get("model_config")
    if isinstance(cfg, dict):
        diff = [k for k, v in model.model_config.items() if k in cfg and cfg[k] != v]
        if diff:
            raise CheckpointError(f"--resume {path}: the checkpoint's model differs from the config in "
                                  f"{', '.join(f'{k}={cfg[k]!r} (config {model.model_config[k]!r})' for k in diff)}")
    load_weights(model, resumed["state_dict"], str(path))
    start_epoch = int(resumed.get("next_epoch", int(resumed.get("epoch", -1)) + 1))
    if args.no_resume_opt:
        return start_epoch, StepState(), resumed
    try:
        if "optimizer" in resumed:
            optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and "amp_scaler" in resumed:
            scaler.load_state_dict(resumed["amp_scaler"])
        if "scheduler" in resumed:
            scheduler.load_state_dict(resumed["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"--resume {path}: its optimizer/scheduler state does not fit this run "
                              f"({str(e).splitlines()[0][:120]}); pass --no-resume-opt to load the weights only"
                              ) from None
    start = StepState(step=int(resumed.get("next_step", 0)), loss_sum=float(resumed.get("train_loss_sum", 0.0)),
                      count=int(resumed.get("train_count", 0)))
    return start_epoch, start, resumed


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and train; returns the exit status."""
    args, warnings = parse_args(argv)
    info = D.init_distributed(args.device)
    try:
        return _train(args, warnings, info)
    finally:
        D.cleanup()


def _train(args: argparse.Namespace, warnings: list[str], info: D.DistInfo) -> int:
    for w in warnings:
        log(info, w)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    set_deterministic(bool(args.deterministic), info.device)
    seed_everything(args.seed, info.rank)
    use_amp = bool(args.amp or args.native_amp)
    if use_amp and info.device.type != "cuda":
        log(info, "warning: --amp needs CUDA (the official native AMP); training in float32 on the CPU")
        use_amp = False
    if args.channels_last:
        log(info, "warning: --channels-last has no effect on the SDT's 5-D tensors; ignored")

    loaders = build_loaders(args, info)
    _check_data(args, loaders)
    model = build_model(args, loaders.name)
    if args.initial_checkpoint:
        ck = read_checkpoint(args.initial_checkpoint)
        load_weights(model, ck.get("state_dict", ck), args.initial_checkpoint)
    if args.linear_prob:
        for p in model.patch_embed.parameters():
            p.requires_grad_(False)
    model.to(info.device)
    n_params = sum(p.numel() for p in model.parameters())
    log(info, f"model sdt {args.layer}-{args.dim}, T={args.time_steps}, {n_params:,} parameters; data "
              f"{loaders.name} ({len(loaders.train.dataset)} train / {loaders.val_size} val); {info.world_size} "
              f"process(es) on {info.device}")

    optimizer = build_optimizer(model, args)
    scaler = build_scaler(use_amp, info.device)
    scheduler, total_epochs = build_scheduler(optimizer, args)

    start_epoch, start, resumed = 0, StepState(), None
    if args.resume:
        start_epoch, start, resumed = restore_checkpoint(args, model, optimizer, scaler, scheduler)
        log(info, f"resumed from {resumed['_path']} at epoch {start_epoch}"
                  + (f", step {start.step}" if start.step else ""))
    if args.start_epoch is not None:
        start_epoch, start = int(args.start_epoch), StepState()

    ema = build_ema(model, args)
    if ema is not None and resumed is not None and "state_dict_ema" in resumed:
        load_weights(ema.module, resumed["state_dict_ema"], "state_dict_ema")

    train_model: nn.Module = model
    if info.distributed:
        # the official modules that never run (talking_heads, unused PLIF w) get no gradient: DDP must allow that
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True)

    if start_epoch > 0:
        scheduler.step(start_epoch)
    mixup_fn = build_mixup(args, loaders.num_classes)
    train_loss = build_train_loss(args, mixup_fn is not None).to(info.device)
    decreasing = args.eval_metric == "loss"

    out = output_dir(args, args.dataset)
    saver: CheckpointSaver | None = None
    summary: Summary | None = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        saver = CheckpointSaver(out, args.checkpoint_hist, decreasing=decreasing)
        if resumed is not None and isinstance(resumed.get("saver"), dict):
            saver.load_state_dict(resumed["saver"], resumed_epoch=start_epoch - 1 if not start.step else None)
        write_text(out / "args.yaml", yaml.safe_dump(plain_args(args), sort_keys=True))
        summary = Summary(out, tensorboard=bool(args.tensorboard), purge_step=start_epoch)
        log(info, f"output: {out}")

    # every rank restores its own RNG state (checkpoints hold one per rank); a changed world size re-seeds
    rng_states = resumed.get("rng") if resumed is not None and not args.no_resume_opt else None
    if rng_states is not None and len(rng_states) != info.world_size:
        log(info, f"warning: the checkpoint was written by {len(rng_states)} process(es), this run has "
                  f"{info.world_size}: RNG streams are re-seeded, so the run will not repeat the original exactly")
        rng_states = None

    def common_state() -> dict[str, Any]:
        state: dict[str, Any] = {"arch": "sdt", "args": plain_args(args), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(),
                                 "world_size": info.world_size}
        if scaler is not None:
            state["amp_scaler"] = scaler.state_dict()
        if ema is not None:
            state["state_dict_ema"] = ema.module.state_dict()
        return state

    for epoch in range(start_epoch, total_epochs):
        t0 = time.time()
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        loaders.set_epoch(epoch)
        first = start if epoch == start_epoch else StepState()
        restore = rng_states[info.rank] if (epoch == start_epoch and rng_states is not None) else None

        def before_first(restore: Any = restore) -> None:
            if restore is not None:
                set_rng_state(restore)

        def after_step(state: StepState, epoch: int = epoch) -> None:
            if not args.recovery_interval or state.step % args.recovery_interval or state.step == len(loaders.train):
                return
            rngs = D.gather_objects(get_rng_state(), info)
            if saver is not None:
                saver.save_recovery(model, {**common_state(), "epoch": epoch - 1, "next_epoch": epoch,
                                            "next_step": state.step, "train_loss_sum": state.loss_sum,
                                            "train_count": state.count, "rng": rngs})

        train_metrics = train_one_epoch(
            epoch, train_model, loaders.train, optimizer, train_loss, info, scheduler=scheduler, scaler=scaler,
            ema=ema, mixup_fn=mixup_fn, clip_grad=args.clip_grad, clip_mode=args.clip_mode, amp=use_amp,
            start=first, before_first=before_first, after_step=after_step, progress=bool(args.progress),
            desc=f"epoch {epoch}")
        if info.distributed and args.dist_bn in ("broadcast", "reduce"):
            # before validation (as timm / the official script): every rank then validates with, and the checkpoint
            # holds, the same BatchNorm statistics. Without it (the official default "") each rank keeps its own
            from timm.utils import distribute_bn

            distribute_bn(model, info.world_size, args.dist_bn == "reduce")
        eval_metrics = validate(model, loaders.val, info, amp=use_amp, progress=bool(args.progress))
        if ema is not None and not args.model_ema_force_cpu:
            # official: with EMA, the EMA model's metrics decide the best checkpoint
            eval_metrics = validate(ema.module, loaders.val, info, amp=use_amp, progress=bool(args.progress),
                                    desc="eval ema")
        lr = float(optimizer.param_groups[0]["lr"])
        metric = eval_metrics[args.eval_metric]
        scheduler.step(epoch + 1, metric)
        rngs = D.gather_objects(get_rng_state(), info)
        # a digest of every rank's weights: DDP must keep them identical, and the checkpoint shows that they were
        digests = D.gather_objects(D.weight_digest(model), info)
        if info.is_main and len(set(digests)) > 1:
            log(info, f"warning: ranks hold different weights after epoch {epoch} (digests {digests})")
        if saver is not None and summary is not None:
            summary.update(epoch, train_metrics, eval_metrics, lr)
            saver.save_epoch(model, epoch, metric, lambda s, epoch=epoch, metric=metric: {
                **common_state(), "epoch": epoch, "next_epoch": epoch + 1, "next_step": 0, "metric": metric,
                "rng": rngs, "saver": s, "rank_weight_digests": digests})
        log(info, f"epoch {epoch + 1}/{total_epochs}  train_loss {train_metrics['loss']:.4f}  eval_loss "
                  f"{eval_metrics['loss']:.4f}  top1 {eval_metrics['top1']:.2f}  top5 {eval_metrics['top5']:.2f}  "
                  f"lr {lr:.3g}  {time.time() - t0:.1f}s")
        D.barrier(info)
    if saver is not None and saver.best_metric is not None:
        log(info, f"*** best {args.eval_metric}: {saver.best_metric:.4f} (epoch {saver.best_epoch}); "
                  f"checkpoints in {out}")
    if summary is not None:
        summary.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import cli_entry

    return cli_entry(run)(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
