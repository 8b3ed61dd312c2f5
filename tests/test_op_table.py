"""The op table (``export/graph.py``) is the one definition of the graph's ops: every backend dispatches one handler
per op of it, and a backend that misses an op fails at import, not on the first model that uses it."""
from __future__ import annotations

import importlib
from types import MappingProxyType

import numpy as np
import pytest

from export import graph as G
from export.graph import OP_TABLE, OPS, Graph, Node, OpSpec, check_handlers
from export.shapes import conv_out_hw, pool_window, window_out

# every module that maps graph ops: graph runner, NIR writer, ONNX writer, quantiser, energy counter
BACKENDS = ["export.run_graph", "export.nir_writer", "export.onnx_writer", "deploy.lowering", "deploy.energy.counter"]


@pytest.mark.parametrize("module", BACKENDS)
def test_every_backend_has_one_handler_per_op(module):
    mod = importlib.import_module(module)
    handlers = mod.OP_HANDLERS
    unsupported = getattr(mod, "UNSUPPORTED_OPS", {})
    assert set(handlers) | set(unsupported) == set(OPS), module
    assert all(callable(h) for h in handlers.values())


def test_a_missing_handler_is_caught(monkeypatch):
    handlers = dict(importlib.import_module("export.run_graph").OP_HANDLERS)
    check_handlers("run_graph", handlers)
    extra = OpSpec("spike_sum", 1, "graded", lambda n, x: x[0])  # a new op added to the table ...
    monkeypatch.setattr(G, "OPS", frozenset(OPS | {"spike_sum"}))
    with pytest.raises(ValueError, match="no handler for op.*spike_sum"):
        G.check_handlers("run_graph", handlers)  # ... that a backend has not learnt yet
    monkeypatch.undo()
    del handlers["lif"]
    with pytest.raises(ValueError, match="lif"):
        check_handlers("run_graph", handlers)
    assert extra.name == "spike_sum"


def test_table_describes_each_op():
    assert set(OP_TABLE) == OPS and isinstance(OP_TABLE, MappingProxyType)
    assert G.BINARY_OPS == {"lif", "and", "maxpool_binary", "erode"}
    assert OP_TABLE["input"].inputs == 0 and OP_TABLE["add"].inputs == OP_TABLE["and"].inputs == 2
    assert all(OP_TABLE[o].inputs == 1 for o in OPS - {"input", "add", "and"})


def _conv(shape, w_shape, **attrs):
    return Node("c", "conv2d", ("x",), shape, {"weight": np.zeros(w_shape, np.float32)}, attrs)


def test_shape_rules_match_hand_computation():
    assert window_out(16, 3, 1, 1) == 16 and window_out(16, 3, 2, 1) == 8 and window_out(7, 3, 2, 0) == 3
    assert window_out(10, 3, 1, 2, 2) == 10  # dilation 2: effective kernel 5
    assert conv_out_hw((15, 9), (3, 1), (2, 1), (1, 0)) == (8, 9)
    assert pool_window({"kernel_size": 3}) == ((3, 3), (3, 3), (0, 0))  # stride defaults to the kernel
    rule = OP_TABLE["conv2d"].shape
    assert rule(_conv((8, 16, 16), (8, 4, 3, 3), stride=(2, 2), padding=(1, 1), groups=2), [(8, 16, 16)]) == (8, 8, 8)
    assert rule(_conv((6, 12, 12), (6, 2, 3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2)), [(2, 12, 12)]) \
        == (6, 12, 12)
    with pytest.raises(ValueError, match="does not fit"):
        rule(_conv((8, 8, 8), (8, 4, 3, 3), stride=(1, 1), padding=(1, 1)), [(8, 8, 8)])  # groups missing
    pool = Node("p", "maxpool", ("x",), (4, 4, 4), {}, {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)})
    assert OP_TABLE["maxpool"].shape(pool, [(4, 8, 8)]) == (4, 4, 4)
    bc = Node("b", "broadcast", ("x",), (4, 3, 5), {}, {"grid": (3, 5)})
    assert OP_TABLE["broadcast"].shape(bc, [(4, 1, 1)]) == (4, 3, 5)
    with pytest.raises(ValueError, match=r"\(C,1,1\)"):
        OP_TABLE["broadcast"].shape(bc, [(4, 2, 1)])
    lin = Node("l", "linear", ("x",), (3,), {"weight": np.zeros((3, 7), np.float32)})
    assert OP_TABLE["linear"].shape(lin, [(7,)]) == (3,)
    assert OP_TABLE["sum_tokens"].shape(bc, [(4, 3, 5)]) == (4, 1, 1)
    assert OP_TABLE["mean_tokens"].shape(bc, [(4, 3, 5)]) == (4,)


def test_graph_rejects_a_node_that_breaks_its_spec():
    inp = Node("input", "input", (), (2, 8, 8))
    bad = Node("p", "avgpool", ("input",), (2, 4, 4), {}, {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0)})
    out = Node("output", "output", ("p",), (2, 4, 4), {}, {"reduce": "mean"})
    Graph((inp, bad, out), T=1)  # consistent
    wrong = Node("p", "avgpool", ("input",), (2, 3, 3), {}, dict(bad.attrs))
    with pytest.raises(ValueError, match="shape"):
        Graph((inp, wrong, out), T=1)
    missing = Node("p", "avgpool", ("input",), (2, 4, 4), {}, {"stride": (2, 2)})
    with pytest.raises(ValueError, match="kernel_size"):
        Graph((inp, missing, out), T=1)
