"""Millions of memory runs stay cheap: a kdump whose bitmaps are random bits (issue 9).

The 2 MiB mutant (tests/fuzz.py, generator "kdump-random-bitmaps") describes
1.8 million runs of pages.  Held as a Python object each, `info` took 750 MB
and 20 s; as columns of the run table it takes a few bytes a run.  The bounds
below are generous: a return to an object per run breaks them by far.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys

import pytest

import fuzz
from conftest import DUMPFS, is_mounted, run_dumpfs, unmount
from dumpfs.backends import kdump, open_dump
from dumpfs.errors import MemoryUnavailable
from dumpfs.extents import SourceRange
from dumpfs.model import Memory, MemoryChunk, PageState
from dumpfs.views.memory import MAX_RANGE_FILES

RSS_CAP_MIB = 400               # measured: 170 MB (before the run table: 750 MB)
TIMEOUT = 180                   # measured: a few seconds (before: 20 s to a minute)
RUNS = 1_835_275                # runs in the mutant's memory map

# `dumpfs ARGS` as a child of a fresh interpreter, which prints the child's exit status, peak
# RSS and output: RUSAGE_CHILDREN of the test process would count every earlier child too
MEASURED = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": done.returncode, "rss_kib": peak, "stdout": done.stdout, "stderr": done.stderr}))
"""


@pytest.fixture(scope="module")
def mutant(tmp_path_factory):
    _seed, files = fuzz.GENERATORS["kdump-random-bitmaps"]([])
    path = tmp_path_factory.mktemp("runs") / "random-bitmaps.kdump"
    path.write_bytes(files[0])
    return path


def measured(*args) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURED, *DUMPFS, *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_info_of_random_bitmaps_is_cheap(mutant):
    run = measured("info", "--json", mutant)
    assert run["code"] == 0 and run["stderr"] == "", run["stderr"][-2000:]
    info = json.loads(run["stdout"])
    assert info["memory"]["chunks"] == RUNS
    assert info["memory"]["range_count"] > len(info["memory"]["ranges"])
    assert run["rss_kib"] < RSS_CAP_MIB << 10, f"peak RSS {run['rss_kib'] >> 10} MiB"


def test_mount_of_random_bitmaps_stays_bounded(mutant, mountpoint):
    done = run_dumpfs("mount", mutant, mountpoint, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    try:
        names = os.listdir(mountpoint / "memory")
        assert "map" in names and len(names) <= MAX_RANGE_FILES + 1
        map_size = (mountpoint / "memory" / "map").stat().st_size
        with open(mountpoint / "memory" / "map", "rb") as f:
            head = f.read(1 << 16)
            f.seek(map_size - (1 << 16))
            tail = f.read()
        lines = head.splitlines()[:-1] + tail.splitlines()[1:]
        assert all(line.split()[1] in (b"present", b"excluded", b"missing") for line in lines)
        assert tail.endswith(b"\n") and len(tail) == 1 << 16
        with open(mountpoint / "vmcore", "rb") as f:
            header = f.read(8192)
            assert header[:4] == b"\x7fELF"
            phnum, = struct.unpack_from("<H", header, 56)
            assert phnum > 10_000       # a PT_LOAD per present stretch (17,315)
            p_type, _, p_offset = struct.unpack_from("<IIQ", header, 64 + 56)
            assert p_type == 1          # the first PT_LOAD: its pages read, or fail with EIO
            f.seek(p_offset)
            try:
                assert len(f.read(16384)) == 16384
            except OSError as exc:
                assert exc.errno == errno.EIO, exc
        assert "Dump format" in (mountpoint / "info").read_text()    # the daemon is alive
    finally:
        unmount(mountpoint)
        assert not is_mounted(mountpoint)


def test_run_table_gives_back_the_chunks_and_reads_like_them():
    """Chunks in, the same chunks out (made on demand); reads join runs that continue each
    other in one reader, and zero-filled reads fill holes and gaps."""
    flat = bytes(range(256)) * 64
    read = lambda offset, length: flat[offset:offset + length]     # noqa: E731
    chunks = [MemoryChunk(0x1000, 0x1000, PageState.PRESENT, SourceRange(read, 0)),
              MemoryChunk(0x2000, 0x1000, PageState.PRESENT, SourceRange(read, 0x1000)),
              MemoryChunk(0x3000, 0x800, PageState.ZERO),
              MemoryChunk(0x3800, 0x800, PageState.EXCLUDED),
              MemoryChunk(0x6000, 0x1000, PageState.PRESENT, read),
              MemoryChunk(0x7000, 0x1000, PageState.MISSING)]
    memory = Memory(list(reversed(chunks)))
    assert [(c.start, c.size, c.state) for c in memory.chunks] == [(c.start, c.size, c.state) for c in chunks]
    assert memory.chunks[-2].read is read and memory.chunks[1].read(0, 4) == flat[0x1000:0x1004]
    assert memory.read_physical(0x1800, 0x2000) == flat[0x800:0x2000] + bytes(0x800)
    assert memory.size_in(PageState.PRESENT) == 0x3000 and memory.end == 0x8000
    assert memory.ranges() == [(0x1000, 0x4000), (0x6000, 0x8000)]
    expected = bytes(0x1000) + flat[:0x2000] + bytes(0x3000) + flat[:0x1000] + bytes(0x2000)
    assert memory.read_zero_filled(0, 0x9000) == expected
    assert memory.hole_at(0x3900) is PageState.EXCLUDED and memory.hole_at(0x4000) is PageState.MISSING
    with pytest.raises(MemoryUnavailable):
        memory.read_physical(0x3000, 0x1000)


def test_runs_past_the_bound_are_cut_with_one_problem(mutant, monkeypatch):
    monkeypatch.setattr(kdump, "MAX_MEMORY_RUNS", 100_000)
    monkeypatch.setattr(kdump, "BITMAP_PIECE", 16 << 10)
    dump = open_dump(str(mutant))
    runs = dump.memory.runs
    assert len(runs) <= 100_001
    cut = runs.starts[-1]
    assert cut > 0 and runs.state(len(runs) - 1) is PageState.MISSING and runs.end == 16 << 30
    assert [p.text for p in dump.meta.problems if "runs of pages" in p.text] == [
        f"the kdump bitmaps hold more than 100000 runs of pages; memory from {cut:#x} on is not served"]
    assert all(a + n <= b for a, n, b in zip(runs.starts, runs.sizes, runs.starts[1:]))
    dump.close()
