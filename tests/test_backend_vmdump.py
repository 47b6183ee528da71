"""z/VM VMDUMP spool files (vmdump.md), written here from the s390x-custom fixture memory.

The writer (tests/writers/vmdump.py) leaves out all-zero pages, as VMDUMP
does, so the reader's sparse page location is checked page for page against
the QEMU ELF.  The oracle, IBM zgetdump 2.16, predates zgetdump's VMDUMP
reader (added in 2023 with s390-tools 2.29), so there is no oracle check
here; the test pins that it still refuses these files.
"""

from __future__ import annotations

import os
import struct

import pytest

import fixturecache as fc
from conftest import assert_info_refuses
from dumpfs.arch import s390x
from dumpfs.backends import open_dump
from dumpfs.errors import DumpError, MemoryUnavailable
from dumpfs.model import PageState
from dumpfs.views.vmcore import build_vmcore
from writers import images as wi
from writers import vmdump as wv
from writers.tools import differing_pages, oracle, write_file

SIZE = wi.VMDUMP_MEM
GROUP = 16 << 20
TOD = wi.VMDUMP_TOD


_registers = wi.vmdump_registers          # what VMDUMP carries: everything but the vector registers


@pytest.fixture(scope="module")
def images(written):
    kinds = {"big": "vmdump", "classic": "vmdump-classic", "ranges": "vmdump-ranges"}
    return {name: (written(kind).path, written(kind).facts) for name, kind in kinds.items()}


