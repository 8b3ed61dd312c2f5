"""Feed the counter: the float graph executor or the integer network's executor, batch by batch."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from export.graph import Graph
from sdt.errors import UserError

from .counter import Counts, EnergyCounter


def take_batches(dataset: Any, samples: int | None, batch_size: int) -> Iterator[torch.Tensor]:
    """The first ``samples`` inputs of ``dataset`` (all if None), in order, as batches (deterministic)."""
    n = len(dataset) if samples is None else min(int(samples), len(dataset))
    for start in range(0, n, batch_size):
        xs = [dataset[i][0] for i in range(start, min(n, start + batch_size))]
        yield torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs])


def count_float(graph: Graph, counter: EnergyCounter, batches: Iterable[torch.Tensor], *, total: int | None = None,
                progress: bool = False) -> tuple[Counts, dict[str, Any]]:
    """Run the float graph (bit-exact with the model) on every batch and count. Returns counts and timings."""
    from export.run_graph import run_graph

    tally = counter.tally()  # counted as the graph runs: no recorded tensor is kept
    t_run = 0.0
    n = 0
    with torch.inference_mode():
        for x in tqdm(batches, total=total, desc="energy (float)", disable=not progress, leave=False,
                      dynamic_ncols=True, unit="batch"):
            t0 = time.perf_counter()
            run_graph(graph, x, record=counter.required, on_record=tally.add)
            tally.end_batch()
            t_run += time.perf_counter() - t0
            n += 1
    if not n:
        raise UserError("no input samples to count; check --samples and the data set")
    t0 = time.perf_counter()
    counts = tally.counts()
    t_count = tally.count_s + time.perf_counter() - t0
    return counts, {"run_s": t_run - tally.count_s, "count_s": t_count}


def integer_population_map(net: Any, graph: Graph, names: Iterable[str]) -> dict[str, str]:
    """Graph node -> integer population for every node the counter needs (the quantiser names populations after
    their graph nodes and records the node in ``attrs['node']``)."""
    by_node = {}
    for p in net.populations:
        by_node.setdefault(str(p.attrs.get("node", p.name)), p.name)
        by_node.setdefault(p.name, p.name)
    out, missing = {}, []
    for n in names:
        if graph.node(n).op == "input":
            pop = next((p.name for p in net.populations if p.kind == "input"), None)
        else:
            pop = by_node.get(n)
        if pop is None:
            missing.append(n)
        else:
            out[n] = pop
    if missing:
        raise UserError(f"the integer network has no population for graph node(s) {', '.join(missing)}; "
                        "it was not built from this graph")
    return out


def integer_weight_masks(net: Any, graph: Graph) -> dict[str, np.ndarray]:
    """Graph conv/linear node -> which of its weights the integer network keeps non-zero (shape of the graph weight).

    Each synapse records the graph node its weights came from (``Synapse.node``); a weight counts as effective when any synapse that carries it (every hi/lo part, sign half and channel group, into
    every reader of the stream) holds a non-zero integer. Synapses whose kernel is not the node's own (an avg-pool
    composed into the conv, a head averaged over tokens) are skipped: those nodes keep their float masks."""
    masks: dict[str, np.ndarray] = {}
    for s in net.synapses:
        node_name = s.node
        if node_name is None or node_name not in graph or graph.node(node_name).op not in ("conv2d", "linear") or s.kind == "sparse":
            continue
        w = np.asarray(s.weight)
        shape = tuple(graph.node(node_name).params["weight"].shape)
        if w.shape != shape:
            continue
        masks[node_name] = masks.get(node_name, np.zeros(shape, bool)) | (w != 0)
    return masks


def count_integer(net: Any, graph: Graph, counter: EnergyCounter, batches: Iterable[torch.Tensor], *,
                  total: int | None = None, progress: bool = False) -> tuple[Counts, dict[str, Any]]:
    """Run the integer network (reference executor) on the 8-bit encoded batches and count its executed spikes with
    the graph's fan-outs. The input node counts the encoded integers (a pixel that rounds to 0 triggers nothing)."""
    from deploy.encoding import encode_input
    from deploy.executor import Executor

    mapping = integer_population_map(net, graph, counter.required)
    nodes_of: dict[str, list[str]] = {}
    for node, pop in mapping.items():
        nodes_of.setdefault(pop, []).append(node)
    tally = counter.tally()

    def on_record(pop: str, a: np.ndarray, channels_last: bool) -> None:  # counted as made, in the executor's layout
        if not channels_last:
            a = a.reshape(*a.shape[:2], *net.population(pop).shape)
        for node in nodes_of[pop]:
            tally.add(node, a, channels_last)
    t_run = 0.0
    n = overflow = 0
    with Executor(net) as ex:
        for x in tqdm(batches, total=total, desc="energy (integer)", disable=not progress, leave=False,
                      dynamic_ncols=True, unit="batch"):
            t0 = time.perf_counter()
            res = ex.run(encode_input(net, x), record=sorted(nodes_of), on_record=on_record)
            tally.end_batch()
            t_run += time.perf_counter() - t0
            overflow += int(res.overflow.u_wraps + res.overflow.v_clips)
            n += 1
    if not n:
        raise UserError("no input samples to count; check --samples and the data set")
    t0 = time.perf_counter()
    counts = tally.counts()
    return counts, {"run_s": t_run - tally.count_s, "count_s": tally.count_s + time.perf_counter() - t0,
                    "overflow_events": overflow}


__all__ = ["take_batches", "count_float", "count_integer", "integer_population_map", "integer_weight_masks"]
