"""The quantiser's options (:class:`QuantConfig`), its error, and the Lava / Loihi limits it quantises against."""
from __future__ import annotations

from dataclasses import dataclass, replace

from sdt.errors import UserError

from .semantics import GRADED_LIMIT

VTH_MAX = (1 << 17) - 1  # Lava vth is uint17
A_LIMIT = 1 << 17  # |a| < 2**17 keeps u = a << 6 strictly inside (-2**23, 2**23]: never wraps
BIAS_MANT = (-4096, 4095)  # int13
BIAS_EXP_MAX = 7  # 3-bit
INPUT_LEVELS = 255  # 8-bit input
BIAS_SOURCE = "bias"  # the always-on population (a gate that fires every step) that carries coarse biases
LEVEL_CANDIDATES = (255, 256, 510, 512, 1020, 1024)
RELAY_KINDS = ("maxpool", "relay")  # graded populations that pass their summed input on (no state, no bias)


class QuantizationError(UserError):
    """A layer that cannot be quantised without risking a 24-bit overflow (or another Lava limit)."""


@dataclass(frozen=True)
class QuantConfig:
    """Knobs of the quantiser (the defaults are what ``sdt-export --to lava`` uses)."""

    weight_exp_range: tuple[int, int] = (-8, 7)  # Loihi's weight exponent range; negative ones floor the sum
    # synapses per connection, each with 8-bit weights: the 2nd carries the rounding residual of the 1st (16-bit
    # effective weights for 2x the synaptic memory). 2 by default: trained SDTs flip spikes at ~1e-4 relative weight
    # error (docs/integer.md), far below what one 8-bit synapse reaches
    weight_terms: int = 2
    # one synapse (own exponent) per output-channel group of equal magnitude; None: only when weight_terms == 1
    per_channel: bool | None = None
    # mixed-sign weights as an excitatory + an inhibitory synapse (8-bit magnitudes, Lava keeps odd values in
    # one-signed matrices); None: only when weight_terms == 1
    split_sign: bool | None = None
    # biases beyond the 13-bit mantissa: the coarse part as a current from an always-on source population, the
    # remainder in the mantissa (exact to one v unit; costs a synapse per population and its synaptic events
    # every step). Off by default: it sharpens spike agreement, not top-1, on trained models (docs/integer.md)
    bias_synapse: bool = False

    def resolved(self) -> "QuantConfig":
        one = self.weight_terms == 1
        return replace(self, per_channel=one if self.per_channel is None else self.per_channel,
                       split_sign=one if self.split_sign is None else self.split_sign)
    # pixels in [0,1] -> 0..levels (DVS counts are clipped to 0..levels); None: the smallest of LEVEL_CANDIDATES on
    # whose grid the calibration inputs lie exactly (255 for uint8 images, 256 for the 2x-upsampled 17-level digits)
    input_levels: int | None = None


__all__ = ["QuantConfig", "QuantizationError", "VTH_MAX", "A_LIMIT", "GRADED_LIMIT", "BIAS_MANT", "BIAS_EXP_MAX",
           "INPUT_LEVELS", "BIAS_SOURCE", "LEVEL_CANDIDATES", "RELAY_KINDS"]
