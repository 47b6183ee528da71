"""Compressed dump files (gzip, bzip2, xz single/multi-block, zstd single/multi-frame) read like the file inside.

Each fixture is recompressed once per session (fast levels) into a tmp
folder; the decompressed Source must give the plain file's bytes anywhere
(chunk and block boundaries, the end), and `dumpfs info` and a real mount
of the compressed file must show what the plain file shows.  The one-pass
cache is built once and reused, rebuilt when damaged, private (0600); a
truncated file serves what it holds.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import threading

import pytest

import fixturecache as fc
from conftest import is_mounted, run_dumpfs, track_mount, unmount
from dumpfs import chunkcache, compressed
from dumpfs.waiting import WouldBlock, without_waiting
from dumpfs.source import BytesSource, FileSource

MiB = 1 << 20

FIXTURES = [        # one main dump of every fixture folder (fixturecache.folders()), the smallest
    ("x86_64-custom", "qemu-elf.vmcore.xz"),            # where there are several formats alike
    ("x86_64-custom", "mkdf-zlib-d1.kdump.xz"),
    ("x86_64-debian", "mkdf-zlib-d31.kdump.xz"),
    ("x86_64-debian-kdump", "kdump-mkdf-zlib-d31.kdump.xz"),
    ("x86_64-debian-many", "mkdf-raw-d31.kdump.xz"),
    ("x86_64-debian11", "qemu-elf.vmcore.xz"),
    ("s390x-custom", "zgetdump.s390.xz"),
    ("s390x-debian", "qemu-dgm-kdump-zlib.reassembled.kdump.xz"),
]
NEEDS_DEBUG_VMLINUX = {"s390x-debian"}     # no BTF in the dump: proc/ from the distro's DWARF

# form: (compress command, $DUMPFS_DECOMPRESS for the mount)
FORMS = {
    "gz": (["gzip", "-1", "-c"], "auto"),
    "sb.xz": (["xz", "-0", "-T1", "-c"], "auto"),
    "mb.xz": (["xz", "-0", "-T2", "--block-size=1MiB", "-c"], "native"),
    "zst": (["zstd", "-q", "-1", "-c"], "auto"),
}
SMALL_ONLY = {      # slower or rarer forms, on the small kdump only
    "bz2": (["bzip2", "-1", "-c"], "auto"),
    "mf.zst": (["pzstd", "-q", "-1", "-p", "2", "-c"], "native"),
}
IN_PROCESS = {("x86_64-custom", "qemu-elf.vmcore.xz"), ("x86_64-custom", "mkdf-zlib-d1.kdump.xz"),
              ("x86_64-debian", "mkdf-zlib-d31.kdump.xz"), ("s390x-custom", "zgetdump.s390.xz")}
"""Also read in-process and through `info` (the mount test covers every fixture: CI time)."""
MOUNT_CASES = [(folder, name, form) for folder, name in FIXTURES for form in FORMS] + \
    [("x86_64-custom", "mkdf-zlib-d1.kdump.xz", form) for form in SMALL_ONLY]
CASES = [case for case in MOUNT_CASES if case[:2] in IN_PROCESS]


def ids(cases) -> list[str]:
    return [f"{folder}:{name.removesuffix('.xz')}.{form}" for folder, name, form in cases]


IDS = ids(CASES)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One decompress cache for the session, used by in-process opens and by subprocesses."""
    path = tmp_path_factory.mktemp("dumpfs-cache")
    old = os.environ.get("DUMPFS_CACHE_DIR")
    os.environ["DUMPFS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DUMPFS_CACHE_DIR", None)
    else:
        os.environ["DUMPFS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def recompressed(cache_dir):
    """recompressed(folder, name, form) -> (plain path, compressed path), compressed once into
    the fixture cache (fixturecache.recompressed) and reused by later sessions."""
    def get(folder: str, name: str, form: str):
        command = {**FORMS, **SMALL_ONLY}[form][0]
        return fc.unpacked(folder, name), fc.recompressed(folder, name, form, command)
    return get


def mode_of(form: str) -> str:
    return {**FORMS, **SMALL_ONLY}[form][1]


def sample_offsets(size: int, count: int = 300) -> list[tuple[int, int]]:
    """Random (offset, length) plus every kind of boundary: cache chunks, xz blocks, the end."""
    rng = random.Random(size)
    picks = [(0, 4096), (max(size - 4096, 0), 4096), (max(size - 1, 0), 1), (size - 100, 200)]
    for boundary in (chunkcache.CHUNK_SIZE, compressed.NATIVE_PIECE, MiB, 8 * MiB):
        for k in range(1, 4):
            at = boundary * rng.randrange(1, max(size // boundary, 1) + 1) if size > boundary else 0
            picks.append((max(at - 37 * k, 0), 4096 * k + 3))
    picks += [(rng.randrange(size), rng.choice([1, 4096, 65536, 300_000])) for _ in range(count)]
    return picks


def check_bytes(source, plain_path) -> None:
    with open(plain_path, "rb") as f:
        plain = f.read()
    assert source.size == len(plain)
    for offset, length in sample_offsets(len(plain)):
        assert source.read(offset, length) == plain[offset:offset + length], (offset, length)


@pytest.mark.parametrize("folder,name,form", CASES, ids=IDS)
def test_decompressed_bytes_equal_the_plain_file(recompressed, folder, name, form):
    plain, packed = recompressed(folder, name, form)
    for mode in {"auto", mode_of(form)}:
        source = compressed.open_compressed(str(packed), mode=mode)
        try:
            assert source.name == f"{packed} ({source.kind})"
            assert source.container.startswith(source.kind)
            check_bytes(source, plain)
        finally:
            source.close()


def test_native_seek_points_used_where_the_format_has_them(recompressed):
    for form, words in (("mb.xz", "blocks: random access by block (python-xz)"),
                        ("mf.zst", "frames: random access by frame (indexed_zstd)")):
        _, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", form)
        source = compressed.open_compressed(str(packed), mode="native")
        try:
            assert words in source.container and "no cache" in source.container
        finally:
            source.close()


def test_not_compressed_is_none(fixture_path):
    path = fixture_path("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    assert compressed.open_compressed(str(path)) is None
    assert compressed.open_compressed(BytesSource(b"ELF and more")) is None


def test_source_without_identity_decompresses_privately(recompressed, cache_dir):
    plain, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", "gz")
    source = compressed.open_compressed(BytesSource(packed.read_bytes(), name="in-memory.gz"))
    try:
        assert "an unnamed cache" in source.container
        check_bytes(source, plain)
    finally:
        source.close()
    assert not [p for p in (cache_dir / "decompress").iterdir() if p.name.startswith("anonymous")]


def test_cache_is_built_once_private_and_rebuilt_when_damaged(recompressed):
    plain, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", "sb.xz")
    first = compressed.open_compressed(str(packed))
    first.close()
    path = compressed.cache_path(FileSource(str(packed)), "xz")
    before = os.stat(path)
    assert stat.S_IMODE(before.st_mode) == 0o600
    again = compressed.open_compressed(str(packed))
    try:
        assert "(reused;" in again.container
        after = os.stat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    finally:
        again.close()
    with open(path, "r+b") as f:           # damage the offset table: never trusted, rebuilt
        f.seek(-16, os.SEEK_END)
        f.write(b"\xff" * 8)
    rebuilt = compressed.open_compressed(str(packed))
    try:
        assert "(built now;" in rebuilt.container
        check_bytes(rebuilt, plain)
    finally:
        rebuilt.close()


def test_damaged_chunk_is_an_error_not_wrong_bytes(recompressed, tmp_path):
    _, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", "zst")
    source = compressed.open_compressed(str(packed))
    source.close()
    path = compressed.cache_path(FileSource(str(packed)), "zstd")
    copy = tmp_path / "copy.zc"
    shutil.copy(path, copy)
    cache = chunkcache.ChunkCache(str(copy), "copy")
    index = next(i for i in range(cache.header.chunks) if cache.table[i + 1] - cache.table[i] > 100)
    with open(copy, "r+b") as f:
        f.seek(cache.table[index] + 50)
        f.write(b"\x55" * 16)
    cache = chunkcache.ChunkCache(str(copy), "copy")
    with pytest.raises(chunkcache.Unavailable, match=f"damaged at chunk {index}"):
        cache.read(index * cache.piece_size, 10)
    cache.close()


def test_reads_from_many_threads_and_without_waiting(recompressed):
    plain_path, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", "mb.xz")
    plain = plain_path.read_bytes()
    for mode in ("cache", "native"):
        source = compressed.open_compressed(str(packed), mode=mode)
        wrong = []

        def reader(seed):
            rng = random.Random(seed)
            for _ in range(100):
                offset = rng.randrange(len(plain))
                if source.read(offset, 5000) != plain[offset:offset + 5000]:
                    wrong.append(offset)
        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not wrong
        last = source.size - 10
        source.pieces._decoded.clear()
        if mode == "cache":
            with without_waiting():     # the chunk's bytes in the page cache: decoded at once
                assert source.read(last, 10) == plain[last:]
                chunk = chunkcache.CHUNK_SIZE       # but never more than a few chunks at once
                with pytest.raises(WouldBlock):
                    source.read(0, chunk * (chunkcache.NO_WAIT_DECODES + 1))
            source.pieces._decoded.clear()
            evict_from_page_cache(source.pieces.path)
        with without_waiting():         # nothing decoded, nothing cached: the loop may not wait
            with pytest.raises(WouldBlock):
                source.read(last, 10)
        assert source.read(last, 10) == plain[last:]
        with without_waiting():         # decoded now: served where nothing may wait
            assert source.read(last, 10) == plain[last:]
        source.close()


def evict_from_page_cache(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_no_space_for_the_cache_is_one_clear_error(recompressed, monkeypatch, tmp_path):
    _, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", "gz")
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(chunkcache.os, "fsync", full)
    with pytest.raises(compressed.DumpError, match="no space left in .* DUMPFS_CACHE_DIR"):
        compressed.open_compressed(str(packed))
    assert not list((tmp_path / "decompress").iterdir())     # no half file left behind


# -- through the CLI ------------------------------------------------------------------

def info_lines(path, **env) -> tuple[int, list[str], str]:
    done = run_dumpfs("info", path, env={**os.environ, **env})
    return done.returncode, done.stdout.splitlines(), done.stderr


@pytest.mark.parametrize("folder,name,form", CASES, ids=IDS)
def test_info_names_the_same_dump(recompressed, folder, name, form):
    plain, packed = recompressed(folder, name, form)
    rc, plain_lines, _ = info_lines(plain)
    assert rc == 0
    rc, lines, err = info_lines(packed, DUMPFS_DECOMPRESS=mode_of(form))
    assert rc == 0, err
    assert "Traceback" not in err
    container = [line for line in lines if line.strip().startswith("container")]
    assert container and "incomplete" not in container[0]

    def same(line):
        return not line.strip().startswith(("Sources", "container"))
    assert [line for line in lines if same(line)] == [line for line in plain_lines if same(line)]


def mount_with(path, mountpoint, *options, **env):
    mountpoint.mkdir(exist_ok=True)
    done = run_dumpfs("mount", *options, path, mountpoint, timeout=180, env={**os.environ, **env})
    if is_mounted(mountpoint):
        track_mount(mountpoint)
    assert done.returncode == 0, done.stderr
    return mountpoint


def listing(top) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*")) if top.exists() else []


def test_every_fixture_folder_is_covered():
    assert {folder for folder, _ in FIXTURES} == set(fc.folders())


def symbol_options(folder: str) -> list:
    return ["--vmlinux", fc.debug_vmlinux(folder)] if folder in NEEDS_DEBUG_VMLINUX else []


WHOLE_HASH_MAX = 64 * MiB       # a larger vmcore is compared by sampled ranges
SAMPLES = 24                    # ranges of SAMPLE bytes at random offsets, besides the first MiB
SAMPLE = 256 << 10


def vmcore_digests(path, size: int) -> list[str]:
    """SHA-256 of the first MiB and of SAMPLES random ranges (the same for the same size), and
    of the whole file when that is cheap: what a compressed mount's vmcore must match."""
    rng = random.Random(size)
    ranges = [(0, MiB)] + [(rng.randrange(size), SAMPLE) for _ in range(SAMPLES)]
    digests = []
    with open(path, "rb") as f:
        for offset, length in ranges:
            f.seek(offset)
            digests.append(f"{offset:#x}+{length:#x}: {hashlib.sha256(f.read(length)).hexdigest()}")
        if size <= WHOLE_HASH_MAX:
            f.seek(0)
            digests.append(f"whole: {hashlib.file_digest(f, 'sha256').hexdigest()}")
    return digests


def proc_listing(top) -> list[str]:
    """proc/ recursively; with many processes (x86_64-debian-many) its top and the folders of
    a sample of them, whole (every process's folder reads the same kernel structures)."""
    proc = top / "proc"
    if not proc.exists():
        return []
    pids = sorted(os.listdir(proc), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else n))
    if len(pids) <= 100:
        return listing(proc)
    sample = pids[:4] + pids[len(pids) // 2:len(pids) // 2 + 4] + pids[-4:]
    return pids + [f"{pid}/{path}" for pid in sample for path in listing(proc / pid)]


@pytest.mark.parametrize("folder,name,form", MOUNT_CASES, ids=ids(MOUNT_CASES))
def test_mount_shows_the_same_vmcore_registers_and_proc(mount, recompressed, tmp_path, folder, name, form):
    plain, packed = recompressed(folder, name, form)
    options = symbol_options(folder)
    plain_mp = mount(*options, plain)
    mp = mount_with(packed, tmp_path / "mnt", *options, DUMPFS_DECOMPRESS=mode_of(form))
    try:
        size = (plain_mp / "vmcore").stat().st_size
        assert (mp / "vmcore").stat().st_size == size
        assert vmcore_digests(mp / "vmcore", size) == vmcore_digests(plain_mp / "vmcore", size)
        cpus = sorted(p.name for p in (plain_mp / "cpus").iterdir())
        assert sorted(p.name for p in (mp / "cpus").iterdir()) == cpus
        registers = [plain_mp / "cpus" / cpu / "registers" for cpu in cpus]
        assert any(path.exists() for path in registers)
        for path in registers:
            if path.exists():
                assert (mp / path.relative_to(plain_mp)).read_text() == path.read_text()
        processes = proc_listing(plain_mp)
        assert processes, "the plain file shows no proc/: nothing to compare"
        assert proc_listing(mp) == processes
        assert "container" in (mp / "info").read_text()
    finally:
        unmount(mp)


# -- truncated compressed files -------------------------------------------------------

def memory_map(top) -> list[tuple[int, int, str]]:
    """(start, end, state) of each line of memory/map."""
    ranges = []
    for line in (top / "memory" / "map").read_text().splitlines():
        bounds, state = line.split()[:2]
        start, end = (int(x, 16) for x in bounds.split("-"))
        ranges.append((start, end, state))
    return ranges


def read_memory(top, address: int, length: int) -> bytes:
    for path in (top / "memory").iterdir():
        if path.name != "map":
            start, end = (int(x, 16) for x in path.name.split("-"))
            if start <= address < end:
                with open(path, "rb") as f:
                    f.seek(address - start)
                    return f.read(length)
    raise AssertionError(f"{address:#x} is in no memory/ file")


@pytest.mark.parametrize("form", ["gz", "sb.xz", "mb.xz", "zst"])
def test_truncated_file_serves_what_it_holds(mount, recompressed, tmp_path, form):
    plain, packed = recompressed("x86_64-custom", "qemu-elf.vmcore.xz", form)
    cut = tmp_path / f"cut.{form}"
    cut.write_bytes(packed.read_bytes()[:packed.stat().st_size * 2 // 3])
    rc, lines, err = info_lines(cut, DUMPFS_DECOMPRESS=mode_of(form))
    assert rc == 0 and "Traceback" not in err, err
    text = "\n".join(lines)
    assert "incomplete: the compressed data ends early" in text
    assert "Dump complete......: NO" in text
    plain_mp = mount(plain)
    mp = mount_with(cut, tmp_path / "mnt", DUMPFS_DECOMPRESS=mode_of(form))
    try:
        ranges = memory_map(mp)
        present = [r for r in ranges if r[2] == "present"]
        missing = [r for r in ranges if r[2] == "missing"]
        assert present and missing
        for start, end, _ in present:                       # what the file holds serves
            for address in (start, (start + end) // 2 & ~4095, (end & ~4095) - 4096):
                assert read_memory(mp, address, 4096) == read_memory(plain_mp, address, 4096)
        with pytest.raises(OSError) as error:               # the lost tail is EIO
            read_memory(mp, missing[-1][0], 4096)
        assert error.value.errno == 5
    finally:
        unmount(mp)


def test_truncated_to_nothing_is_one_error_line(recompressed, tmp_path):
    _, packed = recompressed("x86_64-custom", "qemu-elf.vmcore.xz", "gz")
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed.read_bytes()[:40])
    rc, lines, err = info_lines(cut)
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("form", ["bz2", "sb.xz", "zst"])
def test_corrupt_data_keeps_what_came_before_and_says_so(recompressed, tmp_path, form):
    plain, packed = recompressed("x86_64-custom", "mkdf-zlib-d1.kdump.xz", form)
    data = bytearray(packed.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x5a" * 64
    bad = tmp_path / f"bad.{form}"
    bad.write_bytes(data)
    source = compressed.open_compressed(str(bad))
    try:
        assert "incomplete: the compressed data is corrupt near compressed offset" in source.container
        assert 0 < source.size < plain.stat().st_size
        head = min(source.size // 2, MiB)      # the damaged block itself may decode to wrong bytes
        with open(plain, "rb") as f:
            assert source.read(0, head) == f.read(head)
    finally:
        source.close()
