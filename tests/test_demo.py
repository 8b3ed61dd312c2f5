"""The demo pipeline end to end on a reduced setting: every artifact exists and every validation passed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_quick_pipeline(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/demo.py", "--quick", "--out", str(out), "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = out / "run-001"
    for name in ("eval.json", "model.nir", "model.onnx", "model.intnet.npz", "deploy_reference.json",
                 "deploy_lava.json", "energy/energy.json", "energy/energy.md", "energy/energy.html", "summary.md",
                 "summary.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    ref = json.loads((run / "deploy_reference.json").read_text())
    assert ref["overflow"]["u_wraps"] == 0 and ref["overflow"]["v_clips"] == 0
    lava = json.loads((run / "deploy_lava.json").read_text())
    n = lava["samples"]
    assert n >= 2 and lava["lava_vs_reference"]["identical_logits"] == f"{n}/{n}"
    assert lava["lava_vs_reference"]["identical_spikes"] == 1.0
    # a second run reuses the trained model and writes a new run folder, leaving the first untouched
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    proc2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    assert "reusing" in proc2.stdout
    assert (out / "run-002" / "summary.md").is_file()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
