"""kdump-compressed and flattened backends against the real fixtures, another writer's dump of
the same guest, and damaged copies.  Model level only: no FUSE."""

from __future__ import annotations

import functools
from array import array
import os
import random
import shutil
import struct
import time

import pytest

import fixturecache as fc
from writers import kdump as kdump_writer
from dumpfs import decodepool
from dumpfs.backends import elf, flattened, kdump
from dumpfs.errors import DumpError, MemoryUnavailable
from dumpfs.model import PageState
from dumpfs.source import FileSource

PAGE = 4096
KDUMP_DUMPS = [(folder, d["file"]) for folder, d in fc.all_dumps()
               if d["format"] in ("kdump", "flattened")]
IDS = [f"{folder}/{name}" for folder, name in KDUMP_DUMPS]

# registers every CPU note set carries; the ground truth has more (QEMU's `info registers`)
REQUIRED = {
    "x86_64": ["rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi"]
              + [f"r{i}" for i in range(8, 16)] + ["rflags", "cs", "ss"],
    "s390x": ["psw_mask", "psw_addr"] + [f"r{i}" for i in range(16)]
             + ["prefix", "a0", "c0", "fpc", "f0", "cpu_timer", "clock_comparator"],
}

# (folder, reference dump by another writer or another format, dumps of the same guest)
SAME_GUEST = [
    ("x86_64-custom", "qemu-elf.vmcore.xz",
     ["mkdf-zlib-d1.kdump.xz", "mkdf-lzo-d31.kdump.xz", "mkdf-raw-d31.kdump.xz",
      "mkdf-flat-zlib-d31.flat.xz", "qemu-kdump-zlib.vmcore.xz"]),
    ("x86_64-debian", "qemu-elf.vmcore.xz", ["mkdf-zlib-d31.kdump.xz"]),
    ("s390x-debian", "qemu-dgm.elf.xz", ["qemu-dgm-kdump-zlib.reassembled.kdump.xz"]),
    ("s390x-custom", "qemu-dgm.elf.xz", ["qemu-dgm-kdump-zlib.kdump.xz"]),
]
SAME_GUEST_PAIRS = [(folder, ref, name) for folder, ref, names in SAME_GUEST for name in names]

# user heap pages the guest filled with one letter (truth markers "heap"); found in the
# QEMU ELF, they must be present in dumps that keep user pages and excluded by -d 31
HEAP_PATTERN = {"x86_64-custom": b"K", "x86_64-debian": b"Q"}


@pytest.fixture(autouse=True)
def private_index_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own flattened-index cache, never the user's."""
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path_factory.mktemp("dumpfs-cache")))


def open_path(path) -> object:
    """Open with whichever of our two backends claims the file, as the registry would."""
    source = FileSource(str(path))
    for backend in (flattened, kdump):
        if backend.detect(source):
            dump = backend.open(source)
            dump.resources.append(source)
            return dump
    source.close()
    raise AssertionError(f"{path}: neither flattened nor kdump")


def open_fixture(folder: str, name: str):
    return open_path(fc.unpacked(folder, name))


def record(folder: str, name: str) -> dict:
    return next(d for d in fc.truth(folder)["dumps"] if d["file"] == name)


def signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def present_pages(dump) -> list[int]:
    return [a for c in dump.memory.chunks if c.state is PageState.PRESENT
            for a in range(c.start, c.end, PAGE)]


# --- the fixtures open and say what truth.json says ------------------------------------------

@pytest.mark.parametrize("folder,name", KDUMP_DUMPS, ids=IDS)
def test_fixture_opens_with_truths_facts(folder, name):
    truth, rec = fc.truth(folder), record(folder, name)
    dump = open_fixture(folder, name)
    assert dump.arch.name == truth["arch"]
    assert dump.page_size == PAGE
    assert len(dump.cpus) == truth["cpu_count"]
    assert dump.meta.format == ("kdump-flattened" if rec["format"] == "flattened" else "kdump")
    assert rec["writer"].startswith(dump.meta.writer)
    assert dump.meta.compression == rec["compression"]
    assert dump.meta.dump_level == rec["dump_level"]
    assert dump.meta.complete and not dump.meta.problems
    assert dump.memory.size_in(PageState.PRESENT) > 0
    dump.close()


