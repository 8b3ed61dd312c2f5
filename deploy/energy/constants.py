"""Energy constants as a data table (name, value, unit, source, note) and the byte widths of the integer network.

Every figure the reports print comes from :data:`CONSTANTS`; a tier names the constants it uses, so a report can list
them with their sources. All values are *estimates* for a 45 nm process (Horowitz, ISSCC 2014) or a published
chip measurement; none is a measurement of this toolchain's hardware.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

HOROWITZ = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm, 0.9 V"
SDT_PAPER = "Yao et al., Spike-Driven Transformer, NeurIPS 2023, supplementary 'Energy Consumption Analysis'"
DAVIES = "Davies et al., 'Loihi: a neuromorphic manycore processor with on-chip learning', IEEE Micro 38(1), 2018"
LEMAIRE = "Lemaire et al., 'An analytical estimation of spiking neural networks energy efficiency', ICONIP 2022"


@dataclass(frozen=True)
class Constant:
    """One energy constant. ``value`` is in ``unit``; ``source`` says where it comes from."""

    name: str
    value: float
    unit: str
    source: str
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "unit": self.unit, "source": self.source, "note": self.note}


_TABLE = [
    # the SDT paper's two constants (tier a)
    Constant("E_MAC_fp32", 4.6, "pJ/op", SDT_PAPER + "; = " + HOROWITZ + " FP32 add 0.9 + FP32 mult 3.7",
             "one 32-bit float multiply-accumulate"),
    Constant("E_AC_fp32", 0.9, "pJ/op", SDT_PAPER + "; = " + HOROWITZ + " FP32 add", "one 32-bit float add"),
    Constant("E_MULT_fp32", 3.7, "pJ/op", HOROWITZ, "FP32 multiply (LIF leak, scaling in the float model)"),
    # integer arithmetic (tier b)
    Constant("E_ADD_int8", 0.03, "pJ/op", HOROWITZ, "8-bit integer add; used as an upper bound for 1-bit gates"),
    Constant("E_ADD_int32", 0.1, "pJ/op", HOROWITZ, "32-bit integer add; the 24-bit accumulator/membrane add"),
    Constant("E_MULT_int8", 0.2, "pJ/op", HOROWITZ, "8-bit integer multiply (8-bit weight x 8-bit activation)"),
    Constant("E_MULT_int32", 3.1, "pJ/op", HOROWITZ, "32-bit integer multiply (a leak that is not a shift)"),
    # SRAM by buffer size, per 64-bit access (tier c; Lemaire-style interpolation)
    Constant("E_SRAM_8KB", 10.0, "pJ/64-bit access", HOROWITZ, "8 KB SRAM/cache read"),
    Constant("E_SRAM_32KB", 20.0, "pJ/64-bit access", HOROWITZ, "32 KB SRAM/cache read"),
    Constant("E_SRAM_1MB", 100.0, "pJ/64-bit access", HOROWITZ, "1 MB SRAM/cache read; larger buffers are clamped"),
    Constant("E_DRAM_64b", 1300.0, "pJ/64-bit access", HOROWITZ + " (1.3-2.6 nJ)",
             "listed only; the tiers assume every buffer is on chip"),
    # a neuromorphic chip profile (tier d)
    Constant("E_SYNOP_loihi1", 23.6, "pJ/synaptic event", DAVIES + ", Table 2 (as quoted in energy_and_peers.md B6)",
             "minimum energy per synaptic spike operation, 14 nm. [unverified: check the table before citing]"),
    Constant("E_NEURON_loihi1", 52.0, "pJ/neuron update", DAVIES + ", Table 2 (as quoted in energy_and_peers.md B6)",
             "energy per neuron (compartment) update, 14 nm. [unverified: check the table before citing]"),
]

CONSTANTS: Mapping[str, Constant] = MappingProxyType({c.name: c for c in _TABLE})


def constant(name: str) -> float:
    """The value of constant ``name`` (KeyError names the table)."""
    try:
        return CONSTANTS[name].value
    except KeyError:
        raise KeyError(f"unknown energy constant {name!r}; known: {', '.join(CONSTANTS)}") from None


@dataclass(frozen=True)
class ByteWidths:
    """Storage widths used for memory traffic. Defaults: the integer network (``deploy/intnet.py``,
    ``deploy/fixed_point.py``): 8-bit weights, 24-bit neuron state and graded values, and a 32-bit address event per
    spike (the word Lemaire's model and SpikingJelly's profiler use for spike I/O)."""

    weight: float = 1.0   # bytes per weight (Lava Dense: 8-bit mantissa)
    state: float = 3.0    # bytes per membrane / accumulator word (24-bit u, v)
    graded: float = 3.0   # bytes per real-valued (graded) activation: currents, membrane stream, input
    event: float = 4.0    # bytes per spike event (address-event message)
    fifo_events: int = 1000  # spike FIFO depth per layer (Lemaire's default), sets the spike buffer's SRAM size

    def as_dict(self) -> dict[str, float]:
        return {"weight_bytes": self.weight, "state_bytes": self.state, "graded_bytes": self.graded,
                "event_bytes": self.event, "fifo_events": self.fifo_events}


INTNET_WIDTHS = ByteWidths()
# (KB, pJ per 64-bit access): the SRAM rows of the table, starting from an empty buffer at 0 pJ
SRAM_POINTS_KB = ((0.0, 0.0), (8.0, CONSTANTS["E_SRAM_8KB"].value), (32.0, CONSTANTS["E_SRAM_32KB"].value),
                  (1024.0, CONSTANTS["E_SRAM_1MB"].value))


def sram_pj_per_byte(buffer_bytes: float, access_bits: int = 64) -> float:
    """SRAM energy per byte moved for a buffer of ``buffer_bytes``: Horowitz's 64-bit read energy interpolated
    piecewise-linearly over 0 / 8 KB / 32 KB / 1 MB (clamped above 1 MB), divided by the access width.

    ``access_bits=64`` reads Horowitz's figures per 64-bit word (8 bytes); ``32`` applies them per 32-bit word as
    SpikingJelly 2.0's Lemaire profiler does, which doubles every memory figure.
    """
    if access_bits not in (32, 64):
        raise ValueError(f"access_bits must be 32 or 64, got {access_bits}")
    kb = max(0.0, float(buffer_bytes)) / 1024.0
    pts = SRAM_POINTS_KB
    kb = min(kb, pts[-1][0])
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if kb <= x1:
            pj = y0 + (y1 - y0) * (kb - x0) / (x1 - x0)
            break
    return pj / (access_bits / 8)


__all__ = ["Constant", "CONSTANTS", "constant", "ByteWidths", "INTNET_WIDTHS", "sram_pj_per_byte", "SRAM_POINTS_KB",
           "HOROWITZ", "SDT_PAPER", "DAVIES", "LEMAIRE"]
