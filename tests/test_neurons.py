"""The torch reference LIF/PLIF against SpikingJelly 2.0 (forward and backward) and the spec's equations."""
from __future__ import annotations

import pytest
import torch

from sdt.neurons import MultiStepLIF, MultiStepPLIF, lif_multistep_torch, make_neuron


def _sj(parametric: bool, v_th: float):
    from spikingjelly.activation_based import neuron, surrogate

    kw = dict(decay_input=True, v_threshold=v_th, v_reset=0.0, surrogate_function=surrogate.Sigmoid(alpha=4.0),
              detach_reset=True, step_mode="m")
    return neuron.ParametricLIFNode(init_tau=2.0, **kw) if parametric else neuron.LIFNode(tau=2.0, **kw)


@pytest.mark.parametrize("v_th", [1.0, 0.5])
@pytest.mark.parametrize("T", [1, 4, 10])
def test_lif_equals_spikingjelly_forward_backward(T, v_th):
    g = torch.Generator().manual_seed(T)
    x = (torch.randn(T, 6, 50, generator=g) * 1.5 + 0.8).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ours = MultiStepLIF(v_threshold=v_th)(x)
    ref = _sj(False, v_th)(x2)
    assert torch.equal(ours, ref)
    assert 0 < ours.sum() < ours.numel()
    w = torch.randn_like(ours)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-7)


def test_plif_equals_spikingjelly_forward_backward():
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(5, 4, 30, generator=g) + 0.9).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ours = MultiStepPLIF()
    ref = _sj(True, 1.0)
    with torch.no_grad():
        ours.w.fill_(0.3)
        ref.w.fill_(0.3)
    a, b = ours(x), ref(x2)
    assert torch.equal(a, b)
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.w.grad, ref.w.grad, rtol=1e-5, atol=1e-6)


def test_spikingjelly_backend_matches_torch_backend():
    x = torch.randn(4, 3, 20) + 1.0
    a = make_neuron("lif", backend="torch")(x)
    b = make_neuron("lif", backend="spikingjelly")(x)
    assert torch.equal(a, b)
    assert make_neuron("lif", backend="spikingjelly").state_dict() == {}  # no extra keys from the SJ node


def test_lif_equations_by_hand():
    """Spec §1: H = 0.5 (V + X); fire on H >= 1; hard reset to 0."""
    x = torch.tensor([[2.0], [1.0], [1.0], [1.0], [0.5]])
    s = lif_multistep_torch(x, 0.5, 1.0)
    # t0: H=1 -> spike, V=0; t1: H=0.5; t2: H=0.75; t3: H=0.875; t4: H=0.6875
    assert s.flatten().tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    s2 = lif_multistep_torch(torch.tensor([[1.0], [1.5], [0.0]]), 0.5, 1.0)
    assert s2.flatten().tolist() == [0.0, 1.0, 0.0]  # H1 = 0.5*(0.5+1.5) = 1.0 -> fires on >=


def test_neuron_state_not_in_state_dict():
    assert MultiStepLIF().state_dict() == {}
    assert list(MultiStepPLIF().state_dict()) == ["w"]


def test_cpu_never_imports_cupy():
    import sys

    m = make_neuron("lif", backend="cupy")
    m(torch.rand(2, 3))
    assert "cupy" not in sys.modules


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        MultiStepLIF(backend="jax")
