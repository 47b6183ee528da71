# Sourced by quickstart.sh and run-tests.sh: system packages, then .venv with dumpfs.
# EXTRA_APT: more Debian packages; PIP_EXTRAS: e.g. "[test]".
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# fuse3: fusermount3 and the kernel side; libfuse3-dev + pkg-config + gcc + python3-dev build
# pyfuse3; liblzo2-dev builds python-lzo (LZO-compressed kdump pages); xz-utils unpacks fixtures
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
    fuse3 libfuse3-dev pkg-config liblzo2-dev xz-utils python3-venv python3-dev gcc \
    ${EXTRA_APT:-}
[ -e /dev/fuse ] || $SUDO modprobe fuse || true
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${PIP_EXTRAS:-}"
