"""Crash-safe checkpoint files: ``last``, ``model_best``, the top-k ``checkpoint-<epoch>`` and a mid-epoch ``recovery``.

Every file is written to a temporary name, fsynced and renamed (``sdt.atomic``), so a crash at any instant leaves the
previous complete file in place. ``last`` is written first; ``model_best`` and the top-k copies are hard links to it
(copies where links are unsupported) placed with the same rename trick. The saver's own bookkeeping travels inside
each checkpoint, so a resumed run keeps the top-k list of the run it continues.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..atomic import sweep_stale, temp_prefix
from ..checkpoint import read_checkpoint, save_checkpoint

LAST = "last.pth.tar"
BEST = "model_best.pth.tar"
RECOVERY = "recovery.pth.tar"
_TOPK = re.compile(r"^checkpoint-(\d+)\.pth\.tar$")


def duplicate(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a hard link to (or a copy of) ``src``."""
    sweep_stale(dst)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dst), suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class CheckpointSaver:
    """Keeps ``max_history`` best checkpoints by the eval metric (higher is better unless ``decreasing``)."""

    def __init__(self, out_dir: str | os.PathLike, max_history: int = 10, decreasing: bool = False) -> None:
        self.dir = Path(out_dir)
        self.max_history = max(0, int(max_history))
        self.decreasing = decreasing
        self.checkpoints: list[tuple[str, float, int]] = []  # (file name, metric, epoch), best first
        self.best_metric: float | None = None
        self.best_epoch: int | None = None

    # -------------------------------------------------------------------------------------------- bookkeeping
    def _better(self, a: float, b: float) -> bool:
        return a < b if self.decreasing else a > b

    def _sort(self, entries: list[tuple[str, float, int]]) -> list[tuple[str, float, int]]:
        return sorted(entries, key=lambda e: (e[1] if self.decreasing else -e[1], e[2]))

    def state_dict(self) -> dict[str, Any]:
        return {"checkpoints": [[f, float(m), int(e)] for f, m, e in self.checkpoints],
                "best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any], resumed_epoch: int | None = None) -> None:
        """Adopt a resumed run's list, re-linking what a crash between writes left undone; drop stale files."""
        last = self.dir / LAST
        entries = [(str(f), float(m), int(e)) for f, m, e in state.get("checkpoints", [])]
        kept = []
        for f, m, e in entries:
            path = self.dir / f
            if not path.exists() and e == resumed_epoch and last.exists():
                duplicate(last, path)  # the crash came after `last` was written but before this link
            if path.exists():
                kept.append((f, m, e))
        self.checkpoints = self._sort(kept)
        self.best_metric = state.get("best_metric")
        self.best_epoch = state.get("best_epoch")
        if self.best_epoch is not None and self.best_epoch == resumed_epoch and last.exists():
            duplicate(last, self.dir / BEST)
        names = {f for f, _, _ in self.checkpoints}
        for p in self.dir.glob("checkpoint-*.pth.tar"):
            if _TOPK.match(p.name) and p.name not in names:
                p.unlink()  # evicted by the run we continue, which died before deleting it
        for p in self.dir.glob(".*.pth.tar.*.tmp"):
            p.unlink()  # temporary files of a write that a kill interrupted

    # ------------------------------------------------------------------------------------------------- writes
    def save_epoch(self, model: nn.Module, epoch: int, metric: float, extra: Callable[[dict], dict]) -> bool:
        """Write ``last`` for a finished ``epoch`` and update best / top-k; returns whether it is the new best.

        ``extra(saver_state)`` returns the checkpoint entries besides the model (optimizer, RNG ...); it receives
        the saver state *after* this epoch, so the file describes itself.
        """
        name = f"checkpoint-{epoch}.pth.tar"
        entries = self._sort([e for e in self.checkpoints if e[2] != epoch] + [(name, float(metric), epoch)])
        keep, evict = entries[: self.max_history], entries[self.max_history:]
        is_best = self.best_metric is None or self._better(metric, self.best_metric)
        old = (self.checkpoints, self.best_metric, self.best_epoch)
        self.checkpoints = keep
        if is_best:
            self.best_metric, self.best_epoch = float(metric), epoch
        try:
            save_checkpoint(self.dir / LAST, model, **extra(self.state_dict()))
        except BaseException:
            self.checkpoints, self.best_metric, self.best_epoch = old
            raise
        last = self.dir / LAST
        if any(e[0] == name for e in keep):
            duplicate(last, self.dir / name)
        if is_best:
            duplicate(last, self.dir / BEST)
        for f, _, _ in evict:
            (self.dir / f).unlink(missing_ok=True)
        (self.dir / RECOVERY).unlink(missing_ok=True)  # older than `last` now
        return is_best

    def save_recovery(self, model: nn.Module, extra: dict[str, Any]) -> None:
        """Write the mid-epoch ``recovery`` file."""
        save_checkpoint(self.dir / RECOVERY, model, saver=self.state_dict(), **extra)


def load_resume(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from and its contents: ``path`` itself, or in a folder the most advanced of
    ``recovery`` / ``last`` (by next epoch, then next step)."""
    p = Path(path)
    if not p.is_dir():
        return p, read_checkpoint(p)
    best: tuple[tuple[int, int], Path, dict[str, Any]] | None = None
    for name in (LAST, RECOVERY):
        f = p / name
        if f.is_file():
            ck = read_checkpoint(f)
            pos = (int(ck.get("next_epoch", int(ck.get("epoch", -1)) + 1)), int(ck.get("next_step", 0)))
            if best is None or pos > best[0]:
                best = (pos, f, ck)
    if best is None:
        from ..errors import CheckpointError

        raise CheckpointError(f"--resume {p}: the folder holds no {LAST} or {RECOVERY}")
    return best[1], best[2]
