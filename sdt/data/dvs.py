"""Event-camera datasets (DVS128 Gesture, CIFAR10-DVS) as fixed-count event frames, via SpikingJelly 2.0.

Pipelines of the official SDT code (spec section 7), on local files only:

* ``gesture``: ``DVS128Gesture(root, train=..., data_type="frame", frames_number=T, split_by="number")``; samples are
  ``[T,2,128,128]`` float event counts, not normalised; 1176 train / 288 test, 11 classes.
* ``cifar10-dvs``: ``CIFAR10DVS(root, data_type="frame", frames_number=T, split_by="number")`` with every frame
  resized to 64x64 (bilinear on the counts, no antialiasing: the default of torchvision < 0.17 on tensors, which the
  official ``Resize(64)`` ran on), then the deterministic split: the first ``ceil(0.9 * n_c)`` samples of each class in
  dataset order go to train, the rest to test (9000 / 1000). Dataset order is torchvision DatasetFolder order, i.e.
  file names sorted as strings (``..._0``, ``..._1``, ``..._10``, ``..._100`` ...), exactly as the official code saw it.

Class indices are DatasetFolder's: folder names sorted as strings. For Gesture that puts folder ``10`` at index 2;
SpikingJelly does the same, so checkpoints trained through it stay compatible.

SpikingJelly downloads whenever ``root/events_np`` is missing; to make that impossible this module first checks for
one of the accepted layouts (below) and raises DatasetNotFoundError otherwise:

1. ``root/events_np/...``: SpikingJelly's raw events (``train/<label>/*.npz`` + ``test/...`` for Gesture,
   ``<class>/*.npz`` for CIFAR10-DVS); missing frames are integrated into ``root/frames_number_<T>_split_by_number``.
2. ``root/frames_number_<T>_split_by_number/...``: already integrated frames; read directly (same order and loader).
3. ``root/download/``: the original archives (checked against SpikingJelly's md5s), extracted and converted offline.
"""
from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from .common import DatasetNotFoundError, resize_chw

GESTURE_NUM_CLASSES = 11
CIFAR10DVS_NUM_CLASSES = 10
CIFAR10DVS_TRAIN_RATIO = 0.9
CIFAR10DVS_SIZE = 64
CIFAR10DVS_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NPZ_EXTENSIONS = (".npy", ".npz")   # what SpikingJelly's folders accept

_SJ_MODULES: dict[str, types.ModuleType] = {}


def _sj_dataset_modules() -> dict[str, types.ModuleType]:
    """SpikingJelly's ``cifar10_dvs``, ``dvs128_gesture`` and ``utils`` dataset modules.

    SpikingJelly 2.0's ``datasets/__init__`` imports every dataset, and ``speechcommands`` needs torchaudio, which
    this stack does not install (the PyPI wheels do not load next to a CPU torch). If that import fails on torchaudio
    alone, the three modules we need are loaded under a temporary package object that skips that ``__init__``.
    """
    if _SJ_MODULES:
        return _SJ_MODULES
    names = ("cifar10_dvs", "dvs128_gesture", "utils")
    pkg = "spikingjelly.datasets"
    try:
        mods = {n: importlib.import_module(f"{pkg}.{n}") for n in names}
    except ModuleNotFoundError as e:
        if e.name != "torchaudio":
            raise
        import spikingjelly

        stub = types.ModuleType(pkg)
        stub.__path__ = [str(Path(spikingjelly.__file__).parent / "datasets")]
        stub.__package__ = pkg
        sys.modules[pkg] = stub
        try:
            mods = {n: importlib.import_module(f"{pkg}.{n}") for n in names}
        finally:
            # Leave no half-built package behind: later ``import spikingjelly.datasets`` behaves as before.
            if sys.modules.get(pkg) is stub:
                del sys.modules[pkg]
            if getattr(spikingjelly, "datasets", None) is stub:
                delattr(spikingjelly, "datasets")
    _SJ_MODULES.update(mods)
    return _SJ_MODULES


class EventFramesToTensor:
    """``np.ndarray [T,C,H,W]`` event counts -> float tensor, each frame resized (bilinear, no antialias) if asked."""

    def __init__(self, size: int | None = None, T: int | None = None) -> None:
        self.size, self.T = size, T

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames), dtype=torch.float32)
        if x.ndim != 4:
            raise ValueError(f"expected event frames [T,C,H,W], got shape {tuple(x.shape)}")
        if self.T is not None and x.shape[0] != self.T:
            raise ValueError(f"expected {self.T} frames, got {x.shape[0]}")
        if self.size is not None:
            x = resize_chw(x, self.size, antialias=False)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, T={self.T})"


def class_ordered_split(targets: Sequence[int], train_ratio: float, num_classes: int
                        ) -> tuple[list[int], list[int]]:
    """Deterministic per-class split: the first ``ceil(n_c * train_ratio)`` indices of each class (in dataset order)
    are train, the rest test; both lists are grouped by class, as SpikingJelly's ``split_to_train_test_set`` with
    ``random_split=False`` returns them. Labels come from ``targets`` so no sample is loaded."""
    per_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(targets):
        per_class[int(y)].append(i)
    train, test = [], []
    for idx in per_class:
        pos = math.ceil(len(idx) * train_ratio)
        train += idx[:pos]
        test += idx[pos:]
    return train, test


def _frames_dir(root: Path, T: int) -> Path:
    return root / f"frames_number_{T}_split_by_number"


def _class_dirs_ok(folder: Path, names: Sequence[str]) -> bool:
    return folder.is_dir() and all((folder / n).is_dir() for n in names)


