"""Reader for the IDX format of MNIST / Fashion-MNIST (plain or gzip-compressed), with strict checks.

Layout (big-endian): ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` uint32 sizes, then the row-major payload.
Only numpy and gzip are used, so no loader ever reaches for the network.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX type codes -> big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Standard file stems; each may be stored as "<stem>.gz" or "<stem>" (raw).
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """An IDX file is malformed: bad magic, unknown type code, or a payload size that disagrees with the header."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    # Decide by content, not by extension: some mirrors store gzip data without ".gz" and vice versa.
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise IdxFormatError(f"{path}: corrupt or truncated gzip stream ({e})") from e
    return raw


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an uncompressed IDX buffer into a native-endian numpy array; ``source`` names it in errors."""
    if len(buf) < 4:
        raise IdxFormatError(f"{source}: {len(buf)} bytes, too short for an IDX header")
    if buf[0] != 0 or buf[1] != 0:
        raise IdxFormatError(f"{source}: bad IDX magic {buf[:4].hex()} (the first two bytes must be 0)")
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02x} (magic {buf[:4].hex()})")
    if ndim == 0:
        raise IdxFormatError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IdxFormatError(f"{source}: truncated header ({len(buf)} bytes, need {header} for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(buf) - header
    if actual != expected:
        raise IdxFormatError(f"{source}: header says shape {dims} of {dtype.str} = {expected} payload bytes, "
                             f"but the file holds {actual} (truncated or wrong file)")
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw) into a numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or ``folder/stem`` (the gzip copy wins), else None."""
    for name in (stem + ".gz", stem):
        p = folder / name
        if p.is_file():
            return p
    return None


def has_idx_split(folder: Path, split: str) -> bool:
    """True if ``folder`` holds both IDX files of ``split`` ('train' or 'test')."""
    return all(find_idx_file(folder, s) is not None for s in IDX_FILES[split])


def load_idx_split(folder: str | Path, split: str, num_classes: int = 10,
                   expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(images uint8 [N,H,W], labels int64 [N])`` of a split from the standard MNIST-style file names.

    Checks: images are 3-D uint8, labels 1-D uint8, equal counts, labels in ``[0, num_classes)`` and, if given,
    ``N == expected_count``.
    """
    folder = Path(folder)
    img_stem, lbl_stem = IDX_FILES[split]
    img_path, lbl_path = find_idx_file(folder, img_stem), find_idx_file(folder, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise FileNotFoundError(f"{folder}: missing IDX file(s) {', '.join(m + '[.gz]' for m in missing)}")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(f"{img_path}: expected a 3-D uint8 image array, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{lbl_path}: expected a 1-D uint8 label array, got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in split '{split}'")
    if expected_count is not None and images.shape[0] != expected_count:
        raise IdxFormatError(f"{folder}: split '{split}' has {images.shape[0]} samples, expected {expected_count}")
    if labels.size and int(labels.max()) >= num_classes:
        raise IdxFormatError(f"{lbl_path}: label {int(labels.max())} out of range for {num_classes} classes")
    return images, labels.astype(np.int64)
