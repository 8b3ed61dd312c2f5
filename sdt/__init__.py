"""sdt: the Spike-Driven Transformer v1 as the official code computes it (model, neurons, configs, checkpoints, data).

    import sdt
    model = sdt.create_model("cifar10_2_512")            # a named official config
    model = sdt.create_model(embed_dims=256, depths=2, T=4, img_size_h=32, img_size_w=32, in_channels=3,
                             num_classes=10, pooling_stat="0011")
    logits, tensors = sdt.observe(model, images)         # every named spike / membrane tensor
    model = sdt.load_checkpoint("model_best.pth.tar")   # official or our checkpoints, strict, weights_only
"""
from __future__ import annotations

from typing import Any

from .model import MODEL_ARGS, SpikeDrivenTransformer, observe

__version__ = "0.1.0"


def create_model(config: str | None = None, **kwargs: Any) -> SpikeDrivenTransformer:
    """Build an SDT from a named config / official YAML path and/or the official constructor kwargs."""
    if config is not None:
        from .config import load_config, model_kwargs

        kwargs = {**model_kwargs(load_config(config)), **kwargs}
    return SpikeDrivenTransformer(**kwargs)


def load_checkpoint(*args: Any, **kwargs: Any) -> SpikeDrivenTransformer:
    """See :func:`sdt.checkpoint.load_checkpoint`."""
    from .checkpoint import load_checkpoint as _load

    return _load(*args, **kwargs)


__all__ = ["create_model", "load_checkpoint", "observe", "SpikeDrivenTransformer", "MODEL_ARGS", "__version__"]
