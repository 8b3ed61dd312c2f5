"""The Spike-Driven Transformer v1 (Yao et al., NeurIPS 2023) exactly as the official code computes it.

Module names, registration order and parameter shapes follow the official `model/spikeformer.py`, `module/sps.py` and
`module/ms_conv.py`, so the released checkpoints load strictly (including the unused ``talking_heads`` Conv1d and, in
plif mode, the ``w`` of never-called neurons). Tensors inside the network are ``[T, B, C, H, W]``; conv, BN and pooling
fold time into batch, so BatchNorm statistics are shared over all time steps.

Observation: pass ``hook={}`` to ``forward`` (or use :func:`observe`) to receive every named spike tensor under the
official hook names (``MS_SPS_lif``, ``MS_SSA_Conv0_q_lif``, ``MS_MLP_Conv0_fc1_lif``, ``head_lif`` ...) plus the
membrane-stream tensors (``MS_SPS_x_feat``, ``MS_SPS_out``, ``MS_SSA_Conv0_out``, ``MS_MLP_Conv0_out``, ``head_mean``).

Graph export: every block's ``emit(b, x)``, written next to its ``forward``, describes the same data flow to a
:class:`~sdt.graph_builder.GraphBuilder` (node names = the hook names above, else the official module paths). The
decisions both need (hook names, which stages pool, where stage 3 pools) are small helpers used by both.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .graph_builder import GraphBuilder
from .neurons import MultiStepLIF, make_neuron

Hook = dict[str, torch.Tensor] | None
# "official": the released architecture. "nir_clean": SPS stage 3 pools spikes after the LIF and average-pools the
# residual, so the whole network maps onto standard NIR primitives (our addition, not in the paper).
VARIANTS = ("official", "nir_clean")
X_FEAT_POOL = 2  # nir_clean: window (= stride) of the average pool of the SPS stage-3 residual

# Arguments the official constructor accepts and ignores (kept so official call sites work unchanged).
INERT_ARGS = ("patch_size", "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "norm_layer",
              "sr_ratios", "attn_mode", "get_embed", "cml", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
              "drop_block_rate")


def _seq(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame module to ``[T, B, ...]`` by folding T into the batch."""
    t, b = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(t, b, *y.shape[1:])


def _record(hook: Hook, name: str, x: torch.Tensor) -> None:
    if hook is not None:
        hook[name] = x.detach()


