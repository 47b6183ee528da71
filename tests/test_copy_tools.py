"""Copying a mount with the tools people use (issue 9): cp -r, rsync -a, tar, dd conv=noerror,sync
and gdb on a -d 31 kdump, through the real mount.  Truth is the QEMU ELF the -d 31 dumps were
made from (read with pyelftools, and mounted for the processes' full address spaces)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time
from functools import lru_cache

import pytest
from elftools.elf.elffile import ELFFile

import fixturecache as fc
from conftest import run_dumpfs

FOLDER = "x86_64-custom"
D31 = "mkdf-lzo-d31.kdump.xz"
FULL = "qemu-elf.vmcore.xz"
PAGE = 4096
HOLE_STATES = {"excluded", "missing", "unmapped"}
PIDS = (35, 36)         # truth.json's env and heap marker processes
SECONDS = 30            # "finish in seconds"


@pytest.fixture(scope="module")
def d31(mount):
    return mount(fc.unpacked(FOLDER, D31))


@pytest.fixture(scope="module")
def d31_zero(mount):
    return mount(fc.unpacked(FOLDER, D31), options=("zero_excluded",))


@pytest.fixture(scope="module")
def full(mount):
    return mount(fc.unpacked(FOLDER, FULL))


@lru_cache(maxsize=None)
def elf_loads() -> tuple:
    with open(fc.unpacked(FOLDER, FULL), "rb") as f:
        return tuple((s["p_paddr"], s["p_filesz"], s["p_offset"]) for s in ELFFile(f).iter_segments()
                     if s["p_type"] == "PT_LOAD" and s["p_filesz"])


def physical_truth(address: int, length: int) -> bytes:
    """Physical memory of the machine, from the QEMU ELF's PT_LOADs."""
    for start, size, offset in elf_loads():
        if start <= address and address + length <= start + size:
            with open(fc.unpacked(FOLDER, FULL), "rb") as f:
                f.seek(offset + address - start)
                return f.read(length)
    raise AssertionError(f"{address:#x} is in no PT_LOAD of the truth")


def parse_map(path) -> list[tuple[int, int, str]]:
    """`start-end state size` lines of memory/map or regions/map."""
    runs = []
    for line in path.read_text().splitlines():
        bounds, state = line.split()[:2]
        start, end = (int(x, 16) for x in bounds.split("-"))
        runs.append((start, end, state))
    return runs


def file_bounds(name: str) -> tuple[int, int]:
    start, end = (int(x, 16) for x in name.split("-"))
    return start, end


def holes_of(runs, start: int, end: int) -> list[tuple[int, int]]:
    """The holes of the file [start, end), as offsets in the file."""
    return [(max(s, start) - start, min(e, end) - start) for s, e, state in runs
            if state in HOLE_STATES and s < end and e > start]


