"""Atomic file output: write to a temporary file in the target folder, fsync, then rename over the target.

A crash or an error mid-write leaves the previous file (if any) untouched and no partial file behind.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give under the current umask (0o666 / 0o777 minus it): for outputs built
    with ``mkstemp``/``mkdtemp``, which create them private (0600 / 0700) whatever the umask."""
    umask = os.umask(0)  # the only portable way to read the umask is to set it; put it straight back
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def temp_prefix(target: Path) -> str:
    """The name prefix of this process's temporaries for ``target``: ``.<name>.<pid>.`` (the pid lets a later run tell
    the leftovers of a killed run from the work of a live one)."""
    return f".{target.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove the temporaries (files or folders) that killed runs left next to ``target`` (``.<name>.<pid>.*`` of a
    process that no longer exists); those of live processes are left alone. Returns what was removed."""
    parent = target.parent if str(target.parent) else Path(".")
    removed = []
    try:
        candidates = list(parent.glob(f".{glob.escape(target.name)}.*"))
    except OSError:
        return removed
    for p in candidates:
        pid = p.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass  # another process cleaned it up, or it is not ours to remove
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error it is removed."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}; choose a writable output path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, default_mode())  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def refuse_inputs(out: str | os.PathLike, *inputs: str | os.PathLike | None, flag: str = "-o") -> None:
    """Refuse, before any work, an output path that names one of the command's inputs (it would be replaced)."""
    target = Path(out)
    for src in inputs:
        if src is not None and Path(src).exists() and target.exists() and target.resolve() == Path(src).resolve():
            raise UserError(f"output {target} is the input {src}; choose another {flag}")
