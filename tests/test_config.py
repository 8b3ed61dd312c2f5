"""Tests of sdt.config: the 13 packaged configs against the spec's effective values (§6), the loader on
official-format YAML, inert-key reporting and the create_model kwargs (§7). No model is built here."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from sdt.config import (
    OFFICIAL_FILES,
    ConfigError,
    inert_keys,
    list_configs,
    load_config,
    model_kwargs,
    official_defaults,
)

# name -> (T, dim, depths, pooling_stat, classes, in_channels, img_size, dvs_mode, TET), from spec §6.
MODEL = {
    "cifar10_dvs_t10_tet": (10, 256, 2, "0011", 10, 2, 64, True, True),
    "cifar10_2_256": (4, 256, 2, "0011", 10, 3, 32, False, False),
    "cifar10_2_512": (4, 512, 2, "0011", 10, 3, 32, False, False),
    "cifar10_2_512_tet": (4, 512, 2, "0011", 10, 3, 32, False, True),
    "cifar100_2_256": (4, 256, 2, "0011", 100, 3, 32, False, False),
    "cifar100_2_512": (4, 512, 2, "0011", 100, 3, 32, False, False),
    "gesture_t10": (10, 256, 2, "0111", 11, 2, 128, False, False),
    "gesture_t16": (16, 256, 2, "0111", 11, 2, 128, False, False),
    "imagenet_10_512": (4, 512, 10, "1111", 1000, 3, 224, False, False),
    "imagenet_6_512": (4, 512, 6, "1111", 1000, 3, 224, False, False),
    "imagenet_8_384": (4, 384, 8, "1111", 1000, 3, 224, False, False),
    "imagenet_8_512": (4, 512, 8, "1111", 1000, 3, 224, False, False),
    "imagenet_8_768": (4, 768, 8, "1111", 1000, 3, 224, False, False),
}

# name -> effective training values (spec §6): epochs, cooldown, warmup, batch, opt, lr, warmup_lr, min_lr,
# weight_decay, amp, (mixup, cutmix, mixup_prob, mixup_off_epoch), TET_lamb.
_C = ("adamw", 3e-4, 1e-6, 1e-5, 6e-2, False, (0.5, 0.0, 1.0, 200), 0.0)
TRAIN = {
    "cifar10_dvs_t10_tet": (200, 10, 10, 32, "adamw", 7.5e-3, 1e-3, 3e-4, 1e-4, True, (0.0, 0.0, 1.0, 0), 1e-3),
    "cifar10_2_256": (300, 10, 20, 64, *_C),
    "cifar10_2_512": (300, 10, 20, 64, *_C),
    "cifar10_2_512_tet": (300, 10, 20, 64, *_C[:-1], 1e-3),
    "cifar100_2_256": (300, 10, 20, 64, *_C),
    "cifar100_2_512": (300, 10, 20, 64, *_C),
    "gesture_t10": (200, 10, 10, 16, "lamb", 2e-3, 1e-5, 1e-5, 1e-4, True, (0.0, 0.0, 1.0, 0), 0.0),
    "gesture_t16": (200, 10, 10, 16, "lamb", 3e-4, 1e-6, 1e-5, 6e-2, True, (0.0, 0.0, 1.0, 0), 0.0),
    "imagenet_10_512": (300, 10, 20, 36, "lamb", 1e-3, 1e-5, 2e-5, 0.01, True, (0.2, 1.0, 0.75, 0), 0.0),
    "imagenet_6_512": (300, 10, 20, 48, "lamb", 1e-3, 1e-5, 2e-5, 0.01, True, (0.2, 1.0, 0.6, 0), 0.0),
    "imagenet_8_384": (300, 10, 20, 48, "lamb", 1.5e-3, 1e-5, 1.5e-5, 0.01, True, (0.2, 1.0, 0.6, 0), 0.0),
    "imagenet_8_512": (300, 10, 20, 48, "lamb", 1.5e-3, 1e-5, 1.5e-5, 0.01, True, (0.2, 1.0, 0.6, 0), 0.0),
    "imagenet_8_768": (300, 10, 20, 36, "lamb", 1e-3, 1e-5, 2e-5, 0.01, True, (0.2, 1.0, 1.0, 0), 0.0),
}


def _effective(cfg: dict) -> dict:
    """What train.py's namespace holds: its defaults overridden by the YAML."""
    return {**official_defaults(), **cfg}


