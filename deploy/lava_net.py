"""Run an :class:`~deploy.intnet.IntNet` as Lava 0.10 processes on CPU (``Loihi2SimCfg(select_tag="fixed_pt")``).

Mapping (one Lava process, i.e. one OS process, per population / synapse):

============== =====================================================================================================
input          :class:`deploy.lava_procs.FrameSource`: graded int32 frames queued by the host through an external pipe
lif            ``LIFReset`` (bit-accurate LIF plus a once-per-sample reset, see *per-sample reset*)
integrator     ``LIFReset`` likewise; its ``v`` is read once per sample (the integer logits)
gate           ``LIFReset(reset_interval=1)``: memoryless threshold (AND / OR)
maxpool        :class:`deploy.lava_procs.MaxPoolRelay` (graded, 0 delay)
relay          Lava's ``GradedVec`` with ``vth=0`` (graded sum, ``s_out = a_in``, 0 delay)
synapse        ``Sparse`` (conv / dense / sparse kinds all as a CSR matrix) with the synapse's ``weight_exp``;
               ``num_message_bits=24`` when graded, else 0 (binary)
direct edge    a direct port connection (0 delay)
delay          :class:`deploy.lava_procs.DelayLine` on the source side, shared by all consumers of (source, delay)
============== =====================================================================================================

**Delay equalisation.** Each synapse hop costs Lava one step; a direct edge costs none. :func:`plan_delays` gives every
population its arrival offset ``d(p) = max over inputs of d(src) + hop`` and every input that would arrive early the
extra delay ``d(p) - d(src) - hop``. Population p's output at Lava step ``t + d(p)`` then equals the aligned schedule's
output at step t (``L = max d``).

**Per-sample reset, pipelined.** Sample k's frames enter at steps ``kT+1 .. kT+T``. Every stateful population is a
``LIFReset`` with ``reset_interval = T`` and ``reset_offset = (1 + d(p)) % T``: its state is zeroed right before its
first valid step of every sample, so neither bias integrated while waiting nor the previous sample leaks in (inputs
that arrive outside a population's window only ever reach its invalid steps). So samples follow each other every T
steps (``run_many``): a sample costs T Lava steps, not T + L; the integrators' ``v`` is read right after step
``kT + T + d`` (a pause per sample); the net drains for L more steps at the end of a batch. Nothing is re-compiled,
no state Var is written, and synapse / delay-line buffers need no reset.

**Host process.** Lava forks one OS process per Lava process; forking a process that has imported torch costs ~50 ms
(page tables) against ~2 ms for a bare interpreter. :class:`LavaRunner` therefore runs the Lava network in a small
host subprocess (numpy, scipy, Lava; never torch) and talks to it over a pipe. The host stops the runtime in
``finally``, reaps its children, reports what survived, and exits; the runner then checks that every process the host
started is gone. ``in_process=True`` runs the same engine in this process instead.

Read-back is minimal: the integrators' ``v``, and for populations named in ``record`` a
:class:`deploy.lava_procs.FrameSink` that pipes every step to the host (Lava's ``Var.get``/``Var.set`` move one
message per array element, so inputs and rasters never go through Vars).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np

from deploy.kinds import BINARY_KINDS
from deploy.lava_host import alive_pids, child_pids, helper_pids, reap, recv_msg, send_msg

if TYPE_CHECKING:  # the host process must not import deploy.intnet (-> sdt -> torch)
    from deploy.intnet import IntNet
    from deploy.semantics import ExecResult

__all__ = ["DelayPlan", "plan_delays", "LavaRunner", "LavaResult", "run_lava", "build_spec"]

GRADED_MESSAGE_BITS = 24  # Lava's CPU models only test > 0; 24 is the graded payload its models describe
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Record = None | Iterable[str] | Literal["all"]


# ------------------------------------------------------------------------------------------------------ delays

@dataclass(frozen=True)
class DelayPlan:
    """Arrival offsets and the extra delays that equalise every population's inputs."""

    depth: dict[str, int]  # population -> d(p): Lava step offset of its outputs vs the aligned schedule
    synapse_delay: dict[str, int]  # synapse name -> extra steps before it (0: none)
    edge_delay: dict[tuple[str, str], int]  # (src, dst) -> extra steps (0: direct connection)
    T: int

    @property
    def latency(self) -> int:
        """L = max d(p): the last population's outputs appear L steps after the reference's."""
        return max(self.depth.values(), default=0)


