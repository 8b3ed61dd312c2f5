"""The official recipe pieces (built from timm): weight-decay groups, lr schedule, losses, TET, mixup switch-off."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdt.train.args import parse_args
from sdt.train.recipe import TETLoss, build_mixup, build_optimizer, build_scheduler, build_train_loss
from sdt.train.runner import build_model


def _args(*argv: str):
    return parse_args(["--dim", "16", "--num-heads", "2", "--img-size", "8", *argv])[0]


@pytest.mark.parametrize("opt", ["adamw", "lamb"])
def test_weight_decay_only_on_matrices(opt):
    args = _args("--opt", opt, "--weight-decay", "0.06", "--spike-mode", "plif")
    model = build_model(args, "digits")
    optimizer = build_optimizer(model, args)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name  # biases, BN and PLIF w: no decay
    if opt == "lamb":
        assert type(optimizer).__name__ == "Lamb" and optimizer.defaults["max_grad_norm"] == 1.0


def test_cosine_schedule_warmup_and_cooldown():
    args = _args("--lr", "1e-3", "--warmup-lr", "1e-5", "--min-lr", "2e-5", "--epochs", "10",
                 "--warmup-epochs", "2", "--cooldown-epochs", "3")
    model = build_model(args, "digits")
    optimizer = build_optimizer(model, args)
    sched, total = build_scheduler(optimizer, args)
    assert total == 13
    lrs = []
    for epoch in range(total):
        sched.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[1] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # linear warm-up
    # not a prefix: after warm-up the cosine is evaluated at the absolute epoch
    assert lrs[2] == pytest.approx(2e-5 + 0.5 * (1e-3 - 2e-5) * (1 + math.cos(math.pi * 2 / 10)))
    assert lrs[10:] == pytest.approx([2e-5] * 3)  # cool-down at min_lr


def test_tet_loss_formula():
    torch.manual_seed(0)
    out = torch.randn(4, 3, 5)
    y = torch.tensor([0, 3, 1])
    base = torch.nn.CrossEntropyLoss()
    expected = 0.999 * sum(F.cross_entropy(out[t], y) for t in range(4)) / 4 + 0.001 * ((out - 1.0) ** 2).mean()
    assert TETLoss(base, means=1.0, lamb=1e-3)(out, y) == pytest.approx(float(expected), rel=1e-6)
    assert TETLoss(base, lamb=0.0)(out, y) == pytest.approx(float(sum(F.cross_entropy(o, y) for o in out) / 4))


def test_loss_choice_follows_the_official_rules():
    args = _args("-c", "cifar10_2_512_tet")
    mix = build_mixup(args, 10)
    loss = build_train_loss(args, mix is not None)
    assert mix is not None and isinstance(loss, TETLoss) and type(loss.base).__name__ == "SoftTargetCrossEntropy"
    args = _args("--smoothing", "0.1")
    assert type(build_train_loss(args, False)).__name__ == "LabelSmoothingCrossEntropy"
    args = _args("--smoothing", "0")
    assert isinstance(build_train_loss(args, False), torch.nn.CrossEntropyLoss)


def test_mixup_off_epoch_keeps_smoothed_targets():
    args = _args("--mixup", "0.5", "--smoothing", "0.1")
    mix = build_mixup(args, 10)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mix.mixup_enabled = False  # what the loop does from mixup_off_epoch on
    x2, t = mix(x.clone(), y)
    assert torch.equal(x2, x)
    assert t[0, 0] == pytest.approx(0.9 + 0.01) and t[0, 1] == pytest.approx(0.01)
