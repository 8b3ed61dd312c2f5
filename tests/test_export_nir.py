"""NIR <-> model: files written by export.nir_writer, read back by stock ``nir.read`` (type checked) and run by our
reader, reproduce the PyTorch model exactly: every spike tensor, every graph node, the logits."""
from __future__ import annotations

import json
import os
import time

import h5py
import nir
import numpy as np
import pytest
import torch

import sdt
from export import nir_writer
from export.from_model import build_graph
from export.nir_reader import NIRProgram, read_nir, run_nir
from export.nir_writer import to_nir, write_nir
from export.run_graph import hooks_in_graph_layout
from sdt.errors import UserError
from tests.test_export_graph import N_INPUTS, assert_spiking, case, graph_run

STANDARD = {"Input", "Output", "Conv2d", "Affine", "Linear", "LIF", "Threshold", "SumPool2d", "AvgPool2d", "Scale",
            "Flatten", "NIRGraph"}


def node_types(g: nir.NIRGraph) -> list[str]:
    out = []
    for node in g.nodes.values():
        out.append(type(node).__name__)
        if isinstance(node, nir.NIRGraph):
            out += node_types(node)
    return out


def check_against_model(name: str, path, full: bool = True) -> nir.NIRGraph:
    """Write, read back with stock nir.read, run; compare every hook (and every graph node if ``full``)."""
    model, x, logits, hooks = case(name)
    assert x.shape[0] >= N_INPUTS
    graph = build_graph(model)
    write_nir(graph, path)
    stock = nir.read(path, type_check=True)  # the file is a valid, type-checked NIR graph for anyone
    assert set(node_types(stock)) <= STANDARD
    expected = hooks_in_graph_layout(graph, hooks)
    out, tensors = read_nir(path).run(x, record=True if full else set(expected))
    assert torch.equal(out, logits), "logits differ from the model"
    for node, ref in expected.items():
        assert torch.equal(tensors[node], ref), f"{node} differs from the model"
    if full:  # every graph node, including sums, counts, broadcasts and the BN'd conv outputs
        _, _, ref_all = graph_run(name)
        assert set(ref_all) <= set(tensors)
        for node, ref in ref_all.items():
            assert torch.equal(tensors[node], ref), f"{node} differs from the graph executor"
    return stock


@pytest.mark.parametrize("name", ["imagenet_1111", "dvs_t10", "plif", "non_square", "dvs_non_square",
                                  "nir_clean_1111", "mlp_ratio1_depth2", "tet"])
def test_nir_file_reproduces_model_exactly(name, tmp_path):
    check_against_model(name, tmp_path / f"{name}.nir")


def test_cifar10_2_256_reproduces_model_exactly(tmp_path):
    """The paper's CIFAR-10 2-256 network (2.57M parameters), 100 images: hooks and logits bit-exact."""
    _, x, _, hooks = case("cifar10_2_256")
    assert_spiking(hooks)
    path = tmp_path / "c256.nir"
    check_against_model("cifar10_2_256", path, full=False)
    params = sum(p.numel() for p in case("cifar10_2_256")[0].parameters())
    assert os.path.getsize(path) <= 1.1 * 4 * params  # the broadcast needs no weights, BN/LIF arrays compress


def test_nir_clean_variant_uses_only_standard_nodes(tmp_path):
    stock = check_against_model("nir_clean_1111", tmp_path / "clean.nir", full=False)
    assert not any(isinstance(n, nir.NIRGraph) for n in stock.nodes.values())
    assert stock.metadata["extensions"] == ""


def test_official_maxpool_is_a_labelled_extension_subgraph(tmp_path):
    stock = check_against_model("imagenet_1111", tmp_path / "official.nir", full=False)
    subs = {k: n for k, n in stock.nodes.items() if isinstance(n, nir.NIRGraph)}
    assert list(subs) == ["patch_embed_maxpool3"]
    ext = subs["patch_embed_maxpool3"]
    assert ext.metadata["sdt_extension"] == "maxpool2d" and list(ext.metadata["kernel_size"]) == [3, 3]
    assert {type(n).__name__ for n in ext.nodes.values()} == {"Input", "AvgPool2d", "Output"}
    assert stock.metadata["extensions"] == "maxpool2d"


