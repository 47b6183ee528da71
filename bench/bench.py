#!/usr/bin/env python3
"""dumpfs benchmarks on the shared fixtures, through the real CLI.

    python bench/bench.py [--repeat N] [--no-write]

1. Sequential `dd bs=1M` of the mounted `vmcore` against `dd` of the source
   file itself, in the same run, for an ELF source and a kdump-zlib source.
   The source is read once first, so both sides read it from a warm page
   cache; every vmcore read is on a fresh mount, so it really goes through
   FUSE and Python (a second read would be served by the kernel's page cache:
   reported separately as "vmcore, cached").  For the kdump source, the
   single-thread zlib decode rate of the same pages (every page of the file
   decompressed in-process) is the reference a decoder cannot beat.
2. A 4 TiB sparse ELF dump (made with truncate): mount time (from starting
   `dumpfs mount` to its exit with the mount ready), the time of `ls`,
   `cat info` and 1 MiB reads at a few offsets of `vmcore`, and the peak RSS
   (VmHWM) of the mount daemon.

3. `--s390` (alone): IBM Z sources written from s390x-custom's QEMU ELF memory
   (256 MiB) with the test writers: `dd` of the mounted `vmcore` over a plain
   single-volume s390 image against `dd` of the image itself (same run), and
   over an `s390_ext` v2 image with zlib entries against the single-thread
   zlib decode rate of the same entries (every zlib entry of the image
   decompressed in-process; MB/s of output).  Only the s390 section of
   RESULTS.md is replaced; everything else in it is kept.

Prints a Markdown table and writes it to bench/RESULTS.md.  Mounts are
unmounted whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
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
import fixturecache as fc  # noqa: E402

DUMPFS = [sys.executable, "-m", "dumpfs"]
MiB = 1 << 20
TiB = 1 << 40

MARKER = "<!-- analysis: kept by bench.py across runs -->"

TARGET_ELF_RATIO = 0.5
TARGET_MOUNT_S = 2.0
TARGET_RSS_MIB = 150

TARGET_S390_RATIO = 0.5
TARGET_S390_ZLIB_RATIO = 0.8
S390_BEGIN = "<!-- s390: begin (bench.py --s390 replaces this section) -->"
S390_END = "<!-- s390: end -->"
S390_FIXTURE = ("s390x-custom", "qemu-dgm.elf.xz")

ELF_SOURCE = ("x86_64-custom", "qemu-elf.vmcore.xz")
KDUMP_SOURCE = ("x86_64-custom", "mkdf-zlib-d1.kdump.xz")


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


# -- zlib reference -----------------------------------------------------------

def kdump_zlib_decode_rate(path: Path) -> dict:
    """Decompress every zlib page of a kdump-compressed file in-process (one thread)."""
    data = path.read_bytes()
    if data[:8] != b"KDUMP   ":
        raise RuntimeError(f"{path}: not a kdump-compressed file")
    block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", data, 0x1AC)
    bitmap2 = (1 + sub_hdr_size + bitmap_blocks // 2) * block_size
    dumpable = int.from_bytes(data[bitmap2:bitmap2 + bitmap_blocks // 2 * block_size],
                              "little").bit_count()
    table = (1 + sub_hdr_size + bitmap_blocks) * block_size
    descs = [struct.unpack_from("<qIIQ", data, table + 24 * k) for k in range(dumpable)]
    pages = [(offset, size) for offset, size, flags, _ in descs if flags & 0x01]
    view = memoryview(data)
    decompress = zlib.decompress
    start = time.perf_counter()
    out = 0
    for offset, size in pages:
        out += len(decompress(view[offset:offset + size]))
    elapsed = time.perf_counter() - start
    return {"pages": len(pages), "descriptors": dumpable, "bytes": out, "seconds": elapsed,
            "mb_s": rate(out, elapsed)}


# -- benchmarks ---------------------------------------------------------------

def drop_caches() -> bool:
    """Drop the page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def bench_throughput(name: str, source: Path, workdir: Path, repeat: int,
                     options: tuple[str, ...] = (), cold: bool = False) -> dict:
    """dd of the source and of the mounted vmcore; warm: source read once first; cold: caches
    dropped before every read.  Every vmcore read is on a fresh mount (empty FUSE page cache)."""
    def prepare():
        if cold and not drop_caches():
            raise RuntimeError("cold-cache runs need root (/proc/sys/vm/drop_caches)")

    if not cold:
        warm(source)                                # both sides read a warm source
    source_runs, vmcore_runs, cached_runs, mounts = [], [], [], []
    for i in range(repeat):
        prepare()
        source_runs.append(dd(source))
        mountpoint = workdir / f"{name}-{i}"
        opts = [arg for option in options for arg in ("-o", option)]
        try:
            mounts.append(mount([*opts, source], mountpoint))
            prepare()
            vmcore_runs.append(dd(mountpoint / "vmcore"))      # first read: through FUSE
            cached_runs.append(dd(mountpoint / "vmcore"))      # second read: page cache
        finally:
            umount(mountpoint)
    best = lambda runs: max(rate(n, s) for n, s in runs)   # noqa: E731
    result = {
        "source": source.name, "source_bytes": source_runs[0][0],
        "vmcore_bytes": vmcore_runs[0][0], "options": options, "cold": cold,
        "source_mb_s": best(source_runs), "vmcore_mb_s": best(vmcore_runs),
        "vmcore_runs_mb_s": [rate(n, s) for n, s in vmcore_runs],
        "vmcore_cached_mb_s": best(cached_runs), "mount_s": statistics.median(mounts),
    }
    result["ratio"] = result["vmcore_mb_s"] / result["source_mb_s"]
    return result


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


