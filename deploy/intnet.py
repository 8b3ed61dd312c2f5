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


# Lava 0.10 / Loihi 2 field widths a file must respect (checked on load; the quantiser never exceeds them)
FIELD_RANGES = {"du": (0, 4095), "dv": (0, 4095), "vth": (0, (1 << 17) - 1), "bias_exp": (0, 7),
                "weight_exp": (-8, 7)}
BIAS_MANT_RANGE = (-4096, 4095)  # 13-bit signed mantissa
WEIGHT_RANGE = (-256, 255)  # 8-bit magnitude with sign (mixed-sign matrices hold even values in [-256, 254])
SYNAPSE_KINDS = ("conv", "dense", "sparse")


class _Bad(Exception):
    """One field of a netlist that breaks the format; the message names it."""


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise _Bad(f"{where}: {what}")


def _int_in(v: Any, lo: int, hi: int, where: str) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, where, f"{v!r} is not an integer in "
          f"[{lo}, {hi}]")
    return int(v)


def _int_array(arr: Mapping[str, np.ndarray], key: Any, where: str, lo: int, hi: int) -> np.ndarray:
    _need(isinstance(key, str) and key in arr, where, f"array {key!r} is missing")
    a = arr[key]
    _need(np.issubdtype(a.dtype, np.integer), where, f"array {key!r} has dtype {a.dtype}, not an integer type")
    if a.size:
        _need(int(a.min()) >= lo and int(a.max()) <= hi, where, f"values {int(a.min())}..{int(a.max())} outside "
              f"[{lo}, {hi}]")
    return a


def _parse(doc: Any, arr: Mapping[str, np.ndarray]) -> IntNet:
    """The network a netlist describes, every field checked against the format and Lava's bit widths."""
    _need(isinstance(doc, dict), "netlist", "is not a JSON object")
    for key, kind in (("T", int), ("encoding", dict), ("decode", dict), ("metadata", dict), ("populations", list),
                      ("synapses", list), ("edges", list)):
        _need(isinstance(doc.get(key), kind), key, f"missing or not a {kind.__name__}")
    T = _int_in(doc["T"], 1, 1 << 20, "T")
    scale = doc["decode"].get("scale")
    _need(isinstance(scale, (int, float)) and not isinstance(scale, bool) and np.isfinite(scale) and scale > 0,
          "decode.scale", f"{scale!r} is not a positive finite number")
    _need(len(doc["populations"]) > 0, "populations", "empty")
    pops, sizes = [], {}
    for i, d in enumerate(doc["populations"]):
        where = f"population {i}"
        _need(isinstance(d, dict) and isinstance(d.get("name"), str), where, "needs a name")
        where = f"population {d['name']!r}"
        _need(d.get("kind") in KINDS, where, f"unknown kind {d.get('kind')!r} (one of {', '.join(KINDS)})")
        shape = d.get("shape")
        _need(isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape), where,
              f"shape {shape!r} is not a list of positive integers")
        vals = {k: _int_in(d.get(k), *FIELD_RANGES[k], f"{where}.{k}") for k in ("du", "dv", "vth", "bias_exp")}
        bias = None
        if d.get("bias_mant") is not None:
            bias = _int_array(arr, d["bias_mant"], f"{where}.bias_mant", *BIAS_MANT_RANGE)
            _need(bias.size == int(np.prod(shape)), f"{where}.bias_mant", f"{bias.size} values for {shape}")
        _need(isinstance(d.get("attrs", {}), dict), f"{where}.attrs", "not an object")
        pops.append(Population(d["name"], d["kind"], tuple(shape), bias_mant=bias, attrs=d.get("attrs", {}), **vals))
        sizes[d["name"]] = int(np.prod(shape))
    syns = []
    for i, d in enumerate(doc["synapses"]):
        where = f"synapse {i}"
        _need(isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("name", "src", "dst")), where,
              "needs name, src and dst")
        where = f"synapse {d['name']!r}"
        _need(d["src"] in sizes and d["dst"] in sizes, where, f"src {d['src']!r} or dst {d['dst']!r} is no population")
        _need(d.get("kind") in SYNAPSE_KINDS, where, f"unknown kind {d.get('kind')!r}")
        e = _int_in(d.get("weight_exp"), *FIELD_RANGES["weight_exp"], f"{where}.weight_exp")
        _need(isinstance(d.get("graded"), bool), f"{where}.graded", "not true/false")
        attrs = d.get("attrs", {})
        _need(isinstance(attrs, dict), f"{where}.attrs", "not an object")
        if d["kind"] == "sparse":
            base = d.get("weight")
            rows, cols = (_int_array(arr, f"{base}_{k}", f"{where}.{k}", 0, (1 << 31) - 1) for k in ("rows", "cols"))
            vals = _int_array(arr, f"{base}_vals", f"{where}.weight", *WEIGHT_RANGE)
            shp = attrs.get("shape")
            _need(isinstance(shp, list) and len(shp) == 2 and all(isinstance(v, int) and v > 0 for v in shp),
                  f"{where}.attrs.shape", f"{shp!r} is not [n_dst, n_src]")
            _need(rows.ndim == cols.ndim == vals.ndim == 1 and rows.size == cols.size == vals.size, where,
                  "rows, cols and values differ in length")
            _need(shp[1] == sizes[d["src"]], f"{where}.attrs.shape", f"{shp[1]} sources, population has "
                  f"{sizes[d['src']]}")
            _need(not rows.size or (int(rows.max()) < shp[0] and int(cols.max()) < shp[1]), where,
                  "an index lies outside attrs.shape")
            w: Any = (rows, cols, vals)
        else:
            w = _int_array(arr, d.get("weight"), f"{where}.weight", *WEIGHT_RANGE)
            if d["kind"] == "dense":
                _need(w.ndim == 2 and w.shape[1] == sizes[d["src"]], f"{where}.weight",
                      f"shape {w.shape} does not read {sizes[d['src']]} source neurons")
            else:
                _need(w.ndim == 4, f"{where}.weight", f"a conv kernel needs 4 dimensions, got shape {w.shape}")
        syns.append(Synapse(d["name"], d["src"], d["dst"], d["kind"], w, e, d["graded"], attrs,
                            node=synapse_node(d["name"])))
    edges = []
    for e in doc["edges"]:
        _need(isinstance(e, list) and len(e) == 2 and all(v in sizes for v in e), "edges", f"{e!r} is not a pair of "
              "populations")
        edges.append((e[0], e[1]))
    net = IntNet(tuple(pops), tuple(syns), tuple(edges), T, doc["encoding"], doc["decode"], doc["metadata"])
    try:
        net.validate()
    except ValueError as err:
        raise _Bad(str(err)) from None
    return net


def load(path: str | os.PathLike) -> IntNet:
    """Read a file written by :func:`save` (no pickles). Every field is checked against the format and Lava's bit
    widths (:data:`FIELD_RANGES`, 8-bit weights, 13-bit bias mantissas); a wrong, corrupt or tampered file raises a
    one-line UserError naming the field. The 24-bit overflow proof is ``deploy.semantics.overflow_proof``."""
    fix = "re-export it with sdt-export --to lava"
    try:
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("netlist.json"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
                raise UserError(f"{path}: not an {FORMAT} v{FORMAT_VERSION} file; {fix}")
            arr = {n[:-4]: np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                   for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read integer network {path}: {e}; {fix}") from None
    try:
        return _parse(doc, arr)
    except _Bad as e:
        raise UserError(f"integer network {path}: {e}; {fix}") from None