def test_thirteen_named_configs() -> None:
    assert list_configs() == sorted(MODEL)
    assert sorted(OFFICIAL_FILES.values()) == sorted(MODEL)


@pytest.mark.parametrize("name", sorted(MODEL))
def test_model_kwargs_match_spec(name: str) -> None:
    t, dim, depths, pooling, classes, cin, img, dvs, tet = MODEL[name]
    assert model_kwargs(load_config(name)) == {
        "T": t,
        "embed_dims": dim,
        "depths": depths,
        "mlp_ratios": 4,
        "num_heads": 8,
        "num_classes": classes,
        "in_channels": cin,
        "img_size_h": img,
        "img_size_w": img,
        "pooling_stat": pooling,
        "spike_mode": "lif",
        "dvs_mode": dvs,
        "TET": tet,
    }


@pytest.mark.parametrize("name", sorted(TRAIN))
def test_training_values_match_spec(name: str) -> None:
    epochs, cooldown, warmup, batch, opt, lr, warmup_lr, min_lr, wd, amp, mix, tet_lamb = TRAIN[name]
    args = _effective(load_config(name))
    assert (args["epochs"], args["cooldown_epochs"], args["warmup_epochs"]) == (epochs, cooldown, warmup)
    assert (args["batch_size"], args["opt"], args["sched"], args["seed"]) == (batch, opt, "cosine", 42)
    for key, want in (("lr", lr), ("warmup_lr", warmup_lr), ("min_lr", min_lr), ("weight_decay", wd)):
        assert isinstance(args[key], float), key  # '3e-4' strings must come back as floats
        assert args[key] == pytest.approx(want), key
    assert args["amp"] is amp
    assert (args["mixup"], args["cutmix"], args["mixup_prob"], args["mixup_off_epoch"]) == pytest.approx(mix)
    assert args["TET_lamb"] == pytest.approx(tet_lamb)
    assert args["smoothing"] == pytest.approx(0.1)
    # The hyphenated spellings in the files never switch these on.
    assert args["model_ema"] is False and args["bce_loss"] is False


def test_imagenet_augmentation_values() -> None:
    aa = {n: load_config(n)["aa"] for n in MODEL if n.startswith("imagenet")}
    assert aa == {
        "imagenet_10_512": "rand-m7-mstd0.5-inc1",
        "imagenet_6_512": "rand-m7-mstd0.5-inc1",
        "imagenet_8_384": "rand-m5-mstd0.5-inc1",
        "imagenet_8_512": "rand-m5-mstd0.5-inc1",
        "imagenet_8_768": "rand-m7-mstd0.5-inc1",
    }
    scale0 = {n: load_config(n)["scale"][0] for n in aa}
    assert scale0 == {"imagenet_10_512": 0.2, "imagenet_6_512": 0.08, "imagenet_8_384": 0.2,
                      "imagenet_8_512": 0.2, "imagenet_8_768": 0.08}


@pytest.mark.parametrize("name", sorted(MODEL))
def test_header_lists_the_inert_keys(name: str) -> None:
    # Each packaged file documents its inert keys in a '# Inert:' line; keep that line honest.
    files = {p.stem: p for group in (resources.files("sdt") / "configs").iterdir() if group.is_dir()
             for p in group.iterdir()}
    header = [line for line in files[name].read_text().splitlines() if line.startswith("# Inert:")]
    assert len(header) == 1
    listed = [k.strip() for k in header[0].removeprefix("# Inert:").split(",")]
    assert listed == inert_keys(load_config(name))


