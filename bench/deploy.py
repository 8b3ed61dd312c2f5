"""Deployment benchmark: integer executor vs the float model, Lava compile / per-sample time, Lava leak check.

    python bench/deploy.py                 # everything (a few minutes on 2 cores)
    python bench/deploy.py --skip-lava     # executor row only
    python bench/deploy.py --lava-samples 100 --batch 32

Rows (every ratio is against a baseline measured in the same run, interleaved, median of repeats):
1. integer reference executor images/s vs the float PyTorch model images/s on CIFAR 2-256 (random weights, T=4,
   CPU), the network quantised by ``deploy.quantize`` (time and size printed). Target >= 1.0x.
2. Lava (``Loihi2SimCfg(select_tag='fixed_pt')``, CPU) compile time and per-sample time for the tiny SDT
   (1 block, 32 dims, 16x16, T=4). Targets <= 15 s compile, <= 2 s per sample.
3. N consecutive Lava samples (single and pipelined calls alternating): child processes, /dev/shm entries and open
   fds before / after (must not grow), and which Lava processes had to be killed (none should).
Like ``sdt-deploy``, the bench pins glibc's allocator thresholds (``--malloc default`` to leave glibc's own regime,
under which both sides of row 1 lose 7-15 % to page faults).
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import sdt  # noqa: E402
from deploy.executor import Executor  # noqa: E402
from deploy.intnet import IntNet  # noqa: E402
from deploy.encoding import encode_input  # noqa: E402
from deploy.quantize import QuantConfig  # noqa: E402
from sdt.malloc import malloc_regime  # noqa: E402
from toolchain.pipeline import load  # noqa: E402


# ----------------------------------------------------------------------------------------------------- timing

def _interleaved(fns: dict[str, Callable[[], object]], reps: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so that machine load hits all rows alike."""
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while min(len(v) for v in times.values()) < reps or (time.perf_counter() - start < budget_s
                                                         and min(len(v) for v in times.values()) < 50):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _intnet_for(model: torch.nn.Module, x: torch.Tensor,
                weight_terms: int = 2) -> tuple[IntNet, np.ndarray, dict[str, Any]]:
    """The quantiser's IntNet (``sdt-export --to lava`` defaults), the encoded input, and how long quantising took."""
    t0 = time.perf_counter()
    net, _ = load(model).network(QuantConfig(weight_terms=weight_terms), calib=x[:16])
    info = {"quantize_s": time.perf_counter() - t0, "weights": net.metadata["quantization"]["weights_nonzero"],
            "synapses": len(net.synapses), "populations": len(net.populations)}
    return net, encode_input(net, x), info


def bench_executor(batch: int, reps: int, budget_s: float, weight_terms: int) -> None:
    torch.manual_seed(0)
    model = sdt.create_model("cifar10_2_256").eval()
    cfg = dict(model.model_config)
    x = torch.rand(batch, 3, cfg["img_size_h"], cfg["img_size_w"])
    net, x_int, info = _intnet_for(model, x, weight_terms)
    ex = Executor(net)
    with torch.inference_mode():
        med = _interleaved({"float": lambda: model(x), "int": lambda: ex.run(x_int)}, reps, budget_s)
    ex.close()
    f_ips, i_ips = batch / med["float"], batch / med["int"]
    print(f"\n[1] CIFAR 2-256 (random weights), T={cfg['T']}, batch {batch}, {torch.get_num_threads()} threads; "
          f"weight_terms={weight_terms}")
    print(f"    quantise: {info['quantize_s']:.1f} s, {info['populations']} populations, {info['synapses']} synapses, "
          f"{info['weights']:,} non-zero 8-bit weights")
    print(f"    float PyTorch model     {f_ips:8.1f} images/s   (baseline)")
    print(f"    integer executor        {i_ips:8.1f} images/s   {i_ips / f_ips:5.2f}x   (target >= 1.0x)")


# ------------------------------------------------------------------------------------------------------- Lava

