"""Agreement with a peer: SpikingJelly 2.0's op counter (aten-level SynOp / MAC counters and its Lemaire profiler)
and NeuroBench's SynapticOperations definition, on a plain conv -> LIF -> conv -> LIF -> token mean -> LIF -> linear
model run through both tools with identical weights and inputs.

Where the definitions coincide the counts are equal; where they differ (padded taps of a MAC layer, the Lemaire
profiler's border-free fan-out) the difference is exactly the documented term (docs/energy.md, "Peers").
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deploy.energy import EnergyCounter
from export.graph import Graph, Node
from export.run_graph import run_graph

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import layer, neuron  # noqa: E402
from spikingjelly.activation_based.op_counter import (DispatchCounterMode, MACCounter,  # noqa: E402
                                                      SynOpCounter)

T, B, CIN, C1, C2, K = 3, 4, 2, 4, 6, 5
LIF = {"v_threshold": 1.0, "decay": 0.5, "v_reset": 0.0}


class TokenMean(nn.Module):
    """[T, B, C, H, W] -> [T, B, C], the graph's ``mean_tokens`` (same reduction, same rounding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(3).mean(3)


def build(pad0: int, seed: int = 0) -> tuple[nn.Sequential, Graph]:
    torch.manual_seed(seed)
    net = nn.Sequential(
        layer.Conv2d(CIN, C1, 3, padding=pad0, bias=False, step_mode="m"),
        neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, step_mode="m"),
        layer.Conv2d(C1, C2, 3, padding=1, bias=False, step_mode="m"),
        neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, step_mode="m"),
        TokenMean(),  # a token mean is at most 1: a lower threshold lets its LIF fire
        neuron.LIFNode(tau=2.0, v_threshold=0.2, v_reset=0.0, decay_input=True, step_mode="m"),
        layer.Linear(C2, K, bias=True, step_mode="m"),
    )
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=1.2)
            with torch.no_grad():  # some exact zeros, so the weight-sparsity-aware counts differ from the dense ones
                m.weight[torch.rand(m.weight.shape) < 0.2] = 0.0
    h1 = 7 + 2 * pad0 - 2

    def conv(name: str, x: str, m: nn.Conv2d, shape: tuple[int, int, int]) -> Node:
        return Node(name, "conv2d", (x,), shape, {"weight": m.weight.detach().numpy().copy()},
                    {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups})

    lin = net[6]
    g = Graph((
        Node("input", "input", (), (CIN, 7, 7)),
        conv("conv0", "input", net[0], (C1, h1, h1)),
        Node("lif0", "lif", ("conv0",), (C1, h1, h1), attrs=LIF),
        conv("conv1", "lif0", net[2], (C2, h1, h1)),
        Node("lif1", "lif", ("conv1",), (C2, h1, h1), attrs=LIF),
        Node("mean", "mean_tokens", ("lif1",), (C2,)),
        Node("lif2", "lif", ("mean",), (C2,), attrs={**LIF, "v_threshold": 0.2}),
        Node("fc", "linear", ("lif2",), (K,), {"weight": lin.weight.detach().numpy().copy(),
                                               "bias": lin.bias.detach().numpy().copy()}),
        Node("output", "output", ("fc",), (K,), attrs={"reduce": "mean"}),
    ), T=T, encoding="frames")
    return net, g


