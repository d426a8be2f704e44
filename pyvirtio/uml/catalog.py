"""Every UML scenario, stock and proposal, and the kernel build each one runs.

Contract. :data:`CATALOG` maps a scenario name to its :class:`~pyvirtio.uml.scenarios.Scenario`: the stock
kernel's (:data:`pyvirtio.uml.scenarios.SCENARIOS`) first, then each proposal module's ``SCENARIOS`` (a dict of
the same kind) in the order of :data:`SOURCES`. A name used twice is a programming error (ValueError at import).
:func:`kernel_variant` says which UML kernel build a scenario needs (:data:`~pyvirtio.vm.uml_kernel.STOCK`, or
the :data:`~pyvirtio.vm.uml_kernel.PROPOSAL_VARIANTS` entry its profile names); provision it with
``provision_uml(variant=kernel_variant(sc))`` and pass the assets to
:func:`~pyvirtio.uml.scenarios.run_scenario`.

A proposal's scenarios live in a module of their own (``pyvirtio/uml/suspend.py`` for the SUSPEND bit); to add
one, import its ``SCENARIOS`` below (one line) and append it to :data:`SOURCES` (one line).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyvirtio.uml.freeze_scenarios import SCENARIOS as FREEZE_SCENARIOS
from pyvirtio.uml.scenarios import SCENARIOS as STOCK_SCENARIOS
from pyvirtio.uml.scenarios import STOCK_VARIANT, Scenario
from pyvirtio.uml.suspend import SCENARIOS as SUSPEND_SCENARIOS
from pyvirtio.vm.uml_kernel import PROPOSAL_VARIANTS, STOCK, KernelVariant

#: Where the scenarios come from, in order: the stock kernel's, then one mapping per proposal module.
SOURCES: tuple[Mapping[str, Scenario], ...] = (
    STOCK_SCENARIOS,
    SUSPEND_SCENARIOS,
    FREEZE_SCENARIOS,
)


def collect(*sources: Mapping[str, Scenario]) -> dict[str, Scenario]:
    """One name -> scenario mapping from ``sources``, in order; ValueError on a name given twice or a scenario
    filed under another name."""
    out: dict[str, Scenario] = {}
    for src in sources:
        for name, sc in src.items():
            if name != sc.name:
                raise ValueError(f"scenario {sc.name!r} is filed as {name!r}")
            if name in out:
                raise ValueError(f"scenario {name!r} is defined twice")
            out[name] = sc
    return out


#: Every scenario by name (see the module contract).
CATALOG: dict[str, Scenario] = collect(*SOURCES)


def kernel_variant(scenario: Scenario) -> KernelVariant:
    """The UML kernel build ``scenario`` runs: stock, or our patch for its profile's mechanism."""
    if scenario.variant == STOCK_VARIANT:
        return STOCK
    return PROPOSAL_VARIANTS[scenario.variant]


def by_variant(names: Mapping[str, Scenario] = CATALOG) -> dict[str, list[Scenario]]:
    """The scenarios of ``names`` grouped by kernel build name (``stock`` first), so a caller provisions each
    build once."""
    out: dict[str, list[Scenario]] = {STOCK_VARIANT: []}
    for sc in names.values():
        out.setdefault(sc.variant, []).append(sc)
    return {k: v for k, v in out.items() if v}


__all__ = ["CATALOG", "SOURCES", "by_variant", "collect", "kernel_variant"]
