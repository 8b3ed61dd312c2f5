"""The model against the spec (sdt_v1_spec.md §0-§5): keys, shapes, parameter counts, attention, DVS, TET, seeds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sdt
from sdt.neurons import lif_multistep_torch
from tests.conftest import tiny_model

BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def expected_keys_8_384() -> list[tuple[str, tuple[int, ...]]]:
    """Spec §5.1, written out independently of the model code."""
    keys: list[tuple[str, tuple[int, ...]]] = []

    def bn(prefix: str, c: int) -> None:
        for k in BN:
            keys.append((f"{prefix}.{k}", () if k == "num_batches_tracked" else (c,)))

    sps = [("proj_conv", "proj_bn", 48, 3), ("proj_conv1", "proj_bn1", 96, 48), ("proj_conv2", "proj_bn2", 192, 96),
           ("proj_conv3", "proj_bn3", 384, 192), ("rpe_conv", "rpe_bn", 384, 384)]
    for conv, b, cout, cin in sps:
        keys.append((f"patch_embed.{conv}.weight", (cout, cin, 3, 3)))
        bn(f"patch_embed.{b}", cout)
    for i in range(8):
        p = f"block.{i}.attn"
        for n in "qkv":
            keys.append((f"{p}.{n}_conv.weight", (384, 384, 1, 1)))
            bn(f"{p}.{n}_bn", 384)
        keys.append((f"{p}.talking_heads.weight", (8, 8, 1)))
        keys.append((f"{p}.proj_conv.weight", (384, 384, 1, 1)))
        keys.append((f"{p}.proj_conv.bias", (384,)))
        bn(f"{p}.proj_bn", 384)
        m = f"block.{i}.mlp"
        keys += [(f"{m}.fc1_conv.weight", (1536, 384, 1, 1)), (f"{m}.fc1_conv.bias", (1536,))]
        bn(f"{m}.fc1_bn", 1536)
        keys += [(f"{m}.fc2_conv.weight", (384, 1536, 1, 1)), (f"{m}.fc2_conv.bias", (384,))]
        bn(f"{m}.fc2_bn", 384)
    keys += [("head.weight", (1000, 384)), ("head.bias", (1000,))]
    return keys


def imagenet(depth: int, dim: int, **kw) -> sdt.SpikeDrivenTransformer:
    return sdt.create_model(img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, embed_dims=dim,
                            num_heads=8, mlp_ratios=4, depths=depth, T=4, pooling_stat="1111", **kw)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_state_dict_keys_order_shapes_8_384():
    sd = imagenet(8, 384).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected_keys_8_384()
    assert len(sd) == 352


def test_plif_extra_keys():
    lif_keys = set(imagenet(8, 384).state_dict())
    plif = imagenet(8, 384, spike_mode="plif").state_dict()
    extra = sorted(set(plif) - lif_keys)
    expected = [f"patch_embed.{n}.w" for n in ("proj_lif", "proj_lif1", "proj_lif2", "proj_lif3", "rpe_lif")]
    for i in range(8):
        expected += [f"block.{i}.attn.{n}.w" for n in ("q_lif", "k_lif", "v_lif", "attn_lif", "talking_heads_lif",
                                                        "shortcut_lif")]
        expected += [f"block.{i}.mlp.{n}.w" for n in ("fc1_lif", "fc2_lif")]
    expected.append("head_lif.w")
    assert extra == sorted(expected) and len(extra) == 5 + 8 * 8 + 1 == 70
    assert all(plif[k].shape == () and float(plif[k]) == 0.0 for k in extra)  # w = -log(tau-1) = 0


@pytest.mark.parametrize("depth,dim,millions", [(8, 384, 16.82), (6, 512, 23.37), (8, 512, 29.69), (10, 512, 36.01),
                                                (8, 768, 66.34)])
def test_imagenet_parameter_counts(depth, dim, millions):
    with torch.device("meta"):  # shapes only: 66M parameters need no memory
        model = imagenet(depth, dim)
    assert round(n_params(model) / 1e6, 2) == millions


@pytest.mark.parametrize("dim,millions", [(512, 10.23), (256, 2.57)])
def test_cifar10_parameter_counts(dim, millions):
    with torch.device("meta"):
        model = sdt.create_model(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=dim,
                                 num_heads=8, mlp_ratios=4, depths=2, T=4, pooling_stat="0011")
    assert round(n_params(model) / 1e6, 2) == millions


def test_exact_param_count_8_384():
    with torch.device("meta"):
        assert n_params(imagenet(8, 384)) == 16_816_536


def test_sdsa_is_q_and_or_tokens_k_and_v():
    model = tiny_model(seed=1)
    x = torch.rand(3, 3, 16, 16)
    _, h = sdt.observe(model, x)
    q, k, v = h["MS_SSA_Conv0_q_lif"], h["MS_SSA_Conv0_k_lif"], h["MS_SSA_Conv0_v_lif"]
    gate = (k * v).amax(dim=(3, 4), keepdim=True)  # OR over tokens, per channel and step
    expected = q * gate
    assert torch.equal(h["MS_SSA_Conv0_x_after_qkv"], expected)
    assert 0 < expected.sum() < expected.numel()  # the check is not vacuous
    assert set(torch.unique(q).tolist()) <= {0.0, 1.0}


def test_num_heads_has_no_effect_outside_dvs():
    a = tiny_model(seed=2, num_heads=1)
    b = tiny_model(seed=2, num_heads=8)
    sd = {k: v for k, v in a.state_dict().items() if "talking_heads" not in k}
    b.load_state_dict(sd, strict=False)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def _erode(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def test_dvs_mode_applies_erode_as_spec():
    """Recompute the DVS attention independently (spec §4.4) from the block's own layers."""
    model = tiny_model(seed=3, dvs_mode=True, in_channels=2, num_heads=4)
    attn = model.block[0].attn
    x = torch.rand(2, 4, 2, 16, 16) * 2  # event frames [B,T,C,H,W]
    _, h = sdt.observe(model, x)
    s = h["MS_SSA_Conv0_first_lif"]
    t, b, c, hh, ww = s.shape

    def branch(conv, bn, lif):
        y = bn(conv(s.flatten(0, 1))).reshape(t, b, c, hh, ww)
        return lif(y)

    q = branch(attn.q_conv, attn.q_bn, attn.q_lif)
    k = _erode(branch(attn.k_conv, attn.k_bn, attn.k_lif))
    v = _erode(branch(attn.v_conv, attn.v_bn, attn.v_lif))
    heads = lambda z: z.flatten(3).transpose(-1, -2).reshape(t, b, hh * ww, 4, c // 4).permute(0, 1, 3, 2, 4)
    kv = _erode(heads(k) * heads(v))
    a = lif_multistep_torch(kv.sum(-2, keepdim=True), 0.5, 0.5)
    y = _erode(heads(q) * a).transpose(3, 4).reshape(t, b, c, hh, ww)
    assert torch.equal(h["MS_SSA_Conv0_k_lif"], k)
    assert torch.equal(h["MS_SSA_Conv0_x_after_qkv"], y)
    # and the erode really changes something on this input
    assert not torch.equal(k, branch(attn.k_conv, attn.k_bn, attn.k_lif))


def test_tet_returns_per_step_logits():
    model = tiny_model(TET=True)
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (4, 2, 5)
    plain = tiny_model(TET=False)
    assert torch.allclose(plain(torch.rand(2, 3, 16, 16) * 0 + 0.5), model(torch.full((2, 3, 16, 16), 0.5)).mean(0))


def test_input_forms_and_state_reset():
    model = tiny_model()
    x = torch.rand(2, 3, 16, 16)
    y1 = model(x)
    y2 = model(x)  # no reset_net needed between calls
    assert torch.equal(y1, y2)
    frames = x.unsqueeze(1).repeat(1, 4, 1, 1, 1)
    assert torch.equal(model(frames), y1)
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(2, 3, 3, 16, 16))


