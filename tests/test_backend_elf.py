"""ELF vmcore backend against the real fixtures and synthetic edge cases (PN_XNUM, e_phoff)."""

from __future__ import annotations

import struct

import pytest
from elftools.elf.elffile import ELFFile

import fixturecache as fc
from dumpfs.backends import open_dump
from dumpfs.errors import DamagedDump, MemoryUnavailable, NoDump, Severity, Unsupported
from dumpfs.model import PageState

ELF_DUMPS = [(folder, d["file"]) for folder, d in fc.all_dumps() if d["format"] == "elf"]

# registers every dump carries (the ground truth has more: QEMU's `info registers`)
REQUIRED = {
    "x86_64": ["rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r15",
               "rflags", "cs", "ss", "gs_base"],
    "s390x": ["psw_mask", "psw_addr", "r0", "r15", "a0", "c0", "c13", "prefix", "fpc", "f0",
              "cpu_timer", "clock_comparator", "todpreg", "v0", "v31"],
}


def compare_registers(dump, truth):
    assert len(dump.cpus) == truth["cpu_count"]
    for cpu in truth.get("cpus", []):
        ours = dump.cpus[cpu["cpu"]].registers
        for name in REQUIRED[truth["arch"]]:
            assert name in ours, f"cpu {cpu['cpu']}: {name} missing"
        common = [name for name in cpu["registers"] if name in ours]
        mismatched = {n: (hex(ours[n]), hex(cpu["registers"][n]))
                      for n in common if ours[n] != cpu["registers"][n]}
        assert not mismatched, f"cpu {cpu['cpu']}: (ours, truth) {mismatched}"


@pytest.mark.parametrize("folder,name", ELF_DUMPS, ids=[f"{f}/{n}" for f, n in ELF_DUMPS])
def test_elf_fixture_registers_and_release(folder, name):
    truth = fc.truth(folder)
    dump = open_dump(str(fc.unpacked(folder, name)))
    assert dump.arch.name == truth["arch"]
    compare_registers(dump, truth)
    assert dump.meta.kernel_release == truth["kernel_release"]
    assert dump.vmcoreinfo is not None, "VMCOREINFO: from the note, or on s390x from the lowcore"
    assert dump.vmcoreinfo.get("OSRELEASE") == truth["kernel_release"]
    dump.close()


