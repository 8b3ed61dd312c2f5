"""Byte-level digests of every exported artefact for a fixed set of test models (behaviour-preservation guard).

The digests in ``tests/data/golden_digests.json`` were computed before the pipeline refactor (issue 14); a refactor
that changes any written byte fails ``tests/test_golden.py``. Regenerate only for an intended format change:

    .venv/bin/python -m tests.golden --write
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tests.conftest import tiny_model

DIGESTS = Path(__file__).with_name("data") / "golden_digests.json"

# name -> (seed, model overrides): the official, NIR-clean, DVS, TET and PLIF test models
MODELS: dict[str, tuple[int, dict[str, Any]]] = {
    "official": (0, {}),
    "official-1111": (1, dict(pooling_stat="1111", img_size_h=32, img_size_w=32)),
    "nir_clean": (4, dict(variant="nir_clean", pooling_stat="1111", img_size_h=32, img_size_w=32)),
    "dvs": (3, dict(dvs_mode=True, in_channels=2)),
    "tet": (22, dict(TET=True)),
    "plif": (5, dict(spike_mode="plif")),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _calib(graph: Any, n: int = 8) -> torch.Tensor | None:
    if graph.encoding == "frames":
        return None
    # pixels on the 8-bit grid, so the input-grid detection takes its data path
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *graph.input.shape), generator=g).to(torch.float32) / 255.0


def artefacts(name: str) -> dict[str, Callable[[Path], None]]:
    """Writers of every artefact of model ``name``: file label -> function writing it to a path."""
    from deploy.intnet import save
    from deploy.quantize import QuantConfig, quantize_graph
    from export.from_model import build_graph
    from export.nir_writer import write_nir
    from export.onnx_writer import write_onnx

    seed, overrides = MODELS[name]
    model = tiny_model(seed=seed, **overrides)
    graph = build_graph(model)
    calib = _calib(graph)

    def intnet(**cfg: Any) -> Callable[[Path], None]:
        return lambda p: save(quantize_graph(graph, QuantConfig(**cfg), {"dataset": "golden"}, calib)[0], p)

    out: dict[str, Callable[[Path], None]] = {
        "nir": lambda p: write_nir(graph, p),
        "nir-fold": lambda p: write_nir(graph, p, fold_bn=True),
        "onnx": lambda p: write_onnx(graph, p),
        "onnx-spikes-fold": lambda p: write_onnx(graph, p, spikes=True, fold_bn=True),
        "intnet-w2": intnet(),
        "intnet-w1": intnet(weight_terms=1),
    }
    if name == "official":
        out["intnet-w1-bias"] = intnet(weight_terms=1, bias_synapse=True)
    return out


def compute(names: list[str] | None = None) -> dict[str, str]:
    """``"model/label" -> sha256`` of every artefact."""
    torch.set_num_threads(1)
    suffix = {"nir": ".nir", "onn": ".onnx", "int": ".intnet.npz"}
    digests = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names or list(MODELS):
            for label, write in artefacts(name).items():
                p = Path(d) / f"{name}-{label}{suffix[label[:3]]}"
                write(p)
                digests[f"{name}/{label}"] = _sha(p)
    return digests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite tests/data/golden_digests.json")
    args = p.parse_args(argv)
    d = compute()
    if args.write:
        DIGESTS.write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
    print(json.dumps(d, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
