"""toolchain.pipeline: one front door. A checkpoint and the integer network saved from it give the same network and
structure; ``sdt-energy --integer`` counts exactly the spikes ``sdt-deploy`` runs (same grid, same options), from the
checkpoint or from the saved ``.intnet.npz``."""
from __future__ import annotations

import json

import pytest

from sdt.checkpoint import save_checkpoint
from tests.conftest import tiny_model
from toolchain.deploy_cli import main as deploy
from toolchain.energy_cli import main as energy
from toolchain.pipeline import INTNET, load

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny digits-shaped SDT checkpoint and the integer network sdt-deploy saves from it, with its report."""
    d = tmp_path_factory.mktemp("pipeline")
    ckpt, net, rep = d / "digits.pth.tar", d / "digits.intnet.npz", d / "deploy.json"
    save_checkpoint(ckpt, tiny_model(0, in_channels=1, num_classes=10, embed_dims=32, num_heads=4),
                    args={"dataset": "digits"})
    assert deploy([str(ckpt), "--samples", "6", "-b", "4", "--progress", "false", "--save-net", str(net),
                   "-o", str(rep)]) == 0
    return ckpt, net, json.loads(rep.read_text())


def test_graph_is_built_once_and_the_network_uses_the_training_grid(digits):
    ckpt, net_path, _ = digits
    src = load(ckpt)
    assert src.dataset == "digits" and src.graph() is src.graph()
    net, report = src.network()
    assert net.encoding["levels"] == 256  # the digits grid, found on training inputs as sdt-deploy finds it
    assert report["populations"] == len(net.populations)
    saved = load(net_path)
    assert saved.kind == INTNET and saved.dataset == "digits" and saved.model_config == src.model_config
    assert saved.network()[0].encoding == net.encoding


def test_structure_graph_of_an_integer_network_matches_the_checkpoint(digits):
    ckpt, net_path, _ = digits
    graph, structure = load(ckpt).graph(), load(net_path).structure_graph()
    assert [(n.name, n.op, n.shape, n.inputs) for n in structure] == [(n.name, n.op, n.shape, n.inputs) for n in graph]
    assert structure.T == graph.T and structure.encoding == graph.encoding


@pytest.mark.parametrize("source", ["intnet", "checkpoint"])
def test_energy_integer_counts_the_spikes_deploy_runs(digits, tmp_path, source):
    ckpt, net_path, rep = digits
    out = tmp_path / "energy"
    assert energy([str(net_path if source == "intnet" else ckpt), "--integer", "--samples", "6", "-b", "4",
                   "--no-progress", "-o", str(out)]) == 0
    doc = json.loads((out / "energy.json").read_text())
    assert doc["samples"] == rep["samples"] == 6 and doc["meta"]["mode"].startswith("integer network")
    # energy.json: per layer, spikes per sample; sdt-deploy: per population, spikes over all samples and steps
    counted = {r["name"]: round(r["counts"]["spikes"]["per_sample"] * doc["samples"]) for r in doc["layers"]
               if "spikes" in r["counts"] and r["name"] in rep["spike_counts"]}
    lifs = {r["name"] for r in doc["layers"] if r["op"] == "lif"}
    assert lifs <= set(counted), lifs - set(counted)
    assert counted == {k: rep["spike_counts"][k] for k in counted}
