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
from dataclasses import dataclass

import pytest

import fixturecache as fc
from writers.elfcore import ElfCore
from writers.tools import oracle

BLOCK = 16 << 20
PAGE = 4096

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


@pytest.mark.parametrize("folder", ["s390x-custom", "s390x-debian"])
def test_mounted_zgetdump_s390_registers_equal_truth(folder, fixture_path, mount):
    """Issue 3: zgetdump.s390 mounts and its registers (cpus/N/registers and the vmcore's notes)
    equal the ground truth wherever the s390 format carries them: all but the TOD programmable
    register, which zgetdump -f s390 does not write into the save area."""
    mp = mount(fixture_path(folder, "zgetdump.s390.xz"))
    truth = fc.truth(folder)["cpus"]
    assert sorted(os.listdir(mp / "cpus")) == [str(c["cpu"]) for c in truth]
    core = ElfCore(mp / "vmcore")
    try:
        for cpu, from_notes in zip(truth, core.cpus):
            lines = (mp / "cpus" / str(cpu["cpu"]) / "registers").read_text().splitlines()
            mounted = {name: int(value, 16) for name, value in (line.split() for line in lines)}
            expected = {k: v for k, v in cpu["registers"].items() if k != "todpreg"}
            assert len(expected) > 100
            assert {k: (hex(mounted.get(k, -1)), hex(v)) for k, v in expected.items()
                    if mounted.get(k) != v} == {}, f"CPU {cpu['cpu']}"
            noted = {k: v for k, v in from_notes.items() if not k.endswith(".low")}
            assert {k: hex(v) for k, v in noted.items() if expected.get(k) != v} == {}, f"CPU {cpu['cpu']}"
            assert len(noted) >= len(BASE_REGISTERS) + 16
    finally:
        core.close()
