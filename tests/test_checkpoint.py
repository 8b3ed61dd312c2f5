"""Checkpoint loading: official timm CheckpointSaver format, strictness, safety (weights_only + allowlist)."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

import sdt
from sdt.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from sdt.errors import CheckpointError
from tests.conftest import tiny_model

OFFICIAL_ARGS = dict(model="sdt", dataset="torch/cifar10", num_classes=5, img_size=16, in_channels=3, time_steps=4,
                     layer=1, dim=32, num_heads=4, mlp_ratio=4, pooling_stat="0011", spike_mode="lif", TET=False,
                     lr=3e-4, opt="adamw", epochs=300, seed=42)


def official_file(path, model: torch.nn.Module, prefix: str = "", **args_overrides) -> None:
    """A file laid out like timm 0.6.12's CheckpointSaver output, random weights."""
    ns = argparse.Namespace(**{**OFFICIAL_ARGS, **args_overrides})
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 12, "arch": "sdt", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                "version": 2, "args": ns, "metric": 81.25}, path)


def test_official_format_loads_strictly_and_rebuilds_config(tmp_path):
    src = tiny_model(seed=5)
    path = tmp_path / "model_best.pth.tar"
    official_file(path, src)
    model = sdt.load_checkpoint(path)
    assert model.model_config["embed_dims"] == 32 and model.model_config["depths"] == 1
    assert model.model_config["pooling_stat"] == "0011" and model.model_config["T"] == 4
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x), src(x))


def test_ddp_module_prefix_is_stripped(tmp_path):
    src = tiny_model(seed=6)
    path = tmp_path / "ddp.pth.tar"
    official_file(path, src, prefix="module.")
    assert torch.equal(load_checkpoint(path).head.weight, src.head.weight)


def test_plif_official_checkpoint(tmp_path):
    src = tiny_model(seed=7, spike_mode="plif")
    path = tmp_path / "plif.pth.tar"
    official_file(path, src, spike_mode="plif")
    model = load_checkpoint(path)
    assert model.model_config["spike_mode"] == "plif"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": tiny_model().state_dict(), "args": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_raw_pickle_file_is_refused(tmp_path):
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps({"state_dict": {}, "args": Exploit()}))
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_wrong_shape_names_first_mismatching_key(tmp_path):
    path = tmp_path / "wrong.pth.tar"
    official_file(path, tiny_model(embed_dims=64, num_heads=4), dim=32)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj_conv\.weight.*shape"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys(tmp_path):
    sd = tiny_model().state_dict()
    del sd["block.0.attn.talking_heads.weight"]
    path = tmp_path / "missing.pth.tar"
    torch.save({"state_dict": sd, "args": argparse.Namespace(**OFFICIAL_ARGS)}, path)
    with pytest.raises(CheckpointError, match="missing key 'block.0.attn.talking_heads.weight'"):
        load_checkpoint(path)
    sd = tiny_model().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "args": argparse.Namespace(**OFFICIAL_ARGS)}, path)
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        load_checkpoint(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    save_checkpoint(good, tiny_model())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_own_checkpoint_roundtrip_needs_no_config(tmp_path):
    src = tiny_model(seed=8, variant="nir_clean", TET=True)
    path = tmp_path / "ours.pth"
    save_checkpoint(path, src, epoch=3)
    model = load_checkpoint(path)
    assert model.model_config == src.model_config
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x), src(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pth"]  # no temp file left behind


def test_ema_weights_selectable(tmp_path):
    src, ema = tiny_model(seed=1), tiny_model(seed=2)
    path = tmp_path / "ema.pth"
    save_checkpoint(path, src, state_dict_ema=ema.state_dict())
    assert torch.equal(load_checkpoint(path, use_ema=True).head.weight, ema.head.weight)
    assert torch.equal(load_checkpoint(path).head.weight, src.head.weight)


def test_deit_style_model_key_loads(tmp_path):
    # read_checkpoint accepts weights under "model" (timm/DeiT train scripts); load_checkpoint must load them too
    src, ema = tiny_model(seed=9), tiny_model(seed=10)
    path = tmp_path / "deit.pth"
    torch.save({"model": src.state_dict(), "model_ema": ema.state_dict(), "epoch": 5,
                "args": argparse.Namespace(**OFFICIAL_ARGS)}, path)
    assert "model" in read_checkpoint(path)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(load_checkpoint(path)(x), src(x))
    assert torch.equal(load_checkpoint(path, use_ema=True).head.weight, ema.head.weight)
    bad = tmp_path / "bad.pth"
    torch.save({"model": "sdt", "args": argparse.Namespace(**OFFICIAL_ARGS)}, bad)
    with pytest.raises(CheckpointError, match="'model' holds str, not a state dict"):
        load_checkpoint(bad)
