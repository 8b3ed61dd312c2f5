"""Forward and forward+backward time of the LIF backends, against the torch loop measured in the same run.

    python bench/lif_backends.py                  # CUDA if present (plus a larger size there), else CPU
    python bench/lif_backends.py --device cpu --plif --neurons 65536

Rows: the torch reference loop, the torch mirror of the kernel's hand-written BPTT, SpikingJelly 2.0's
``LIFNode(step_mode='m')`` (through sdt's wrapper, same configuration) and the fused cupy kernel (CUDA only; otherwise
the row says why it is unavailable). Every row is also checked against the torch loop: spikes bit-for-bit, dL/dX
as the largest absolute difference.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sdt import lif_cupy  # noqa: E402
from sdt.neurons import MultiStepLIF, MultiStepPLIF  # noqa: E402

CPU_SIZES = [32 * 256 * 8 * 8]                       # SDT-like layer: batch 32, 256 channels, 8x8 tokens
GPU_SIZES = [32 * 256 * 8 * 8, 128 * 384 * 14 * 14]  # ... and an ImageNet-8-384-like layer, batch 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_blocks(fns: dict[str, Callable[[], object]], device: torch.device, passes: int,
                 budget_s: float) -> dict[str, float]:
    """Seconds per call of each fn: the best, over ``passes`` passes through all fns, of the median of a block of calls.

    Each block starts with warm-up calls: kernel compilation, first-call setup and, on CPU, the allocator (the first
    large-tensor calls were seen to run up to ~50x slower). Blocks rather than interleaved calls keep each backend's
    allocation pattern warm; several passes and the best median damp the load other processes put on a shared machine.
    """
    per_block = budget_s / max(1, passes * len(fns))
    best: dict[str, float] = {}
    for _ in range(passes):
        for k, fn in fns.items():
            for _ in range(3):
                fn()
            _sync(device)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 3 or (time.perf_counter() - start < per_block and len(times) < 100):
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
            best[k] = min(best.get(k, float("inf")), statistics.median(times))
    return best


def _backends(device: torch.device, plif: bool) -> dict[str, Callable[[torch.Tensor], torch.Tensor] | str]:
    """name -> spikes function of x, or the reason it cannot run here."""
    cls = MultiStepPLIF if plif else MultiStepLIF
    torch_node = cls(backend="torch").to(device)
    decay = torch_node.decay  # PLIF: sigmoid(w) rebuilt per call, so its grad path is timed too
    rows: dict[str, Callable[[torch.Tensor], torch.Tensor] | str] = {
        "torch loop (reference)": torch_node,
        "torch manual BPTT (kernel mirror)": lambda x: lif_cupy.lif_multistep_manual_bptt(x, decay(), 1.0),
    }
    try:
        import spikingjelly  # noqa: F401

        rows["spikingjelly 2.0 LIFNode(m)"] = cls(backend="spikingjelly").to(device)
    except ImportError as e:
        rows["spikingjelly 2.0 LIFNode(m)"] = f"unavailable: {e}"
    if device.type == "cuda" or not torch.cuda.is_available():
        reason = lif_cupy.cupy_unavailable_reason()
    else:
        reason = "runs on CUDA tensors only (--device cpu)"
    if reason is not None and importlib.util.find_spec("cupy") is None:  # find_spec does not import it
        reason += "; cupy is not installed (gpu extra)"
    if reason is None:
        rows["cupy fused kernel"] = lambda x: lif_cupy.lif_multistep_cupy(x, decay(), 1.0)
    else:
        rows["cupy fused kernel"] = f"unavailable: {reason}"
    return rows


def run(device: torch.device, T: int, n: int, plif: bool, passes: int, budget_s: float) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = (torch.randn(T, n, generator=g) * 1.5 + 0.6).to(device)
    grad = torch.randn(T, n, generator=g).to(device)
    rows = _backends(device, plif)
    runnable = {k: v for k, v in rows.items() if not isinstance(v, str)}
    xs = {k: x0.clone().requires_grad_() for k in runnable}

    def fwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def call() -> None:
            with torch.no_grad():
                fn(x0)
        return call

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
        def call() -> None:
            x.grad = None
            fn(x).backward(grad)
        return call

    t_f = _time_blocks({k: fwd(f) for k, f in runnable.items()}, device, passes, budget_s / 3)
    t_fb = _time_blocks({k: fwd_bwd(f, xs[k]) for k, f in runnable.items()}, device, passes, 2 * budget_s / 3)

    print(f"\n[T={T}, N={n:,}] {'PLIF' if plif else 'LIF'} on {device}  (ms per call, best pass median; x = torch loop / row)")
    header = f"{'backend':36s} {'fwd':>9s} {'x':>6s} {'fwd+bwd':>9s} {'x':>6s}  check vs torch loop"
    print(header)
    print("-" * len(header))
    ref_name = next(iter(runnable))
    ref_s, ref_gx = None, None
    for name, fn in rows.items():
        if isinstance(fn, str):
            print(f"{name:36s} {fn}")
            continue
        x = xs[name]
        x.grad = None
        s = fn(x)
        s.backward(grad)
        if ref_s is None:
            ref_s, ref_gx, check = s.detach(), x.grad.clone(), "reference"
        else:
            same = torch.equal(s.detach(), ref_s)
            check = f"spikes {'identical' if same else 'DIFFER'}, max|dX grad| {(x.grad - ref_gx).abs().max().item():.1e}"
        print(f"{name:36s} {t_f[name] * 1e3:9.2f} {t_f[ref_name] / t_f[name]:6.2f} "
              f"{t_fb[name] * 1e3:9.2f} {t_fb[ref_name] / t_fb[name]:6.2f}  {check}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--neurons", type=int, nargs="*", help="neurons per step (default: 524288; on CUDA also 9633792)")
    p.add_argument("--plif", action="store_true", help="parametric LIF (decay = sigmoid(w), learnable)")
    p.add_argument("--passes", type=int, default=2, help="passes through all backends; the best is kept")
    p.add_argument("--budget", type=float, default=12.0, help="seconds of timed calls per size (about)")
    a = p.parse_args(argv)
    use_cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    where = torch.cuda.get_device_name(device) if use_cuda else "CPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
          f"load average {load:.1f}" + ("" if use_cuda else " (CPU timings are only as steady as that load)"))
    for n in a.neurons or (GPU_SIZES if use_cuda else CPU_SIZES):
        run(device, a.T, n, a.plif, a.passes, a.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
