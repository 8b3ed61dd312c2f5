"""Export benchmark: time, peak RSS and file size of writing ImageNet 8-768 (random weights) to NIR and to ONNX.

    python bench/export.py                          # ImageNet 8-768, both formats
    python bench/export.py --config cifar10_2_512   # any named config
    python bench/export.py --formats nir --keep out/

Each format runs in its own child process, so its peak RSS is measured alone (``os.wait4``: the per-child form of
``getrusage(RUSAGE_CHILDREN)``); it includes building the model. The model is built on the meta device and then
materialised once with random values, so no memory goes to a second copy or to the official init. Timed separately:
``build_graph(model)`` and the write (``write_nir`` / ``write_onnx``). The model is dropped before the write, as
``sdt-export`` could; the graph holds its own copy of the weights.

Times are wall-clock (the targets' measure) plus the CPU seconds of build_graph + write, which say more on a
shared machine. Targets (issue): NIR build + write <= 5 s; peak RSS <= 2 GB; file <= 1.1x the fp32 parameter bytes (RSS and size are
also reported against the targets for ONNX, which has no time target).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

TARGET_NIR_S = 5.0
TARGET_RSS = 2e9
TARGET_RATIO = 1.1


def _rss_so_far() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def random_model(config: str, seed: int = 0) -> Any:
    """The named config with random weights, each tensor allocated once (meta device, then filled in place)."""
    import torch

    import sdt

    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = sdt.create_model(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                t.uniform_(0.5, 1.5, generator=g)
            elif leaf == "running_mean":
                t.normal_(0.0, 0.1, generator=g)
            elif leaf == "num_batches_tracked":
                t.zero_()
            elif t.dim() == 1 and "bn" in name:
                t.uniform_(0.5, 1.5, generator=g) if leaf == "weight" else t.normal_(0.0, 0.1, generator=g)
            elif leaf == "w":  # PLIF: sigmoid(w) = 0.5
                t.zero_()
            else:  # conv / linear weights and biases: the official init scale
                t.normal_(0.0, 0.02, generator=g)
    return model.eval()


def child(fmt: str, config: str, out: Path) -> dict[str, Any]:
    """Build the model, time build_graph and the write, report sizes (runs inside the measured process)."""
    import torch

    from export.from_model import build_graph

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = random_model(config)
    t_model = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    rss_model = _rss_so_far()
    t0, c0 = time.perf_counter(), time.process_time()
    graph = build_graph(model)
    t_graph = time.perf_counter() - t0
    del model
    gc.collect()
    t0 = time.perf_counter()
    if fmt == "nir":
        from export.nir_writer import write_nir

        write_nir(graph, out)
    else:
        from export.onnx_writer import write_onnx

        write_onnx(graph, out)
    t_write = time.perf_counter() - t0
    cpu = time.process_time() - c0  # CPU seconds of build_graph + write, all threads: robust to a loaded machine
    return {"format": fmt, "model_s": t_model, "graph_s": t_graph, "write_s": t_write, "cpu_s": cpu,
            "parameters": params,
            "param_bytes": 4 * params, "file_bytes": out.stat().st_size, "rss_after_model": rss_model,
            "nodes": len(graph)}


def run_child(fmt: str, config: str, out: Path) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter; adds its peak RSS (bytes) from ``wait4``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", fmt, "--config", config, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True)
    # read both pipes fully before reaping, so the child never blocks on a full pipe
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{fmt} child failed ({proc.returncode}): {stderr.strip().splitlines()[-1:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss"] = usage.ru_maxrss * 1024
    return result


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="imagenet_8_768")
    p.add_argument("--formats", default="nir,onnx")
    p.add_argument("--keep", help="folder to keep the files in (default: a temporary folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.config, Path(args.out))))
        return 0
    tmp = None
    folder = Path(args.keep) if args.keep else Path(tmp := tempfile.mkdtemp(prefix="sdt-bench-export-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            rows.append(run_child(fmt, args.config, folder / f"{args.config}.{fmt}"))
    finally:
        if tmp:
            for f in Path(tmp).iterdir():
                f.unlink()
            os.rmdir(tmp)
    r0 = rows[0]
    print(f"{args.config} (random weights): {r0['parameters'] / 1e6:.1f}M parameters = "
          f"{r0['param_bytes'] / 1e6:.1f} MB fp32, {r0['nodes']} graph nodes; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'format':6} {'model':>7} {'build_graph':>11} {'write':>7} {'graph+write':>11} {'(CPU)':>7} "
          f"{'peak RSS':>9} {'(model only)':>12} {'file':>9} {'file/params':>11}")
    for r in rows:
        total = r["graph_s"] + r["write_s"]
        ratio = r["file_bytes"] / r["param_bytes"]
        print(f"{r['format']:6} {r['model_s']:6.1f}s {r['graph_s']:10.2f}s {r['write_s']:6.2f}s {total:10.2f}s "
              f"{r['cpu_s']:6.1f}s "
              f"{r['peak_rss'] / 1e9:7.2f}GB {r['rss_after_model'] / 1e9:10.2f}GB {r['file_bytes'] / 1e6:7.1f}MB "
              f"{ratio:10.3f}x")
    for r in rows:
        total = r["graph_s"] + r["write_s"]
        ratio = r["file_bytes"] / r["param_bytes"]
        parts = []
        if r["format"] == "nir":
            parts.append(f"time {total:.2f} s <= {TARGET_NIR_S:g} s {_verdict(total <= TARGET_NIR_S)}")
        parts.append(f"RSS {r['peak_rss'] / 1e9:.2f} GB <= 2 GB {_verdict(r['peak_rss'] <= TARGET_RSS)}")
        parts.append(f"size {ratio:.3f}x <= {TARGET_RATIO}x {_verdict(ratio <= TARGET_RATIO)}")
        print(f"targets {r['format']}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
