"""Multi-step LIF / PLIF neurons with SpikingJelly semantics, as the official SDT code runs them.

Per element, over the leading time axis (V[-1] = 0, decay k = 1/tau for LIF, sigmoid(w) for PLIF):
    H[t] = V[t-1] + (X[t] - V[t-1]) * k          (decay_input=True, v_reset=0)
    S[t] = H[t] >= v_threshold                      (Heaviside with >=)
    V[t] = H[t] * (1 - S[t].detach())              (hard reset to 0, detached reset)
Surrogate gradient dS/dH = alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x)), alpha = 4.

Backends: ``torch`` (reference loop, CPU default), ``spikingjelly`` (SpikingJelly 2.0's stock neurons) and ``cupy``
(fused CUDA kernel, imported only when selected on a CUDA tensor). Neuron state never appears in the state_dict; PLIF
adds its scalar ``w``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .surrogate import SURROGATE_ALPHA

BACKENDS = ("torch", "spikingjelly", "cupy")


class SigmoidSpike(torch.autograd.Function):
    """Heaviside(x >= 0) forward, sigmoid-derivative surrogate backward (SpikingJelly ``surrogate.Sigmoid``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        if x.requires_grad:
            ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sg = torch.sigmoid(ctx.alpha * x)
        return grad * ctx.alpha * sg * (1.0 - sg), None


def lif_multistep_torch(x_seq: torch.Tensor, decay: torch.Tensor | float, v_threshold: float,
                        alpha: float = SURROGATE_ALPHA) -> torch.Tensor:
    """Reference multi-step LIF over dim 0 of ``x_seq``; ``decay`` is 1/tau (LIF) or sigmoid(w) (PLIF)."""
    v = torch.zeros_like(x_seq[0])
    out = []
    for t in range(x_seq.shape[0]):
        h = v + (x_seq[t] - v) * decay
        s = SigmoidSpike.apply(h - v_threshold, alpha)
        v = h * (1.0 - s.detach())
        out.append(s)
    return torch.stack(out)


def _spikingjelly_node(tau: float, v_threshold: float, parametric: bool) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    kw = dict(decay_input=True, v_threshold=v_threshold, v_reset=0.0,
              surrogate_function=surrogate.Sigmoid(alpha=SURROGATE_ALPHA), detach_reset=True, step_mode="m")
    if parametric:
        return neuron.ParametricLIFNode(init_tau=tau, **kw)
    return neuron.LIFNode(tau=tau, **kw)


class MultiStepLIF(nn.Module):
    """SpikingJelly-compatible multi-step LIF (tau=2, hard reset to 0, detached reset, fires on ``>=``).

    Input and output are ``[T, ...]``. State is reset at every call, so no ``reset_net`` is needed.
    """

    parametric = False

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, backend: str = "torch") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown neuron backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.tau = float(tau)
        self.v_threshold = float(v_threshold)
        self.backend = backend
        self._sj: nn.Module | None = None

    def decay(self) -> torch.Tensor | float:
        """Charge factor k in ``H = V + (X - V) k``."""
        return 1.0 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, backend={self.backend}"

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.backend == "cupy" and x_seq.is_cuda:
            from .lif_cupy import lif_multistep_cupy  # imported only on demand: CPU never needs cupy

            return lif_multistep_cupy(x_seq, self.decay(), self.v_threshold, SURROGATE_ALPHA)
        if self.backend == "spikingjelly":
            return self._forward_spikingjelly(x_seq)
        return lif_multistep_torch(x_seq, self.decay(), self.v_threshold)

    def _forward_spikingjelly(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self._sj is None:
            # kept out of the module tree so the state_dict stays the official one
            object.__setattr__(self, "_sj", _spikingjelly_node(self.tau, self.v_threshold, self.parametric))
        node = self._sj
        if self.parametric:
            node.w = self.w  # share our parameter (the official key is `<path>.w`)
        node.reset()
        return node(x_seq)


class MultiStepPLIF(MultiStepLIF):
    """Parametric LIF: charge factor sigmoid(w), one learnable scalar ``w`` initialised to -log(init_tau - 1)."""

    parametric = True

    def __init__(self, init_tau: float = 2.0, v_threshold: float = 1.0, backend: str = "torch") -> None:
        super().__init__(tau=init_tau, v_threshold=v_threshold, backend=backend)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self) -> torch.Tensor:
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        return f"init_tau={self.tau}, v_threshold={self.v_threshold}, backend={self.backend}"


def make_neuron(spike_mode: str, v_threshold: float = 1.0, backend: str = "torch") -> MultiStepLIF:
    """The neuron the official code builds for ``spike_mode`` ('lif' or 'plif'), tau = 2."""
    factories: dict[str, Callable[[], MultiStepLIF]] = {
        "lif": lambda: MultiStepLIF(tau=2.0, v_threshold=v_threshold, backend=backend),
        "plif": lambda: MultiStepPLIF(init_tau=2.0, v_threshold=v_threshold, backend=backend),
    }
    if spike_mode not in factories:
        raise ValueError(f"spike_mode {spike_mode!r} is not supported; use 'lif' or 'plif' "
                         "(the official 'alif'/'blif' branches build no neurons and crash)")
    return factories[spike_mode]()
