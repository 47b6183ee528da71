#!/usr/bin/env bash
# Install dumpfs and the test tools, warm the fixture cache, run the whole test suite.
#   ./contrib/run-tests.sh [pytest args...]
# Debian 12 / Ubuntu, as root or a user with sudo.  Fixtures: ../shared (or $DUMPFS_SHARED);
# they are unpacked once into ~/.cache/dumpfs/fixtures (~2.5 GB) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_APT="crash gdb-multiarch binutils e2fsprogs qemu-user rsync nginx-light" PIP_EXTRAS="[test]" . contrib/setup-env.sh

.venv/bin/python tests/fixturecache.py >/dev/null     # unpack the fixtures once (cached)
# FUSE mounts need root (or fusermount3 and a user allowed to use it)
exec $SUDO env PATH="$PWD/.venv/bin:$PATH" ${DUMPFS_SHARED:+DUMPFS_SHARED="$DUMPFS_SHARED"} \
    HOME="$HOME" .venv/bin/python -m pytest -q "$@"