def test_same_seed_identical_logits():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    a = sdt.create_model(**{**tiny_kwargs(), "depths": 2})
    torch.manual_seed(123)
    b = sdt.create_model(**{**tiny_kwargs(), "depths": 2})
    assert torch.equal(a(x), b(x))
    torch.manual_seed(124)
    c = sdt.create_model(**{**tiny_kwargs(), "depths": 2})
    assert not torch.equal(a.head.weight, c.head.weight)


def tiny_kwargs() -> dict:
    from tests.conftest import TINY

    return dict(TINY)


def test_observe_names_cover_official_hooks():
    model = tiny_model(depths=2)
    _, h = sdt.observe(model, torch.rand(1, 3, 16, 16))
    official = ["MS_SPS_lif", "MS_SPS_lif1", "MS_SPS_lif2", "MS_SPS_lif3", "head_lif"]
    for i in range(2):
        official += [f"MS_SSA_Conv{i}_{n}" for n in ("first_lif", "q_lif", "k_lif", "v_lif", "kv_before", "kv",
                                                     "x_after_qkv")]
        official += [f"MS_MLP_Conv{i}_{n}" for n in ("fc1_lif", "fc2_lif")]
    assert set(official) <= set(h)
    for name in official:
        assert set(torch.unique(h[name]).tolist()) <= {0.0, 1.0}, name
    assert h["MS_SPS_out"].shape == (4, 1, 32, 4, 4)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="depths must be an int"):
        sdt.create_model(**{**tiny_kwargs(), "depths": [6, 8, 6]})
    with pytest.raises(ValueError, match="divisible"):
        sdt.create_model(**{**tiny_kwargs(), "img_size_h": 18, "img_size_w": 18})
    with pytest.raises(ValueError, match="spike_mode"):
        sdt.create_model(**{**tiny_kwargs(), "spike_mode": "alif"})
    with pytest.raises(TypeError, match="unknown SDT argument"):
        sdt.create_model(**tiny_kwargs(), bogus=1)
    sdt.create_model(**tiny_kwargs(), drop_path_rate=0.2, qkv_bias=False, sr_ratios=1)  # official inert args


def test_nir_clean_variant_pools_spikes():
    model = tiny_model(seed=4, variant="nir_clean", pooling_stat="0011")
    _, h = sdt.observe(model, torch.rand(2, 3, 16, 16))
    pre = h["MS_SPS_lif3_prepool"]
    assert torch.equal(h["MS_SPS_lif3"], F.max_pool2d(pre.flatten(0, 1), 3, 2, 1).reshape(h["MS_SPS_lif3"].shape))
    assert set(torch.unique(h["MS_SPS_lif3"]).tolist()) <= {0.0, 1.0}
    assert model.state_dict().keys() == tiny_model(seed=4).state_dict().keys()  # same weights, other wiring


def test_timm_registry():
    import timm

    import sdt.registry  # noqa: F401

    m = timm.create_model("sdt", **tiny_kwargs(), patch_size=None, drop_path_rate=0.1)
    assert isinstance(m, sdt.SpikeDrivenTransformer)
