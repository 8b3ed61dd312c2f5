"""The integer network: a Loihi-2-style netlist of populations and synapses (the *what*; executors are the *how*).

It is produced from the intermediate graph by the quantiser and executed by the reference executor
(`deploy/executor.py`, aligned schedule) and by Lava (`deploy/lava_net.py`, with synaptic delays equalised).

Arithmetic (Lava 0.10 fixed point, see `deploy/fixed_point.py`):
- A **synapse** reads its source population's output at the current model step and delivers the integer current
  ``(W @ x) << weight_exp`` (``W`` int, already clipped/truncated as Lava's Dense does; binary or graded ``x``).
- A **direct edge** delivers the source output unchanged (a 0-delay port connection in Lava).
- A population sums every incoming current and direct edge into ``a`` and updates:
  - ``lif``: Lava LIF (``du``, ``dv``, ``vth``, per-neuron ``bias_mant``/``bias_exp``); binary spikes out.
  - ``gate``: memoryless threshold unit (Lava ``LIFReset`` with ``reset_interval=1``, du=4095, dv=0):
    ``s = ((a << 6) + bias) > (vth << 6)``; AND (vth=1 over two binary inputs) and OR / binary max-pool (vth=0).
  - ``maxpool``: graded relay, ``out = maxpool2d(a)`` over ``attrs`` kernel/stride/padding (a custom process in Lava;
    the official real-valued SPS max-pool acting on currents). ``a`` has the pool's *input* grid, given as
    ``attrs['in_shape']`` (C,H,W) (if absent, executors take the output shape of an incoming conv synapse); padding
    never wins (``-inf``, as in PyTorch). No bias: fold it into the consumers (it commutes with the max).
  - ``relay``: graded sum relay, ``out = a`` (a 24-bit signed payload; Lava's stock ``GradedVec`` with vth=0). It
    materialises a sum (the SDT's membrane stream at each residual add) so that readers need not repeat its terms.
    No bias.
  - ``integrator``: Lava LIF with du=4095, dv=0 and an unreachable threshold; ``v`` accumulates ``(a << 6) + bias``
    over all steps and is read once at the end (the logits).
  - ``input``: the encoded input (integers), graded.
- **Aligned schedule**: at every model step populations update in list order (topological), each seeing its inputs of
  the same step. Lava adds one step per synapse hop; the builder equalises paths and compares after alignment.

File format (`save` / `load`): one ``.npz`` holding every array plus a ``netlist.json`` entry (UTF-8 JSON string) that
describes populations, synapses (arrays referenced by key), edges, T, the input encoding and decode scales.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from sdt.atomic import atomic_path
from sdt.errors import UserError

from .kinds import KINDS

if TYPE_CHECKING:
    from .encoding import InputEncoding

FORMAT = "sdt-intnet"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Population:
    """A group of neurons (or relays) with shared du/dv/vth and per-neuron bias. ``shape`` is per sample (C,H,W)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    du: int = 4095
    dv: int = 2048
    vth: int = 0
    bias_mant: np.ndarray | None = None  # int, shape (n,) or None for 0
    bias_exp: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def bias(self) -> np.ndarray:
        """Effective per-neuron bias ``bias_mant * 2**bias_exp`` (int64)."""
        if self.bias_mant is None:
            return np.zeros(self.size, dtype=np.int64)
        b = self.bias_mant.astype(np.int64)
        return b << self.bias_exp if self.bias_exp >= 0 else b >> -self.bias_exp


@dataclass(frozen=True)
class Synapse:
    """Integer weights from ``src`` to ``dst`` over flattened (C,H,W) neurons.

    ``kind`` says how executors may run it fast: ``conv`` (``attrs``: stride, padding, groups; ``weight`` is the
    4-D kernel [Cout, Cin/g, kh, kw]), ``dense`` (``weight`` [n_dst, n_src]) or ``sparse`` (``weight`` a COO triple
    stored as ``rows``, ``cols``, ``vals`` with ``attrs['shape']``). All forms are exact integers.
    """

    name: str
    src: str
    dst: str
    kind: str
    weight: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]
    weight_exp: int = 0
    graded: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)
    # the graph node whose weights this synapse carries (a composed term: the '+'-joined nodes, e.g.
    # 'patch_embed.proj_conv3+patch_embed.x_feat_pool'); the file stores it in the name (see synapse_node)
    node: str | None = None


def synapse_name(node: str, dst: str, part: int | None = None) -> str:
    """The stored name of a synapse: ``<node>[@<part>]-><dst>`` (part: hi/lo term, sign half or channel group)."""
    return f"{node}{'' if part is None else f'@{part}'}->{dst}"


def synapse_node(name: str) -> str:
    """The graph node a stored synapse name encodes (the inverse of :func:`synapse_name`; files store no other field
    for it, so that format v1 files stay byte-identical)."""
    return name.split("->")[0].split("@")[0]