@pytest.mark.parametrize("folder,name", KDUMP_DUMPS, ids=IDS)
def test_fixture_registers_equal_truth(folder, name):
    truth = fc.truth(folder)
    dump = open_fixture(folder, name)
    if "cpus" not in truth:
        # a real kdump capture: QEMU took no snapshot, so no independent registers; the
        # crash-time ones must still be there for every CPU, the PC inside the kernel's text
        assert len(dump.cpus) == truth["cpu_count"]
        stext, banner = truth["symbols"]["_stext"], truth["symbols"]["linux_banner"]
        for cpu in dump.cpus.values():
            assert stext <= cpu.registers["rip"] < banner, hex(cpu.registers["rip"])
        dump.close()
        return
    for cpu in truth["cpus"]:
        ours = dump.cpus[cpu["cpu"]].registers
        missing = [r for r in REQUIRED[truth["arch"]] if r not in ours]
        assert not missing, f"cpu {cpu['cpu']}: registers missing: {missing}"
        wrong = {r: (hex(ours[r]), hex(v)) for r, v in cpu["registers"].items()
                 if r in ours and ours[r] != v}
        assert not wrong, f"cpu {cpu['cpu']}: (ours, truth) {wrong}"
    dump.close()


@pytest.mark.parametrize("folder,name", KDUMP_DUMPS, ids=IDS)
def test_fixture_kernel_release(folder, name):
    truth = fc.truth(folder)
    dump = open_fixture(folder, name)
    if truth["arch"] == "x86_64":
        assert dump.vmcoreinfo is not None, "x86_64 dumps carry a VMCOREINFO note"
    if dump.vmcoreinfo is not None:     # QEMU's s390x dumps carry none
        assert dump.vmcoreinfo.get("OSRELEASE") == truth["kernel_release"]
        assert dump.meta.kernel_release == truth["kernel_release"]
    dump.close()


def test_qemu_phys_base_comes_from_vmcoreinfo():
    """QEMU 7.2 writes a wrong header phys_base under KASLR; VMCOREINFO's is right."""
    truth = fc.truth("x86_64-custom")
    dump = open_fixture("x86_64-custom", "qemu-kdump-zlib.vmcore.xz")
    assert dump.meta.details["phys_base"] == signed64(truth["phys_base"])
    assert dump.meta.details["phys_base_header"] != signed64(truth["phys_base"])
    dump.close()


def test_makedumpfile_phys_base_and_time():
    truth = fc.truth("x86_64-debian-kdump")
    dump = open_fixture("x86_64-debian-kdump", "kdump-mkdf-zlib-d31.kdump.xz")
    assert dump.meta.details["phys_base"] == signed64(truth["phys_base"])
    assert dump.meta.dump_time is not None and dump.meta.dump_time.year >= 2020
    dump.close()


# --- memory: byte-identical to another writer's dump of the same guest ----------------------

def sample_pages(pages: list[int], dump, count: int = 3000) -> list[int]:
    """A deterministic sample plus the first and last page of every present chunk."""
    chosen = set(random.Random(0x6B64).sample(pages, min(count, len(pages))))
    for c in dump.memory.chunks:
        if c.state is PageState.PRESENT:
            chosen.update((c.start, c.end - PAGE))
    return sorted(chosen)


@pytest.mark.parametrize("folder,reference,name", SAME_GUEST_PAIRS,
                         ids=[f"{f}/{n}" for f, _, n in SAME_GUEST_PAIRS])
def test_present_pages_equal_other_writer(folder, reference, name):
    ref = elf.open(FileSource(str(fc.unpacked(folder, reference))))
    dump = open_fixture(folder, name)
    pages = present_pages(dump)
    assert len(pages) > 1000
    differing = [hex(a) for a in sample_pages(pages, dump)
                 if dump.read_physical(a, PAGE) != ref.read_physical(a, PAGE)]
    assert not differing, f"{len(differing)} pages differ from {reference}: {differing[:8]}"
    # multi-page reads at unaligned offsets go through the batched path
    rng = random.Random(7)
    for chunk in [c for c in dump.memory.chunks if c.state is PageState.PRESENT and c.size >= 64 * PAGE][:20]:
        start = chunk.start + rng.randrange(chunk.size - 40 * PAGE)
        length = rng.randrange(1, 40 * PAGE)
        assert dump.read_physical(start, length) == ref.read_physical(start, length)
    dump.close()
    ref.close()


@functools.lru_cache(maxsize=None)
def heap_pattern_pages(folder: str) -> list[int]:
    """Physical pages of the QEMU ELF that are wholly the guest's heap fill letter."""
    ref = elf.open(FileSource(str(fc.unpacked(folder, "qemu-elf.vmcore.xz"))))
    page = HEAP_PATTERN[folder] * PAGE
    found = []
    for chunk in ref.memory.chunks:
        if chunk.state is not PageState.PRESENT:
            continue
        for offset in range(0, chunk.size, 1 << 20):
            blob = chunk.read(offset, min(1 << 20, chunk.size - offset))
            at = blob.find(page)
            while at != -1:
                aligned = -(chunk.start + offset + at) % PAGE + at     # next page boundary
                if aligned == at:
                    found.append(chunk.start + offset + at)
                    aligned += PAGE
                at = blob.find(page, aligned)
    ref.close()
    return found


