"""argparse types shared by every command: a bad value is refused by the parser with one line naming the option."""
from __future__ import annotations

import argparse


def positive_int(s: str) -> int:
    """An integer >= 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonnegative_int(s: str) -> int:
    """An integer >= 0."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


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
