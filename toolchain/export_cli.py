"""``sdt-export``: a checkpoint (official or ours) to NIR, ONNX or the integer (Lava) network, optionally validated.

    sdt-export model_best.pth.tar --to nir                       # -> model_best.nir, next to the checkpoint
    sdt-export model_best.pth.tar --to onnx --validate 100       # -> model_best.onnx, onnxruntime vs PyTorch
    sdt-export ours.pth --to onnx --spikes -o out/sdt.onnx       # spike tensors as extra outputs
    sdt-export model_best.pth.tar --to lava                      # -> model_best.intnet.npz (deploy.quantize)

The checkpoint alone rebuilds the model. Every format records in its metadata the input normalisation (mean/std) of
the data set the checkpoint was trained on, where that data set normalises (CIFAR, ImageNet; else null): the model
takes normalised input. One summary line goes to stdout (graph nodes, edges, parameters, file size, time).
``--validate N`` runs the format's equality check on N random inputs before the file is put in place: if it
fails, nothing is written and the exit status is 1. Bad input (missing or corrupt checkpoint, unknown format, an
output that cannot be written) prints one ``error:`` line and exits with status 2, leaving no file behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from sdt.atomic import atomic_path
from sdt.errors import ArgumentParser, UserError, cli_entry

from .quant_options import add_quant_args, quant_options_set
from .targets import TARGETS

CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin")


class ValidationFailed(Exception):
    """The exported file does not reproduce the model (not a usage error: exit status 1)."""


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.replace("``", "")
    p = ArgumentParser(prog="sdt-export", description=doc.split("\n\n", 1)[0], epilog=doc.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", help="a checkpoint file (official timm format or ours)")
    a("--to", required=True, choices=sorted(TARGETS), help="output format")
    a("-o", "--output", help="output file (default: next to the checkpoint, suffix "
      f"{' / '.join(t.suffix for t in TARGETS.values())})")
    a("--validate", type=int, default=0, metavar="N",
      help="check the file against the PyTorch model on N random inputs; nothing is written if it fails")
    a("--spikes", action="store_true", help="onnx: expose every spike tensor as an extra output [T, B, ...]")
    a("--fold-bn", action="store_true", help="nir/onnx: fold BatchNorm into the conv weights (float rounding then "
                                             "differs from the model)")
    a("--strict", action="store_true", help="validation accepts no spike flip, not even at a float rounding tie")
    a("--seed", type=int, default=0, help="seed of the validation inputs (default: 0)")
    a("--batch-size", type=int, default=None, help="validation batch (default: sized to ~1.5 GB of tensors)")
    a("--use-ema", action="store_true", help="nir/onnx: export the checkpoint's state_dict_ema")
    add_quant_args(p)
    return p


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``dir/model_best.pth.tar`` -> ``dir/model_best<suffix>`` (known checkpoint suffixes stripped)."""
    name = checkpoint.name
    while True:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in CHECKPOINT_SUFFIXES or not stem:
            break
        name = stem
    return checkpoint.with_name(name + TARGETS[fmt].suffix)


def check_output(out: Path, checkpoint: Path) -> None:
    """Refuse, before any work, an output that cannot be written or would replace the checkpoint."""
    if out.is_dir():
        raise UserError(f"output {out} is a directory; pass a file name with -o")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UserError(f"cannot write {out}: {parent} {what}; choose an existing folder with -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: folder {parent} is not writable; choose another -o")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise UserError(f"output {out} is the checkpoint itself; choose another -o")


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def export(args: argparse.Namespace, ckpt: Path, out: Path) -> tuple[str, str | None]:
    """Load through the pipeline, write the target to a temporary file next to ``out``, validate it if asked, then
    move it in place. Returns (summary line, validation line or None)."""
    from .pipeline import load

    target = TARGETS[args.to]
    t0 = time.perf_counter()
    # the input normalisation of the checkpoint's data set goes into the file's metadata (the model still takes
    # normalised input); an unknown data set only leaves it unknown, except for the integer network, which needs it
    src = load(ckpt, use_ema=args.use_ema, strict=args.to == "lava")
    check = None
    try:
        with atomic_path(out) as tmp:
            detail, counts = target.write(src, tmp, args)
            size = tmp.stat().st_size
            elapsed = time.perf_counter() - t0  # load + graph + write; the validation line reports its own time
            if args.validate:
                passed, check = target.validate(src, tmp, args)
                if not passed:
                    raise ValidationFailed(check)
    except OSError as e:  # e.g. the disk filled up mid-write; atomic_path has removed the partial file
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return f"sdt-export: {ckpt.name} -> {out} ({detail}): {counts}, {_size(size)}, {elapsed:.1f} s", check


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = Path(args.checkpoint)
    if args.validate < 0:
        raise UserError(f"--validate needs a number of inputs >= 0, got {args.validate}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.to == "lava" and (args.spikes or args.fold_bn or args.use_ema):
        raise UserError("--spikes, --fold-bn and --use-ema apply to --to nir/onnx only")
    if args.spikes and args.to != "onnx":
        raise UserError("--spikes applies to --to onnx only")
    if args.to != "lava" and quant_options_set(args):
        raise UserError(f"{', '.join(quant_options_set(args))}: quantiser options, for --to lava only")
    if not ckpt.is_file():
        raise UserError(f"checkpoint not found: {ckpt}; pass the path of a .pth/.pth.tar file")
    out = Path(args.output) if args.output else default_output(ckpt, args.to)
    check_output(out, ckpt)
    try:
        line, check = export(args, ckpt, out)
    except ValidationFailed as e:
        print(f"error: validation failed, nothing written: {e}", file=sys.stderr)
        return 1
    print(line)
    if check:
        print(check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
