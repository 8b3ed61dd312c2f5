"""sdt-eval on an ImageNet-layout folder: the 8-768 "large-valid" protocol (resize 320, centre-crop 288)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdt.checkpoint import save_checkpoint
from sdt.eval_cli import main
from tests.conftest import tiny_model


@pytest.fixture
def imagenet_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01440764", "n01443537"):
            d = tmp_path / "imagenet" / split / cls
            d.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (350, 400, 3), dtype=np.uint8)).save(d / "a.png")
    return tmp_path / "imagenet"


def test_large_valid_protocol(imagenet_dir, tmp_path):
    model = tiny_model(img_size_h=32, img_size_w=32, in_channels=3, num_classes=4, embed_dims=16, num_heads=2,
                       pooling_stat="1111")
    ckpt = tmp_path / "m.pth.tar"
    save_checkpoint(ckpt, model, args={"dataset": "imagenet", "data_dir": str(imagenet_dir)})
    out = tmp_path / "lv.json"
    assert main([str(ckpt), "--large-valid", "--progress", "false", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["img_size"], report["resize_size"], report["large_valid"]) == (288, 320, True)
    assert report["samples"] == 2 and report["dataset"] == "imagenet"
    # the stem's first spike map has the evaluation resolution: the model really saw 288x288 crops
    assert report["firing_rates"]["firing"]["MS_SPS_lif"]["shape"] == [2, 288, 288]
    # default protocol: the model's own size with crop_pct resize
    out2 = tmp_path / "std.json"
    assert main([str(ckpt), "--progress", "false", "--no-firing", "-o", str(out2)]) == 0
    std = json.loads(out2.read_text())
    assert std["img_size"] == 32 and "firing_rates" not in std


def test_large_valid_refused_for_tensor_datasets(tmp_path, capsys):
    model = tiny_model(img_size_h=8, img_size_w=8, in_channels=1, num_classes=10, embed_dims=16, num_heads=2)
    ckpt = tmp_path / "d.pth.tar"
    save_checkpoint(ckpt, model, args={"dataset": "digits"})
    assert main([str(ckpt), "--large-valid"]) == 2
    assert "large-valid" in capsys.readouterr().err
