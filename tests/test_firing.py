"""Firing rates: the accumulator against hand counts, with uneven batches, any T, DVS input and TET output."""
from __future__ import annotations

import pytest
import torch

import sdt
from sdt.eval_cli import evaluate
from sdt.firing import FiringRates
from tests.conftest import tiny_model


def _hand_count(model, samples):
    """Per tensor and step: spikes / elements, counted one sample at a time with plain python sums."""
    totals: dict[str, list[list[float]]] = {}
    for x in samples:
        _, hook = sdt.observe(model, x.unsqueeze(0))
        for name, t in hook.items():
            per_step = totals.setdefault(name, [[0.0, 0.0, 0.0] for _ in range(t.shape[0])])
            for step in range(t.shape[0]):
                values = t[step].flatten().tolist()
                per_step[step][0] += sum(values)
                per_step[step][1] += sum(1 for v in values if v != 0)
                per_step[step][2] += len(values)
    return {name: ([s / n for s, _, n in steps], [z / n for _, z, n in steps]) for name, steps in totals.items()}


def test_uneven_batches_are_weighted_by_size():
    rates = FiringRates()
    rates.update({"a": torch.ones(2, 3, 4)})    # 3 samples all firing
    rates.update({"a": torch.zeros(2, 1, 4)})   # 1 sample silent
    out = rates.result()
    # sample-weighted: 3/4. The official "sum of batch means / (n - 1)" would give (1 + 0) / 1 = 1.0
    assert out["firing"]["a"]["firing_rate_per_step"] == [0.75, 0.75]
    assert out["samples"] == 4 and out["T"] == 2
    assert out["by_time"]["t1"]["firing_rate"]["a"] == 0.75


def test_membrane_tensors_are_reported_apart():
    rates = FiringRates()
    rates.update({"spk": torch.tensor([[[0.0, 1.0]]]), "mem": torch.tensor([[[0.0, 2.5]]])})
    out = rates.result()
    assert list(out["firing"]) == ["spk"] and list(out["other"]) == ["mem"]
    assert out["other"]["mem"]["per_step"] == [1.25] and out["other"]["mem"]["non_zero_per_step"] == [0.5]


@pytest.mark.parametrize("T", [4, 10])
def test_firing_json_matches_hand_count(T, tmp_path):
    import json

    from sdt.checkpoint import save_checkpoint
    from sdt.data import create_dataset
    from sdt.eval_cli import main

    model = tiny_model(seed=T, T=T, in_channels=1, num_classes=10, img_size_h=8, img_size_w=8, embed_dims=16,
                       num_heads=2)
    ckpt = tmp_path / "tiny.pth.tar"
    save_checkpoint(ckpt, model, args={"dataset": "digits"})
    out = tmp_path / "rates.json"
    # 10 samples in batches of 4: 4 + 4 + 2, so the official n-1 averaging and unweighted batch means both fail
    assert main([str(ckpt), "--limit", "10", "-b", "4", "--progress", "false", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 10 and report["dataset"] == "digits"
    rates = report["firing_rates"]
    assert rates["T"] == T and len(rates["by_time"]) == T and rates["samples"] == 10

    ds = create_dataset("digits", split="test", img_size=8)
    hand = _hand_count(model.eval(), [ds[i][0] for i in range(10)])
    assert set(hand) == set(rates["firing"]) | set(rates["other"])
    spiking = 0
    for name, (rate, nz) in hand.items():
        got = rates["firing"].get(name) or rates["other"][name]
        got_rate = got.get("firing_rate_per_step") or got["per_step"]
        assert got_rate == pytest.approx(rate, rel=1e-9, abs=1e-12), name
        assert got["non_zero_per_step"] == pytest.approx(nz, rel=1e-9, abs=1e-12), name
        spiking += name in rates["firing"] and any(r > 0 for r in rate)
    assert spiking >= 10  # the hand count is not trivially zero
    for t in range(T):
        assert rates["by_time"][f"t{t}"]["firing_rate"]["MS_SPS_lif"] == pytest.approx(hand["MS_SPS_lif"][0][t])


def test_dvs_input_and_tet_output():
    model = tiny_model(T=5, in_channels=2, num_classes=4, TET=True, dvs_mode=True, img_size_h=8, img_size_w=8,
                       embed_dims=16, num_heads=2)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 3, (6, 5, 2, 8, 8), generator=g).float()  # [B, T, C, H, W] event counts
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loader = [(frames[:4], labels[:4]), (frames[4:], labels[4:])]
    result = evaluate(model, loader, torch.device("cpu"), progress=False)
    logits = model(frames).mean(0)  # TET: [T, B, K] averaged over T
    assert result["top1"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).float().mean()))
    assert result["firing_rates"]["T"] == 5 and result["samples"] == 6
    hand = _hand_count(model, list(frames))
    assert result["firing_rates"]["firing"]["MS_SSA_Conv0_kv"]["firing_rate_per_step"] == pytest.approx(
        hand["MS_SSA_Conv0_kv"][0])


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    from sdt.eval_cli import main

    assert main([str(tmp_path / "missing.pth.tar")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
