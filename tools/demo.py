"""`make demo`: the main job on an embedded real dataset (scikit-learn digits), no arguments needed.

Current stage: builds a small SDT, runs it on the digits test images and prints a per-layer summary (shape, firing
rate, synaptic parameters). The train -> export -> deploy -> energy pipeline replaces this as those stages land.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import sdt
from sdt.data import create_dataset
from sdt.errors import cli_entry
from sdt.model import is_spike_tensor

DEMO_MODEL = dict(img_size_h=16, img_size_w=16, in_channels=1, num_classes=10, embed_dims=64, num_heads=4,
                  mlp_ratios=4, depths=1, T=4, pooling_stat="0011")


def layer_summary(tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], float | None]]:
    """(name, per-sample shape, firing rate or None for real-valued membrane tensors) per observed tensor."""
    return [(name, tuple(t.shape[2:]), float(t.float().mean()) if is_spike_tensor(name) else None)
            for name, t in tensors.items()]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=256, help="test images to run (default 256)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    ds = create_dataset("digits", split="test", img_size=16)
    n = min(args.samples, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([int(ds[i][1]) for i in range(n)])
    model = sdt.create_model(**DEMO_MODEL).eval()
    with torch.no_grad():
        logits, tensors = sdt.observe(model, x)
    acc = float((logits.argmax(1) == y).float().mean())
    print(f"SDT {DEMO_MODEL['depths']}-{DEMO_MODEL['embed_dims']}, T={DEMO_MODEL['T']}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, digits test images: {n}")
    print(f"{'layer':34s} {'shape (C,H,W)':>16s} {'firing rate':>12s}")
    for name, shape, rate in layer_summary(tensors):
        print(f"{name:34s} {str(shape):>16s} {('%.4f' % rate) if rate is not None else 'membrane':>12s}")
    print(f"untrained top-1 on {n} digits: {100 * acc:.1f}% (chance 10%); {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
