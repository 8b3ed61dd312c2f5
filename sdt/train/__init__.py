"""Training pieces behind ``train.py``: arguments, data, the timm recipe, the loop, checkpoints and resume.

Each module holds one idea and can be used on its own (``build_optimizer``, ``TETLoss``, ``CheckpointSaver`` ...);
:func:`sdt.train.runner.run` wires them into the official training script's behaviour.
"""
from __future__ import annotations

from .args import build_parser, parse_args
from .presets import PRESETS

__all__ = ["build_parser", "parse_args", "PRESETS"]
