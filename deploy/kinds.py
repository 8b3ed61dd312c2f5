"""Population kinds of the integer network and what they emit (no imports: the Lava host process reads it too)."""

KINDS = ("input", "lif", "gate", "maxpool", "relay", "integrator")
BINARY_KINDS = frozenset({"lif", "gate", "integrator"})  # output 0/1 spikes
GRADED_KINDS = frozenset({"input", "maxpool", "relay"})  # output integers
