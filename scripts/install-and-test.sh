#!/usr/bin/env bash
# Install everything the tests need and run all of them (the README's test command; .ci/run calls it).
#   1. the Python package with its test tools;
#   2. QEMU and the Debian guest kernel for the real-VM tests (`pyvirtio vm provision`: apt, as root);
#   3. ruff, the import contracts (lint-imports), mypy --strict, then pytest: every test, the real-VM ones included (never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --quiet --root-user-action=ignore -e '.[test]'
pyvirtio vm provision
ruff check .
lint-imports  # the architecture: layers, guest never imports host, no cycles (pyproject.toml)
mypy --strict pyvirtio
exec python3 -m pytest -p no:cacheprovider "$@"
