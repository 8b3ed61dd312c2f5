"""train.py's command line: official YAML files load unchanged, official precedence, ignored keys warned about."""
from __future__ import annotations

import shutil
from importlib import resources

import pytest
import yaml

from sdt.config import load_config
from sdt.errors import UserError
from sdt.train.args import parse_args
from sdt.train.runner import build_model, main


def _packaged(name: str):
    for group in (resources.files("sdt") / "configs").iterdir():
        f = group / f"{name}.yml"
        if f.is_file():
            return f
    raise FileNotFoundError(name)


def test_official_yaml_file_loads_unchanged(tmp_path):
    # an official-format file given by path, as a user would pass conf/cifar10/2_512_300E_t4.yml
    src = _packaged("cifar10_2_512")
    path = tmp_path / "2_512_300E_t4.yml"
    with resources.as_file(src) as f:
        shutil.copy(f, path)
    raw = yaml.safe_load(path.read_text())
    args, warnings = parse_args(["-c", str(path)])
    cfg = load_config(path)
    for key, value in cfg.items():
        assert getattr(args, key) == value, key
    # string numbers of typed options become numbers, exactly as argparse converts string defaults
    assert raw["lr"] == "3e-4" and args.lr == pytest.approx(3e-4) and isinstance(args.lr, float)
    assert (args.dim, args.layer, args.time_steps, args.pooling_stat) == (512, 2, 4, "0011")
    assert (args.opt, args.sched, args.epochs, args.cooldown_epochs, args.warmup_epochs) == ("adamw", "cosine", 300,
                                                                                            10, 20)
    assert args.mixup == 0.5 and args.mixup_off_epoch == 200 and args.smoothing == 0.1
    assert args.aa == "rand-m9-n1-mstd0.4-inc1" and list(args.scale) == [1.0, 1.0]
    # the hyphenated keys are inert: EMA stays off although the file says model-ema, and each gets one warning
    assert args.model_ema is False
    for key in ("model-ema", "model-ema-decay", "channels-last", "use_conv_as_linear"):
        assert sum(f"'{key}'" in w for w in warnings) == 1, (key, warnings)
    assert all(w.startswith("warning: ") and "\n" not in w for w in warnings)


def test_command_line_beats_yaml_and_yaml_beats_defaults():
    args, _ = parse_args(["-c", "cifar10_2_256", "--lr", "0.1", "-b", "8", "--model-ema", "--TET"])
    assert args.lr == 0.1 and args.batch_size == 8 and args.model_ema is True and args.TET is True
    assert args.weight_decay == pytest.approx(6e-2)   # from the YAML
    assert args.clip_mode == "norm"                    # official default, absent from the YAML


def test_drop_path_is_reported_inert_from_yaml_and_cli():
    _, warnings = parse_args(["-c", "imagenet_8_768"])
    assert any("'drop_path'" in w for w in warnings)
    assert any("'bce-loss'" in w for w in warnings)     # so BCE stays off, as in the official run
    _, warnings = parse_args(["--drop-path", "0.1"])
    assert any("--drop-path" in w for w in warnings)


def test_no_config_trains_the_digits_preset():
    args, warnings = parse_args([])
    assert args.dataset == "digits" and args.data_dir is None and warnings == []
    model = build_model(args, "digits")
    assert model.model_config["in_channels"] == 1 and model.model_config["num_classes"] == 10


def test_dvs_mode_follows_the_dataset():
    args, _ = parse_args(["-c", "cifar10_dvs_t10_tet"])
    assert args.TET is True and args.TET_lamb == pytest.approx(1e-3) and args.time_steps == 10
    assert build_model(args, "cifar10-dvs").model_config["dvs_mode"] is True
    args, _ = parse_args(["-c", "gesture_t10"])
    assert build_model(args, "gesture").model_config["dvs_mode"] is False


@pytest.mark.parametrize("argv, fragment", [
    (["--bogus"], "unrecognized arguments"),
    (["-c", "no_such_config"], "no config file or packaged config"),
    (["--model", "resnet50"], "SDT v1 only"),
    (["--dataset", "nope"], "no built-in preset"),
    (["--pretrained"], "--initial-checkpoint"),
])
def test_bad_input_is_one_line_error(argv, fragment, capsys):
    with pytest.raises(UserError, match=fragment):
        parse_args(argv)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err


def test_variant_flag_and_config_key(tmp_path):
    from sdt.config import model_kwargs

    args, _ = parse_args(["--variant", "nir_clean"])
    assert model_kwargs({**vars(args), "dataset": args.dataset})["variant"] == "nir_clean"
    args, _ = parse_args([])
    assert "variant" not in model_kwargs({**vars(args), "dataset": args.dataset})  # the official architecture
    path = tmp_path / "c.yml"
    path.write_text("dim: 16\nnum_heads: 2\nimg_size: 8\nvariant: nir_clean\n")
    args, warnings = parse_args(["-c", str(path)])
    assert args.variant == "nir_clean" and not any("variant" in w for w in warnings)
    with pytest.raises(UserError, match="variant"):
        parse_args(["--variant", "pretty"])
