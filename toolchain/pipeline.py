"""The one way through: ``load(checkpoint | .intnet.npz)`` -> model -> graph -> integer network.

Every command (``sdt-export``, ``sdt-deploy``, ``sdt-energy``), ``make demo`` and the benches start here, so they
read a checkpoint once, build its graph once, and quantise it the same way (the input grid of the data set's
training split, the same :class:`~deploy.quantize.QuantConfig` flags): the network ``sdt-energy --integer`` counts
is the one ``sdt-deploy`` runs and ``sdt-export --to lava`` writes.

    src = load("model_best.pth.tar")          # or load("model.intnet.npz")
    src.graph()                               # the float graph (checkpoint only), built once
    net, report = src.network(QuantConfig())  # quantised (checkpoint) or as read (integer network)
    src.structure_graph()                     # an integer network's graph structure (its recorded model config)
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deploy.intnet import IntNet
from deploy.quantize import QuantConfig, quantize_graph
from export.graph import Graph
from sdt.errors import UserError

CHECKPOINT, INTNET = "checkpoint", "intnet"
CALIB_SAMPLES = 64  # training-split inputs used to find the input grid (never the evaluated split)


def normalization_of(dataset: str | None, strict: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """``(normalization, canonical name)`` of a data set (``sdt.data`` conventions); an unknown name is an error, or
    with ``strict=False`` (where the normalisation is only documentation) gives ``(None, name)``."""
    if not dataset:
        return None, None
    from sdt.data import canonical_name, dataset_info

    try:
        info = dataset_info(canonical_name(str(dataset)))
    except ValueError as e:
        if not strict:
            return None, str(dataset)
        raise UserError(str(e)) from None
    norm = {"mean": list(info.mean), "std": list(info.std)} if info.normalize_default and info.kind == "image" else None
    return norm, info.name


def grid_inputs(dataset: str, img_size: int, T: int, data_dir: str | None = None, n: int = CALIB_SAMPLES
                ) -> torch.Tensor | None:
    """The first ``n`` *training* inputs of ``dataset`` as the model sees them (to find the input grid), or None if
    the data are not available here. The evaluated split is never used for quantisation."""
    from sdt.data import dataset_info
    from sdt.train.data import build_dataset

    info = dataset_info(dataset)
    if info.kind != "image":
        return None
    ns = argparse.Namespace(data_dir=data_dir, input_size=None, img_size=img_size, time_steps=T, crop_pct=None,
                            mean=None, std=None)
    try:
        ds = build_dataset(ns, info.name, "train", train=False, size=img_size)
    except UserError:
        return None
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))]) if len(ds) else None


@dataclass
class Loaded:
    """What :func:`load` read. ``kind``: 'checkpoint' (``model`` set) or 'intnet' (``net`` set)."""

    kind: str
    path: Path | None
    dataset: str | None
    normalization: dict[str, Any] | None = None
    model: Any = None
    net: IntNet | None = None
    recorded: dict[str, Any] = field(default_factory=dict)  # a checkpoint's training arguments
    _graph: Graph | None = None
    _networks: dict[Any, tuple[IntNet, dict[str, Any]]] = field(default_factory=dict)

    @property
    def model_config(self) -> dict[str, Any]:
        """The SDT constructor config (a checkpoint's model, or the one the integer network records)."""
        if self.model is not None:
            return dict(self.model.model_config)
        assert self.net is not None
        cfg = self.net.metadata.get("graph_metadata", {}).get("model_config")
        if not cfg:
            raise UserError(f"{self.path}: the integer network records no model config; re-export it with "
                            "sdt-export --to lava")
        return json.loads(cfg) if isinstance(cfg, str) else dict(cfg)

    def graph(self) -> Graph:
        """The float graph of the checkpoint's model (built once)."""
        if self.model is None:
            raise UserError(f"{self.path} is an integer network; the float graph needs the checkpoint (--checkpoint)")
        if self._graph is None:
            from export.from_model import build_graph

            self._graph = build_graph(self.model, normalization=self.normalization)
        return self._graph

    def structure_graph(self) -> Graph:
        """A graph with this source's structure (shapes, ops, node names): the checkpoint's own graph, or for an
        integer network the graph of its recorded model config with random weights (what the energy counter needs,
        with the network's own integer weights as masks)."""
        if self.model is not None:
            return self.graph()
        import sdt
        from export.from_model import build_graph

        assert self.net is not None
        with torch.random.fork_rng(devices=[]):  # the random weights are never used: leave the caller's RNG alone
            torch.manual_seed(0)
            graph = build_graph(sdt.create_model(**self.model_config).eval(), normalization=self.normalization)
        if graph.T != self.net.T or tuple(graph.input.shape) != tuple(self.net.populations[0].shape):
            raise UserError(f"{self.path}: the recorded model config does not give the network's shape (T "
                            f"{graph.T} vs {self.net.T}, input {graph.input.shape} vs {self.net.populations[0].shape})")
        return graph

    def network(self, config: QuantConfig | None = None, *, data_dir: str | None = None,
                calib: torch.Tensor | None = None) -> tuple[IntNet, dict[str, Any] | None]:
        """``(net, quantisation report)``: the checkpoint quantised with ``config`` (report), or the integer network
        as read (report None). The input grid (``input_levels=None``) comes from the data set's training split when it
        is available here, else from ``calib`` (model inputs), else 8-bit."""
        if self.net is not None:
            return self.net, None
        config = config or QuantConfig()
        key = (config, data_dir, calib is not None)  # quantised once per setting (export + validation, ...)
        if key not in self._networks:
            self._networks[key] = self._quantize(config, data_dir, calib)
        return self._networks[key]

    def _quantize(self, config: QuantConfig, data_dir: str | None, calib: torch.Tensor | None
                  ) -> tuple[IntNet, dict[str, Any]]:
        graph = self.graph()
        grid = None
        if config.input_levels is None and graph.encoding == "repeat":
            if self.dataset:
                grid = grid_inputs(self.dataset, int(graph.input.shape[-1]), graph.T, data_dir)
            if grid is None and calib is not None:
                grid = torch.as_tensor(calib, dtype=torch.float32)
        meta = {"dataset": self.dataset, **({"source": self.path.name} if self.path else {})}
        return quantize_graph(graph, config, meta, grid)


def load(source: Any, dataset: str | None = None, *, use_ema: bool = False, strict: bool = True) -> Loaded:
    """Read a checkpoint (official or ours), an integer network file (``.intnet.npz``) or take a model.

    ``dataset`` (else the one the checkpoint / network records) decides the input normalisation; with
    ``strict=False`` an unknown data set name only leaves the normalisation unknown."""
    if not isinstance(source, (str, os.PathLike)):
        norm, name = normalization_of(dataset, strict)
        return Loaded(CHECKPOINT, None, name, norm, model=source.eval())
    path = Path(source)
    from sdt.checkpoint import file_kind

    if file_kind(path) == "intnet":
        from deploy.intnet import load as load_net
        from deploy.semantics import prove_no_overflow

        net = load_net(path)  # every field checked against the format and Lava's bit widths
        prove_no_overflow(net, f"integer network {path}")  # the 24-bit guarantee, re-proved from the saved matrices
        recorded = net.metadata.get("dataset")
        _, name = normalization_of(dataset or recorded, strict=False)
        return Loaded(INTNET, path, name, net.metadata.get("graph_metadata", {}).get("normalization"), net=net)
    from sdt.checkpoint import model_from_checkpoint, read_checkpoint, recorded_args

    ckpt = read_checkpoint(path)
    rec = recorded_args(ckpt)
    model = model_from_checkpoint(ckpt, path, use_ema=use_ema)
    del ckpt
    norm, name = normalization_of(dataset or rec.get("dataset"), strict)
    return Loaded(CHECKPOINT, path, name, norm, model=model.eval(), recorded=rec)


__all__ = ["load", "Loaded", "grid_inputs", "normalization_of", "CHECKPOINT", "INTNET",
           "CALIB_SAMPLES"]
