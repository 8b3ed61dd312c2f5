"""Static image datasets from local folders: CIFAR-10/100 (torchvision's on-disk layout) and ImageNet (class folders).

Nothing here downloads. Every loader checks the expected files first and raises DatasetNotFoundError naming the path
and the layout. Images come out as float ``[3,H,W]`` tensors through the SDT's eval pipeline (timm 0.6 style:
bicubic resize of the short side to ``floor(size / crop_pct)``, centre crop, ToTensor, Normalize); pass
``transform=`` (e.g. timm's training transform, which takes PIL images) to replace it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity

from .common import DatasetNotFoundError

CIFAR_CLASSES = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _without_md5(base: type[CIFAR10]) -> type[CIFAR10]:
    # torchvision's check_integrity(path, md5=None) only tests that the file exists. Subclassing with the md5s set
    # to None keeps torchvision's own loading code while letting re-packed or tiny test copies load.
    return type(base.__name__ + "NoMD5", (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


_CIFAR_NO_MD5 = {k: _without_md5(v) for k, v in CIFAR_CLASSES.items()}


def eval_transform(img_size: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                   crop_pct: float = 1.0, resize_size: int | None = None) -> Callable:
    """PIL -> float ``[C,img_size,img_size]``: bicubic Resize(short side), CenterCrop, ToTensor, Normalize.

    The short side goes to ``resize_size`` or else ``floor(img_size / crop_pct)`` (timm 0.6's eval rule: ImageNet
    224 with crop_pct 0.95 -> 235). For the "288 from 320" protocol pass ``img_size=288, resize_size=320``.
    """
    scale = resize_size if resize_size is not None else int(math.floor(img_size / crop_pct))
    tfl: list[Callable] = [transforms.Resize(scale, interpolation=transforms.InterpolationMode.BICUBIC),
                           transforms.CenterCrop(img_size), transforms.ToTensor()]
    if mean is not None:
        tfl.append(transforms.Normalize(mean, std))
    return transforms.Compose(tfl)


def cifar_dataset(name: str, root: str | Path, split: str = "train", transform: Callable | None = None,
                  verify_md5: bool = True) -> CIFAR10:
    """torchvision CIFAR-10/100 from ``root/cifar-10-batches-py`` / ``root/cifar-100-python`` (download=False).

    ``root`` may also be that batches folder itself. With ``verify_md5`` the files must match torchvision's checksums.
    """
    base = CIFAR_CLASSES[name]
    root = Path(root)
    if root.name == base.base_folder:
        root = root.parent
    folder = root / base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    layout = f"{folder}/{{{', '.join(files)}}} (torchvision's extracted {base.filename})"
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{name.upper()} not found: {folder} does not exist. Expected {layout}; "
                                   f"pass --data-dir pointing at the folder that contains {base.base_folder}/.")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{name.upper()} incomplete: {folder} lacks {', '.join(missing)}. "
                                   f"Expected {layout}.")
    if verify_md5:
        md5s = dict((f, m) for f, m in base.train_list + base.test_list)
        md5s[base.meta["filename"]] = base.meta["md5"]
        bad = [f for f, m in md5s.items() if not check_integrity(str(folder / f), m)]
        if bad:
            raise DatasetNotFoundError(f"{name.upper()} corrupted: md5 mismatch for {', '.join(bad)} in {folder} "
                                       f"(re-extract {base.filename}, or pass verify_md5=False for a custom copy).")
    cls = base if verify_md5 else _CIFAR_NO_MD5[name]
    return cls(str(root), train=(split == "train"), transform=transform, download=False)


def _has_images(d: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in d.iterdir())


def imagenet_dataset(root: str | Path, split: str = "train", transform: Callable | None = None) -> ImageFolder:
    """torchvision ImageFolder over ``root/train`` or ``root/val`` (``split`` 'test'/'val'/'validation' -> val)."""
    root = Path(root)
    sub = "train" if split == "train" else "val"
    folder = root / sub
    layout = f"{root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG (one sub-folder per class, e.g. n01440764)"
    if not folder.is_dir():
        raise DatasetNotFoundError(f"ImageNet split '{sub}' not found: {folder} does not exist. Expected {layout}.")
    class_dirs = [d for d in folder.iterdir() if d.is_dir()]
    if not class_dirs:
        hint = (" It holds loose images: sort the validation images into class folders first."
                if _has_images(folder) else "")
        raise DatasetNotFoundError(f"ImageNet split '{sub}': {folder} has no class folders.{hint} Expected {layout}.")
    return ImageFolder(str(folder), transform=transform)
