#!/usr/bin/env bash
# Install everything the tests need and run all of them (the README's test command; .ci/run calls it).
#   1. the Python package with its test tools;
#   2. both real-VM stacks: the system QEMU and Debian guest kernel (apt, as root) and the private QEMU 10.0 +
#      Linux 6.12 unpacked into the cache with our virtio-gpu module built for it, and the User-Mode Linux 6.12
#      kernel built from source (`pyvirtio vm provision --stack ...`; the build tools from apt; every build is
#      cached, the UML kernel takes minutes the first time);
#   3. ruff, the import contracts (lint-imports), mypy --strict, then pytest: every test, the real-VM ones included (never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --quiet --root-user-action=ignore -e '.[test]'
# build tools: our virtio-gpu module for the second stack's kernel (guest/linux) and the UML kernel
need=""
for tool in x86_64-linux-gnu-gcc-12:gcc-12 gcc:gcc make:make patch:patch objcopy:binutils xz:xz-utils \
            flex:flex bison:bison bc:bc; do
  command -v "${tool%%:*}" >/dev/null || need="$need ${tool##*:}"
done
if [ -n "$need" ] && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends $need libc6-dev \
    || { apt-get update -q && apt-get install -y --no-install-recommends $need libc6-dev; }
fi
pyvirtio vm provision --stack qemu7.2-linux6.1 --stack qemu10.0-linux6.12 --stack uml-linux6.12
ruff check .
lint-imports  # the architecture: layers, guest never imports host, no cycles (pyproject.toml)
mypy --strict pyvirtio
exec python3 -m pytest -p no:cacheprovider "$@"
