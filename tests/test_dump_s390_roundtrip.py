"""`dump.s390` of every s390x source converts back with the oracle to our `vmcore`'s memory and registers.

For every source kind dumpfs reads on IBM Z — the fixtures (QEMU's ELF, QEMU's
kdump-zlib file flattened and reassembled, zgetdump's own s390 file) and the
images written from the s390x-custom memory (plain s390, s390_ext v1 and v2
zlib, a multi-volume set, tape plain and AWSTAPE, VMDUMP, LKCD, a SCSI dump disk,
an NGDump partition) — the source is mounted for real (`dumpfs mount`), IBM's
zgetdump 2.16 converts the mounted `dump.s390` to ELF (`zgetdump -f elf`), and
that ELF, parsed with pyelftools, is compared with the mounted `vmcore`, also
parsed with pyelftools: every page of memory, and every register in the CPU notes
(the TOD programmable register aside: zgetdump never writes it).

The only pages allowed to differ are the save areas `dump.s390` rewrites from the
registers, where the source's memory does not already hold them; which pages
those are comes from truth.json (the pages zgetdump itself rewrote), and their
bytes must equal the fixture's zgetdump.s390 (zgetdump's own conversion).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

import pytest
from elftools.elf.elffile import ELFFile

import fixturecache as fc
from writers.tools import oracle

BLOCK = 16 << 20
PAGE = 4096

NOTE_TYPES = {"NT_PRSTATUS": 1, "NT_FPREGSET": 2, "NT_PRPSINFO": 3}
NT_PRSTATUS, NT_FPREGSET = 1, 2
NT_S390_TIMER, NT_S390_TODCMP, NT_S390_TODPREG, NT_S390_CTRS, NT_S390_PREFIX = 0x301, 0x302, 0x303, 0x304, 0x305
NT_S390_VXRS_LOW, NT_S390_VXRS_HIGH = 0x309, 0x30A
PR_REG = 112            # offset of pr_reg in the s390x elf_prstatus


@dataclass(frozen=True)
class Case:
    id: str
    fixture: tuple[str, str] | None = None     # (folder, file)
    written: str | None = None                 # writers.images kind
    vectors: bool = True                       # the source carries the vector registers
    save_areas: str = "none"                   # pages dump.s390 rewrites: none, truth, truth-prefix


CASES = [
    Case("custom-qemu-elf", fixture=("s390x-custom", "qemu-dgm.elf.xz"), save_areas="truth"),
    Case("custom-qemu-kdump-flattened", fixture=("s390x-custom", "qemu-dgm-kdump-zlib.kdump.xz"),
         save_areas="truth"),
    Case("custom-zgetdump-s390", fixture=("s390x-custom", "zgetdump.s390.xz")),
    Case("debian-qemu-elf", fixture=("s390x-debian", "qemu-dgm.elf.xz"), save_areas="truth"),
    Case("debian-qemu-kdump-reassembled", fixture=("s390x-debian", "qemu-dgm-kdump-zlib.reassembled.kdump.xz"),
         save_areas="truth"),
    Case("debian-zgetdump-s390", fixture=("s390x-debian", "zgetdump.s390.xz")),
    Case("s390-plain", written="s390-plain"),
    Case("s390_ext-v1", written="s390_ext-v1"),
    Case("s390_ext-v2-zlib", written="s390_ext-v2"),
    Case("s390mv-3-volumes", written="s390mv"),
    Case("tape-plain", written="tape-plain"),
    Case("tape-awstape", written="tape-aws"),
    # VMDUMP keeps the registers in its FIRs, not in memory, and no vector registers
    Case("vmdump", written="vmdump", vectors=False, save_areas="truth-prefix"),
    Case("lkcd", written="lkcd-zlib"),
    # zfcpdump's ELF: registers in notes, memory as QEMU had it
    Case("scsi-disk", written="scsi", save_areas="truth-prefix+vector"),
    Case("ngdump-partition", written="ngdump", save_areas="truth-prefix+vector"),
]


@pytest.fixture(scope="module", autouse=True)
def tape_cache(tmp_path_factory):
    """The tape backend's cache file goes to this session's temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DUMPFS_CACHE_DIR", str(tmp_path_factory.mktemp("tape-cache")))
        yield


