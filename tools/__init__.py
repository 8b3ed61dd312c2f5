"""Command-line tools and scripts of the SDT toolchain (the demo pipeline and helpers)."""