def test_metadata_documents_time_input_and_conventions(tmp_path):
    model, *_ = case("dvs_t10")
    path = tmp_path / "dvs.nir"
    write_nir(build_graph(model, normalization={"mean": [0.0, 0.0], "std": [1.0, 1.0]}), path)
    meta = nir.read(path).metadata
    assert meta["dt"] == nir_writer.DT and meta["T"] == 10 and meta["input_encoding"] == "frames"
    assert json.loads(meta["normalization"]) == {"mean": [0.0, 0.0], "std": [1.0, 1.0]}
    assert meta["output_reduction"] == "mean_over_T" and "v > v_threshold" in meta["threshold_convention"]
    assert json.loads(meta["model_config"])["dvs_mode"] is True
    assert json.loads(meta["hooks"])["MS_SSA_Conv0_kv"] == ["MS_SSA_Conv0_kv", "heads"]
    tet = nir.read(write_nir(build_graph(case("tet")[0]), tmp_path / "tet.nir")).metadata
    assert tet["output_reduction"] == "none" and tet["input_encoding"] == "repeat"


def test_strict_thresholds_and_sdsa_encoding():
    g = to_nir(build_graph(case("cifar_0011")[0]))
    one_below = np.nextafter(np.float32(1.0), np.float32(0.0))
    assert np.all(g.nodes["MS_SPS_lif"].v_threshold == one_below)
    attn = g.nodes["MS_SSA_Conv0_kv"]  # lif mode: membrane = count / 2, threshold in the middle of (0.25, 0.5)
    assert attn.v_threshold.shape == (32, 1, 1) and np.all(attn.v_threshold == np.float32(0.375))
    assert np.all(g.nodes["MS_SSA_Conv0_kv_before"].threshold == 1.5)  # K AND V
    col = g.nodes["block_0_attn_kv_sum"]
    bcast = g.nodes["block_0_attn_kv_broadcast"]
    assert isinstance(col, nir.SumPool2d) and list(col.kernel_size) == list(col.stride) == [4, 4]
    assert isinstance(bcast, nir.SumPool2d) and list(bcast.padding) == [3, 3] and list(bcast.stride) == [1, 1]
    assert ("block_0_attn_kv_broadcast", "MS_SSA_Conv0_x_after_qkv") in g.edges
    assert ("MS_SSA_Conv0_q_lif", "MS_SSA_Conv0_x_after_qkv") in g.edges
    # BN of a LIF-driven conv lives in the neuron; the membrane shortcut BN is a diagonal 1x1 conv
    q = g.nodes["MS_SSA_Conv0_q_lif"]
    assert not np.all(q.r == 1) and q.metadata["sdt_input_node"] == "block.0.attn.q_conv"
    diag = g.nodes["block_0_attn_proj_bn"].weight[:, :, 0, 0]
    assert np.count_nonzero(diag - np.diag(np.diag(diag))) == 0
    assert all(getattr(n, "groups", 1) == 1 for n in g.nodes.values())
    plif = to_nir(build_graph(case("plif")[0])).nodes["MS_SSA_Conv0_kv"]
    assert np.all(plif.v_threshold == np.nextafter(np.float32(0.5), np.float32(0.0)))


def same(a, b) -> bool:
    """Deep equality of NIR field values (dicts of arrays, arrays, scalars, strings)."""
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b))


def _leaves(g: nir.NIRGraph, prefix: str = "") -> dict[str, nir.NIRNode]:
    out = {}
    for k, n in g.nodes.items():
        out[prefix + k] = n
        if isinstance(n, nir.NIRGraph):
            out.update(_leaves(n, f"{prefix}{k}/"))
    return out


