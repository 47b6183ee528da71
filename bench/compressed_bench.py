#!/usr/bin/env python3
"""Compressed dumps through the mount: random 4 KiB reads of `vmcore` against the plain file's.

    python bench/compressed_bench.py [--reads N] [--rounds R] [--fixture FOLDER/FILE.xz]

The fixture (x86_64-custom's QEMU ELF vmcore, 272 MiB, by default) is
recompressed as gzip, bzip2, xz (single block, and 1 MiB blocks), zstd
(single frame, and pzstd frames).  For each form, with an empty cache
directory: the one-time index/cache build (the first `dumpfs mount`, less a
second mount's time with the cache in place); then, on that second mount,
the median and mean latency of N random 4 KiB `pread`s of the mounted
`vmcore` (page-aligned offsets, the same ones for every form, in rounds that
visit every mount in turn so that load from elsewhere hits all alike),
against the same reads of the plain file's mount (the plain file warm in
the page cache).  Forms
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


def prepare(source: Path, workdir: Path, mode: str, index: int) -> dict:
    """Mount with an empty cache (the one-time build), unmount, mount again: the mount to read."""
    cache = workdir / f"cache-{index}"
    env = {**os.environ, "DUMPFS_CACHE_DIR": str(cache), "DUMPFS_DECOMPRESS": mode}
    mountpoint = workdir / f"mnt-{index}"
    mountpoint.mkdir()
    first = mount(source, mountpoint, env)
    umount(mountpoint)
    second = mount(source, mountpoint, env)
    cached = sum(f.stat().st_size for f in cache.rglob("*.zc")) if cache.exists() else 0
    return {"build": max(first - second, 0.0), "mount": second, "size": source.stat().st_size,
            "cache": cached, "mountpoint": mountpoint, "times": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixture", default="x86_64-custom/qemu-elf.vmcore.xz")
    args = parser.parse_args()
    folder, name = args.fixture.split("/")
    plain = fc.unpacked(folder, name)
    workdir = Path(tempfile.mkdtemp(prefix="dumpfs-compressed-bench-"))
    rows: list[tuple[str, dict]] = []
    try:
        with open(plain, "rb") as f:            # warm: the plain side reads from the page cache
            while f.read(1 << 24):
                pass
        rows.append(("plain file", prepare(plain, workdir, "auto", 0)))
        made: dict[str, Path] = {}
        for label, suffix, command, mode in FORMS:
            if suffix not in made:
                target = workdir / f"{plain.name}.{suffix}"
                with open(target, "wb") as out:
                    subprocess.run(command + [str(plain)], stdout=out, check=True)
                made[suffix] = target
            rows.append((label, prepare(made[suffix], workdir, mode, len(rows))))
            print(f"{label}: mounted", file=sys.stderr, flush=True)
        size = (rows[0][1]["mountpoint"] / "vmcore").stat().st_size
        per_round = args.reads // args.rounds
        for round_ in range(args.rounds):   # interleaved, so a busy moment hits every form alike
            rng = random.Random(round_)
            offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(per_round)]
            for _, row in rows:
                row["times"] += random_reads(row["mountpoint"] / "vmcore", offsets)
    finally:
        for _, row in rows:
            umount(row["mountpoint"])
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(rows[0][1]["times"])
    print(f"{plain.name} ({plain.stat().st_size / 2**20:.0f} MiB), {args.reads} random 4 KiB "
          f"reads of the mounted vmcore in {args.rounds} interleaved rounds, {os.cpu_count()} CPUs\n")
    print("| form | file MiB | one-time build s | cache MiB | mount s | median ms | mean ms "
          "| median vs plain | within 4x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, r in rows:
        median = statistics.median(r["times"])
        ratio = median / base
        print(f"| {label} | {r['size'] / 2**20:.1f} | {r['build']:.1f} | {r['cache'] / 2**20:.1f} | "
              f"{r['mount']:.2f} | {median * 1e3:.3f} | {statistics.fmean(r['times']) * 1e3:.3f} | "
              f"{ratio:.1f}x | {'yes' if ratio <= TARGET_RATIO else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