def test_inert_keys_of_official_files() -> None:
    assert inert_keys(load_config("imagenet_8_768")) == [
        "aug_repeats", "bce-loss", "bce-target-thresh", "channels-last", "drop_path", "mlp-ratio",
        "model-ema", "model-ema-decay", "use_conv_as_linear",
    ]
    assert "mlp-ratio" in inert_keys(load_config("gesture_t10"))
    assert inert_keys(load_config("cifar100_2_256")) == ["model-ema", "model-ema-decay"]


@pytest.mark.parametrize(
    "alias",
    ["conf/imagenet/10_384_300E_t4.yml", "imagenet/10_384_300E_t4", "/elsewhere/conf/imagenet/10_384_300E_t4.yml"],
)
def test_mislabelled_10_384_alias(alias: str) -> None:
    cfg = load_config(alias)
    assert cfg == load_config("imagenet_10_512")
    kwargs = model_kwargs(cfg)
    assert (kwargs["depths"], kwargs["embed_dims"]) == (10, 512)


def test_existing_file_wins_over_alias(tmp_path: Path) -> None:
    # A user's own copy of an official file is read as it is, not replaced by the packaged config.
    path = tmp_path / "conf" / "imagenet" / "10_384_300E_t4.yml"
    path.parent.mkdir(parents=True)
    path.write_text("dim: 384\nlayer: 10\n")
    assert load_config(path) == {"dim": 384, "layer": 10}


def test_every_official_file_name_resolves() -> None:
    for official, ours in OFFICIAL_FILES.items():
        assert load_config(f"conf/{official}.yml") == load_config(ours)


OFFICIAL_FORMAT = """\
# Dataset / Model parameters
data_dir: ./data/
dataset: torch/cifar100
pretrained: False
num_classes: 100
num_heads: 8
img_size: 32
mean:
    - 0.5071
    - 0.4867
    - 0.4408
scale:
    - 1.0
    - 1.0
ratio: [1.0, 1.0]
use_conv_as_linear: true
pooling_stat: "0011"
time_steps: 4
layer: 2
dim: 512
mlp-ratio: 8
aug_repeats: 3
drop_path: 0.2
bce-loss: true
model-ema: False
model-ema-decay: 0.9998
amp: False
channels-last: False
batch_size: 64
lr: 3e-4
min_lr: 1e-5
weight_decay: 6e-2
epochs: 300
opt: adamw
"""


def test_official_format_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "2_512_300E_t4.yml"
    path.write_text(OFFICIAL_FORMAT)
    cfg = load_config(path)
    # Every key comes back, spelled and ordered as in the file.
    assert list(cfg) == [line.split(":")[0] for line in OFFICIAL_FORMAT.splitlines()
                         if line and not line.startswith((" ", "#"))]
    # PyYAML reads 3e-4 as a string; the loader converts it as argparse's type=float would.
    assert cfg["lr"] == pytest.approx(3e-4) and isinstance(cfg["lr"], float)
    assert cfg["min_lr"] == pytest.approx(1e-5) and cfg["weight_decay"] == pytest.approx(0.06)
    # Everything else is untouched, inert keys included.
    assert cfg["mlp-ratio"] == 8 and cfg["bce-loss"] is True and cfg["aug_repeats"] == 3
    assert cfg["mean"] == [0.5071, 0.4867, 0.4408] and cfg["pooling_stat"] == "0011"

    assert inert_keys(cfg) == [
        "use_conv_as_linear", "mlp-ratio", "aug_repeats", "drop_path", "bce-loss", "model-ema", "model-ema-decay",
        "channels-last",
    ]
    kwargs = model_kwargs(cfg)
    # mlp-ratio: 8 is inert, so the train.py default 4 is what the model gets.
    assert kwargs["mlp_ratios"] == 4
    assert (kwargs["embed_dims"], kwargs["depths"], kwargs["num_classes"], kwargs["in_channels"]) == (512, 2, 100, 3)


