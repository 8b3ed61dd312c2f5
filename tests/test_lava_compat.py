"""deploy.lava_compat: Lava 0.10 imports and runs on Python 3.11 without editing site-packages, else fails loudly."""
from __future__ import annotations

import glob
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import multiprocessing
import os
import py_compile
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from deploy import lava_compat
from deploy.lava_compat import LavaCompatError, ensure_lava

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lava") is None, reason="lava-nc is not installed (scripts/install.sh installs it)"
)


def _our_finders() -> list[int]:
    return [i for i, f in enumerate(sys.meta_path) if isinstance(f, lava_compat._LavaCompatFinder)]


def test_ensure_lava_then_lava_imports():
    ensure_lava()
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIF
    import lava.magma.compiler.var_model as vm

    assert all(c is not None for c in (Loihi2SimCfg, Dense, RingBuffer, LIF))
    # The module came through our loader, and the fix is real: each encoder gets its own ByteEncoder.
    assert isinstance(vm.__loader__, lava_compat._PatchingLoader)
    a, b = vm.CoreEncoder(), vm.CoreEncoder()
    assert a.x == vm.ByteEncoder() and a.x is not b.x


def test_site_packages_file_is_not_edited():
    ensure_lava()
    import lava.magma.compiler.var_model as vm

    on_disk = Path(vm.__file__).read_text()
    assert on_disk.count(": ByteEncoder = ByteEncoder()\n") == 8, "site-packages var_model.py was modified"
    assert "default_factory" not in on_disk


def test_ensure_lava_is_idempotent_and_stays_first():
    ensure_lava()
    ensure_lava()
    assert _our_finders() == [0]

    class Dummy(importlib.abc.MetaPathFinder):
        def find_spec(self, *args, **kwargs):
            return None

    dummy = Dummy()
    sys.meta_path.insert(0, dummy)
    try:
        ensure_lava()
        assert _our_finders() == [0] and sys.meta_path[1] is dummy
    finally:
        sys.meta_path.remove(dummy)


def test_finder_ignores_other_modules():
    ensure_lava()
    finder = sys.meta_path[_our_finders()[0]]
    assert finder.find_spec("json", None) is None
    assert finder.find_spec("lava.proc.lif.process", None) is None


def test_version_guard_fails_loudly(monkeypatch):
    real = importlib.metadata.version

    def fake(dist, new={"lava-nc": "0.11.0"}):
        return new.get(dist) or real(dist)

    monkeypatch.setattr(importlib.metadata, "version", fake)
    with pytest.raises(LavaCompatError, match=r"lava-nc==0\.10\.0.*'0\.11\.0'"):
        ensure_lava()

    def fake_missing(dist):
        if dist == "lava-nc":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", fake_missing)
    with pytest.raises(LavaCompatError, match="found None"):
        ensure_lava()


def test_lava_dl_version_guard(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda d: "0.7.0" if d == "lava-dl" else real(d))
    with pytest.raises(LavaCompatError, match=r"lava-dl==0\.6\.0"):
        ensure_lava()


def test_start_method_guard(monkeypatch):
    monkeypatch.setattr(lava_compat.multiprocessing, "get_start_method", lambda allow_none=False: "spawn")
    with pytest.raises(LavaCompatError, match="fork"):
        ensure_lava()


def test_source_edit_guard_fails_loudly():
    ensure_lava()
    import lava.magma.compiler.var_model as vm

    original = Path(vm.__file__).read_text()
    edits = lava_compat._VAR_MODEL_EDITS
    patched = lava_compat.apply_edits(original, edits, "var_model.py")
    assert patched.count("field(default_factory=ByteEncoder)") == 8
    assert patched.count("\n") == original.count("\n"), "edits must keep line numbers"
    # Already-fixed text (someone patched the file on disk) passes through unchanged.
    assert lava_compat.apply_edits(patched, edits, "var_model.py") == patched
    # Upstream changed: one default is gone / the import line differs -> loud error naming the text.
    altered = original.replace("    lo: ByteEncoder = ByteEncoder()\n", "    lo: ByteEncoder = None\n")
    with pytest.raises(LavaCompatError, match=r"expected 8 occurrence\(s\).*found 7"):
        lava_compat.apply_edits(altered, edits, "var_model.py")
    altered = original.replace("from dataclasses import dataclass, InitVar\n", "from dataclasses import dataclass\n")
    with pytest.raises(LavaCompatError, match="InitVar"):
        lava_compat.apply_edits(altered, edits, "var_model.py")


