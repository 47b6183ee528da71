"""Shared fixtures: real FUSE mounts through the real `dumpfs` command, and fixture paths.

Every mount made here is unmounted at the end of the session, whatever the
tests did; an atexit hook catches a session that dies before teardown.
"""

from __future__ import annotations

import atexit
import signal
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import fixturecache

DUMPFS = [sys.executable, "-m", "dumpfs"]
_live_mounts: set[Path] = set()


def run_dumpfs(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`dumpfs ARGS...` as a user would run it; text output captured."""
    return subprocess.run([*DUMPFS, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_info_refuses(path, message: str | None = None) -> None:
    """`dumpfs info PATH` fails with one line on stderr (containing `message`), no traceback."""
    done = run_dumpfs("info", path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    if message is not None:
        assert message in done.stderr, done.stderr


def is_mounted(path: Path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def unmount(path: Path) -> None:
    """Unmount if still mounted; lazily as a last resort so nothing is left behind."""
    for command in (["fusermount3", "-u"], ["fusermount3", "-uz"], ["umount", "-l"]):
        if not is_mounted(path):
            break
        subprocess.run([*command, str(path)], capture_output=True)
    _live_mounts.discard(Path(path))


def track_mount(path: Path) -> Path:
    """Remember a mountpoint so the session unmounts it even if the test fails."""
    _live_mounts.add(Path(path))
    return Path(path)


@atexit.register
def _unmount_everything() -> None:
    for path in list(_live_mounts):
        unmount(path)


def _require_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: these tests need FUSE "
                    "(modprobe fuse; in a container: --device /dev/fuse --cap-add SYS_ADMIN)")


@pytest.fixture(scope="session")
def fixture_path():
    """fixture_path(folder, file) -> the unpacked fixture (fails loudly when absent)."""
    def get(folder: str, name: str) -> Path:
        if not (fixturecache.FIXTURES / folder / name).exists():
            pytest.fail(f"fixture {folder}/{name} not found under {fixturecache.FIXTURES}")
        return fixturecache.unpacked(folder, name)
    return get


@pytest.fixture(scope="session")
def mount(tmp_path_factory):
    """mount(*sources, options=()) -> mountpoint of `dumpfs mount` of those sources.

    The same arguments reuse the same mount for the whole session.
    """
    _require_fuse()
    mounts: dict[tuple, Path] = {}

    def do_mount(*sources, options=()) -> Path:
        key = (tuple(str(s) for s in sources), tuple(options))
        if key in mounts:
            return mounts[key]
        mountpoint = tmp_path_factory.mktemp("mnt")
        opts = [arg for option in options for arg in ("-o", option)]
        done = run_dumpfs("mount", *opts, *sources, mountpoint, timeout=120)
        if is_mounted(mountpoint):
            track_mount(mountpoint)
        if done.returncode != 0:
            pytest.fail(f"dumpfs mount {' '.join(key[0])} failed ({done.returncode}): "
                        f"{done.stderr.strip()}")
        assert is_mounted(mountpoint), "dumpfs mount returned 0 but nothing is mounted"
        mounts[key] = mountpoint
        return mountpoint

    yield do_mount
    for mountpoint in mounts.values():
        unmount(mountpoint)


@pytest.fixture
def mountpoint(tmp_path):
    """An empty directory for a test's own mount; unmounted afterwards if the test left it."""
    _require_fuse()
    path = track_mount(tmp_path / "mnt")
    path.mkdir()
    yield path
    unmount(path)


@pytest.fixture(scope="session")
def elf():
    """s390x-custom's QEMU ELF opened by dumpfs: the memory and registers test writers build from."""
    from dumpfs.backends import open_dump
    dump = open_dump(str(fixturecache.unpacked("s390x-custom", "qemu-dgm.elf.xz")))
    yield dump
    dump.close()


@pytest.fixture(scope="session")
def written(elf, tmp_path_factory):
    """written(kind) -> Built: an IBM Z image written from s390x-custom's memory (writers/images.py),
    built on first use and shared by every test module of the session."""
    from writers.images import WrittenImages
    return WrittenImages(elf, tmp_path_factory.mktemp("written"))


@pytest.fixture(scope="module")
def private_type_cache(tmp_path_factory):
    """An empty cache directory for a test module (mounts inherit it): type layouts are
    resolved on first use there, never taken from an earlier run's cache."""
    old = os.environ.get("DUMPFS_CACHE_DIR")
    os.environ["DUMPFS_CACHE_DIR"] = str(tmp_path_factory.mktemp("typecache"))
    yield
    if old is None:
        os.environ.pop("DUMPFS_CACHE_DIR", None)
    else:
        os.environ["DUMPFS_CACHE_DIR"] = old


@contextmanager
def time_limit(seconds: int):
    """Hostile-input tests: a walk that does not end in time fails instead of hanging the suite."""
    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
