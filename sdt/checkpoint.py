"""Loading official SDT checkpoints (timm ``CheckpointSaver`` files) and our own, safely and strictly.

Files are read with ``torch.load(weights_only=True)``: only tensors, plain containers and the globals in
``SAFE_GLOBALS`` (what official checkpoints contain: an ``argparse.Namespace`` of training args, and numpy scalars)
are accepted; any other pickled object is refused before it can run.
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .atomic import atomic_path
from .errors import CheckpointError
from .model import MODEL_ARGS, SpikeDrivenTransformer

SAFE_GLOBALS: list[Any] = [argparse.Namespace, np.dtype, np.core.multiarray.scalar,
                           type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]

# where the weights live, first match wins: timm's CheckpointSaver and ours, then DeiT-style ``"model"``
WEIGHT_KEYS = ("state_dict", "model")
EMA_WEIGHT_KEYS = ("state_dict_ema", "model_ema")


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# what file_kind can tell a file apart as, and how an error names it
FILE_KINDS = {"empty": "an empty file", "nir": "a NIR file (HDF5)", "intnet": "an integer network (.intnet.npz)",
              "onnx": "an ONNX model", "text": "a text file"}


def file_kind(path: str | os.PathLike) -> str | None:
    """A key of :data:`FILE_KINDS` for a file recognised by its first bytes (an integer network: a zip holding
    ``netlist.json``), or None: possibly a checkpoint (a torch zip or legacy pickle), or unreadable / damaged."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return "empty"
    if head.startswith(_HDF5_MAGIC):
        return "nir"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                return "intnet" if "netlist.json" in zf.namelist() else None
        except (zipfile.BadZipFile, OSError):
            return None  # a damaged zip: reported as corrupt by the loader
    if head[:1] == b"\x08" and head[2:3] == b"\x12":  # protobuf ModelProto: ir_version (1), producer_name (2)
        return "onnx"
    if head[:1] == b"\x80":  # a legacy (non-zip) pickle: torch.load decides
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict without executing any pickled code outside the allowlist.

    Three different failures, three different messages: a file that is no checkpoint at all (says what it looks like),
    a corrupt or truncated checkpoint, and a pickle refused because it holds objects outside the allowlist."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}; pass the path of a .pth/.pth.tar file")
    kind = file_kind(p)
    if kind is not None:
        raise CheckpointError(f"{p} is not a checkpoint: it is {FILE_KINDS[kind]}; pass the .pth/.pth.tar file the model was "
                              "trained or exported from")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        unsafe = next((ln.strip() for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), None)
        if unsafe is None:  # the unpickler failed on damaged bytes, not on a refused object
            msg = lines[0] if lines else type(e).__name__
            raise CheckpointError(f"cannot read checkpoint {p}: file is corrupt or truncated ({msg[:160]})") from None
        raise CheckpointError(f"refused to load {p}: it contains pickled objects outside the allowlist "
                              f"({unsafe[:160]}); only load checkpoints from sources you trust") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: file is corrupt or truncated ({msg[:160]})") from None
    if isinstance(obj, Mapping) and not any(k in obj for k in WEIGHT_KEYS + EMA_WEIGHT_KEYS):
        obj = {"state_dict": dict(obj)}  # a bare state_dict
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p} does not hold a checkpoint dict (found {type(obj).__name__})")
    return dict(obj)


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Refuse weights with NaN or Inf, naming the first such tensor (every export would carry them silently)."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: tensor {key!r} holds {bad} non-finite value(s) (NaN/Inf); the run "
                                  "diverged or the file is damaged: use an earlier checkpoint of the run")


