"""End-to-end training on CPU with tiny models: torchrun DDP, kill -9 + exact resume, crash-safe checkpoints, data."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sdt
from sdt.checkpoint import read_checkpoint
from sdt.errors import UserError
from sdt.train import runner
from sdt.train.distributed import DistInfo, weight_digest
from sdt.train.saver import LAST, RECOVERY, CheckpointSaver

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "train.py")]
# digits at 8x8, 1 block x 16 dims, T=2: about 0.3 s per epoch of 8 steps
TINY = ["--img-size", "8", "--dim", "16", "--num-heads", "2", "-T", "2", "--limit-train", "256", "--limit-val", "64",
        "--warmup-epochs", "1", "--num-threads", "1", "--progress", "false", "--tensorboard", "false"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def restore_torch_globals():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_torchrun_two_processes_keep_identical_weights(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this python")
    # --standalone: a local rendezvous on a free port, so parallel runs cannot collide
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *TINY,
           "--epochs", "1", "-b", "16", "--output", str(tmp_path), "--experiment", "ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    ck = read_checkpoint(tmp_path / "ddp" / LAST)
    digests = ck["rank_weight_digests"]
    assert ck["world_size"] == 2 and len(digests) == 2 and len(ck["rng"]) == 2
    # ranks start from different seeds (seed + rank); only DDP's broadcast and gradient averaging make them agree
    assert digests[0] == digests[1]
    model = sdt.load_checkpoint(tmp_path / "ddp" / LAST)
    assert weight_digest(model) == digests[0]
    init = runner.build_model(runner.parse_args(TINY)[0], "digits")
    assert weight_digest(init) != digests[0]  # it trained


def _killed_run(args: list[str], cut: Path) -> Path:
    """``train.py ARGS --experiment cut`` in a subprocess, killed with SIGKILL once training is under way (the first
    mid-epoch recovery file exists); returns the run folder."""
    proc = subprocess.Popen([*TRAIN, *args, "--experiment", cut.name], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not (cut / RECOVERY).exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return cut


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, restore_torch_globals):
    args = [*TINY, "--epochs", "3", "--recovery-interval", "2", "--output", str(tmp_path)]
    assert runner.main([*args, "--experiment", "full"]) == 0

    cut = _killed_run(args, tmp_path / "cut")
    assert not (cut / LAST).exists() or read_checkpoint(cut / LAST)["epoch"] < 2  # killed before the end

    assert runner.main([*args, "--resume", str(cut)]) == 0
    full, resumed = _weights(tmp_path / "full" / LAST), _weights(cut / LAST)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    a, b = read_checkpoint(tmp_path / "full" / LAST), read_checkpoint(cut / LAST)
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    # the summary of the resumed run has each epoch once, with the uninterrupted run's numbers
    assert (tmp_path / "full" / "summary.csv").read_text() == (cut / "summary.csv").read_text()
    assert not list(cut.glob(".*.tmp"))


def test_truncated_checkpoint_is_refused_and_last_survives_a_crashed_write(tmp_path, monkeypatch, capsys):
    model = sdt.create_model(img_size_h=8, img_size_w=8, in_channels=1, num_classes=10, embed_dims=16, num_heads=2,
                             depths=1, T=2, pooling_stat="0011")
    saver = CheckpointSaver(tmp_path, max_history=2)
    saver.save_epoch(model, 0, 50.0, lambda s: {"epoch": 0, "saver": s})
    good = (tmp_path / LAST).read_bytes()

    bad = tmp_path / "truncated.pth.tar"
    bad.write_bytes(good[: len(good) // 2])
    assert runner.main([*TINY, "--resume", str(bad), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "corrupt or truncated" in err
    with pytest.raises(UserError, match="corrupt or truncated"):
        sdt.load_checkpoint(bad)

    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        saver.save_epoch(model, 1, 60.0, lambda s: {"epoch": 1, "saver": s})
    monkeypatch.undo()
    assert (tmp_path / LAST).read_bytes() == good  # the previous last checkpoint, intact
    assert sdt.load_checkpoint(tmp_path / LAST) is not None
    assert read_checkpoint(tmp_path / LAST)["epoch"] == 0 and saver.best_epoch == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_top_k_and_best_files(tmp_path):
    model = sdt.create_model(img_size_h=8, img_size_w=8, in_channels=1, num_classes=10, embed_dims=16, num_heads=2,
                             depths=1, T=2, pooling_stat="0011")
    saver = CheckpointSaver(tmp_path, max_history=2)
    for epoch, metric in enumerate([10.0, 30.0, 20.0, 5.0]):
        saver.save_epoch(model, epoch, metric, lambda s, e=epoch: {"epoch": e, "saver": s})
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1.pth.tar", "checkpoint-2.pth.tar"]
    assert read_checkpoint(tmp_path / "model_best.pth.tar")["epoch"] == 1
    assert read_checkpoint(tmp_path / LAST)["epoch"] == 3
    state = read_checkpoint(tmp_path / LAST)["saver"]
    assert [c[0] for c in state["checkpoints"]] == ["checkpoint-1.pth.tar", "checkpoint-2.pth.tar"]


def test_training_loaders_of_the_embedded_digits():
    from sdt.train.data import build_loaders

    args, _ = runner.parse_args(["-b", "32"])
    loaders = build_loaders(args, DistInfo())
    assert (len(loaders.train.dataset), loaders.val_size, loaders.num_classes) == (1437, 360, 10)
    x, y = next(iter(loaders.train))
    assert x.shape == (32, 1, 16, 16) and x.dtype == torch.float32 and y.shape == (32,)
    labels = torch.tensor([int(t) for _, t in loaders.val.dataset])
    assert torch.bincount(labels, minlength=10).min() >= 35  # stratified: every class present


@pytest.mark.parametrize("name, n_train, n_test", [("fashion", 60000, 10000), ("mnist", 60000, 10000)])
def test_packaged_idx_datasets_if_installed(name, n_train, n_test):
    from sdt.data import DatasetNotFoundError, create_dataset

    try:
        train = create_dataset(name, split="train")
    except DatasetNotFoundError as e:
        pytest.skip(str(e)[:120])
    test = create_dataset(name, split="test")
    assert (len(train), len(test)) == (n_train, n_test)
    x, _ = train[0]
    assert x.shape == (1, 28, 28)
    assert len(set(test.targets)) == 10


def test_nir_clean_variant_trains_and_is_recorded(tmp_path, restore_torch_globals):
    out = tmp_path / "run"
    assert runner.main([*TINY, "--epochs", "1", "--variant", "nir_clean", "--output", str(out),
                        "--experiment", "nc"]) == 0
    best = out / "nc" / "model_best.pth.tar"
    model = sdt.load_checkpoint(best)  # the checkpoint alone rebuilds the variant
    assert model.model_config["variant"] == "nir_clean" and model.patch_embed.variant == "nir_clean"
    assert read_checkpoint(best)["model_config"]["variant"] == "nir_clean"


def test_resume_run_dir_alone_rebuilds_the_run_with_non_default_flags(tmp_path, restore_torch_globals, capsys):
    """``train.py --resume RUN_DIR`` with no other flag: the model and recipe come from what the run recorded (here
    non-default: 8x8 input, 16 dims, 2 heads, T=2, limits, 3 epochs), bit-identical to an uninterrupted run."""
    args = [*TINY, "--epochs", "3", "--recovery-interval", "2", "--output", str(tmp_path)]
    assert runner.main([*args, "--experiment", "full"]) == 0
    cut = _killed_run(args, tmp_path / "cut")
    capsys.readouterr()
    assert runner.main(["--resume", str(cut)]) == 0
    full, resumed = _weights(tmp_path / "full" / LAST), _weights(cut / LAST)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert (tmp_path / "full" / "summary.csv").read_text() == (cut / "summary.csv").read_text()
    # an explicit flag still wins, with a warning naming the recorded value (the model check then refuses it)
    assert runner.main(["--resume", str(cut), "--dim", "32"]) == 2
    out, err = capsys.readouterr()
    assert "--dim 32 overrides the resumed run's recorded 16" in out + err
    assert "differs from the config in embed_dims" in err
