#!/usr/bin/env python3
"""dumpfs benchmarks on the shared fixtures, through the real CLI; every figure a ratio from one run.

    python bench/bench.py [--repeat N] [--no-write]

1. Uncompressed sources (ELF, a paging=true-style ELF with 65,000+ program
   headers made from it, the s390x QEMU ELF, a plain s390 image and its
   `dump.s390`, a raw kdump, a `memory/` file): `dd bs=1M` of the mounted
   file's first read (fresh mount) against the same `dd` of `bench/noop_fs.py`,
   a pyfuse3 server that does no work, mounted the same way and serving a file
   of the same size, in the same run (warm source; the two alternate which
   goes first).  Cold: `echo 3 > /proc/sys/vm/drop_caches` before a `dd` of the
   source file and again before the first read of the mounted file.
2. Compressed sources (kdump zlib `-d 1`, s390_ext zlib), each ~250 MiB of
   decoded memory (the fixtures' own pages tiled, so that start-up costs do not
   decide the figure): the first read of the mounted `vmcore` against
   single-thread in-process decoding of the same pages, measured right before
   it in the same run, twice: with CPython's zlib (what makedumpfile, crash and
   zgetdump use: the target's reference) and with the decoder dumpfs chose
   (`dumpfs.inflate.DECODER`: ISA-L where installed, else zlib).
3. No regression: a 4 TiB sparse ELF (mount time, peak RSS of the daemon) and
   the cost of a cached 4 KiB pread of `vmcore`.

Each row's ratio is the median of the per-run ratios (--repeat runs, 3 by
default); `uptime` load is printed with the results, since the machine may be
shared.  Prints Markdown and writes it to bench/RESULTS.md (the analysis below
its marker is kept).  Mounts are unmounted whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))
import fixturecache as fc  # noqa: E402
from dumpfs.inflate import DECODER, inflate, inflate_prefix  # noqa: E402

DUMPFS = [sys.executable, "-m", "dumpfs"]
NOOP = [sys.executable, str(HERE / "noop_fs.py")]
MiB = 1 << 20
TiB = 1 << 40

MARKER = "<!-- analysis: kept by bench.py across runs -->"

TARGET_NOOP_RATIO = 0.9         # first read against the no-op server, warm source
TARGET_COLD_RATIO = 0.6         # cold first read against a cold plain read of the source
TARGET_DECODE_RATIO = 1.6       # compressed first read against single-thread decoding
TARGET_MOUNT_S = 2.0
TARGET_RSS_MIB = 150

ELF_SOURCE = ("x86_64-custom", "qemu-elf.vmcore.xz")
S390X_ELF_SOURCE = ("s390x-custom", "qemu-dgm.elf.xz")
RAW_KDUMP_SOURCE = ("x86_64-custom", "mkdf-raw-d31.kdump.xz")
KDUMP_SOURCE = ("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
S390_FIXTURE = S390X_ELF_SOURCE
KDUMP_COPIES = 8                # the kdump fixture's pages tiled 8 times: ~280 MiB of zlib pages
S390_ZLIB_MIB = 256             # MiB of non-zero memory (the fixture's, tiled) in the s390_ext image
PAGING_PAGE = 4096              # one PT_LOAD per page in the paging=true-style ELF
PN_XNUM = 0xFFFF


# -- mounts -------------------------------------------------------------------

_mounts: list[Path] = []


def is_mounted(path: Path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def mount(sources: list[Path], mountpoint: Path) -> float:
    """`dumpfs mount` in daemon mode; returns seconds until it exited with the mount ready."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([*DUMPFS, "mount", *map(str, sources), str(mountpoint)],
                          capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if is_mounted(mountpoint):
        _mounts.append(mountpoint)
    if done.returncode != 0 or not is_mounted(mountpoint):
        raise RuntimeError(f"dumpfs mount {sources} failed ({done.returncode}): {done.stderr}")
    return elapsed


def umount(mountpoint: Path) -> None:
    if is_mounted(mountpoint):
        subprocess.run([*DUMPFS, "umount", str(mountpoint)], capture_output=True, timeout=120)
    for command in (["fusermount3", "-u"], ["fusermount3", "-uz"], ["umount", "-l"]):
        if not is_mounted(mountpoint):
            break
        subprocess.run([*command, str(mountpoint)], capture_output=True)
    if mountpoint in _mounts:
        _mounts.remove(mountpoint)


def umount_all() -> None:
    for mountpoint in list(_mounts):
        umount(mountpoint)