def recorded_args(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The training arguments a checkpoint records (``args``: ours a dict, timm's an ``argparse.Namespace``)."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def config_from_checkpoint(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The model config stored in a checkpoint: ours (``model_config``) or inferred from the official ``args``."""
    if isinstance(ckpt.get("model_config"), Mapping):
        return dict(ckpt["model_config"])
    args = ckpt.get("args")
    if args is None:
        raise CheckpointError("checkpoint holds no model config and no training args; pass the config explicitly "
                              "(e.g. load_checkpoint(path, config='cifar10_2_512'))")
    from .config import model_kwargs  # official train.py argument names -> create_model kwargs

    cfg = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return model_kwargs(cfg)


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Strip DDP's leading ``module.`` as timm's ``clean_state_dict`` does."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the first key that is missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in state:
            raise CheckpointError(f"{source}: missing key {k!r} (shape {tuple(v.shape)}); "
                                  "the checkpoint is for a different model config")
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(state[k].shape)}, model expects "
                                  f"{tuple(v.shape)}; the checkpoint is for a different model config")
    for k in state:
        if k not in expected:
            raise CheckpointError(f"{source}: unexpected key {k!r}; the checkpoint is for a different model config")


def _weights(ckpt: Mapping[str, Any], use_ema: bool, path: str | os.PathLike) -> Mapping[str, Any]:
    """The state dict to load: every layout :func:`read_checkpoint` accepts, so what it reads also loads."""
    keys = EMA_WEIGHT_KEYS if use_ema else WEIGHT_KEYS
    key = next((k for k in keys if k in ckpt), None)
    if key is None:
        raise CheckpointError(f"{path}: no {' or '.join(map(repr, keys))} in the checkpoint "
                              f"(keys: {', '.join(sorted(ckpt))[:120]})")
    if not isinstance(ckpt[key], Mapping):
        raise CheckpointError(f"{path}: {key!r} holds {type(ckpt[key]).__name__}, not a state dict of weights")
    return ckpt[key]


def load_checkpoint(path: str | os.PathLike, config: str | Mapping[str, Any] | None = None, use_ema: bool = False,
                    **overrides: Any) -> SpikeDrivenTransformer:
    """Build the model a checkpoint describes and load its weights strictly; returns it in eval mode.

    ``config`` (a named config, a YAML path or a kwargs dict) overrides what the file says; ``overrides`` are
    extra ``create_model`` kwargs (e.g. ``neuron_backend='cupy'``). Weights come from ``state_dict`` (else ``model``,
    timm/DeiT style); ``use_ema`` picks ``state_dict_ema`` (else ``model_ema``).
    """
    return model_from_checkpoint(read_checkpoint(path), path, config, use_ema, **overrides)


def model_from_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike, config: str | Mapping[str, Any] | None = None,
                          use_ema: bool = False, **overrides: Any) -> SpikeDrivenTransformer:
    """:func:`load_checkpoint` on a checkpoint already read by :func:`read_checkpoint` (``path`` names it in errors)."""
    if config is None:
        kwargs = config_from_checkpoint(ckpt)
    elif isinstance(config, Mapping):
        kwargs = dict(config)
    else:
        from .config import load_config, model_kwargs

        kwargs = model_kwargs(load_config(config))
    kwargs.update(overrides)
    state = clean_state_dict(_weights(ckpt, use_ema, path))
    try:
        model = SpikeDrivenTransformer(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config in checkpoint: {e}") from None
    check_state_dict(model, state, source=str(path))
    check_finite(state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_checkpoint(path: str | os.PathLike, model: SpikeDrivenTransformer, **extra: Any) -> None:
    """Atomically save ``model`` with its full config (``model_config``) plus any ``extra`` entries."""
    unwrapped = getattr(model, "module", model)
    payload = {"arch": "sdt", "version": 2, "model_config": dict(unwrapped.model_config),
               "state_dict": unwrapped.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


__all__ = ["SAFE_GLOBALS", "read_checkpoint", "config_from_checkpoint", "clean_state_dict", "check_state_dict",
           "load_checkpoint", "model_from_checkpoint", "recorded_args", "save_checkpoint", "check_finite", "file_kind", "FILE_KINDS",
           "MODEL_ARGS"]
