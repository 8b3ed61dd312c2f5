"""Each block's ``emit`` describes exactly what its ``forward`` computes.

For every block class, the block's emitted graph fragment (run by the graph executor) holds every hook tensor its
``forward`` records, under the same hook name and bit for bit (spikes and membrane tensors alike), and emits no hook
that forward does not record.
"""
from __future__ import annotations

import functools

import pytest
import torch

import sdt
from export.from_model import build_fragment, build_graph
from export.graph import Graph
from export.run_graph import hooks_in_graph_layout, run_graph
from sdt.model import MS_SPS, MS_Block_Conv, MS_MLP_Conv, MS_SSA_Conv, is_spike_tensor
from tests.conftest import tiny_model

BATCH = 8

# name -> (seed, tiny_model overrides): official, NIR-clean, DVS, TET and PLIF models, plus the other branches
VARIANTS: dict[str, tuple[int, dict]] = {
    "official": (0, {}),
    "official_1111": (1, dict(pooling_stat="1111", img_size_h=32, img_size_w=32)),
    "nir_clean": (4, dict(variant="nir_clean", pooling_stat="1111", img_size_h=32, img_size_w=32)),
    "nir_clean_0011": (4, dict(variant="nir_clean")),
    "dvs": (3, dict(dvs_mode=True, in_channels=2)),
    "tet": (22, dict(TET=True)),
    "plif": (5, dict(spike_mode="plif")),
    "mlp_res_depth2": (7, dict(mlp_ratios=1, depths=2)),
    "identity_head": (2, dict(num_classes=0)),
}


@functools.lru_cache(maxsize=None)
def case(name: str) -> tuple[sdt.SpikeDrivenTransformer, torch.Tensor, dict[str, torch.Tensor]]:
    """(model, input batch, every hook tensor of the whole model on it), computed once."""
    seed, overrides = VARIANTS[name]
    model = tiny_model(seed=seed, **overrides)
    g = torch.Generator().manual_seed(seed)
    if model.model_config["spike_mode"] == "plif":
        for n in model.neurons():  # decays away from LIF's 0.5, so PLIF is really tested
            n.w.data = 0.8 * torch.randn((), generator=g)
    cfg = model.model_config
    if cfg["in_channels"] == 2:  # event frames [B,T,2,H,W]
        x = torch.poisson(torch.full((BATCH, cfg["T"], 2, cfg["img_size_h"], cfg["img_size_w"]), 0.6), generator=g)
    else:
        x = torch.rand(BATCH, cfg["in_channels"], cfg["img_size_h"], cfg["img_size_w"], generator=g)
    with torch.no_grad():
        _, hooks = sdt.observe(model, x)
    return model, x, hooks


def assert_hooks_match(graph: Graph, hooks: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    """Every hook ``forward`` recorded is a hook of ``graph`` whose node output (``tensors``) equals it exactly, and
    ``graph`` has no other hooks."""
    missing = sorted(set(hooks) - set(graph.hooks))
    assert not missing, f"recorded by forward but not emitted: {missing}"
    extra = sorted(set(graph.hooks) - set(hooks))
    assert not extra, f"emitted but not recorded by forward: {extra}"
    for h, t in hooks.items():
        ((node, ref),) = hooks_in_graph_layout(graph, {h: t}).items()
        assert tensors[node].shape == ref.shape, f"{h}: shape {tuple(tensors[node].shape)} vs {tuple(ref.shape)}"
        assert torch.equal(tensors[node], ref), f"{h} (node {node}) differs from forward"


def assert_spiking(hooks: dict[str, torch.Tensor]) -> None:
    """Guard against vacuous equality: some spike tensor of the block is neither silent nor saturated."""
    rates = [float(t.mean()) for h, t in hooks.items() if is_spike_tensor(h)]
    assert any(0.0 < r < 1.0 for r in rates), f"every spike tensor is silent or saturated: {rates}"


def check_block(block: torch.nn.Module, x_seq: torch.Tensor) -> Graph:
    """Run ``block.forward`` on ``x_seq`` ``[T,B,...]`` and its emitted fragment on the same input; compare."""
    hooks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = block(x_seq, hook=hooks)
    assert hooks, "forward recorded nothing"
    assert_spiking(hooks)
    graph = build_fragment(block, tuple(x_seq.shape[2:]), x_seq.shape[0])
    last, tensors = run_graph(graph, x_seq.transpose(0, 1), record=True)
    assert_hooks_match(graph, hooks, tensors)
    assert torch.equal(last, out), "the fragment's last node differs from forward's result"
    return graph


def block_input(hooks: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The membrane stream entering block ``layer`` (its attention) in the whole model's run."""
    return hooks["MS_SPS_out"] if layer == 0 else hooks[f"MS_MLP_Conv{layer - 1}_out"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sps_emits_what_forward_records(name):
    model, x, _ = case(name)
    assert isinstance(model.patch_embed, MS_SPS)
    check_block(model.patch_embed, model.encode(x))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_ssa_emits_what_forward_records(name):
    model, _, hooks = case(name)
    for layer, blk in enumerate(model.block):
        assert isinstance(blk.attn, MS_SSA_Conv)
        check_block(blk.attn, block_input(hooks, layer))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_mlp_emits_what_forward_records(name):
    model, _, hooks = case(name)
    for layer, blk in enumerate(model.block):
        assert isinstance(blk.mlp, MS_MLP_Conv)
        check_block(blk.mlp, hooks[f"MS_SSA_Conv{layer}_out"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_block_emits_what_forward_records(name):
    model, _, hooks = case(name)
    for layer, blk in enumerate(model.block):
        assert isinstance(blk, MS_Block_Conv)
        check_block(blk, block_input(hooks, layer))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_and_head_emit_what_forward_records(name):
    model, x, _ = case(name)
    hooks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits = model(x, hook=hooks)
    graph = build_graph(model)
    out, tensors = run_graph(graph, x, record=True)
    assert_hooks_match(graph, hooks, tensors)
    assert torch.equal(out, logits)
    assert graph.output.attrs["reduce"] == ("none" if model.TET else "mean")
    assert ("head" in graph) == isinstance(model.head, torch.nn.Linear)


def test_a_hook_forward_records_but_the_graph_lacks_is_detected():
    model, x, _ = case("official")
    graph = check_block(model.patch_embed, model.encode(x))
    hooks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model.patch_embed(model.encode(x), hook=hooks)
    _, tensors = run_graph(graph, model.encode(x).transpose(0, 1), record=True)
    for victim in ("MS_SPS_lif1", "MS_SPS_out"):
        lacking = Graph(graph.nodes, graph.T, graph.encoding,
                        {**graph.metadata, "hooks": {h: v for h, v in graph.hooks.items() if h != victim}})
        with pytest.raises(AssertionError, match=victim):
            assert_hooks_match(lacking, hooks, tensors)
    # and a membrane tensor one float32 step off is caught too
    node = graph.hooks["MS_SPS_x_feat"][0]
    changed = {**tensors, node: torch.nextafter(tensors[node], torch.tensor(float("inf")))}
    with pytest.raises(AssertionError, match="MS_SPS_x_feat"):
        assert_hooks_match(graph, hooks, changed)
