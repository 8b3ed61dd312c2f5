"""Float <-> integer validation: the same inputs through the float graph and through the integer network.

The float side is ``export.run_graph`` (bit-exact with the PyTorch model); the integer side is the reference
executor (``deploy.executor``) or Lava (``deploy.lava_net``) on the 8-bit encoded input. Reported:

* top-1 agreement (argmax of the float logits vs the decoded integer logits), and each accuracy when labels exist;
* per population (every LIF and gate, under the graph's node names): the fraction of identical spikes over all
  neurons and samples, overall and per time step, and both firing rates;
* overflow counters (u wraps / v clips) of the integer run, which must read 0;
* per-population spike counts and timings;
* the fraction of input values the integer encoding clipped (``input_clipped``). The float side sees the original
  inputs (end to end) or, with ``float_input='encoded'``, what the integer input represents (the network alone).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from export.graph import Graph
from sdt.errors import UserError

from .intnet import IntNet
from .encoding import decode_input, encode_input, input_out_of_range

__all__ = ["compare", "integer_runner", "BACKENDS"]

BACKENDS = ("reference", "lava")


class _LavaBatch:
    """Lava results of a batch, stacked like the reference executor's ``ExecResult``."""

    def __init__(self, results: list[Any]) -> None:
        self.final_v = {k: np.stack([r.final_v[k] for r in results]) for k in results[0].final_v}
        self.outputs = {k: np.stack([r.outputs[k] for r in results], axis=1) for k in results[0].outputs}
        self.spike_counts = {k: np.asarray([r.spike_counts[k] for r in results]) for k in results[0].spike_counts}
        self.overflow = None  # Lava wraps / clips without counting
        self.overflow_by_population: dict[str, Any] = {}


def integer_runner(net: IntNet, backend: str = "reference", record: Iterable[str] | None = None
                   ) -> tuple[Callable[..., Any], Callable[[], None]]:
    """``(run, close)``: ``run(x_int)`` returns an ``ExecResult``-like object (``final_v``, ``outputs``,
    ``spike_counts``, ``overflow``, ``overflow_by_population``) with ``record``'s per-step outputs."""
    names = list(record or ())
    if backend == "reference":
        from .executor import Executor

        ex = Executor(net)
        return (lambda x: ex.run(x, record=names)), ex.close
    if backend == "lava":
        try:
            from .lava_net import LavaRunner
        except ImportError as e:
            raise UserError(f"the lava backend is not available ({e}); use --backend reference") from None
        runner = LavaRunner(net, record=names)
        runner.compile()
        # a batch runs pipelined: one sample every T Lava steps (each single run would drain the network)
        return (lambda x: _LavaBatch(runner.run_many(np.asarray(x)))), runner.close
    raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _final_v(net: IntNet, res: Any) -> np.ndarray:
    name = net.decode.get("population")
    v = np.asarray(res.final_v[name] if name in res.final_v else next(iter(res.final_v.values())))
    return v.reshape(v.shape[0], -1)


def _logits_int(net: IntNet, res: Any) -> np.ndarray:
    return net.decode_logits(_final_v(net, res))


