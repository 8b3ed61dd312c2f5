"""The integer network's input encoding, typed: how float model inputs become the input population's integers.

The file keeps the encoding as the JSON object the quantiser writes (``IntNet.encoding``; keys ``mode``, ``kind``,
``levels``, ``min``/``max``, ``mean``/``std``, ``rule`` ...). :class:`InputEncoding` reads it once; every tool
encodes and decodes through it (reference executor, Lava, agreement, energy).

- ``pixel_levels`` (static images, ``mode='repeat'``): ``x_int = clip(round(levels * (x * std + mean)), 0, levels)``
  (without normalisation ``mean``/``std`` are None and ``x`` is used as it is).
- ``event_counts`` (event frames, ``mode='frames'``): ``x_int = clip(round(x), 0, levels)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from sdt.errors import UserError

KINDS = ("pixel_levels", "event_counts")
MODES = ("repeat", "frames")
# spellings of the input mode that hand-written networks use (the quantiser writes 'mode': 'repeat' | 'frames')
_MODE_WORDS = {"repeat": "repeat", "static": "repeat", "direct": "repeat", "frames": "frames", "events": "frames",
               "event": "frames"}


@dataclass(frozen=True)
class InputEncoding:
    """A typed view of ``IntNet.encoding``. ``mode``: 'repeat' (the image at every step), 'frames' (one frame per
    step) or None (unspecified: both input layouts accepted). ``kind``: 'pixel_levels', 'event_counts' or None."""

    mode: str | None = None
    kind: str | None = None
    levels: int | None = None
    min: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_mapping(cls, enc: Mapping[str, Any] | None) -> "InputEncoding":
        """Read the stored dict (the only place that interprets its keys)."""
        enc = enc if hasattr(enc, "get") else {}
        mode = None
        for key in ("mode", "kind", "encoding", "input"):
            mode = _MODE_WORDS.get(enc.get(key)) if isinstance(enc.get(key), str) else None
            if mode:
                break
        kind = enc.get("kind") if enc.get("kind") in KINDS else None
        levels = enc.get("levels")
        mean, std = enc.get("mean"), enc.get("std")
        return cls(mode, kind, None if levels is None else int(levels), int(enc.get("min", 0)),
                   None if mean is None else tuple(float(v) for v in mean),
                   None if std is None else tuple(float(v) for v in std))

    def _require(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown input encoding {self.kind!r}")
        if self.levels is None:
            raise UserError("the input encoding has no 'levels'")

    def _unclipped(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        self._require()
        a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        a = a.astype(np.float64)
        if self.kind == "event_counts":
            return np.round(a)
        if self.mean is not None:
            a = a * np.asarray(self.std).reshape(-1, 1, 1) + np.asarray(self.mean).reshape(-1, 1, 1)
        return np.round(a * int(self.levels))  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Float model input (as the data pipeline gives it) -> the integer input of the network (int64)."""
        return np.clip(self._unclipped(x), self.min, int(self.levels)).astype(np.int64)  # type: ignore[arg-type]

    def out_of_range(self, x: torch.Tensor | np.ndarray) -> int:
        """How many input values :meth:`encode` clips (outside the integer input's range)."""
        raw = self._unclipped(x)
        return int(((raw < self.min) | (raw > int(self.levels))).sum())  # type: ignore[arg-type]

    def decode(self, x_int: np.ndarray) -> torch.Tensor:
        """The float model input that ``x_int`` represents (inverse of :meth:`encode` on its range)."""
        a = np.asarray(x_int, np.float64)
        if self.kind != "event_counts":
            a = a / float(self.levels)  # type: ignore[arg-type]
            if self.mean is not None:
                a = (a - np.asarray(self.mean).reshape(-1, 1, 1)) / np.asarray(self.std).reshape(-1, 1, 1)
        return torch.from_numpy(a).to(torch.float32)


def _encoding(net_or_encoding: Any) -> InputEncoding:
    if isinstance(net_or_encoding, InputEncoding):
        return net_or_encoding
    enc = getattr(net_or_encoding, "encoding", net_or_encoding)
    return InputEncoding.from_mapping(enc)


def encode_input(net_or_encoding: Any, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float model input -> the network's integer input (an IntNet, its encoding dict or an InputEncoding)."""
    return _encoding(net_or_encoding).encode(x)


def input_out_of_range(net_or_encoding: Any, x: torch.Tensor | np.ndarray) -> int:
    """How many input values :func:`encode_input` clips."""
    return _encoding(net_or_encoding).out_of_range(x)


def decode_input(net_or_encoding: Any, x_int: np.ndarray) -> torch.Tensor:
    """The float model input that ``x_int`` represents."""
    return _encoding(net_or_encoding).decode(x_int)


__all__ = ["InputEncoding", "encode_input", "decode_input", "input_out_of_range", "KINDS", "MODES"]
