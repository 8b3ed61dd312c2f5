"""User-facing errors: one line that names the problem and the fix; CLIs print them without a traceback."""
from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from typing import Callable, Sequence


class UserError(Exception):
    """Bad input from the user (a file, a flag, a dataset); the message is shown as-is, on one line."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded (missing, corrupt, unsafe, or not matching the model)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for our CLIs: a bad flag raises UserError (one line, no usage dump) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary files, child processes) runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main`` so user errors print ``error: ...`` on one line and exit with status 2; Ctrl-C (SIGINT) and
    SIGTERM unwind the run (atomic writes remove their temporary files) and exit with 130 / 143 after one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return int(main(*args, **kwargs) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted (Ctrl-C); no partial output was left", file=sys.stderr)
            return 130
        except Terminated:
            print("error: terminated (SIGTERM); no partial output was left", file=sys.stderr)
            return 143
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def cpu_cli(run: Callable[..., int | None]) -> Callable[..., int]:
    """A CPU-heavy command's ``main(argv=None)``: glibc's allocator pinned (``sdt.malloc.pin_malloc``: batch after
    batch of the same large tensors stay out of the page-fault path), then ``run(argv)`` under :func:`cli_entry`."""

    @functools.wraps(run)
    def main(argv: Sequence[str] | None = None) -> int:
        from .malloc import pin_malloc

        pin_malloc()
        return cli_entry(run)(argv if argv is not None else sys.argv[1:])

    return main
