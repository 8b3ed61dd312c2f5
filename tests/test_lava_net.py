"""deploy.lava_net: Lava fixed-point execution is bit-exact with the reference executor after delay alignment.

Every comparison checks every population at every step (spikes, and graded values for the input and max-pool relays)
plus the integrator's final v, sample by sample, and that no child process or /dev/shm entry outlives the runner.
"""
from __future__ import annotations

import importlib.util
import os
import signal

import numpy as np
import pytest

from deploy.executor import run_intnet
from deploy.intnet import IntNet
from deploy.lava_host import child_pids, lava_leaks, shm_entries
from deploy.lava_net import LavaRunner, plan_delays
from tests.test_executor import chain_inputs, chain_net, mini_sdt_inputs, mini_sdt_net

needs_lava = pytest.mark.skipif(importlib.util.find_spec("lava") is None, reason="lava-nc is not installed")


# ---------------------------------------------------------------------------------------------- no Lava needed

def test_plan_delays_equalises_every_input():
    net = mini_sdt_net()
    plan = plan_delays(net)
    d = plan.depth
    assert d["inp"] == 0 and d["stem"] == 1 and d["bn3"] == 3 and d["lif3"] == 3  # edges add no hop
    assert d["first"] == 4 and d["qkv"] == 7 and d["mlp"] == 8 and d["head"] == 9
    assert plan.latency == 9
    # the residual and the AND gate need delays: x_feat edge into first (+1), q into qkv (+2), rpe_res / bn3_res (+4)
    assert plan.edge_delay[("bn3", "first")] == 1 and plan.edge_delay[("q", "qkv")] == 2
    assert plan.synapse_delay["rpe_res"] == 4 and plan.synapse_delay["bn3_res"] == 4
    assert plan.synapse_delay["proj"] == 0
    # invariant: after the extra delays every input of a population arrives with the same offset
    for p in net.populations:
        arrivals = {d[s.src] + 1 + plan.synapse_delay[s.name] for s in net.synapses_into(p.name)}
        arrivals |= {d[e] + plan.edge_delay[(e, p.name)] for e in net.edges_into(p.name)}
        assert arrivals <= {d[p.name]}


def test_maxpool_relay_arithmetic_matches_torch():
    pytest.importorskip("lava")
    import torch

    from deploy.lava_compat import ensure_lava

    ensure_lava()
    from deploy.lava_procs import maxpool2d_int

    rng = np.random.default_rng(0)
    for shape, k, s, p in [((3, 7, 7), 3, 2, 1), ((2, 4, 6), 2, 2, 0), ((1, 5, 5), 3, 1, 1)]:
        a = rng.integers(-1000, 1000, shape)
        ref = torch.nn.functional.max_pool2d(torch.tensor(a[None], dtype=torch.float64), k, s, p)
        np.testing.assert_array_equal(maxpool2d_int(a.ravel(), shape, k, s, p), ref.numpy().ravel())


# ------------------------------------------------------------------------------------------------- with Lava

def _assert_bit_exact(net: IntNet, xs: np.ndarray, **runner_kw) -> LavaRunner:
    """Run every sample through Lava and the executor; compare all populations at all steps and the final v."""
    ref = run_intnet(net, xs, record="all")
    ref.overflow.assert_none()
    before_children, before_shm = child_pids(), shm_entries()
    with LavaRunner(net, record="all", **runner_kw) as runner:
        assert runner.compile_time is not None
        # the first two samples one at a time (each drains the net), the rest pipelined (one every T steps)
        results = [runner.run(xs[0]), runner.run(xs[1])] + runner.run_many(xs[2:])
        for b, got in enumerate(results):
            for p in net.populations:
                np.testing.assert_array_equal(got.outputs[p.name], ref.outputs[p.name][:, b],
                                              err_msg=f"population {p.name!r}, sample {b}")
                assert got.spike_counts[p.name] == ref.spike_counts[p.name][b]
            for name, v in ref.final_v.items():
                np.testing.assert_array_equal(got.final_v[name], v[b], err_msg=f"integrator {name!r}, sample {b}")
    assert lava_leaks(before_children, before_shm) == {"children": [], "shm": []}
    assert runner.leaks == {"killed": [], "alive": []}  # every Lava process ended by itself after stop()
    # the comparison must not be vacuous: logits differ between samples, spikes occur and are not saturated
    assert len({tuple(v.ravel()) for v in ref.logits_int}) > 1
    return runner


@needs_lava
def test_chain_conv_lif_dense_integrator_bit_exact():
    _assert_bit_exact(chain_net(), chain_inputs(B=10))


@needs_lava
def test_chain_frames_and_lava_model_selection_bit_exact():
    """Event-frame input; and Lava choosing the stock models by tag must agree with the explicit model map."""
    net = chain_net(seed=2)
    net = IntNet(net.populations, net.synapses, net.edges, net.T, {"mode": "frames"}, net.decode)
    xs = np.random.default_rng(9).integers(0, 16, (4, net.T, 2, 5, 5))
    _assert_bit_exact(net, xs, explicit_models=False)


@needs_lava
def test_mini_sdt_bit_exact_on_ten_samples():
    """Gates (AND/OR), sum over tokens, broadcast, real-valued max-pool relay, residuals at different depths."""
    runner = _assert_bit_exact(mini_sdt_net(), mini_sdt_inputs(B=10))
    assert len(runner.sample_times) == 10


