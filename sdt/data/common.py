"""Pieces shared by the dataset loaders: the not-found error, dataset metadata and an in-memory image dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where they were looked for; the message says where and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, as the SDT configs and the loaders use them."""

    name: str
    kind: str                      # "image" (static, [C,H,W]) or "event" (frames, [T,C,H,W])
    in_channels: int
    num_classes: int
    native_size: tuple[int, int]   # (H, W) as stored
    default_size: int              # side the loader returns when img_size is None
    mean: tuple[float, ...]        # per channel, on the [0,1] scale (event data: zeros = not normalised)
    std: tuple[float, ...]
    normalize_default: bool        # whether create_dataset normalises unless told otherwise
    needs_root: bool               # False: the data ships inside an installed package
    default_T: int | None = None   # event datasets: frames per sample when T is None
    crop_pct: float = 1.0          # eval: resize to floor(size / crop_pct), then centre-crop to size
    splits: str = ""               # human-readable split sizes


def resize_chw(x: torch.Tensor, size: int | tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of a ``[..., C, H, W]`` float tensor (align_corners=False); no-op if already that size."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    lead = x.shape[:-3]
    y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=hw, mode="bilinear", align_corners=False,
                      antialias=antialias)
    return y.reshape(*lead, *y.shape[-3:])


class ArrayImageDataset(Dataset):
    """Grey or colour images held in memory as uint8 ``[N,H,W]`` / ``[N,C,H,W]`` plus int labels.

    ``__getitem__`` returns ``(x, label)`` with ``x`` a float ``[C,H,W]`` tensor: pixel / ``max_value`` (so in [0,1]),
    resized bilinearly to ``img_size`` (antialiased when shrinking), then ``(x - mean) / std`` if ``mean`` is given,
    then ``transform(x)`` if given.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, max_value: float = 255.0,
                 img_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, transform: Callable | None = None,
                 classes: Sequence[str] | None = None) -> None:
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {images.shape} / labels {np.shape(labels)} do not form [N,C,H,W] + [N]")
        self.images = np.ascontiguousarray(images)
        self.targets: list[int] = [int(v) for v in labels]
        self.max_value = float(max_value)
        self.img_size = img_size
        self.transform = transform
        self.classes = list(classes) if classes is not None else sorted(set(self.targets))
        c = self.images.shape[1]
        self._mean = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1) if mean is not None else None
        self._std = torch.tensor(std, dtype=torch.float32).view(c, 1, 1) if std is not None else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i].astype(np.float32)) / self.max_value
        if self.img_size is not None:
            x = resize_chw(x, self.img_size)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]