@dataclass(frozen=True)
class IntNet:
    """The whole integer network: populations in topological order, synapses, direct edges, encoding, decode."""

    populations: tuple[Population, ...]
    synapses: tuple[Synapse, ...]
    edges: tuple[tuple[str, str], ...]  # direct (0-delay) src -> dst connections
    T: int
    encoding: Mapping[str, Any]  # how float inputs become input integers (see deploy/quantize.py)
    decode: Mapping[str, Any]  # how the integrator's v becomes logits
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def population(self, name: str) -> Population:
        for p in self.populations:
            if p.name == name:
                return p
        raise KeyError(name)

    def synapses_into(self, name: str) -> list[Synapse]:
        return [s for s in self.synapses if s.dst == name]

    def edges_into(self, name: str) -> list[str]:
        return [a for a, b in self.edges if b == name]

    @property
    def input_encoding(self) -> "InputEncoding":
        """The typed view of :attr:`encoding` (``deploy.encoding.InputEncoding``)."""
        from .encoding import InputEncoding

        return InputEncoding.from_mapping(self.encoding)

    def decode_logits(self, v: np.ndarray) -> np.ndarray:
        """The integrator's final v ``[B, classes]`` -> float logits (the model's mean over T)."""
        return np.asarray(v, np.float64) / float(self.decode["scale"])

    def spike_populations(self) -> list[str]:
        """Populations that carry binary spikes and correspond to a graph node (compared by spike agreement)."""
        return [p.name for p in self.populations if p.kind in ("lif", "gate") and p.attrs.get("op") != "always_on"]

    def validate(self) -> None:
        """Check names, kinds, topological order and shapes; raise ValueError naming the first problem."""
        seen: set[str] = set()
        for p in self.populations:
            if p.kind not in KINDS:
                raise ValueError(f"population {p.name!r}: unknown kind {p.kind!r}")
            if p.name in seen:
                raise ValueError(f"duplicate population {p.name!r}")
            for s in self.synapses_into(p.name):
                if s.src not in seen:
                    raise ValueError(f"synapse {s.name!r}: source {s.src!r} is not before {p.name!r}")
            for src in self.edges_into(p.name):
                if src not in seen:
                    raise ValueError(f"edge {src!r}->{p.name!r}: source is not before its target")
            seen.add(p.name)
        for s in self.synapses:
            if s.dst not in seen:
                raise ValueError(f"synapse {s.name!r}: unknown target {s.dst!r}")


# ---------------------------------------------------------------------------------------------------- file format

def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def save(net: IntNet, path: str | os.PathLike) -> None:
    """Write ``net`` atomically as one ``.npz`` (arrays + ``netlist.json``); byte-identical for identical nets."""
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for i, p in enumerate(net.populations):
        d = dict(name=p.name, kind=p.kind, shape=list(p.shape), du=p.du, dv=p.dv, vth=p.vth, bias_exp=p.bias_exp,
                 attrs=_jsonable(p.attrs), bias_mant=None)
        if p.bias_mant is not None:
            d["bias_mant"] = key = f"pop{i}_bias"
            arrays[key] = np.asarray(p.bias_mant, dtype=np.int32)
        pops.append(d)
    syns = []
    for i, s in enumerate(net.synapses):
        d = dict(name=s.name, src=s.src, dst=s.dst, kind=s.kind, weight_exp=s.weight_exp, graded=s.graded,
                 attrs=_jsonable(s.attrs))
        if s.kind == "sparse":
            rows, cols, vals = s.weight
            for part, arr, dt in (("rows", rows, np.int32), ("cols", cols, np.int32), ("vals", vals, np.int32)):
                arrays[f"syn{i}_{part}"] = np.asarray(arr, dtype=dt)
            d["weight"] = f"syn{i}"
        else:
            arrays[f"syn{i}_w"] = np.asarray(s.weight, dtype=np.int32)
            d["weight"] = f"syn{i}_w"
        syns.append(d)
    doc = dict(format=FORMAT, version=FORMAT_VERSION, T=net.T, encoding=_jsonable(net.encoding),
               decode=_jsonable(net.decode), metadata=_jsonable(net.metadata), populations=pops, synapses=syns,
               edges=[list(e) for e in net.edges])
    # a zip written by hand with fixed timestamps, so the file is reproducible byte for byte
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        def put(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)

        put("netlist.json", json.dumps(doc, indent=1, sort_keys=True).encode())
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, arrays[key], allow_pickle=False)
            put(f"{key}.npy", buf.getvalue())


def load(path: str | os.PathLike) -> IntNet:
    """Read a file written by :func:`save` (no pickles); a wrong or corrupt file raises a one-line UserError."""
    try:
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("netlist.json"))
            if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
                raise UserError(f"{path}: not an {FORMAT} v{FORMAT_VERSION} file")
            arr = {n[:-4]: np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                   for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise UserError(f"cannot read integer network {path}: {e}; re-export it with sdt-export --to lava") from None
    pops = tuple(Population(name=d["name"], kind=d["kind"], shape=tuple(d["shape"]), du=d["du"], dv=d["dv"],
                            vth=d["vth"], bias_mant=None if d["bias_mant"] is None else arr[d["bias_mant"]],
                            bias_exp=d["bias_exp"], attrs=d["attrs"]) for d in doc["populations"])
    syns = []
    for d in doc["synapses"]:
        w = (arr[d["weight"] + "_rows"], arr[d["weight"] + "_cols"], arr[d["weight"] + "_vals"]) \
            if d["kind"] == "sparse" else arr[d["weight"]]
        syns.append(Synapse(name=d["name"], src=d["src"], dst=d["dst"], kind=d["kind"], weight=w,
                            weight_exp=d["weight_exp"], graded=d["graded"], attrs=d["attrs"],
                            node=synapse_node(d["name"])))
    net = IntNet(populations=pops, synapses=tuple(syns), edges=tuple(tuple(e) for e in doc["edges"]), T=doc["T"],
                 encoding=doc["encoding"], decode=doc["decode"], metadata=doc["metadata"])
    net.validate()
    return net
