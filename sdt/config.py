"""Training configs of SDT v1, read the way the official ``train.py`` reads them.

The official script loads a YAML file with ``parser.set_defaults(**cfg)`` and then parses the command line. Three
consequences shape this module:

* a YAML key that is not an argparse dest (every hyphenated key such as ``model-ema`` or ``mlp-ratio``, and keys such as
  ``aug_repeats``) is stored on the namespace but never read: it is *inert*;
* a string value of a typed option is converted with the option's ``type`` (PyYAML reads ``3e-4`` as the string
  ``'3e-4'``; argparse turns it into a float), other values are used as they are;
* ``dim`` has no option at all and is read straight from the YAML.

The 13 official settings ship as package data under ``sdt/configs/<dataset>/<name>.yml`` (declared in
``pyproject.toml`` as ``configs/**/*.yml``), written with the official keys and values, inert keys included.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from .model import VARIANTS

__all__ = [
    "ConfigError",
    "OFFICIAL_FILES",
    "DVS_MODE_DATASETS",
    "list_configs",
    "load_config",
    "inert_keys",
    "model_kwargs",
    "official_defaults",
]


class ConfigError(ValueError):
    """A config value the official code could not use; the message is one line and names the key."""


# Argparse kinds of the official train.py options.
_FLAG = "flag"  # store_true: no type, a YAML value is used unconverted
_STR, _INT, _FLOAT, _BOOL = "str", "int", "float", "bool"
_INTS, _FLOATS = "ints", "floats"  # nargs options whose elements carry the type

# dest -> (kind, default) for every option of the official train.py (its main parser; ``config`` belongs to a
# separate pre-parser and is not a dest of the main one).
_ARGS: dict[str, tuple[str, Any]] = {
    # dataset / model
    "data_dir": (_STR, ""),
    "dataset": (_STR, "torch/cifar10"),
    "train_split": (_STR, "train"),
    "val_split": (_STR, "validation"),
    "train_split_path": (_STR, None),
    "model": (_STR, "sdt"),
    "pooling_stat": (_STR, "1111"),
    "TET": (_BOOL, False),
    "TET_means": (_FLOAT, 1.0),
    "TET_lamb": (_FLOAT, 0.0),
    "spike_mode": (_STR, "lif"),
    "layer": (_INT, 4),
    "in_channels": (_INT, 3),
    "pretrained": (_FLAG, False),
    "initial_checkpoint": (_STR, ""),
    "resume": (_STR, ""),
    "no_resume_opt": (_FLAG, False),
    "num_classes": (_INT, 1000),
    "time_steps": (_INT, 4),
    "num_heads": (_INT, 8),
    "patch_size": (_INT, None),
    "mlp_ratio": (_INT, 4),
    "gp": (_STR, None),
    "img_size": (_INT, None),
    "input_size": (_INTS, None),
    "crop_pct": (_FLOAT, None),
    "mean": (_FLOATS, None),
    "std": (_FLOATS, None),
    "interpolation": (_STR, ""),
    "batch_size": (_INT, 32),
    "val_batch_size": (_INT, 16),
    # optimizer
    "opt": (_STR, "sgd"),
    "opt_eps": (_FLOAT, None),
    "opt_betas": (_FLOATS, None),
    "momentum": (_FLOAT, 0.9),
    "weight_decay": (_FLOAT, 0.0001),
    "clip_grad": (_FLOAT, None),
    "clip_mode": (_STR, "norm"),
    # lr schedule
    "sched": (_STR, "step"),
    "lr": (_FLOAT, 0.01),
    "lr_noise": (_FLOATS, None),
    "lr_noise_pct": (_FLOAT, 0.67),
    "lr_noise_std": (_FLOAT, 1.0),
    "lr_cycle_mul": (_FLOAT, 1.0),
    "lr_cycle_limit": (_INT, 1),
    "warmup_lr": (_FLOAT, 0.0001),
    "min_lr": (_FLOAT, 1e-5),
    "epochs": (_INT, 200),
    "epoch_repeats": (_FLOAT, 0.0),
    "start_epoch": (_INT, None),
    "decay_epochs": (_FLOAT, 30),
    "warmup_epochs": (_INT, 3),
    "cooldown_epochs": (_INT, 10),
    "patience_epochs": (_INT, 10),
    "decay_rate": (_FLOAT, 0.1),
    # augmentation / regularisation
    "no_aug": (_FLAG, False),
    "scale": (_FLOATS, [0.08, 1.0]),
    "ratio": (_FLOATS, [3.0 / 4.0, 4.0 / 3.0]),
    "hflip": (_FLOAT, 0.5),
    "vflip": (_FLOAT, 0.0),
    "color_jitter": (_FLOAT, 0.4),
    "aa": (_STR, None),
    "aug_splits": (_INT, 0),
    "jsd": (_FLAG, False),
    "bce_loss": (_FLAG, False),
    "bce_target_thresh": (_FLOAT, None),
    "reprob": (_FLOAT, 0.0),
    "remode": (_STR, "const"),
    "recount": (_INT, 1),
    "resplit": (_FLAG, False),
    "mixup": (_FLOAT, 0.0),
    "cutmix": (_FLOAT, 0.0),
    "cutmix_minmax": (_FLOATS, None),
    "mixup_prob": (_FLOAT, 1.0),
    "mixup_switch_prob": (_FLOAT, 0.5),
    "mixup_mode": (_STR, "batch"),
    "mixup_off_epoch": (_INT, 0),
    "smoothing": (_FLOAT, 0.1),
    "train_interpolation": (_STR, "random"),
    "drop": (_FLOAT, 0.0),
    "drop_connect": (_FLOAT, None),
    "drop_path": (_FLOAT, 0.2),
    "drop_block": (_FLOAT, None),
    # batch norm
    "bn_tf": (_FLAG, False),
    "bn_momentum": (_FLOAT, None),
    "bn_eps": (_FLOAT, None),
    "sync_bn": (_FLAG, False),
    "dist_bn": (_STR, ""),
    "split_bn": (_FLAG, False),
    "linear_prob": (_FLAG, False),
    # EMA
    "model_ema": (_FLAG, False),
    "model_ema_force_cpu": (_FLAG, False),
    "model_ema_decay": (_FLOAT, 0.9998),
    # misc
    "seed": (_INT, 42),
    "log_interval": (_INT, 100),
    "recovery_interval": (_INT, 0),
    "checkpoint_hist": (_INT, 10),
    "workers": (_INT, 4),
    "save_images": (_FLAG, False),
    "amp": (_FLAG, False),
    "apex_amp": (_FLAG, False),
    "native_amp": (_FLAG, False),
    "channels_last": (_FLAG, False),
    "pin_mem": (_FLAG, False),
    "no_prefetcher": (_FLAG, False),
    "dvs_aug": (_FLAG, False),
    "dvs_trival_aug": (_FLAG, False),
    "output": (_STR, ""),
    "experiment": (_STR, ""),
    "eval_metric": (_STR, "top1"),
    "tta": (_INT, 0),
    "local_rank": (_INT, 0),
    "use_multi_epochs_loader": (_FLAG, False),
    "torchscript": (_FLAG, False),
    "log_wandb": (_FLAG, False),
}

# Read from the YAML by train.py although no option declares it; ``variant`` is ours (the NIR-clean SPS, see
# sdt/model.py VARIANTS), so an official YAML never has it and the official default 'official' applies.
_READ_WITHOUT_OPTION = frozenset({"dim", "variant"})

# Options train.py parses but whose value changes nothing: the model never calls its DropPath modules, ignores
# drop_rate / drop_block_rate / patch_size, and train.py never passes gp, bn_* or drop_connect anywhere.
# drop_path is always reported (the configs set 0.2, which reads like stochastic depth but is not); the others
# only when set to something that asks for an effect.
_ALWAYS_INERT = frozenset({"drop_path"})
_INERT_IF_SET = frozenset({"drop", "drop_block", "drop_connect", "patch_size", "gp", "bn_tf", "bn_momentum", "bn_eps"})

# train.py overwrites args.dvs_mode from the dataset name; only these two turn the DVS "Erode" on (not gesture).
DVS_MODE_DATASETS = frozenset({"cifar10-dvs", "cifar10-dvs-tet"})

# Constructor defaults that apply when the official value is None: timm's create_model drops None kwargs.
_MODEL_IMG_SIZE_DEFAULT = 128

# Official conf/ file (relative to the repository's conf/, without .yml) -> our name. The official
# imagenet/10_384_300E_t4 sets dim 512, layer 10: it is the 10-512 config, named honestly here.
OFFICIAL_FILES: dict[str, str] = {
    "cifar10-dvs/2_256_200E_t10_TET": "cifar10_dvs_t10_tet",
    "cifar10/2_256_300E_t4": "cifar10_2_256",
    "cifar10/2_512_300E_t4": "cifar10_2_512",
    "cifar10/2_512_300E_t4_TET": "cifar10_2_512_tet",
    "cifar100/2_256_300E_t4": "cifar100_2_256",
    "cifar100/2_512_300E_t4": "cifar100_2_512",
    "gesture/2_256_200E_t10": "gesture_t10",
    "gesture/2_256_200E_t16": "gesture_t16",
    "imagenet/10_384_300E_t4": "imagenet_10_512",
    "imagenet/6_512_300E_t4": "imagenet_6_512",
    "imagenet/8_384_300E_t4": "imagenet_8_384",
    "imagenet/8_512_300E_t4": "imagenet_8_512",
    "imagenet/8_768_300E_t4": "imagenet_8_768",
}


def _config_root() -> Any:
    """The packaged ``sdt/configs`` directory (a Traversable, so it also works from a wheel or zip)."""
    return resources.files("sdt") / "configs"


def _named_files() -> dict[str, Any]:
    """Map each packaged config name (the file stem) to its file."""
    found: dict[str, Any] = {}
    root = _config_root()
    for group in sorted(root.iterdir(), key=lambda p: p.name):
        if not group.is_dir():
            continue
        for entry in sorted(group.iterdir(), key=lambda p: p.name):
            if entry.is_file() and entry.name.endswith(".yml"):
                name = entry.name[: -len(".yml")]
                if name in found:  # names must stay unique across dataset folders
                    raise RuntimeError(f"duplicate packaged config name {name!r}")
                found[name] = entry
    return found


def list_configs() -> list[str]:
    """Names of the packaged configs, sorted."""
    return sorted(_named_files())


def official_defaults() -> dict[str, Any]:
    """The official train.py option defaults (dest -> value), i.e. what an absent YAML key means."""
    return {key: (list(default) if isinstance(default, list) else default) for key, (_, default) in _ARGS.items()}


def _official_alias(text: str) -> str | None:
    """Our name for an official conf/ file name such as ``conf/imagenet/10_384_300E_t4.yml``, else None."""
    key = text.replace("\\", "/")
    for suffix in (".yml", ".yaml"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    # Accept the path as written anywhere under an official checkout: keep the last two parts.
    parts = [p for p in key.split("/") if p not in ("", ".")]
    return OFFICIAL_FILES.get("/".join(parts[-2:])) if len(parts) >= 2 else None


def _convert(key: str, value: Any) -> Any:
    """Apply the option's argparse ``type`` to string values, as ``parse_args`` does for string defaults."""
    if key not in _ARGS:
        return value
    kind = _ARGS[key][0]
    scalar = {_INT: int, _FLOAT: float, _INTS: int, _FLOATS: float}.get(kind)
    if scalar is None:
        # str options are identity on strings; TET's bool and the flags are left for model_kwargs to check,
        # because bool('False') would silently be True.
        return value
    try:
        if isinstance(value, str):
            return scalar(value)
        if isinstance(value, list) and kind in (_INTS, _FLOATS):
            # argparse would leave string elements of a YAML list unconverted and crash later; convert them.
            return [scalar(v) if isinstance(v, str) else v for v in value]
    except ValueError:
        raise ConfigError(f"config key {key!r}: cannot read {value!r} as {scalar.__name__}") from None
    return value


