"""Graph <-> model: the export graph and its executor reproduce ``sdt.observe`` exactly, node by node."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdt
from export.from_model import bn_affine, build_graph
from export.graph import OPS, Graph, Node, fold_bn
from export.kernels import channel_affine
from export.run_graph import hooks_in_graph_layout, run_graph
from sdt.checkpoint import save_checkpoint
from sdt.errors import UserError
from tests.conftest import tiny_model

N_INPUTS = 100

# name -> tiny_model overrides; every case is checked on N_INPUTS inputs
CASES: dict[str, dict] = {
    "cifar_0011": dict(),
    "imagenet_1111": dict(pooling_stat="1111", img_size_h=32, img_size_w=32),
    "dvs_t10": dict(dvs_mode=True, in_channels=2, T=10, num_heads=4),
    "plif": dict(spike_mode="plif"),
    "non_square": dict(img_size_h=16, img_size_w=24),
    "dvs_non_square": dict(dvs_mode=True, in_channels=2, T=3, num_heads=4, img_size_h=16, img_size_w=24),
    "nir_clean_1111": dict(variant="nir_clean", pooling_stat="1111", img_size_h=32, img_size_w=32),
    "mlp_ratio1_depth2": dict(mlp_ratios=1, depths=2),
    "tet": dict(TET=True),
}
# the paper's CIFAR-10 2-256 model (2.57M parameters) at its native 32x32
CIFAR_2_256 = dict(embed_dims=256, num_heads=8, depths=2, img_size_h=32, img_size_w=32, num_classes=10)


def make_model(name: str) -> sdt.SpikeDrivenTransformer:
    overrides = CIFAR_2_256 if name == "cifar10_2_256" else CASES[name]
    model = tiny_model(seed=7, **overrides)
    g = torch.Generator().manual_seed(3)
    for m in model.modules():  # official init zeroes conv biases; non-zero ones exercise the bias path
        if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.data = 0.3 * torch.randn(m.bias.shape, generator=g)
    if model.model_config["spike_mode"] == "plif":
        for n in model.neurons():  # decays away from 0.5, so 'plif' differs from 'lif' in the test
            n.w.data = 0.8 * torch.randn((), generator=g)
    return model


def make_input(model: sdt.SpikeDrivenTransformer, n: int = N_INPUTS) -> torch.Tensor:
    cfg = model.model_config
    g = torch.Generator().manual_seed(11)
    if cfg["in_channels"] == 2:  # event frames: non-negative integer counts [B,T,2,H,W]
        rate = torch.full((n, cfg["T"], 2, cfg["img_size_h"], cfg["img_size_w"]), 0.6)
        return torch.poisson(rate, generator=g)
    return torch.rand(n, cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"], generator=g)


@functools.lru_cache(maxsize=None)
def case(name: str) -> tuple[sdt.SpikeDrivenTransformer, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(model, inputs, logits, hook tensors), computed once per test session (the NIR tests reuse them)."""
    model = make_model(name)
    x = make_input(model)
    with torch.no_grad():
        logits, hooks = sdt.observe(model, x)
    return model, x, logits, hooks


@functools.lru_cache(maxsize=None)
def graph_run(name: str) -> tuple[Graph, torch.Tensor, dict[str, torch.Tensor]]:
    """(graph, logits, every node's tensor) of the graph executor on ``case(name)``'s inputs, computed once."""
    model, x, *_ = case(name)
    graph = build_graph(model)
    logits, tensors = run_graph(graph, x, record=True)
    return graph, logits, tensors


def assert_spiking(hooks: dict[str, torch.Tensor]) -> None:
    """Guard against vacuous equality: the network really fires (and not everywhere)."""
    for name, t in hooks.items():
        if name.endswith("lif") and name != "MS_SPS_lif3_prepool":
            assert 0.0 < float(t.mean()) < 1.0, f"{name} is silent or saturated: the test would prove little"


@pytest.mark.parametrize("name", list(CASES))
def test_graph_executor_equals_model_at_every_hook(name):
    model, x, logits, hooks = case(name)
    assert_spiking(hooks)
    graph, out, tensors = graph_run(name)
    assert torch.equal(out, logits)
    expected = hooks_in_graph_layout(graph, hooks)
    assert set(expected) == {graph.hooks[h][0] for h in hooks}  # every recorded tensor has its node
    for node, ref in expected.items():
        assert tensors[node].shape == ref.shape == (graph.T, x.shape[0], *graph.node(node).shape), node
        assert torch.equal(tensors[node], ref), f"{node} differs from the model"


