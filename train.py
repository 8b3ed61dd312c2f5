#!/usr/bin/env python
"""Train the Spike-Driven Transformer v1 with the official recipe (timm), on one process or under torchrun.

    python train.py                                  # built-in digits preset: trains on CPU in about a minute
    python train.py -c cifar10_2_256 --data-dir ./data
    torchrun --nproc_per_node=8 train.py -c conf/imagenet/8_512_300E_t4.yml --data-dir /data/imagenet1k
    python train.py --resume output/train/<run>       # continue a run exactly (newest of last / recovery)

See docs/training.md. The pieces live in sdt/train/.
"""
from __future__ import annotations

import sys

from sdt.train.runner import main

if __name__ == "__main__":
    sys.exit(main())
