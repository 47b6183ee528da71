"""Helpers for the written-image tests: the oracle (IBM zgetdump 2.16), page diffs, views to files."""

from __future__ import annotations

import os
import re
import subprocess

import fixturecache as fc

BLOCK = 16 << 20


def oracle(*args, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = dict(os.environ, ORACLE_QUIET="1")
    return subprocess.run([str(fc.ORACLE), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=600, env=env)


def oracle_info(path) -> dict:
    """`zgetdump -i -V` (it reports on stderr) as label -> value, plus "map": the memory map rows."""
    done = oracle("-i", "-V", path)
    text = done.stderr.decode()
    assert done.returncode == 0, text
    fields = dict(re.findall(r"^  ([A-Za-z ()]+?)\.*: (.*)$", text, re.M))
    fields["map"] = re.findall(r"^  ([0-9a-f]{16}) - ([0-9a-f]{16}) \((\d+) MB( zeroes)?\)", text, re.M)
    return fields




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


def assert_oracle_converts_to(source, dump, size: int, out, *, ignore=()) -> None:
    """`zgetdump -f elf SOURCE` holds `dump`'s first `size` bytes of memory and its registers
    (but those named in `ignore`)."""
    from dumpfs.backends import open_dump
    with open(out, "wb") as f:
        done = oracle("-f", "elf", source, stdout=f)
    assert done.returncode == 0, done.stderr.decode()
    theirs = open_dump(str(out))
    try:
        assert differing_pages(theirs.read_physical, dump.read_physical, size) == set()
        for number, cpu in dump.cpus.items():
            kept = {k: v for k, v in cpu.registers.items() if k not in ignore}
            assert {k: v for k, v in theirs.cpus[number].registers.items() if k not in ignore} == kept
    finally:
        theirs.close()