def test_stream_engine_writes_what_nir_write_writes(tmp_path):
    graph = build_graph(case("dvs_non_square")[0])
    a = nir.read(write_nir(graph, tmp_path / "a.nir", engine="stream"))
    b = nir.read(write_nir(graph, tmp_path / "b.nir", engine="nir"))
    assert a.edges == b.edges and same(a.metadata, b.metadata)
    la, lb = _leaves(a), _leaves(b)
    assert la.keys() == lb.keys()
    for key, na in la.items():
        nb = lb[key]
        assert type(na) is type(nb), key
        da, db = nir_writer.node_dict(na), nir_writer.node_dict(nb)
        assert da.keys() == db.keys(), key
        for field, va in da.items():
            if field != "nodes":
                assert same(va, db[field]), (key, field)
    for node in _leaves(to_nir(graph)).values():  # node_dict mirrors to_dict for every node type we write
        if not isinstance(node, nir.NIRGraph):
            assert nir_writer.node_dict(node).keys() == node.to_dict().keys()
    with h5py.File(tmp_path / "a.nir") as f:  # constants cost no storage
        assert f["node/nodes/MS_SPS_lif/v_threshold"].id.get_storage_size() == 0


def test_fold_bn_option_is_standard_and_close(tmp_path):
    model, x, logits, hooks = case("cifar_0011")
    path = write_nir(build_graph(model), tmp_path / "folded.nir", fold_bn=True)
    g = nir.read(path)
    assert g.metadata["bn_encoding"] == "folded"
    assert not any(k.endswith("_bn") for k in g.nodes) and np.all(g.nodes["MS_SSA_Conv0_q_lif"].r == 1)
    out, tensors = read_nir(path).run(x[:20], record=True)
    logits, hooks = logits[:20], {k: v[:, :20] for k, v in hooks.items()}
    assert torch.allclose(out, logits, atol=1e-3)
    spikes = [n for n in hooks if n.endswith("_lif")]
    agree = sum(int((tensors[n] == hooks[n]).sum()) for n in spikes) / sum(hooks[n].numel() for n in spikes)
    assert agree > 0.999


def test_run_nir_accepts_path_nirgraph_and_graph(tmp_path):
    model, x, logits, _ = case("non_square")
    graph = build_graph(model)
    path = write_nir(graph, tmp_path / "m.nir")
    for src in (path, str(path), nir.read(path), graph):
        out, tensors = run_nir(src, x[:4])
        assert torch.equal(out, logits[:4]) and "MS_SSA_Conv0_kv" in tensors
    prog = NIRProgram(nir.read(path))
    assert prog.T == 4 and prog.hooks["MS_SPS_lif"] == ("MS_SPS_lif", "plain")
    assert torch.equal(prog(x[:3])[0], logits[:3])


def test_write_is_atomic_and_errors_are_user_errors(tmp_path, monkeypatch):
    graph = build_graph(case("cifar_0011")[0])
    path = write_nir(graph, tmp_path / "m.nir")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nir_writer, "_write_node", boom)
    with pytest.raises(RuntimeError):
        write_nir(graph, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.nir"]
    monkeypatch.undo()
    with pytest.raises(UserError, match="engine"):
        write_nir(graph, tmp_path / "x.nir", engine="bogus")
    with pytest.raises(UserError, match="not found"):
        read_nir(tmp_path / "missing.nir")
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="cannot read NIR file"):
        read_nir(tmp_path / "junk.nir")
    with pytest.raises(UserError, match="does not fit"):
        read_nir(path).run(torch.rand(2, 3, 8, 8))
    with pytest.raises(UserError, match="does not run"):
        NIRProgram(nir.NIRGraph.from_list(nir.Input(np.array([3])), nir.LI(np.ones(3), np.ones(3), np.zeros(3)),
                                          nir.Output(np.array([3]))), T=2)


@pytest.mark.skipif(not os.environ.get("SDT_SLOW_TESTS"), reason="ImageNet 8-768 export; set SDT_SLOW_TESTS=1")
def test_imagenet_8_768_export_budget(tmp_path):
    import resource

    from tests.conftest import randomize_bn

    model = sdt.create_model(img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, embed_dims=768,
                             num_heads=8, mlp_ratios=4, depths=8, T=4, pooling_stat="1111").eval()
    randomize_bn(model, 0)  # per-channel BN values: the LIF r / v_leak arrays are not constants
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    path = write_nir(build_graph(model), tmp_path / "in8_768.nir")
    seconds = time.perf_counter() - start
    assert os.path.getsize(path) <= 1.1 * 4 * params
    assert seconds <= 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss <= 2 * 1024 * 1024  # KiB on Linux
    nir.read(path)  # and stock nir type-checks it
