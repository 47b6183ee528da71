"""LKCD v8 s390 dumps (old zfcpdump, vmconvert) and legacy plain s390 headers, written here from
the s390x-custom fixture memory, read by dumpfs and by the oracle (IBM zgetdump 2.16 reads LKCD).
"""

from __future__ import annotations

import os
import struct

import pytest

from conftest import assert_info_refuses
from dumpfs.backends import open_dump
from dumpfs.errors import DumpError, MemoryUnavailable, Severity
from dumpfs.model import PageState
from dumpfs.views.vmcore import build_vmcore
from writers import images as wi
from writers import lkcd as wl
from writers import s390 as ws
from writers.tools import differing_pages, oracle, oracle_info, write_file

SIZE = wi.LKCD_MEM
T0, T1 = ws.tod(1_700_000_000), ws.tod(1_700_000_005)


@pytest.fixture(scope="module")
def images(written):
    return {name: written(f"lkcd-{name}").path for name in ("full", "zlib", "flex")}


@pytest.mark.parametrize("name", ["full", "zlib", "flex"])
def test_written_lkcd_opens(images, elf, name):
    dump = open_dump(str(images[name]))
    assert (dump.meta.format, dump.meta.complete, dump.meta.problems) == ("lkcd", True, [])
    assert dump.meta.writer == "zfcpdump (v1/v2)"
    assert dump.meta.compression == (None if name == "full" else "zlib")
    assert dump.meta.dump_time.timestamp() == 1_700_000_000
    assert dump.memory.end == SIZE
    reference = ws.memory_with_status(elf.read_physical, ws.cpu_states(elf))
    assert differing_pages(dump.read_physical, reference, SIZE) == set()
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers      # todpreg and vectors too
    if name == "flex":
        assert dump.memory.size_in(PageState.ZERO) > 0
    dump.close()


@pytest.mark.parametrize("name", ["full", "zlib", "flex"])
def test_oracle_reads_written_lkcd(images, tmp_path, name):
    """-i on all; -f elf not on "flex": zgetdump 2.16 aborts ("Dump page index broken") when a
    64 KiB block inside a chunk has no page record, which our sparse file has."""
    path = images[name]
    dump = open_dump(str(path))
    info = oracle_info(path)
    assert info["Dump format"] == "lkcd"
    assert info["Dump memory range"] == f"{SIZE >> 20} MB"
    assert info["CPU count (online)"] == str(len(dump.cpus))
    if name == "flex":
        return
    out = tmp_path / "oracle.elf"
    with open(out, "wb") as f:
        assert oracle("-f", "elf", path, stdout=f).returncode == 0
    theirs = open_dump(str(out))
    write_file(tmp_path / "vmcore", build_vmcore(dump))
    ours = open_dump(str(tmp_path / "vmcore"))
    assert differing_pages(theirs.read_physical, ours.read_physical, SIZE) == set()
    for number in dump.cpus:
        assert theirs.cpus[number].registers == ours.cpus[number].registers
    for d in (dump, theirs, ours):
        d.close()


def test_mounted_lkcd(images, elf, mount):
    mp = mount(images["flex"])
    assert sorted(os.listdir(mp / "cpus")) == ["0", "1"]
    assert "lkcd" in (mp / "info").read_text()
    mounted = open_dump(str(mp / "vmcore"))
    reference = ws.memory_with_status(elf.read_physical, ws.cpu_states(elf))
    assert differing_pages(mounted.read_physical, reference, SIZE) == set()
    assert mounted.cpus[0].registers == elf.cpus[0].registers
    mounted.close()


# -- damaged and unusual LKCD ----------------------------------------------------------------

