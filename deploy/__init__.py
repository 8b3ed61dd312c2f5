"""deploy: the integer network and what runs it. ``intnet`` (the netlist and its file), ``semantics`` / ``encoding`` /
``kinds`` (what it means), ``quantize`` (graph -> integer network), ``fixed_point`` (Lava's arithmetic, bit-exact),
``executor`` and ``lava_net`` (two ways to run it), ``agreement`` (float <-> integer) and ``energy/`` (operation counts
and energy reports). See docs/architecture.md."""