@needs_lava
def test_delays_are_what_makes_it_exact():
    """Without the delay lines (every input connected as if it arrived in step) Lava disagrees: the test can fail."""
    import deploy.lava_net as ln

    net, xs = mini_sdt_net(), mini_sdt_inputs(B=3)
    real = ln.plan_delays

    def no_extra_delays(n: IntNet) -> ln.DelayPlan:
        p = real(n)
        return ln.DelayPlan(p.depth, {k: 0 for k in p.synapse_delay}, {k: 0 for k in p.edge_delay}, p.T)

    ref = run_intnet(net, xs, record="all")
    ln.plan_delays = no_extra_delays
    try:
        with LavaRunner(net, record="all") as runner:
            got = [runner.run(xs[b]) for b in range(xs.shape[0])]
    finally:
        ln.plan_delays = real
    mismatched = {p.name for b in range(xs.shape[0]) for p in net.populations
                  if not np.array_equal(got[b].outputs[p.name], ref.outputs[p.name][:, b])}
    assert {"first", "qkv", "mlp"} & mismatched


@needs_lava
def test_runner_cleans_up_after_an_error_and_unused_compile():
    before_children, before_shm = child_pids(), shm_entries()
    net = chain_net()
    with pytest.raises(ValueError, match="one sample"):
        with LavaRunner(net) as runner:
            runner.run(np.zeros((3, 3)))  # wrong shape: raises inside the with block
    with LavaRunner(net):  # compiled, never run: stop must still end every child
        pass
    runner = LavaRunner(net)  # never compiled: close is a no-op
    runner.close()
    assert lava_leaks(before_children, before_shm) == {"children": [], "shm": []}


@needs_lava
def test_a_killed_host_leaves_no_process_or_shared_memory():
    """If the host dies (here: SIGKILL after a sample), close() still ends every Lava process it had started."""
    before_children, before_shm = child_pids(), shm_entries()
    runner = LavaRunner(mini_sdt_net())
    runner.compile()
    lava_procs = set(runner._host_children)
    assert len(lava_procs) >= runner.num_processes  # every Lava process is a child of the host
    runner.run(mini_sdt_inputs(B=1)[0])
    os.kill(runner._host.pid, signal.SIGKILL)
    runner.close()
    assert not [p for p in lava_procs if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2]
                != "Z"]
    assert lava_leaks(before_children, before_shm) == {"children": [], "shm": []}


@needs_lava
def test_in_process_engine_and_batch_api_agree_with_executor():
    """``in_process=True`` (Lava forked from this process) and ``run_lava`` (the ExecResult-shaped batch API that
    deploy/agreement.py calls) give the executor's results."""
    from deploy.lava_net import run_lava

    net, xs = chain_net(seed=4), chain_inputs(seed=4, B=3)
    ref = run_intnet(net, xs, record={"lif"})
    before_children, before_shm = child_pids(), shm_entries()
    with LavaRunner(net, record={"lif"}, in_process=True) as runner:
        got = runner.run_many(xs)
    assert lava_leaks(before_children, before_shm) == {"children": [], "shm": []}
    for b, res in enumerate(got):
        np.testing.assert_array_equal(res.outputs["lif"], ref.outputs["lif"][:, b])
        np.testing.assert_array_equal(res.logits_int, ref.logits_int[b])
    batch = run_lava(net, xs, record={"lif"})
    np.testing.assert_array_equal(batch.logits_int, ref.logits_int)
    np.testing.assert_array_equal(batch.outputs["lif"], ref.outputs["lif"])
    np.testing.assert_array_equal(batch.spike_counts["lif"], ref.spike_counts["lif"])


@needs_lava
def test_network_without_integrator_streams_many_samples():
    """No v to read, so nothing splits a long batch: the runner must still keep every segment within the pipes."""
    net = chain_net(seed=5)
    pops = tuple(p for p in net.populations if p.kind != "integrator")
    net = IntNet(pops, net.synapses[:1], (), net.T, net.encoding, net.decode)
    xs = chain_inputs(seed=5, B=12)
    ref = run_intnet(net, xs, record={"lif"})
    with LavaRunner(net, record={"lif"}, timeout=120) as runner:
        got = runner.run_many(xs)
    for b, res in enumerate(got):
        np.testing.assert_array_equal(res.outputs["lif"], ref.outputs["lif"][:, b])


@needs_lava
def test_records_only_what_is_asked_and_reads_logits():
    net, xs = mini_sdt_net(), mini_sdt_inputs(B=2)
    ref = run_intnet(net, xs)
    with LavaRunner(net, record={"attn"}) as runner:
        assert runner.num_processes == 14 + 13 + 4 + 1  # populations + synapses + delay lines + one sink
        res = runner.run(xs[1])
    assert set(res.outputs) == {"attn"}
    np.testing.assert_array_equal(res.logits_int, ref.logits_int[1])
    with pytest.raises(KeyError):
        LavaRunner(net, record={"nope"})


# ------------------------------------------------------------------------------- the tiny SDT, when quantised

def _quantised_tiny_sdt():
    """The tiny SDT (1 block, 32 dims, 16x16, T=4: stem, RPE, attention, MLP, residuals, head) through export and
    ``deploy.quantize``."""
    import torch

    from deploy.encoding import encode_input
    from deploy.quantize import quantize
    from export.from_model import build_graph
    from tests.conftest import tiny_model

    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    calib = torch.rand(16, 3, 16, 16, generator=g)
    net = quantize(build_graph(model), calib=calib)
    xs = encode_input(net, torch.rand(10, 3, 16, 16, generator=g))
    return net, xs


@needs_lava
def test_tiny_sdt_quantised_executor_and_lava_bit_exact():
    net, xs = _quantised_tiny_sdt()
    kinds = {p.kind for p in net.populations}
    assert {"input", "lif", "gate", "maxpool", "integrator"} <= kinds  # the whole SDT structure is in there
    assert plan_delays(net).latency > 5 and any(d > 0 for d in plan_delays(net).edge_delay.values())
    _assert_bit_exact(net, xs)