def test_all_edits_match_installed_sources():
    """Every registered edit applies to the installed files (catches a Lava upgrade before any import does)."""
    ensure_lava()
    targets = dict(lava_compat._NC_TARGETS)
    if lava_compat._version("lava-dl") is not None:
        targets.update(lava_compat._DL_TARGETS)
    for name, edits in targets.items():
        parent, _, _ = name.rpartition(".")
        spec = importlib.machinery.PathFinder.find_spec(name, importlib.import_module(parent).__path__)
        src = Path(spec.origin).read_text()
        patched = lava_compat.apply_edits(src, edits, spec.origin)
        assert patched != src, name
        assert lava_compat.apply_edits(patched, edits, spec.origin) == patched, f"{name}: edits are not idempotent"
        compile(patched, spec.origin, "exec")


def test_loader_ignores_and_never_writes_bytecode(tmp_path):
    """The patched module is compiled from edited source even if a .pyc of the original exists; no .pyc is written."""
    mod = tmp_path / "lc_probe_mod.py"
    mod.write_text("VALUE = 'original'\n")
    pyc = Path(py_compile.compile(str(mod), cfile=importlib.util.cache_from_source(str(mod))))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    loader = lava_compat._PatchingLoader(
        "lc_probe_mod", str(mod), (lava_compat._Edit("'original'", "'patched'", 1),)
    )
    spec = importlib.util.spec_from_file_location("lc_probe_mod", str(mod), loader=loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE == "patched"
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before and pyc.exists()


def test_lava_dl_slayer_imports_without_object_detection():
    if lava_compat._version("lava-dl") is None:
        pytest.skip("lava-dl not installed")
    ensure_lava()
    import lava.lib.dl.slayer as slayer

    assert slayer.block is not None
    try:
        import cv2  # noqa: F401
    except ImportError:
        assert slayer.obd is None


def _child_pids() -> set[int]:
    """Direct children of this process, from /proc (psutil is not a dependency)."""
    me, kids = os.getpid(), set()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            kids.add(int(Path(stat).parent.name))
    return kids


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def test_lava_run_leaves_no_processes_or_shared_memory(monkeypatch):
    ensure_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    import lava.magma.runtime.message_infrastructure.shared_memory_manager as smm_mod
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    created: list[str] = []
    real_create = smm_mod.SharedMemoryManager.create_shared_memory

    def recording_create(self, size):
        handle = real_create(self, size)
        created.append(handle.name)
        return handle

    monkeypatch.setattr(smm_mod.SharedMemoryManager, "create_shared_memory", recording_create)

    kids_before = _child_pids()
    data = np.zeros((1, 10))
    data[0, 0] = 1
    src = Source(data=data)
    dense = Dense(weights=np.array([[128]]))
    lif = LIF(shape=(1,), du=0, dv=2048, vth=100000)
    sink = Sink(shape=(1,), buffer=10)
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(lif.a_in)
    lif.s_out.connect(sink.a_in)
    try:
        lif.run(condition=RunSteps(num_steps=10), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        assert len(multiprocessing.active_children()) >= 4  # one OS process per process model, plus the SMM server
        v = lif.v.get()
    finally:
        lif.stop()
    assert int(v[0]) == 16323  # golden trace (shifted by the Dense delay), 10th step

    assert created, "Lava created no shared memory through SharedMemoryManager: the check below would be vacuous"
    deadline = time.monotonic() + 5.0
    while True:
        leftover_kids = _child_pids() - kids_before - {_resource_tracker_pid()}
        leftover_shm = [n for n in created if os.path.exists("/dev/shm/" + n.lstrip("/"))]
        if not (multiprocessing.active_children() or leftover_kids or leftover_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    assert leftover_kids == set()
    assert leftover_shm == []


def test_run_works_when_multiprocessing_context_was_set_first():
    """Lava's own `mp.set_start_method('fork')` would raise 'context has already been set' here; ours must not."""
    code = textwrap.dedent(
        """
        import multiprocessing as mp, numpy as np
        mp.get_start_method()  # fixes the default context, as any earlier mp.Queue()/Pool would
        from deploy.lava_compat import ensure_lava
        ensure_lava()
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.io.source import RingBuffer
        from lava.proc.lif.process import LIF
        src = RingBuffer(data=np.ones((1, 3)))
        dense = Dense(weights=np.array([[2]]))
        lif = LIF(shape=(1,), du=4095, dv=0, vth=1000)
        src.s_out.connect(dense.s_in); dense.a_out.connect(lif.a_in)
        try:
            lif.run(condition=RunSteps(num_steps=3), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
            print("V", int(lif.v.get()[0]))
        finally:
            lif.stop()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "V 256" in out.stdout  # two delayed inputs of 2 << 6, no voltage leak