def _read_yaml(path: Any, label: str) -> dict[str, Any]:
    """Parse one YAML file with safe_load (the official reader) and check it is a mapping with string keys."""
    with path.open("r", encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {label}: the YAML top level must be a mapping, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config {label}: key {key!r} is not a string (train.py passes keys as argument names)")
    return {key: _convert(key, value) for key, value in data.items()}


def load_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a packaged config by name, an official conf/ file name, or any official-format YAML file.

    An existing file path wins; then a packaged name (see :func:`list_configs`); then an official file name such as
    ``conf/imagenet/10_384_300E_t4.yml``, which maps to our packaged copy. The keys come back unchanged; string
    numbers of typed options (``lr: 3e-4``) are converted as argparse would convert them.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return _read_yaml(path, str(path))
    named = _named_files()
    name = text if text in named else _official_alias(text)
    if name is None or name not in named:
        raise FileNotFoundError(f"no config file or packaged config {text!r}; packaged: {', '.join(sorted(named))}")
    return _read_yaml(named[name], name)


def inert_keys(cfg: Mapping[str, Any]) -> list[str]:
    """Keys of ``cfg`` that the official train.py silently ignored, in file order.

    These are keys that are no argparse dest (every hyphenated spelling, ``aug_repeats``, ``use_conv_as_linear``,
    ``dvs_mode``, which train.py overwrites ...), ``drop_path`` (the model never applies DropPath), and other
    options whose value is never used when they ask for an effect (e.g. ``drop: 0.1``).
    """
    found = []
    for key, value in cfg.items():
        unknown = key not in _ARGS and key not in _READ_WITHOUT_OPTION
        unused = key in _INERT_IF_SET and value not in (None, False, 0, 0.0, "")
        if unknown or key in _ALWAYS_INERT or unused:
            found.append(key)
    return found


def _int(key: str, value: Any, minimum: int) -> int:
    """Check an int option; bools and floats are refused because the model would crash on them later."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config key {key!r}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"config key {key!r}: expected an int >= {minimum}, got {value}")
    return value


def model_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``create_model`` kwargs the official train.py would pass for ``cfg`` (absent keys take its defaults).

    Raises :class:`ConfigError` (a ValueError) naming the key for a value the official model could not build.
    """
    values = {key: _convert(key, value) for key, value in cfg.items()}

    def get(key: str) -> Any:
        return values[key] if key in values else _ARGS[key][1]

    if "dim" not in values:
        # train.py reads args.dim with no fallback, so the official run fails without it.
        raise ConfigError("config key 'dim' is missing (embed_dims; the official train.py has no default for it)")
    dim = _int("dim", values["dim"], 1)
    if dim % 8:
        raise ConfigError(f"config key 'dim': must be a multiple of 8 (SPS widths dim/8, dim/4, dim/2), got {dim}")
    num_heads = _int("num_heads", get("num_heads"), 1)
    if dim % num_heads:
        raise ConfigError(f"config key 'num_heads': {num_heads} does not divide dim {dim}")

    mlp_ratio = get("mlp_ratio")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ConfigError(f"config key 'mlp_ratio': expected a positive number, got {mlp_ratio!r}")

    pooling = get("pooling_stat")
    if not (isinstance(pooling, str) and len(pooling) == 4 and set(pooling) <= {"0", "1"}):
        hint = " (quote it in YAML: an unquoted 0011 reads as a number)" if isinstance(pooling, int) else ""
        raise ConfigError(f"config key 'pooling_stat': expected 4 chars of 0/1 such as '0011', got {pooling!r}{hint}")

    img_size = get("img_size")
    if img_size is None:
        img_size = _MODEL_IMG_SIZE_DEFAULT  # None is dropped by create_model, so the constructor default applies
    img_size = _int("img_size", img_size, 1)
    factor = 2 ** pooling.count("1")
    if img_size % factor:
        raise ConfigError(f"config key 'img_size': {img_size} is not divisible by {factor} (pooling_stat {pooling!r})")

    spike_mode = get("spike_mode")
    if spike_mode not in ("lif", "plif"):
        # alif/blif exist as names in the official code but build no neurons, so its forward pass crashes.
        raise ConfigError(f"config key 'spike_mode': expected 'lif' or 'plif', got {spike_mode!r}")

    tet = get("TET")
    if not isinstance(tet, bool):
        # argparse's type=bool would turn any non-empty string, 'False' included, into True.
        raise ConfigError(f"config key 'TET': expected true or false, got {tet!r}")

    variant = values.get("variant", "official")
    if variant is None:
        variant = "official"
    if variant not in VARIANTS:
        raise ConfigError(f"config key 'variant': expected one of {', '.join(VARIANTS)}, got {variant!r}")

    dataset = get("dataset")
    if not isinstance(dataset, str):
        raise ConfigError(f"config key 'dataset': expected a string, got {dataset!r}")

    return {
        "T": _int("time_steps", get("time_steps"), 1),
        "embed_dims": dim,
        "depths": _int("layer", get("layer"), 1),
        "mlp_ratios": mlp_ratio,
        "num_heads": num_heads,
        "num_classes": _int("num_classes", get("num_classes"), 0),
        "in_channels": _int("in_channels", get("in_channels"), 1),
        "img_size_h": img_size,
        "img_size_w": img_size,
        "pooling_stat": pooling,
        "spike_mode": spike_mode,
        "dvs_mode": dataset in DVS_MODE_DATASETS,
        "TET": tet,
        # ours: present only when not the official architecture, so official configs give the official kwargs
        **({"variant": variant} if variant != "official" else {}),
    }