def daemon_pid(mountpoint: Path) -> int | None:
    """The dumpfs process serving `mountpoint`, found by its command line."""
    target = str(mountpoint)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target.encode() in args and any(b"dumpfs" in a for a in args):
            return int(entry)
    return None


def vm_hwm_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s*(\d+) kB", text, re.M).group(1))


# -- reads --------------------------------------------------------------------

def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def dd(path: Path) -> tuple[int, float]:
    """(bytes, seconds) of `dd if=path of=/dev/null bs=1M`."""
    start = time.perf_counter()
    done = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"],
                          capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"dd {path}: {done.stderr}")
    copied = int(re.search(r"^(\d+) bytes", done.stderr, re.M).group(1))
    return copied, elapsed


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


# -- the no-op server ------------------------------------------------------------

def noop_mount(size: int, mountpoint: Path) -> subprocess.Popen:
    """bench/noop_fs.py serving a `vmcore` of `size` bytes on `mountpoint`, mounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([*NOOP, str(size), str(mountpoint)])
    deadline = time.monotonic() + 30
    while not is_mounted(mountpoint):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"noop_fs did not mount on {mountpoint}")
        time.sleep(0.02)
    _mounts.append(mountpoint)
    return server


def noop_umount(server: subprocess.Popen, mountpoint: Path) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    umount(mountpoint)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def mounted_file(mountpoint: Path, name: str) -> Path:
    """The file to read: a path in the mount, or "memory/" for its largest range file."""
    if name != "memory/":
        return mountpoint / name
    files = [p for p in (mountpoint / "memory").iterdir() if p.name != "map"]
    return max(files, key=lambda p: p.stat().st_size)


# -- sources made here ---------------------------------------------------------

def write_paging_elf(source: Path, path: Path) -> int:
    """The x86_64 ELF `source` rewritten the way QEMU's paging=true writes big guests: one
    PT_LOAD per 4 KiB page, so more than 65,535 program headers (PN_XNUM, the count in
    section header 0).  Returns the program header count."""
    with open(source, "rb") as f:
        ehdr = f.read(64)
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phnum, = struct.unpack_from("<H", ehdr, 56)
        f.seek(phoff)
        table = f.read(56 * phnum)
    headers = [struct.unpack_from("<IIQQQQQQ", table, 56 * i) for i in range(phnum)]
    notes = [h for h in headers if h[0] == 4]
    loads = [h for h in headers if h[0] == 1 and h[5]]
    pieces = [(paddr + at, offset + at, min(PAGING_PAGE, filesz - at))
              for _, _, offset, _, paddr, filesz, _, _ in loads for at in range(0, filesz, PAGING_PAGE)]
    count = len(notes) + len(pieces)
    data_start = -(-(128 + 56 * count) // PAGING_PAGE) * PAGING_PAGE
    new_headers, position, copies = [], data_start, []
    for note in notes:
        new_headers.append(struct.pack("<IIQQQQQQ", 4, 0, position, 0, 0, note[5], note[5], 0))
        copies.append((note[2], position, note[5]))
        position += note[5]
    position = -(-position // PAGING_PAGE) * PAGING_PAGE
    for paddr, offset, size in pieces:
        new_headers.append(struct.pack("<IIQQQQQQ", 1, 7, position, 0xFFFF888000000000 + paddr,
                                       paddr, size, size, 0))
        copies.append((offset, position, size))
        position += size
    header = bytearray(ehdr)
    struct.pack_into("<QQ", header, 32, 128, 64)                       # e_phoff, e_shoff
    struct.pack_into("<HHHH", header, 56, PN_XNUM, 64, 1, 0)           # e_phnum, shentsize, shnum
    section0 = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, count, 0, 0)
    with open(source, "rb") as src, open(path, "wb") as out:
        out.write(bytes(header) + section0 + b"".join(new_headers))
        for offset, at, size in _merge_copies(copies):
            src.seek(offset)
            out.seek(at)
            out.write(src.read(size))
    return count


def _merge_copies(copies):
    """(source offset, target offset, size) runs, adjacent ones merged."""
    merged: list[list[int]] = []
    for offset, at, size in copies:
        if merged and merged[-1][0] + merged[-1][2] == offset and merged[-1][1] + merged[-1][2] == at:
            merged[-1][2] += size
        else:
            merged.append([offset, at, size])
    return merged


# -- decode references -----------------------------------------------------------

def write_tiled_kdump(source: Path, path: Path, copies: int = KDUMP_COPIES) -> None:
    """A kdump-compressed file holding the dumpable pages of `source` (64-bit little-endian)
    `copies` times at successive pfn ranges, stored bytes copied as they are (same codec,
    same compression, data shared within a copy where the source shares it), with the
    source's notes and VMCOREINFO."""
    from writers.kdump import write_kdump
    data = memoryview(source.read_bytes())
    block_size, sub_hdr_size, bitmap_blocks, max_mapnr32 = struct.unpack_from("<iiII", data, 0x1AC)
    status, = struct.unpack_from("<I", data, 0x1A8)
    sub = struct.unpack_from("<QiiQQqQqQqQQQQ", data, block_size)
    phys_base, dump_level, offset_info, size_info, offset_note, size_note = \
        sub[0], sub[1], sub[5], sub[6], sub[7], sub[8]
    max_mapnr = sub[13] or max_mapnr32
    bitmap2 = (1 + sub_hdr_size + bitmap_blocks // 2) * block_size
    bitmap = bytes(data[bitmap2:bitmap2 + (max_mapnr + 7) // 8])
    pfns = [8 * i + bit for i, byte in enumerate(bitmap) if byte for bit in range(8) if byte >> bit & 1]
    table = (1 + sub_hdr_size + bitmap_blocks) * block_size
    descs = [struct.unpack_from("<qIIQ", data, table + 24 * k)[:3] for k in range(len(pfns))]
    period = -(-max_mapnr // 8) * 8

    def stored():
        for copy in range(copies):
            for offset, size, flags in descs:
                yield data[offset:offset + size], flags, (copy, offset)

    with open(path, "wb") as f:
        write_kdump(f, [copy * period + pfn for copy in range(copies) for pfn in pfns], stored(),
                    max_mapnr=period * copies, status=status, block_size=block_size,
                    notes=bytes(data[offset_note:offset_note + size_note]),
                    vmcoreinfo=(offset_info - offset_note, size_info) if size_info else None,
                    uts=bytes(data[12:12 + 390]), dump_level=dump_level,
                    nr_cpus=struct.unpack_from("<i", data, 0x1CC)[0], phys_base=phys_base)


def decode_rates(items, one, zlib_one) -> dict:
    """Seconds and MB/s of decoding `items` on one thread with CPython's zlib (`zlib_one`)
    and with dumpfs' decoder (`one`), checking they agree on the byte count."""
    result = {}
    for name, decode in (("zlib", zlib_one), (DECODER, one)):
        start = time.perf_counter()
        out = sum(len(decode(item)) for item in items)
        elapsed = time.perf_counter() - start
        result[name] = (out, elapsed)
    out, elapsed = result["zlib"]
    if result[DECODER][0] != out:
        raise RuntimeError(f"{DECODER} decoded {result[DECODER][0]} bytes, zlib {out}")
    return {"bytes": out, "seconds": elapsed, "mb_s": rate(out, elapsed), "decoder": DECODER,
            "decoder_mb_s": rate(*result[DECODER])}


def kdump_zlib_decode_rate(path: Path, merge_gap: int = 64) -> dict:
    """The zlib pages of a kdump-compressed file, as a sequential reader meets them: runs of
    zlib pages at consecutive addresses (joined across fewer than `merge_gap` other pages,
    which are then read too) decoded in-process on one thread (zlib pages decompressed, the
    others copied as stored), with zlib and with dumpfs' decoder.  Returns the rates and the
    physical (address, length) ranges."""
    data = path.read_bytes()
    if data[:8] != b"KDUMP   ":
        raise RuntimeError(f"{path}: not a kdump-compressed file")
    block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", data, 0x1AC)
    bitmap2 = (1 + sub_hdr_size + bitmap_blocks // 2) * block_size
    bitmap = data[bitmap2:bitmap2 + bitmap_blocks // 2 * block_size]
    pfns = [8 * i + bit for i, byte in enumerate(bitmap) if byte for bit in range(8) if byte >> bit & 1]
    table = (1 + sub_hdr_size + bitmap_blocks) * block_size
    descs = [struct.unpack_from("<qIIQ", data, table + 24 * k) for k in range(len(pfns))]
    runs: list[list[int]] = []              # [first descriptor, end descriptor]
    for k, (_, _, flags, _) in enumerate(descs):
        if flags & 0x01:
            end = runs[-1][1] if runs else None
            if runs and k - end < merge_gap and pfns[k] - pfns[end - 1] == k - end + 1:
                runs[-1][1] = k + 1
            else:
                runs.append([k, k + 1])
    view = memoryview(data)
    chosen = [descs[k] for first, end in runs for k in range(first, end)]
    items = [(view[offset:offset + size], flags & 0x01) for offset, size, flags, _ in chosen]
    decompress = zlib.decompress
    result = decode_rates(items, lambda item: inflate(item[0], block_size) if item[1] else bytes(item[0]),
                          lambda item: decompress(item[0], 15, block_size) if item[1] else bytes(item[0]))
    return {**result, "pages": len(chosen), "zlib_pages": sum(1 for d in chosen if d[2] & 0x01),
            "ranges": [(pfns[first] * block_size, (end - first) * block_size) for first, end in runs]}


# -- IBM Z (s390) ---------------------------------------------------------------

def write_s390_images(workdir: Path) -> dict[str, Path]:
    """Plain s390 of s390x-custom's memory and s390_ext v2 (zlib) of S390_ZLIB_MIB of memory
    made of its non-zero megabytes, tiled (the fixture has only ~21), by the test writers."""
    sys.path.insert(0, str(REPO / "tests"))
    from dumpfs.backends import open_dump
    from writers import s390 as w

    elf = open_dump(str(fc.unpacked(*S390_FIXTURE)))
    try:
        mem, cpus = elf.memory.end, w.cpu_states(elf)
        t0, t1 = w.tod(1_700_000_000), w.tod(1_700_000_005)
        paths = {"plain": workdir / "s390-plain.img", "zlib": workdir / "s390_ext-v2.img"}
        with open(paths["plain"], "wb") as f:
            w.write_s390(f, elf.read_physical, mem, cpus, tod_start=t0, tod_end=t1)
        zero = bytes(MiB)
        used = [a for a in range(0, mem, MiB) if elf.read_physical(a, min(MiB, mem - a)) != zero[:mem - a]]
        tiled = [used[i % len(used)] for i in range(S390_ZLIB_MIB)]
        tiled[0] = 0                        # the lowcores (registers) where they belong

        def read_tiled(address: int, length: int) -> bytes:
            parts = []
            while length > 0:
                index, inner = divmod(address, MiB)
                part = min(length, MiB - inner)
                parts.append(elf.read_physical(tiled[index] + inner, part))
                address, length = address + part, length - part
            return b"".join(parts)
        with open(paths["zlib"], "wb") as f:
            w.write_s390_ext(f, read_tiled, S390_ZLIB_MIB * MiB, cpus, version=2, tod_start=t0,
                             tod_end=t1)
    finally:
        elf.close()
    return paths


def s390_ext_zlib_decode_rate(path: Path) -> dict:
    """Decompress every zlib entry of an s390_ext v2 image in-process (one thread), from the
    format alone (s390.md): header zlib_entry_size, 4 KiB segment headers, entry offsets in blocks."""
    data = path.read_bytes()
    magic, version = struct.unpack_from(">QI", data, 0)
    if magic != 0xA8190173618F23FE or version != 2:
        raise RuntimeError(f"{path}: not an s390_ext v2 dump")
    mem_size = struct.unpack_from(">Q", data, 0x18)[0]
    unit = struct.unpack_from(">I", data, 0x62)[0]
    view = memoryview(data)
    entries, raw_bytes, offset = [], 0, 0x1000
    while True:
        start, length, stop, size_on_disk = struct.unpack_from(">QQQI", data, offset)
        count = struct.unpack_from(">I", data, offset + 0x30)[0]
        body = offset + 0x1000
        if size_on_disk:
            values = struct.unpack_from(f">{count}I", data, offset + 0x34)
            ends = [(v & 0x7FFFFFFF) * 4096 for v in values[1:]] + [size_on_disk * 4096]
            for i, (value, end) in enumerate(zip(values, ends)):
                out = min(unit, length - i * unit)
                if value & 0x80000000:
                    raw_bytes += out
                else:
                    entries.append((body + (value & 0x7FFFFFFF) * 4096, body + end, out, start + i * unit))
            offset = body + size_on_disk * 4096
        else:
            raw_bytes += length
            offset = body + length
        if stop or not length:
            break
    items = [(view[low:high], size) for low, high, size, _ in entries]
    result = decode_rates(items, lambda item: inflate_prefix(*item),
                          lambda item: zlib.decompressobj().decompress(*item))
    expected = sum(size for _, _, size, _ in entries)
    if result["bytes"] != expected:
        raise RuntimeError(f"{path}: decoded {result['bytes']} bytes, the entries hold {expected}")
    return {**result, "entries": len(entries), "ranges": [(a, n) for _, _, n, a in entries],
            "raw_bytes": raw_bytes, "mem_size": mem_size, "file_bytes": len(data)}


def elf_loads(path: Path) -> list[tuple[int, int, int]]:
    """(paddr, offset, filesz) of the PT_LOADs of an ELF64 core, either byte order (not PN_XNUM)."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        order = "<" if ehdr[5] == 1 else ">"
        phoff, = struct.unpack_from(order + "Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", ehdr, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _, offset, _, paddr, filesz = struct.unpack_from(order + "IIQQQQ", table, i * phentsize)
        if p_type == 1:
            loads.append((paddr, offset, filesz))
    return loads


# -- benchmarks ------------------------------------------------------------------

def against_noop(source: Path, name: str, workdir: Path, repeat: int, tag: str) -> dict:
    """First read of `name` in a fresh mount of `source` against the no-op server (warm)."""
    warm(source)
    ours, noop, ratios = [], [], []
    for i in range(repeat):
        mountpoint, noop_point = workdir / f"{tag}-{i}", workdir / f"{tag}-noop-{i}"
        try:
            mount([source], mountpoint)
            path = mounted_file(mountpoint, name)
            size = path.stat().st_size
            server = noop_mount(size, noop_point)
            try:
                os.stat(noop_point / "vmcore")
                if i % 2:
                    mine, theirs = dd(path), dd(noop_point / "vmcore")
                else:
                    theirs, mine = dd(noop_point / "vmcore"), dd(path)
            finally:
                noop_umount(server, noop_point)
        finally:
            umount(mountpoint)
        ours.append(rate(*mine))
        noop.append(rate(*theirs))
        ratios.append(ours[-1] / noop[-1])
    return {"file": path.name if name != "memory/" else f"memory/{path.name}", "bytes": size,
            "ours": ours, "reference": noop, "ratios": ratios, "ratio": statistics.median(ratios)}


def against_cold_source(source: Path, name: str, workdir: Path, repeat: int, tag: str) -> dict:
    """Cold first read of `name` against a cold `dd` of the source itself; also the no-op
    server's rate in the same run, since no FUSE server can go faster than that."""
    ours, plain, noop, ratios = [], [], [], []
    for i in range(repeat):
        mountpoint, noop_point = workdir / f"{tag}-cold-{i}", workdir / f"{tag}-cold-noop-{i}"
        try:
            mount([source], mountpoint)
            path = mounted_file(mountpoint, name)
            server = noop_mount(path.stat().st_size, noop_point)
            try:
                noop.append(rate(*dd(noop_point / "vmcore")))
            finally:
                noop_umount(server, noop_point)
            drop_caches()
            plain.append(rate(*dd(source)))
            drop_caches()
            ours.append(rate(*dd(path)))
        finally:
            umount(mountpoint)
        ratios.append(ours[-1] / plain[-1])
    return {"ours": ours, "reference": plain, "ratios": ratios, "ratio": statistics.median(ratios),
            "noop": noop, "ceiling": statistics.median(n / p for n, p in zip(noop, plain))}


def ranges_against_decoding(source: Path, workdir: Path, repeat: int, tag: str, decode) -> dict:
    """Exactly the memory `decode(source)` decodes in-process on one thread (its "ranges"),
    read with 1 MiB preads of a fresh mount's `vmcore` in address order, against that
    decoding, measured right before in the same run."""
    warm(source)
    ours, refs, decoder_refs, ratios, decoder_ratios = [], [], [], [], []
    for i in range(repeat):
        ref = decode(source)
        refs.append(ref["mb_s"])
        decoder_refs.append(ref["decoder_mb_s"])
        mountpoint = workdir / f"{tag}-{i}"
        try:
            mount([source], mountpoint)
            vmcore = mountpoint / "vmcore"
            loads = elf_loads(vmcore)
            fd = os.open(vmcore, os.O_RDONLY)
            try:
                start, got = time.perf_counter(), 0
                for address, length in sorted(ref["ranges"]):
                    paddr, offset, _ = next(l for l in loads if l[0] <= address < l[0] + l[2])
                    for part in range(0, length, MiB):
                        got += len(os.pread(fd, min(MiB, length - part), offset + address - paddr + part))
                elapsed = time.perf_counter() - start
            finally:
                os.close(fd)
        finally:
            umount(mountpoint)
        if got != ref["bytes"]:
            raise RuntimeError(f"short reads: {got} of {ref['bytes']}")
        ours.append(rate(got, elapsed))
        ratios.append(ours[-1] / refs[-1])
        decoder_ratios.append(ours[-1] / decoder_refs[-1])
    return {"ours": ours, "reference": refs, "ratios": ratios, "ratio": statistics.median(ratios),
            "decoder": ref["decoder"], "decoder_reference": decoder_refs,
            "decoder_ratios": decoder_ratios, "decoder_ratio": statistics.median(decoder_ratios),
            "detail": ref}


def cached_pread_us(source: Path, workdir: Path) -> float:
    """Median µs of a 4 KiB pread of `vmcore` whose pages are in the page cache (keep_cache)."""
    mountpoint = workdir / "cached-pread"
    try:
        mount([source], mountpoint)
        vmcore = mountpoint / "vmcore"
        dd(vmcore)
        size = vmcore.stat().st_size
        rng = random.Random(1)
        fd = os.open(vmcore, os.O_RDONLY)
        try:
            times = []
            for _ in range(5000):
                offset = rng.randrange(size // 4096) * 4096
                start = time.perf_counter()
                os.pread(fd, 4096, offset)
                times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
    finally:
        umount(mountpoint)
    return statistics.median(times) * 1e6


def make_sparse_elf(path: Path, memory: int = 4 * TiB) -> None:
    """ELF64 x86_64 ET_CORE: a PT_NOTE with one NT_PRSTATUS, one PT_LOAD of `memory` at 0x2000."""
    prstatus = bytearray(336)
    struct.pack_into("<i", prstatus, 32, 1)                      # pr_pid
    note = struct.pack("<III", 5, len(prstatus), 1) + b"CORE\0\0\0\0" + bytes(prstatus)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH",
                       b"\x7fELF\x02\x01\x01" + bytes(9), 4, 62, 1, 0, 64, 0, 0,
                       64, 56, 2, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, 0x1000, 0, 0, len(note), len(note), 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 7, 0x2000, 0, 0, memory, memory, 0)
    with open(path, "wb") as f:
        f.write(ehdr + phdrs)
        f.seek(0x1000)
        f.write(note)
    os.truncate(path, 0x2000 + memory)


def bench_sparse(workdir: Path) -> dict:
    dump = workdir / "sparse-4TiB.elf"
    make_sparse_elf(dump)
    mountpoint = workdir / "sparse"
    result = {"file_bytes": dump.stat().st_size,
              "disk_bytes": dump.stat().st_blocks * 512}
    try:
        result["mount_s"] = mount([dump], mountpoint)
        pid = daemon_pid(mountpoint)
        start = time.perf_counter()
        listing = sorted(os.listdir(mountpoint))
        result["ls_s"] = time.perf_counter() - start
        start = time.perf_counter()
        info = (mountpoint / "info").read_text()
        result["cat_info_s"] = time.perf_counter() - start
        vmcore = mountpoint / "vmcore"
        size = vmcore.stat().st_size
        offsets = [0, 0x3000, size // 3, size // 2 + 12345, size - MiB]
        reads = []
        with open(vmcore, "rb") as f:
            for offset in offsets:
                start = time.perf_counter()
                data = os.pread(f.fileno(), MiB, offset)
                reads.append(time.perf_counter() - start)
                if len(data) != min(MiB, size - offset):
                    raise RuntimeError(f"short read at {offset:#x}: {len(data)} bytes")
        result.update(listing=listing, info_lines=len(info.splitlines()), vmcore_bytes=size,
                      read_offsets=offsets, read_s=reads, max_read_s=max(reads))
        result["pid"] = pid
        result["vm_hwm_mib"] = vm_hwm_kib(pid) / 1024 if pid else None
    finally:
        umount(mountpoint)
        dump.unlink(missing_ok=True)
    return result


# -- report ----------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def machine() -> str:
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return (f"nproc {os.cpu_count()}, {int(mem.group(1)) / 1024 / 1024:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def runs(values) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def row(label: str, result: dict, reference: str, target: float | None) -> str:
    """A table row; `target` None: a figure for information, with no target."""
    goal = ("– | –" if target is None
            else f"≥ {target}× | {verdict(result['ratio'] >= target)}")
    return (f"| {label} | {runs(result['ours'])} | {reference} {runs(result['reference'])} "
            f"| {', '.join(f'{r:.2f}' for r in result['ratios'])} | **{result['ratio']:.2f}×** "
            f"| {goal} |")


def compressed_section(result: dict) -> list[str]:
    """The compressed rows: against zlib on one thread (the target's reference), and against
    dumpfs' own decoder on one thread (what parallel decoding adds)."""
    kdump, s390 = result["kdump"], result["s390_entries"]
    decoder = kdump["decoder"]
    labels = [(f"kdump zlib `-d 1`: `{KDUMP_SOURCE[1].removesuffix('.xz')}` tiled {KDUMP_COPIES}×, "
               f"the zlib pages' memory (1 MiB preads of `vmcore`)", kdump),
              (f"s390_ext v2 zlib, {S390_ZLIB_MIB} MiB (the fixture's non-zero MiB tiled), the zlib "
               f"entries' memory (1 MiB preads of `vmcore`)", s390)]
    lines = [
        "",
        "## Compressed sources: first read against single-thread decoding of the same pages",
        "",
        "| source, file | dumpfs MB/s (runs) | reference MB/s (runs) | ratios | median "
        "| target | result |\n|---|---|---|---|---|---|---|",
    ]
    for label, entry in labels:
        lines.append(row(label, entry, "zlib", TARGET_DECODE_RATIO))
    if decoder != "zlib":
        for label, entry in labels:
            mine = {**entry, "reference": entry["decoder_reference"],
                    "ratios": entry["decoder_ratios"], "ratio": entry["decoder_ratio"]}
            lines.append(row(f"{label}, against {decoder}", mine, decoder, None))
    lines += [
        "",
        f"Both rows read, on a fresh mount, exactly the memory the reference decodes in-process "
        f"on one thread, measured right before in the same run: with CPython's zlib (the "
        f"target's reference: what makedumpfile, crash and zgetdump decode with)"
        + (f", and with {decoder}, the decoder dumpfs uses here (second pair of rows: what "
           f"decoding on every CPU adds)" if decoder != "zlib" else " (dumpfs decodes with zlib "
           "here too: ISA-L is not installed)")
        + f".  kdump reference: the runs of "
        f"zlib pages (joined across fewer than 64 other pages), {kdump['detail']['pages']:,} "
        f"pages ({kdump['detail']['zlib_pages']:,} decompressed, the others copied as "
        f"stored): {kdump['detail']['bytes']:,} bytes.  s390_ext reference: "
        f"`decompressobj().decompress` of the image's {s390['detail']['entries']} zlib "
        f"entries ({s390['detail']['bytes']:,} bytes out).",
        "",
    ]
    return lines


def report(result: dict, repeat: int) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    header = ("| source, file | dumpfs MB/s (runs) | reference MB/s (runs) | ratios | median "
              "| target | result |\n|---|---|---|---|---|---|---|")
    lines = [
        "# dumpfs benchmark results",
        "",
        f"{now}; {machine()}; commit {commit}; {repeat} runs per row, the ratio is the median of "
        f"the per-run ratios.  Load average (1, 5, 15 min) at the start: {result['load_start']}, "
        f"at the end: {result['load_end']}.",
        "",
        "## Uncompressed sources: first read against the no-op pyfuse3 server (warm source)",
        "",
        "`dd bs=1M` of the file on a fresh mount against `dd bs=1M` of `bench/noop_fs.py` (a "
        "pyfuse3 server answering every read with a slice of one constant buffer, mounted with "
        "dumpfs' options, keep_cache and readahead) serving a file of the same size, alternating "
        "which goes first.",
        "",
        header,
    ]
    for label, entry in result["noop"]:
        lines.append(row(f"{label}, `{entry['file']}` ({entry['bytes']:,} bytes)", entry, "no-op",
                         TARGET_NOOP_RATIO))
    lines += [
        "",
        "## Uncompressed sources: cold first read against a cold plain read",
        "",
        "`echo 3 > /proc/sys/vm/drop_caches`, `dd bs=1M` of the source file; again, then the "
        "first read of the mounted file (mounted before, so only its headers were read).",
        "",
        header,
    ]
    for label, entry in result["cold"]:
        lines.append(row(label, entry, "source, cold", TARGET_COLD_RATIO))
    lines += [
        "",
        "The transport bounds these rows: the no-op server's (warm) rate over the cold source's, "
        "in the same runs: " + "; ".join(
            f"{label.rsplit(', ', 1)[0]}: {runs(entry['noop'])} MB/s, **{entry['ceiling']:.2f}×**"
            for label, entry in result["cold"]) + ".",
    ]
    lines += compressed_section(result)
    lines += [
        "## No regression",
        "",
        "| measure | value | target | result |",
        "|---|---|---|---|",
    ]
    sparse = result["sparse"]
    lines += [
        f"| 4 TiB sparse ELF: `dumpfs mount` (daemon, until ready) | {sparse['mount_s']:.2f} s "
        f"| < {TARGET_MOUNT_S} s | {verdict(sparse['mount_s'] < TARGET_MOUNT_S)} |",
        f"| 4 TiB sparse ELF: `ls`, `cat info`, 1 MiB reads at {len(sparse['read_s'])} offsets | "
        f"{sparse['ls_s'] * 1000:.1f} ms, {sparse['cat_info_s'] * 1000:.1f} ms, "
        + ", ".join(f"{s * 1000:.1f}" for s in sparse["read_s"]) + " ms | – | – |",
        "| 4 TiB sparse ELF: peak RSS (VmHWM) of the mount daemon | "
        + (f"{sparse['vm_hwm_mib']:.1f} MiB" if sparse["vm_hwm_mib"] is not None else "daemon not found")
        + f" | < {TARGET_RSS_MIB} MiB | "
        + verdict(sparse["vm_hwm_mib"] is not None and sparse["vm_hwm_mib"] < TARGET_RSS_MIB) + " |",
        f"| cached 4 KiB `pread` of `vmcore` (median of 5,000) | {result['pread_us']:.1f} µs "
        f"| ~µs | {verdict(result['pread_us'] < 50)} |",
        "",
    ]
    return "\n".join(lines)


def run_compressed(workdir: Path, repeat: int, images: dict[str, Path]) -> dict:
    kdump = workdir / "kdump-zlib-tiled.kdump"
    write_tiled_kdump(fc.unpacked(*KDUMP_SOURCE), kdump)
    try:
        return {"kdump": ranges_against_decoding(kdump, workdir, repeat, "kdump-zlib",
                                                 kdump_zlib_decode_rate),
                "s390_entries": ranges_against_decoding(images["zlib"], workdir, repeat, "s390-zlib",
                                                        s390_ext_zlib_decode_rate)}
    finally:
        kdump.unlink(missing_ok=True)


def run_all(workdir: Path, repeat: int) -> dict:
    elf = fc.unpacked(*ELF_SOURCE)
    s390x_elf = fc.unpacked(*S390X_ELF_SOURCE)
    raw_kdump = fc.unpacked(*RAW_KDUMP_SOURCE)
    paging = workdir / "paging-true.elf"
    phnum = write_paging_elf(elf, paging)
    images = write_s390_images(workdir)
    uncompressed = [
        (f"ELF `{elf.name}`", elf, "vmcore", "elf"),
        (f"ELF `{elf.name}`", elf, "memory/", "elf-memory"),
        (f"paging=true-style ELF ({phnum:,} program headers)", paging, "vmcore", "paging"),
        (f"s390x QEMU ELF `{s390x_elf.name}`", s390x_elf, "vmcore", "s390x-elf"),
        ("s390 image (plain)", images["plain"], "vmcore", "s390"),
        ("s390 image (plain)", images["plain"], "dump.s390", "s390-dump"),
        (f"raw kdump `{raw_kdump.name}`", raw_kdump, "vmcore", "raw-kdump"),
    ]
    result = {"load_start": load(), "noop": [], "cold": []}
    for label, source, name, tag in uncompressed:
        result["noop"].append((label, against_noop(source, name, workdir, repeat, tag)))
    for label, source, name, tag in uncompressed:
        if name == "vmcore":
            entry = against_cold_source(source, name, workdir, repeat, tag)
            result["cold"].append((f"{label}, `vmcore`", entry))
    result.update(run_compressed(workdir, repeat, images))
    result["pread_us"] = cached_pread_us(elf, workdir)
    result["sparse"] = bench_sparse(workdir)
    result["load_end"] = load()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median of the ratios)")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    parser.add_argument("--compressed-only", action="store_true",
                        help="only the compressed rows, printed (RESULTS.md is kept)")
    parser.add_argument("--workdir", help="where the mounts and the made sources go (default: tmp)")
    args = parser.parse_args()
    for tool in ("dd", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (coreutils / fuse3)")
    if os.geteuid() != 0:
        sys.exit("bench.py needs root: cold runs drop the page cache")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dumpfs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.compressed_only:
            result = {"load_start": load()}
            result.update(run_compressed(workdir, args.repeat, write_s390_images(workdir)))
            result["load_end"] = load()
            print(f"load at the start: {result['load_start']}, at the end: {result['load_end']}")
            print("\n".join(compressed_section(result)))
            return 0
        result = run_all(workdir, args.repeat)
    finally:
        umount_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(result, args.repeat)
    print(text)
    if not args.no_write:
        # keep the hand-written analysis below the marker across runs
        results = HERE / "RESULTS.md"
        old = results.read_text() if results.exists() else ""
        tail = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
        results.write_text(text + "\n" + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