def _pattern(address, length):
    out = bytearray()
    for page in range(address // 4096, (address + length + 4095) // 4096):
        out += bytes(4096) if page % 3 == 0 else (page * 2654435761 & 0xFFFFFFFF).to_bytes(4, "big") * 1024
    return bytes(out[address % 4096:address % 4096 + length])


CPU = [ws.CpuState({"prefix": 0x10000, "psw_addr": 0x1234, "r15": 0xF00})]


def _write(path, **kwargs):
    with open(path, "wb") as f:
        wl.write_lkcd(f, _pattern, 4 << 20, CPU, **kwargs)


def test_lkcd_without_asm_header_has_no_cpus(tmp_path):
    path = tmp_path / "noasm.lkcd"
    _write(path, with_asm=False)
    dump = open_dump(str(path))
    assert dump.cpus == {} and "no s390 asm header" in str(dump.meta.problems[0])
    assert dump.meta.problems[0].severity is Severity.WARNING and dump.meta.complete
    assert dump.read_physical(0x1000, 8192) == ws.memory_with_status(_pattern, CPU)(0x1000, 8192)


def test_truncated_lkcd(tmp_path):
    path = tmp_path / "cut.lkcd"
    _write(path, compress=True, skip_zero=True)
    os.truncate(path, 0x10000 + (os.path.getsize(path) - 0x10000) // 2)
    dump = open_dump(str(path))
    assert not dump.meta.complete and "is cut off" in str(dump.meta.problems[0])
    missing = [c for c in dump.memory if c.state is PageState.MISSING]
    assert missing and missing[-1].end == 4 << 20
    assert dump.cpus[0].registers["r15"] == 0xF00          # the prefix page survived the cut
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(missing[0].start, 4096)


def test_lkcd_vmconvert_duplicate_last_page_ends_the_dump(tmp_path):
    path = tmp_path / "dup.lkcd"
    _write(path, with_end=False)
    with open(path, "r+b") as f:
        f.seek(-4112, os.SEEK_END)
        last = f.read(4112)
        f.write(last)                       # the last page again instead of the end record
    os.truncate(path, os.path.getsize(path) + 1)   # no longer the "full dump" size
    dump = open_dump(str(path))
    assert dump.meta.complete, dump.meta.problems
    assert dump.read_physical(0, 4 << 20) == ws.memory_with_status(_pattern, CPU)(0, 4 << 20)


@pytest.mark.parametrize("offset, data, message", [
    (0x248, b"i386\0", "LKCD dump of a 'i386' machine"),
    (0x28, struct.pack(">Q", 1 << 62), "mem_end 0x4000000000000000 is absurd"),
    (0x2D2, struct.pack(">I", 9), "dump_compress 9 is unknown"),
    (0x2DE + 0x10, struct.pack(">H", 600), "cpu_cnt 600 exceeds 512"),
])
def test_damaged_lkcd_one_line(tmp_path, offset, data, message):
    path = tmp_path / "bad.lkcd"
    _write(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    assert_info_refuses(path, message)


# -- legacy plain s390 headers ---------------------------------------------------------------

@pytest.mark.parametrize("version, arch", [(1, 0), (3, 2), (4, 2)])
def test_legacy_s390_header_versions(tmp_path, version, arch):
    path = tmp_path / f"v{version}.s390"
    with open(path, "wb") as f:
        wl.write_legacy_s390(f, _pattern, 4 << 20, version=version, arch=arch, tod_start=T0, tod_end=T1)
    with open(path, "r+b") as f:        # stale bytes where version 5 has cpu_cnt: must be ignored
        f.seek(0x5D)
        f.write(struct.pack(">H", 7))
    dump = open_dump(str(path))
    assert (dump.meta.format, dump.meta.complete) == ("s390", True)
    assert dump.meta.writer == "old stand-alone dump tool"
    assert dump.meta.details["legacy header"].startswith(f"version {version} (before 5)")
    assert dump.cpus == {}
    assert dump.read_physical(0, 4 << 20) == _pattern(0, 4 << 20)


def test_non_extended_multi_volume_volume_0(tmp_path):
    """ZMULT64: volume 0 holds [0, slice); the rest is on volumes not given: MISSING."""
    path = tmp_path / "vol0.s390"
    with open(path, "wb") as f:
        wl.write_legacy_s390(f, _pattern, 8 << 20, version=5, arch=2, tod_start=T0, tod_end=T1,
                             mv_volume=0, slice_size=3 << 20)
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert "other volumes of the non-extended multi-volume dump" in str(dump.meta.problems[0])
    assert dump.meta.writer == "non-extended multi-volume dump tool (ZMULT64)"
    assert dump.read_physical(0, 3 << 20) == _pattern(0, 3 << 20)
    assert [(c.start, c.state) for c in dump.memory if c.state is PageState.MISSING] == \
        [(3 << 20, PageState.MISSING)]
    second = tmp_path / "vol1.s390"
    with open(second, "wb") as f:
        wl.write_legacy_s390(f, _pattern, 8 << 20, version=5, arch=2, tod_start=T0, tod_end=T1,
                             mv_volume=1, slice_size=3 << 20)
    with pytest.raises(DumpError, match="volume 1 of a non-extended multi-volume dump"):
        open_dump(str(second))
