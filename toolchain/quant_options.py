"""The quantiser's options on the command line: one set of flags (``--weight-terms``, ``--bias-synapse``,
``--input-levels``) shared by ``sdt-export --to lava``, ``sdt-deploy`` and ``sdt-energy --integer``, so every command
builds the same :class:`deploy.quantize.QuantConfig` from the same words."""
from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from sdt.cli_types import positive_int

if TYPE_CHECKING:
    from deploy.quantize import QuantConfig

# QuantConfig's defaults; deploy.quantize is imported only when a network is quantised, so that a missing quantiser
# is a one-line error of the command that needs it (tests/test_quant_options.py checks the two agree)
DEFAULTS = {"weight_terms": 2, "bias_synapse": False, "input_levels": None}


def input_levels(s: str) -> int | None:
    """argparse type: ``auto`` (None: the grid of the training inputs) or a number of levels in 1..4095."""
    if s == "auto":
        return None
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {s!r}") from None
    if not 1 <= v <= 4095:
        raise argparse.ArgumentTypeError(f"input levels must be in 1..4095, got {v}")
    return v


def add_quant_args(parser: argparse.ArgumentParser) -> None:
    """Add the quantiser's flags to ``parser`` (read back with :func:`quant_config`)."""
    a = parser.add_argument
    a("--weight-terms", type=positive_int, default=DEFAULTS["weight_terms"],
      help="8-bit synapses per connection (2: a hi/lo pair, 16-bit effective weights; 1: a single 8-bit synapse)")
    a("--bias-synapse", action="store_true",
      help="carry biases beyond Lava's 13-bit mantissa as a current from an always-on population (exact bias)")
    a("--input-levels", type=input_levels, default=DEFAULTS["input_levels"], metavar="auto|L",
      help="input grid: pixels -> 0..L; auto = the grid of the training inputs (255 if none fits)")


def quant_options_set(args: argparse.Namespace) -> list[str]:
    """The quantiser flags given values other than their defaults (for commands where they do not apply)."""
    return [f"--{k.replace('_', '-')}" for k, v in DEFAULTS.items() if getattr(args, k) != v]


def quant_config(args: argparse.Namespace) -> "QuantConfig":
    """The :class:`~deploy.quantize.QuantConfig` that parsed flags (see :func:`add_quant_args`) describe."""
    from deploy.quantize import QuantConfig

    return QuantConfig(**{k: getattr(args, k) for k in DEFAULTS})
