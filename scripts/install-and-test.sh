#!/usr/bin/env bash
# Install everything the tests need and run all of them (the README's test command; .ci/run calls it).
#   1. the Python package with its test tools;
#   2. both real-VM stacks: the system QEMU and Debian guest kernel (apt, as root) and the private QEMU 10.0 +
#      Linux 6.12 unpacked into the cache, with our virtio-gpu module built for it (`pyvirtio vm provision --stack ...`);
#   3. ruff, the import contracts (lint-imports), mypy --strict, then pytest: every test, the real-VM ones included (never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --quiet --root-user-action=ignore -e '.[test]'
# our virtio-gpu module (guest/linux) is built for the second stack's kernel at provision time: its compiler and tools
for tool in x86_64-linux-gnu-gcc-12 make patch objcopy xz; do
  command -v "$tool" >/dev/null || { apt-get install -y --no-install-recommends gcc-12 make patch binutils xz-utils; break; }
done
pyvirtio vm provision --stack qemu7.2-linux6.1 --stack qemu10.0-linux6.12
ruff check .
lint-imports  # the architecture: layers, guest never imports host, no cycles (pyproject.toml)
mypy --strict pyvirtio
exec python3 -m pytest -p no:cacheprovider "$@"
