"""Registers the SDT with timm as ``sdt`` so official call sites (``timm.create_model("sdt", ...)``) work."""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from .model import SpikeDrivenTransformer


TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@register_model
def sdt(pretrained: bool = False, **kwargs: Any) -> SpikeDrivenTransformer:
    """timm entry point; ``pretrained`` must be False (weights are never downloaded)."""
    if pretrained:
        raise ValueError("pretrained weights are never downloaded; load a local file with sdt.load_checkpoint")
    for key in TIMM_ONLY:  # hub/cache plumbing that timm adds to every call
        kwargs.pop(key, None)
    return SpikeDrivenTransformer(**kwargs)