class Erode(nn.Module):
    """The official DVS-mode 'Erode': MaxPool3d(kernel (1,3,3), stride 1, pad (0,1,1)) on a 5-D tensor (a dilation)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class MS_SPS(nn.Module):
    """Spiking patch splitting stem: 4 conv-BN-LIF stages (+ optional max-pools) and the RPE conv."""

    STAGES = ("", "1", "2")  # module-name suffixes of the conv-BN-LIF(-max-pool) stages before stage 3
    path = "patch_embed"  # module path in the model: prefix of the graph's node names

    def __init__(self, img_size_h: int = 128, img_size_w: int = 128, patch_size: int = 4, in_channels: int = 2,
                 embed_dims: int = 256, pooling_stat: str = "1111", spike_mode: str = "lif",
                 neuron_backend: str = "torch", variant: str = "official") -> None:
        super().__init__()
        self.image_size = [img_size_h, img_size_w]
        self.pooling_stat = pooling_stat
        self.variant = variant
        d = embed_dims
        widths = [in_channels, d // 8, d // 4, d // 2, d]
        for i, sfx in enumerate((*self.STAGES, "3")):
            setattr(self, f"proj_conv{sfx}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            setattr(self, f"proj_bn{sfx}", nn.BatchNorm2d(widths[i + 1]))
            setattr(self, f"proj_lif{sfx}", make_neuron(spike_mode, backend=neuron_backend))
            setattr(self, f"maxpool{sfx}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1,
                                                       ceil_mode=False))
        self.rpe_conv = nn.Conv2d(d, d, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(d)
        self.rpe_lif = make_neuron(spike_mode, backend=neuron_backend)  # built but never called (official)

    @staticmethod
    def hook_name(part: str) -> str:
        return f"MS_SPS_{part}"

    def pools(self, stage: int) -> bool:
        """Whether stage ``stage`` (0-3) max-pools (``pooling_stat``)."""
        return self.pooling_stat[stage] == "1"

    @property
    def stage3_pool(self) -> str:
        """Where stage 3 pools: 'none'; 'before_lif' (official: max-pool of the real BN output); 'after_lif'
        (nir_clean: max-pool of the spikes, residual average-pooled, so every op is a standard NIR primitive)."""
        if not self.pools(3):
            return "none"
        return "after_lif" if self.variant == "nir_clean" else "before_lif"

    def forward(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        for i, sfx in enumerate(self.STAGES):
            x = _seq(getattr(self, f"proj_bn{sfx}"), _seq(getattr(self, f"proj_conv{sfx}"), x))
            x = getattr(self, f"proj_lif{sfx}")(x)
            _record(hook, self.hook_name(f"lif{sfx}"), x)
            if self.pools(i):
                x = _seq(getattr(self, f"maxpool{sfx}"), x)  # on binary spikes: an OR
        x = _seq(self.proj_bn3, _seq(self.proj_conv3, x))
        stage3 = self.stage3_pool
        if stage3 == "after_lif":
            x_feat = _seq(lambda z: F.avg_pool2d(z, X_FEAT_POOL, X_FEAT_POOL), x)
            x = self.proj_lif3(x)
            _record(hook, self.hook_name("lif3_prepool"), x)
            x = _seq(self.maxpool3, x)
        else:
            if stage3 == "before_lif":
                x = _seq(self.maxpool3, x)
            x_feat = x
            x = self.proj_lif3(x)
        _record(hook, self.hook_name("x_feat"), x_feat)
        _record(hook, self.hook_name("lif3"), x)
        x = _seq(self.rpe_bn, _seq(self.rpe_conv, x)) + x_feat  # float membrane stream; rpe_lif is not applied
        _record(hook, self.hook_name("out"), x)
        return x

    def emit(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward` as graph nodes."""
        p, name = self.path, self.hook_name
        for i, sfx in enumerate(self.STAGES):
            x = b.conv(f"{p}.proj_conv{sfx}", x, getattr(self, f"proj_conv{sfx}"), getattr(self, f"proj_bn{sfx}"),
                       f"{p}.proj_bn{sfx}")
            x = b.hook(name(f"lif{sfx}"), b.lif(name(f"lif{sfx}"), x, getattr(self, f"proj_lif{sfx}"),
                                                f"{p}.proj_lif{sfx}"))
            if self.pools(i):
                x = b.maxpool(f"{p}.maxpool{sfx}", "maxpool_binary", x, getattr(self, f"maxpool{sfx}"),
                              f"{p}.maxpool{sfx}")
        x = b.conv(f"{p}.proj_conv3", x, self.proj_conv3, self.proj_bn3, f"{p}.proj_bn3")
        stage3 = self.stage3_pool
        if stage3 == "after_lif":
            k = (X_FEAT_POOL, X_FEAT_POOL)
            x_feat = b.op(f"{p}.x_feat_pool", "avgpool", (x,), f"{p} (nir_clean avg_pool2d)", kernel_size=k, stride=k,
                          padding=(0, 0))
            x = b.hook(name("lif3_prepool"), b.lif(name("lif3_prepool"), x, self.proj_lif3, f"{p}.proj_lif3"))
            x = b.maxpool(name("lif3"), "maxpool_binary", x, self.maxpool3, f"{p}.maxpool3")
        else:
            if stage3 == "before_lif":
                x = b.maxpool(f"{p}.maxpool3", "maxpool", x, self.maxpool3, f"{p}.maxpool3")
            x_feat = x
            x = b.lif(name("lif3"), x, self.proj_lif3, f"{p}.proj_lif3")
        b.hook(name("x_feat"), x_feat)
        b.hook(name("lif3"), x)
        x = b.conv(f"{p}.rpe_conv", x, self.rpe_conv, self.rpe_bn, f"{p}.rpe_bn")
        return b.hook(name("out"), b.op(name("out"), "add", (x, x_feat), f"{p} (rpe + x_feat)"))


