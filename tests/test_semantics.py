"""The integer network's meaning in one place: synapse source nodes, the typed input encoding, shared bounds."""
from __future__ import annotations

import numpy as np
import torch

from deploy.encoding import InputEncoding
from deploy.intnet import load, save, synapse_name, synapse_node
from deploy.quantize import QuantConfig, quantize_graph
from deploy.semantics import current_range, weight_sums
from export.from_model import build_graph
from tests.conftest import tiny_model


def test_every_synapse_knows_its_graph_node_and_the_file_keeps_it(tmp_path):
    for weight_terms in (1, 2):
        graph = build_graph(tiny_model(seed=1, variant="nir_clean", pooling_stat="1111", img_size_h=32,
                                       img_size_w=32))
        net, _ = quantize_graph(graph, QuantConfig(weight_terms=weight_terms, bias_synapse=True))
        assert all(s.node for s in net.synapses)
        # every synapse carrying a conv/linear node's own kernel names that node
        own = [s for s in net.synapses if s.node in graph and graph.node(s.node).op in ("conv2d", "linear")]
        assert own and all(s.kind != "sparse" for s in own)
        save(net, tmp_path / "n.intnet.npz")
        loaded = load(tmp_path / "n.intnet.npz")
        assert [s.node for s in loaded.synapses] == [s.node for s in net.synapses]
    assert synapse_node(synapse_name("block.0.mlp.fc1_conv", "MS_MLP_Conv0_fc2_lif", 1)) == "block.0.mlp.fc1_conv"


def test_typed_encoding_reads_the_stored_dict_and_encodes_as_before():
    graph = build_graph(tiny_model())
    net, _ = quantize_graph(graph, QuantConfig(input_levels=256))
    enc = net.input_encoding
    assert (enc.mode, enc.kind, enc.levels, enc.min) == ("repeat", "pixel_levels", 256, 0)
    x = torch.rand(3, *graph.input.shape, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    xi = enc.encode(x)
    assert xi.min() == 0 and xi.max() == 256 and enc.out_of_range(x) > 0
    assert np.array_equal(xi, np.clip(np.round(x.numpy().astype(np.float64) * 256), 0, 256))
    assert InputEncoding.from_mapping({"mode": "frames"}).mode == "frames"
    assert InputEncoding.from_mapping({}).mode is None


def test_weight_sums_border_aware_versus_per_channel():
    w = np.array([[[[1, -2, 3], [0, 4, -1], [2, 0, 1]]]], np.int64)  # 1 -> 1 channel, 3x3
    conv = ((1, 1), (1, 1), (1, 1), 1)
    pos, neg = weight_sums("conv", w, 16, conv=conv, src_shape=(1, 4, 4))
    full_pos, full_neg = weight_sums("conv", w, 16)
    assert full_pos.tolist() == [11] * 16 and full_neg.tolist() == [-3] * 16
    assert pos[0] == 4 + 1 + 0 and neg[0] == -1  # the top-left corner sees the lower-right 2x2 of the kernel
    assert pos[5] == 11 and neg[5] == -3  # an inner neuron sees the whole kernel
    lo, hi = current_range(pos, neg, 0, 1)
    assert hi[5] == 11 and lo[5] == -3
