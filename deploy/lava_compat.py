"""Make lava-nc 0.10.0 (and lava-dl 0.6.0) importable on Python 3.11 without editing site-packages.

Why this module exists
----------------------
lava-nc 0.10.0 declares ``Requires-Python <3.11`` and is installed here with ``--no-deps --ignore-requires-python``
(see ``scripts/install.sh``). On Python 3.11 three things in the installed sources get in the way:

1. ``lava/magma/compiler/var_model.py`` gives dataclass fields a ``ByteEncoder()`` *instance* as default. Python 3.11
   rejects unhashable dataclass instances as defaults, so ``import lava.magma.compiler.var_model`` (and with it every
   Lava process) fails with ``ValueError: mutable default <class '...ByteEncoder'> for field x is not allowed: use
   default_factory``. Fix: ``field(default_factory=ByteEncoder)``.
2. ``lava/lib/dl/slayer/__init__.py`` (lava-dl) imports ``object_detection`` unconditionally, which needs cv2 and a
   torchvision that loads next to the installed torch. Fix: wrap that one import so a failure binds ``obd = None``.
3. ``lava/magma/runtime/message_infrastructure/multiprocessing.py`` calls ``mp.set_start_method('fork')`` at import
   time, which raises ``RuntimeError: context has already been set`` if anything in the process touched the
   multiprocessing context first (a ``mp.Queue()``, a DataLoader worker, ``mp.get_start_method()``), even when that
   context is already 'fork'. Fix: only set it when it is not 'fork' yet. (Not a 3.11 issue, but it breaks Lava in
   any long-lived process such as a pytest session.)

Instead of patching files (fragile, invisible, undone by reinstall) we install a :class:`importlib.abc.MetaPathFinder`
at the front of ``sys.meta_path``. For exactly these module names it finds the original file, and its loader reads the
source, applies exact text edits, and compiles the result. Bytecode caches are neither read nor written (the cached
``.pyc`` belongs to the *unpatched* source). All edits keep line numbers of the edited lines unchanged, so tracebacks
show the right lines.

Guards (fail loudly rather than silently run a different Lava):

* :func:`ensure_lava` raises :class:`LavaCompatError` if ``lava-nc`` is not exactly 0.10.0, or if ``lava-dl`` is
  installed and is not exactly 0.6.0.
* Each edit states how often its old text must occur; any mismatch (upstream source changed) raises
  :class:`LavaCompatError` at import time, naming the file and the text. A file that already contains the fixed text
  (someone patched site-packages) is accepted unchanged.

Multiprocessing: Lava runs every process model in its own OS process and forces the 'fork' start method (Linux). Forked
children inherit ``sys.modules`` and ``sys.meta_path``, so the patched modules are already present in them. Lava
cannot work with 'spawn'/'forkserver' (it does not pickle its builders), so :func:`ensure_lava` refuses a process
whose start method was already set to something other than 'fork'.

Usage: every project module that needs Lava calls ``ensure_lava()`` before ``import lava...``.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import multiprocessing
import sys
import threading
from dataclasses import dataclass
from types import CodeType, ModuleType
from typing import Sequence

__all__ = ["LavaCompatError", "ensure_lava", "apply_edits", "LAVA_NC_VERSION", "LAVA_DL_VERSION"]

LAVA_NC_VERSION = "0.10.0"
LAVA_DL_VERSION = "0.6.0"


class LavaCompatError(RuntimeError):
    """The installed Lava is not the version these import fixes were written and verified for."""


@dataclass(frozen=True)
class _Edit:
    """Replace ``old`` by ``new``; ``old`` must occur exactly ``count`` times in the original source."""

    old: str
    new: str
    count: int


_VAR_MODEL_EDITS = (
    _Edit("from dataclasses import dataclass, InitVar\n", "from dataclasses import dataclass, InitVar, field\n", 1),
    # CoreEncoder.x/y/p, ChipEncoder.x/y/z, AxonEncoder.hi/lo
    _Edit(": ByteEncoder = ByteEncoder()\n", ": ByteEncoder = field(default_factory=ByteEncoder)\n", 8),
)

_MP_EDITS = (
    _Edit(
        "    mp.set_start_method('fork')\n",
        "    mp.get_start_method(allow_none=True) == 'fork' or mp.set_start_method('fork')\n",
        1,
    ),
)

_SLAYER_EDITS = (
    # Adds three lines after line 15 (only ``__all__`` below it moves). ImportError: cv2/torchvision missing;
    # RuntimeError/OSError: a torchvision build whose C++ ops do not load next to this torch.
    # The leading "\n" anchors the match at column 0, so the indented copy inside the fix never matches again.
    _Edit(
        "\nfrom . import object_detection as obd\n",
        "\ntry:\n"
        "    from . import object_detection as obd\n"
        "except (ImportError, RuntimeError, OSError):  # patched by deploy.lava_compat\n"
        "    obd = None\n",
        1,
    ),
)

# module name -> edits; lava-dl entries are added by ensure_lava() only if lava-dl is installed.
_NC_TARGETS: dict[str, tuple[_Edit, ...]] = {
    "lava.magma.compiler.var_model": _VAR_MODEL_EDITS,
    "lava.magma.runtime.message_infrastructure.multiprocessing": _MP_EDITS,
}
_DL_TARGETS: dict[str, tuple[_Edit, ...]] = {
    "lava.lib.dl.slayer": _SLAYER_EDITS,
}


def apply_edits(source: str, edits: Sequence[_Edit], where: str) -> str:
    """Return ``source`` with ``edits`` applied; raise :class:`LavaCompatError` if the text is not as expected.

    A source that contains every ``new`` text and no ``old`` text is returned unchanged (already fixed on disk).
    """
    if all(source.count(e.old) == 0 and source.count(e.new) >= 1 for e in edits):
        return source
    for e in edits:
        found = source.count(e.old)
        if found != e.count:
            raise LavaCompatError(
                f"deploy.lava_compat: expected {e.count} occurrence(s) of {e.old!r} in {where}, found {found}. "
                f"The installed Lava source differs from lava-nc {LAVA_NC_VERSION} / lava-dl {LAVA_DL_VERSION}; "
                "update the edits in deploy/lava_compat.py (or reinstall the pinned versions)."
            )
        source = source.replace(e.old, e.new)
    return source


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Source loader that compiles an edited copy of the file and never touches ``__pycache__``."""

    def __init__(self, fullname: str, path: str, edits: Sequence[_Edit]) -> None:
        super().__init__(fullname, path)
        self._edits = tuple(edits)

    def get_source(self, fullname: str) -> str:
        original = importlib.util.decode_source(self.get_data(self.path))
        return apply_edits(original, self._edits, self.path)

    def get_code(self, fullname: str) -> CodeType:
        # SourceLoader.get_code would load the cached .pyc of the *original* file and write one for ours; bypass it.
        return compile(self.get_source(fullname), self.path, "exec", dont_inherit=True, optimize=-1)

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:  # never write bytecode
        return None


