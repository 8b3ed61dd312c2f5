"""Training throughput (images/s) of CIFAR SDT 2-256, T=4: our LIF vs SpikingJelly's stock LIF, in one run.

    python bench/train_step.py                     # CPU, batch 32 (a few minutes on 2 cores)
    python bench/train_step.py --device cuda       # GPU variant; add --ours cupy for our CuPy kernel, --amp for fp16

One full training step = forward, cross-entropy, backward, AdamW step, on synthetic 32x32 images (throughput does not
depend on pixel values). Both backends run on the same model instance with the same weights, in alternating rounds,
and the median per backend is reported, so machine noise hits both alike. Prints one JSON line; the last field is the
ratio ours / SpikingJelly (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdt  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, opt, x, y, steps: int, amp: bool) -> float:
    """Seconds for ``steps`` training steps."""
    device = x.device
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", default="cifar10_2_256")
    p.add_argument("-T", type=int, default=4)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=1, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ours", default="torch", choices=("torch", "cupy"), help="our neuron backend")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = sdt.create_model(args.config, T=args.T).to(device).train()
    cfg = model.model_config
    x = torch.randn(args.batch_size, cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"], device=device)
    y = torch.randint(0, cfg["num_classes"], (args.batch_size,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    backends = {"ours": args.ours, "spikingjelly": "spikingjelly"}
    times: dict[str, list[float]] = {k: [] for k in backends}
    for name, backend in backends.items():  # warm-up (allocations, lazy imports, kernels)
        model.set_neuron_backend(backend)
        time_steps(model, opt, x, y, 1, args.amp)
    for _ in range(args.rounds):
        for name, backend in backends.items():
            model.set_neuron_backend(backend)
            times[name].append(time_steps(model, opt, x, y, args.steps, args.amp))
    ips = {k: args.batch_size * args.steps / statistics.median(v) for k, v in times.items()}
    print(json.dumps({"bench": "train_step", "config": args.config, "T": args.T, "batch": args.batch_size,
                      "device": str(device), "threads": torch.get_num_threads(), "amp": args.amp,
                      "ours_backend": args.ours, "ours_img_s": round(ips["ours"], 2),
                      "spikingjelly_img_s": round(ips["spikingjelly"], 2),
                      "ratio_ours_over_spikingjelly": round(ips["ours"] / ips["spikingjelly"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
