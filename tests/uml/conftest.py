"""UML kernel builds for the real-kernel tests: each provisioned (or reused from the cache) once per session; a
build that fails fails the test, never skips it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pyvirtio.errors import PyvirtioError
from pyvirtio.vm.uml_kernel import PROPOSAL_VARIANTS, STOCK, KernelVariant, UmlAssets, provision_uml

#: ``uml_kernel("suspend")``: the assets of that kernel build (``stock`` or a :data:`PROPOSAL_VARIANTS` name).
UmlKernel = Callable[[str], UmlAssets]


@pytest.fixture(scope="session")
def uml_kernel() -> UmlKernel:
    built: dict[str, UmlAssets] = {}

    def get(name: str) -> UmlAssets:
        if name not in built:
            variant: KernelVariant = STOCK if name == STOCK.name else PROPOSAL_VARIANTS[name]
            try:
                built[name] = provision_uml(variant=variant)
            except PyvirtioError as e:  # fail, never skip
                pytest.fail(f"UML provisioning of the {name} kernel failed: {e}", pytrace=False)
        return built[name]

    return get
