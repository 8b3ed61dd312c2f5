"""Host-side plumbing of the Lava runner: the pipe protocol to the host subprocess, and process / shared-memory
hygiene (child processes, /dev/shm entries, reaping). No Lava and no torch imports: the host process reads it too.

The engine that builds and runs Lava processes from an integer network is ``deploy/lava_net.py``.
"""
from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time
from typing import Any, Callable, Iterable

__all__ = ["send_msg", "recv_msg", "child_pids", "helper_pids", "alive_pids", "shm_entries", "lava_leaks", "reap"]


# ---------------------------------------------------------------------------------------- processes and leaks

def helper_pids() -> set[int]:
    """multiprocessing's resource tracker: one long-lived helper per Python process, started the first time shared
    memory is used. It must live on (it unlinks leaked segments), so it is neither reaped nor counted as a leak."""
    from multiprocessing import resource_tracker

    pid = getattr(resource_tracker._resource_tracker, "_pid", None)  # noqa: SLF001
    return {pid} if pid else set()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return fields[0], int(fields[1])


def child_pids(pid: int | None = None) -> set[int]:
    """Live (non-zombie) direct children of ``pid`` (default: this process, without its resource tracker)."""
    me = os.getpid() if pid is None else pid
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] == me and st[0] != "Z":
                out.add(int(entry))
    return out - helper_pids() if me == os.getpid() else out


def alive_pids(pids: Iterable[int]) -> set[int]:
    return {p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}


def shm_entries() -> set[str]:
    """Names in /dev/shm (Lava's shared-memory channels live there while a runtime is up)."""
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def lava_leaks(before_children: set[int], before_shm: set[str]) -> dict[str, list]:
    """What is alive now that was not before: child pids and /dev/shm entries (empty lists = clean)."""
    return {"children": sorted(child_pids() - before_children), "shm": sorted(shm_entries() - before_shm)}


def reap(pids: set[int], timeout: float = 10.0) -> list[int]:
    """Wait for ``pids`` (processes this code started) to end; SIGTERM, then SIGKILL, those that do not.

    Returns the pids that had to be signalled."""
    deadline = time.monotonic() + timeout
    alive = alive_pids(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = alive_pids(alive)
    killed = sorted(alive)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 2.0
        while alive and time.monotonic() < end:
            time.sleep(0.02)
            alive = alive_pids(alive)
        if not alive:
            break
    for pid in pids:  # collect our own zombies (no-op for processes that are not our children)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return killed


# ------------------------------------------------------------------------------------------------ pipe protocol

def send_msg(fd: int, obj: Any) -> None:
    """One length-prefixed pickle to our own host subprocess (both ends are this code; never untrusted data)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    buf = struct.pack(">Q", len(data)) + data
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int, timeout: float | None, alive: Callable[[], bool] | None = None) -> bytes:
    """Read n bytes; EOFError when the writer is gone (or ``alive()`` says so), TimeoutError after ``timeout``."""
    chunks, got = [], 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while got < n:
        if deadline is not None or alive is not None:
            while True:  # wait in short slices, so that a dead host is noticed even if its pipe never closes
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no answer from the Lava host within {timeout} s")
                if select.select([fd], [], [], 0.5 if left is None else min(left, 0.5))[0]:
                    break
                if alive is not None and not alive():
                    raise EOFError("the Lava host died")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the Lava host closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_msg(fd: int, timeout: float | None = None, alive: Callable[[], bool] | None = None) -> Any:
    (n,) = struct.unpack(">Q", _read_exact(fd, 8, timeout, alive))
    return pickle.loads(_read_exact(fd, n, timeout, alive))
