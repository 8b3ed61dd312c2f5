"""sdt-energy: an end-to-end report on real data (sklearn digits, bundled), the integer path, and one-line errors that
leave no partial report."""
from __future__ import annotations

import json

import pytest

from toolchain.energy_cli import main
from sdt.checkpoint import save_checkpoint

from .conftest import tiny_model

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "digits.pth.tar"
    save_checkpoint(path, tiny_model(0, in_channels=1, num_classes=10, embed_dims=32, num_heads=4),
                    args={"dataset": "digits"})
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_report_from_recorded_dataset(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(digits_ckpt), "--samples", "6", "-b", "4", "-o", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "digits test: 6 samples" in stdout and str(out) in stdout
    doc = json.loads((out / "energy.json").read_text())
    assert doc["samples"] == 6 and doc["estimate"] is True and doc["meta"]["dataset"] == "digits"
    assert doc["meta"]["mode"] == "float graph"
    assert len(doc["per_sample"]["energy_pj"]["int"]) == 6
    names = {p.name for p in out.iterdir()}
    assert {"energy.json", "energy.md", "energy.html", "energy_tiers.png", "firing_rates.png", "attention.png",
            "paper_vs_exact.png"} <= names
    md = (out / "energy.md").read_text()
    assert "estimate" in md and "break-even" in md and "E_AC_fp32" in md


def test_report_is_deterministic(digits_ckpt, tmp_path, capsys):
    docs = []
    for name in ("a", "b"):
        assert main([str(digits_ckpt), "--samples", "5", "-b", "2", "-o", str(tmp_path / name),
                     "--no-progress", "--access-bits", "32"]) == 0
        doc = json.loads((tmp_path / name / "energy.json").read_text())
        doc["meta"] = {k: v for k, v in doc["meta"].items() if k not in ("seconds", "run_s", "count_s", "checkpoint")}
        docs.append(doc)
    assert docs[0] == docs[1]
    assert docs[0]["counting"]["access_bits"] == 32


def test_integer_network_counts(digits_ckpt, tmp_path, capsys):
    pytest.importorskip("scipy")
    out = tmp_path / "int"
    assert main([str(digits_ckpt), "--samples", "4", "-b", "4", "-o", str(out), "--no-progress",
                 "--integer"]) == 0
    doc = json.loads((out / "energy.json").read_text())
    assert doc["meta"]["mode"].startswith("integer network")
    assert doc["totals"]["counts"]["neuron_updates"] > 0


@pytest.mark.parametrize("argv,msg", [
    (["missing.pth.tar"], "checkpoint not found"),
    (["{ckpt}", "--data", "nope"], "unknown dataset"),
    (["{ckpt}", "--data", "cifar10-dvs"], "input channel"),
    (["{ckpt}", "--samples", "-1"], "--samples"),
    (["{ckpt}", "--access-bits", "16"], "sdt-energy:"),
])
def test_bad_input_is_one_line_and_writes_nothing(digits_ckpt, tmp_path, capsys, argv, msg):
    out = tmp_path / "rep"
    argv = [a.replace("{ckpt}", str(digits_ckpt)) for a in argv] + ["-o", str(out), "--no-progress"]
    assert main(argv) == 2
    assert msg in _one_line_error(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(digits_ckpt), "--samples", "2", "-o", str(out), "--no-progress"]) == 2
    assert "holds no energy report" in _one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_checkpoint_without_dataset_needs_data(tmp_path, capsys):
    path = tmp_path / "bare.pth.tar"
    save_checkpoint(path, tiny_model(0, in_channels=1, num_classes=10, embed_dims=32, num_heads=4))
    assert main([str(path), "-o", str(tmp_path / "rep"), "--no-progress"]) == 2
    assert "pass --data" in _one_line_error(capsys)