def test_model_kwargs_accepts_raw_yaml_strings() -> None:
    # A dict that did not go through load_config: string numbers of int options are converted too.
    kwargs = model_kwargs({"dim": 256, "layer": "4", "time_steps": "2"})
    assert (kwargs["depths"], kwargs["T"]) == (4, 2)


def test_absent_keys_take_official_defaults() -> None:
    assert model_kwargs({"dim": 64}) == {
        "T": 4, "embed_dims": 64, "depths": 4, "mlp_ratios": 4, "num_heads": 8, "num_classes": 1000,
        "in_channels": 3, "img_size_h": 128, "img_size_w": 128, "pooling_stat": "1111", "spike_mode": "lif",
        "dvs_mode": False, "TET": False,
    }


@pytest.mark.parametrize(
    ("dataset", "dvs"),
    [("cifar10-dvs", True), ("cifar10-dvs-tet", True), ("gesture", False), ("torch/cifar10", False),
     ("imagenet", False)],
)
def test_dvs_mode_follows_dataset(dataset: str, dvs: bool) -> None:
    # A dvs_mode key in the YAML is overwritten by train.py, so it is inert and has no say.
    cfg = {"dim": 256, "dataset": dataset, "dvs_mode": not dvs}
    assert model_kwargs(cfg)["dvs_mode"] is dvs
    assert inert_keys(cfg) == ["dvs_mode"]


def test_unused_options_reported_only_when_set() -> None:
    assert inert_keys({"drop": 0.0, "drop_block": None, "patch_size": None}) == []
    assert inert_keys({"drop": 0.1, "patch_size": 16}) == ["drop", "patch_size"]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"layer": [6, 8, 6]}, "'layer'"),
        ({"layer": 0}, "'layer'"),
        ({"layer": 2.0}, "'layer'"),
        ({"pooling_stat": "001"}, "'pooling_stat'"),
        ({"pooling_stat": "0021"}, "'pooling_stat'"),
        ({"pooling_stat": 9}, "'pooling_stat'"),  # unquoted 0011 in YAML 1.1 is the octal number 9
        ({"spike_mode": "alif"}, "'spike_mode'"),
        ({"TET": "False"}, "'TET'"),
        ({"num_heads": 3}, "'num_heads'"),
        ({"time_steps": 0}, "'time_steps'"),
        ({"dim": 100}, "'dim'"),
        ({"img_size": 30}, "'img_size'"),
        ({"num_classes": True}, "'num_classes'"),
        ({"mlp_ratio": "four"}, "'mlp_ratio'"),
    ],
)
def test_bad_values_give_one_line_error(change: dict, key: str) -> None:
    cfg = {**load_config("cifar10_2_256"), **change}
    with pytest.raises(ValueError) as info:
        model_kwargs(cfg)
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_missing_dim_is_an_error() -> None:
    cfg = load_config("cifar10_2_256")
    del cfg["dim"]
    with pytest.raises(ConfigError, match="'dim'"):
        model_kwargs(cfg)


def test_unquoted_pooling_stat_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("dim: 256\npooling_stat: 0011\n")
    with pytest.raises(ConfigError, match="quote it"):
        model_kwargs(load_config(path))


def test_unreadable_number_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("dim: 256\nlr: fast\n")
    with pytest.raises(ConfigError, match="'lr'"):
        load_config(path)


def test_non_mapping_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_unknown_name() -> None:
    with pytest.raises(FileNotFoundError, match="cifar10_2_512"):
        load_config("cifar10_9_999")
    # A bare official basename is ambiguous (cifar10 and cifar100 share 2_256_300E_t4), so it is not an alias.
    with pytest.raises(FileNotFoundError):
        load_config("2_256_300E_t4.yml")


def test_configs_are_declared_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "configs/**/*.yml" in pyproject["tool"]["setuptools"]["package-data"]["sdt"]