@pytest.mark.parametrize("folder,name", [(f, n) for f, _, names in SAME_GUEST[:2] for n in names],
                         ids=[f"{f}/{n}" for f, _, names in SAME_GUEST[:2] for n in names])
def test_user_pages_kept_or_excluded_by_dump_level(folder, name):
    heap = heap_pattern_pages(folder)
    assert len(heap) >= 16, "the guest's heap fill should be in the QEMU ELF"
    dump = open_fixture(folder, name)
    user_pages_kept = record(folder, name)["user_pages"]
    for address in heap:
        if user_pages_kept:
            assert dump.read_physical(address, PAGE) == HEAP_PATTERN[folder] * PAGE
        else:
            with pytest.raises(MemoryUnavailable):
                dump.read_physical(address, PAGE)
            assert dump.memory.chunk_at(address).state is PageState.EXCLUDED
    dump.close()


@pytest.mark.parametrize("folder,name", [(f, n) for f, n in KDUMP_DUMPS
                                         if record(f, n)["dump_level"] == 31],
                         ids=[f"{f}/{n}" for f, n in KDUMP_DUMPS if record(f, n)["dump_level"] == 31])
def test_excluded_and_absent_pages_raise(folder, name):
    dump = open_fixture(folder, name)
    excluded = [c for c in dump.memory.chunks if c.state is PageState.EXCLUDED]
    assert excluded, "-d 31 excludes free and user pages"
    for chunk in excluded[:50]:
        for address in (chunk.start, chunk.end - PAGE):
            with pytest.raises(MemoryUnavailable):
                dump.read_physical(address, PAGE)
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(dump.memory.end + 16 * PAGE, PAGE)
    holes = [(a.end, b.start) for a, b in zip(dump.memory.chunks, dump.memory.chunks[1:]) if a.end < b.start]
    for start, _ in holes[:10]:
        with pytest.raises(MemoryUnavailable):
            dump.read_physical(start, PAGE)
    # a read that starts in present memory and runs into an excluded run fails too
    for a, b in zip(dump.memory.chunks, dump.memory.chunks[1:]):
        if a.state is PageState.PRESENT and b.state is PageState.EXCLUDED and a.end == b.start:
            with pytest.raises(MemoryUnavailable):
                dump.read_physical(a.end - PAGE, 2 * PAGE)
            break
    dump.close()


# --- flattened: index, cache, overlapping records, ELF inside ----------------------------------

def test_flattened_index_is_cached_and_invalidated(tmp_path):
    copy = tmp_path / "dump.flat"
    shutil.copyfile(fc.unpacked("x86_64-custom", "mkdf-flat-zlib-d31.flat.xz"), copy)
    first = open_path(copy)
    assert first.meta.details["index"] == "built"
    sample = first.read_physical(present_pages(first)[100], PAGE)
    first.close()
    second = open_path(copy)
    assert second.meta.details["index"] == "cached"
    assert second.read_physical(present_pages(second)[100], PAGE) == sample
    second.close()
    stat = os.stat(copy)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = open_path(copy)
    assert third.meta.details["index"] == "built", "a changed dump must not use the old index"
    third.close()
    assert open_path(copy).meta.details["index"] == "cached"


def test_flattened_index_not_persisted_when_cache_unwritable(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(blocker))
    dump = open_fixture("x86_64-custom", "mkdf-flat-zlib-d31.flat.xz")
    assert dump.meta.details["index"].startswith("built (not persisted")
    assert dump.meta.complete
    dump.close()


def test_flattened_corrupt_cached_index_is_rebuilt(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(cache))
    dump = open_fixture("x86_64-custom", "mkdf-flat-zlib-d31.flat.xz")
    expected = dump.read_physical(present_pages(dump)[-1], PAGE)
    dump.close()
    (index_file,) = (cache / "index").iterdir()
    index_file.write_bytes(index_file.read_bytes()[:-8])
    dump = open_fixture("x86_64-custom", "mkdf-flat-zlib-d31.flat.xz")
    assert dump.meta.details["index"] == "built"
    assert dump.read_physical(present_pages(dump)[-1], PAGE) == expected
    dump.close()


