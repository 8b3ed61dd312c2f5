"""Firing rates of every named tensor of an SDT, per time step, averaged correctly over a whole data set.

What the official ``firing_num.py`` meant to compute, with its bugs fixed (spec section 8.1):

* averages are over all samples (each batch weighted by its size), not ``sum of batch means / (n - 1)``;
* any number of time steps (the official dicts stop at t3, so T > 4 raised KeyError);
* DVS inputs ``[B, T, C, H, W]`` and TET outputs ``[T, B, classes]`` work like static ones.

For each hooked tensor ``x`` of shape ``[T, B, ...]`` and step ``t``:
``firing_rate[t] = sum(x[t]) / numel(x[t])`` and ``non_zero[t] = count_nonzero(x[t]) / numel(x[t])``, both
accumulated over the data set. For spike tensors (values in {0, 1}) the two agree; membrane-stream tensors
(``*_out``, ``MS_SPS_x_feat``, ``head_mean``) are reported apart under ``other``, with their mean and non-zero fraction.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch


class FiringRates:
    """Running per-step sums of hooked tensors; feed :meth:`update` with each batch's hook dict."""

    def __init__(self) -> None:
        self.sum: dict[str, torch.Tensor] = {}
        self.nonzero: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}        # elements per step seen so far
        self.binary: dict[str, bool] = {}
        self.shape: dict[str, list[int]] = {}  # per-sample shape (without T and B)
        self.samples = 0

    def update(self, hook: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: every tensor is ``[T, B, ...]`` (as ``sdt.observe`` returns them)."""
        batch = None
        for name, x in hook.items():
            steps = x.shape[0]
            flat = x.detach().reshape(steps, -1).double()
            if name not in self.sum:
                self.sum[name] = torch.zeros(steps, dtype=torch.float64)
                self.nonzero[name] = torch.zeros(steps, dtype=torch.float64)
                self.count[name] = 0
                self.binary[name] = True
                self.shape[name] = list(x.shape[2:])
            elif self.sum[name].numel() != steps:
                raise ValueError(f"{name}: {steps} time steps, earlier batches had {self.sum[name].numel()}")
            self.sum[name] += flat.sum(1).cpu()
            self.nonzero[name] += (flat != 0).sum(1).double().cpu()
            self.count[name] += flat.shape[1]
            if self.binary[name]:
                self.binary[name] = bool(((flat == 0) | (flat == 1)).all())
            batch = x.shape[1]
        if batch is not None:
            self.samples += int(batch)

    def result(self) -> dict[str, Any]:
        """``{'samples', 'T', 'firing', 'other', 'by_time'}``; ``by_time`` is the official layout (t0, t1, ...)."""
        firing: dict[str, Any] = {}
        other: dict[str, Any] = {}
        steps = max((v.numel() for v in self.sum.values()), default=0)
        by_time: dict[str, dict[str, dict[str, float]]] = {f"t{t}": {"firing_rate": {}, "non_zero": {}}
                                                            for t in range(steps)}
        for name in self.sum:
            n = max(self.count[name], 1)
            rate = (self.sum[name] / n).tolist()
            nz = (self.nonzero[name] / n).tolist()
            entry = {"shape": self.shape[name], "mean": sum(rate) / len(rate), "non_zero_mean": sum(nz) / len(nz),
                     "per_step": rate, "non_zero_per_step": nz}
            if self.binary[name]:
                firing[name] = {"shape": entry["shape"], "firing_rate": entry["mean"],
                                "non_zero": entry["non_zero_mean"], "firing_rate_per_step": rate,
                                "non_zero_per_step": nz}
                for t in range(len(rate)):
                    by_time[f"t{t}"]["firing_rate"][name] = rate[t]
                    by_time[f"t{t}"]["non_zero"][name] = nz[t]
            else:
                other[name] = entry
        return {"samples": self.samples, "T": steps, "firing": firing, "other": other, "by_time": by_time}


__all__ = ["FiringRates"]
