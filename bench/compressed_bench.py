#!/usr/bin/env python3
"""Compressed dumps through the mount: random 4 KiB reads of `vmcore` against the plain file's.

    python bench/compressed_bench.py [--reads N] [--fixture FOLDER/FILE.xz]

The fixture (x86_64-custom's QEMU ELF vmcore, 272 MiB, by default) is
recompressed as gzip, bzip2, xz (single block, and 1 MiB blocks), zstd
(single frame, and pzstd frames).  For each form, with an empty cache
directory: the one-time index/cache build (the first `dumpfs mount`, less a
second mount's time with the cache in place); then, on a fresh mount, the
median and mean latency of N random 4 KiB `pread`s of the mounted `vmcore`
(page-aligned offsets, the same ones for every form), against the same reads
of the plain file's mount (the plain file warm in the page cache).  Forms
with seek points of their own are measured both ways: `native` (no pass,
no cache) and `cache`.  Target: each form within 4x the plain file's median.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import fixturecache as fc  # noqa: E402

DUMPFS = [sys.executable, "-m", "dumpfs"]
TARGET_RATIO = 4.0

FORMS = [   # (label, suffix, compress command, DUMPFS_DECOMPRESS)
    ("gzip", "gz", ["gzip", "-6", "-c"], "auto"),
    ("bzip2", "bz2", ["bzip2", "-9", "-c"], "auto"),
    ("xz, single block", "sb.xz", ["xz", "-6", "-T1", "-c"], "auto"),
    ("xz, 1 MiB blocks, cache", "mb.xz", ["xz", "-6", "-T2", "--block-size=1MiB", "-c"], "cache"),
    ("xz, 1 MiB blocks, native", "mb.xz", None, "native"),
    ("zstd, single frame", "zst", ["zstd", "-q", "-3", "-c"], "auto"),
    ("zstd, pzstd frames, cache", "mf.zst", ["pzstd", "-q", "-3", "-p", "2", "-c"], "cache"),
    ("zstd, pzstd frames, native", "mf.zst", None, "native"),
]


def mount(source: Path, mountpoint: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([*DUMPFS, "mount", str(source), str(mountpoint)], check=True, env=env,
                   capture_output=True)
    return time.perf_counter() - start


def umount(mountpoint: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)


def random_reads(vmcore: Path, offsets: list[int]) -> list[float]:
    fd = os.open(vmcore, os.O_RDONLY)
    try:
        times = []
        for offset in offsets:
            start = time.perf_counter()
            data = os.pread(fd, 4096, offset)
            times.append(time.perf_counter() - start)
            assert len(data) == 4096
        return times
    finally:
        os.close(fd)


def measure(source: Path, workdir: Path, offsets_for, mode: str) -> dict:
    cache = workdir / f"cache-{source.name}-{mode}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "DUMPFS_CACHE_DIR": str(cache), "DUMPFS_DECOMPRESS": mode}
    mountpoint = workdir / "mnt"
    mountpoint.mkdir(exist_ok=True)
    first = mount(source, mountpoint, env)
    umount(mountpoint)
    second = mount(source, mountpoint, env)
    try:
        vmcore = mountpoint / "vmcore"
        times = random_reads(vmcore, offsets_for(vmcore.stat().st_size))
    finally:
        umount(mountpoint)
    cached = sum(f.stat().st_size for f in cache.rglob("*.zc")) if cache.exists() else 0
    return {"build": max(first - second, 0.0), "mount": second, "median": statistics.median(times),
            "mean": statistics.fmean(times), "size": source.stat().st_size, "cache": cached}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--fixture", default="x86_64-custom/qemu-elf.vmcore.xz")
    args = parser.parse_args()
    folder, name = args.fixture.split("/")
    plain = fc.unpacked(folder, name)
    workdir = Path(tempfile.mkdtemp(prefix="dumpfs-compressed-bench-"))

    def offsets_for(size: int) -> list[int]:
        rng = random.Random(42)
        return [rng.randrange(0, size - 4096) & ~4095 for _ in range(args.reads)]

    try:
        with open(plain, "rb") as f:            # warm: the plain side reads from the page cache
            while f.read(1 << 24):
                pass
        base = measure(plain, workdir, offsets_for, "auto")
        rows = [("plain file", base)]
        made: dict[str, Path] = {}
        for label, suffix, command, mode in FORMS:
            if suffix not in made:
                target = workdir / f"{plain.name}.{suffix}"
                with open(target, "wb") as out:
                    subprocess.run(command + [str(plain)], stdout=out, check=True)
                made[suffix] = target
            rows.append((label, measure(made[suffix], workdir, offsets_for, mode)))
            print(f"{label}: done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{plain.name} ({plain.stat().st_size / 2**20:.0f} MiB), {args.reads} random 4 KiB "
          f"reads of the mounted vmcore, {os.cpu_count()} CPUs\n")
    print("| form | file MiB | one-time build s | cache MiB | mount s | median ms | mean ms "
          "| median vs plain | within 4x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, r in rows:
        ratio = r["median"] / base["median"]
        print(f"| {label} | {r['size'] / 2**20:.1f} | {r['build']:.1f} | {r['cache'] / 2**20:.1f} | "
              f"{r['mount']:.2f} | {r['median'] * 1e3:.3f} | {r['mean'] * 1e3:.3f} | {ratio:.1f}x | "
              f"{'yes' if ratio <= TARGET_RATIO else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
