"""sdt.malloc: pinned glibc thresholds keep freed batch tensors in the process (no page faults to get them back), and
the CPU-heavy CLIs pin them before they run."""
from __future__ import annotations

import subprocess
import sys

import pytest

ALLOC_FREE = r"""
import sys
import numpy as np
from sdt.malloc import pin_malloc
pinned = pin_malloc() if sys.argv[1] == "pinned" else False
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
for _ in range(3):  # one batch after another: 16 tensors of 8 MB, all touched, then freed
    xs = [np.ones(1 << 20) for _ in range(16)]
    peak = rss_mb()
    del xs
    after = rss_mb()
print(pinned, peak - after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt exists on Linux only")
def test_pinned_thresholds_keep_freed_tensors():
    def run(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", ALLOC_FREE, mode], check=True, capture_output=True, text=True)
        pinned, released = out.stdout.split()
        return pinned, float(released)

    pinned, released = run("pinned")
    assert pinned == "True"
    assert released < 16  # the 128 MB freed stay in the process, ready for the next batch
    _, released_default = run("default")
    assert released_default > 100  # glibc's own regime gives them back to the kernel (and faults them in again)


def test_pin_malloc_is_idempotent():
    from sdt.malloc import pin_malloc

    first = pin_malloc()
    assert pin_malloc() is first


@pytest.mark.parametrize("module", ["toolchain.energy_cli", "toolchain.deploy_cli", "sdt.eval_cli"])
def test_cpu_heavy_clis_pin_malloc(module, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(module)
    calls = []
    monkeypatch.setattr("sdt.malloc.pin_malloc", lambda: calls.append(1) or True)  # what sdt.errors.cpu_cli calls
    assert mod.main(["--no-such-flag"]) == 2
    assert calls == [1]
    assert "error:" in capsys.readouterr().err


def test_malloc_regime_names_what_is_in_force():
    from sdt.malloc import malloc_regime, pin_malloc

    assert malloc_regime("default") == "default"
    assert malloc_regime("pinned") == ("pinned" if pin_malloc() else "default")