@pytest.mark.parametrize("name", ["big", "classic", "ranges"])
def test_written_vmdump_opens(images, elf, name):
    path, facts = images[name]
    dump = open_dump(str(path))
    assert (dump.meta.format, dump.meta.complete, dump.meta.problems) == ("vmdump", True, [])
    assert dump.meta.details["version"] == (2 if name != "classic" else 0x82)
    assert dump.meta.details["stored pages"] == facts["stored_pages"]
    assert dump.meta.dump_time.timestamp() == 1_700_000_000
    assert dump.memory.end == SIZE
    assert differing_pages(dump.read_physical, elf.read_physical, SIZE) == set()
    assert dump.meta.kernel_release == fc.truth("s390x-custom")["kernel_release"]
    for number, registers in enumerate(_registers(elf)):
        assert dump.cpus[number].registers == registers
        assert s390x.decode_registers(dump.cpus[number].notes) == registers
    if name == "big":
        zero = [(c.start, c.end) for c in dump.memory if c.state is PageState.ZERO]
        unkeyed = [(g * GROUP, (g + 1) * GROUP) for g in range(SIZE // GROUP) if g not in facts["groups"]]
        assert sum(e - s for s, e in zero) == sum(e - s for s, e in unkeyed) > 0
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(SIZE, 1)
    dump.close()


def test_vmcore_of_vmdump_has_notes_and_memory(images, elf, tmp_path):
    dump = open_dump(str(images["big"][0]))
    write_file(tmp_path / "vmcore", build_vmcore(dump))
    again = open_dump(str(tmp_path / "vmcore"))
    assert differing_pages(again.read_physical, elf.read_physical, SIZE) == set()
    for number, registers in enumerate(_registers(elf)):
        assert again.cpus[number].registers == registers
    again.close()
    dump.close()


def test_oracle_2_16_has_no_vmdump_reader(images):
    done = oracle("-i", images["big"][0])
    assert done.returncode != 0 and b"No valid dump found" in done.stderr


def test_mounted_vmdump(images, elf, mount):
    mp = mount(images["big"][0])
    assert {"vmcore", "cpus", "info"} <= set(os.listdir(mp))
    assert sorted(os.listdir(mp / "cpus")) == ["0", "1"]
    assert "vmdump" in (mp / "info").read_text()
    mounted = open_dump(str(mp / "vmcore"))
    assert differing_pages(mounted.read_physical, elf.read_physical, SIZE) == set()
    assert mounted.cpus[1].registers == _registers(elf)[1]
    mounted.close()


def test_big_guest_with_two_index_pages_is_indexed_lazily(elf, tmp_path, monkeypatch):
    """A 600 GiB guest with four groups stored, two past the first index page (512 GiB)."""
    from dumpfs.backends import vmdump

    size = 600 << 30
    groups = {0, 3, 32768 + 5, 32768 + 100}

    def read(address, length):          # fixture memory, repeated in each stored group
        return elf.read_physical(address % (4 * GROUP), length)
    path = tmp_path / "big.vmdump"
    with open(path, "wb") as f:
        facts = wv.write_vmdump(f, read, size, _registers(elf), tod=TOD, only_groups=groups)
    monkeypatch.setattr(vmdump, "EAGER_KEY_PAGES", 0)      # as if it were huge: count nothing at open
    dump = open_dump(str(path))
    assert dump.memory.end == size and dump.meta.complete
    assert "not counted at open" in dump.meta.details["stored pages"]
    for g in sorted(groups, reverse=True):
        address = g * GROUP
        assert dump.read_physical(address, GROUP) == read(address, GROUP)
    assert dump.read_physical(7 * GROUP, 4096) == bytes(4096)
    assert dump.memory.size_in(PageState.PRESENT) == len(facts["groups"]) * GROUP
    dump.close()


# -- damaged input ---------------------------------------------------------------------------

def _small(path, elf, **kwargs):
    with open(path, "wb") as f:
        return wv.write_vmdump(f, elf.read_physical, 32 << 20, _registers(elf), tod=TOD, **kwargs)


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_truncated_vmdump_serves_what_it_has(elf, tmp_path):
    path = tmp_path / "cut.vmdump"
    facts = _small(path, elf)
    keep = facts["stored_pages"] // 2
    os.truncate(path, facts["data_start"] + keep * 4096 + 100)
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert [str(p) for p in dump.meta.problems] == [f"{facts['stored_pages'] - keep} of {facts['stored_pages']} "
                                  f"stored pages are missing: the file ends at {os.path.getsize(path):#x}"]
    missing = [c for c in dump.memory if c.state is PageState.MISSING]
    assert missing and missing[0].start > 0
    assert dump.read_physical(0, missing[0].start) == elf.read_physical(0, missing[0].start)
    with pytest.raises(MemoryUnavailable, match="missing"):
        dump.read_physical(missing[0].start, 4096)
    assert len(build_vmcore(dump).read(0, 4096)) == 4096
    dump.close()


@pytest.mark.parametrize("what, offset, data, message", [
    ("fmbk", 0x1000, b"XXXXXXXX", "record 2 is not an FMBK"),
    ("asizbk", None, b"XXXXXXXX", "invalid ASIZBK record"),
    ("esa", 2 * 4096 + 0xBB, b"\x00", "31-bit ESA/390 VMDUMP"),
    ("format", 2 * 4096 + 0xBB, b"\x07", "unknown VMDUMP FIR format 0x07"),
    ("size", None, None, "storage size 0x4000000000000000 is absurd"),
    ("records", 0x1010, struct.pack(">I", 0x7FFFFFFF), "FMBK record numbers are absurd"),
])
def test_damaged_vmdump_one_line(elf, tmp_path, what, offset, data, message):
    path = tmp_path / f"{what}.vmdump"
    _small(path, elf)
    access = struct.unpack(">I", open(path, "rb").read()[0x1010:0x1014])[0]
    if what == "asizbk":
        offset = access * 4096
    if what == "size":
        offset, data = access * 4096 + 0x48, struct.pack(">Q", 1 << 62)
    _patch(path, offset, data)
    with pytest.raises(DumpError, match=message):
        open_dump(str(path))
    assert_info_refuses(path, message)


def test_vmdump_cut_inside_the_page_map(elf, tmp_path):
    path = tmp_path / "map.vmdump"
    facts = _small(path, elf)
    os.truncate(path, facts["data_start"] - 100)
    with pytest.raises(DumpError, match="truncated: the page map ends"):
        open_dump(str(path))