# -- ELF reading with pyelftools, independent of dumpfs ------------------------------------------

class ElfCore:
    """Memory (PT_LOAD by physical address; holes and p_memsz > p_filesz read as zeros) and
    the CPU notes of an ELF core, read with pyelftools and os.pread."""

    def __init__(self, path):
        self.file = open(path, "rb")
        elf = ELFFile(self.file)
        self.loads, notes = [], []
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_LOAD":
                self.loads.append((segment["p_paddr"], segment["p_offset"], segment["p_filesz"],
                                   segment["p_memsz"]))
            elif segment["p_type"] == "PT_NOTE":
                for note in segment.iter_notes():
                    kind = note["n_type"]
                    notes.append((note["n_name"], NOTE_TYPES.get(kind, kind), bytes(note["n_descdata"])))
        self.loads.sort()
        self.end = max(p + m for p, _, _, m in self.loads)
        self.cpus = cpu_registers(notes)

    def read(self, address: int, length: int) -> bytes:
        out = bytearray(length)
        end = address + length
        for paddr, offset, filesz, _ in self.loads:
            low, high = max(address, paddr), min(end, paddr + filesz)
            if low < high:
                data = os.pread(self.file.fileno(), high - low, offset + low - paddr)
                assert len(data) == high - low, f"short read at {offset + low - paddr:#x}"
                out[low - address:high - address] = data
        return bytes(out)

    def close(self):
        self.file.close()


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "big")


