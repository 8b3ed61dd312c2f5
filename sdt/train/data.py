"""Datasets (``sdt.data``, local files only) with the official transforms, and reproducible loaders.

Training order is a pure function of ``(seed, epoch)``: a ``DistributedSampler`` (also with one process) reshuffles
per epoch and the loader's generator, which seeds the worker processes, is re-seeded at every epoch start. A run that
resumes at an epoch boundary, or fast-forwards a loader inside an epoch, therefore sees exactly the same batches.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..errors import UserError
from .distributed import DistInfo

PIL_DATASETS = ("cifar10", "cifar100", "imagenet")


@dataclass
class Loaders:
    """The training and validation loaders plus what the rest of the trainer needs to know about the data."""

    train: DataLoader | None
    val: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator
    name: str
    num_classes: int
    in_channels: int
    event: bool
    seed: int
    rank: int
    val_size: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the shuffling and the worker seeds for ``epoch``."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 100003 + epoch * 1009 + self.rank)


def canonical_dataset(name: str) -> str:
    from ..data import canonical_name

    try:
        return canonical_name(name)
    except ValueError as e:
        raise UserError(f"--dataset: {e}") from None


def data_size(args: argparse.Namespace, default: int) -> int:
    """Input side length of the data: ``input_size`` H if set, else ``img_size``, else the dataset default."""
    if args.input_size:
        return int(args.input_size[1])
    return int(args.img_size) if args.img_size else default


def train_transform(args: argparse.Namespace, name: str, size: int) -> Callable | None:
    """The official training augmentation: timm's pipeline for PIL datasets, flips for tensor datasets."""
    from ..data import dataset_info

    info = dataset_info(name)
    if name in PIL_DATASETS:
        from timm.data import create_transform

        return create_transform(
            input_size=size, is_training=True, no_aug=args.no_aug, scale=tuple(args.scale), ratio=tuple(args.ratio),
            hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
            interpolation=args.train_interpolation, mean=tuple(args.mean or info.mean), std=tuple(args.std or info.std),
            re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
    if info.kind == "event":
        if args.dvs_aug or args.dvs_trival_aug:
            raise UserError("--dvs-aug / --dvs-trival-aug are not implemented yet; leave them off (the official "
                            "configs do)")
        return None  # official: no augmentation of event frames
    if args.no_aug or (not args.hflip and not args.vflip):
        return None
    from torchvision import transforms

    tfl: list[Callable] = []
    if args.hflip:
        tfl.append(transforms.RandomHorizontalFlip(args.hflip))
    if args.vflip:
        tfl.append(transforms.RandomVerticalFlip(args.vflip))
    return transforms.Compose(tfl)


def build_dataset(args: argparse.Namespace, name: str, split: str, train: bool, size: int | None = None,
                  resize_size: int | None = None) -> Dataset:
    """One split of ``name`` with the train or eval pipeline; DatasetNotFoundError becomes a one-line UserError."""
    from ..data import DatasetNotFoundError, create_dataset, dataset_info
    from ..data.folders import eval_transform

    info = dataset_info(name)
    size = size or data_size(args, info.default_size)
    root = args.data_dir or None
    kw: dict = {}
    if name in PIL_DATASETS:
        if train:
            kw["transform"] = train_transform(args, name, size)
        else:
            crop_pct = args.crop_pct if args.crop_pct is not None else info.crop_pct
            kw["transform"] = eval_transform(size, tuple(args.mean or info.mean), tuple(args.std or info.std),
                                             crop_pct=crop_pct, resize_size=resize_size)
    elif train:
        kw["transform"] = train_transform(args, name, size)
    try:
        return create_dataset(name, root=root if info.needs_root or root else None, split=split, img_size=size,
                              T=args.time_steps if info.kind == "event" else None, **kw)
    except DatasetNotFoundError as e:
        raise UserError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise UserError(f"dataset {name}: {e}") from None


def _limit(ds: Dataset, n: int | None) -> Dataset:
    return Subset(ds, range(min(n, len(ds)))) if n else ds  # type: ignore[arg-type]


def val_loader(ds: Dataset, batch_size: int, workers: int, info: DistInfo, pin: bool = False) -> DataLoader:
    """Sequential loader over this rank's share (``rank::world``, no padding, so summed metrics are exact)."""
    if info.distributed:
        ds = Subset(ds, range(info.rank, len(ds), info.world_size))  # type: ignore[arg-type]
    # a private generator: creating the iterator would otherwise draw from (and shift) the global torch RNG
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin, drop_last=False,
                      generator=torch.Generator().manual_seed(0))


def build_loaders(args: argparse.Namespace, info: DistInfo, train: bool = True) -> Loaders:
    """Training (drop_last, per-epoch seeded shuffle) and validation loaders for ``args.dataset``."""
    from ..data import dataset_info

    name = canonical_dataset(args.dataset)
    meta = dataset_info(name)
    gen = torch.Generator()
    train_dl, sampler = None, None
    if train:
        train_ds = _limit(build_dataset(args, name, args.train_split, True), args.limit_train)
        sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=args.seed, drop_last=False)
        train_dl = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                              pin_memory=args.pin_mem, drop_last=True, generator=gen)
        if len(train_dl) == 0:
            raise UserError(f"the training set ({len(train_ds)} samples over {info.world_size} process(es)) is "
                            f"smaller than one batch of {args.batch_size}; lower --batch-size")
    val_ds = _limit(build_dataset(args, name, args.val_split, False), args.limit_val)
    val_dl = val_loader(val_ds, args.val_batch_size, args.workers, info, args.pin_mem)
    return Loaders(train=train_dl, val=val_dl, sampler=sampler, generator=gen, name=name,
                   num_classes=meta.num_classes, in_channels=meta.in_channels, event=meta.kind == "event",
                   seed=int(args.seed), rank=info.rank, val_size=len(val_ds))


def skip_batches(it: Iterator, n: int) -> Iterator:
    """Advance ``it`` by ``n`` batches (data is loaded and dropped, so random augmentations stay in step)."""
    for _ in range(n):
        next(it)
    return it
