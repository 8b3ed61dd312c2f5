"""Behaviour preservation: every exported file (NIR, ONNX, integer network) of the official, NIR-clean, DVS, TET and
PLIF test models is byte-identical to the digests pinned before the pipeline refactor (``tests/golden.py``)."""
from __future__ import annotations

import json

import pytest

from tests.golden import DIGESTS, MODELS, compute


@pytest.mark.parametrize("name", list(MODELS))
def test_exports_byte_identical(name, one_thread):
    pinned = {k: v for k, v in json.loads(DIGESTS.read_text()).items() if k.startswith(name + "/")}
    assert pinned, f"no pinned digests for {name}"
    got = compute([name])
    changed = sorted(k for k in pinned if got.get(k) != pinned[k])
    assert set(got) == set(pinned), f"artefact set changed: {sorted(set(got) ^ set(pinned))}"
    assert not changed, f"exported bytes changed for {changed}"