def timed(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    assert time.monotonic() - started < SECONDS, f"{command[0]} took too long"
    return done


def copy_with(tool: str, root, parts: list[str], target) -> subprocess.CompletedProcess:
    """Copy root/<part> for each part into target/<part> with cp -r, rsync -a or tar."""
    target.mkdir()
    if tool == "cp":
        outcomes = []
        for part in parts:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            outcomes.append(timed(["cp", "-r", str(root / part), str(target / part)]))
        return subprocess.CompletedProcess("cp", max(o.returncode for o in outcomes), "",
                                           "".join(o.stderr for o in outcomes))
    if tool == "rsync":
        done = timed(["rsync", "-aR", *parts, str(target)], cwd=root)
        return done
    archive = target.parent / f"{target.name}.tar"
    done = timed(["tar", "-cf", str(archive), "-C", str(root), *parts])
    unpacked = timed(["tar", "-xf", str(archive), "-C", str(target)])
    assert unpacked.returncode == 0, unpacked.stderr
    return done


def region_files(root, pid: int) -> list[str]:
    return sorted(n for n in os.listdir(root / "proc" / str(pid) / "regions") if n != "map")


def memory_files(root) -> list[str]:
    return sorted(n for n in os.listdir(root / "memory") if n != "map")


def zero_filled_truth_of_region(full, pid: int, name: str, runs) -> bytes:
    """What a region of the -d 31 dump must read under zero_excluded: the full dump's bytes
    where the -d 31 map says present, zeros in its holes."""
    start, end = file_bounds(name)
    data = bytearray(end - start)
    with open(full / "proc" / str(pid) / "regions" / name, "rb", buffering=0) as f:
        for s, e, state in runs:
            if state == "present" and s < end and e > start:
                s, e = max(s, start), min(e, end)
                data[s - start:e - start] = os.pread(f.fileno(), e - s, s - start)
    return bytes(data)


def zero_filled_truth_of_range(name: str, runs) -> bytes:
    start, end = file_bounds(name)
    data = bytearray(end - start)
    for s, e, state in runs:
        if state in ("present", "zero") and s < end and e > start:
            s, e = max(s, start), min(e, end)
            data[s - start:e - start] = physical_truth(s, e - s) if state == "present" else bytes(e - s)
    return bytes(data)


def expected_files(full, d31_zero) -> dict[str, bytes]:
    """Relative path -> the content a whole copy must have (files of memory/ and regions/)."""
    expected = {}
    memory_runs = parse_map(d31_zero / "memory" / "map")
    for name in memory_files(d31_zero):
        expected[f"memory/{name}"] = zero_filled_truth_of_range(name, memory_runs)
    for pid in PIDS:
        runs = parse_map(d31_zero / "proc" / str(pid) / "regions" / "map")
        for name in region_files(d31_zero, pid):
            expected[f"proc/{pid}/regions/{name}"] = zero_filled_truth_of_region(full, pid, name, runs)
    return expected


def file_holes(root) -> dict[str, list[tuple[int, int]]]:
    """Relative path -> its holes (offsets in the file), from the maps next to the files."""
    holes = {}
    memory_runs = parse_map(root / "memory" / "map")
    for name in memory_files(root):
        holes[f"memory/{name}"] = holes_of(memory_runs, *file_bounds(name))
    for pid in PIDS:
        runs = parse_map(root / "proc" / str(pid) / "regions" / "map")
        for name in region_files(root, pid):
            holes[f"proc/{pid}/regions/{name}"] = holes_of(runs, *file_bounds(name))
    return holes


PARTS = [f"proc/{pid}" for pid in PIDS] + ["memory"]


def common_prefix(a: bytes, b: bytes) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:                   # the longest n with a[:n] == b[:n]
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------------------
# with -o zero_excluded: every file whole, the holes listed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tool", ["cp", "rsync", "tar"])
def test_zero_excluded_copies_every_file_whole(d31_zero, full, tmp_path, tool):
    done = copy_with(tool, d31_zero, PARTS, tmp_path / "copy")
    if tool == "cp":
        # cp reads proc/PID/mem from offset 0, which no process maps: EIO, as for /proc/PID/mem
        complaints = [line for line in done.stderr.splitlines() if line.strip()]
        assert complaints and all(line.rstrip().endswith("/mem': Input/output error")
                                  for line in complaints), done.stderr
    else:
        assert done.returncode == 0, done.stderr
    copy = tmp_path / "copy"
    for path, content in expected_files(full, d31_zero).items():
        assert (copy / path).read_bytes() == content, path
    for pid in PIDS:
        for name in ("comm", "maps", "status", "stat", "core", "regions/map", "cmdline", "environ"):
            assert (copy / "proc" / str(pid) / name).read_bytes() == \
                (d31_zero / "proc" / str(pid) / name).read_bytes(), (pid, name)
        assert (copy / "proc" / str(pid) / "mem").stat().st_size == 0
    assert (copy / "memory" / "map").read_bytes() == (d31_zero / "memory" / "map").read_bytes()


def test_the_maps_list_exactly_the_holes(d31, d31_zero):
    """A page is in a hole of memory/map or regions/map exactly when reading it fails without
    zero_excluded; with it, the hole reads as zeros."""
    truth = {}
    memory_runs = parse_map(d31 / "memory" / "map")
    assert {state for _, _, state in memory_runs} == {"present", "excluded"}
    for pid in PIDS:
        runs = parse_map(d31 / "proc" / str(pid) / "regions" / "map")
        assert runs == parse_map(d31_zero / "proc" / str(pid) / "regions" / "map")
        assert {state for _, _, state in runs} >= {"present", "excluded", "unmapped"}
        for name in region_files(d31, pid):
            start, end = file_bounds(name)
            truth[f"proc/{pid}/regions/{name}"] = [
                (address - start, next(state for s, e, state in runs if s <= address < e))
                for address in range(start, end, PAGE)]
    for name in memory_files(d31):
        start, end = file_bounds(name)
        pages = set()
        for s, e, state in memory_runs:    # each run's first and last page, and their neighbours
            if start <= s and e <= end:
                pages.update(a for a in (s - PAGE, s, e - PAGE, e) if start <= a < end)
        truth[f"memory/{name}"] = [
            (address - start, next(state for s, e, state in memory_runs if s <= address < e))
            for address in sorted(pages)]
    for path, pages in truth.items():
        with open(d31 / path, "rb", buffering=0) as holed, \
                open(d31_zero / path, "rb", buffering=0) as zeroed:
            for offset, state in pages:
                if state in HOLE_STATES:
                    with pytest.raises(OSError) as caught:
                        os.pread(holed.fileno(), PAGE, offset)
                    assert caught.value.errno == errno.EIO, (path, offset)
                    assert os.pread(zeroed.fileno(), PAGE, offset) == bytes(PAGE), (path, offset)
                else:
                    assert os.pread(holed.fileno(), PAGE, offset) == \
                        os.pread(zeroed.fileno(), PAGE, offset), (path, offset)


# ---------------------------------------------------------------------------
# without it: the present bytes come out where the tools allow
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tool", ["cp", "rsync", "tar"])
def test_without_zero_excluded_the_tools_finish_with_what_is_there(d31, d31_zero, full, tmp_path,
                                                                   tool):
    done = copy_with(tool, d31, PARTS, tmp_path / "copy")
    assert done.returncode != 0 and "Input/output error" in done.stderr
    copy = tmp_path / "copy"
    expected = expected_files(full, d31_zero)
    for path, holes in file_holes(d31).items():
        content = expected[path]
        target = copy / path
        if not holes:
            assert target.read_bytes() == content, path       # nothing in the way: copied whole
            continue
        first_hole = holes[0][0]
        if tool == "rsync":
            assert not target.exists() or target.read_bytes() == content, path
            continue
        data = target.read_bytes()
        if tool == "cp":            # up to the block that touched the first hole
            assert first_hole - (128 << 10) <= len(data) <= first_hole, path
            assert data == content[:len(data)], path
        else:                       # tar: the same, then padded with zeros to the size
            assert len(data) == len(content), path
            good = max(0, first_hole - (64 << 10))
            assert data[:good] == content[:good], path
            same = good + common_prefix(data[good:], content[good:])
            assert data[same:] == bytes(len(data) - same), (path, same)
    for pid in PIDS:
        for name in ("comm", "maps", "status", "stat", "core", "regions/map"):
            assert (copy / "proc" / str(pid) / name).read_bytes() == \
                (d31 / "proc" / str(pid) / name).read_bytes(), (pid, name)


@pytest.mark.parametrize("path", ["memory/00000000000c0000-0000000010000000", "stack"])
def test_dd_noerror_sync_keeps_every_block_at_its_offset(d31, d31_zero, full, tmp_path, path):
    """A read that touches a hole fails whole (never short), so dd pads exactly that block."""
    pid = 35
    if path == "stack":
        maps = (d31 / "proc" / str(pid) / "maps").read_text().splitlines()
        path = f"proc/{pid}/regions/" + next(line.split()[0] for line in maps if line.endswith("[stack]"))
    source, zeroed = d31 / path, d31_zero / path
    block = 64 << 10
    out = tmp_path / "dd.out"
    done = timed(["dd", f"if={source}", f"of={out}", f"bs={block}", "conv=noerror,sync"])
    assert "Input/output error" in done.stderr
    holes = file_holes(d31)[path]
    assert holes
    data, content = out.read_bytes(), zeroed.read_bytes()
    size = source.stat().st_size
    assert len(data) == -(-size // block) * block
    touched = 0
    for offset in range(0, size, block):
        end = min(offset + block, size)
        if any(s < end and e > offset for s, e in holes):
            assert data[offset:offset + block] == bytes(block), offset
            touched += 1
        else:
            assert data[offset:end] == content[offset:end], offset
    assert 0 < touched < -(-size // block) or path.startswith("proc/")


# ---------------------------------------------------------------------------
# gdb, sizes, lookups
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,available", [(D31, False), ("mkdf-zlib-d1.kdump.xz", True)])
def test_gdb_reports_the_excluded_marker_page_unavailable(mount, name, available):
    gdb = shutil.which("gdb-multiarch") or shutil.which("gdb")
    if gdb is None:
        pytest.fail("gdb-multiarch is not installed")
    root = mount(fc.unpacked(FOLDER, name))
    env = fc.truth(FOLDER)["markers"]["env"]
    done = subprocess.run([gdb, "-nx", "-batch", "-c", str(root / "proc" / str(env["pid"]) / "core"),
                           "-ex", "info registers rip", "-ex", f"x/s {env['vaddr']}"],
                          capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert "rip" in done.stdout, out
    if available:
        assert f'"{env["string"]}"' in out, out
    else:
        assert f"Cannot access memory at address {env['vaddr']:#x}" in out, out
        runs = parse_map(root / "proc" / str(env["pid"]) / "regions" / "map")
        assert next(state for s, e, state in runs if s <= env["vaddr"] < e) == "excluded"


def test_sizes_tools_understand(d31, mount):
    """mem is sized like /proc/PID/mem (0, no blocks) yet reads at virtual offsets; nothing in
    the tree claims more than the dump's memory."""
    kept = mount(fc.unpacked(FOLDER, "mkdf-zlib-d1.kdump.xz"))
    env = fc.truth(FOLDER)["markers"]["env"]
    for root in (d31, kept):
        for pid in PIDS:
            st = os.stat(root / "proc" / str(pid) / "mem")
            assert (st.st_size, st.st_blocks) == (0, 0)
        huge = timed(["find", str(root), "-size", "+1G"])
        assert huge.returncode == 0 and huge.stdout == "", huge.stdout
        usage = timed(["du", "-sk", str(root)])
        assert int(usage.stdout.split()[0]) < 2 * 1024 * 1024, usage.stdout
    done = timed(["dd", f"if={kept / 'proc' / str(env['pid']) / 'mem'}", "iflag=skip_bytes,count_bytes",
                  f"skip={env['vaddr']}", f"count={len(env['string'])}", "status=none"])
    assert done.stdout == env["string"], done.stderr
    memory = json.loads((d31 / "info.json").read_text())["memory"]
    assert (d31 / "vmcore").stat().st_blocks * 512 < memory["end"]


def test_unreadable_files_are_listed_and_stat_able(d31, full):
    """ls -l never shows `?`: cmdline and environ keep their size (from the mm_struct); only
    reading them fails."""
    pid = fc.truth(FOLDER)["markers"]["env"]["pid"]
    listing = timed(["ls", "-l", str(d31 / "proc" / str(pid))])
    assert listing.returncode == 0 and "?" not in listing.stdout, listing.stdout + listing.stderr
    for name in ("cmdline", "environ"):
        path = d31 / "proc" / str(pid) / name
        assert path.stat().st_size == (full / "proc" / str(pid) / name).stat().st_size > 0
        with pytest.raises(OSError) as caught:
            path.read_bytes()
        assert caught.value.errno == errno.EIO
        assert stat.S_ISREG(path.stat().st_mode)


# ---------------------------------------------------------------------------
# truthful accounting of cut dumps
# ---------------------------------------------------------------------------

def cut_copy(source, target):
    """The first 60 % of `source`, as an interrupted write leaves it."""
    with open(source, "rb") as f, open(target, "wb") as out:
        out.write(f.read(os.path.getsize(source) * 6 // 10))
    return target


def assert_missing_is_what_fails(cut) -> None:
    """`info` says missing exactly for the pages that fail to read (issue 9: a cut kdump said
    "missing 0 MiB" while thousands of pages read EIO)."""
    from dumpfs.backends import open_dump
    from dumpfs.errors import MemoryUnavailable
    from dumpfs.model import PageState
    done = run_dumpfs("info", "--json", cut)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert not info["complete"] and info["memory"]["missing_bytes"] > 0
    dump = open_dump(str(cut))
    try:
        assert info["memory"]["missing_bytes"] == dump.memory.size_in(PageState.MISSING)
        missing = {address for c in dump.memory if c.state is PageState.MISSING
                   for address in range(c.start - c.start % PAGE, c.end, PAGE)}
        excluded = {address for c in dump.memory if c.state is PageState.EXCLUDED
                    for address in range(c.start, c.end, PAGE)}
        failing = set()
        for start, end in dump.memory.ranges():
            for address in range(start - start % PAGE, end, PAGE):
                if address in excluded:
                    continue
                try:
                    dump.read_physical(max(address, start), min(PAGE, end - max(address, start)))
                except MemoryUnavailable:
                    failing.add(address)
        assert failing == missing
    finally:
        dump.close()


@pytest.mark.parametrize("name", ["mkdf-zlib-d1.kdump.xz", D31, "mkdf-raw-d31.kdump.xz",
                                  "mkdf-flat-zlib-d31.flat.xz", "mkdf-elf-d31.vmcore.xz", FULL])
def test_a_cut_dump_counts_what_it_cannot_deliver_as_missing(tmp_path, name):
    assert_missing_is_what_fails(cut_copy(fc.unpacked(FOLDER, name), tmp_path / name.removesuffix(".xz")))


@pytest.mark.parametrize("kind", ["s390-plain", "s390_ext-v1", "s390_ext-v2", "vmdump", "vmdump-classic",
                                  "lkcd-full", "lkcd-zlib", "lkcd-flex", "tape-aws"])
def test_a_cut_ibm_z_dump_counts_what_it_cannot_deliver_as_missing(written, tmp_path, kind):
    source = written(kind).path
    assert_missing_is_what_fails(cut_copy(source, tmp_path / source.name))


# ---------------------------------------------------------------------------
# a mapping's holes are found without visiting every page of a huge empty range
# ---------------------------------------------------------------------------

def test_regions_map_skips_what_upper_level_entries_leave_unmapped():
    """A 1 TiB reservation with one page behind it: runs come from a handful of table walks."""
    from types import SimpleNamespace

    from conftest import time_limit
    from dumpfs.arch.x86_64_paging import X86_64Paging
    from dumpfs.errors import TranslationError
    from dumpfs.kernel.address_space import KernelMemory, TableCache
    from dumpfs.kernel.mm import Vma
    from dumpfs.views.proc import Process
    from synthetic import synthetic_dump

    base = 0x7F00_0000_0000                 # PGD slot 254; the next slot (255) holds one page
    page_at = base + (1 << 39) + 0x3000
    tables = {0x1000: {(page_at >> 39) & 511: 0x2000}, 0x2000: {0: 0x3000}, 0x3000: {0: 0x4000},
              0x4000: {3: 0x5000}}
    memory = {address: b"".join((entries.get(i, 0) | (1 if i in entries else 0)).to_bytes(8, "little")
                                for i in range(512))
              for address, entries in tables.items()}
    memory[0x5000] = b"x" * PAGE
    dump = synthetic_dump(memory=memory)
    process = Process(SimpleNamespace(dump=dump), task=None)
    process.__dict__["umem"] = KernelMemory(dump, X86_64Paging(TableCache(dump), 0x1000))
    with pytest.raises(TranslationError) as caught:
        process.umem.translate(base)
    assert caught.value.unmapped_until == base + (1 << 39)
    vma = Vma(base, base + (2 << 39), 3, 0)
    with time_limit(10):
        runs = process.page_runs(vma)
    assert runs == [(base, page_at, "unmapped"), (page_at, page_at + PAGE, None),
                    (page_at + PAGE, vma.end, "unmapped")]
    assert process.umem.read(page_at, 4) == b"xxxx"