def flatten(inner: bytes, pieces: int, seed: int, garbage_first: bool) -> bytes:
    """A flattened stream of `inner`: records in shuffled order, optionally preceded by garbage
    records for the same ranges that the later, correct records must override."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(inner)), pieces - 1))
    ranges = list(zip([0] + cuts, cuts + [len(inner)]))
    rng.shuffle(ranges)
    out = [b"makedumpfile\0\0\0\0" + struct.pack(">qq", 1, 1)]
    out[0] = out[0].ljust(4096, b"\0")
    if garbage_first:
        for start, end in ranges[:pieces // 3]:
            span = min(end + 5000, len(inner)) - max(start - 3000, 0)
            out.append(struct.pack(">qq", max(start - 3000, 0), span) + b"\xa5" * span)
    for start, end in ranges:
        out.append(struct.pack(">qq", start, end - start) + inner[start:end])
    out.append(struct.pack(">qq", -1, -1))
    return b"".join(out)


def test_flattened_overlapping_shuffled_records(tmp_path):
    plain_path = fc.unpacked("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    flat = tmp_path / "shuffled.flat"
    flat.write_bytes(flatten(plain_path.read_bytes(), 300, 1, garbage_first=True))
    plain, dump = open_path(plain_path), open_path(flat)
    assert dump.meta.format == "kdump-flattened" and dump.meta.complete
    assert [(c.start, c.size, c.state) for c in dump.memory.chunks] == \
        [(c.start, c.size, c.state) for c in plain.memory.chunks]
    pages = present_pages(plain)
    for address in sample_pages(pages, plain, 1500):
        assert dump.read_physical(address, PAGE) == plain.read_physical(address, PAGE)
    dump.close()
    plain.close()


def test_flattened_elf_inside(tmp_path):
    """makedumpfile -E -F: the reassembled file is an ELF vmcore."""
    elf_path = fc.unpacked("x86_64-custom", "mkdf-elf-d31.vmcore.xz")
    flat = tmp_path / "elf.flat"
    flat.write_bytes(flatten(elf_path.read_bytes(), 64, 2, garbage_first=False))
    direct = elf.open(FileSource(str(elf_path)))
    dump = open_path(flat)
    assert dump.meta.format == "elf-flattened"
    assert len(dump.cpus) == fc.truth("x86_64-custom")["cpu_count"]
    pages = present_pages(direct)
    for address in sample_pages(pages, direct, 500):
        assert dump.read_physical(address, PAGE) == direct.read_physical(address, PAGE)
    dump.close()
    direct.close()


def test_resolve_overlaps_matches_painting():
    """Later records win: compare the extents with painting every byte record by record."""
    rng = random.Random(3)
    for _ in range(200):
        records, stream = [], 0
        for _ in range(rng.randrange(1, 12)):
            start, size = rng.randrange(0, 200), rng.randrange(1, 60)
            records.append((start, size, stream))
            stream += size + 16
        painted = {}
        for start, size, stream_offset in records:
            for k in range(size):
                painted[start + k] = stream_offset + k
        starts, lengths, streams = flattened.resolve_overlaps(records)
        mapped = {}
        for start, length, stream_offset in zip(starts, lengths, streams):
            assert length > 0
            for k in range(length):
                assert start + k not in mapped, "extents overlap"
                mapped[start + k] = stream_offset + k
        assert mapped == painted


def test_bit_runs_match_bit_by_bit():
    """Maximal runs, also across the pieces a bitmap is read in."""
    rng = random.Random(5)
    for _ in range(300):
        data = bytes(rng.choice([0, 0xFF, rng.randrange(256)]) for _ in range(rng.randrange(0, 40)))
        bits = [i for i in range(8 * len(data)) if data[i // 8] >> (i % 8) & 1]
        flat, cut = array("q"), rng.randrange(len(data) + 1)
        kdump.add_bit_runs(data[:cut], 64, flat)
        kdump.add_bit_runs(data[cut:], 64 + 8 * cut, flat)
        runs = list(zip(flat[0::2], flat[1::2]))
        assert [b for s, e in runs for b in range(s - 64, e - 64)] == bits
        assert all(a[1] < b[0] for a, b in zip(runs, runs[1:])), "runs must be maximal"


# --- damaged input -----------------------------------------------------------------------------

def copy_prefix(tmp_path, folder, name, length=None, new_name=None):
    source = fc.unpacked(folder, name)
    data = source.read_bytes()
    target = tmp_path / (new_name or source.name)
    target.write_bytes(data if length is None else data[:length])
    return target


def assert_one_line_dump_error(path, *words):
    with pytest.raises(DumpError) as caught:
        open_path(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("name", ["mkdf-zlib-d1.kdump.xz", "mkdf-flat-zlib-d31.flat.xz"])
def test_first_block_only_is_an_error(tmp_path, name):
    path = copy_prefix(tmp_path, "x86_64-custom", name, 4096)
    assert_one_line_dump_error(path)


def test_half_kdump_opens_incomplete(tmp_path):
    full_path = fc.unpacked("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    path = copy_prefix(tmp_path, "x86_64-custom", "mkdf-zlib-d1.kdump.xz", full_path.stat().st_size // 2)
    full, dump = open_path(full_path), open_path(path)
    pages = present_pages(dump)
    assert not dump.meta.complete
    assert any("truncated" in p for p in map(str, dump.meta.problems))
    # the pages the cut file cannot deliver are counted missing, not present (issue 9)
    missing = [a for c in dump.memory.chunks if c.state is PageState.MISSING
               for a in range(c.start, c.end, PAGE)]
    assert pages and missing
    assert set(present_pages(full)) == set(pages) | set(missing)
    for address in sample_pages(pages, dump, 2000):
        assert dump.read_physical(address, PAGE) == full.read_physical(address, PAGE)
    for address in random.Random(9).sample(missing, min(500, len(missing))):
        with pytest.raises(MemoryUnavailable) as caught:
            dump.read_physical(address, PAGE)
        assert "missing" in caught.value.reason
    dump.close()
    full.close()


def test_half_flattened_stream_serves_what_exists(tmp_path):
    full_path = fc.unpacked("x86_64-custom", "mkdf-flat-zlib-d31.flat.xz")
    path = copy_prefix(tmp_path, "x86_64-custom", "mkdf-flat-zlib-d31.flat.xz",
                       full_path.stat().st_size // 2)
    try:
        dump = open_path(path)
    except DumpError as e:      # acceptable only if the half lost the headers
        assert "\n" not in str(e)
        return
    assert not dump.meta.complete and "truncated stream" in str(dump.meta.problems[0])
    dump.close()


def test_flattened_without_terminator(tmp_path):
    full_path = fc.unpacked("x86_64-custom", "qemu-kdump-zlib.vmcore.xz")
    path = copy_prefix(tmp_path, "x86_64-custom", "qemu-kdump-zlib.vmcore.xz",
                       full_path.stat().st_size - 16)
    full, dump = open_path(full_path), open_path(path)
    assert not dump.meta.complete
    assert any("no end marker" in p for p in map(str, dump.meta.problems))
    for address in sample_pages(present_pages(full), full, 500):
        assert dump.read_physical(address, PAGE) == full.read_physical(address, PAGE)
    dump.close()
    full.close()


def patched_copy(tmp_path, name, patches):
    path = copy_prefix(tmp_path, "x86_64-custom", name)
    data = bytearray(path.read_bytes())
    for offset, value in patches:
        data[offset:offset + len(value)] = value
    path.write_bytes(data)
    return path


# offsets in the 64-bit little-endian header (kdump-compressed.md §3, §4)
BLOCK_SIZE_AT, SUB_HDR_SIZE_AT, BITMAP_BLOCKS_AT = 0x1AC, 0x1B0, 0x1B4
SUB = 4096
OFFSET_NOTE_AT, SIZE_NOTE_AT, MAX_MAPNR_64_AT = SUB + 0x30, SUB + 0x38, SUB + 0x60


@pytest.mark.parametrize("label,patches,words", [
    ("block_size not a power of two", [(BLOCK_SIZE_AT, struct.pack("<I", 3000))], ["block_size"]),
    ("absurd max_mapnr", [(MAX_MAPNR_64_AT, struct.pack("<Q", 1 << 60))], ["max_mapnr"]),
    ("bitmap too small", [(BITMAP_BLOCKS_AT, struct.pack("<I", 2))], ["bitmap_blocks"]),
    ("huge bitmap_blocks", [(BITMAP_BLOCKS_AT, struct.pack("<I", 0xFFFFFFF0))], ["truncated"]),
    ("sub header past EOF", [(SUB_HDR_SIZE_AT, struct.pack("<i", 1 << 30))], ["truncated"]),
    ("absurd note size", [(SIZE_NOTE_AT, struct.pack("<Q", 1 << 62))], ["notes"]),
    ("note offset past the area", [(OFFSET_NOTE_AT, struct.pack("<q", 1 << 40))], ["notes"]),
    ("bad header_version", [(8, struct.pack("<I", 0x7777777))], ["header_version"]),
])
def test_hostile_header_is_a_clear_error(tmp_path, label, patches, words):
    path = patched_copy(tmp_path, "mkdf-raw-d31.kdump.xz", patches)
    assert_one_line_dump_error(path, *words)


def descriptor_table(data: bytes):
    """Parse the 64-bit little-endian layout by hand (the doc's §2-6), independent of the backend."""
    block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", data, BLOCK_SIZE_AT)
    max_mapnr = struct.unpack_from("<Q", data, MAX_MAPNR_64_AT)[0]
    half = bitmap_blocks * block_size // 2
    bitmap2 = (1 + sub_hdr_size) * block_size + half
    bits = int.from_bytes(data[bitmap2:bitmap2 + half], "little")
    pfns = [pfn for pfn in range(max_mapnr) if bits >> pfn & 1]
    table = (1 + sub_hdr_size + bitmap_blocks) * block_size
    descs = [struct.unpack_from("<qIIQ", data, table + 24 * k) for k in range(len(pfns))]
    return pfns, descs, table


@pytest.mark.parametrize("name,flag", [("mkdf-zlib-d1.kdump.xz", 1), ("mkdf-lzo-d31.kdump.xz", 2)])
def test_corrupt_page_data_is_unavailable_neighbours_read(tmp_path, name, flag):
    original = fc.unpacked("x86_64-custom", name)
    data = original.read_bytes()
    pfns, descs, table = descriptor_table(data)
    # a compressed page whose neighbours (next pfn, next descriptor) are intact and distinct
    k = next(k for k in range(len(descs) // 2, len(descs) - 1)
             if descs[k][2] == flag and descs[k][1] > 200 and pfns[k + 1] == pfns[k] + 1
             and descs[k + 1][0] != descs[k][0])
    bad_offset, bad_size = descs[k][0], descs[k][1]
    k2 = next(j for j in range(k + 2, len(descs)) if descs[j][2] == flag)
    patches = [(bad_offset, bytes((i * 37 + 11) & 0xFF for i in range(bad_size))),
               (table + 24 * k2 + 8, struct.pack("<I", 5000))]      # size > block_size
    path = patched_copy(tmp_path, name, patches)
    dump, reference = open_path(path), open_path(original)
    for pfn in (pfns[k], pfns[k2]):
        with pytest.raises(MemoryUnavailable) as caught:
            dump.read_physical(pfn * PAGE, PAGE)
        assert "corrupt" in caught.value.reason
        with pytest.raises(MemoryUnavailable):     # also as part of a larger read
            dump.read_physical((pfn - 1) * PAGE, 3 * PAGE)
    for pfn in (pfns[k + 1], pfns[k - 1], pfns[k2 - 1]):
        assert dump.read_physical(pfn * PAGE, PAGE) == reference.read_physical(pfn * PAGE, PAGE)
    dump.close()
    reference.close()


def test_missing_compression_module_is_named(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def no_lzo(name, *args, **kwargs):
        if name == "lzo":
            raise ImportError("No module named 'lzo'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lzo)
    assert_one_line_dump_error(fc.unpacked("x86_64-custom", "mkdf-lzo-d31.kdump.xz"), "python-lzo")


# --- a kdump written here by the doc's writer checklist (§11): every compression in one file ---

def write_kdump(path, pages, excluded=(), status=0x01, cut=None):
    """pages: {pfn: (page bytes, "zlib"|"lzo"|"snappy"|"zstd"|"raw"|"zero")}; zero pages share
    one raw copy at the start of the data area, as makedumpfile and QEMU store them."""
    import lzo
    import snappy
    import zlib
    import zstandard
    compress = {"zlib": (1, lambda p: zlib.compress(p, 1)), "lzo": (2, lambda p: lzo.compress(p, 1, False)),
                "snappy": (4, snappy.compress), "zstd": (0x20, zstandard.ZstdCompressor(level=1).compress),
                "raw": (0, bytes)}

    def stored():
        for pfn in sorted(pages):
            page, method = pages[pfn]
            if method == "zero":
                yield bytes(PAGE), 0, kdump_writer.ZERO
                continue
            flags, pack = compress[method]
            data = pack(page)
            assert method == "raw" or len(data) < PAGE, "test data must compress"
            yield data, flags, None

    uts = kdump_writer.utsname("x86_64", "6.1.0-test", "node", "#1")
    with open(path, "wb") as f:
        kdump_writer.write_kdump(f, sorted(pages), stored(), max_mapnr=max([*pages, *excluded]) + 1,
                                 status=status, block_size=PAGE, uts=uts, dump_level=31,
                                 phys_base=0x1000000, excluded=excluded, tv_sec=1700000000,
                                 shared_zero_page=True)
    if cut is not None:
        os.truncate(path, cut)
    return path


def test_written_kdump_every_compression_mixed(tmp_path):
    rng = random.Random(11)
    methods = ["zlib", "lzo", "snappy", "zstd", "raw", "zero"]
    pages = {}
    for pfn in list(range(0, 40)) + list(range(100, 130)):
        method = methods[pfn % len(methods)]
        words = [b"kdump ", b"page ", b"%d " % pfn, b"zero ", b"\0\0\0\0"]
        text = b"".join(rng.choice(words) for _ in range(PAGE))[:PAGE]   # compressible, not constant
        pages[pfn] = (bytes(PAGE) if method == "zero" else text, method)
    excluded = set(range(40, 60))
    dump = open_path(write_kdump(tmp_path / "mixed.kdump", pages, excluded, status=0x01))
    assert dump.meta.dump_time is not None and dump.meta.kernel_release == "6.1.0-test"
    assert dump.meta.details["phys_base"] == 0x1000000
    for pfn, (page, _) in pages.items():
        assert dump.read_physical(pfn * PAGE, PAGE) == page, pfn
    assert dump.read_physical(10 * PAGE + 100, 20 * PAGE) == \
        b"".join(pages[p][0] for p in range(10, 31))[100:100 + 20 * PAGE]
    for address in (40 * PAGE, 59 * PAGE, 60 * PAGE, 99 * PAGE, 130 * PAGE):
        with pytest.raises(MemoryUnavailable):
            dump.read_physical(address, PAGE)
    assert [(c.start // PAGE, c.end // PAGE, c.state) for c in dump.memory.chunks] == [
        (0, 40, PageState.PRESENT), (40, 60, PageState.EXCLUDED), (100, 130, PageState.PRESENT)]
    dump.close()


def test_written_kdump_marked_incomplete(tmp_path):
    pages = {pfn: (bytes([pfn]) * PAGE, "raw") for pfn in range(64)}
    full = write_kdump(tmp_path / "full.kdump", pages, status=0x08)
    cut = full.stat().st_size - 10 * PAGE - 100
    dump = open_path(write_kdump(tmp_path / "cut.kdump", pages, status=0x08, cut=cut))
    assert not dump.meta.complete and any("incomplete" in p for p in map(str, dump.meta.problems))
    for pfn in range(53):
        assert dump.read_physical(pfn * PAGE, PAGE) == pages[pfn][0]
    for pfn in range(53, 64):
        with pytest.raises(MemoryUnavailable) as caught:
            dump.read_physical(pfn * PAGE, PAGE)
        assert "incomplete" in caught.value.reason
    dump.close()


# --- decoding ahead of sequential readers ---------------------------------------------------------

def kdump_pages(dump) -> kdump.KdumpPages:
    return next(r for r in dump.resources if isinstance(r, kdump.KdumpPages))


def test_written_kdump_batch_decode_equals_page_path(tmp_path):
    """A whole batch decoded at once (every compression, shared zero pages) holds the pages
    the page-by-page path returns, in descriptor order."""
    rng = random.Random(5)
    methods = ["zlib", "lzo", "snappy", "zstd", "raw", "zero"]
    pages = {}
    for pfn in list(range(0, 40)) + list(range(100, 130)):
        words = [b"ahead ", b"page ", b"%d " % pfn, b"\0\0\0\0"]
        text = b"".join(rng.choice(words) for _ in range(PAGE))[:PAGE]
        method = methods[pfn % len(methods)]
        pages[pfn] = (bytes(PAGE) if method == "zero" else text, method)
    dump = open_path(write_kdump(tmp_path / "batch.kdump", pages, set(range(40, 60))))
    dump.memory.chunks
    reader = kdump_pages(dump)
    batches = range(-(-len(pages) // kdump.PAGES_PER_BATCH))
    assert b"".join(b"".join(reader._decode_batch(b)) for b in batches) == \
        b"".join(pages[pfn][0] for pfn in sorted(pages))
    dump.close()


def test_sequential_reads_decode_ahead_random_reads_do_not(monkeypatch):
    monkeypatch.setattr(decodepool, "ENABLED", True)
    dump = open_fixture("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    reference = open_fixture("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    pages = kdump_pages(dump)
    run = max((c for c in dump.memory.chunks if c.state is PageState.PRESENT), key=lambda c: c.size)
    assert run.size >= 16 << 20
    rng = random.Random(3)
    for _ in range(200):                 # crash's and drgn's pattern: no decoding ahead
        address = run.start + rng.randrange(run.size // PAGE) * PAGE
        assert dump.read_physical(address, 64) == reference.read_physical(address, 64)
    assert len(pages.batches._pages) == 0 and pages.read_ahead._executor is None
    assert pages.pool is not None and not pages.pool._all      # no decoding process started
    for offset in range(0, 8 << 20, 1 << 20):    # a sequential stream: decoded ahead, in parallel
        assert dump.read_physical(run.start + offset, 1 << 20) == \
            reference.read_physical(run.start + offset, 1 << 20)
    deadline = time.monotonic() + 60
    while pages.read_ahead._pending and time.monotonic() < deadline:
        time.sleep(0.01)                 # let the fetches under way finish
    ahead = [b for b in pages.batches._pages if b * kdump.PAGES_PER_BATCH * PAGE > 8 << 20]
    assert ahead, "nothing was decoded ahead of the stream"
    assert dump.read_physical(run.start + (8 << 20), 4 << 20) == \
        reference.read_physical(run.start + (8 << 20), 4 << 20)
    dump.close()
    reference.close()


def test_written_kdump_corrupt_zlib_page_fails_with_zlibs_error_in_a_stream(tmp_path):
    """A corrupt zlib page in the middle of a stream decoded ahead: the pages before it are
    read, the page itself fails with zlib's message (whichever library decoded the others)."""
    import zlib
    rng = random.Random(8)
    pages = {}
    for pfn in range(1200):
        words = [b"stream ", b"page ", b"%d " % pfn, b"\0\0\0\0"]
        pages[pfn] = (b"".join(rng.choice(words) for _ in range(PAGE))[:PAGE], "zlib")
    path = write_kdump(tmp_path / "corrupt.kdump", pages)
    dump = open_path(path)
    dump.memory.chunks
    reader = kdump_pages(dump)
    bad = 700
    table = reader.table_start + bad * 24
    with open(path, "r+b") as f:
        f.seek(table)
        offset, size = struct.unpack("<qI", f.read(12))
        f.seek(offset + 2)
        f.write(bytes(8))              # the deflate data of page 700, zeroed
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(size)
    with pytest.raises(zlib.error) as expected:
        zlib.decompress(raw, 15, PAGE)
    dump.close()
    dump = open_path(path)
    for start in range(0, bad * PAGE // (1 << 20) * (1 << 20), 1 << 20):
        assert dump.read_physical(start, 1 << 20) == b"".join(
            pages[pfn][0] for pfn in range(start // PAGE, (start + (1 << 20)) // PAGE))
    with pytest.raises(MemoryUnavailable) as caught:
        dump.read_physical(bad // 256 * 256 * PAGE, 1 << 20)
    assert caught.value.reason == f"corrupt page data: zlib: {expected.value}"
    assert dump.read_physical((bad + 1) * PAGE, PAGE) == pages[bad + 1][0]
    dump.close()


def stream_pages(count: int) -> dict:
    """`count` compressible pages, mostly zlib, with raw and shared zero pages among them."""
    rng = random.Random(21)
    pages = {}
    for pfn in range(count):
        words = [b"process ", b"page ", b"%d " % pfn, b"\0\0\0\0"]
        text = b"".join(rng.choice(words) for _ in range(PAGE))[:PAGE]
        method = "zero" if pfn % 97 == 5 else "raw" if pfn % 89 == 7 else "zlib"
        pages[pfn] = (bytes(PAGE) if method == "zero" else text, method)
    return pages


def memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("memfd:dumpfs-decode" in line for line in f)


def test_written_kdump_stream_decoded_in_processes(tmp_path, monkeypatch):
    """A sequential read of a local kdump file decodes its batches in worker processes: the
    bytes are the page path's, a corrupt page inside the stream fails with the page path's
    error, a worker that dies is replaced by decoding in the reader, and closing the dump
    ends every worker and leaves no shared memory (mapped, or named in /dev/shm)."""
    monkeypatch.setattr(decodepool, "ENABLED", True)
    pages = stream_pages(1536)
    expected = b"".join(pages[pfn][0] for pfn in range(1536))
    path = write_kdump(tmp_path / "stream.kdump", pages)
    shm_before = set(os.listdir("/dev/shm"))
    dump = open_path(path)
    dump.memory.chunks
    reader = kdump_pages(dump)
    decoded = []
    decode = reader.pool.decode
    reader.pool.decode = lambda *args: decoded.append(decode(*args)) or decoded[-1]
    got = b"".join(dump.read_physical(start, 1 << 20) for start in range(0, len(expected), 1 << 20))
    assert got == expected
    assert any(data is not None for data in decoded), "no batch was decoded in a process"
    workers = [worker.process.pid for worker in reader.pool._all]
    assert workers and memfd_mappings() == len(workers)
    page_path = open_path(path)         # one page per read, in random order: never decoded ahead
    for pfn in random.Random(4).sample(range(1536), 300):
        assert page_path.read_physical(pfn * PAGE, PAGE) == dump.read_physical(pfn * PAGE, PAGE)
    assert not kdump_pages(page_path).pool._all
    page_path.close()

    os.kill(workers[0], 9)              # a worker dies: its batches are decoded in the reader
    got = b"".join(dump.read_physical(start, 1 << 20) for start in range(0, len(expected), 1 << 20))
    assert got == expected
    live = [worker.process for worker in reader.pool._all]
    dump.close()
    assert all(process.poll() is not None for process in live)
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)
    assert memfd_mappings() == 0 and set(os.listdir("/dev/shm")) == shm_before

    bad = 700                           # a corrupt zlib page inside the stream
    assert pages[bad][1] == "zlib"
    with open(path, "r+b") as f:
        f.seek(reader.table_start + bad * 24)
        offset, _ = struct.unpack("<qI", f.read(12))
        f.seek(offset + 2)
        f.write(bytes(8))
    page_path = open_path(path)
    with pytest.raises(MemoryUnavailable) as alone:
        page_path.read_physical(bad * PAGE, PAGE)
    page_path.close()
    dump = open_path(path)
    with pytest.raises(MemoryUnavailable) as in_stream:
        for start in range(0, len(expected), 1 << 20):
            assert dump.read_physical(start, 1 << 20) == expected[start:start + (1 << 20)]
    assert in_stream.value.reason == alone.value.reason and "zlib" in alone.value.reason
    assert kdump_pages(dump).pool._all, "the stream did not use the decoding processes"
    dump.close()
