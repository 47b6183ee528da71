"""The tape *device* path: sequential reads where one read() is one block and an empty
read is a tapemark.

No tape drive (and no kernel module to emulate one) is available here, so a
SOCK_SEQPACKET socket stands in for the character device: it keeps message
boundaries and delivers empty messages as empty reads, exactly the semantics
the reader relies on.  The position ioctls are absent, as on any non-tape fd.
"""

from __future__ import annotations

import socket
import threading

import pytest

from dumpfs.backends import tape
from dumpfs.model import MemoryUnavailable, PageState
from writers import s390 as w
from writers import tape as t
from writers.tools import differing_pages

MEM = 16 << 20
T0, T1 = w.tod(1_700_000_300), w.tod(1_700_000_301)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def play(blocks):
    """A 'tape drive' playing `blocks` (None = tapemark); returns the reading end's socket."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def run():
        try:
            for block in blocks:
                writer.send(b"" if block is t.TAPEMARK else block)
        finally:
            writer.close()

    threading.Thread(target=run, daemon=True).start()
    return reader


def test_tape_device_is_read_once_into_the_cache(elf, cache_dir):
    cpus = w.cpu_states(elf)
    blocks = list(t.dump_blocks(elf.read_physical, MEM, cpus, tod_start=T0, tod_end=T1))
    drive = play(blocks)
    dump = tape.read_tape(drive.fileno(), "/dev/ntibm0")
    drive.close()
    assert dump.meta.complete, dump.meta.problems
    assert dump.memory.end == MEM
    assert differing_pages(dump.read_physical, w.memory_with_status(elf.read_physical, cpus), MEM) == set()
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers
    assert list(cache_dir.rglob("*.s390")), "the data went to the cache file"
    dump.close()


def test_truncated_tape_serves_what_arrived(elf):
    cpus = w.cpu_states(elf)
    blocks = list(t.dump_blocks(elf.read_physical, MEM, cpus, tod_start=T0, tod_end=T1))
    cut = blocks[:3 + 100]          # tool, tapemark, header, then 100 blocks of 32 KiB
    drive = play(cut)
    dump = tape.read_tape(drive.fileno(), "/dev/ntibm0")
    drive.close()
    assert not dump.meta.complete
    assert any("truncated" in p for p in map(str, dump.meta.problems)), dump.meta.problems
    arrived = 100 * t.TAPE_BLOCK
    assert dump.read_physical(arrived - 4096, 4096) == w.memory_with_status(
        elf.read_physical, cpus)(arrived - 4096, 4096)
    assert dump.memory.chunk_at(arrived).state is PageState.MISSING
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(arrived, 4096)
    dump.close()