def plan_delays(net: "IntNet") -> DelayPlan:
    """d(p): +1 per synapse hop, 0 per direct edge, inputs at 0; plus the extra delay of every early input."""
    net.validate()
    depth: dict[str, int] = {}
    syn_delay: dict[str, int] = {}
    edge_delay: dict[tuple[str, str], int] = {}
    for p in net.populations:
        syns, srcs = net.synapses_into(p.name), net.edges_into(p.name)
        arrivals = [depth[s.src] + 1 for s in syns] + [depth[e] for e in srcs]
        depth[p.name] = max(arrivals, default=0)
        for s in syns:
            syn_delay[s.name] = depth[p.name] - depth[s.src] - 1
        for e in srcs:
            edge_delay[(e, p.name)] = depth[p.name] - depth[e]
    return DelayPlan(depth, syn_delay, edge_delay, int(net.T))


def build_spec(net: "IntNet", record: Record = None, plan: DelayPlan | None = None,
               explicit_models: bool = True) -> dict[str, Any]:
    """Everything the host needs, as plain Python / NumPy (no IntNet, so the host never imports torch)."""
    from deploy.semantics import pool_params, population_input_shape, synapse_matrix

    plan = plan or plan_delays(net)
    names = [p.name for p in net.populations]
    rec = set(names) if record == "all" else set(record or ())
    if rec - set(names):
        raise KeyError(f"unknown population(s) to record: {sorted(rec - set(names))}")
    inputs = [p for p in net.populations if p.kind == "input"]
    if len(inputs) != 1:
        raise ValueError(f"a Lava network needs exactly one input population, found {len(inputs)}")
    pops = []
    for p in net.populations:
        d: dict[str, Any] = dict(name=p.name, kind=p.kind, shape=tuple(int(s) for s in p.shape), size=p.size,
                                 depth=plan.depth[p.name])
        if p.kind in BINARY_KINDS:
            d.update(du=int(p.du), dv=int(p.dv), vth=int(p.vth), bias_exp=int(p.bias_exp),
                     bias=np.zeros(p.size, np.int64) if p.bias_mant is None else np.asarray(p.bias_mant, np.int64))
        elif p.kind == "maxpool":
            kernel, stride, padding = pool_params(p)
            d.update(in_shape=population_input_shape(net, p), kernel=kernel, stride=stride, padding=padding)
        elif p.kind not in ("input", "relay"):
            raise ValueError(f"population {p.name!r}: unknown kind {p.kind!r}")
        pops.append(d)
    syns = []
    for s in net.synapses:
        m = synapse_matrix(net, s).astype(np.int32)
        syns.append(dict(name=s.name, src=s.src, dst=s.dst, csr=(m.data, m.indices, m.indptr, m.shape),
                         weight_exp=int(s.weight_exp), graded=bool(s.graded), delay=plan.synapse_delay[s.name]))
    edges = [(a, b, plan.edge_delay[(a, b)]) for a, b in net.edges]
    return dict(T=int(net.T), latency=plan.latency, input=inputs[0].name, pops=pops, syns=syns, edges=edges,
                record=sorted(rec), explicit_models=bool(explicit_models))


# ------------------------------------------------------------------------------------------------ the engine

@dataclass
class _Sample:
    final_v: dict[str, np.ndarray] = field(default_factory=dict)  # flat
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # [T, n] int32