def _tiny_intnet(samples: int) -> tuple[IntNet, np.ndarray]:
    """The tiny SDT (1 block, 32 dims, 16x16, T=4) as an IntNet plus encoded inputs."""
    from tests.conftest import tiny_model

    model = tiny_model()
    x = torch.rand(samples, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    net, x_int, _ = _intnet_for(model, x)
    return net, x_int


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def bench_lava(samples: int) -> None:
    from deploy.executor import run_intnet
    from deploy.lava_host import child_pids, shm_entries
    from deploy.lava_net import LavaRunner

    net, xs = _tiny_intnet(max(samples, 10))
    print(f"\n[2] Lava fixed_pt on CPU, tiny SDT (1 block, 32 dims, 16x16, T={net.T}), quantised by deploy.quantize")
    ref = run_intnet(net, xs[:10], record="all")
    with LavaRunner(net, record="all") as r:
        one = [r.run(xs[k]) for k in range(3)]  # one sample at a time: each drains the pipeline (T + L steps)
        t0 = time.perf_counter()
        many = r.run_many(xs[3:10])  # back to back: one sample every T steps
        t_many = (time.perf_counter() - t0) / 7
        t_one = statistics.median(r.sample_times[1:3])
        exact = all(np.array_equal(res.outputs[k], ref.outputs[k][:, b]) for b, res in enumerate(one + many)
                    for k in res.outputs) and all(np.array_equal(res.final_v[k], ref.final_v[k][b])
                                                  for b, res in enumerate(one + many) for k in res.final_v)
        print(f"    {r.num_processes} Lava processes, latency L = {r.plan.latency} steps")
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.timings.items())
        print(f"    compile (host start + build + compile + fork): {r.compile_time:6.2f} s   target <= 15 s   ({parts})")
        print(f"    per sample, one at a time ({-(-(net.T + r.plan.latency) // net.T) * net.T} steps):"
              f" {t_one:6.2f} s   target <= 2 s")
        print(f"    per sample, pipelined (run_many, {net.T} steps):   {t_many:6.2f} s")
        print(f"    executor <-> Lava bit-exact on 10 samples, every population and step: {exact}")
    if samples <= 0:
        return
    # leak check: N consecutive samples (10 calls of run_many), counted before / after
    c0, s0, f0 = child_pids(), shm_entries(), _open_fds()
    per_call_fds = []
    t0 = time.perf_counter()
    with LavaRunner(net) as r:
        done = calls = 0
        while done < samples:  # alternate single samples (run) and pipelined batches (run_many)
            k = min(1 if calls % 2 == 0 else 9, samples - done)
            idx = np.arange(done, done + k) % len(xs)
            r.run(xs[idx[0]]) if k == 1 else r.run_many(xs[idx])
            done, calls = done + k, calls + 1
            per_call_fds.append(_open_fds())
    dt = time.perf_counter() - t0
    gc.collect()
    c1, s1, f1 = child_pids(), shm_entries(), _open_fds()
    print(f"\n[3] {samples} consecutive Lava samples ({calls} calls) in {dt:.1f} s (compile included), before -> after:")
    print(f"    child processes {len(c0)} -> {len(c1)}   /dev/shm entries {len(s0)} -> {len(s1)}   "
          f"open fds {f0} -> {f1} (while running: {min(per_call_fds)}..{max(per_call_fds)})   "
          f"Lava processes left: {r.leaks}")
    ok = c1 <= c0 and s1 <= s0 and f1 <= f0 and not r.leaks["alive"]
    print(f"    {'clean' if ok else 'LEAK'}")


# ------------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per timing row")
    ap.add_argument("--weight-terms", type=int, default=2, help="8-bit synapses per connection (quantiser)")
    ap.add_argument("--skip-lava", action="store_true")
    ap.add_argument("--lava-samples", type=int, default=100)
    ap.add_argument("--malloc", choices=("pinned", "default"), default="pinned",
                    help="glibc allocator regime: pinned thresholds as sdt-deploy runs (default; sdt/malloc.py) or "
                         "glibc's own")
    args = ap.parse_args(argv)
    print(f"malloc {malloc_regime(args.malloc)}")
    bench_executor(args.batch, args.reps, args.budget, args.weight_terms)
    if args.skip_lava:
        print("\n[2], [3] skipped (--skip-lava)")
    else:
        bench_lava(args.lava_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
