"""Shared fixtures: a machine with a device plugged and a guest allocator."""

from __future__ import annotations

import pytest
from hypothesis import settings

from pyvirtio.dma import GuestAllocator
from pyvirtio.machine import Machine
from pyvirtio.provenance import LEDGER_ENV

# Deterministic by default: every property test draws the same examples on every run and machine (a failure
# found once is found again in CI); widen a search locally with --hypothesis-seed or a larger max_examples.
settings.register_profile("pyvirtio", derandomize=True, database=None)
settings.load_profile("pyvirtio")

HEAP_BASE = 1 << 20
HEAP_SIZE = 12 << 20


@pytest.fixture
def machine() -> Machine:
    return Machine(16 << 20, seed=1)


@pytest.fixture
def alloc(machine: Machine) -> GuestAllocator:
    return GuestAllocator(machine.memory, HEAP_BASE, HEAP_SIZE)


# -- naming the normative statement a test checks ---------------------------------------------------------------
#
#   @pytest.mark.spec("dev:pci/isr#2", "drv:status#3")
#   def test_...(): ...
#
# The ids are those of pyvirtio/spec/normative.toml; an unknown id fails collection, so a test cannot name a
# statement that does not exist. tests/spec/test_inventory_coverage.py holds the inventory and the markers to
# each other.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "spec(*ids): the normative statements (pyvirtio/spec/normative.toml ids) "
                                       "this test checks")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from pyvirtio.spec.normative import load_inventory

    inventory = load_inventory()
    unknown: list[str] = []
    for item in items:
        for mark in item.iter_markers("spec"):
            if not mark.args:
                unknown.append(f"{item.nodeid}: @pytest.mark.spec() names no statement")
            unknown.extend(f"{item.nodeid}: unknown statement id {sid!r}" for sid in mark.args
                           if not isinstance(sid, str) or sid not in inventory)
    if unknown:
        raise pytest.UsageError("tests name unknown normative statements:\n  " + "\n  ".join(unknown))


@pytest.fixture(scope="session")
def _scratch_ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("real-runs"))


@pytest.fixture(autouse=True)
def _real_runs_only_from_real_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                                    _scratch_ledger: str) -> None:
    """The ledger of real runs (``pm matrix --real``) is written by the real-VM tests only: every other test
    writes to a scratch one, so a synthetic report never reaches the user's ledger."""
    if request.node.get_closest_marker("realvm") is None:
        monkeypatch.setenv(LEDGER_ENV, _scratch_ledger)