# -- IBM Z (s390) ---------------------------------------------------------------

def write_s390_images(workdir: Path) -> dict[str, Path]:
    """Plain s390 and s390_ext v2 (zlib) of s390x-custom's memory, by the test writers."""
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
        with open(paths["zlib"], "wb") as f:
            w.write_s390_ext(f, elf.read_physical, mem, cpus, version=2, tod_start=t0, tod_end=t1)
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
    decompress = zlib.decompress
    start = time.perf_counter()
    out = 0
    for low, high, size, _ in entries:
        out += len(zlib.decompressobj().decompress(view[low:high], size))
    elapsed = time.perf_counter() - start
    expected = sum(size for _, _, size, _ in entries)
    if out != expected:
        raise RuntimeError(f"{path}: decoded {out} bytes, the entries hold {expected}")
    del decompress
    return {"entries": len(entries), "bytes": out, "ranges": [(a, n) for _, _, n, a in entries], "raw_bytes": raw_bytes, "mem_size": mem_size,
            "file_bytes": len(data), "seconds": elapsed, "mb_s": rate(out, elapsed)}


def elf_loads(path: Path) -> list[tuple[int, int, int]]:
    """(paddr, offset, filesz) of the PT_LOADs of a big-endian ELF64 core (s390x vmcore)."""
    with open(path, "rb") as f:
        ehdr = f.read(64)
        phoff, = struct.unpack_from(">Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from(">HH", ehdr, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _, offset, _, paddr, filesz = struct.unpack_from(">IIQQQQ", table, i * phentsize)
        if p_type == 1:
            loads.append((paddr, offset, filesz))
    return loads


def read_ranges_through_mount(source: Path, ranges, workdir: Path, repeat: int) -> dict:
    """Fresh mount each run; pread each (address, length) of the vmcore, 1 MiB at a time, in
    address order: exactly the memory the zlib entries hold, as a tool reading it would."""
    runs = []
    for i in range(repeat):
        mountpoint = workdir / f"s390-entries-{i}"
        try:
            mount([source], mountpoint)
            vmcore = mountpoint / "vmcore"
            loads = elf_loads(vmcore)
            fd = os.open(vmcore, os.O_RDONLY)
            try:
                start = time.perf_counter()
                got = 0
                for address, length in sorted(ranges):
                    paddr, offset, _ = next(l for l in loads if l[0] <= address < l[0] + l[2])
                    for part in range(0, length, MiB):
                        got += len(os.pread(fd, min(MiB, length - part), offset + address - paddr + part))
                runs.append((got, time.perf_counter() - start))
            finally:
                os.close(fd)
        finally:
            umount(mountpoint)
    expected = sum(n for _, n in ranges)
    if any(got != expected for got, _ in runs):
        raise RuntimeError(f"short reads: {[g for g, _ in runs]} of {expected}")
    return {"bytes": expected, "runs_mb_s": [rate(g, t) for g, t in runs],
            "mb_s": max(rate(g, t) for g, t in runs)}


def bench_s390(workdir: Path, repeat: int) -> dict:
    paths = write_s390_images(workdir)
    rows = []
    for name, label in (("plain", "s390 (plain, single volume)"), ("zlib", "s390_ext v2, zlib")):
        row = bench_throughput(f"s390-{name}", paths[name], workdir, repeat)
        row.update(name=name, label=label)
        rows.append(row)
    zref = s390_ext_zlib_decode_rate(paths["zlib"])
    entries = read_ranges_through_mount(paths["zlib"], zref["ranges"], workdir, repeat)
    for path in paths.values():
        path.unlink(missing_ok=True)
    return {"rows": rows, "zref": zref, "entries": entries}


def report_s390(result: dict, repeat: int) -> str:
    plain, ext = result["rows"]
    zref = result["zref"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    entries = result["entries"]
    zratio = entries["mb_s"] / zref["mb_s"]
    whole_ratio = ext["vmcore_mb_s"] / zref["mb_s"]
    lines = [
        S390_BEGIN,
        "## IBM Z sources (`bench.py --s390`)",
        "",
        f"{now}; {machine()}; commit {commit}; best of {repeat} runs per row.  Images written by "
        f"tests/writers/s390.py from `{S390_FIXTURE[0]}/{S390_FIXTURE[1]}` (256 MiB, 2 CPUs); "
        "`dd bs=1M` of the mounted `vmcore` (1st read on a fresh mount, through FUSE) against "
        "`dd` of the image (warm page cache), in the same run.",
        "",
        "| source | bytes (image / vmcore) | image MB/s | vmcore MB/s, 1st read (all runs) | ratio "
        "| vmcore MB/s, 2nd read | reference | target | result |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {plain['label']} | {plain['source_bytes']:,} / {plain['vmcore_bytes']:,} "
        f"| {plain['source_mb_s']:.0f} | {plain['vmcore_mb_s']:.0f} "
        f"({', '.join(f'{r:.0f}' for r in plain['vmcore_runs_mb_s'])}) | {plain['ratio']:.2f}× "
        f"| {plain['vmcore_cached_mb_s']:.0f} | `dd` of the image "
        f"| ≥ {TARGET_S390_RATIO}× | {verdict(plain['ratio'] >= TARGET_S390_RATIO)} |",
        f"| {ext['label']}: whole vmcore | {ext['source_bytes']:,} / {ext['vmcore_bytes']:,} "
        f"| {ext['source_mb_s']:.0f} | {ext['vmcore_mb_s']:.0f} "
        f"({', '.join(f'{r:.0f}' for r in ext['vmcore_runs_mb_s'])}) | {whole_ratio:.2f}× of zlib "
        f"| {ext['vmcore_cached_mb_s']:.0f} | zlib decode {zref['mb_s']:.0f} MB/s | – | – |",
        f"| {ext['label']}: the zlib entries' memory only | – / {entries['bytes']:,} | – "
        f"| {entries['mb_s']:.0f} ({', '.join(f'{r:.0f}' for r in entries['runs_mb_s'])}) "
        f"| {zratio:.2f}× of zlib | – | zlib decode {zref['mb_s']:.0f} MB/s "
        f"| ≥ {TARGET_S390_ZLIB_RATIO}× | {verdict(zratio >= TARGET_S390_ZLIB_RATIO)} |",
        "",
        f"zlib reference: single-thread `zlib.decompressobj().decompress` of all {zref['entries']} "
        f"zlib entries (1 MiB each) of the s390_ext v2 image ({zref['file_bytes']:,} bytes, read "
        f"whole into memory first): {zref['bytes']:,} bytes out in {zref['seconds']:.3f} s = "
        f"**{zref['mb_s']:.0f} MB/s**.  The image also holds {zref['raw_bytes']:,} bytes stored raw "
        f"(the first MiB, incompressible entries); the other "
        f"{zref['mem_size'] - zref['bytes'] - zref['raw_bytes']:,} bytes of memory are all-zero "
        f"megabytes the dumper left out, which cost no decoding, so the whole-vmcore row flatters "
        f"the zlib path.  The judged row reads, on a fresh mount, exactly the memory of the zlib "
        f"entries (1 MiB `pread`s of `vmcore` in address order): decode plus FUSE transport "
        f"against pure in-memory decoding.",
        "",
        "How the zlib path got here (2026-11-27): vmcore memory now starts on a 1 MiB boundary, "
        "so a 1 MiB request covers exactly one entry (before, every entry spanned two requests "
        "and was decoded twice when readahead sent them in parallel); an entry being decoded is "
        "awaited, not decoded again; after a sequential read to the end of an entry the next "
        "one is decoded in the background; decoded entries stay in a 64-entry PageCache and are "
        "then served on the FUSE event loop without a worker thread.  In-process the model reads "
        "the entries at ~0.97x the decode rate, so what is left is the per-request FUSE cost; "
        "on this noisy 2-vCPU machine the judged row moved between 0.71x and 0.84x across runs.  "
        "The plain s390 row is the same FUSE ceiling as the ELF row above.",
        S390_END,
    ]
    return "\n".join(lines)


def write_s390_section(text: str) -> None:
    """Replace (or append after the analysis marker) the s390 section of RESULTS.md."""
    results = HERE / "RESULTS.md"
    old = results.read_text() if results.exists() else MARKER + "\n"
    if S390_BEGIN in old and S390_END in old:
        head, rest = old.split(S390_BEGIN, 1)
        new = head + text + rest.split(S390_END, 1)[1]
    else:
        if MARKER not in old:
            old += "\n" + MARKER + "\n"
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    results.write_text(new)


# -- report -------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def machine() -> str:
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return (f"nproc {os.cpu_count()}, {int(mem.group(1)) / 1024 / 1024:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def report(throughput: list[dict], zref: dict, sparse: dict, repeat: int) -> str:
    kdump = next(row for row in throughput if row["name"] == "kdump" and not row["options"]
                 and not row["cold"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "# dumpfs benchmark results",
        "",
        f"{now}; {machine()}; commit {commit}; best of {repeat} runs per row.",
        "",
        "## Sequential read (`dd bs=1M`)",
        "",
        "warm: the source was read once before, so both sides read it from the page cache; "
        "cold: `echo 3 > /proc/sys/vm/drop_caches` before every read.  Every vmcore read is "
        "the first on a fresh mount (through FUSE and Python); the 2nd read of the same mount "
        "is served by the kernel page cache (`keep_cache`).",
        "",
        "| source | caches | mount options | bytes (source / vmcore) | source MB/s "
        "| vmcore MB/s, 1st read (all runs) | ratio | vmcore MB/s, 2nd read | target | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in throughput:
        target = row["name"] == "elf" and not row["cold"] and not row["options"]
        lines.append(
            f"| {row['label']} `{row['source']}` | {'cold' if row['cold'] else 'warm'} "
            f"| {' '.join('-o ' + o for o in row['options']) or '(default)'} "
            f"| {row['source_bytes']:,} / {row['vmcore_bytes']:,} | {row['source_mb_s']:.0f} "
            f"| {row['vmcore_mb_s']:.0f} ({', '.join(f'{r:.0f}' for r in row['vmcore_runs_mb_s'])}) "
            f"| {row['ratio']:.2f}× | {row['vmcore_cached_mb_s']:.0f} "
            + (f"| ≥ {TARGET_ELF_RATIO}× | {verdict(row['ratio'] >= TARGET_ELF_RATIO)} |"
               if target else "| – | – |"))
    lines += [
        "",
        f"kdump reference: single-thread `zlib.decompress` of all {zref['pages']:,} zlib pages "
        f"({zref['descriptors']:,} page descriptors) of `{kdump['source']}`: "
        f"{zref['bytes']:,} bytes out in {zref['seconds']:.3f} s = **{zref['mb_s']:.0f} MB/s**; "
        f"the vmcore read reaches {kdump['vmcore_mb_s'] / zref['mb_s']:.2f}× of it "
        f"(the vmcore also holds pages stored raw or as the shared zero page).",
        "",
        "## 4 TiB sparse ELF (one PT_LOAD, made with truncate)",
        "",
        "| measure | value | target | result |",
        "|---|---|---|---|",
        f"| file size / on disk | {sparse['file_bytes']:,} / {sparse['disk_bytes']:,} bytes | – | – |",
        f"| `dumpfs mount` (daemon, until ready) | {sparse['mount_s']:.2f} s | < {TARGET_MOUNT_S} s "
        f"| {verdict(sparse['mount_s'] < TARGET_MOUNT_S)} |",
        f"| `ls` of the mount | {sparse['ls_s'] * 1000:.1f} ms | – | – |",
        f"| `cat info` | {sparse['cat_info_s'] * 1000:.1f} ms | – | – |",
        f"| 1 MiB reads of `vmcore` at {len(sparse['read_s'])} offsets | "
        + ", ".join(f"{s * 1000:.1f}" for s in sparse["read_s"]) + " ms | – | – |",
        "| peak RSS (VmHWM) of the mount daemon | "
        + (f"{sparse['vm_hwm_mib']:.1f} MiB" if sparse["vm_hwm_mib"] is not None else "daemon not found")
        + f" | < {TARGET_RSS_MIB} MiB | "
        + verdict(sparse["vm_hwm_mib"] is not None and sparse["vm_hwm_mib"] < TARGET_RSS_MIB) + " |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    parser.add_argument("--workdir", help="where the mounts and the sparse file go (default: tmp)")
    parser.add_argument("--s390", action="store_true",
                        help="only the IBM Z rows (s390 plain, s390_ext zlib); replaces their section")
    args = parser.parse_args()
    for tool in ("dd", "fusermount3"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (coreutils / fuse3)")

    if args.s390:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dumpfs-bench-s390-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = bench_s390(workdir, args.repeat)
        finally:
            umount_all()
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        text = report_s390(result, args.repeat)
        print(text)
        if not args.no_write:
            write_s390_section(text)
        return 0

    elf_source = fc.unpacked(*ELF_SOURCE)
    kdump_source = fc.unpacked(*KDUMP_SOURCE)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dumpfs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        throughput = []
        for name, label, source in (("elf", "ELF", elf_source),
                                    ("kdump", "kdump-zlib", kdump_source)):
            for options, cold in (((), False), (("direct_io",), False), ((), True)):
                row = bench_throughput(name, source, workdir, args.repeat, options, cold)
                row.update(name=name, label=label)
                throughput.append(row)
        zref = kdump_zlib_decode_rate(kdump_source)
        sparse = bench_sparse(workdir)
    finally:
        umount_all()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(throughput, zref, sparse, args.repeat)
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
