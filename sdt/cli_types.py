"""argparse types shared by every command: a bad value is refused by the parser with one line naming the option."""
from __future__ import annotations

import argparse


def _int_at_least(minimum: int, what: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


positive_int = _int_at_least(1, "a positive integer")
positive_int.__doc__ = "An integer >= 1."
nonnegative_int = _int_at_least(0, "an integer >= 0")
nonnegative_int.__doc__ = "An integer >= 0."


def boolean(text: str | bool) -> bool:
    """true/false, yes/no, on/off, 1/0 (anything else is an error, never silently false)."""
    if isinstance(text, bool):
        return text
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


__all__ = ["positive_int", "nonnegative_int", "boolean"]
