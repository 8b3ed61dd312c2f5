"""sdt-export end to end: official and our checkpoints, summary line, --validate, and bad input -> one line, no file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from toolchain import export_cli as cli
from export import onnx_writer as ow
from sdt.checkpoint import save_checkpoint
from tests.conftest import tiny_model
from tests.test_checkpoint import official_file

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def official(tmp_path) -> Path:
    path = tmp_path / "model_best.pth.tar"
    official_file(path, tiny_model(seed=21))
    return path


@pytest.fixture
def ours(tmp_path) -> Path:
    path = tmp_path / "ours.pth"
    save_checkpoint(path, tiny_model(seed=22, TET=True))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_official_checkpoint_to_onnx_with_validation(official, capsys):
    rc, out, err = _run(capsys, str(official), "--to", "onnx", "--validate", "100")
    assert rc == 0, err
    target = official.with_name("model_best.onnx")  # default: next to the checkpoint, checkpoint suffixes dropped
    assert target.is_file() and _files(official.parent) == ["model_best.onnx", "model_best.pth.tar"]
    summary, check = out.strip().splitlines()
    for word in ("nodes", "edges", "parameters", "kB", " s"):
        assert word in summary, summary
    assert "onnxruntime vs PyTorch on 100 inputs: argmax 100/100" in check
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        import sdt

        ref = sdt.load_checkpoint(official)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-5)


def test_our_checkpoint_to_nir_validates_bit_exactly(ours, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = _run(capsys, str(ours), "--to", "nir", "-o", str(out_dir / "tet.nir"), "--validate", "100")
    assert rc == 0, err
    assert _files(out_dir) == ["tet.nir"]
    summary, check = out.strip().splitlines()
    assert "NIR" in summary and "parameters" in summary
    assert "NIR runner vs PyTorch on 100 inputs" in check and "max |dlogit| 0 (bound 0)" in check


def test_onnx_spikes_flag_adds_outputs(ours, capsys):
    rc, out, err = _run(capsys, str(ours), "--to", "onnx", "--spikes")
    assert rc == 0, err
    session = ort.InferenceSession(str(ours.with_name("ours.onnx")), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names[0] == "logits" and "MS_SPS_lif" in names and "head_lif" in names


def test_lava_dispatches_to_the_integer_writer(official, capsys):
    pytest.importorskip("deploy.quantize")
    rc, out, err = _run(capsys, str(official), "--to", "lava", "--validate", "8")
    assert rc == 0, err
    assert _files(official.parent) == ["model_best.intnet.npz", "model_best.pth.tar"]
    assert "top-1 agreement" in out


def _recorded_normalization(path: Path):
    """The normalisation metadata of an exported file, decoded (None when null or absent)."""
    if path.suffix == ".onnx":
        import onnx

        raw = {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get("sdt.normalization")
    elif path.suffix == ".nir":
        from export.nir_reader import read_nir

        raw = read_nir(path).metadata.get("normalization")
    else:
        from deploy.intnet import load

        raw = load(path).metadata.get("graph_metadata", {}).get("normalization")
    return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


@pytest.mark.parametrize("dataset, kw, normalized", [("cifar10", {}, True),
                                                     ("digits", dict(in_channels=1, num_classes=10), False)])
def test_every_format_records_the_lava_normalization(tmp_path, capsys, dataset, kw, normalized):
    pytest.importorskip("deploy.quantize")
    if dataset == "digits":
        pytest.importorskip("sklearn")
    ckpt = tmp_path / f"{dataset}.pth"
    save_checkpoint(ckpt, tiny_model(seed=23, **kw), args={"dataset": dataset})
    got = {}
    for fmt in ("lava", "nir", "onnx"):
        rc, out, err = _run(capsys, str(ckpt), "--to", fmt)
        assert rc == 0, err
        got[fmt] = _recorded_normalization(cli.default_output(ckpt, fmt))
    if normalized:  # the data set's mean/std, as the integer network records them
        from sdt.data import dataset_info

        info = dataset_info(dataset)
        assert got["lava"] == {"mean": list(info.mean), "std": list(info.std)}
    else:  # digits are not normalised: null everywhere
        assert got["lava"] is None
    assert got["nir"] == got["lava"] and got["onnx"] == got["lava"]


def test_use_ema_exports_the_ema_weights_with_the_normalization(tmp_path, capsys):
    ckpt = tmp_path / "ema.pth"
    src, ema = tiny_model(seed=24), tiny_model(seed=25)
    save_checkpoint(ckpt, src, state_dict_ema=ema.state_dict(), args={"dataset": "torch/cifar10"})
    out = tmp_path / "ema.onnx"
    rc, _, err = _run(capsys, str(ckpt), "--to", "onnx", "--use-ema", "-o", str(out))
    assert rc == 0, err
    assert _recorded_normalization(out)["std"] == [0.2470, 0.2435, 0.2616]
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, ema(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-5)


def test_lava_without_the_integer_writer_is_one_line(official, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "deploy.quantize", None)  # import fails as if the module did not exist
    rc, out, err = _run(capsys, str(official), "--to", "lava")
    assert rc == 2 and err.startswith("error: --to lava needs deploy.quantize,") and err.count("\n") == 1
    assert _files(official.parent) == ["model_best.pth.tar"]


def test_failed_validation_writes_nothing(official, capsys, monkeypatch):
    lif = ow._NodeModule._lif
    monkeypatch.setattr(ow._NodeModule, "_lif", lambda self, x: lif(self, x * 1.05))  # a broken exporter
    rc, out, err = _run(capsys, str(official), "--to", "onnx", "--validate", "10")
    assert rc == 1 and err.startswith("error: validation failed, nothing written") and err.count("\n") == 1
    assert _files(official.parent) == ["model_best.pth.tar"]


def _bad_cases(tmp: Path, official: Path) -> dict[str, list[str]]:
    truncated = tmp / "truncated.pth"
    truncated.write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    (tmp / "a_dir").mkdir()
    (tmp / "a_file").write_text("x")
    return {
        "missing checkpoint": [str(tmp / "nope.pth"), "--to", "onnx"],
        "truncated checkpoint": [str(truncated), "--to", "onnx"],
        "not a checkpoint": [str(tmp / "a_file"), "--to", "nir"],
        "unknown --to": [str(official), "--to", "tflite"],
        "no --to": [str(official)],
        "nonexistent parent": [str(official), "--to", "onnx", "-o", str(tmp / "no" / "such" / "m.onnx")],
        "parent is a file": [str(official), "--to", "nir", "-o", str(tmp / "a_file" / "m.nir")],
        "directory as output": [str(official), "--to", "onnx", "-o", str(tmp / "a_dir")],
        "output is the checkpoint": [str(official), "--to", "onnx", "-o", str(official)],
        "--spikes with nir": [str(official), "--to", "nir", "--spikes"],
        "negative --validate": [str(official), "--to", "onnx", "--validate", "-1"],
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "truncated checkpoint", "not a checkpoint", "unknown --to",
                                  "no --to", "nonexistent parent", "parent is a file", "directory as output",
                                  "output is the checkpoint", "--spikes with nir", "negative --validate"])
def test_bad_input_is_one_line_and_leaves_no_file(case, official, tmp_path, capsys):
    argv = _bad_cases(tmp_path, official)[case]
    before = _files(tmp_path)
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (case, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert out == ""
    assert _files(tmp_path) == before and _files(tmp_path / "a_dir") == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(official, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, out, err = _run(capsys, str(official), "--to", "onnx", "-o", str(ro / "m.onnx"))
    finally:
        ro.chmod(0o700)
    assert rc == 2 and "not writable" in err and _files(ro) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_location_found_at_write_time(official, capsys):
    # /proc passes the up-front checks as root but refuses new files: the error comes from the atomic write itself
    rc, out, err = _run(capsys, str(official), "--to", "onnx", "-o", "/proc/sdt-export-test.onnx")
    assert rc == 2 and err.startswith("error: cannot write /proc/sdt-export-test.onnx") and err.count("\n") == 1
    assert not Path("/proc/sdt-export-test.onnx").exists()


def test_default_output_names():
    assert cli.default_output(Path("d/model_best.pth.tar"), "onnx") == Path("d/model_best.onnx")
    assert cli.default_output(Path("x.pth"), "lava") == Path("x.intnet.npz")
    assert cli.default_output(Path("run.v2"), "nir") == Path("run.v2.nir")


def test_console_entry_point(official):
    # a real process, through `python -m toolchain.export_cli` (the console script calls the same main)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "toolchain.export_cli", str(official), "--to", "nir"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert official.with_name("model_best.nir").is_file() and "edges" in proc.stdout


def test_unknown_dataset_gives_null_normalization_for_nir_but_lava_refuses(tmp_path, capsys):
    import nir

    ckpt = tmp_path / "custom.pth.tar"
    save_checkpoint(ckpt, tiny_model(seed=3), args={"dataset": "my-own-data"})
    rc, _, _ = _run(capsys, str(ckpt), "--to", "nir", "-o", str(tmp_path / "m.nir"))
    assert rc == 0
    assert json.loads(nir.read(str(tmp_path / "m.nir")).metadata["normalization"]) is None
    rc, _, err = _run(capsys, str(ckpt), "--to", "lava", "-o", str(tmp_path / "m.npz"))
    assert rc == 2 and err.strip().startswith("error:") and "my-own-data" in err and "\n" not in err.strip()
    assert not (tmp_path / "m.npz").exists()
