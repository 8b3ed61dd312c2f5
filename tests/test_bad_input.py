"""Hostile but realistic input to every command: each case exits with status 2, prints exactly one ``error:`` line
naming the problem (no traceback), and leaves no new file behind. The start of issue 17's fuzz suite: checkpoints
that are not checkpoints, are damaged, or hold non-finite weights."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from sdt.checkpoint import save_checkpoint
from tests.conftest import tiny_model

DIGITS = dict(in_channels=1, num_classes=10, embed_dims=32, num_heads=4)

# command -> (module with main(argv), extra arguments after the input)
COMMANDS = {
    "sdt-export nir": ("toolchain.export_cli", ["--to", "nir"]),
    "sdt-export onnx": ("toolchain.export_cli", ["--to", "onnx"]),
    "sdt-export lava": ("toolchain.export_cli", ["--to", "lava"]),
    "sdt-deploy": ("toolchain.deploy_cli", ["--samples", "2", "--progress", "false"]),
    "sdt-energy": ("toolchain.energy_cli", ["--samples", "2", "--no-progress", "--data", "digits"]),
    "sdt-eval": ("sdt.eval_cli", ["--limit", "2", "--progress", "false", "--dataset", "digits"]),
}


def _good(d: Path) -> Path:
    p = d / "good.pth.tar"
    save_checkpoint(p, tiny_model(0, **DIGITS), args={"dataset": "digits"})
    return p


def _nan(d: Path) -> Path:
    model = tiny_model(0, **DIGITS)
    with torch.no_grad():
        model.block[0].mlp.fc1_conv.weight[0, 0, 0, 0] = float("nan")
    p = d / "nan.pth.tar"
    save_checkpoint(p, model, args={"dataset": "digits"})
    return p


def _inf_bn(d: Path) -> Path:
    model = tiny_model(0, **DIGITS)
    model.patch_embed.proj_bn.running_var[1] = float("inf")
    p = d / "inf.pth.tar"
    save_checkpoint(p, model, args={"dataset": "digits"})
    return p


def _flipped(d: Path) -> Path:
    data = bytearray(_good(d).read_bytes())
    start = data.index(b"data.pkl") + 40  # inside the pickle (tensor bytes are stored raw: a flip there is new weights)
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    p = d / "flipped.pth.tar"
    p.write_bytes(bytes(data))
    return p


def _truncated(d: Path) -> Path:
    data = _good(d).read_bytes()
    p = d / "truncated.pth.tar"
    p.write_bytes(data[: len(data) // 2])
    return p


def _text(d: Path) -> Path:
    p = d / "notes.pth"
    p.write_text("these are my notes, not weights\n")
    return p


def _empty(d: Path) -> Path:
    p = d / "empty.pth"
    p.write_bytes(b"")
    return p


def _nir(d: Path) -> Path:
    from export.from_model import build_graph
    from export.nir_writer import write_nir

    p = d / "model.pth"  # a NIR file under a checkpoint's name
    write_nir(build_graph(tiny_model(0, **DIGITS)), p)
    return p


def _onnx(d: Path) -> Path:
    from export.from_model import build_graph
    from export.onnx_writer import write_onnx

    p = d / "model.pt"
    write_onnx(build_graph(tiny_model(0, **DIGITS)), p)
    return p


# bad input -> (maker, fragment the one error line must hold)
INPUTS = {
    "nan weight": (_nan, "non-finite"),
    "inf BN statistic": (_inf_bn, "running_var"),
    "bit-flipped": (_flipped, "corrupt"),
    "truncated": (_truncated, "corrupt or truncated"),
    "text file": (_text, "is not a checkpoint: it is a text file"),
    "empty file": (_empty, "empty file"),
    "NIR file": (_nir, "NIR file"),
    "ONNX file": (_onnx, "ONNX model"),
}
CHECKPOINT_ONLY = {"sdt-eval", "sdt-export nir", "sdt-export onnx", "sdt-export lava"}


@pytest.mark.parametrize("bad", list(INPUTS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_checkpoint_is_one_line_exit_2_and_writes_nothing(command, bad, tmp_path, capsys, one_thread):
    make, fragment = INPUTS[bad]
    src = make(tmp_path)
    for extra in tmp_path.glob("good.pth.tar"):  # helper files some makers need are not inputs
        extra.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    module, args = COMMANDS[command]
    rc = importlib.import_module(module).main([str(src), *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no export, no temporary file
    if bad in ("bit-flipped", "truncated", "text file", "NIR file", "ONNX file", "empty file"):
        assert "allowlist" not in lines[0]  # a damaged or foreign file is not reported as a security refusal


# bad options: refused by the parser with one line, before any work
BAD_OPTIONS = [
    ("sdt-eval", ["--limit", "-1"], "--limit"),
    ("sdt-eval", ["--limit", "0"], "--limit"),
    ("sdt-eval", ["--img-size", "0"], "--img-size"),
    ("sdt-eval", ["--img-size", "-5"], "--img-size"),
    ("sdt-eval", ["-b", "0"], "--batch-size"),
    ("sdt-eval", ["--progress", "maybe"], "--progress"),
    ("sdt-deploy", ["--progress", "maybe"], "--progress"),
    ("sdt-deploy", ["--samples", "0"], "--samples"),
    ("sdt-deploy", ["--weight-terms", "0"], "--weight-terms"),
    ("sdt-deploy", ["--input-levels", "5000"], "--input-levels"),
    ("sdt-energy", ["--samples", "-3"], "--samples"),
    ("sdt-energy", ["-b", "0"], "--batch-size"),
    ("sdt-export lava", ["--weight-terms", "x"], "--weight-terms"),
    ("sdt-export nir", ["--validate", "-2"], "--validate"),
]


@pytest.mark.parametrize("command,args,fragment", BAD_OPTIONS, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_exit_2(command, args, fragment, tmp_path, capsys):
    ckpt = _good(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    module, base = COMMANDS[command]
    rc = importlib.import_module(module).main([str(ckpt), *base, *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------ tampered integer networks

def _net(d: Path) -> Path:
    from toolchain.pipeline import load as load_source

    from deploy.intnet import save

    p = d / "net.intnet.npz"
    save(load_source(_good(d)).network()[0], p)
    return p


def _tamper(path: Path, doc_fn=None, arrays=None, drop=()) -> None:
    """Rewrite an .intnet.npz: ``doc_fn(doc)`` edits the netlist, ``arrays`` replaces members, ``drop`` removes them."""
    import io
    import json
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    doc = json.loads(members["netlist.json"])
    if doc_fn is not None:
        doc = doc_fn(doc)
    members["netlist.json"] = json.dumps(doc).encode()
    for key, a in (arrays or {}).items():
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        members[f"{key}.npy"] = buf.getvalue()
    for key in drop:
        members.pop(f"{key}.npy")
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)


def _first(doc, kind, key, value):
    for d in doc["populations" if kind == "pop" else "synapses"]:
        if kind != "pop" or d["kind"] == "lif":
            d[key] = value
            return doc


def _syn0(path: Path):
    import numpy as np
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return np.load(zf.open("syn0_w.npy"))


TAMPERED = {
    "T = 0": (dict(doc_fn=lambda d: {**d, "T": 0}), "T"),
    "netlist []": (dict(doc_fn=lambda d: []), "not an sdt-intnet"),
    "populations missing": (dict(doc_fn=lambda d: {k: v for k, v in d.items() if k != "populations"}), "populations"),
    "unknown kind": (dict(doc_fn=lambda d: _first(d, "pop", "kind", "izhikevich")), "unknown kind"),
    "du 5000": (dict(doc_fn=lambda d: _first(d, "pop", "du", 5000)), ".du"),
    "vth 2**30": (dict(doc_fn=lambda d: _first(d, "pop", "vth", 1 << 30)), ".vth"),
    "weight_exp 100": (dict(doc_fn=lambda d: _first(d, "syn", "weight_exp", 100)), "weight_exp"),
    "decode scale 0": (dict(doc_fn=lambda d: {**d, "decode": {**d["decode"], "scale": 0}}), "decode.scale"),
    "shape vs bias": (dict(doc_fn=lambda d: _first(d, "pop", "shape", [3, 1, 1])), "bias_mant"),
    "weight array missing": (dict(drop=("syn0_w",)), "missing"),
}


@pytest.mark.parametrize("case", list(TAMPERED) + ["float weights", "weight -6000", "bias 2**31-1",
                                                    "overflowing exponent"])
@pytest.mark.parametrize("command", ["sdt-deploy", "sdt-energy"])
def test_tampered_network_is_one_line_exit_2(command, case, tmp_path, capsys, one_thread):
    import numpy as np

    net = _net(tmp_path)
    if case in TAMPERED:
        kw, fragment = TAMPERED[case]
    elif case == "float weights":
        kw, fragment = dict(arrays={"syn0_w": _syn0(net).astype(np.float32)}), "dtype"
    elif case == "weight -6000":
        w = _syn0(net).copy()
        w.flat[0] = -6000
        kw, fragment = dict(arrays={"syn0_w": w}), "outside"
    elif case == "bias 2**31-1":
        kw, fragment = dict(arrays={"pop1_bias": np.full(
            np.load(__import__("zipfile").ZipFile(net).open("pop1_bias.npy")).shape, 2**31 - 1, np.int64)}), "outside"
    else:  # in range field by field, but no longer provably inside 24 bits
        kw, fragment = dict(doc_fn=lambda d: _first(d, "syn", "weight_exp", 7)), "overflow"
    _tamper(net, **kw)
    (tmp_path / "good.pth.tar").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    module, base = COMMANDS[command]
    base = [a for a in base if a != "--data"] if command == "sdt-deploy" else base
    rc = importlib.import_module(module).main([str(net), *base])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ------------------------------------------------------------------------------------- outputs never replace inputs

@pytest.mark.parametrize("command", ["sdt-eval", "sdt-deploy", "sdt-export nir"])
def test_output_naming_the_input_is_refused(command, tmp_path, capsys):
    ckpt = _good(tmp_path)
    data = ckpt.read_bytes()
    module, base = COMMANDS[command]
    rc = importlib.import_module(module).main([str(ckpt), *base, "-o", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "error: output" in err and "choose another -o" in err, err
    assert ckpt.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["good.pth.tar"]


def test_deploy_save_net_never_replaces_an_input(tmp_path, capsys):
    ckpt = _good(tmp_path)
    data = ckpt.read_bytes()
    from toolchain.deploy_cli import main

    assert main([str(ckpt), "--samples", "2", "--progress", "false", "--save-net", str(ckpt)]) == 2
    assert "--save-net" in capsys.readouterr().err and ckpt.read_bytes() == data


def test_default_reports_of_a_checkpoint_and_its_network_do_not_collide(tmp_path, capsys, one_thread):
    from toolchain.deploy_cli import main

    ckpt = _good(tmp_path)
    net = tmp_path / "good.intnet.npz"
    assert main([str(ckpt), "--samples", "2", "--progress", "false", "--save-net", str(net)]) == 0
    assert main([str(net), "--samples", "2", "--progress", "false"]) == 0
    assert {"good.deploy-reference.json", "good.intnet.deploy-reference.json"} <= {p.name for p in tmp_path.iterdir()}
    from toolchain.energy_cli import main as energy

    for src in (ckpt, net):
        assert energy([str(src), "--samples", "2", "--no-progress", "--data", "digits"]) == 0
    assert {"good.energy", "good.intnet.energy"} <= {p.name for p in tmp_path.iterdir()}


# ---------------------------------------------------------------------------------------------------- signals

@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_during_a_run_exits_with_one_line_and_leaves_nothing(sig, code, tmp_path):
    """A long sdt-energy run stopped by a signal: the conventional exit status, one line, no report and no temporary
    folder left (the report folder is built in a temporary folder and moved in place only at the end)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ckpt = _good(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "toolchain.energy_cli", str(ckpt), "--samples", "0", "-b", "1",
                             "--no-progress", "--data", "digits", "--split", "train", "-o", str(tmp_path / "rep")],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # well inside the run (counting all 1,437 training images one by one takes far longer)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=30)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pth.tar"]