class MS_SSA_Conv(nn.Module):
    """Spike-driven self-attention as coded: ``Q AND SN_0.5(sum_tokens K AND V)``, proj conv + BN, membrane shortcut."""

    def __init__(self, dim: int, num_heads: int = 8, spike_mode: str = "lif", dvs: bool = False, layer: int = 0,
                 neuron_backend: str = "torch") -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dims {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.dvs = dvs
        self.num_heads = num_heads
        self.layer = layer
        if dvs:
            self.pool = Erode()
        self.scale = 0.125  # official attribute, unused
        nb = neuron_backend
        self.q_conv = nn.Conv2d(dim, dim, 1, 1, bias=False)
        self.q_bn = nn.BatchNorm2d(dim)
        self.q_lif = make_neuron(spike_mode, backend=nb)
        self.k_conv = nn.Conv2d(dim, dim, 1, 1, bias=False)
        self.k_bn = nn.BatchNorm2d(dim)
        self.k_lif = make_neuron(spike_mode, backend=nb)
        self.v_conv = nn.Conv2d(dim, dim, 1, 1, bias=False)
        self.v_bn = nn.BatchNorm2d(dim)
        self.v_lif = make_neuron(spike_mode, backend=nb)
        self.attn_lif = make_neuron(spike_mode, v_threshold=0.5, backend=nb)  # unused in forward (official)
        self.talking_heads = nn.Conv1d(num_heads, num_heads, kernel_size=1, stride=1, bias=False)  # unused
        self.talking_heads_lif = make_neuron(spike_mode, v_threshold=0.5, backend=nb)
        self.proj_conv = nn.Conv2d(dim, dim, 1, 1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.shortcut_lif = make_neuron(spike_mode, backend=nb)
        self.mode = "direct_xor"  # official attribute, unused

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T,B,C,H,W] -> [T,B,h,N,d]; channel c goes to head c // d, slot c % d; tokens in raster order."""
        t, b, c = x.shape[:3]
        return x.flatten(3).transpose(-1, -2).reshape(t, b, -1, self.num_heads, c // self.num_heads).permute(
            0, 1, 3, 2, 4)

    @property
    def path(self) -> str:
        return f"block.{self.layer}.attn"

    def hook_name(self, part: str) -> str:
        return f"MS_SSA_Conv{self.layer}_{part}"

    def forward(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        t, b, c, h, w = x.shape
        identity = x
        name = self.hook_name
        x = self.shortcut_lif(x)
        _record(hook, name("first_lif"), x)
        q = self.q_lif(_seq(self.q_bn, _seq(self.q_conv, x)))
        _record(hook, name("q_lif"), q)
        k = self.k_lif(_seq(self.k_bn, _seq(self.k_conv, x)))
        v = self.v_lif(_seq(self.v_bn, _seq(self.v_conv, x)))
        if self.dvs:
            k, v = self.pool(k), self.pool(v)
        _record(hook, name("k_lif"), k)
        _record(hook, name("v_lif"), v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        kv = k.mul(v)
        _record(hook, name("kv_before"), kv)
        if self.dvs:
            kv = self.pool(kv)
        kv = self.talking_heads_lif(kv.sum(dim=-2, keepdim=True))
        _record(hook, name("kv"), kv)
        y = q.mul(kv)
        if self.dvs:
            y = self.pool(y)
        y = y.transpose(3, 4).reshape(t, b, c, h, w).contiguous()
        _record(hook, name("x_after_qkv"), y)
        x = _seq(self.proj_bn, _seq(self.proj_conv, y)) + identity
        _record(hook, name("out"), x)
        return x

    def emit(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward` as graph nodes (the tensors forward holds in its head layout are hooked as 'heads')."""
        p, name = self.path, self.hook_name
        identity = x
        s = b.hook(name("first_lif"), b.lif(name("first_lif"), x, self.shortcut_lif, f"{p}.shortcut_lif"))
        qkv = {}
        for n in "qkv":
            x = b.conv(f"{p}.{n}_conv", s, getattr(self, f"{n}_conv"), getattr(self, f"{n}_bn"), f"{p}.{n}_bn")
            eroded = self.dvs and n != "q"  # the hook name goes to the last node of the branch
            x = b.lif(f"{p}.{n}_lif" if eroded else name(f"{n}_lif"), x, getattr(self, f"{n}_lif"), f"{p}.{n}_lif")
            if eroded:
                x = b.op(name(f"{n}_lif"), "erode", (x,), f"{p}.pool", mode="spatial")
            qkv[n] = b.hook(name(f"{n}_lif"), x)
        kv = b.hook(name("kv_before"), b.op(name("kv_before"), "and", (qkv["k"], qkv["v"]), f"{p} (k * v)"), "heads")
        if self.dvs:
            kv = b.op(f"{p}.kv_pool", "erode", (kv,), f"{p}.pool", mode="heads", num_heads=self.num_heads)
        kv = b.op(f"{p}.kv_sum", "sum_tokens", (kv,), f"{p} (sum over tokens)")
        kv = b.hook(name("kv"), b.lif(name("kv"), kv, self.talking_heads_lif, f"{p}.talking_heads_lif"), "heads")
        kv = b.op(f"{p}.kv_broadcast", "broadcast", (kv,), f"{p} (broadcast over tokens)", grid=b.shape(s)[1:])
        y = b.op(f"{p}.qkv" if self.dvs else name("x_after_qkv"), "and", (qkv["q"], kv), f"{p} (q * kv)")
        if self.dvs:
            y = b.op(name("x_after_qkv"), "erode", (y,), f"{p}.pool", mode="heads", num_heads=self.num_heads)
        b.hook(name("x_after_qkv"), y)
        x = b.conv(f"{p}.proj_conv", y, self.proj_conv, self.proj_bn, f"{p}.proj_bn")
        return b.hook(name("out"), b.op(name("out"), "add", (x, identity), f"{p} (membrane shortcut)"))


class MS_MLP_Conv(nn.Module):
    """Two 1x1 conv layers with biases, each behind a LIF, plus the membrane shortcut."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 spike_mode: str = "lif", layer: int = 0, neuron_backend: str = "torch") -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.res = in_features == hidden_features
        self.layer = layer
        self.fc1_conv = nn.Conv2d(in_features, hidden_features, kernel_size=1, stride=1)
        self.fc1_bn = nn.BatchNorm2d(hidden_features)
        self.fc1_lif = make_neuron(spike_mode, backend=neuron_backend)
        self.fc2_conv = nn.Conv2d(hidden_features, out_features, kernel_size=1, stride=1)
        self.fc2_bn = nn.BatchNorm2d(out_features)
        self.fc2_lif = make_neuron(spike_mode, backend=neuron_backend)
        self.c_hidden = hidden_features
        self.c_output = out_features

    @property
    def path(self) -> str:
        return f"block.{self.layer}.mlp"

    def hook_name(self, part: str) -> str:
        return f"MS_MLP_Conv{self.layer}_{part}"

    def forward(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        identity = x
        name = self.hook_name
        x = self.fc1_lif(x)
        _record(hook, name("fc1_lif"), x)
        x = _seq(self.fc1_bn, _seq(self.fc1_conv, x))
        if self.res:  # only when mlp_ratio == 1 (official inner residual)
            x = identity + x
            identity = x
        x = self.fc2_lif(x)
        _record(hook, name("fc2_lif"), x)
        x = _seq(self.fc2_bn, _seq(self.fc2_conv, x)) + identity
        _record(hook, name("out"), x)
        return x

    def emit(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward` as graph nodes."""
        p, name = self.path, self.hook_name
        identity = x
        s = b.hook(name("fc1_lif"), b.lif(name("fc1_lif"), x, self.fc1_lif, f"{p}.fc1_lif"))
        h = b.conv(f"{p}.fc1_conv", s, self.fc1_conv, self.fc1_bn, f"{p}.fc1_bn")
        if self.res:
            h = identity = b.op(f"{p}.hidden", "add", (h, identity), f"{p} (inner shortcut)")
        s = b.hook(name("fc2_lif"), b.lif(name("fc2_lif"), h, self.fc2_lif, f"{p}.fc2_lif"))
        h = b.conv(f"{p}.fc2_conv", s, self.fc2_conv, self.fc2_bn, f"{p}.fc2_bn")
        return b.hook(name("out"), b.op(name("out"), "add", (h, identity), f"{p} (membrane shortcut)"))


class MS_Block_Conv(nn.Module):
    """One encoder block: SDSA then MLP. The official DropPath module exists but is never applied."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, spike_mode: str = "lif",
                 dvs: bool = False, layer: int = 0, neuron_backend: str = "torch") -> None:
        super().__init__()
        self.attn = MS_SSA_Conv(dim, num_heads=num_heads, spike_mode=spike_mode, dvs=dvs, layer=layer,
                                neuron_backend=neuron_backend)
        self.mlp = MS_MLP_Conv(dim, hidden_features=int(dim * mlp_ratio), spike_mode=spike_mode, layer=layer,
                               neuron_backend=neuron_backend)

    def forward(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        return self.mlp(self.attn(x, hook=hook), hook=hook)

    def emit(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward` as graph nodes."""
        return self.mlp.emit(b, self.attn.emit(b, x))


class SpikeDrivenTransformer(nn.Module):
    """SDT v1. ``forward(x)`` returns logits ``[B, classes]`` (``[T, B, classes]`` with ``TET=True``).

    ``x`` is ``[B, C, H, W]`` (repeated T times: direct encoding) or ``[B, T, C, H, W]`` (event frames).
    Neuron state is reset on every call.
    """

    def __init__(self, img_size_h: int = 128, img_size_w: int = 128, in_channels: int = 2, num_classes: int = 11,
                 embed_dims: int = 512, num_heads: int = 8, mlp_ratios: float = 4, depths: int = 2, T: int = 4,
                 pooling_stat: str = "1111", spike_mode: str = "lif", dvs_mode: bool = False, TET: bool = False,
                 neuron_backend: str = "torch", variant: str = "official", **inert: Any) -> None:
        super().__init__()
        unknown = sorted(set(inert) - set(INERT_ARGS))
        if unknown:
            raise TypeError(f"unknown SDT argument(s): {', '.join(unknown)}")
        if not isinstance(depths, int) or isinstance(depths, bool):
            raise ValueError(f"depths must be an int (number of blocks), got {depths!r}")
        if len(pooling_stat) != 4 or set(pooling_stat) - {"0", "1"}:
            raise ValueError(f"pooling_stat must be 4 characters of 0/1, got {pooling_stat!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown SDT variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        ratio = 2 ** pooling_stat.count("1")
        if img_size_h % ratio or img_size_w % ratio:
            raise ValueError(f"image size {img_size_h}x{img_size_w} must be divisible by {ratio} "
                             f"(pooling_stat {pooling_stat!r})")
        # the full constructor config: saved in our checkpoints so a file alone rebuilds the model
        self.model_config: dict[str, Any] = dict(
            img_size_h=img_size_h, img_size_w=img_size_w, in_channels=in_channels, num_classes=num_classes,
            embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios, depths=depths, T=T,
            pooling_stat=pooling_stat, spike_mode=spike_mode, dvs_mode=dvs_mode, TET=TET, variant=variant)
        self.num_classes = num_classes
        self.depths = depths
        self.T = T
        self.TET = TET
        self.dvs = dvs_mode
        self.patch_embed = MS_SPS(img_size_h=img_size_h, img_size_w=img_size_w, in_channels=in_channels,
                                  embed_dims=embed_dims, pooling_stat=pooling_stat, spike_mode=spike_mode,
                                  neuron_backend=neuron_backend, variant=variant)
        self.block = nn.ModuleList([
            MS_Block_Conv(embed_dims, num_heads, mlp_ratio=mlp_ratios, spike_mode=spike_mode, dvs=dvs_mode, layer=j,
                          neuron_backend=neuron_backend) for j in range(depths)])
        self.head_lif = make_neuron(spike_mode, backend=neuron_backend)
        self.head = nn.Linear(embed_dims, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # official: Conv2d trunc_normal(0.02)/bias 0, BN 1/0; the head Linear and Conv1d keep PyTorch's default init
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def neurons(self) -> list[MultiStepLIF]:
        return [m for m in self.modules() if isinstance(m, MultiStepLIF)]

    def set_neuron_backend(self, backend: str) -> "SpikeDrivenTransformer":
        """Switch every neuron to ``backend`` ('torch', 'spikingjelly' or 'cupy')."""
        for n in self.neurons():
            n.backend = backend
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> ``[T, B, C, H, W]``."""
        if x.dim() == 4:
            return x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        if x.dim() == 5:
            if x.shape[1] != self.T:
                raise ValueError(f"event input has {x.shape[1]} frames but the model runs T={self.T} steps")
            return x.transpose(0, 1).contiguous()
        raise ValueError(f"expected input [B,C,H,W] or [B,T,C,H,W], got shape {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        x = self.patch_embed(x, hook=hook)
        for blk in self.block:
            x = blk(x, hook=hook)
        x = x.flatten(3).mean(3)
        _record(hook, "head_mean", x)
        return x

    def emit_features(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward_features` as graph nodes, from the encoded input node ``x``."""
        x = self.patch_embed.emit(b, x)
        for blk in self.block:
            x = blk.emit(b, x)
        return b.hook("head_mean", b.op("head_mean", "mean_tokens", (x,), "forward_features (mean)"))

    def forward(self, x: torch.Tensor, hook: Hook = None) -> torch.Tensor:
        x = self.forward_features(self.encode(x), hook=hook)
        x = self.head_lif(x)
        _record(hook, "head_lif", x)
        x = self.head(x)
        return x if self.TET else x.mean(0)

    def emit(self, b: GraphBuilder, x: str) -> str:
        """:meth:`forward` as graph nodes, from the encoded input node ``x`` to the ``output`` node (returned)."""
        x = b.hook("head_lif", b.lif("head_lif", self.emit_features(b, x), self.head_lif, "head_lif"))
        if isinstance(self.head, nn.Linear):  # else nn.Identity (num_classes 0)
            x = b.linear("head", x, self.head, "head")
        if self.TET:
            return b.op("output", "output", (x,), "forward (TET)", reduce="none")
        return b.op("output", "output", (x,), "forward (mean over T)", reduce="mean")


MEMBRANE_TENSORS = ("_x_feat", "_out", "head_mean")


def is_spike_tensor(name: str) -> bool:
    """Whether an observed tensor name is a binary spike tensor (else a real-valued membrane-stream tensor)."""
    return not name.endswith(MEMBRANE_TENSORS)


def observe(model: SpikeDrivenTransformer, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one forward pass and return ``(logits, tensors)``: every named spike and membrane-stream tensor."""
    hook: dict[str, torch.Tensor] = {}
    logits = model(x, hook=hook)
    return logits, hook


MODEL_ARGS = ("img_size_h", "img_size_w", "in_channels", "num_classes", "embed_dims", "num_heads", "mlp_ratios",
              "depths", "T", "pooling_stat", "spike_mode", "dvs_mode", "TET", "variant")
