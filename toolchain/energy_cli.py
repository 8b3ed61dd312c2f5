"""``sdt-energy``: count every operation of a trained SDT on real inputs and write an energy report (estimates).

    sdt-energy output/train/<run>/model_best.pth.tar                       # the data set recorded in the checkpoint
    sdt-energy model.pth.tar --data digits --samples 200 -o energy_digits
    sdt-energy model.pth.tar --data cifar10 --data-dir ./data --integer    # spikes of the integer network
    sdt-energy model.intnet.npz                                            # a saved integer network (implies --integer)

Writes ``DIR/energy.json`` (per layer, per step, per sample), ``energy.md`` and ``energy.html`` with PNG plots. The
folder is written as a whole: on any error nothing is left behind. See docs/energy.md for the method.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from sdt.errors import ArgumentParser, UserError, cpu_cli

from .quant_options import add_quant_args, quant_config


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sdt-energy", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("checkpoint", metavar="INPUT", help="a checkpoint file (ours or official) or an integer network (.intnet.npz)")
    a("--data", "-d", help="data set name (default: the one recorded in the checkpoint)")
    a("--data-dir", help="data folder (default: the one recorded in the checkpoint; digits/mnist/fashion need none)")
    a("--split", default="test", help="test/val or train")
    a("--samples", "-n", type=int, default=100, help="count the first N samples (0: all)")
    a("-b", "--batch-size", type=int, default=32)
    a("-o", "--output", help="report folder (default: <checkpoint>.energy, <name>.intnet.energy for a network file, "
      "beside the input)")
    a("--integer", action="store_true", help="count the spikes of the integer network (reference executor) instead "
      "of the float model: the network sdt-deploy runs, quantised with the same flags")
    a("--access-bits", type=int, choices=(64, 32), default=64,
      help="apply Horowitz's SRAM figures per 64-bit access (strict) or per 32-bit word (SpikingJelly's Lemaire)")
    a("--conv-input-every-step", action="store_true",
      help="count the first conv on a repeated static image at every step (default: once, as deployed)")
    a("--use-ema", action="store_true", help="use state_dict_ema")
    a("--no-progress", action="store_true", help="no progress bars")
    add_quant_args(p)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 0:
        raise UserError(f"--samples must be >= 0, got {args.samples}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    from sdt.data import DatasetNotFoundError, canonical_name, create_dataset, dataset_info

    from deploy.energy import EnergyCounter, analyze, write_report
    from deploy.energy.run import count_float, count_integer, integer_weight_masks, take_batches

    from .pipeline import INTNET, load

    ckpt_path = Path(args.checkpoint)
    # default report names differ per input kind: a checkpoint's and its network's reports never collide
    stem = ckpt_path.name.removesuffix(".npz") if ckpt_path.name.endswith(".intnet.npz") else \
        ckpt_path.name.split(".pth")[0]
    out = Path(args.output) if args.output else ckpt_path.with_name(stem + ".energy")
    src = load(ckpt_path, args.data, use_ema=args.use_ema, strict=False)
    integer = args.integer or src.kind == INTNET
    cfg = src.model_config
    rec = src.recorded
    name = args.data or src.dataset
    if not name:
        raise UserError(f"{ckpt_path} records no data set; pass --data NAME")
    try:
        name = canonical_name(str(name))
    except ValueError as e:
        raise UserError(str(e)) from None
    info = dataset_info(name)
    if info.in_channels != cfg["in_channels"]:
        raise UserError(f"data set {name} has {info.in_channels} input channel(s), the model expects "
                        f"{cfg['in_channels']}; pass the --data it was trained on")
    root = args.data_dir if args.data_dir is not None else (rec.get("data_dir") if info.needs_root else None)
    try:
        ds = create_dataset(name, root, args.split, img_size=cfg["img_size_h"], T=cfg["T"])
    except (DatasetNotFoundError, ValueError, TypeError) as e:
        raise UserError(f"cannot load data set {name}: {e}") from None
    n = len(ds) if args.samples == 0 else min(args.samples, len(ds))
    if n == 0:
        raise UserError(f"data set {name} ({args.split}) is empty")
    batches = take_batches(ds, n, args.batch_size)
    total = -(-n // args.batch_size)
    progress = not args.no_progress
    t0 = time.perf_counter()
    if integer:
        # the network sdt-deploy runs: the saved one, or the checkpoint quantised with the same flags and grid
        src.dataset = src.dataset or name
        net, _ = src.network(quant_config(args), data_dir=root)
        graph = src.structure_graph()
        # effective ACs over the weights the integer network keeps (an 8-bit weight can round to 0)
        counter = EnergyCounter(graph, static_input_once=not args.conv_input_every_step,
                                weight_masks=integer_weight_masks(net, graph))
        counts, timing = count_integer(net, graph, counter, batches, total=total, progress=progress)
    else:
        graph = src.graph()
        counter = EnergyCounter(graph, static_input_once=not args.conv_input_every_step)
        counts, timing = count_float(graph, counter, batches, total=total, progress=progress)
    meta = {"checkpoint": str(ckpt_path), "data": f"{name} ({args.split}, first {n})", "dataset": name,
            "split": args.split, "mode": "integer network (reference executor)" if integer else "float graph",
            "model_config": cfg, "seconds": round(time.perf_counter() - t0, 3), **timing}
    doc = analyze(counter, counts, access_bits=args.access_bits, meta=meta)
    write_report(doc, out)
    c = doc["comparison"]
    print(f"{name} {args.split}: {n} samples, mean firing rate {doc['mean_firing_rate']:.4f}; per sample (estimates): "
          f"paper {c['paper']['snn_pj'] / 1e6:.4g} µJ, int {c['int']['snn_pj'] / 1e6:.4g} µJ, int+mem "
          f"{c['int_mem']['snn_pj'] / 1e6:.4g} µJ -> {out}")
    return 0


main = cpu_cli(run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