def test_temporaries_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    """A run killed with SIGKILL cannot clean up: the next write of the same output removes its temporaries (the pid
    in their name is gone), never those of a live process, nor other files."""
    import os
    import subprocess
    import sys

    from sdt.atomic import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    target = tmp_path / "report.json"
    stale_file = tmp_path / f".report.json.{dead_pid}.abc123.tmp"
    stale_dir = tmp_path / f".report.json.{dead_pid}.xyz"
    live = tmp_path / f".report.json.{os.getppid()}.live.tmp"  # the test runner's parent: alive
    other = tmp_path / ".report.json.notes"
    stale_file.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "energy.json").write_text("{")
    live.write_text("in progress")
    other.write_text("not ours")
    write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


# ------------------------------------------------------------------------------------------------------ disk full

@pytest.fixture(params=["tmpfs", "simulated"])
def full_disk(request, tmp_path):
    """A real full disk (a 256 kB tmpfs, where this process may mount one, e.g. as root), or None: the test then
    simulates ENOSPC in the writer's file object. The simulated case always runs."""
    import subprocess

    if request.param == "simulated":
        yield None
        return
    mnt = tmp_path / "small"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode
    if ok != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated disk-full case runs instead")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)
    mnt.rmdir()


@pytest.mark.parametrize("fmt", ["nir", "onnx", "lava"])
def test_disk_full_is_one_line_and_leaves_no_partial_file(fmt, full_disk, tmp_path, capsys, monkeypatch):
    import errno
    import os
    import subprocess
    import sys

    ckpt = _good(tmp_path)
    big = tiny_model(0, **{**DIGITS, "embed_dims": 64, "num_heads": 4})  # ~0.5 MB of weights: more than the disk
    save_checkpoint(ckpt, big, args={"dataset": "digits"})
    if full_disk is not None:  # a real full disk, in a separate process (a crash would show as a signal)
        root = Path(__file__).resolve().parents[1]
        out = full_disk / f"m.{fmt}"
        proc = subprocess.run([sys.executable, "-m", "toolchain.export_cli", str(ckpt), "--to", fmt, "-o", str(out)],
                              cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True,
                              timeout=300)
        rc, err = proc.returncode, proc.stderr
        assert list(full_disk.iterdir()) == []
    else:  # simulated: every write past the first 64 kB fails with ENOSPC
        import builtins

        real_open = builtins.open

        class _Full:
            def __init__(self, f):
                self.f, self.n = f, 0

            def write(self, b):
                self.n += len(b)
                if self.n > 1 << 16:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(b)

            def __getattr__(self, k):
                return getattr(self.f, k)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return self.f.__exit__(*a)

        def fake_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            ours = isinstance(file, (str, os.PathLike)) and str(file).startswith(str(tmp_path)) and \
                str(file).endswith(".tmp")  # the writers' temporaries (nested ones included)
            return _Full(f) if "w" in mode and ours else f

        import io

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)  # zipfile opens through io.open
        from toolchain.export_cli import main

        rc = main([str(ckpt), "--to", fmt, "-o", str(tmp_path / f"m.{fmt}")])
        err = capsys.readouterr().err
        monkeypatch.undo()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pth.tar"], err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "No space left on device" in lines[0], err[-2000:]
