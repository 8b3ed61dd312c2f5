"""Per-epoch records: ``summary.csv`` (the official columns, rewritten atomically) and optional TensorBoard scalars."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from ..atomic import write_text


class Summary:
    """``summary.csv`` with one row per epoch: ``epoch, train_loss, eval_loss, eval_top1, eval_top5, lr``.

    Each update rewrites the file atomically and drops rows of epochs at or after the one written, so a resumed
    run leaves no duplicate rows from the epochs it repeats.
    """

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.path = Path(out_dir) / "summary.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # type: ignore[assignment]  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=purge_step)

    def _rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def update(self, epoch: int, train: dict[str, float], evaluation: dict[str, float], lr: float) -> None:
        row: dict[str, Any] = {"epoch": epoch}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"eval_{k}": v for k, v in evaluation.items()})
        row["lr"] = lr
        rows = [r for r in self._rows() if r.get("epoch", "").isdigit() and int(r["epoch"]) < epoch] + [row]
        fields = list(row)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(self.path, buf.getvalue())
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k.replace("_", "/", 1), float(v), epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
