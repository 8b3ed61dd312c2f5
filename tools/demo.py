"""`make demo`: the whole toolchain on an embedded real dataset, offline, with no arguments.

Stages (each a real CLI run, so the demo shows exactly what a user would type):
  1. train   `train.py` (scikit-learn digits preset; Fashion-MNIST with --data fashion)
  2. eval    `sdt-eval` top-1/top-5 + firing rates
  3. export  `sdt-export --to nir|onnx|lava --validate N` (each export checked against the PyTorch model)
  4. deploy  `sdt-deploy --backend reference` on the whole test set, `--backend lava` on a handful of images
  5. energy  `sdt-energy` report (estimates)
Outputs: `runs/demo/train-<data>-<key>/` (the trained model, reused by later runs with the same settings; `<key>`
hashes the training arguments) and a new `runs/demo/run-NNN/` per run (exports and reports, never overwritten),
ending with `summary.md` / `summary.json`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sdt.atomic import write_text
from sdt.errors import UserError, cli_entry

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> list[str]:
    exe = BIN / name
    module = {"sdt-eval": "sdt.eval_cli", "sdt-export": "toolchain.export_cli", "sdt-deploy": "toolchain.deploy_cli",
              "sdt-energy": "toolchain.energy_cli"}[name]
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def run_stage(title: str, cmd: list[str], log: Path) -> float:
    """Run one CLI stage, streaming its progress to the terminal and its output to ``log``; returns seconds."""
    print(f"\n=== {title}\n$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}", flush=True)
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            f.write(line)
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        raise UserError(f"stage '{title}' failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def next_run_dir(base: Path) -> Path:
    """A fresh ``run-NNN`` folder: earlier runs are never touched."""
    base.mkdir(parents=True, exist_ok=True)
    n = 1 + max([int(p.name[4:]) for p in base.glob("run-[0-9][0-9][0-9]") if p.name[4:].isdigit()], default=0)
    while True:
        d = base / f"run-{n:03d}"
        try:
            d.mkdir()
            return d
        except FileExistsError:  # a concurrent demo took it
            n += 1


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _get(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _size(p: Path) -> str:
    return f"{p.stat().st_size / 1024:.1f} KiB" if p.exists() else "missing"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The SDT toolchain end to end on an embedded real dataset.")
    p.add_argument("--data", default=os.environ.get("DATA", "digits"), choices=["digits", "fashion", "mnist"],
                   help="embedded dataset (default digits; fashion needs Debian's dataset-fashion-mnist)")
    p.add_argument("--out", default="runs/demo", help="base folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a reduced run for tests: 1 epoch on few images")
    p.add_argument("--lava-samples", type=int, default=None, help="images run on Lava (default 5; quick 2)")
    p.add_argument("--validate", type=int, default=None, help="inputs per export check (default 100; quick 10)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("DEMO_THREADS", "2")))
    a = p.parse_args(argv)
    quick = a.quick
    lava_n = a.lava_samples if a.lava_samples is not None else (2 if quick else 5)
    val_n = a.validate if a.validate is not None else (10 if quick else 100)
    base = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    train_args = ["--dataset", a.data, "--num-threads", str(a.threads)]
    if quick:
        train_args += ["--epochs", "1", "--limit-train", "200", "--limit-val", "60"]
    key = hashlib.sha256(json.dumps(train_args).encode()).hexdigest()[:10]
    train_dir = base / f"train-{a.data}-{key}"
    ckpt = train_dir / "model_best.pth.tar"
    run = next_run_dir(base)
    log = run / "demo.log"
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    print(f"SDT toolchain demo: data={a.data}{' (quick)' if quick else ''}; outputs in {run}")

    done_marker = train_dir / "DONE"
    if done_marker.exists() and ckpt.exists():
        print(f"\n=== 1/5 train: reusing {ckpt} (same settings already trained; delete {train_dir} to retrain)")
        times["train"] = 0.0
    else:
        resume = ["--resume", str(train_dir)] if (train_dir / "last.pth.tar").exists() else []
        times["train"] = run_stage("1/5 train (train.py)", [sys.executable, "train.py", *train_args, "--output",
                                                             str(base), "--experiment", train_dir.name, *resume], log)
        write_text(done_marker, "trained\n")
    times["eval"] = run_stage("2/5 evaluate with firing rates (sdt-eval)",
                              [*_tool("sdt-eval"), str(ckpt), "-o", str(run / "eval.json")], log)
    t0 = time.perf_counter()
    exports = {"nir": run / "model.nir", "onnx": run / "model.onnx", "lava": run / "model.intnet.npz"}
    for fmt, path in exports.items():
        run_stage(f"3/5 export --to {fmt} (sdt-export)",
                  [*_tool("sdt-export"), str(ckpt), "--to", fmt, "-o", str(path), "--validate", str(val_n)], log)
    times["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_args = ["-n", "120"] if quick else []
    run_stage("4/5 integer network, reference executor, whole test set (sdt-deploy)",
              [*_tool("sdt-deploy"), str(exports["lava"]), "--checkpoint", str(ckpt), "--backend", "reference",
               *ref_args, "-o", str(run / "deploy_reference.json")], log)
    run_stage(f"4/5 integer network on Lava (Loihi2SimCfg fixed_pt), {lava_n} images (sdt-deploy)",
              [*_tool("sdt-deploy"), str(exports["lava"]), "--checkpoint", str(ckpt), "--backend", "lava",
               "-n", str(lava_n), "-o", str(run / "deploy_lava.json")], log)
    times["deploy"] = time.perf_counter() - t0
    times["energy"] = run_stage("5/5 energy report (sdt-energy)",
                                [*_tool("sdt-energy"), str(ckpt), "-n", "60" if quick else "200",
                                 "-o", str(run / "energy")], log)
    times["total"] = time.perf_counter() - t_start
    summary = summarize(run, ckpt, exports, times)
    write_text(run / "summary.json", json.dumps(summary, indent=1, sort_keys=True, default=str))
    write_text(run / "summary.md", summary["markdown"])
    print("\n" + summary["markdown"])
    return 0


def summarize(run: Path, ckpt: Path, exports: dict[str, Path], times: dict[str, float]) -> dict[str, Any]:
    """Collect the stage reports into one table (markdown) and a machine-readable dict."""
    ev = _load(run / "eval.json")
    ref = _load(run / "deploy_reference.json")
    lava = _load(run / "deploy_lava.json")
    en = _load(run / "energy" / "energy.json")
    ov = _get(ref, "overflow", default={}) or {}
    lvr = _get(lava, "lava_vs_reference", default={}) or {}
    rows = [
        ("float top-1, whole test set (sdt-eval)", _pct(_get(ev, "top1"))),
        ("integer top-1, reference executor", _pct(_get(ref, "int_top1"))),
        ("float top-1 on the same images", _pct(_get(ref, "float_top1"))),
        ("float <-> integer top-1 agreement", _pct(_get(ref, "top1_agreement"))),
        ("integer overflow events (u wraps + v clips)", str(ov.get("u_wraps", 0) + ov.get("v_clips", 0))
         if ov else "n/a"),
        ("Lava vs reference executor: identical logits", str(lvr.get("identical_logits", "n/a"))),
        ("Lava vs reference executor: identical spikes", str(lvr.get("identical_spikes", "n/a"))),
    ]
    per_sample = _get(en, "per_sample", "energy_pj", default={}) or {}
    for tier, vals in per_sample.items():
        if vals:
            rows.append((f"energy / image, tier {tier} (estimate)", f"{sum(vals) / len(vals) / 1e6:.4g} uJ"))
    for fmt, path in exports.items():
        rows.append((f"{fmt} file", f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
                                    f"({_size(path)})"))
    rows.append(("checkpoint", str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt)))
    rows.append(("energy report", str(run / "energy" / "energy.md")))
    rows += [(f"time: {k}", f"{v:.1f} s") for k, v in times.items()]
    md = "| item | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    return {"rows": rows, "markdown": md, "times": times, "run_dir": str(run)}


def _pct(x: Any) -> str:
    """Reports give percentages (0-100)."""
    return "n/a" if x is None else f"{float(x):.2f} %"


if __name__ == "__main__":
    sys.exit(main())
