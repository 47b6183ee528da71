"""Bad input through the real command: one line `dumpfs: ...`, an exit code, no traceback.

Truncated copies of every fixture, corrupted ELF headers, an empty file, a
directory and a missing path, for both `dumpfs info` and `dumpfs mount`.
A truncated copy whose headers survive may open: then it must say so.
"""

from __future__ import annotations

import lzma
import re
import struct

import pytest

import fixturecache as fc
from conftest import is_mounted, run_dumpfs, unmount
from dumpfs.backends import open_dump
from dumpfs.errors import DamagedDump, MissingPart, NoDump, Unsupported

CUTS = {"100KiB": 100 << 10, "1000B": 1000}


def head_of(folder: str, name: str, size: int) -> bytes:
    """The first `size` bytes of a fixture, decompressing only that much."""
    path = fc.FIXTURES / folder / name
    if name.endswith(".xz"):
        with lzma.open(path) as f:
            return f.read(size)
    with open(path, "rb") as f:
        return f.read(size)


def elf_head() -> bytearray:
    return bytearray(head_of("x86_64-custom", "qemu-elf.vmcore.xz", 1 << 20))


def corrupt(offset: int, fmt: str, value: int):
    def apply(data: bytearray) -> bytes:
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)
    return apply


CORRUPTIONS = {
    "elf-bad-magic": corrupt(1, "<B", ord("X")),
    "elf-32bit-class": corrupt(4, "<B", 1),
    "elf-bad-byte-order": corrupt(5, "<B", 7),
    "elf-not-core": corrupt(16, "<H", 2),                   # ET_EXEC
    "elf-unknown-machine": corrupt(18, "<H", 0x1234),
    "elf-phoff-past-end": corrupt(32, "<Q", 1 << 40),
    "elf-phnum-huge": corrupt(56, "<H", 0xFFFE),
    "elf-phentsize-wrong": corrupt(54, "<H", 12),
}


def check_error(done, source) -> str:
    """Exit code != 0 and exactly one `dumpfs: ...` line naming the source; returns it."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert done.returncode != 0, f"exit 0 for {source}"
    assert len(lines) == 1, f"expected one line, got: {lines}"
    assert lines[0].startswith("dumpfs: "), lines[0]
    assert lines[0] != "dumpfs: " and "internal error" not in lines[0], lines[0]
    assert str(source) in lines[0] or source.name in lines[0], f"{lines[0]!r} does not name {source}"
    return lines[0]


def says_incomplete(info: str) -> bool:
    return bool(re.search(r"complete\W+no\b", info, re.I) or re.search(r"truncat", info, re.I))


def check_info(source) -> None:
    done = run_dumpfs("info", source, timeout=120)
    if done.returncode == 0:
        assert not done.stderr.strip() or "Traceback" not in done.stderr
        assert says_incomplete(done.stdout), f"{source} opened but info does not say it is incomplete"
    else:
        check_error(done, source)


def check_mount(source, mountpoint) -> None:
    done = run_dumpfs("mount", source, mountpoint, timeout=120)
    try:
        if done.returncode == 0:
            assert is_mounted(mountpoint)
            assert says_incomplete((mountpoint / "info").read_text()), \
                f"{source} mounted but its info does not say it is incomplete"
        else:
            check_error(done, source)
            assert done.returncode == 1, "a bad dump is exit code 1"
            assert not is_mounted(mountpoint)
    finally:
        unmount(mountpoint)


TRUNCATED = [(folder, record["file"], cut) for folder, record in fc.all_dumps() for cut in CUTS]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


@pytest.fixture(params=TRUNCATED, ids=[f"{f}/{n}@{c}" for f, n, c in TRUNCATED])
def truncated(request, bad_dir):
    folder, name, cut = request.param
    path = bad_dir / f"{folder}-{name.removesuffix('.xz')}-{cut}"
    if not path.exists():
        path.write_bytes(head_of(folder, name, CUTS[cut]))
    return path


@pytest.fixture(params=sorted(CORRUPTIONS))
def corrupted(request, bad_dir):
    path = bad_dir / request.param
    if not path.exists():
        path.write_bytes(CORRUPTIONS[request.param](elf_head()))
    return path


def test_truncated_info(truncated):
    check_info(truncated)


def test_truncated_mount(truncated, mountpoint):
    check_mount(truncated, mountpoint)


def test_corrupted_info(corrupted):
    check_info(corrupted)


def test_corrupted_mount(corrupted, mountpoint):
    check_mount(corrupted, mountpoint)


# `mount DIRECTORY` mounts a dump directory (an empty one mounts empty: test_dump_dirs)
@pytest.mark.parametrize("command, kind", [("info", "empty"), ("info", "directory"),
                                           ("info", "missing"), ("mount", "empty"),
                                           ("mount", "missing")])
def test_not_a_dump(kind, command, tmp_path, mountpoint):
    source = tmp_path / kind
    if kind == "empty":
        source.write_bytes(b"")
    elif kind == "directory":
        source.mkdir()
    args = ["info", source] if command == "info" else ["mount", source, mountpoint]
    done = run_dumpfs(*args)
    line = check_error(done, source)
    assert done.returncode == 1
    assert {"empty": "empty", "directory": "directory", "missing": "no such"}[kind] in line.lower()
    assert not is_mounted(mountpoint)


def test_usage_errors_are_one_line():
    for args in ([], ["frobnicate"], ["mount"], ["info"], ["convert", "x"]):
        done = run_dumpfs(*args)
        assert done.returncode == 2, args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("dumpfs: "), (args, lines)


def test_convert_to_unwritable_output(tmp_path):
    source = fc.unpacked("s390x-custom", "qemu-dgm.elf.xz")
    target = tmp_path / "no-such-dir" / "out.elf"
    done = run_dumpfs("convert", source, target)
    assert done.returncode == 4
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and str(target) in lines[0], lines


@pytest.mark.parametrize("kind,error", [("empty", NoDump), ("directory", NoDump),
                                        ("missing", MissingPart), ("unknown", NoDump)])
def test_not_a_dump_is_said_by_class(kind, error, tmp_path):
    """Callers decide by the class of the error, never by its text."""
    source = tmp_path / kind
    if kind == "empty":
        source.write_bytes(b"")
    elif kind == "directory":
        source.mkdir()
    elif kind == "unknown":
        source.write_bytes(b"not a dump at all" * 100)
    with pytest.raises(error):
        open_dump(str(source))


@pytest.mark.parametrize("name,error", [("elf-32bit-class", Unsupported), ("elf-unknown-machine", Unsupported),
                                        ("elf-not-core", NoDump), ("elf-bad-byte-order", DamagedDump),
                                        ("elf-phoff-past-end", DamagedDump), ("elf-bad-magic", NoDump)])
def test_corrupted_header_is_said_by_class(name, error, bad_dir):
    path = bad_dir / f"{name}-by-class"
    path.write_bytes(CORRUPTIONS[name](elf_head()))
    with pytest.raises(error):
        open_dump(str(path))
