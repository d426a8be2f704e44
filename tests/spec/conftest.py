"""Fixtures of the inventory tests: the sync script as a module, and pytest's collection of the suite (once)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYNC_SCRIPT = ROOT / "scripts" / "sync_normative.py"


def load_sync() -> ModuleType:
    """``scripts/sync_normative.py`` imported as the module ``sync_normative``."""
    mod = sys.modules.get("sync_normative")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == SYNC_SCRIPT:
        return mod
    spec = importlib.util.spec_from_file_location("sync_normative", SYNC_SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sync_normative"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def sync() -> ModuleType:
    return load_sync()


@pytest.fixture(scope="session")
def collection(sync: ModuleType) -> object:
    """pytest's collection of tests/ with every test's spec markers (a subprocess; nothing runs)."""
    return sync.collect_markers(ROOT)
