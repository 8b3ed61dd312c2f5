"""``sdt-eval``: top-1/top-5 and per-tensor, per-time-step firing rates of a checkpoint, written as JSON.

    sdt-eval output/train/<run>/model_best.pth.tar                      # the dataset the run trained on
    sdt-eval model_best.pth.tar --dataset imagenet --data-dir /data/imagenet1k --large-valid   # 8-768 @ 288
    sdt-eval official_8_512.pth.tar --dataset imagenet --data-dir ... --output rates.json

The checkpoint alone rebuilds the model (ours store ``model_config``; official ones their training args). The data set
and folder default to those recorded in the checkpoint. ``--large-valid`` is the official 8-768 protocol: resize the
short side to 320, centre-crop 288.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .cli_types import boolean, nonnegative_int, positive_int
from .errors import ArgumentParser, UserError, cpu_cli
from .firing import FiringRates

LARGE_VALID = (288, 320)  # (crop, resize) of firing_num.py --large-valid


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="sdt-eval", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("checkpoint", help="a checkpoint file (ours or official)")
    a("--dataset", "-d", help="data set name (default: the one recorded in the checkpoint)")
    a("--data-dir", help="data folder (default: the one recorded in the checkpoint)")
    a("--split", default="test", help="test/val or train")
    a("-b", "--batch-size", type=positive_int, default=64)
    a("-j", "--workers", type=nonnegative_int, default=0)
    a("--img-size", type=positive_int, help="evaluation crop (default: the model's training size)")
    a("--crop-pct", type=float, help="CIFAR/ImageNet: resize to img_size / crop_pct before the centre crop")
    a("--resize-size", type=positive_int, help="CIFAR/ImageNet: resize the short side to this instead")
    a("--large-valid", action="store_true", help="official 8-768 protocol: resize 320, centre-crop 288")
    a("--limit", type=positive_int, help="evaluate the first N samples only")
    a("--use-ema", action="store_true", help="evaluate state_dict_ema")
    a("--no-firing", action="store_true", help="accuracy only (no hooks)")
    a("--device", default=None, help="cpu or cuda (default: cuda if available)")
    a("--output", "-o", help="JSON file (default: <checkpoint>.eval.json)")
    a("--progress", type=boolean, default=True, help="tqdm bars (true/false)")
    return p


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, firing: bool = True,
             progress: bool = True) -> dict[str, Any]:
    """Loss, top-1/top-5 (%) and, with ``firing``, the :class:`FiringRates` result over ``loader``."""
    from timm.utils import accuracy

    model.eval().to(device)
    rates = FiringRates()
    loss = top1 = top5 = n = 0.0
    for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        x, y = x.to(device), y.to(device)
        hook: dict[str, torch.Tensor] | None = {} if firing else None
        out = model(x, hook=hook)
        if out.dim() == 3:  # TET: [T, B, classes], averaged over T as the official validation does
            out = out.mean(0)
        out = out.float()
        if hook is not None:
            rates.update(hook)
        a1, a5 = accuracy(out, y, topk=(1, min(5, out.shape[-1])))
        b = x.shape[0]
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        top1 += round(float(a1) * b / 100.0)
        top5 += round(float(a5) * b / 100.0)
        n += b
    n = max(n, 1.0)
    result: dict[str, Any] = {"samples": int(n), "loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}
    if firing:
        result["firing_rates"] = rates.result()
    return result


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .atomic import refuse_inputs
    from .checkpoint import model_from_checkpoint, read_checkpoint, recorded_args
    from .data import dataset_info
    from .train.data import build_dataset, canonical_dataset
    from .train.distributed import pick_device

    ckpt_path = Path(args.checkpoint)
    if args.output:
        refuse_inputs(args.output, ckpt_path)
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path, use_ema=args.use_ema)
    cfg = model.model_config
    rec = recorded_args(ckpt)
    name = args.dataset or rec.get("dataset")
    if not name:
        raise UserError(f"{ckpt_path} records no dataset; pass --dataset NAME")
    name = canonical_dataset(str(name))
    info = dataset_info(name)
    if info.in_channels != cfg["in_channels"]:
        raise UserError(f"dataset {name} has {info.in_channels} input channel(s), the model expects "
                        f"{cfg['in_channels']}; pass the --dataset it was trained on")
    size, resize = args.img_size or cfg["img_size_h"], args.resize_size
    if args.large_valid:
        if name not in ("cifar10", "cifar100", "imagenet"):
            raise UserError(f"--large-valid (resize 320, crop 288) applies to image folders; {name} has no such "
                            "protocol")
        size, resize = LARGE_VALID
    if resize is not None and name not in ("cifar10", "cifar100", "imagenet"):
        raise UserError(f"--resize-size applies to cifar10/cifar100/imagenet, not {name}")
    data_dir = args.data_dir if args.data_dir is not None else (rec.get("data_dir") or None)
    ns = argparse.Namespace(data_dir=data_dir if info.needs_root or args.data_dir else None, input_size=None,
                            img_size=size, time_steps=cfg["T"], crop_pct=args.crop_pct, mean=None, std=None)
    ds = build_dataset(ns, name, args.split, train=False, size=size, resize_size=resize)
    if args.limit:
        ds = torch.utils.data.Subset(ds, range(min(args.limit, len(ds))))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    device = pick_device(args.device, 0)
    t0 = time.time()
    result = evaluate(model, loader, device, firing=not args.no_firing, progress=args.progress)
    report = {"checkpoint": str(ckpt_path), "dataset": name, "split": args.split, "img_size": size,
              "resize_size": resize, "large_valid": bool(args.large_valid), "use_ema": bool(args.use_ema),
              "model_config": cfg, "seconds": round(time.time() - t0, 3), **result}
    out = Path(args.output) if args.output else ckpt_path.with_name(ckpt_path.name.split(".pth")[0] + ".eval.json")
    from .atomic import write_text

    write_text(out, json.dumps(report, indent=1) + "\n")
    print(f"{name} {args.split}: {result['samples']} samples  top1 {result['top1']:.2f}  top5 {result['top5']:.2f}  "
          f"loss {result['loss']:.4f}  -> {out}")
    return 0


main = cpu_cli(run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
