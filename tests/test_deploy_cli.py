"""sdt-deploy: checkpoint or saved integer network in, JSON report out; bad input is one line, exit 2, no report."""
from __future__ import annotations

import importlib.util
import json

import pytest

from toolchain.deploy_cli import main
from deploy.intnet import load
from sdt.checkpoint import save_checkpoint
from tests.conftest import tiny_model

needs_lava = pytest.mark.skipif(importlib.util.find_spec("lava") is None, reason="lava-nc is not installed")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny digits-shaped SDT (1x16x16 input, 10 classes), random weights."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar"
    save_checkpoint(path, tiny_model(in_channels=1, num_classes=10))
    return path


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_missing_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([str(tmp_path / "nope.pth.tar"), "-o", str(out)]) == 2
    _one_line_error(capsys, "not found")
    assert not out.exists()


def test_unknown_backend_is_one_line(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([str(ckpt), "--backend", "loihi3", "-o", str(out)]) == 2
    _one_line_error(capsys, "loihi3", "reference")
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--samples", "0"], ["--input-levels", "many"], ["--weight-terms", "-1"]])
def test_bad_numbers_are_one_line(ckpt, tmp_path, capsys, argv):
    out = tmp_path / "r.json"
    assert main([str(ckpt), *argv, "-o", str(out)]) == 2
    _one_line_error(capsys)
    assert not out.exists()


def test_corrupt_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "r.json"
    assert main([str(bad), "-o", str(out)]) == 2
    _one_line_error(capsys, "bad.pth.tar")
    assert not out.exists()


def test_wrong_dataset_is_one_line_without_a_report(tmp_path, capsys):
    path = tmp_path / "rgb.pth.tar"
    save_checkpoint(path, tiny_model())  # 3 input channels, but digits has 1
    out = tmp_path / "r.json"
    assert main([str(path), "--samples", "4", "--progress", "false", "-o", str(out)]) == 2
    _one_line_error(capsys, "--data")
    assert not out.exists()


def test_checkpoint_then_saved_network_give_the_same_integer_run(ckpt, tmp_path, capsys):
    net_path, r1, r2, r3 = (tmp_path / n for n in ("tiny.intnet.npz", "r1.json", "r2.json", "r3.json"))
    common = ["--samples", "24", "-b", "10", "--progress", "false"]
    assert main([str(ckpt), *common, "--save-net", str(net_path), "-o", str(r1)]) == 0
    rep = json.loads(r1.read_text())
    assert rep["input_kind"] == "checkpoint" and rep["dataset"] == "digits" and rep["samples"] == 24
    assert rep["encoding"]["levels"] == 256  # the digits grid (17 grey levels, 2x bilinear) found on train inputs
    assert rep["overflow"] == {"u_wraps": 0, "v_clips": 0, "by_population": {}}
    assert rep["float_top1"] is not None and rep["int_top1"] is not None and rep["top1_agreement"] is not None
    assert rep["layers"]["MS_SPS_lif"]["spike_agreement"] > 0.99 and len(rep["layers"]["MS_SPS_lif"]["per_step"]) == 4
    assert rep["spike_counts"]["MS_SPS_lif"] > 0 and rep["timings"]["integer_s"] > 0
    assert rep["quantization"]["layers"]["MS_SPS_lif"]["vth"] > 0
    assert "digits test (reference): 24 samples" in capsys.readouterr().out

    net = load(net_path)
    assert net.metadata["dataset"] == "digits"
    assert main([str(net_path), *common, "--checkpoint", str(ckpt), "-o", str(r2)]) == 0
    rep2 = json.loads(r2.read_text())
    assert rep2["input_kind"] == "intnet"
    for k in ("int_top1", "float_top1", "top1_agreement", "spike_counts", "layers"):
        assert rep2[k] == rep[k], k

    assert main([str(net_path), *common, "-o", str(r3)]) == 0  # no float reference: the integer side only
    rep3 = json.loads(r3.read_text())
    assert rep3["int_top1"] == rep["int_top1"] and "top1_agreement" not in rep3
    assert rep3["spike_counts"] == rep["spike_counts"]


@needs_lava
def test_lava_backend_matches_the_reference(ckpt, tmp_path):
    out = tmp_path / "lava.json"
    assert main([str(ckpt), "--backend", "lava", "--samples", "2", "--no-layers", "--progress", "false",
                 "-o", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["backend"] == "lava" and rep["samples"] == 2
    assert rep["lava_vs_reference"]["identical_logits"] == "2/2"
    assert rep["overflow"]["u_wraps"] == 0 and rep["overflow"]["v_clips"] == 0
    assert rep["int_top1"] is not None
