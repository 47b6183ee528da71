"""Helpers for the written-image tests: the oracle (IBM zgetdump 2.16), loop devices, page diffs."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

import fixturecache as fc

BLOCK = 16 << 20


def oracle(*args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = dict(os.environ, ORACLE_QUIET="1")
    return subprocess.run([str(fc.ORACLE), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=600, env=env)


def oracle_info(path) -> dict[str, str]:
    done = oracle("-i", path)
    text = done.stderr.decode()
    assert done.returncode == 0, text
    return dict(re.findall(r"^  ([A-Za-z ()]+?)\.*: (.*)$", text, re.M))


@contextlib.contextmanager
def loop_device(path, *, offset: int = 0, size: int | None = None, block_size: int = 512):
    """A read-only loop device over (a window of) an image; always detached afterwards."""
    args = ["losetup", "-r", "-b", str(block_size), "-f", "--show"]
    if offset:
        args += ["-o", str(offset)]
    if size:
        args += ["--sizelimit", str(size)]
    device = subprocess.run([*args, str(path)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def differing_pages(read_a, read_b, size: int, start: int = 0) -> set[int]:
    pages = set()
    for offset in range(start, start + size, BLOCK):
        length = min(BLOCK, start + size - offset)
        a, b = read_a(offset, length), read_b(offset, length)
        if a != b:
            pages |= {offset + p for p in range(0, length, 4096) if a[p:p + 4096] != b[p:p + 4096]}
    return pages


def write_file(path, extent_file) -> None:
    """A view (vmcore) copied into a file, to open it as a dump."""
    with open(path, "wb") as f:
        for offset in range(0, extent_file.size, BLOCK):
            f.write(extent_file.read(offset, BLOCK))
