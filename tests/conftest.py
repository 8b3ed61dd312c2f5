"""Shared test fixtures: small deterministic SDT models."""
from __future__ import annotations

import pytest
import torch

import sdt

TINY = dict(img_size_h=16, img_size_w=16, in_channels=3, num_classes=5, embed_dims=32, num_heads=4, mlp_ratios=4,
            depths=1, T=4, pooling_stat="0011")


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine params and running stats so folding/equality tests can fail."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.6 + 0.6 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model


def tiny_model(seed: int = 0, **overrides) -> sdt.SpikeDrivenTransformer:
    torch.manual_seed(seed)
    cfg = {**TINY, **overrides}
    model = sdt.create_model(**cfg)
    # larger weights than the official 0.02 init so that every layer actually spikes in tests
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=2.0 / m.weight[0].numel() ** 0.5)
    return randomize_bn(model, seed).eval()


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the reference LIF loops are many small ops, and on a loaded 2-core runner a
    second thread only adds contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
