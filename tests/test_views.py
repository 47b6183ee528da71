"""Views rendered from the model, checked with independent readers (pyelftools, readelf)."""

from __future__ import annotations

import io
import struct
import json
import random
import subprocess

from elftools.elf.elffile import ELFFile

import fixturecache as fc
from dumpfs.backends import open_dump
from dumpfs.model import Dump, PageState
from dumpfs.views import build_tree
from dumpfs.extents import Extent, ExtentFile
from dumpfs.views.vmcore import build_vmcore
from synthetic import synthetic_dump, x86_64_prstatus


def page_pattern(address: int, length: int) -> bytes:
    """Deterministic bytes that differ per page, so misplaced data shows."""
    out = bytearray()
    for page in range(address // 4096, (address + length + 4095) // 4096):
        out += page.to_bytes(8, "little") * 512
    start = address % 4096
    return bytes(out[start:start + length])


def patterned_dump(spec) -> Dump:
    """(start, size, state) ranges; PRESENT ones hold page_pattern of their addresses."""
    return synthetic_dump(
        ranges=[(start, size, pattern_reader(start) if state is PageState.PRESENT else state)
                for start, size, state in spec],
        cpus={0: [x86_64_prstatus(rip=0xFFFFFFFF81000000)]},
        vmcoreinfo=b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n")


def pattern_reader(base: int):
    """A chunk reader of page_pattern from `base` on."""
    return lambda offset, length: page_pattern(base + offset, length)


def read_all(extent_file: ExtentFile) -> bytes:
    return extent_file.read(0, extent_file.size)


def test_vmcore_layout_with_zero_tail_and_excluded_hole():
    dump = patterned_dump([
        (0x0, 0x3000, PageState.PRESENT),
        (0x3000, 0x1000, PageState.ZERO),       # zero in the middle: stored as zeros
        (0x4000, 0x2000, PageState.PRESENT),
        (0x6000, 0x2000, PageState.ZERO),       # zero tail: p_filesz < p_memsz
        (0x8000, 0x4000, PageState.EXCLUDED),   # excluded: in no PT_LOAD
        (0xC000, 0x1000, PageState.PRESENT),
        (0x100000, 0x1800, PageState.PRESENT),  # after a hole, not page-sized
    ])
    image = read_all(build_vmcore(dump))
    elf = ELFFile(io.BytesIO(image))
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    assert [(s["p_paddr"], s["p_filesz"], s["p_memsz"]) for s in loads] == [
        (0x0, 0x6000, 0x8000), (0xC000, 0x1000, 0x1000), (0x100000, 0x1800, 0x1800)]
    for s in loads:
        assert s["p_offset"] % 4096 == s["p_paddr"] % 4096
        data = s.data()
        for offset in range(0, s["p_filesz"], 4096):
            address = s["p_paddr"] + offset
            expected = bytes(4096) if 0x3000 <= address < 0x4000 else page_pattern(address, 4096)
            assert data[offset:offset + 4096] == expected[:len(data[offset:offset + 4096])]
    notes = [n for s in elf.iter_segments() if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
    assert [n["n_type"] for n in notes] == ["NT_PRSTATUS", 0, 0x44460001]
    assert notes[1]["n_name"] == "VMCOREINFO"
    # the DUMPFS note names the excluded hole: JSON, NUL, then (start, end) pairs
    assert notes[2]["n_name"] == "DUMPFS"
    desc = notes[2]["n_desc"]
    desc = desc.encode("latin-1") if isinstance(desc, str) else desc
    header, _, pairs = desc.partition(b"\0")
    assert json.loads(header)["excluded"] == 1
    assert struct.unpack("<QQ", pairs[:16]) == (0x8000, 0xC000)


def test_vmcore_pn_xnum_readable_by_pyelftools_and_readelf(tmp_path):
    count = 70000
    dump = patterned_dump([(i * 0x2000, 0x1000, PageState.PRESENT) for i in range(count)])
    vmcore = build_vmcore(dump)
    path = tmp_path / "xnum.vmcore"
    path.write_bytes(read_all(vmcore))
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf.header["e_phnum"] == 0xFFFF
        assert elf.num_segments() == count + 1
        last = elf.get_segment(count)
        assert last["p_paddr"] == (count - 1) * 0x2000
        assert last.data() == page_pattern((count - 1) * 0x2000, 0x1000)
    out = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True)
    assert "70001" in out.stdout


def test_vmcore_reopens_as_the_same_dump(tmp_path):
    """vmcore of a real dump, read back by our own ELF reader *and* pyelftools."""
    source = fc.unpacked("s390x-custom", "qemu-dgm.elf.xz")
    dump = open_dump(str(source))
    path = tmp_path / "vmcore"
    vmcore = build_vmcore(dump)
    with open(path, "wb") as out:
        for offset in range(0, vmcore.size, 1 << 24):
            out.write(vmcore.read(offset, 1 << 24))
    again = open_dump(str(path))
    assert again.cpus.keys() == dump.cpus.keys()
    for n in dump.cpus:
        assert again.cpus[n].registers == dump.cpus[n].registers
    assert again.vmcoreinfo.raw == dump.vmcoreinfo.raw   # s390x: found in the lowcore, now a note
    with open(source, "rb") as f, open(path, "rb") as g:
        theirs, ours = ELFFile(f), ELFFile(g)
        (src,) = [s for s in theirs.iter_segments() if s["p_type"] == "PT_LOAD"]
        (dst,) = [s for s in ours.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert (src["p_paddr"], src["p_memsz"]) == (dst["p_paddr"], dst["p_memsz"])
        rng = random.Random(1)
        for offset in [0, src["p_filesz"] - 4096] + [rng.randrange(0, src["p_filesz"], 4096) for _ in range(64)]:
            f.seek(src["p_offset"] + offset)
            g.seek(dst["p_offset"] + offset)
            assert f.read(4096) == g.read(4096)
    again.close()
    dump.close()


def test_extent_file_random_reads_match_the_flat_image():
    rng = random.Random(7)
    extents, flat, position = [], bytearray(), 0
    for i in range(200):
        gap = rng.choice([0, 0, 1, 17, 4096])
        flat += bytes(gap)
        position += gap
        length = rng.randrange(1, 9000)
        kind = rng.choice(["bytes", "zero", "reader"])
        if kind == "bytes":
            content = bytes(rng.randrange(256) for _ in range(length))
            extents.append(Extent(position, length, content))
        elif kind == "zero":
            content = bytes(length)
            extents.append(Extent(position, length, None))
        else:
            content = page_pattern(position * 3, length)
            extents.append(Extent(position, length, pattern_reader(position * 3)))
        flat += content
        position += length
    tail = 123
    flat += bytes(tail)
    file = ExtentFile(extents, size=len(flat))
    assert file.read(0, len(flat)) == bytes(flat)
    for _ in range(2000):
        offset = rng.randrange(0, len(flat) + 10)
        length = rng.randrange(0, 20000)
        assert file.read(offset, length) == bytes(flat[offset:offset + length])


def test_tree_registers_and_memory_files():
    truth = fc.truth("x86_64-custom")
    source = fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz")
    dump = open_dump(str(source))
    tree = build_tree(dump)
    for cpu in truth["cpus"]:
        text = tree.walk(f"cpus/{cpu['cpu']}/registers").read(0, 1 << 20).decode()
        values = {name: int(value, 16) for name, value in (line.split() for line in text.splitlines())}
        assert values["rip"] == cpu["registers"]["rip"]
        assert values["rsp"] == cpu["registers"]["rsp"]
        assert "NT_PRSTATUS" in tree.walk(f"cpus/{cpu['cpu']}/notes").children
    # memory/ against the source's PT_LOADs as pyelftools reads them (QEMU: p_filesz == p_memsz)
    with open(source, "rb") as f:
        loads = [(s["p_paddr"], s["p_filesz"], s["p_offset"]) for s in ELFFile(f).iter_segments()
                 if s["p_type"] == "PT_LOAD" and s["p_filesz"]]
        memory = tree.walk("memory")
        names = [f"{start:016x}-{start + size:016x}" for start, size, _ in loads]
        assert sorted(n for n in memory.children if n != "map") == names
        assert loads[0][0] == 0
        for name, (start, size, offset) in zip(names, loads):
            for inner in sorted({0, 0x1000, size // 2 & ~0xFFF, size - 0x1000}):
                f.seek(offset + inner)
                assert memory.lookup(name).read(inner, 0x1000) == f.read(0x1000), (name, hex(inner))
    mapping = memory.lookup("map").read(0, 1 << 20).decode()
    assert [line.split()[:2] for line in mapping.splitlines()] == [[name, "present"] for name in names]
    info = tree.walk("info").read(0, 1 << 20).decode()
    assert truth["kernel_release"] in info and "x86_64" in info
    assert tree.walk("vmcoreinfo").read(0, 1 << 20).decode().startswith("OSRELEASE=")
    dump.close()