def frames(seed: int = 1) -> torch.Tensor:
    """Real-valued, non-zero event-like frames [B, T, C, H, W]: a new frame every step."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, CIN, 7, 7, generator=g) + 0.1


def sj_counts(net: nn.Sequential, x: torch.Tensor) -> tuple[dict, dict, dict]:
    spikes: dict[int, torch.Tensor] = {}
    hooks = [net[i].register_forward_hook(lambda m, a, o, i=i: spikes.__setitem__(i, o.detach().clone()))
             for i in (1, 3, 5)]
    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        net(x.transpose(0, 1).contiguous())
    for h in hooks:
        h.remove()
    for m in net:
        if hasattr(m, "reset"):
            m.reset()

    def by_scope(counter: object) -> dict[str, int]:
        return {k: sum(v.values()) for k, v in counter.get_counts().items()}

    return by_scope(syn), by_scope(mac), spikes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_equal_spikingjelly_op_counter(seed):
    net, g = build(pad0=0, seed=seed)
    x = frames(seed + 10)
    syn, mac, sj_spikes = sj_counts(net, x)
    counter = EnergyCounter(g)
    _, t = run_graph(g, x, record=counter.required)
    # the same neuron equations: identical spikes in both frameworks
    for i, name in ((1, "lif0"), (3, "lif1"), (5, "lif2")):
        assert torch.equal(sj_spikes[i], t[name]), name
    assert t["lif1"].sum() > 0 and t["lif2"].sum() > 0  # spikes reach every layer, so the test can fail
    c = counter.count(t)
    # ACs of the spike-driven layers (conv with padded borders, linear): SpikingJelly's SynOpCounter
    assert c.nodes["conv1"].total("ac") == syn["Sequential.2"]
    assert c.nodes["fc"].total("ac") == syn["Sequential.6"]
    assert c.total("ac") == syn["Global"]
    # MACs of the first conv (real-valued frames, no padding, no zero input): SpikingJelly's MACCounter
    assert c.nodes["conv0"].total("mac") == mac["Sequential.0"] == mac["Global"]
    assert syn.get("Sequential.0", 0) == 0 and mac.get("Sequential.2", 0) == 0


def test_padded_first_conv_differs_by_the_padded_taps():
    """SpikingJelly's MACCounter charges C_in * k^2 per output position, padded taps included (the paper's FLOPs);
    the exact count charges only taps that read an input. The difference is exactly FLOPs - FLOPs_valid per frame."""
    net, g = build(pad0=1)
    x = frames()
    _, mac, _ = sj_counts(net, x)
    counter = EnergyCounter(g)
    _, t = run_graph(g, x, record=counter.required)
    c = counter.count(t)
    padded = counter.flops["conv0"] - counter.flops_valid["conv0"]
    assert padded > 0
    assert mac["Sequential.0"] - c.nodes["conv0"].total("mac") == padded * T * B
    assert mac["Sequential.0"] == counter.flops["conv0"] * T * B


def test_lemaire_profiler_synops_ignore_borders():
    """SpikingJelly's Lemaire profiler charges every input spike of a conv C_out * ceil(k/s)^2 targets (no border
    correction) and each linear spike its out_features; our exact AC is smaller by the missing border targets."""
    from spikingjelly.activation_based.op_counter import LemaireEnergyConfig, estimate_lemaire_energy

    net, g = build(pad0=0)
    x = frames()
    with pytest.warns(RuntimeWarning, match="TokenMean"):  # the profiler omits the token mean (no synapses anyway)
        rep = estimate_lemaire_energy(net, x.transpose(0, 1).contiguous(), config=LemaireEnergyConfig(strict=False))
    for m in net:
        if hasattr(m, "reset"):
            m.reset()
    counter = EnergyCounter(g)
    _, t = run_graph(g, x, record=counter.required)
    c = counter.count(t)
    conv1 = c.nodes["conv1"]
    border_free = conv1.total("in_events") * C2 * 9 + c.nodes["fc"].total("in_events") * K
    assert rep.counts["synop"] == border_free
    assert rep.counts["synop"] - c.total("ac") == conv1.total("in_events") * C2 * 9 - conv1.total("ac") > 0


def test_neurobench_synaptic_operations_definition():
    """NeuroBench SynapticOperations, from its documented definition: per connection layer, binarise the input
    (non-zero -> 1) and the weights, zero the bias, rerun and sum = effective ops (AC if every input is in {-1,0,1},
    else MAC); Dense = the same with all-ones input and weights. Averaged per sample."""
    net, g = build(pad0=1)
    x = frames()
    counter = EnergyCounter(g)
    _, t = run_graph(g, x, record=counter.required)
    c = counter.count(t)
    eff = {"ac": 0.0, "mac": 0.0}
    dense = 0.0
    for node in g:
        if node.op not in ("conv2d", "linear"):
            continue
        inp = t[node.inputs[0]].flatten(0, 1).double()
        w = torch.from_numpy(node.params["weight"].copy()).double()
        spiking = bool(((inp == 0) | (inp == 1) | (inp == -1)).all())
        if node.op == "conv2d":
            a = node.attrs
            run = lambda i, k: F.conv2d(i, k, None, a["stride"], a["padding"], a["dilation"], a["groups"])  # noqa
        else:
            run = lambda i, k: F.linear(i, k)  # noqa: E731
        eff["ac" if spiking else "mac"] += float(run((inp != 0).double(), (w != 0).double()).sum())
        dense += float(run(torch.ones_like(inp), torch.ones_like(w)).sum())
    assert c.total("ac_eff") == eff["ac"] and c.total("mac_eff") == eff["mac"]
    assert c.total("dense") == dense
    assert c.total("ac_eff") < c.total("ac")  # the zeroed weights matter