class _Engine:
    """The Lava network built from a spec; lives in the host process (or in this one with ``in_process``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.T, self.L = spec["T"], spec["latency"]
        self.pops = {p["name"]: p for p in spec["pops"]}
        self.procs: dict[str, Any] = {}
        self.sinks: dict[str, Any] = {}
        self.others: list[Any] = []
        self.models: dict[Any, type] = {}
        self.anchor: Any = None
        self.children: set[int] = set()
        self.step = 0  # Lava steps run so far (always a multiple of T between calls)
        self.timings: dict[str, float] = {}
        # run_many keeps every segment of steps within T + L; the pipes must hold one segment of frames
        self.pipe = 2 * self.T + self.L

    def build(self) -> None:
        t0 = time.perf_counter()
        from deploy.lava_compat import ensure_lava

        ensure_lava()  # before any lava import
        import scipy.sparse as sps
        from lava.proc.graded.models import PyGradedVecModelFixed
        from lava.proc.graded.process import GradedVec
        from lava.proc.lif.models import PyLifResetModelBitAcc
        from lava.proc.lif.process import LIFReset
        from lava.proc.sparse.models import PySparseModelBitAcc
        from lava.proc.sparse.process import Sparse

        from deploy.lava_procs import MODELS, DelayLine, FrameSink, FrameSource, MaxPoolRelay

        self.timings["import"] = time.perf_counter() - t0
        T = self.T
        for p in self.spec["pops"]:
            n, kind = p["size"], p["kind"]
            if kind == "input":
                proc = FrameSource(shape=(n,), buffer=self.pipe, name=p["name"])
            elif kind == "maxpool":
                proc = MaxPoolRelay(in_shape=p["in_shape"], kernel=p["kernel"], stride=p["stride"],
                                    padding=p["padding"], name=p["name"])
            elif kind == "relay":
                proc = GradedVec(shape=(n,), vth=0)  # takes no name= in Lava 0.10
            else:
                interval, offset = (1, 0) if kind == "gate" else (T, (1 + p["depth"]) % T)
                proc = LIFReset(shape=(n,), du=p["du"], dv=p["dv"], vth=p["vth"], bias_mant=p["bias"],
                                bias_exp=p["bias_exp"], reset_interval=interval, reset_offset=offset, name=p["name"])
            self.procs[p["name"]] = proc
            self.models[proc] = MODELS.get(type(proc), PyGradedVecModelFixed if kind == "relay" else PyLifResetModelBitAcc)

        lines: dict[tuple[str, int], Any] = {}

        def out_port(src: str, delay: int) -> Any:
            """``src``'s output, ``delay`` steps late (one shared DelayLine per source and delay)."""
            if delay == 0:
                return self.procs[src].s_out
            if (src, delay) not in lines:
                dl = DelayLine(shape=(self.pops[src]["size"],), delay=delay, name=f"{src}+{delay}")
                self.procs[src].s_out.connect(dl.a_in)
                lines[(src, delay)] = dl
                self.others.append(dl)
                self.models[dl] = MODELS[DelayLine]
            return lines[(src, delay)].s_out

        for s in self.spec["syns"]:
            data, indices, indptr, shape = s["csr"]
            w = sps.csr_matrix((data, indices, indptr), shape=shape)
            syn = Sparse(weights=w, weight_exp=s["weight_exp"], num_weight_bits=8,
                         num_message_bits=GRADED_MESSAGE_BITS if s["graded"] else 0, name=s["name"])
            out_port(s["src"], s["delay"]).connect(syn.s_in)
            syn.a_out.connect(self.procs[s["dst"]].a_in)
            self.others.append(syn)
            self.models[syn] = PySparseModelBitAcc
        for src, dst, delay in self.spec["edges"]:
            out_port(src, delay).connect(self.procs[dst].a_in)
        for name in self.spec["record"]:
            sink = FrameSink(shape=(self.pops[name]["size"],), buffer=self.pipe, name=f"record:{name}")
            self.procs[name].s_out.connect(sink.a_in)
            self.sinks[name] = sink
            self.models[sink] = MODELS[FrameSink]
        self.timings["build"] = time.perf_counter() - t0 - self.timings["import"]

    @property
    def all_procs(self) -> list[Any]:
        return [*self.procs.values(), *self.others, *self.sinks.values()]

    def compile(self) -> None:
        self.build()
        from lava.magma.core.run_configs import Loihi2SimCfg

        from deploy.lava_procs import MODELS

        t0 = time.perf_counter()
        # Lava looks exception-map keys up per process *instance* in its compiler; custom processes always go through
        # it (otherwise Lava's model discovery executes every module file of the deploy package, per instance).
        exceptions = dict(self.models) if self.spec["explicit_models"] else \
            {p: m for p, m in self.models.items() if type(p) in MODELS}
        before = child_pids()
        self.anchor = self.procs[self.spec["input"]]
        try:
            self.anchor.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt",
                                                            exception_proc_model_map=exceptions))
            # Lava refuses Var get/set and skips the STOP handshake in stop() (then hangs joining its children) until a
            # run has started, although its runtime services accept those commands as soon as they are up.
            self.anchor.runtime._is_started = True  # noqa: SLF001
        finally:
            self.children = child_pids() - before
        self.timings["create_runtime"] = time.perf_counter() - t0

    def run_many(self, frames: Sequence[np.ndarray]) -> list[_Sample]:
        """Pipelined samples: ``frames[k]`` is int32 ``[T, n_input]``; returns each sample's v and recordings."""
        from lava.magma.core.run_conditions import RunSteps

        T, L, S = self.T, self.L, len(frames)
        g0 = self.step
        out = [_Sample() for _ in range(S)]
        reads: dict[int, list[tuple[int, str]]] = {}  # global step -> [(sample, integrator)]
        for p in self.spec["pops"]:
            if p["kind"] == "integrator":
                for k in range(S):
                    reads.setdefault(g0 + k * T + T + p["depth"], []).append((k, p["name"]))
        end = g0 + -(-(S * T + L) // T) * T  # drain L steps, stay aligned to T for the next call
        n_in = self.pops[self.spec["input"]]["size"]
        zero = np.zeros(n_in, np.int32)
        rec = {name: np.zeros((S, T, self.pops[name]["size"]), np.int32) for name in self.sinks}
        stops = sorted(set(reads) | {end})
        step, bounded = g0, []
        for stop in stops:  # no segment longer than T + L steps: the input / record pipes hold one segment
            while stop - step > T + L:
                step += T
                bounded.append(step)
            bounded.append(stop)
            step = stop
        step = g0
        for stop in bounded:
            for g in range(step + 1, stop + 1):  # queue this segment's input frames: sample k's step t, or zeros
                k, t = divmod(g - g0 - 1, T)
                self.anchor.send(frames[k][t] if k < S else zero)
            self.anchor.run(condition=RunSteps(num_steps=stop - step, blocking=True))
            for name, sink in self.sinks.items():  # empty the record pipes: one frame per step
                d = self.pops[name]["depth"]
                for g in range(step + 1, stop + 1):
                    frame = sink.receive()
                    k, t = divmod(g - g0 - 1 - d, T)
                    if 0 <= k < S and g - g0 - 1 - d >= 0:
                        rec[name][k, t] = frame
            step = stop
            for k, name in reads.get(stop, []):
                out[k].final_v[name] = np.asarray(self.procs[name].v.get(), dtype=np.int64).ravel()
        self.step = end
        for k in range(S):
            out[k].outputs = {name: rec[name][k] for name in self.sinks}
        return out

    def close(self) -> dict[str, list]:
        """Stop the runtime (always), reap every child it started; return what survived (pids)."""
        try:
            if self.anchor is not None and self.anchor.runtime is not None:
                self.anchor.stop()
        finally:
            killed = reap(self.children)
            for proc in self.all_procs:  # a stopped runtime must not be stopped again by the processes' __del__
                proc._runtime = None  # noqa: SLF001
            self.anchor = None
        return {"killed": killed, "alive": sorted(alive_pids(self.children))}


# ------------------------------------------------------------------------------------------------- host side

def _host_main() -> None:
    """Entry point of the host subprocess: requests on stdin, answers on the original stdout (fd 1 becomes stderr,
    so that anything Lava prints cannot corrupt the protocol)."""
    rfd, wfd = 0, os.dup(1)
    os.dup2(2, 1)

    def detach() -> None:  # Lava's forked children must not hold the protocol pipes open (the runner sees EOF)
        os.close(wfd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, rfd)
        os.close(null)

    os.register_at_fork(after_in_child=detach)
    engine: _Engine | None = None
    try:
        while True:
            try:
                cmd, arg = recv_msg(rfd)
            except EOFError:
                return  # the runner went away: clean up and leave
            try:
                if cmd == "compile":
                    engine = _Engine(arg)
                    engine.compile()
                    reply = dict(timings=engine.timings, processes=len(engine.all_procs),
                                 children=sorted(engine.children), helpers=sorted(helper_pids()))
                elif cmd == "run":
                    assert engine is not None
                    reply = [(s.final_v, s.outputs) for s in engine.run_many(arg)]
                elif cmd == "close":
                    reply = engine.close() if engine is not None else {"killed": [], "alive": []}
                    engine = None
                    send_msg(wfd, ("ok", reply))
                    return
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                send_msg(wfd, ("ok", reply))
            except Exception as e:  # report, keep serving (the runner decides to close)
                send_msg(wfd, ("error", (type(e).__name__, str(e), traceback.format_exc())))
    finally:
        if engine is not None:
            engine.close()


# ---------------------------------------------------------------------------------------------------- runner

@dataclass
class LavaResult:
    """One sample from Lava, aligned to the reference schedule (row t = model step t)."""

    final_v: dict[str, np.ndarray]  # integrator -> [*shape] int64 (v after its last valid step)
    outputs: dict[str, np.ndarray]  # recorded population -> [T, *shape] (bool spikes / int64 graded values)
    spike_counts: dict[str, int]  # recorded population -> non-zero outputs over the T valid steps

    @property
    def logits_int(self) -> np.ndarray:
        if len(self.final_v) != 1:
            raise ValueError(f"the net has {len(self.final_v)} integrators; use final_v[name]")
        return next(iter(self.final_v.values())).ravel()


class LavaHostError(RuntimeError):
    """The Lava host reported an exception (its traceback is in the message)."""


class LavaRunner:
    """The IntNet as Lava processes, compiled once; ``run(x)`` one sample, ``run_many(xs)`` pipelined samples.

    ``record``: populations whose per-step outputs are returned (fixed at construction: Lava cannot rewire a compiled
    network), ``'all'`` or None. ``explicit_models``: name each process's fixed-point ProcessModel (the one
    ``select_tag='fixed_pt'`` selects) instead of Lava's per-instance model discovery. ``in_process``: run Lava in
    this process instead of a host subprocess. ``timeout``: seconds to wait for any host answer.

    Attributes: ``compile_time`` (s, host start + Lava import + build + compile + process start), ``timings`` (its
    parts), ``sample_times`` (s per sample of each call), ``num_processes``, ``plan``.
    """

    def __init__(self, net: "IntNet", record: Record = None, *, explicit_models: bool = True,
                 in_process: bool = False, timeout: float = 600.0) -> None:
        self.net = net
        self.plan = plan_delays(net)
        self.spec = build_spec(net, record, self.plan, explicit_models)
        self.record = set(self.spec["record"])
        self.in_process = in_process
        self.timeout = timeout
        self.compile_time: float | None = None
        self.timings: dict[str, float] = {}
        self.sample_times: list[float] = []
        self.num_processes = 0
        self.leaks: dict[str, list] | None = None  # what close() found still alive (should be empty lists)
        self._engine: _Engine | None = None
        self._host: subprocess.Popen | None = None
        self._host_children: set[int] = set()
        self._host_helpers: set[int] = set()  # the host's resource tracker: exits (after cleaning up) with the host
        self._closed = False

    # ------------------------------------------------------------------------------------------- lifecycle

    def compile(self) -> float:
        """Start the host, build and compile the network, start Lava's processes; returns ``compile_time``."""
        if self._closed:
            raise RuntimeError("LavaRunner is closed")
        if self.compile_time is not None:
            return self.compile_time
        t0 = time.perf_counter()
        try:
            if self.in_process:
                self._engine = _Engine(self.spec)
                self._engine.compile()
                info = dict(timings=self._engine.timings, processes=len(self._engine.all_procs), children=[])
            else:
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
                self._host = subprocess.Popen(
                    [sys.executable, "-c", "from deploy.lava_net import _host_main; _host_main()"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT, close_fds=True)
                info = self._call("compile", self.spec)
                self._host_children = set(info["children"])
                self._host_helpers = set(info["helpers"])
        except BaseException:
            self.close()
            raise
        self.compile_time = time.perf_counter() - t0
        self.timings = dict(info["timings"])
        self.num_processes = int(info["processes"])
        return self.compile_time

    def _call(self, cmd: str, arg: Any = None) -> Any:
        assert self._host is not None and self._host.stdin is not None and self._host.stdout is not None
        send_msg(self._host.stdin.fileno(), (cmd, arg))
        host = self._host
        status, reply = recv_msg(host.stdout.fileno(), self.timeout, alive=lambda: host.poll() is None)
        if status == "error":
            kind, msg, tb = reply
            raise LavaHostError(f"{kind}: {msg}\n--- Lava host traceback ---\n{tb}")
        return reply

    def __enter__(self) -> "LavaRunner":
        self.compile()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop Lava (always) and make sure every process started for it is gone; sets ``leaks``."""
        if self._closed:
            return
        self._closed = True
        report: dict[str, list] = {"killed": [], "alive": []}
        answered = False
        try:
            if self._engine is not None:
                report = self._engine.close()
            elif self._host is not None and self._host.poll() is None:
                try:
                    report = self._call("close")
                    answered = True
                except (EOFError, TimeoutError, OSError, LavaHostError):
                    pass  # a hung or dead host: it is terminated below, its Lava processes reaped as orphans
        finally:
            if self._host is not None:
                for stream in (self._host.stdin, self._host.stdout):
                    try:
                        stream.close()  # type: ignore[union-attr]
                    except OSError:
                        pass
                if not answered and self._host.poll() is None:
                    self._host.terminate()
                try:
                    self._host.wait(timeout=30 if answered else 5)
                except subprocess.TimeoutExpired:
                    self._host.kill()
                    self._host.wait()
            # the host's children were re-parented when it exited; none may survive it
            orphans = alive_pids(self._host_children)
            if orphans:  # the host died without stopping them: they wait on channels forever, so do not wait long
                reap(orphans, timeout=0.5)
            # the host's resource tracker unlinks any shared memory a crashed host left behind, then exits: wait for it
            deadline = time.monotonic() + 10.0
            while alive_pids(self._host_helpers) and time.monotonic() < deadline:
                time.sleep(0.02)
            self.leaks = {"killed": sorted(report.get("killed", [])) + sorted(orphans),
                          "alive": sorted(set(report.get("alive", [])) | alive_pids(self._host_children))}
            self._engine = None
            self._host = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------------------------------------- run

    def _frames(self, x: np.ndarray) -> np.ndarray:
        """One sample -> int32 ``[T, n]`` input frames (a static input is repeated T times)."""
        shape = next(p["shape"] for p in self.spec["pops"] if p["kind"] == "input")
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.integer) or np.all(x == np.round(x))):
            raise ValueError("x_int must hold integers")
        T = self.spec["T"]
        if tuple(x.shape) == tuple(shape):
            frames = np.broadcast_to(x.reshape(1, -1), (T, x.size))
        elif tuple(x.shape) == (T, *shape):
            frames = x.reshape(T, -1)
        else:
            raise ValueError(f"one sample must be {tuple(shape)} or {(T, *shape)}, got {tuple(x.shape)}")
        if frames.size and np.abs(frames).max() >= 1 << 31:
            raise ValueError("input values do not fit Lava's int32 messages")
        return np.ascontiguousarray(frames, dtype=np.int32)

    def run_many(self, xs: Sequence[np.ndarray] | np.ndarray) -> list[LavaResult]:
        """Run samples back to back (one every T Lava steps); ``xs``: [S, *input] or [S, T, *input] integers."""
        frames = [self._frames(x) for x in xs]
        if not frames:
            return []
        self.compile()
        t0 = time.perf_counter()
        if self._engine is not None:
            raw = [(s.final_v, s.outputs) for s in self._engine.run_many(frames)]
        else:
            raw = self._call("run", frames)
        self.sample_times.extend([(time.perf_counter() - t0) / len(frames)] * len(frames))
        pops = {p["name"]: p for p in self.spec["pops"]}
        results = []
        for final_v, outputs in raw:
            fv = {k: np.asarray(v, np.int64).reshape(pops[k]["shape"]) for k, v in final_v.items()}
            outs, counts = {}, {}
            for k, arr in outputs.items():
                shaped = arr.reshape(self.spec["T"], *pops[k]["shape"])
                outs[k] = shaped.astype(bool) if pops[k]["kind"] in BINARY_KINDS else shaped.astype(np.int64)
                counts[k] = int(np.count_nonzero(arr))
            results.append(LavaResult(fv, outs, counts))
        return results

    def run(self, x_int: np.ndarray) -> LavaResult:
        """One sample (``[*input shape]`` static or ``[T, *input shape]`` frames)."""
        return self.run_many([x_int])[0]

    @property
    def per_sample_time(self) -> float | None:
        """Median seconds per sample so far (None before the first)."""
        return float(np.median(self.sample_times)) if self.sample_times else None


def run_lava(net: "IntNet", x_int: np.ndarray, record: Record = None, **runner_kw: Any) -> "ExecResult":
    """Batch convenience with the executor's result type: compile, run every sample (pipelined), close.

    Lava exposes no overflow counters, so ``overflow`` reads 0 here; take them from the reference executor, which is
    bit-exact with Lava (``tests/test_lava_net.py``)."""
    from deploy.semantics import ExecResult
    from deploy.fixed_point import OverflowCounters

    x_int = np.asarray(x_int)
    with LavaRunner(net, record, **runner_kw) as runner:
        res = runner.run_many(list(x_int))
    final_v = {k: np.stack([r.final_v[k] for r in res]) for k in res[0].final_v} if res else {}
    outputs = {k: np.stack([r.outputs[k] for r in res], axis=1) for k in runner.record} if res else {}
    counts = {k: np.array([r.spike_counts[k] for r in res], np.int64) for k in runner.record}
    return ExecResult(net.T, final_v, outputs, counts, OverflowCounters(), {})