class _LavaCompatFinder(importlib.abc.MetaPathFinder):
    """Intercepts only the module names in ``targets``; every other import goes to the normal finders."""

    def __init__(self) -> None:
        self.targets: dict[str, tuple[_Edit, ...]] = dict(_NC_TARGETS)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None):
        edits = self.targets.get(fullname)
        if edits is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise LavaCompatError(f"deploy.lava_compat: cannot locate the source file of {fullname} (spec={spec})")
        loader = _PatchingLoader(fullname, spec.origin, edits)
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=loader, submodule_search_locations=spec.submodule_search_locations
        )


_LOCK = threading.Lock()
_FINDER: _LavaCompatFinder | None = None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_versions() -> bool:
    """Raise unless lava-nc == 0.10.0 (and lava-dl, if present, == 0.6.0). Return whether lava-dl is installed."""
    nc = _version("lava-nc")
    if nc != LAVA_NC_VERSION:
        raise LavaCompatError(
            f"deploy.lava_compat supports lava-nc=={LAVA_NC_VERSION} exactly, found {nc!r}. "
            "Install it with scripts/install.sh, or re-verify and update the edits in deploy/lava_compat.py."
        )
    dl = _version("lava-dl")
    if dl is not None and dl != LAVA_DL_VERSION:
        raise LavaCompatError(
            f"deploy.lava_compat supports lava-dl=={LAVA_DL_VERSION} exactly, found {dl!r}. "
            "Re-verify and update the edits in deploy/lava_compat.py."
        )
    return dl is not None


def ensure_lava() -> None:
    """Verify the Lava versions and install the import hook (idempotent, thread-safe). Call before ``import lava``.

    Raises :class:`LavaCompatError` on a version mismatch, or if the multiprocessing start method was already set to
    something other than 'fork' (Lava's runtime requires fork).
    """
    global _FINDER
    with _LOCK:
        has_dl = _check_versions()
        method = multiprocessing.get_start_method(allow_none=True)  # allow_none: do not fix the context ourselves
        if method not in (None, "fork"):
            raise LavaCompatError(
                f"Lava's CPU runtime needs the 'fork' multiprocessing start method, but it is already {method!r}. "
                "Call multiprocessing.set_start_method('fork', force=True) first if that is acceptable."
            )
        if _FINDER is None:
            _FINDER = _LavaCompatFinder()
            if has_dl:
                _FINDER.targets.update(_DL_TARGETS)
        # (Re)insert at the front: another finder may have been prepended since, and we must see our names first.
        if _FINDER in sys.meta_path:
            if sys.meta_path[0] is _FINDER:
                return
            sys.meta_path.remove(_FINDER)
        sys.meta_path.insert(0, _FINDER)
