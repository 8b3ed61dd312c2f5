"""Export targets: ``name -> Target(suffix, write, validate)``. ``sdt-export --to NAME`` is a lookup here.

``write(src, path, args)`` writes the file of a :class:`~toolchain.pipeline.Loaded` checkpoint and returns
``(format detail, counts)`` for the summary line; ``validate(src, path, args)`` checks the written file on
``args.validate`` random inputs and returns ``(passed, line)``. ``args`` are ``sdt-export``'s arguments. A new format
is one more entry.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sdt.errors import UserError

from .pipeline import Loaded, load


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str
    write: Callable[[Loaded, Path, argparse.Namespace], tuple[str, str]]
    validate: Callable[[Loaded, Path, argparse.Namespace], tuple[bool, str]]


def _graph_counts(src: Loaded) -> str:
    from export.validate import graph_stats

    stats = graph_stats(src.graph())
    return f"{stats['nodes']} nodes, {stats['edges']} edges, {stats['parameters']:,} parameters"


def _write_nir(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[str, str]:
    from export.nir_writer import write_nir

    write_nir(src.graph(), path, fold_bn=args.fold_bn)
    return "NIR", _graph_counts(src)


def _write_onnx(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[str, str]:
    from export.onnx_writer import write_onnx

    info = write_onnx(src.graph(), path, spikes=args.spikes, fold_bn=args.fold_bn)
    return f"ONNX opset {info.opset}, {info.ops} ops, {len(info.outputs)} output(s)", _graph_counts(src)


def _validate_nir(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[bool, str]:
    from export.nir_reader import read_nir
    from export.validate import ATOL, random_inputs, spike_nodes, validate_against_model

    graph = src.graph()
    program = read_nir(path)
    _, probe = program.run(random_inputs(graph, 1, args.seed), record=True)
    nodes = [n for n in spike_nodes(graph) if n in probe]  # the spike tensors the NIR runner names
    del probe
    # the NIR file reproduces the model bit for bit unless BN is folded: then rounding ties are possible
    exact = not args.fold_bn
    report = validate_against_model(lambda x: program.run(x, record=True), graph, src.model, args.validate,
                                    label="NIR runner", nodes=nodes, seed=args.seed, batch_size=args.batch_size,
                                    atol=0.0 if exact else ATOL, strict=exact or args.strict)
    return report.passed, report.line()


def _validate_onnx(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[bool, str]:
    from export.onnx_writer import validate_onnx

    report = validate_onnx(path, src.model, args.validate, graph=src.graph(), seed=args.seed,
                           batch_size=args.batch_size, strict=args.strict)
    return report.passed, report.line()


# ------------------------------------------------------------------------------------------------------- lava

def _lava_inputs(src: Loaded, args: argparse.Namespace) -> torch.Tensor | None:
    """The validation inputs (also the input grid's last resort when the training data are not here)."""
    from export.validate import random_inputs

    return random_inputs(src.graph(), args.validate, args.seed) if args.validate else None


def _lava_summary(src: Loaded, path: str | os.PathLike, config: Any, calib: torch.Tensor | None
                  ) -> dict[str, Any]:
    """Quantise, write the integer network to ``path``; returns its JSON-able summary."""
    from deploy.intnet import save

    net, report = src.network(config, calib=calib)
    save(net, path)
    return {"path": str(path), "format": "sdt-intnet v1", "T": net.T, "dataset": src.dataset,
            "encoding": dict(net.encoding), "decode": dict(net.decode), "bytes": Path(path).stat().st_size,
            **{k: v for k, v in report.items() if k != "layers"}}


def _calibration(src: Loaded, config: Any, calib: Any) -> dict[str, Any]:
    """Float <-> integer agreement of the network on ``calib`` (see :func:`deploy.agreement.compare`)."""
    from deploy.agreement import compare

    net, _ = src.network(config, calib=calib)  # the network just written (the pipeline quantises once)
    # calibration inputs may lie off the integer input's range (N(0,1) pixels): the float side gets what the
    # integer input represents, so the network is compared, not the clipping
    return compare(net, [(calib, None)], graph=src.graph(), progress=False, float_input="encoded")


def _quant_config(args: argparse.Namespace) -> Any:
    try:
        from .quant_options import quant_config

        return quant_config(args)
    except ImportError as e:
        raise UserError(f"--to lava needs deploy.quantize, which this installation lacks ({e})") from None


def _write_lava(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[str, str]:
    s = _lava_summary(src, path, _quant_config(args), _lava_inputs(src, args))
    counts = ", ".join(f"{s[k]:,} {label}" for k, label in (
        ("populations", "populations (nodes)"), ("synapses", "synapses (edges)"),
        ("weights_nonzero", "nonzero integer weights")) if isinstance(s.get(k), int))
    return f"{s['format']}, T={s['T']}", counts


def _validate_lava(src: Loaded, path: Path, args: argparse.Namespace) -> tuple[bool, str]:
    cal = _calibration(src, _quant_config(args), _lava_inputs(src, args))
    over = cal.get("overflow", {})
    wraps = int(over.get("u_wraps", 0)) + int(over.get("v_clips", 0))
    line = (f"integer network vs float graph on {cal.get('samples', args.validate)} inputs: top-1 agreement "
            f"{cal.get('top1_agreement')}%, overflow events {wraps}")
    return not wraps, line  # the deployment contract: counters must read 0


def export_lava(checkpoint_or_model: Any, out_path: str | os.PathLike, calib: torch.Tensor | None = None, *,
                dataset: str | None = None, config: Any = None) -> dict[str, Any]:
    """Quantise a checkpoint (path) or model and write the integer network to ``out_path`` (``deploy.intnet``
    format, atomic, byte-reproducible): ``sdt-export --to lava`` as a function. ``calib``: optional model inputs (a
    tensor or ``(x, labels)``) on which float <-> integer agreement is measured (``summary['calibration']``); the
    scales never depend on them. The input grid is found on the training split of the data set when it is here,
    else on ``calib``, else 8-bit. Returns a JSON-able summary."""
    x = calib[0] if isinstance(calib, (tuple, list)) else calib
    src = load(checkpoint_or_model, dataset)
    summary = _lava_summary(src, out_path, config, x)
    if x is not None:
        summary["calibration"] = _calibration(src, config, x)
    return summary


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("nir", ".nir", _write_nir, _validate_nir),
    Target("onnx", ".onnx", _write_onnx, _validate_onnx),
    Target("lava", ".intnet.npz", _write_lava, _validate_lava),
)}

__all__ = ["Target", "TARGETS", "export_lava"]
