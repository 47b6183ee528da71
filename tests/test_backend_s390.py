"""s390 stand-alone dumps (s390, s390_ext v1/v2, DASD layouts) and the dump.s390 view.

Against real data: zgetdump's own s390 dumps of the fixtures, images written
here from the fixtures' QEMU ELF memory (tests/writers/s390.py), and IBM's
zgetdump 2.16 (the oracle) reading our files and images.  zgetdump 2.16
predates the compressing ECKD dumper: it misreads s390_ext v2 zlib segments
as raw data, so v2 is checked against v1 and the ELF instead of the oracle.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import time

import pytest

import fixturecache as fc
from dumpfs.arch import s390x
from dumpfs.backends import open_dump
from dumpfs.backends import s390 as backend
from dumpfs.errors import DumpError, MemoryUnavailable
from dumpfs.model import PageState
from dumpfs.views import build_tree
from dumpfs.views.dump_s390 import build_dump_s390
from dumpfs.views.vmcore import build_vmcore
from writers import images as wi
from writers import s390 as w
from writers.loop import loop_device
from writers.tools import assert_oracle_converts_to, differing_pages, oracle, oracle_info

FOLDERS = ["s390x-custom", "s390x-debian"]
BLOCK = 16 << 20
MIB = 1 << 20
SMALL = wi.S390_MEM         # memory of the written images: the first 64 MiB of s390x-custom
T0, T1 = wi.S390_T0, wi.S390_T1


def save_area_pages(folder: str) -> set[int]:
    """The pages truth.json says zgetdump rewrote (save areas, vector save areas)."""
    record = next(d for d in fc.truth(folder)["dumps"] if d["file"] == "zgetdump.s390.xz")
    listed = re.search(r"differs from QEMU's ELF in \d+ pages \(([^;)]*)", record["notes"]).group(1)
    return {int(x, 16) for x in re.findall(r"0x[0-9a-f]+", listed)}


# -- zgetdump's real s390 dumps ---------------------------------------------------------------

@pytest.mark.parametrize("folder", FOLDERS)
def test_fixture_registers_and_header(folder):
    truth = fc.truth(folder)
    dump = open_dump(str(fc.unpacked(folder, "zgetdump.s390.xz")))
    assert (dump.meta.format, dump.meta.complete, dump.meta.problems) == ("s390", True, [])
    assert dump.meta.details["version"] == 5
    assert dump.memory.end == truth["memory_bytes"]
    assert dump.meta.kernel_release == truth["kernel_release"]
    assert dump.vmcoreinfo is not None and dump.vmcoreinfo.get("OSRELEASE") == truth["kernel_release"]
    assert sorted(dump.cpus) == [c["cpu"] for c in truth["cpus"]]
    for cpu in truth["cpus"]:
        ours = dump.cpus[cpu["cpu"]].registers
        # zgetdump -f s390 does not write the TOD programmable register into the save area
        expected = {k: v for k, v in cpu["registers"].items() if k != "todpreg"}
        assert set(expected) <= set(ours)
        assert {k: hex(ours[k]) for k in expected if ours[k] != expected[k]} == {}
        assert s390x.decode_registers(dump.cpus[cpu["cpu"]].notes) == ours
    dump.close()


@pytest.mark.parametrize("folder", FOLDERS)
def test_fixture_memory_equals_qemu_elf_but_save_areas(folder):
    s390 = open_dump(str(fc.unpacked(folder, "zgetdump.s390.xz")))
    elf = open_dump(str(fc.unpacked(folder, "qemu-dgm.elf.xz")))
    assert s390.memory.end == elf.memory.end
    assert differing_pages(s390.read_physical, elf.read_physical, elf.memory.end) == save_area_pages(folder)
    s390.close()
    elf.close()


@pytest.mark.parametrize("folder", FOLDERS)
def test_dump_s390_view_is_what_zgetdump_wrote(folder):
    """dump.s390 of the QEMU ELF, and of zgetdump's own file, equal zgetdump -f s390's bytes."""
    reference = fc.unpacked(folder, "zgetdump.s390.xz")
    for source in ("qemu-dgm.elf.xz", "zgetdump.s390.xz"):
        dump = open_dump(str(fc.unpacked(folder, source)))
        view = build_dump_s390(dump)
        assert view.size == reference.stat().st_size
        with open(reference, "rb") as f:
            read_reference = lambda offset, length: os.pread(f.fileno(), length, offset)  # noqa: E731
            assert differing_pages(view.read, read_reference, view.size) == set(), source
        dump.close()


def test_dump_s390_converts_back_with_the_oracle(elf, tmp_path):
    """zgetdump reads our dump.s390: same size and CPUs; its ELF has our memory and registers."""
    path = tmp_path / "dump.s390"
    view = build_dump_s390(elf)
    with open(path, "wb") as f:
        for offset in range(0, view.size, BLOCK):
            f.write(view.read(offset, BLOCK))
    info = oracle_info(path)
    assert info["Dump memory range"] == f"{elf.memory.end >> 20} MB"
    assert info["CPU count (online)"] == str(len(elf.cpus))
    ours = open_dump(str(path))
    out = tmp_path / "oracle.elf"
    with open(out, "wb") as f:
        assert oracle("-f", "elf", path, stdout=f).returncode == 0
    theirs = open_dump(str(out))
    vmcore = open_dump_bytes_of(build_vmcore(ours), tmp_path / "vmcore")
    assert differing_pages(theirs.read_physical, vmcore.read_physical, ours.memory.end) == set()
    assert differing_pages(theirs.read_physical, elf.read_physical,
                           ours.memory.end) == save_area_pages("s390x-custom")
    for number, cpu in elf.cpus.items():
        assert theirs.cpus[number].registers == vmcore.cpus[number].registers
        # the s390 format keeps todpreg, but zgetdump -f s390 (and so dump.s390) does not write it
        assert {k: v for k, v in theirs.cpus[number].registers.items() if k != "todpreg"} == \
            {k: v for k, v in cpu.registers.items() if k != "todpreg"}
    for dump in (ours, theirs, vmcore):
        dump.close()


def open_dump_bytes_of(extent_file, path):
    with open(path, "wb") as f:
        for offset in range(0, extent_file.size, BLOCK):
            f.write(extent_file.read(offset, BLOCK))
    return open_dump(str(path))


def test_dump_s390_only_for_s390x():
    x86 = open_dump(str(fc.unpacked("x86_64-custom", "mkdf-lzo-d31.kdump.xz")))
    assert "dump.s390" not in build_tree(x86).children
    x86.close()


def test_mounted_s390_fixture(mount):
    path = fc.unpacked("s390x-custom", "zgetdump.s390.xz")
    mp = mount(path)
    assert {"vmcore", "dump.s390", "cpus", "info"} <= set(os.listdir(mp))
    assert sorted(os.listdir(mp / "cpus")) == ["0", "1"]
    assert "s390" in (mp / "info").read_text()
    with open(path, "rb") as original, open(mp / "dump.s390", "rb") as mounted:
        assert os.fstat(mounted.fileno()).st_size == os.fstat(original.fileno()).st_size
        for offset in (0, 0x1000, 0x1000 + 0xc72000, 0x1000 + 0xc8c000, (256 << 20) - 4096):
            assert os.pread(mounted.fileno(), 8192, offset) == os.pread(original.fileno(), 8192, offset)


# -- images written here from the fixture memory --------------------------------------------


@pytest.fixture(scope="module")
def images(written):
    """plain, v1 and v2 images of the first 64 MiB, with STORE STATUS into the prefix pages."""
    kinds = {"plain": "s390-plain", "v1": "s390_ext-v1", "v2": "s390_ext-v2"}
    return {name: (written(kind).path, written(kind).facts) for name, kind in kinds.items()}


@pytest.mark.parametrize("name", ["plain", "v1", "v2"])
def test_written_image_opens(images, elf, name):
    path, image = images[name]
    dump = open_dump(str(path))
    assert dump.meta.format == ("s390" if name == "plain" else "s390_ext")
    assert dump.meta.complete and dump.meta.problems == []
    assert dump.meta.dump_time.timestamp() == 1_700_000_000
    assert dump.meta.compression == ("zlib" if name == "v2" else None)
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers     # todpreg and vectors too
    reference = w.memory_with_status(elf.read_physical, w.cpu_states(elf))
    assert differing_pages(dump.read_physical, reference, SMALL) == set()
    if name != "plain":
        written = [(s, s + n) for s, n in image.segments]
        present = [(c.start, c.end) for c in dump.memory if c.state is PageState.PRESENT]
        assert present == written
        assert dump.memory.size_in(PageState.ZERO) == SMALL - sum(n for _, n in image.segments)
    assert dump.memory.end == SMALL
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(SMALL, 1)
    dump.close()


def _merged(ranges):
    out = []
    for start, end in sorted(ranges):
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _oracle_matches(device_or_file, dump, tmp_path, fmt):
    info = oracle_info(device_or_file)
    assert info["Dump format"] == fmt
    assert info["CPU count (online)"] == str(len(dump.cpus))
    assert info["Dump memory range"] == f"{SMALL >> 20} MB"
    if fmt == "s390_ext":
        zero = [(int(a, 16), int(b, 16) + 1) for a, b, _, z in info["map"] if z]
        assert zero == [(c.start, c.end) for c in dump.memory if c.state is PageState.ZERO]
    assert_oracle_converts_to(device_or_file, dump, SMALL, tmp_path / "oracle.elf")


def test_oracle_reads_written_plain(images, tmp_path):
    path, _ = images["plain"]
    dump = open_dump(str(path))
    _oracle_matches(path, dump, tmp_path, "s390")
    dump.close()


def test_oracle_reads_written_v1_on_a_loop_device(images, tmp_path):
    path, _ = images["v1"]
    with loop_device(path) as device:
        dump = open_dump(device)
        assert dump.meta.details["block size"] == 4096
        _oracle_matches(device, dump, tmp_path, "s390_ext")
        dump.close()


def test_v2_on_a_loop_device_equals_v1(images):
    with loop_device(images["v2"][0]) as device:
        v2 = open_dump(device)
        v1 = open_dump(str(images["v1"][0]))
        assert v2.meta.complete and v2.meta.compression == "zlib"
        assert differing_pages(v2.read_physical, v1.read_physical, SMALL) == set()
        def ranges(dump, state):
            return _merged((c.start, c.end) for c in dump.memory if c.state is state)
        for state in PageState:
            assert ranges(v2, state) == ranges(v1, state)
        v1.close()
        v2.close()


# -- DASD layouts ---------------------------------------------------------------------------

def _copy(path):
    def write(f):
        with open(path, "rb") as src:
            while block := src.read(BLOCK):
                f.write(block)
    return write


def test_eckd_cdl_disk_on_a_loop_device(images, elf, tmp_path):
    """Whole disk: boot info in IPL2 -> dump partition; zgetdump reads the partition, -d the tool."""
    disk = tmp_path / "cdl.img"
    with open(disk, "wb") as f:
        start = w.eckd_cdl_disk(f, _copy(images["v1"][0]), blocks=24 + (SMALL >> 12) + 8192)
    with loop_device(disk, whole_disk=True) as device:
        dump = open_dump(device)
        assert dump.meta.details["layout"] == "ECKD CDL disk, dump partition at block 24"
        assert dump.meta.details["dump tool"] == "XECKD64 v2"
        assert dump.meta.complete
        v1 = open_dump(str(images["v1"][0]))
        assert differing_pages(dump.read_physical, v1.read_physical, SMALL) == set()
        tool = oracle("-d", device)
        assert tool.returncode == 0 and "ECKD" in tool.stderr.decode(), tool.stderr.decode()
        v1.close()
        dump.close()
    with loop_device(disk, offset=start) as partition:
        assert oracle_info(partition)["Dump format"] == "s390_ext"


def test_empty_eckd_cdl_disk_says_no_dump(tmp_path):
    disk = tmp_path / "empty.img"
    with open(disk, "wb") as f:
        w.eckd_cdl_disk(f, lambda f: None, blocks=4096)
    with pytest.raises(DumpError, match=r"no dump on .*XECKD64 v2.*holds zeros"):
        open_dump(str(disk))


def _raw_pattern(address: int, length: int) -> bytes:
    """Distinct pages; every page zero in megabytes 3, 7, 11, ... (omitted from s390_ext)."""
    out = bytearray()
    for page in range(address // 4096, (address + length + 4095) // 4096):
        zero = page % 5 == 0 or page // 256 % 4 == 3
        out += bytes(4096) if zero else (page * 0x9E3779B1 & 0xFFFFFFFF).to_bytes(4, "big") * 1024
    return bytes(out[address % 4096:address % 4096 + length])


PATTERN_CPUS = [w.CpuState({"prefix": 0x20000, "psw_addr": 0x1234, "r15": 0xF00})]
_pattern = w.memory_with_status(_raw_pattern, PATTERN_CPUS)    # as the dumper stores it


def test_eckd_ldl_and_fba_disk_images(tmp_path):
    mem = 8 * MIB
    for name, layout in [("ldl", lambda f, write: w.eckd_ldl_disk(f, write)),
                         ("fba", lambda f, write: w.fba_disk(f, write, disk_bytes=16 * MIB))]:
        disk = tmp_path / f"{name}.img"
        with open(disk, "wb") as f:
            layout(f, lambda f: w.write_s390_ext(f, _raw_pattern, mem, PATTERN_CPUS, version=1,
                                                  tod_start=T0, tod_end=T1))
        dump = open_dump(str(disk))
        assert dump.meta.complete, dump.meta.problems
        assert dump.read_physical(0x100000, 3 * MIB) == _pattern(0x100000, 3 * MIB)
        assert dump.cpus[0].registers["r15"] == 0xF00
        dump.close()
    ldl = tmp_path / "ldl-empty.img"
    with open(ldl, "wb") as f:
        w.eckd_ldl_disk(f, lambda f: None)
    with pytest.raises(DumpError, match="no dump on .*XECKD64"):
        open_dump(str(ldl))


# -- damaged input ---------------------------------------------------------------------------

def _write(path, kind="plain", mem=8 * MIB, **kwargs):
    with open(path, "wb") as f:
        if kind == "plain":
            return w.write_s390(f, _raw_pattern, mem, PATTERN_CPUS, tod_start=T0, tod_end=T1, **kwargs)
        return w.write_s390_ext(f, _raw_pattern, mem, PATTERN_CPUS, version=kind, tod_start=T0,
                                tod_end=T1, **kwargs)


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_missing_end_marker_serves_everything(tmp_path):
    path = tmp_path / "noend.s390"
    _write(path, with_end_marker=False)
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert [str(p) for p in dump.meta.problems] == ["no end marker at 0x801000: the source ends at 0x801000"]
    assert dump.read_physical(0, 8 * MIB) == _pattern(0, 8 * MIB)


@pytest.mark.parametrize("kind", ["plain", 1])
def test_truncated_image(tmp_path, kind):
    path = tmp_path / "cut.img"
    _write(path, kind)
    os.truncate(path, 0x1000 + 0x1000 + 5 * MIB + 123)
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert any("cut off" in p or "missing" in p for p in map(str, dump.meta.problems)), dump.meta.problems
    assert dump.read_physical(0x100000, 3 * MIB) == _pattern(0x100000, 3 * MIB)
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(6 * MIB, 4096)
    assert len(build_vmcore(dump).read(0, 4096)) == 4096


def test_interrupted_extended_dump_with_zeros_after_it(tmp_path):
    """No stop marker: the walk ends at the first empty header instead of crawling the zeros."""
    path = tmp_path / "interrupted.img"
    _write(path, 1, mem=64 * MIB, stop_after=1)
    with open(path, "ab") as f:
        f.truncate(os.path.getsize(path) + (512 << 20))     # sparse zeros, as after zipl -d
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert "is empty and not the last one: the dump was interrupted" in str(dump.meta.problems[0])
    first = next(c for c in dump.memory if c.state is PageState.PRESENT)
    assert dump.read_physical(first.start, 4096) == _pattern(first.start, 4096)
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(63 * MIB, 1)


def test_wrong_magic_absurd_sizes_and_cpu_count(tmp_path):
    path = tmp_path / "bad.s390"
    _write(path)
    _patch(path, 0, struct.pack(">Q", 0xA8190173618F23FC))
    with pytest.raises(DumpError, match="unknown dump format"):
        open_dump(str(path))
    _write(path)
    _patch(path, 0x18, struct.pack(">Q", 1 << 62))
    with pytest.raises(DumpError, match="mem_size 0x4000000000000000 is absurd"):
        open_dump(str(path))
    _write(path)
    _patch(path, 0x5D, struct.pack(">H", 600))
    with pytest.raises(DumpError, match="cpu_cnt 600"):
        open_dump(str(path))
    _write(path)
    _patch(path, 0x48, struct.pack(">I", 1))
    with pytest.raises(DumpError, match="31-bit"):
        open_dump(str(path))


def test_prefix_outside_memory_keeps_the_rest(tmp_path):
    path = tmp_path / "prefix.s390"
    _write(path)
    _patch(path, 0x800, struct.pack(">I", 0x7FFFF000))
    dump = open_dump(str(path))
    assert dump.cpus[0].registers == {"prefix": 0x7FFFF000} and dump.cpus[0].notes == []
    assert "CPU 0: prefix page 0x7ffff000 unreadable" in str(dump.meta.problems[0])
    assert len(build_vmcore(dump).read(0, 8192)) == 8192


def test_overlapping_segments(tmp_path):
    path = tmp_path / "overlap.img"
    image = _write(path, 1, mem=16 * MIB)
    assert len(image.segments) >= 2
    # move the second segment's start into the first one
    second = 0x2000 + image.segments[0][1]
    first_start = image.segments[0][0]
    _patch(path, second, struct.pack(">Q", first_start))
    dump = open_dump(str(path))
    assert any("overlaps the previous segment" in p for p in map(str, dump.meta.problems)), dump.meta.problems
    assert dump.read_physical(0, 16 * MIB)[:4096] == _pattern(0, 4096)
    assert [c.start for c in dump.memory] == sorted(c.start for c in dump.memory)


def test_corrupt_zlib_entry_is_unavailable_alone(tmp_path):
    path = tmp_path / "v2.img"
    image = _write(path, 2, mem=16 * MIB)
    # segment 1 is compressed; damage the first bytes of its first entry
    header_offset = 0x2000 + image.segments[0][1]
    entry0 = struct.unpack_from(">I", open(path, "rb").read()[header_offset + 0x34:header_offset + 0x38])[0]
    assert not entry0 & 0x80000000
    _patch(path, header_offset + 0x1000 + entry0 * 4096, b"\xff" * 16)
    dump = open_dump(str(path))
    start = image.segments[1][0]
    with pytest.raises(MemoryUnavailable, match="corrupt"):
        dump.read_physical(start, 4096)
    assert dump.read_physical(start + MIB, 4096) == _pattern(start + MIB, 4096)


class DecodesInFlight(dict):
    """A stand-in for S390Dump._decoding that counts the lookups finding entry (1, 0) being
    decoded: each such reader is bound to wait for that decode instead of decoding again."""

    def __init__(self):
        super().__init__()
        self.joined = threading.Semaphore(0)

    def get(self, key, default=None):
        event = super().get(key, default)
        if event is not None and key == (1, 0):
            self.joined.release()
        return event


def test_parallel_reads_of_one_zlib_entry_decode_it_once(images, monkeypatch):
    """FUSE readahead sends neighbouring requests in parallel: one decode serves them all."""
    readers = 6
    decoded = []
    in_flight = DecodesInFlight()
    original_init, original = backend.S390Dump.__init__, backend.S390Dump._decode_entry

    def watched_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._decoding = in_flight

    def held_decode(self, segment, index, key):
        decoded.append(key)
        if key == (1, 0):
            # the decode lasts until every other reader has found it in flight (or 30 s passed:
            # a reader that decodes again instead shows in `decoded`, never as a hang)
            deadline = time.monotonic() + 30
            for _ in range(readers - 1):
                in_flight.joined.acquire(timeout=max(0, deadline - time.monotonic()))
        return original(self, segment, index, key)
    monkeypatch.setattr(backend.S390Dump, "__init__", watched_init)
    monkeypatch.setattr(backend.S390Dump, "_decode_entry", held_decode)
    path, image = images["v2"]
    dump = open_dump(str(path))
    start = image.segments[1][0]
    assert (1, 0) not in decoded        # not read at open (CPUs, VMCOREINFO)
    decoded.clear()
    results = []
    threads = [threading.Thread(target=lambda k=k: results.append(dump.read_physical(start + k * 4096, 4096)))
               for k in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert decoded.count((1, 0)) == 1, decoded
    assert set(decoded) <= {(1, 0), (1, 1)}, decoded     # (1, 1): read ahead, once at most
    assert len(decoded) == len(set(decoded)), decoded
    v1 = open_dump(str(images["v1"][0]))
    assert sorted(results) == sorted(v1.read_physical(start + k * 4096, 4096) for k in range(readers))
    v1.close()
    dump.close()


def test_closing_the_dump_stops_its_read_ahead_thread(images):
    """Sequential reads of a compressed segment start a read-ahead thread; closing the dump ends it."""
    import threading

    def read_ahead_threads():
        return [t for t in threading.enumerate() if t.name.startswith("s390-zlib")]
    path, image = images["v2"]
    dump = open_dump(str(path))
    start, length = image.segments[1][:2]
    assert length >= 3 * MIB
    for k in range(3):                      # whole entries in order: the next one is decoded ahead
        dump.read_physical(start + k * MIB, MIB)
    assert read_ahead_threads()
    dump.close()
    assert not read_ahead_threads()