def _frames_folder(folder: Path, transform: Callable | None):
    """Pre-integrated frames read exactly as SpikingJelly would (DatasetFolder + ``load_npz_frames``)."""
    from torchvision.datasets import DatasetFolder

    loader = _sj_dataset_modules()["utils"].load_npz_frames
    return DatasetFolder(str(folder), loader=loader, extensions=NPZ_EXTENSIONS, transform=transform)


def _check_T(T: int | None) -> int:
    if T is None or int(T) != T or T < 1:
        raise ValueError(f"event datasets need a positive integer T (frames per sample), got {T!r}")
    return int(T)


def _missing_root(label: str, root: Path | None, layouts: str) -> DatasetNotFoundError:
    where = "no --data-dir was given" if root is None else f"{root} does not exist"
    return DatasetNotFoundError(f"{label} not found: {where}. No DVS data ships in any package and nothing is "
                                f"downloaded; point --data-dir at a folder with one of: {layouts}")


def gesture_dataset(root: str | Path | None, split: str = "train", T: int | None = None,
                    img_size: int | None = None, transform: Callable | None = None):
    """DVS128 Gesture frames ``[T,2,S,S]`` (``S`` = ``img_size`` or 128), labels 0..10, split 'train'/'test'."""
    T = _check_T(T)
    sub = "train" if split == "train" else "test"
    tf = transform or EventFramesToTensor(img_size, T)
    labels = [str(i) for i in range(GESTURE_NUM_CLASSES)]
    frames = _frames_dir(Path(root), T) if root is not None else None
    layouts = (f"events_np/{{train,test}}/<0..10>/*.npz (SpikingJelly raw events), "
               f"frames_number_{T}_split_by_number/{{train,test}}/<0..10>/*.npz (integrated frames), or "
               f"download/{{DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt, README.txt}} (IBM's archive)")
    if root is None or not Path(root).is_dir():
        raise _missing_root("DVS128 Gesture", None if root is None else Path(root), layouts)
    root = Path(root)
    sj = _sj_dataset_modules()["dvs128_gesture"]
    if all(_class_dirs_ok(root / "events_np" / s, labels) for s in ("train", "test")):
        pass
    elif _class_dirs_ok(frames / sub, labels):
        return _frames_folder(frames / sub, tf)
    else:
        names = [n for n, _, _ in sj.DVS128Gesture.resource_url_md5()]
        missing = [n for n in names if not (root / "download" / n).is_file()]
        if missing:
            raise DatasetNotFoundError(f"DVS128 Gesture not found in {root}: expected {layouts}. "
                                       f"Missing from {root / 'download'}: {', '.join(missing)}.")
        # Gesture is not downloadable in SpikingJelly: a bad md5 raises there instead of fetching.
    return sj.DVS128Gesture(str(root), train=(sub == "train"), data_type="frame", frames_number=T,
                            split_by="number", transform=tf)


def cifar10_dvs_full(root: str | Path | None, T: int | None = None, img_size: int | None = CIFAR10DVS_SIZE,
                     transform: Callable | None = None):
    """All 10000 CIFAR10-DVS samples as frames ``[T,2,img_size,img_size]`` (official: 64), in dataset order."""
    T = _check_T(T)
    tf = transform or EventFramesToTensor(img_size, T)
    layouts = (f"events_np/<class>/*.npz (SpikingJelly raw events), frames_number_{T}_split_by_number/<class>/*.npz "
               f"(integrated frames), or download/<class>.zip for the 10 classes "
               f"({', '.join(CIFAR10DVS_CLASS_NAMES)})")
    if root is None or not Path(root).is_dir():
        raise _missing_root("CIFAR10-DVS", None if root is None else Path(root), layouts)
    root = Path(root)
    sj = _sj_dataset_modules()["cifar10_dvs"]
    if _class_dirs_ok(root / "events_np", CIFAR10DVS_CLASS_NAMES):
        pass
    elif _class_dirs_ok(_frames_dir(root, T), CIFAR10DVS_CLASS_NAMES):
        return _frames_folder(_frames_dir(root, T), tf)
    else:
        from torchvision.datasets.utils import check_integrity

        res = sj.CIFAR10DVS.resource_url_md5()
        missing = [n for n, _, _ in res if not (root / "download" / n).is_file()]
        if missing:
            raise DatasetNotFoundError(f"CIFAR10-DVS not found in {root}: expected {layouts}. "
                                       f"Missing from {root / 'download'}: {', '.join(missing)}.")
        # CIFAR10-DVS *is* downloadable in SpikingJelly, which re-fetches any archive whose md5 is wrong: check first.
        bad = [n for n, _, md5 in res if not check_integrity(str(root / "download" / n), md5)]
        if bad:
            raise DatasetNotFoundError(f"CIFAR10-DVS archives corrupted (md5 mismatch): {', '.join(bad)} in "
                                       f"{root / 'download'}; replace them (nothing is downloaded).")
    return sj.CIFAR10DVS(str(root), data_type="frame", frames_number=T, split_by="number", transform=tf)


def cifar10_dvs_dataset(root: str | Path | None, split: str = "train", T: int | None = None,
                        img_size: int | None = CIFAR10DVS_SIZE, transform: Callable | None = None,
                        train_ratio: float = CIFAR10DVS_TRAIN_RATIO) -> Subset:
    """One side of the official deterministic CIFAR10-DVS split (see :func:`class_ordered_split`)."""
    full = cifar10_dvs_full(root, T, img_size, transform)
    train_idx, test_idx = class_ordered_split(full.targets, train_ratio, CIFAR10DVS_NUM_CLASSES)
    return Subset(full, train_idx if split == "train" else test_idx)