@pytest.mark.parametrize("folder,name", ELF_DUMPS, ids=[f"{f}/{n}" for f, n in ELF_DUMPS])
def test_elf_memory_matches_pyelftools(folder, name):
    """Every PT_LOAD's bytes, as an independent reader (pyelftools) sees them."""
    path = fc.unpacked(folder, name)
    dump = open_dump(str(path))
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads
        for segment in loads:
            paddr, filesz, memsz = segment["p_paddr"], segment["p_filesz"], segment["p_memsz"]
            for offset in sorted({0, filesz // 2 & ~0xfff, max(filesz - 4096, 0)}):
                if offset >= filesz:
                    continue
                f.seek(segment["p_offset"] + offset)
                assert dump.read_physical(paddr + offset, 4096) == f.read(4096)
            if memsz > filesz:
                assert dump.read_physical(paddr + filesz, min(4096, memsz - filesz)) == bytes(
                    min(4096, memsz - filesz))
    top = dump.memory.end
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(top, 1)
    dump.close()


def test_marker_string_in_memory():
    """The ground truth's env marker is at the recorded physical page (via the guest pagemap)."""
    truth = fc.truth("x86_64-custom")
    dump = open_dump(str(fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz")))
    needle = truth["markers"]["kmsg"].encode()
    # the kernel log text is in the printk ring: somewhere in present memory
    found = False
    for chunk in dump.memory:
        if chunk.state is not PageState.PRESENT:
            continue
        for offset in range(0, chunk.size, 1 << 24):
            block = chunk.read(offset, min(1 << 24, chunk.size - offset) + 256)
            if needle in block:
                found = True
                break
        if found:
            break
    assert found
    dump.close()


# -- synthetic ELF files: layouts no fixture has -----------------------------------

def make_elf(path, loads, *, phoff=64, xnum=False, machine=62, data=b""):
    """A minimal little-endian ELF64 core with the given (paddr, filesz, memsz, offset) PT_LOADs."""
    phnum = len(loads)
    shoff = phoff + 56 * phnum if xnum else 0
    ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 4, machine, 1, 0, phoff,
                       shoff, 0, 64, 56, 0xFFFF if xnum else phnum, 64 if xnum else 0,
                       1 if xnum else 0, 0)
    with open(path, "wb") as f:
        f.write(ehdr)
        f.seek(phoff)
        for paddr, filesz, memsz, offset in loads:
            f.write(struct.pack("<IIQQQQQQ", 1, 7, offset, paddr, paddr, filesz, memsz, 4096))
        if xnum:
            f.write(struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
        for paddr, filesz, memsz, offset in loads:
            if filesz:
                f.seek(offset)
                f.write(data[:filesz] if data else (paddr // 4096 % 251).to_bytes(1, "little") * filesz)


def test_pn_xnum_program_header_count(tmp_path):
    """More than 65535 PT_LOADs: the count comes from section header 0's sh_info."""
    count = 70000
    base = 0x200000 + 56 * count
    loads = [(i * 8192, 4096, 4096, base + i * 4096) for i in range(count)]
    path = tmp_path / "xnum.elf"
    make_elf(path, loads, xnum=True)
    dump = open_dump(str(path))
    assert len(dump.memory.chunks) == count
    assert dump.read_physical(8192 * 69999, 4096) == (69999 * 2 % 251).to_bytes(1, "little") * 4096
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(4096, 1)      # the gap between two PT_LOADs
    dump.close()


def test_program_headers_after_section_headers(tmp_path):
    path = tmp_path / "phoff.elf"
    make_elf(path, [(0, 8192, 16384, 0x1000)], phoff=0x400)
    dump = open_dump(str(path))
    assert [(c.start, c.size, c.state) for c in dump.memory] == [
        (0, 8192, PageState.PRESENT), (8192, 8192, PageState.ZERO)]
    dump.close()


def test_overlapping_aliases_are_kept_once(tmp_path):
    """paging=true dumps map one physical page from several virtual ranges."""
    path = tmp_path / "alias.elf"
    make_elf(path, [(0, 8192, 8192, 0x1000), (4096, 8192, 8192, 0x3000)])
    dump = open_dump(str(path))
    assert [(c.start, c.end) for c in dump.memory] == [(0, 8192), (8192, 12288)]
    assert len(dump.read_physical(0, 12288)) == 12288
    dump.close()


@pytest.mark.parametrize("mutate,message,kind", [
    (lambda b: b[:40], "truncated", DamagedDump),
    (lambda b: b[:4] + b"\x01" + b[5:], "32-bit", Unsupported),
    (lambda b: b[:16] + b"\x02\x00" + b[18:], "not a core", NoDump),
    (lambda b: b[:18] + b"\x28\x00" + b[20:], "machine 40", Unsupported),
])
def test_bad_headers(tmp_path, mutate, message, kind):
    good = tmp_path / "good.elf"
    make_elf(good, [(0, 4096, 4096, 0x1000)])
    bad = tmp_path / "bad.elf"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(kind, match=message):
        open_dump(str(bad))


def test_truncated_memory_is_reported_not_invented(tmp_path):
    path = tmp_path / "cut.elf"
    make_elf(path, [(0, 16384, 16384, 0x1000)])
    data = path.read_bytes()
    path.write_bytes(data[:0x1000 + 8192])
    dump = open_dump(str(path))
    assert not dump.meta.complete and "file ends" in str(dump.meta.problems[0])
    assert dump.meta.problems[0].severity is Severity.DAMAGE
    assert len(dump.read_physical(0, 8192)) == 8192
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(8192, 4096)
    dump.close()


def test_detection_imports_only_the_backends_whose_magic_matches(tmp_path):
    """The registry reads the header once and imports a backend module only on a magic match."""
    import subprocess
    import sys
    path = tmp_path / "lazy.elf"
    make_elf(path, [(0, 4096, 4096, 0x1000)])
    code = ("import sys\nfrom dumpfs.backends import open_dump\n"
            f"open_dump({str(path)!r}).close()\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('dumpfs.backends.'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.rsplit(".", 1)[1] for name in done.stdout.split()}
    assert "elf" in loaded
    assert not loaded & {"flattened", "kdump", "vmdump", "lkcd", "scsi", "s390mv", "tape", "s390",
                         "ngdump"}, loaded
