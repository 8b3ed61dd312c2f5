"""Build the :class:`~export.graph.Graph` of a trained SDT: ``build_graph(model)``.

This is the only place that looks at the PyTorch modules. BatchNorm is taken in eval form (running statistics) and
stored with its conv as the per-channel ``bn_scale``/``bn_shift`` that PyTorch's own BatchNorm kernel computes (read
back by probing the kernel), so that every executor reproduces the model bit for bit; :func:`export.graph.fold_bn`
gives the folded weights.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdt.errors import UserError
from sdt.model import SpikeDrivenTransformer
from sdt.neurons import MultiStepLIF, MultiStepPLIF

from .graph import Graph, Node, Shape

HEAD_LAYOUT_HOOKS = ("_kv_before", "_kv")  # hooks the model records in its [T,B,h,N,d] head layout


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` such that eval ``bn(z) == z * scale + shift`` with PyTorch's own rounding.

    The kernel computes the scale from ``rsqrt(var + eps) * weight`` and the shift with a fused multiply-add; rather
    than re-deriving that, feed it z = 1 with mean = bias = 0 (gives the scale) and z = 0 (gives the shift).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise UserError(f"BatchNorm {bn} has no running statistics; export needs a model trained with them")
    c = bn.num_features
    with torch.no_grad():
        zeros = torch.zeros(c)
        scale = F.batch_norm(torch.ones(1, c, 1, 1), zeros, bn.running_var, bn.weight, zeros, False, 0.0, bn.eps)
        shift = F.batch_norm(torch.zeros(1, c, 1, 1), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                             bn.eps)
    return _np(scale.flatten()), _np(shift.flatten())


def lif_attrs(neuron: MultiStepLIF) -> dict[str, Any]:
    """The exact float32 charge factor and threshold of a model neuron."""
    if not isinstance(neuron, MultiStepLIF):
        raise UserError(f"expected an SDT LIF neuron, found {type(neuron).__name__}")
    with torch.no_grad():
        decay = neuron.decay()
        decay = float(decay.to(torch.float32)) if isinstance(decay, torch.Tensor) else float(np.float32(decay))
    if not 0.0 < decay <= 1.0 or not math.isfinite(decay):
        raise UserError(f"LIF decay {decay} is outside (0, 1]; the neuron cannot be exported")
    return {"v_threshold": float(neuron.v_threshold), "decay": decay, "v_reset": 0.0,
            "parametric": isinstance(neuron, MultiStepPLIF)}


def _pool_attrs(pool: nn.MaxPool2d) -> dict[str, tuple[int, int]]:
    pair = lambda v: (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))  # noqa: E731
    if pair(pool.dilation) != (1, 1) or pool.ceil_mode:
        raise UserError(f"max-pool {pool} uses dilation/ceil_mode, which the exporter does not support")
    return {"kernel_size": pair(pool.kernel_size), "stride": pair(pool.stride or pool.kernel_size),
            "padding": pair(pool.padding)}


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.shapes: dict[str, Shape] = {}

    def add(self, name: str, op: str, inputs: tuple[str, ...], shape: Shape, source: str = "",
            params: Mapping[str, np.ndarray] | None = None, **attrs: Any) -> str:
        self.nodes.append(Node(name, op, inputs, shape, params or {}, attrs, source))
        self.shapes[name] = tuple(shape)
        return name

    def conv(self, name: str, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_name: str) -> str:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError(f"{name}: only numeric zero padding is supported")
        params = {"weight": _np(conv.weight)}
        if conv.bias is not None:
            params["bias"] = _np(conv.bias)
        params["bn_scale"], params["bn_shift"] = bn_affine(bn)
        c, h, w = self.shapes[x]
        kh, kw = conv.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
        shape = (conv.out_channels, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                 (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
        return self.add(name, "conv2d", (x,), shape, f"{name}+{bn_name}", params, stride=(sh, sw), padding=(ph, pw),
                        dilation=(dh, dw), groups=conv.groups, bn=bn_name)

    def lif(self, name: str, x: str, neuron: MultiStepLIF, source: str) -> str:
        return self.add(name, "lif", (x,), self.shapes[x], source, **lif_attrs(neuron))

    def pool(self, name: str, op: str, x: str, source: str, **attrs: Any) -> str:
        c, h, w = self.shapes[x]
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"]
        return self.add(name, op, (x,), (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1), source, **attrs)


def _default_encoding(cfg: Mapping[str, Any]) -> str:
    # event datasets (2 polarity channels) feed frames; static images are repeated T times (the model accepts both)
    return "frames" if cfg.get("dvs_mode") or cfg.get("in_channels") == 2 else "repeat"


def build_graph(model: SpikeDrivenTransformer, *, encoding: str | None = None,
                normalization: Mapping[str, Any] | None = None) -> Graph:
    """The graph of ``model`` (any config, variant, spike mode; eval semantics: BN running statistics).

    ``encoding``: 'repeat' (image repeated T times) or 'frames' (event frames ``[B,T,C,H,W]``); by default 'frames'
    for DVS/2-channel models. ``normalization``: e.g. ``{"mean": [...], "std": [...]}`` applied by the data pipeline
    before the model, recorded in the metadata only.
    """
    model = getattr(model, "module", model)
    if not isinstance(model, SpikeDrivenTransformer):
        raise UserError(f"build_graph needs an SDT model (sdt.create_model / sdt.load_checkpoint), got "
                        f"{type(model).__name__}")
    cfg = dict(model.model_config)
    encoding = encoding or _default_encoding(cfg)
    sps = model.patch_embed
    stat, variant = sps.pooling_stat, sps.variant
    b = _Builder()
    hooks: dict[str, tuple[str, str]] = {}

    def hook(h: str, node: str) -> str:
        hooks[h] = (node, "heads" if h.endswith(HEAD_LAYOUT_HOOKS) else "plain")
        return node

    x = b.add("input", "input", (), (cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"]), "input")
    for i, sfx in enumerate(["", "1", "2"]):
        c = b.conv(f"patch_embed.proj_conv{sfx}", x, getattr(sps, f"proj_conv{sfx}"), getattr(sps, f"proj_bn{sfx}"),
                   f"patch_embed.proj_bn{sfx}")
        x = hook(f"MS_SPS_lif{sfx}", b.lif(f"MS_SPS_lif{sfx}", c, getattr(sps, f"proj_lif{sfx}"),
                                             f"patch_embed.proj_lif{sfx}"))
        if stat[i] == "1":
            x = b.pool(f"patch_embed.maxpool{sfx}", "maxpool_binary", x, f"patch_embed.maxpool{sfx}",
                       **_pool_attrs(getattr(sps, f"maxpool{sfx}")))
    c3 = b.conv("patch_embed.proj_conv3", x, sps.proj_conv3, sps.proj_bn3, "patch_embed.proj_bn3")
    if variant == "nir_clean" and stat[3] == "1":
        # spikes are max-pooled after the LIF (an OR) and the residual is average-pooled: no extension needed
        x_feat = b.pool("patch_embed.x_feat_pool", "avgpool", c3, "patch_embed (nir_clean avg_pool2d)",
                        kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
        pre = hook("MS_SPS_lif3_prepool", b.lif("MS_SPS_lif3_prepool", c3, sps.proj_lif3, "patch_embed.proj_lif3"))
        s3 = b.pool("MS_SPS_lif3", "maxpool_binary", pre, "patch_embed.maxpool3", **_pool_attrs(sps.maxpool3))
    else:
        x_feat = c3
        if stat[3] == "1":  # official: on the real-valued BN output, before the LIF
            x_feat = b.pool("patch_embed.maxpool3", "maxpool", c3, "patch_embed.maxpool3", **_pool_attrs(sps.maxpool3))
        s3 = b.lif("MS_SPS_lif3", x_feat, sps.proj_lif3, "patch_embed.proj_lif3")
    hook("MS_SPS_x_feat", x_feat)
    hook("MS_SPS_lif3", s3)
    rpe = b.conv("patch_embed.rpe_conv", s3, sps.rpe_conv, sps.rpe_bn, "patch_embed.rpe_bn")
    u = hook("MS_SPS_out", b.add("MS_SPS_out", "add", (rpe, x_feat), b.shapes[rpe], "patch_embed (rpe + x_feat)"))
    grid = b.shapes[u][1:]

    for layer, blk in enumerate(model.block):
        attn, mlp = blk.attn, blk.mlp
        a, p = f"MS_SSA_Conv{layer}", f"block.{layer}.attn"
        s = hook(f"{a}_first_lif", b.lif(f"{a}_first_lif", u, attn.shortcut_lif, f"{p}.shortcut_lif"))
        branch = {}
        for n in "qkv":
            conv = b.conv(f"{p}.{n}_conv", s, getattr(attn, f"{n}_conv"), getattr(attn, f"{n}_bn"), f"{p}.{n}_bn")
            spikes = b.lif(f"{a}_{n}_lif" if (n == "q" or not attn.dvs) else f"{p}.{n}_lif", conv,
                           getattr(attn, f"{n}_lif"), f"{p}.{n}_lif")
            if attn.dvs and n != "q":
                spikes = b.add(f"{a}_{n}_lif", "erode", (spikes,), b.shapes[spikes], f"{p}.pool", mode="spatial")
            branch[n] = hook(f"{a}_{n}_lif", spikes)
        kv = hook(f"{a}_kv_before", b.add(f"{a}_kv_before", "and", (branch["k"], branch["v"]), b.shapes[s],
                                          f"{p} (k * v)"))
        if attn.dvs:
            kv = b.add(f"{p}.kv_pool", "erode", (kv,), b.shapes[kv], f"{p}.pool", mode="heads",
                       num_heads=attn.num_heads)
        count = b.add(f"{p}.kv_sum", "sum_tokens", (kv,), (b.shapes[kv][0], 1, 1), f"{p} (sum over tokens)")
        gate = hook(f"{a}_kv", b.lif(f"{a}_kv", count, attn.talking_heads_lif, f"{p}.talking_heads_lif"))
        wide = b.add(f"{p}.kv_broadcast", "broadcast", (gate,), b.shapes[s], f"{p} (broadcast over tokens)",
                     grid=grid)
        y_name = f"{p}.qkv" if attn.dvs else f"{a}_x_after_qkv"
        y = b.add(y_name, "and", (branch["q"], wide), b.shapes[s], f"{p} (q * kv)")
        if attn.dvs:
            y = b.add(f"{a}_x_after_qkv", "erode", (y,), b.shapes[y], f"{p}.pool", mode="heads",
                      num_heads=attn.num_heads)
        hook(f"{a}_x_after_qkv", y)
        proj = b.conv(f"{p}.proj_conv", y, attn.proj_conv, attn.proj_bn, f"{p}.proj_bn")
        u = hook(f"{a}_out", b.add(f"{a}_out", "add", (proj, u), b.shapes[proj], f"{p} (membrane shortcut)"))

        m, mp = f"MS_MLP_Conv{layer}", f"block.{layer}.mlp"
        s1 = hook(f"{m}_fc1_lif", b.lif(f"{m}_fc1_lif", u, mlp.fc1_lif, f"{mp}.fc1_lif"))
        hidden = b.conv(f"{mp}.fc1_conv", s1, mlp.fc1_conv, mlp.fc1_bn, f"{mp}.fc1_bn")
        identity = u
        if mlp.res:  # mlp_ratio 1: the official inner residual, which also becomes the identity
            hidden = identity = b.add(f"{mp}.hidden", "add", (hidden, u), b.shapes[hidden], f"{mp} (inner shortcut)")
        s2 = hook(f"{m}_fc2_lif", b.lif(f"{m}_fc2_lif", hidden, mlp.fc2_lif, f"{mp}.fc2_lif"))
        out = b.conv(f"{mp}.fc2_conv", s2, mlp.fc2_conv, mlp.fc2_bn, f"{mp}.fc2_bn")
        u = hook(f"{m}_out", b.add(f"{m}_out", "add", (out, identity), b.shapes[out], f"{mp} (membrane shortcut)"))

    mean = hook("head_mean", b.add("head_mean", "mean_tokens", (u,), (b.shapes[u][0],), "forward_features (mean)"))
    z = hook("head_lif", b.lif("head_lif", mean, model.head_lif, "head_lif"))
    if isinstance(model.head, nn.Linear):
        params = {"weight": _np(model.head.weight)}
        if model.head.bias is not None:
            params["bias"] = _np(model.head.bias)
        z = b.add("head", "linear", (z,), (model.head.out_features,), "head", params)
    b.add("output", "output", (z,), b.shapes[z], "forward (mean over T)" if not model.TET else "forward (TET)",
          reduce="none" if model.TET else "mean")

    metadata = {
        "model_config": json.dumps(cfg, sort_keys=True),
        "hooks": hooks,
        "num_heads": int(cfg["num_heads"]),
        "variant": variant,
        "normalization": dict(normalization) if normalization else None,
        "threshold_rule": "model fires on h >= v_threshold",
    }
    try:
        return Graph(tuple(b.nodes), T=int(cfg["T"]), encoding=encoding, metadata=metadata)
    except ValueError as e:
        raise UserError(f"cannot build the export graph: {e}") from None


__all__ = ["build_graph", "bn_affine", "lif_attrs", "HEAD_LAYOUT_HOOKS"]
