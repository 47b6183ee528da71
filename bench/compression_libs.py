#!/usr/bin/env python3
"""Which random-access decompression library for which format: measured, not guessed.

    python bench/compression_libs.py PLAIN_FILE [WORKDIR]

Compresses PLAIN_FILE (once, into WORKDIR) as gzip, bzip2, xz multi-block
(`xz -0 -T2`), xz single-block (`xz -0 -T1`), zstd single frame and zstd
multi-frame (`pzstd`), then, for each candidate library and each form, in a
fresh subprocess (so peak RSS is its own): time to open, time to build the
seek index (a full pass where the library needs one), random 4 KiB read
latency once the index exists (median of 200 reads, fewer for libraries that
restart from the beginning), sequential 1 MiB read rate, peak RSS.  Prints
a Markdown table.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20

FORMS = {
    "gz": ["gzip", "-6", "-c"],
    "bz2": ["bzip2", "-9", "-c"],
    "mb.xz": ["xz", "-0", "-T2", "-c"],
    "sb.xz": ["xz", "-0", "-T1", "-c"],
    "zst": ["zstd", "-q", "-3", "-c"],
    "mf.zst": ["pzstd", "-q", "-p", "2", "-3", "-c"],
}

CANDIDATES = [
    ("gz", "indexed_gzip"), ("gz", "rapidgzip-p1"), ("gz", "rapidgzip-p2"), ("gz", "rapidgzip-reopened"),
    ("bz2", "rapidgzip-bz2-p1"), ("bz2", "indexed_bzip2"),
    ("gz", "dumpfs-cache"), ("bz2", "dumpfs-cache"),
    ("mb.xz", "python-xz"), ("mb.xz", "dumpfs-cache"),
    ("sb.xz", "python-xz"), ("sb.xz", "dumpfs-cache"),
    ("zst", "indexed_zstd"), ("zst", "dumpfs-cache"),
    ("mf.zst", "indexed_zstd"), ("mf.zst", "dumpfs-cache"),
]


def compress(plain: str, workdir: str) -> dict[str, str]:
    out = {}
    for suffix, command in FORMS.items():
        path = os.path.join(workdir, os.path.basename(plain) + "." + suffix)
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                subprocess.run(command + [plain], stdout=f, check=True)
            os.replace(path + ".tmp", path)
        out[suffix] = path
    return out


def opener(library: str, path: str, cache_dir: str):
    """(open, build index) callables for one candidate; each returns a file-like object."""
    if library == "indexed_gzip":
        import indexed_gzip

        def build(f):
            f.build_full_index()
        return (lambda: indexed_gzip.IndexedGzipFile(path, spacing=1 * MiB)), build
    if library == "rapidgzip-reopened":
        import rapidgzip
        index = os.path.join(cache_dir, "index")
        with rapidgzip.RapidgzipFile(path, parallelization=1) as f:
            f.export_index(index)

        def reopen():
            f = rapidgzip.RapidgzipFile(path, parallelization=1)
            f.import_index(index)
            return f
        return reopen, (lambda f: None)
    if library.startswith("rapidgzip"):
        import rapidgzip
        parallel = int(library[-1])
        cls = rapidgzip.IndexedBzip2File if "bz2" in library else rapidgzip.RapidgzipFile

        def build(f):
            f.block_offsets()
        return (lambda: cls(path, parallelization=parallel)), build
    if library == "indexed_bzip2":
        import indexed_bzip2

        def build(f):
            f.block_offsets()
        return (lambda: indexed_bzip2.IndexedBzip2File(path, parallelization=1)), build
    if library == "python-xz":
        import xz
        return (lambda: xz.open(path)), (lambda f: None)
    if library == "indexed_zstd":
        import indexed_zstd

        def build(f):
            f.block_offsets()
        return (lambda: indexed_zstd.IndexedZstdFile(path)), build
    if library == "dumpfs-cache":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        os.environ["DUMPFS_CACHE_DIR"] = cache_dir
        from dumpfs import compressed

        class Reader:
            def __init__(self):
                self.source = compressed.open_compressed(path, mode="cache")
                self.at = 0

            def seek(self, offset):
                self.at = offset

            def read(self, n):
                data = self.source.read(self.at, n)
                self.at += len(data)
                return data

            def close(self):
                self.source.close()
        return Reader, (lambda f: None)
    raise ValueError(library)


def measure(library: str, path: str, size: int, cache_dir: str) -> dict:
    open_, build = opener(library, path, cache_dir)
    if library == "dumpfs-cache":       # the first open is the one pass; time the second
        a = time.perf_counter()
        open_().close()
        pass_s = time.perf_counter() - a
    t0 = time.perf_counter()
    f = open_()
    t1 = time.perf_counter()
    build(f)
    t2 = time.perf_counter()
    if library == "dumpfs-cache":
        t2 = t1 + pass_s
    slow = (library == "python-xz" and ".sb." in path) or (library == "indexed_zstd" and ".mf." not in path)
    count = 5 if slow else 200
    rng = random.Random(1)
    latencies = []
    for _ in range(count):
        offset = rng.randrange(0, size - 4096) & ~4095
        a = time.perf_counter()
        f.seek(offset)
        data = f.read(4096)
        latencies.append(time.perf_counter() - a)
        assert len(data) == 4096
    f.seek(0)
    a = time.perf_counter()
    total = 0
    limit = 64 * MiB if slow else size
    while total < limit:
        data = f.read(MiB)
        if not data:
            break
        total += len(data)
    seq = time.perf_counter() - a
    f.close()
    return {"open_s": t1 - t0, "index_s": t2 - t1,
            "random_4k_ms": statistics.median(latencies) * 1000,
            "seq_MBps": total / seq / 1e6,
            "rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--one":
        library, path, size, cache_dir = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        print(json.dumps(measure(library, path, size, cache_dir)))
        return 0
    plain = sys.argv[1]
    workdir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="dumpfs-libs-")
    os.makedirs(workdir, exist_ok=True)
    forms = compress(plain, workdir)
    size = os.path.getsize(plain)
    print(f"{plain}: {size / MiB:.0f} MiB\n")
    print("| form | library | open s | index s | random 4 KiB ms | seq MB/s | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for suffix, library in CANDIDATES:
        cache_dir = tempfile.mkdtemp(prefix="dumpfs-libs-cache-")
        done = subprocess.run([sys.executable, __file__, "--one", library, forms[suffix], str(size), cache_dir],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"| {suffix} | {library} | failed: {done.stderr.strip().splitlines()[-1:]} |||||")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {suffix} | {library} | {r['open_s']:.3f} | {r['index_s']:.2f} | "
              f"{r['random_4k_ms']:.2f} | {r['seq_MBps']:.0f} | {r['rss_MiB']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
