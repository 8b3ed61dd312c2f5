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
from typing import Any, Sequence

from sdt.atomic import atomic_path
from sdt.errors import ArgumentParser, UserError, cli_entry

FORMATS = {"nir": ".nir", "onnx": ".onnx", "lava": ".intnet.npz"}
CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".ckpt", ".bin")


class ValidationFailed(Exception):
    """The exported file does not reproduce the model (not a usage error: exit status 1)."""


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.replace("``", "")
    p = ArgumentParser(prog="sdt-export", description=doc.split("\n\n", 1)[0], epilog=doc.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("checkpoint", help="a checkpoint file (official timm format or ours)")
    a("--to", required=True, choices=sorted(FORMATS), help="output format")
    a("-o", "--output", help="output file (default: next to the checkpoint, suffix .nir / .onnx / .intnet.npz)")
    a("--validate", type=int, default=0, metavar="N",
      help="check the file against the PyTorch model on N random inputs; nothing is written if it fails")
    a("--spikes", action="store_true", help="onnx: expose every spike tensor as an extra output [T, B, ...]")
    a("--fold-bn", action="store_true", help="nir/onnx: fold BatchNorm into the conv weights (float rounding then "
                                             "differs from the model)")
    a("--strict", action="store_true", help="validation accepts no spike flip, not even at a float rounding tie")
    a("--seed", type=int, default=0, help="seed of the validation inputs (default: 0)")
    a("--batch-size", type=int, default=None, help="validation batch (default: sized to ~1.5 GB of tensors)")
    a("--use-ema", action="store_true", help="nir/onnx: export the checkpoint's state_dict_ema")
    return p


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``dir/model_best.pth.tar`` -> ``dir/model_best<suffix>`` (known checkpoint suffixes stripped)."""
    name = checkpoint.name
    while True:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in CHECKPOINT_SUFFIXES or not stem:
            break
        name = stem
    return checkpoint.with_name(name + FORMATS[fmt])


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


def _export_graph_format(args: argparse.Namespace, ckpt: Path, out: Path) -> tuple[str, str | None]:
    """NIR / ONNX: returns (summary line, validation line or None)."""
    from deploy.quantize import load_model_and_normalization
    from .from_model import build_graph
    from .onnx_writer import graph_stats

    t0 = time.perf_counter()
    # the input normalisation of the checkpoint's data set, found as --to lava finds it, goes into the file's
    # metadata (the model still takes normalised input)
    model, norm, _ = load_model_and_normalization(ckpt, use_ema=args.use_ema, strict=False)
    graph = build_graph(model, normalization=norm)
    stats = graph_stats(graph)
    try:
        detail, size, t_written, check = _write_and_check(args, graph, model, out)
    except OSError as e:  # e.g. the disk filled up mid-write; atomic_path has removed the partial file
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    elapsed = t_written - t0  # load + graph + write; the validation line reports its own time
    line = (f"sdt-export: {ckpt.name} -> {out} ({detail}): {stats['nodes']} nodes, {stats['edges']} edges, "
            f"{stats['parameters']:,} parameters, {_size(size)}, {elapsed:.1f} s")
    return line, check


def _write_and_check(args: argparse.Namespace, graph: Any, model: Any, out: Path
                     ) -> tuple[str, int, float, str | None]:
    """Write to a temporary file next to ``out``, validate it if asked, then move it in place.
    Returns (format detail, bytes, clock when written, validation line)."""
    check = None
    with atomic_path(out) as tmp:
        if args.to == "onnx":
            from .onnx_writer import write_onnx

            info = write_onnx(graph, tmp, spikes=args.spikes, fold_bn=args.fold_bn)
            detail = f"ONNX opset {info.opset}, {info.ops} ops, {len(info.outputs)} output(s)"
        else:
            from .nir_writer import write_nir

            write_nir(graph, tmp, fold_bn=args.fold_bn)
            detail = "NIR"
        size = tmp.stat().st_size
        t_written = time.perf_counter()
        if args.validate:
            report = _validate(args, tmp, model, graph)
            check = report.line()
            if not report.passed:
                raise ValidationFailed(check)
    return detail, size, t_written, check


def _validate(args: argparse.Namespace, path: Path, model: Any, graph: Any) -> Any:
    from .onnx_writer import ATOL, spike_nodes, validate_against_model, validate_onnx

    if args.to == "onnx":
        return validate_onnx(path, model, args.validate, graph=graph, seed=args.seed, batch_size=args.batch_size,
                             strict=args.strict)
    from .nir_reader import read_nir
    from .onnx_writer import random_inputs

    program = read_nir(path)
    _, probe = program.run(random_inputs(graph, 1, args.seed), record=True)
    nodes = [n for n in spike_nodes(graph) if n in probe]  # the spike tensors the NIR runner names
    del probe
    # the NIR file reproduces the model bit for bit unless BN is folded: then rounding ties are possible
    exact = not args.fold_bn
    return validate_against_model(lambda x: program.run(x, record=True), graph, model, args.validate,
                                  label="NIR runner", nodes=nodes, seed=args.seed, batch_size=args.batch_size,
                                  atol=0.0 if exact else ATOL, strict=exact or args.strict)


def _export_lava(args: argparse.Namespace, ckpt: Path, out: Path) -> tuple[str, str | None]:
    try:
        from deploy.quantize import export_lava
    except ImportError as e:
        raise UserError(f"--to lava needs deploy.quantize.export_lava, which this installation lacks ({e})") from None
    calib = None
    if args.validate:
        import sdt
        from .from_model import build_graph
        from .onnx_writer import random_inputs

        calib = random_inputs(build_graph(sdt.load_checkpoint(ckpt)), args.validate, args.seed)
    # the integer writer picks its own format by suffix: write a sibling with the same suffix, move it in place
    # only after the (optional) check, so a failure leaves no file
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{FORMATS['lava']}")
    t0 = time.perf_counter()
    try:
        summary = export_lava(str(ckpt), tmp, calib=calib)
        elapsed = time.perf_counter() - t0
        check = None
        if args.validate:
            cal = summary.get("calibration") or {}
            over = cal.get("overflow", {})
            wraps = int(over.get("u_wraps", 0)) + int(over.get("v_clips", 0))
            check = (f"integer network vs float graph on {cal.get('samples', args.validate)} inputs: top-1 agreement "
                     f"{cal.get('top1_agreement')}%, overflow events {wraps}")
            if wraps:  # the deployment contract: counters must read 0
                raise ValidationFailed(check)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    counts = ", ".join(f"{summary[k]:,} {label}" for k, label in (("populations", "populations (nodes)"),
                       ("synapses", "synapses (edges)"), ("weights_nonzero", "nonzero integer weights"))
                       if isinstance(summary.get(k), int))
    line = (f"sdt-export: {ckpt.name} -> {out} ({summary.get('format', 'intnet')}, T={summary.get('T')}): "
            f"{counts + ', ' if counts else ''}{_size(out.stat().st_size)}, {elapsed:.1f} s")
    return line, check


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
    if not ckpt.is_file():
        raise UserError(f"checkpoint not found: {ckpt}; pass the path of a .pth/.pth.tar file")
    out = Path(args.output) if args.output else default_output(ckpt, args.to)
    check_output(out, ckpt)
    try:
        line, check = (_export_lava if args.to == "lava" else _export_graph_format)(args, ckpt, out)
    except ValidationFailed as e:
        print(f"error: validation failed, nothing written: {e}", file=sys.stderr)
        return 1
    print(line)
    if check:
        print(check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
