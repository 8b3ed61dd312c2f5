"""``sdt-deploy``: run an SDT as an integer network (reference executor or Lava) and report float <-> integer agreement.

    sdt-deploy output/train/<run>/model_best.pth.tar                 # quantise on the fly, the run's own test set
    sdt-deploy model.intnet.npz --checkpoint model_best.pth.tar      # a saved network (sdt-export --to lava)
    sdt-deploy model_best.pth.tar --backend lava --samples 16 -o lava.json

INPUT is a checkpoint (quantised on the fly; ``--save-net`` keeps the network) or an integer network file. The float
reference needs the checkpoint (INPUT or ``--checkpoint``); without it only the integer side is reported. The JSON
report holds top-1 agreement, both accuracies, per-layer spike agreement and counts, overflow counters and timings;
it is written atomically once everything ran, never partially.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from deploy.agreement import BACKENDS
from sdt.atomic import refuse_inputs, write_text
from sdt.cli_types import boolean, positive_int
from sdt.errors import ArgumentParser, UserError, cpu_cli

from .quant_options import add_quant_args, quant_config


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sdt-deploy", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("input", help="a checkpoint (.pth/.pth.tar) or an integer network (sdt-export --to lava)")
    a("--backend", default="reference", choices=BACKENDS, help="integer executor")
    a("--data", "--dataset", dest="data", help="data set (default: the one recorded in the checkpoint/network, "
                                                "else digits)")
    a("--data-dir", help="data folder (not needed for digits/fashion/mnist)")
    a("--split", default="test", help="split to evaluate")
    a("--samples", "-n", type=positive_int, help="evaluate the first N samples (default: the whole split)")
    a("-b", "--batch-size", type=positive_int, default=64)
    a("--checkpoint", help="float reference for an integer-network INPUT")
    add_quant_args(p)
    a("--save-net", help="also write the integer network quantised from a checkpoint INPUT")
    a("--float-input", default="original", choices=("original", "encoded"),
      help="what the float reference sees: the data as loaded, or what the integer input represents")
    a("--no-layers", action="store_true", help="skip per-layer spike agreement (faster)")
    a("--output", "-o", help="JSON report (default: <input>.deploy-<backend>.json; <input>.intnet.deploy-<backend>.json "
      "for a network file); never an input")
    a("--threads", type=positive_int, help="torch / executor threads")
    a("--progress", type=boolean, default=True, help="progress bar (true/false)")
    return p


def _dataset(name: str, data_dir: str | None, split: str, size: int, T: int) -> torch.utils.data.Dataset:
    from sdt.data import dataset_info
    from sdt.train.data import build_dataset, canonical_dataset

    name = canonical_dataset(name)
    info = dataset_info(name)
    ns = argparse.Namespace(data_dir=data_dir if (info.needs_root or data_dir) else None, input_size=None,
                            img_size=size, time_steps=T, crop_pct=None, mean=None, std=None)
    return build_dataset(ns, name, split, train=False, size=size)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    src = Path(args.input)
    if not src.is_file():
        raise UserError(f"input not found: {src}; pass a checkpoint or an integer network file")
    if args.backend == "lava" and importlib.util.find_spec("deploy.lava_net") is None:  # fail before any work
        raise UserError("the lava backend needs deploy/lava_net.py, which this installation does not have; "
                        "use --backend reference")
    if args.threads:
        torch.set_num_threads(args.threads)
    from deploy.agreement import compare
    from deploy.intnet import save

    from .pipeline import INTNET, load

    for path, flag in ((args.output, "-o"), (args.save_net, "--save-net")):
        if path:
            refuse_inputs(path, src, args.checkpoint, flag=flag)
    if args.output and args.save_net and Path(args.output).resolve() == Path(args.save_net).resolve():
        raise UserError(f"-o and --save-net both name {args.output}; choose two files")
    src_net = load(src, args.data)
    graph = None
    net = None
    t_q = 0.0
    quant: dict[str, Any] | None = None
    if src_net.kind == INTNET:
        net, _ = src_net.network()
        name = args.data or net.metadata.get("dataset") or "digits"
        in_shape, T = tuple(net.populations[0].shape), net.T
        if args.checkpoint:
            graph = load(args.checkpoint, net.metadata.get("dataset") or args.data).graph()
            if graph.T != net.T or tuple(graph.input.shape) != in_shape:
                raise UserError(f"--checkpoint {args.checkpoint} does not match the network {src} "
                                f"(T {graph.T} vs {net.T}, input {graph.input.shape} vs {in_shape})")
    else:
        if args.checkpoint:
            raise UserError("--checkpoint is for an integer-network INPUT; INPUT is already a checkpoint")
        name = args.data or src_net.dataset or "digits"
        src_net.dataset = name  # the data set evaluated also gives the input grid (the normalisation stays recorded)
        graph = src_net.graph()
        in_shape, T = tuple(graph.input.shape), graph.T
    kind = src_net.kind

    # the data first: a wrong data set fails here, before any quantisation work
    ds = _dataset(name, args.data_dir, args.split, in_shape[-1], T)
    if len(ds) == 0:
        raise UserError(f"dataset {name} ({args.split}) is empty")
    x0 = ds[0][0]
    if tuple(x0.shape[-3:]) != in_shape:
        raise UserError(f"dataset {name} gives inputs of shape {tuple(x0.shape)}, the network takes {in_shape}; "
                        "pass the --data it was trained on")
    if args.samples:
        ds = torch.utils.data.Subset(ds, range(min(args.samples, len(ds))))

    if net is None:
        t0 = time.perf_counter()
        net, quant = src_net.network(quant_config(args), data_dir=args.data_dir)
        t_q = time.perf_counter() - t0
        if args.save_net:
            save(net, args.save_net)

    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=0)
    result = compare(net, loader, graph=graph, backend=args.backend, progress=args.progress, total=len(loader),
                     layers=not args.no_layers, float_input=args.float_input)
    result["timings"]["quantize_s"] = round(t_q, 3)
    result["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
    report: dict[str, Any] = {"input": str(src), "input_kind": kind, "dataset": name, "split": args.split,
                              "encoding": dict(net.encoding), "decode": dict(net.decode), **result}
    if quant is not None:
        report["quantization"] = quant
    if args.save_net:
        report["saved_net"] = str(args.save_net)
    # default report names differ per input kind and backend: a checkpoint's and its network's reports never collide
    stem = src.name.split(".")[0] + (".intnet" if kind == INTNET else "")
    out = Path(args.output) if args.output else src.with_name(f"{stem}.deploy-{args.backend}.json")
    write_text(out, json.dumps(report, indent=1, sort_keys=False) + "\n")
    agree = f"  top1 agreement {result['top1_agreement']:.2f}%" if graph is not None else ""
    ftop = f"  float top1 {result['float_top1']:.2f}" if result.get("float_top1") is not None else ""
    itop = f"  int top1 {result['int_top1']:.2f}" if result.get("int_top1") is not None else ""
    ov = result["overflow"]
    print(f"{name} {args.split} ({args.backend}): {result['samples']} samples{ftop}{itop}{agree}  overflow "
          f"{ov['u_wraps']}+{ov['v_clips']}  -> {out}")
    return 0


main = cpu_cli(run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