def cpu_registers(notes) -> list[dict[str, int]]:
    """Per CPU (each NT_PRSTATUS starts one), register name -> value, from the raw note payloads."""
    cpus: list[dict[str, int]] = []
    for name, kind, desc in notes:
        if kind == NT_PRSTATUS and name == "CORE":
            cpus.append({})
            regs = cpus[-1]
            regs["psw_mask"], regs["psw_addr"] = _u(desc, PR_REG, 8), _u(desc, PR_REG + 8, 8)
            regs.update((f"r{i}", _u(desc, PR_REG + 16 + 8 * i, 8)) for i in range(16))
            regs.update((f"a{i}", _u(desc, PR_REG + 144 + 4 * i, 4)) for i in range(16))
            continue
        if not cpus or name not in ("CORE", "LINUX"):
            continue
        regs = cpus[-1]
        if kind == NT_FPREGSET:
            regs["fpc"] = _u(desc, 0, 4)
            regs.update((f"f{i}", _u(desc, 8 + 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_TIMER:
            regs["cpu_timer"] = _u(desc, 0, 8)
        elif kind == NT_S390_TODCMP:
            regs["clock_comparator"] = _u(desc, 0, 8)
        elif kind == NT_S390_CTRS:
            regs.update((f"c{i}", _u(desc, 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_PREFIX:
            regs["prefix"] = _u(desc, 0, 4)
        elif kind == NT_S390_VXRS_LOW:
            regs.update((f"v{i}.low", _u(desc, 8 * i, 8)) for i in range(16))
        elif kind == NT_S390_VXRS_HIGH:
            regs.update((f"v{16 + i}", _u(desc, 16 * i, 16)) for i in range(16))
        # NT_S390_TODPREG: zgetdump never writes it into the s390 format; not compared
    return cpus


BASE_REGISTERS = {"psw_mask", "psw_addr", "fpc", "cpu_timer", "clock_comparator", "prefix",
                  *(f"{p}{i}" for p in "rafc" for i in range(16))}
VECTOR_REGISTERS = {*(f"v{i}.low" for i in range(16)), *(f"v{i}" for i in range(16, 32))}


# -- which pages dump.s390 may rewrite ----------------------------------------------------------

def truth_save_area_pages(folder: str) -> set[int]:
    """The pages truth.json says zgetdump rewrote when it converted QEMU's ELF to s390."""
    record = next(d for d in fc.truth(folder)["dumps"] if d["file"] == "zgetdump.s390.xz")
    listed = re.search(r"differs from QEMU's ELF in \d+ pages \(([^;)]*)", record["notes"]).group(1)
    return {int(x, 16) for x in re.findall(r"0x[0-9a-f]+", listed)}


def allowed_pages(case: Case) -> set[int]:
    if case.save_areas == "none":
        return set()
    folder = case.fixture[0] if case.fixture else "s390x-custom"
    pages = truth_save_area_pages(folder)
    if case.save_areas == "truth":
        return pages
    prefix_pages = {cpu["registers"]["prefix"] + 0x1000 for cpu in fc.truth(folder)["cpus"]}
    if case.save_areas == "truth-prefix":
        return pages & prefix_pages
    return pages            # truth-prefix+vector: save areas and vector save areas


def differing_pages(a: ElfCore, b: ElfCore, end: int) -> set[int]:
    pages = set()
    for offset in range(0, end, BLOCK):
        length = min(BLOCK, end - offset)
        x, y = a.read(offset, length), b.read(offset, length)
        if x != y:
            pages |= {offset + p for p in range(0, length, PAGE) if x[p:p + PAGE] != y[p:p + PAGE]}
    return pages


# -- the test -------------------------------------------------------------------------------------

def source_paths(case: Case, fixture_path, written) -> tuple[list, int]:
    if case.fixture:
        folder, name = case.fixture
        return [fixture_path(folder, name)], fc.truth(folder)["memory_bytes"]
    built = written(case.written)
    return built.paths, built.mem_size


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_dump_s390_converts_back_to_our_vmcore(case, fixture_path, written, mount, tmp_path):
    paths, mem_size = source_paths(case, fixture_path, written)
    mp = mount(*paths)
    out = tmp_path / "oracle.elf"
    with open(out, "wb") as f:
        done = oracle("-f", "elf", mp / "dump.s390", stdout=f)
    assert done.returncode == 0, done.stderr.decode()
    theirs, ours = ElfCore(out), ElfCore(mp / "vmcore")
    try:
        assert theirs.end == ours.end == mem_size
        allowed = allowed_pages(case)
        differ = differing_pages(theirs, ours, mem_size)
        assert differ == allowed, (f"unexpected: {sorted(map(hex, differ - allowed))[:20]}, "
                                   f"expected but equal: {sorted(map(hex, allowed - differ))}")
        if allowed:
            # the rewritten save areas are exactly what zgetdump wrote into its own s390 file
            folder = case.fixture[0] if case.fixture else "s390x-custom"
            with open(fixture_path(folder, "zgetdump.s390.xz"), "rb") as zgetdump:
                for page in sorted(allowed):
                    assert theirs.read(page, PAGE) == os.pread(zgetdump.fileno(), PAGE, 0x1000 + page), hex(page)

        assert len(theirs.cpus) == len(ours.cpus) > 0
        for number, (their_regs, our_regs) in enumerate(zip(theirs.cpus, ours.cpus)):
            required = BASE_REGISTERS | (VECTOR_REGISTERS if case.vectors else set())
            assert required <= set(their_regs), f"CPU {number}: oracle lacks {required - set(their_regs)}"
            assert required <= set(our_regs), f"CPU {number}: vmcore lacks {required - set(our_regs)}"
            common = set(their_regs) & set(our_regs)
            assert {k: (hex(their_regs[k]), hex(our_regs[k])) for k in sorted(common)
                    if their_regs[k] != our_regs[k]} == {}, f"CPU {number}"
    finally:
        theirs.close()
        ours.close()
        out.unlink(missing_ok=True)
