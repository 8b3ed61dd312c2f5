"""Command line of ``train.py``: the official flag names, YAML configs merged the official way, and a few additions.

Precedence is the official one: option defaults < YAML (``-c``, applied with ``parser.set_defaults``) < command line.
Without ``-c`` the built-in preset of ``--dataset`` (default ``digits``) plays the YAML's role. YAML keys that the
official script silently ignored (hyphenated spellings, ``drop_path`` ...) are ignored here too, with one warning
line per key. Options marked "(ours)" do not exist in the official script.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from ..config import ConfigError, inert_keys, load_config, official_defaults
from ..cli_types import boolean
from ..errors import UserError
from ..model import VARIANTS
from .presets import PRESETS, preset

# Official store_true options: a YAML value reaches them unconverted, so anything but a bool is refused.
FLAG_DESTS = ("pretrained", "no_resume_opt", "no_aug", "jsd", "bce_loss", "resplit", "bn_tf", "sync_bn", "split_bn",
              "linear_prob", "model_ema", "model_ema_force_cpu", "save_images", "amp", "apex_amp", "native_amp",
              "channels_last", "pin_mem", "no_prefetcher", "dvs_aug", "dvs_trival_aug", "use_multi_epochs_loader",
              "torchscript", "log_wandb")

# Why an ignored key changes nothing, for the warning line.
_INERT_HINTS = {
    "model-ema": "EMA stays off as in the official runs; pass --model-ema to turn it on",
    "model-ema-decay": "the EMA decay is --model-ema-decay",
    "drop_path": "the official model never applies its DropPath modules",
    "bce-loss": "BCE stays off as in the official runs; pass --bce-loss to turn it on",
    "bce-target-thresh": "the BCE threshold is --bce-target-thresh",
    "channels-last": "the option is --channels-last",
    "mlp-ratio": "the option is mlp_ratio",
    "aug_repeats": "the official train.py has no repeated-augmentation sampler",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, no usage dump) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"train.py: {message} (see python train.py --help)")


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The train.py parser. ``suppress=True`` leaves unset options off the namespace (to see what was typed)."""
    p = _Parser(prog="train.py", description="Train the Spike-Driven Transformer v1 (official recipe via timm).",
                argument_default=argparse.SUPPRESS if suppress else None,
                formatter_class=argparse.ArgumentDefaultsHelpFormatter if not suppress else argparse.HelpFormatter)
    a = p.add_argument
    a("-c", "--config", metavar="FILE", help="official-format YAML file, a packaged config name (e.g. cifar10_2_512) "
      f"or a built-in preset ({', '.join(PRESETS)}); without it the preset of --dataset is used")

    g = p.add_argument_group("dataset and model").add_argument
    g("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (not needed for digits/fashion/mnist)")
    g("--dataset", "-d", metavar="NAME", help="digits, fashion, mnist, torch/cifar10, torch/cifar100, imagenet, "
      "gesture, cifar10-dvs")
    g("--train-split", metavar="NAME")
    g("--val-split", metavar="NAME")
    g("--model", metavar="NAME", help="only 'sdt'")
    g("--pooling-stat", metavar="BITS", help="4 characters of 0/1: which SPS stages max-pool")
    g("--TET", type=boolean, nargs="?", const=True, help="temporal efficient training loss")
    g("--TET-means", type=float)
    g("--TET-lamb", type=float)
    g("--spike-mode", choices=("lif", "plif"))
    g("--layer", type=int, help="number of encoder blocks")
    g("--dim", type=int, help="(ours) embedding width; officially YAML-only")
    g("--in-channels", type=int)
    g("--pretrained", action="store_true", help="unsupported: no weights are downloaded")
    g("--initial-checkpoint", metavar="PATH", help="start from these weights (model only)")
    g("--resume", metavar="PATH", help="continue a run: a checkpoint file, or an output folder (its newest of "
      "last.pth.tar / recovery.pth.tar)")
    g("--no-resume-opt", action="store_true", help="do not restore optimizer, scaler and RNG state on resume")
    g("--num-classes", type=int)
    g("--time-steps", "-T", type=int)
    g("--num-heads", type=int)
    g("--patch-size", type=int, help="inert (official)")
    g("--mlp-ratio", type=int)
    g("--gp", metavar="POOL", help="inert (official)")
    g("--img-size", type=int)
    g("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    g("--crop-pct", type=float)
    g("--mean", type=float, nargs="+")
    g("--std", type=float, nargs="+")
    g("--interpolation", metavar="NAME")
    g("-b", "--batch-size", type=int, help="per process")
    g("-vb", "--val-batch-size", type=int)
    g("--neuron-backend", choices=("torch", "spikingjelly", "cupy"), help="(ours) LIF implementation")
    g("--variant", choices=VARIANTS, help="(ours) 'nir_clean': SPS stage 3 pools spikes after the LIF and "
      "average-pools the residual, so the model maps onto standard NIR primitives (portable export); default "
      "'official' (config key 'variant')")

    g = p.add_argument_group("optimizer and schedule").add_argument
    g("--opt", metavar="NAME")
    g("--opt-eps", type=float)
    g("--opt-betas", type=float, nargs="+")
    g("--momentum", type=float)
    g("--weight-decay", type=float)
    g("--clip-grad", type=float)
    g("--clip-mode")
    g("--sched")
    g("--lr", type=float)
    g("--lr-noise", type=float, nargs="+")
    g("--lr-noise-pct", type=float)
    g("--lr-noise-std", type=float)
    g("--lr-cycle-mul", type=float)
    g("--lr-cycle-limit", type=int)
    g("--warmup-lr", type=float)
    g("--min-lr", type=float)
    g("--epochs", type=int)
    g("--epoch-repeats", type=float)
    g("--start-epoch", type=int)
    g("--decay-epochs", type=float)
    g("--warmup-epochs", type=int)
    g("--cooldown-epochs", type=int)
    g("--patience-epochs", type=int)
    g("--decay-rate", "--dr", type=float)

    g = p.add_argument_group("augmentation and regularisation").add_argument
    g("--no-aug", action="store_true")
    g("--scale", type=float, nargs="+")
    g("--ratio", type=float, nargs="+")
    g("--hflip", type=float)
    g("--vflip", type=float)
    g("--color-jitter", type=float)
    g("--aa", metavar="POLICY", help="timm auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1")
    g("--aug-splits", type=int)
    g("--jsd", action="store_true")
    g("--bce-loss", action="store_true")
    g("--bce-target-thresh", type=float)
    g("--reprob", type=float)
    g("--remode")
    g("--recount", type=int)
    g("--resplit", action="store_true")
    g("--mixup", type=float)
    g("--cutmix", type=float)
    g("--cutmix-minmax", type=float, nargs="+")
    g("--mixup-prob", type=float)
    g("--mixup-switch-prob", type=float)
    g("--mixup-mode")
    g("--mixup-off-epoch", type=int)
    g("--smoothing", type=float)
    g("--train-interpolation")
    g("--drop", type=float, help="inert (official)")
    g("--drop-connect", type=float, help="inert (official)")
    g("--drop-path", type=float, help="inert (official)")
    g("--drop-block", type=float, help="inert (official)")
    g("--bn-tf", action="store_true")
    g("--bn-momentum", type=float)
    g("--bn-eps", type=float)
    g("--sync-bn", action="store_true")
    g("--dist-bn")
    g("--split-bn", action="store_true")
    g("--linear-prob", action="store_true", help="freeze patch_embed")

    g = p.add_argument_group("EMA").add_argument
    g("--model-ema", action="store_true")
    g("--model-ema-force-cpu", action="store_true")
    g("--model-ema-decay", type=float)

    g = p.add_argument_group("misc").add_argument
    g("--seed", type=int)
    g("--log-interval", type=int)
    g("--recovery-interval", type=int, help="also write recovery.pth.tar every N steps (0: epoch ends only)")
    g("--checkpoint-hist", type=int, help="how many top checkpoints to keep")
    g("-j", "--workers", type=int)
    g("--save-images", action="store_true")
    g("--amp", action="store_true", help="mixed precision (CUDA only)")
    g("--apex-amp", action="store_true")
    g("--native-amp", action="store_true")
    g("--channels-last", action="store_true")
    g("--pin-mem", action="store_true")
    g("--no-prefetcher", action="store_true")
    g("--dvs-aug", action="store_true")
    g("--dvs-trival-aug", action="store_true")
    g("--output", metavar="DIR", help="base output folder (default ./output/train)")
    g("--experiment", metavar="NAME", help="sub-folder name (default: time-model-data-...)")
    g("--eval-metric", choices=("top1", "top5", "loss"))
    g("--tta", type=int)
    g("--local_rank", "--local-rank", dest="local_rank", type=int)
    g("--use-multi-epochs-loader", action="store_true")
    g("--torchscript", action="store_true")
    g("--log-wandb", action="store_true")
    g("--device", help="(ours) cpu, cuda or cuda:N; default cuda:LOCAL_RANK if available")
    g("--num-threads", type=int, help="(ours) CPU threads per process (0: torch default)")
    g("--deterministic", type=boolean, nargs="?", const=True, help="(ours) deterministic algorithms")
    g("--limit-train", type=int, metavar="N", help="(ours) use the first N training samples")
    g("--limit-val", type=int, metavar="N", help="(ours) use the first N validation samples")
    g("--tensorboard", type=boolean, nargs="?", const=True, help="(ours) write TensorBoard logs if installed")
    g("--progress", type=boolean, nargs="?", const=True, help="(ours) tqdm progress bars")
    if not suppress:
        p.set_defaults(**official_defaults())
        p.set_defaults(config=None, dim=None, variant=None, neuron_backend="torch", device=None, num_threads=0, deterministic=True,
                       limit_train=None, limit_val=None, tensorboard=True, progress=True)
    return p


def _load_base(config: str | None, dataset: str | None) -> tuple[dict[str, Any], str]:
    """The YAML (or preset) dict and a label for it."""
    if config is None:
        name = dataset or "digits"
        cfg = preset(name)
        if cfg is None:
            raise UserError(f"no built-in preset for dataset {name!r} (presets: {', '.join(PRESETS)}); pass -c CONFIG, "
                            "e.g. -c cifar10_2_256")
        return cfg, f"preset {name}"
    cfg = preset(config)
    if cfg is not None:
        return cfg, f"preset {config}"
    try:
        return load_config(config), config
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except ConfigError as e:
        raise UserError(str(e)) from None
    except Exception as e:  # yaml.YAMLError and friends: show the first line only
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read config {config}: {msg}") from None


# what a resumed run does not take from the recorded arguments: where to resume from and where to write (the run's
# own folder), and the initial weights (the resumed checkpoint has them)
_NOT_RESUMED = frozenset({"resume", "config", "config_label", "experiment", "output", "initial_checkpoint"})


def _resumed_base(resume: str) -> tuple[dict[str, Any], str]:
    """The recorded arguments of the run ``resume`` names (a checkpoint or a run folder), as the base config."""
    from ..checkpoint import recorded_args
    from .saver import load_resume

    path, ck = load_resume(resume)
    rec = recorded_args(ck)
    if not rec:
        raise UserError(f"--resume {path}: the checkpoint records no training arguments; repeat the run's flags "
                        "(or pass -c CONFIG)")
    return {k: v for k, v in rec.items() if k not in _NOT_RESUMED}, f"resumed run {path}"


def ignored_key_warnings(cfg: dict[str, Any]) -> list[str]:
    """One warning line per config key the official train.py silently ignored."""
    lines = []
    for key in inert_keys(cfg):
        hint = _INERT_HINTS.get(key, "it is not an option of the official train.py" if "-" in key or key not in
                                official_defaults() else "the official code never uses its value")
        lines.append(f"warning: config key {key!r} is ignored, as in the official train.py ({hint})")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` the official way; returns ``(args, warnings)``. Raises UserError on bad input."""
    argv = list(argv) if argv is not None else None
    pre = _Parser(add_help=False)
    pre.add_argument("-c", "--config")
    pre.add_argument("--dataset", "-d")
    pre.add_argument("--resume")
    known, _ = pre.parse_known_args(argv)
    # resuming without -c rebuilds the run from what it recorded; explicit flags still win (with a warning)
    resumed = bool(known.resume) and known.config is None
    cfg, label = _resumed_base(known.resume) if resumed else _load_base(known.config, known.dataset)

    parser = build_parser()
    parser.set_defaults(**cfg)  # the official mechanism: unknown keys land on the namespace unread
    args = parser.parse_args(argv)
    typed = vars(build_parser(suppress=True).parse_args(argv))
    args.config_label = label
    warnings = ignored_key_warnings(cfg) if known.config is not None else []
    # flags typed on the command line that the official code ignores (e.g. --drop-path 0.1)
    official = official_defaults()
    for key in inert_keys({k: v for k, v in typed.items() if k in official and k not in cfg}):
        warnings.append(f"warning: option --{key.replace('_', '-')} has no effect, as in the official train.py")
    if resumed:
        for key, value in typed.items():
            if key in cfg and cfg[key] != value:
                warnings.append(f"warning: --{key.replace('_', '-')} {value!r} overrides the resumed run's recorded "
                                f"{cfg[key]!r}")
    _validate(args)
    return args, warnings


def _validate(args: argparse.Namespace) -> None:
    for dest in FLAG_DESTS:
        if not isinstance(getattr(args, dest, False), bool):
            raise UserError(f"config key {dest!r}: expected true or false, got {getattr(args, dest)!r}")
    if not isinstance(args.TET, bool):
        raise UserError(f"config key 'TET': expected true or false, got {args.TET!r}")
    if args.model != "sdt":
        raise UserError(f"--model {args.model!r}: this train.py builds the SDT v1 only ('sdt')")
    if args.pretrained:
        raise UserError("--pretrained: no weights are downloaded; pass --initial-checkpoint FILE instead")
    if args.apex_amp:
        raise UserError("--apex-amp: Apex is not supported; use --amp (native torch AMP)")
    if args.aug_splits or args.jsd:
        raise UserError("--aug-splits/--jsd (AugMix splits) are not supported by this train.py")
    if args.bce_loss:
        raise UserError("--bce-loss is not supported (no official config enables it)")
    if args.dim is None:
        raise UserError("config key 'dim' is missing (the embedding width; the official train.py has no default)")
    for key in ("batch_size", "val_batch_size", "epochs"):
        if not isinstance(getattr(args, key), int) or getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)!r}")
    if args.data_dir == "":
        args.data_dir = None
