"""Small built-in training settings for the datasets that ship in packages, written with the official YAML keys.

``python train.py`` with no ``-c`` uses the preset named after ``--dataset`` (default ``digits``), so the script trains
on real data out of the box on a CPU. ``-c digits`` selects one explicitly. The values were tuned on a 2-core CPU
(see docs/training.md for the measured results).
"""
from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "model": "sdt", "num_heads": 8, "mlp_ratio": 4, "pooling_stat": "0011", "time_steps": 4, "spike_mode": "lif",
    "in_channels": 1, "num_classes": 10, "sched": "cosine", "opt": "adamw", "smoothing": 0.1, "seed": 42,
    "mixup": 0.0, "cutmix": 0.0, "hflip": 0.0, "aa": None, "workers": 0, "amp": False, "checkpoint_hist": 3,
    "val_batch_size": 256,
}

PRESETS: dict[str, dict[str, Any]] = {
    # 1 block x 64 dims at 16x16 (the 8x8 digits upsampled bilinearly): 112,898 parameters, 99.7 % (docs).
    "digits": {**_COMMON, "dataset": "digits", "img_size": 16, "layer": 1, "dim": 64, "batch_size": 32,
               "lr": 5e-3, "warmup_lr": 1e-4, "min_lr": 1e-5, "weight_decay": 0.01, "epochs": 15,
               "warmup_epochs": 2, "cooldown_epochs": 0},
    # 1 block x 128 dims, T=2, at 24x24 (the 28x28 images resized); SPS pools after stages 0, 2 and 3 (24 -> 12 -> 6
    # -> 3x3 tokens), which keeps an epoch of 60000 images at ~2 CPU-minutes per process; horizontal flips. With
    # torchrun on 2 processes (global batch 64): >= 90 % test top-1 from epoch 14 of 20 (docs/training.md).
    "fashion": {**_COMMON, "dataset": "fashion", "img_size": 24, "layer": 1, "dim": 128, "time_steps": 2,
                "pooling_stat": "1011", "batch_size": 32, "hflip": 0.5, "lr": 3e-3, "warmup_lr": 1e-4,
                "min_lr": 1e-5, "weight_decay": 0.01, "epochs": 20, "warmup_epochs": 0, "cooldown_epochs": 0},
    "mnist": {**_COMMON, "dataset": "mnist", "img_size": 24, "layer": 1, "dim": 64, "pooling_stat": "1011",
              "batch_size": 64, "lr": 3e-3, "warmup_lr": 1e-4, "min_lr": 1e-5, "weight_decay": 0.01, "epochs": 3,
              "warmup_epochs": 0, "cooldown_epochs": 0},
}


def preset(name: str) -> dict[str, Any] | None:
    """A copy of preset ``name`` (aliases such as 'fashion-mnist' accepted), or None."""
    key = name.strip().lower().replace("_", "-")
    key = {"fashion-mnist": "fashion", "fashionmnist": "fashion"}.get(key, key)
    return dict(PRESETS[key]) if key in PRESETS else None