def test_graph_structure_and_names():
    model, *_ = case("dvs_t10")
    g = build_graph(model)
    names = [n.name for n in g]
    assert names[0] == "input" and names[-1] == "output" and g.output.attrs["reduce"] == "mean"
    assert {n.op for n in g} <= OPS
    assert {"erode", "and", "sum_tokens", "broadcast", "add", "lif", "conv2d", "mean_tokens", "linear"} <= {
        n.op for n in g}
    # official hook names for spike tensors, module paths for synaptic layers, BN folded into its conv node
    q = g.node("block.0.attn.q_conv")
    assert q.op == "conv2d" and q.source == "block.0.attn.q_conv+block.0.attn.q_bn"
    assert set(q.params) == {"weight", "bn_scale", "bn_shift"} and q.params["weight"].shape == (32, 32, 1, 1)
    assert "bias" in g.node("block.0.attn.proj_conv").params
    assert [c.name for c in g.consumers("block.0.attn.q_conv")] == ["MS_SSA_Conv0_q_lif"]
    assert [n.name for n in g.inputs_of("MS_SSA_Conv0_kv_before")] == ["MS_SSA_Conv0_k_lif", "MS_SSA_Conv0_v_lif"]
    assert g.node("MS_SSA_Conv0_k_lif").op == "erode" and g.node("block.0.attn.k_lif").op == "lif"
    assert g.node("block.0.attn.kv_pool").attrs == {"mode": "heads", "num_heads": 4}
    kv = g.node("MS_SSA_Conv0_kv")
    assert kv.shape == (32, 1, 1) and kv.attrs["v_threshold"] == 0.5 and kv.attrs["decay"] == 0.5
    assert g.node("head_mean").shape == (32,) and g.node("head").shape == (5,)
    assert g.encoding == "frames" and g.T == 10
    assert g.hooks["MS_SSA_Conv0_kv"] == ("MS_SSA_Conv0_kv", "heads")
    assert not any("bn" in n.op for n in g)
    with pytest.raises(UserError, match="no node"):
        g.node("nope")
    for n in g:  # stored arrays are frozen
        for a in n.params.values():
            assert not a.flags.writeable


def test_official_extension_and_clean_variant_are_graph_facts():
    official = build_graph(case("imagenet_1111")[0])
    clean = build_graph(case("nir_clean_1111")[0])
    assert [n.name for n in official if n.op == "maxpool"] == ["patch_embed.maxpool3"]
    assert not any(n.op == "maxpool" for n in clean)
    assert clean.node("MS_SPS_lif3").op == "maxpool_binary"
    assert clean.node("patch_embed.x_feat_pool").op == "avgpool"


def test_plif_decay_is_the_exact_float32_sigmoid():
    model, *_ = case("plif")
    g = build_graph(model)
    lif = g.node("MS_SSA_Conv0_q_lif")
    expected = float(torch.sigmoid(model.block[0].attn.q_lif.w.detach()))
    assert lif.attrs["decay"] == expected != 0.5 and lif.attrs["parametric"]


def test_bn_scale_shift_reproduce_batchnorm_bitwise():
    g = torch.Generator().manual_seed(0)
    for c, h, w, n in [(5, 7, 3, 9), (64, 8, 8, 40), (17, 1, 1, 3)]:
        bn = torch.nn.BatchNorm2d(c).eval()
        bn.weight.data = torch.randn(c, generator=g)
        bn.bias.data = torch.randn(c, generator=g)
        bn.running_mean.data = torch.randn(c, generator=g)
        bn.running_var.data = 0.01 + torch.rand(c, generator=g)
        z = 3 * torch.randn(n, c, h, w, generator=g)
        scale, shift = bn_affine(bn)
        with torch.no_grad():
            assert torch.equal(channel_affine(z, torch.from_numpy(scale), torch.from_numpy(shift)), bn(z))


def test_fold_bn_matches_conv_then_bn():
    model, x, *_ = case("cifar_0011")
    g = build_graph(model)
    node = g.node("patch_embed.proj_conv")
    w, b = fold_bn(node)
    assert w.dtype == b.dtype == np.float32
    conv, bn = model.patch_embed.proj_conv, model.patch_embed.proj_bn
    with torch.no_grad():
        ref = bn(conv(x[:8]))
        folded = F.conv2d(x[:8], torch.from_numpy(w), torch.from_numpy(b), 1, 1)
    assert torch.allclose(folded, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="conv2d/linear"):
        fold_bn(g.node("MS_SPS_lif"))


def test_graph_from_checkpoint_is_identical(tmp_path):
    model, *_ = case("plif")
    path = tmp_path / "m.pth.tar"
    save_checkpoint(path, model)
    a, b = build_graph(model), build_graph(sdt.load_checkpoint(path))
    assert [n.name for n in a] == [n.name for n in b]
    for na, nb in zip(a, b):
        assert na.attrs == nb.attrs and na.shape == nb.shape
        assert all(np.array_equal(na.params[k], nb.params[k]) for k in na.params)


def test_graph_validation_catches_malformed_graphs():
    inp = Node("input", "input", (), (3, 4, 4))
    out = Node("output", "output", ("input",), (3, 4, 4))
    Graph((inp, out), T=2)
    with pytest.raises(ValueError, match="topological"):
        Graph((out, inp), T=2)
    with pytest.raises(ValueError, match="unknown op"):
        Graph((inp, Node("x", "relu", ("input",), (3, 4, 4)), out), T=2)
    with pytest.raises(ValueError, match="shape"):
        Graph((inp, Node("s", "sum_tokens", ("input",), (3, 4, 4)), out), T=2)
    with pytest.raises(ValueError, match="2 input"):
        Graph((inp, Node("a", "add", ("input",), (3, 4, 4)), out), T=2)
    with pytest.raises(ValueError, match="encoding"):
        Graph((inp, out), T=2, encoding="rate")


def test_bad_inputs_are_user_errors():
    model, *_ = case("cifar_0011")
    g = build_graph(model)
    with pytest.raises(UserError, match="does not fit"):
        run_graph(g, torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match="frames"):
        run_graph(g, torch.rand(2, 3, 3, 16, 16))
    with pytest.raises(UserError, match="unknown node"):
        run_graph(g, torch.rand(1, 3, 16, 16), record=["nope"])
    with pytest.raises(UserError, match="SDT model"):
        build_graph(torch.nn.Linear(2, 2))
    with pytest.raises(UserError, match="encoding"):
        build_graph(model, encoding="rate")
