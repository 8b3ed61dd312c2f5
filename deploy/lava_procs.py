"""Custom Lava processes for the integer SDT where no stock process fits (fixed point, CPU).

* :class:`MaxPoolRelay` — graded max-pool relay: ``s_out = maxpool2d(a_in)`` on integer currents over a (C,H,W) grid,
  ``-inf`` padding (PyTorch semantics), **0 delay** (like a neuron: what arrives at step t leaves at step t). It is the
  official SDT's real-valued max-pool on stage 3's BN output.
* :class:`DelayLine` — graded delay: ``s_out(t) = a_in(t - delay)`` (zeros before), so that an early input (a direct
  edge, or the source side of a synapse) arrives in step with the longest path into its target.
* :class:`FrameSource` / :class:`FrameSink` — per-sample input and recording through Lava's external pipes (the
  mechanism of ``lava.proc.io.injector``/``extractor``), with int32 ports. They replace ``RingBuffer`` source/sink
  because ``Var.set``/``Var.get`` move **one message per array element** through the runtime (measured: 0.5 s to set a
  RingBuffer's 16x16x3 x 20-step data), while a pipe moves one message per step. ``Injector``/``Extractor`` themselves
  use float ports, which break a graded fixed-point ``Sparse`` (it shifts its sums with ``np.right_shift``).

Processes (the *what*) come first; their ProcessModels (the *how*: ``PyLoihiProcessModel``, ``LoihiProtocol``, CPU,
tag ``fixed_pt``) follow. Ports carry flat int32 vectors, as every other process of ``deploy.lava_net``.

Call :func:`deploy.lava_compat.ensure_lava` before importing this module. ``MODELS`` maps each process class to its
model; ``deploy.lava_net`` passes it (per instance) in ``exception_proc_model_map`` so that Lava does not search for
models by executing every module file of the ``deploy`` package, which is what its model discovery otherwise does.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from export.shapes import conv_out_hw, pair

__all__ = ["MaxPoolRelay", "DelayLine", "FrameSource", "FrameSink", "PyMaxPoolRelayModelFixed",
           "PyDelayLineModelFixed", "PyFrameSourceModelFixed", "PyFrameSinkModelFixed", "MODELS", "maxpool2d_int",
           "pool_out_shape"]


def pool_out_shape(in_shape: Sequence[int], kernel: int | Sequence[int], stride: int | Sequence[int],
                   padding: int | Sequence[int]) -> tuple[int, int, int]:
    c, h, w = (int(s) for s in in_shape)
    return (c, *conv_out_hw((h, w), kernel, stride, padding))


def maxpool2d_int(a: np.ndarray, in_shape: Sequence[int], kernel: int | Sequence[int], stride: int | Sequence[int],
                  padding: int | Sequence[int]) -> np.ndarray:
    """Flat integer max-pool of a flat (C,H,W) vector; padded positions never win (``-inf`` padding).

    NumPy only: Lava's process models run in forked children, where torch calls can hang.
    """
    c, h, w = (int(s) for s in in_shape)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    _, ho, wo = pool_out_shape(in_shape, kernel, stride, padding)
    lowest = np.iinfo(np.int64).min
    x = np.full((c, h + 2 * ph, w + 2 * pw), lowest, dtype=np.int64)
    x[:, ph:ph + h, pw:pw + w] = np.asarray(a, dtype=np.int64).reshape(c, h, w)
    out = np.full((c, ho, wo), lowest, dtype=np.int64)
    for dy in range(kh):  # max over the kernel offsets: kh*kw strided views, no per-neuron loop
        for dx in range(kw):
            np.maximum(out, x[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw], out=out)
    return out.ravel()


# ---------------------------------------------------------------------------------------------------- processes

class MaxPoolRelay(AbstractProcess):
    """Graded max-pool relay over flat (C,H,W) currents: ``s_out = maxpool2d(a_in)``, no delay, no state."""

    def __init__(self, *, in_shape: Sequence[int], kernel: int | Sequence[int], stride: int | Sequence[int],
                 padding: int | Sequence[int] = 0, name: str | None = None) -> None:
        in_shape = tuple(int(s) for s in in_shape)
        out_shape = pool_out_shape(in_shape, kernel, stride, padding)
        super().__init__(in_shape=in_shape, out_shape=out_shape, kernel=pair(kernel), stride=pair(stride),
                         padding=pair(padding), name=name)
        self.a_in = InPort(shape=(int(np.prod(in_shape)),))
        self.s_out = OutPort(shape=(int(np.prod(out_shape)),))


class DelayLine(AbstractProcess):
    """Graded delay line: ``s_out(t) = a_in(t - delay)`` for ``delay >= 1`` (zeros for the first ``delay`` steps)."""

    def __init__(self, *, shape: Sequence[int], delay: int, name: str | None = None) -> None:
        if int(delay) < 1:
            raise ValueError(f"DelayLine needs delay >= 1, got {delay} (use a direct connection for 0)")
        shape = (int(np.prod(shape)),)
        super().__init__(shape=shape, delay=int(delay), name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)


class FrameSource(AbstractProcess):
    """Graded input: sends, at each step, the next int32 frame the host queued with :meth:`send` (0-delay out).

    The host must queue one frame per step it runs (at most ``buffer`` ahead); the model blocks on an empty queue.
    """

    def __init__(self, *, shape: Sequence[int], buffer: int, name: str | None = None) -> None:
        shape = (int(np.prod(shape)),)
        super().__init__(shape=shape, buffer=int(buffer), name=name)
        self.frames_in = InPort(shape=shape)
        self.frames_in.flag_external_pipe(buffer_size=int(buffer))
        self.s_out = OutPort(shape=shape)

    def send(self, frame: np.ndarray) -> None:
        """Queue one frame (host side; the runtime must exist)."""
        port = getattr(self.frames_in, "external_pipe_csp_send_port", None)
        if port is None:
            raise RuntimeError("FrameSource.send needs a created runtime (compile the network first)")
        port.send(np.asarray(frame, dtype=np.int32).reshape(self.frames_in.shape))


class FrameSink(AbstractProcess):
    """Hands its input of every step to the host (:meth:`receive`), in order.

    The pipe holds ``buffer`` frames; the model blocks on a full pipe until the host reads, so the host must read at
    least every ``buffer`` steps.
    """

    def __init__(self, *, shape: Sequence[int], buffer: int, name: str | None = None) -> None:
        shape = (int(np.prod(shape)),)
        super().__init__(shape=shape, buffer=int(buffer), name=name)
        self.a_in = InPort(shape=shape)
        self.frames_out = OutPort(shape=shape)
        self.frames_out.flag_external_pipe(buffer_size=int(buffer))

    def receive(self) -> np.ndarray:
        """The next frame (host side; blocks until one is there)."""
        port = getattr(self.frames_out, "external_pipe_csp_recv_port", None)
        if port is None:
            raise RuntimeError("FrameSink.receive needs a created runtime (compile the network first)")
        return port.recv()


# ----------------------------------------------------------------------------------------------- process models

@implements(proc=MaxPoolRelay, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMaxPoolRelayModelFixed(PyLoihiProcessModel):
    """Receive the summed currents of this step, send their max-pool in the same step (graded int32)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        p = self.proc_params
        out = maxpool2d_int(self.a_in.recv(), p["in_shape"], p["kernel"], p["stride"], p["padding"])
        self.s_out.send(out.astype(np.int32))


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyDelayLineModelFixed(PyLoihiProcessModel):
    """A FIFO of ``delay`` vectors: send the oldest, then store this step's input (so delay 1 = one step later)."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        d, (n,) = proc_params["delay"], proc_params["shape"]
        self._fifo = np.zeros((d, n), dtype=np.int32)  # row k leaves k steps from now (+1)
        self._head = 0

    def run_spk(self) -> None:
        # send first: the value received this step must not leave before `delay` more steps
        self.s_out.send(self._fifo[self._head].copy())
        self._fifo[self._head] = self.a_in.recv()
        self._head = (self._head + 1) % self._fifo.shape[0]


@implements(proc=FrameSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFrameSourceModelFixed(PyLoihiProcessModel):
    """Forward one host frame per step."""

    frames_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        self.s_out.send(self.frames_in.recv())


@implements(proc=FrameSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFrameSinkModelFixed(PyLoihiProcessModel):
    """Pass this step's input to the host pipe."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    frames_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        self.frames_out.csp_ports[-1].send(np.asarray(self.a_in.recv(), dtype=np.int32))


MODELS: dict[type, type] = {MaxPoolRelay: PyMaxPoolRelayModelFixed, DelayLine: PyDelayLineModelFixed,
                            FrameSource: PyFrameSourceModelFixed, FrameSink: PyFrameSinkModelFixed}