def compare(net: IntNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], *, graph: Graph | None = None,
            backend: str = "reference", progress: bool = False, total: int | None = None,
            layers: bool = True, float_input: str = "original") -> dict[str, Any]:
    """Run ``batches`` of float inputs ``(x, labels or None)`` through ``net`` (and ``graph`` if given) and return the
    agreement report (JSON-able). Without ``graph`` only the integer side is measured. Percentages for top-1,
    fractions in [0, 1] for spike agreement. ``float_input``: the float model sees the ``'original'`` inputs (end to
    end: input quantisation included) or the ``'encoded'`` ones (what the integer input represents: the network
    alone). ``input_clipped`` reports the fraction of input values outside the integer input's range."""
    if float_input not in ("original", "encoded"):
        raise UserError(f"float_input must be 'original' or 'encoded', got {float_input!r}")
    from export.run_graph import run_graph

    names = net.spike_populations()
    if graph is not None:
        names = [n for n in names if n in graph]
    rec = names if (graph is not None and layers) else []
    # Lava cannot count wraps: its runs are checked against the reference executor, which counts them
    ref = integer_runner(net, "reference", rec) if backend == "lava" else None
    t0 = time.perf_counter()
    try:
        run, close = integer_runner(net, backend, rec)
    except BaseException:
        if ref is not None:
            ref[1]()
        raise
    t_setup = time.perf_counter() - t0  # weight preparation; for Lava, building and compiling the processes
    same_logits = same_spikes = spikes_total = 0
    T = net.T
    eq = {n: np.zeros(T, np.int64) for n in names}
    per_step_total = {n: 0 for n in names}
    f_spk = {n: 0 for n in names}
    i_spk = {n: 0 for n in names}
    counts: dict[str, int] = {}
    over_u = over_v = 0
    over_by: dict[str, list[int]] = {}
    n = agree = f_ok = i_ok = labelled = clipped = values = 0
    margins: list[float] = []
    t_float = t_int = 0.0
    try:
        for x, y in tqdm(batches, total=total, desc=f"deploy ({backend})", disable=not progress, leave=False,
                         dynamic_ncols=True):
            x = torch.as_tensor(x, dtype=torch.float32)
            t0 = time.perf_counter()
            x_int = encode_input(net, x)
            res = run(x_int)
            clipped += input_out_of_range(net, x)
            values += x_int.size
            t_int += time.perf_counter() - t0
            if ref is not None:
                r = ref[0](x_int)
                same_logits += int(np.all(_final_v(net, r) == _final_v(net, res), axis=1).sum())
                for k in rec:
                    same_spikes += int((np.asarray(r.outputs[k]) == np.asarray(res.outputs[k])).sum())
                    spikes_total += int(np.asarray(r.outputs[k]).size)
                res.overflow, res.overflow_by_population = r.overflow, r.overflow_by_population
            li = _logits_int(net, res)
            pi = li.argmax(1)
            B = li.shape[0]
            for k, c in res.spike_counts.items():
                counts[k] = counts.get(k, 0) + int(np.asarray(c).sum())
            over_u += res.overflow.u_wraps
            over_v += res.overflow.v_clips
            for k, c in res.overflow_by_population.items():
                if c.total:
                    acc = over_by.setdefault(k, [0, 0])
                    acc[0] += c.u_wraps
                    acc[1] += c.v_clips
            if graph is not None:
                t0 = time.perf_counter()
                xf = decode_input(net, x_int) if float_input == "encoded" else x
                lf, rec = run_graph(graph, xf, record=names if layers else ())
                t_float += time.perf_counter() - t0
                lf = lf.mean(0) if lf.dim() == 3 else lf
                lf = lf.numpy().astype(np.float64)
                pf = lf.argmax(1)
                agree += int((pf == pi).sum())
                srt = np.sort(lf, 1)
                for b in np.flatnonzero(pf != pi):
                    margins.append(float(srt[b, -1] - srt[b, -2]))
                if y is not None:
                    f_ok += int((pf == np.asarray(y)).sum())
                for k in names if layers else ():
                    fs = rec[k].numpy() != 0
                    is_ = np.asarray(res.outputs[k]).astype(bool)
                    eq[k] += (fs == is_).reshape(T, -1).sum(1)
                    per_step_total[k] += fs[0].size
                    f_spk[k] += int(fs.sum())
                    i_spk[k] += int(is_.sum())
            if y is not None:
                i_ok += int((pi == np.asarray(y)).sum())
                labelled += B
            n += B
    finally:
        close()
        if ref is not None:
            ref[1]()
    pct = (lambda k: round(100.0 * k / n, 4)) if n else (lambda k: None)
    report: dict[str, Any] = {"backend": backend, "samples": n, "T": T, "float_input": float_input,
                              "input_clipped": round(clipped / values, 6) if values else None,
                              "int_top1": pct(i_ok) if labelled == n and n else None}
    if graph is not None:
        report.update({"float_top1": pct(f_ok) if labelled == n and n else None, "top1_agreement": pct(agree),
                       "disagreements": n - agree,
                       "disagreement_float_margins": [round(m, 5) for m in sorted(margins)[:50]]})
        if layers:
            report["layers"] = {
                k: {"spike_agreement": round(float(eq[k].sum()) / max(1, T * per_step_total[k]), 6),
                    "per_step": [round(float(v) / max(1, per_step_total[k]), 6) for v in eq[k]],
                    "float_rate": round(f_spk[k] / max(1, T * per_step_total[k]), 6),
                    "int_rate": round(i_spk[k] / max(1, T * per_step_total[k]), 6)} for k in names}
    if ref is not None:
        report["lava_vs_reference"] = {"identical_logits": f"{same_logits}/{n}",
                                       "identical_spikes": round(same_spikes / spikes_total, 6) if spikes_total
                                       else None}
    report["overflow"] = {"u_wraps": over_u, "v_clips": over_v,
                          "by_population": {k: {"u_wraps": a, "v_clips": b} for k, (a, b) in sorted(over_by.items())}}
    report["spike_counts"] = counts
    report["timings"] = {"integer_setup_s": round(t_setup, 3), "integer_s": round(t_int, 3),
                         "float_s": round(t_float, 3) if graph is not None else None,
                         "integer_ms_per_sample": round(1000 * t_int / n, 3) if n else None}
    return report
