"""A mutation fuzzer over the headers and tables of every dump format, run through `dumpfs info`.

Seeds are small real inputs: the first MiBs of the fixture dumps (ELF,
kdump, flattened, s390) and images the test writers build at 1 MiB of
memory (s390, s390_ext, multi-volume, tape, AWSTAPE, VMDUMP, LKCD, SCSI).
Each seed names the byte regions that hold its headers and tables; a
mutant is one to four mutations there (bit flips, interesting integers,
field copies), sometimes a cut or an extension.  Mutant `index` of seed
value `seed` is always the same bytes, so a failure is reproduced with
`DUMPFS_FUZZ_SEED=seed` and the index it prints.

Mutants run in a worker process (`python tests/fuzz.py worker ...`) that
calls `dumpfs.cli.main(["info", ...])` in-process under RLIMIT_AS; the
parent (`Campaign`) restarts it after a hang or a death and keeps the time
budget.  A failing mutant is saved as a regression record: the seed's name
and the bytes that differ from it (tests/data/fuzz/*.json), replayed by
tests/test_fuzz.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import random
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import fixturecache as fc
from dumpfs.backends import open_dump
from dumpfs.cli import main
from writers import lkcd as wl
from writers import s390 as w
from writers import s390mv as mv
from writers import scsi as wsc
from writers import tape as wt
from writers import vmdump as wv

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "data" / "fuzz"
MIB = 1 << 20
MEMORY_LIMIT = 1536 * MIB           # RLIMIT_AS of a worker: a dump's claims must not reach this
MUTANT_TIMEOUT = 30.0               # seconds for one `info`; more is a hang (the machine is shared)
MAX_REGRESSION_BYTES = 64 << 10     # a regression record stays small

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x10, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x1000, 0x7FFF,
               0x8000, 0xFFFF, 0x10000, 0x100000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32,
               (1 << 32) + 1, 1 << 40, 1 << 44, 1 << 48, 1 << 50, 1 << 52, 1 << 56, (1 << 63) - 1,
               1 << 63, (1 << 64) - 1, (1 << 64) - 4096)


# -- seeds ---------------------------------------------------------------------------------------

@dataclass
class Seed:
    """One input: its files (several for a multi-volume set) and, per file, the regions to mutate."""

    name: str
    files: list[bytes]
    regions: list[list[tuple[int, int]]]
    byteorder: str = "big"
    names: list[str] = field(default_factory=list)     # file names (the suffix matters: .aws)


def _clip(regions, size: int) -> list[tuple[int, int]]:
    return [(max(0, a), min(size, b)) for a, b in regions if min(size, b) > max(0, a)]


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _elf_regions(data: bytes) -> list[tuple[int, int]]:
    order = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(order + "Q", data, 32)
    phnum, = struct.unpack_from(order + "H", data, 56)
    regions = [(0, 64), (phoff, phoff + min(phnum, 512) * 56)]
    for i in range(min(phnum, 512)):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", data, phoff + 56 * i)
        if p_type == 4:
            regions.append((p_offset, p_offset + min(p_filesz, 16 << 10)))
    return _clip(regions, len(data))


def _kdump_regions(data: bytes, base: int = 0) -> list[tuple[int, int]]:
    block = struct.unpack_from("<i", data, base + 0x1AC)[0] if len(data) > base + 0x1B0 else 4096
    block = block if 512 <= block <= MIB else 4096
    sub_blocks, bitmap_blocks = struct.unpack_from("<iI", data, base + 0x1B0)
    regions = [(base, base + 0x1D0), (base + block, base + block + 0x100)]
    if block + 0x68 < len(data):
        off_note, size_note = struct.unpack_from("<qQ", data, base + block + 0x40)
        regions.append((base + off_note, base + off_note + min(size_note, 8 << 10)))
    bitmap1 = (1 + sub_blocks) * block
    half = bitmap_blocks * block // 2
    table = (1 + sub_blocks + bitmap_blocks) * block
    regions += [(base + bitmap1, base + bitmap1 + 256), (base + bitmap1 + half, base + bitmap1 + half + 256),
                (base + table, base + table + 24 * 64)]
    return _clip(regions, len(data))


def _flattened_regions(data: bytes) -> list[tuple[int, int]]:
    """The stream header, the first record headers, and the kdump headers inside them."""
    regions = [(0, 4096)]
    pos = 4096
    for _ in range(48):
        if pos + 16 > len(data):
            break
        offset, size = struct.unpack_from(">qq", data, pos)
        regions.append((pos, pos + 16))
        if 0 <= offset < 0x2000 and 0 < size:
            regions.append((pos + 16, pos + 16 + min(size, 0x200)))
        if size < 0:
            break
        pos += 16 + size
    return _clip(regions, len(data))


def _generic(data: bytes, head: int = 4096, tail: int = 4096) -> list[tuple[int, int]]:
    return _clip([(0, head), (len(data) - tail, len(data))], len(data))


def _pattern(address: int, length: int) -> bytes:
    """Memory for the written images: a few non-zero bytes in every 64 KiB, zeros elsewhere."""
    out = bytearray(length)
    for page in range(address - address % 0x10000, address + length, 0x10000):
        if address <= page < address + length - 16:
            struct.pack_into(">QQ", out, page - address, page, 0x5555AAAA5555AAAA)
    return bytes(out)


def _written(name: str, write, *, names=None, regions=None) -> Seed:
    buffers = write()
    files = [b.getvalue() for b in buffers]
    return Seed(name, files, regions or [_generic(f) for f in files], "big",
                names or [f"{name}.{i}" for i in range(len(files))])


def build_seeds() -> list[Seed]:
    """Every seed, from the fixture cache (unpacked on first use) and the test writers."""
    seeds = []
    cuts = [("elf-x86_64", "x86_64-custom", "qemu-elf.vmcore.xz", MIB, "little"),
            ("elf-mkdf", "x86_64-custom", "mkdf-elf-d31.vmcore.xz", MIB, "little"),
            ("elf-s390x", "s390x-custom", "qemu-dgm.elf.xz", MIB, "big"),
            ("kdump-lzo", "x86_64-custom", "mkdf-lzo-d31.kdump.xz", 2 * MIB, "little"),
            ("kdump-qemu", "x86_64-custom", "qemu-kdump-zlib.vmcore.xz", 2 * MIB, "little"),
            ("kdump-s390x", "s390x-custom", "qemu-dgm-kdump-zlib.kdump.xz", 2 * MIB, "big"),
            ("flattened", "x86_64-custom", "mkdf-flat-zlib-d31.flat.xz", 2 * MIB, "big"),
            ("s390-zgetdump", "s390x-custom", "zgetdump.s390.xz", MIB, "big")]
    for name, folder, file, size, order in cuts:
        data = _head(fc.unpacked(folder, file), size)
        if name.startswith("elf"):
            regions = _elf_regions(data)
        elif name.startswith("kdump"):
            regions = _kdump_regions(data) if order == "little" else _generic(data, 0x3000, 0)
        elif name == "flattened":
            regions = _flattened_regions(data)
        else:
            regions = _generic(data)
        seeds.append(Seed(name, [data], [regions], order, [f"{name}.dump"]))

    cut = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-s390x-{os.getpid()}.elf"
    cut.write_bytes(seeds[2].files[0])
    try:
        elf = open_dump(str(cut))
        cpus = [w.CpuState({**c.registers, "prefix": 0x10000 + 0x2000 * n})
                for n, c in enumerate(w.cpu_states(elf))]
        notes = [(n.name, n.type, n.desc) for c in sorted(elf.cpus) for n in elf.cpus[c].notes]
        elf.close()
    finally:
        cut.unlink()
    t0, t1 = w.tod(1_700_000_000), w.tod(1_700_000_005)

    def one(write):
        def build():
            buffer = io.BytesIO()
            write(buffer)
            return [buffer]
        return build

    seeds.append(_written("s390-plain", one(lambda f: w.write_s390(f, _pattern, MIB, cpus, tod_start=t0,
                                                                      tod_end=t1))))
    for version in (1, 2):
        seeds.append(_written(f"s390_ext-v{version}", one(
            lambda f, v=version: w.write_s390_ext(f, _pattern, 2 * MIB, cpus, version=v, tod_start=t0,
                                                  tod_end=t1)),
            regions=None))
        data = seeds[-1].files[0]
        seeds[-1].regions = [_clip([(0, 4096), (0x1000, 0x2000), (0x1000 + 0x1000 + MIB, 0x3000 + MIB),
                                    (len(data) - 8192, len(data))], len(data))]

    def volumes():
        specs = [mv.VolumeSpec(0x5A10, 3 * 256), mv.VolumeSpec(0x5A11, 3 * 256)]
        table = mv.parm_table((1_700_000_000 << 20) + 1, specs)
        buffers = [io.BytesIO() for _ in specs]
        for f, spec in zip(buffers, specs):
            mv.prepare_disk(f, table, spec)
        mv.write_dump(buffers, specs, _pattern, 3 * MIB, cpus, tod_start=t0, tod_end=t1)
        return buffers
    mv_seed = _written("s390mv", volumes)
    part = mv.PARTITION_BLOCK * mv.BS
    mv_seed.regions = [_clip([(0, 6 * 4096), (part, part + 4096), (part + 4096, part + 8192),
                              (len(f) - (64 << 10), len(f))], len(f)) for f in mv_seed.files]
    seeds.append(mv_seed)

    for variant in ("plain", "aws"):
        def tape(variant=variant):
            buffer = io.BytesIO()
            blocks = wt.dump_blocks(_pattern, MIB, cpus, tod_start=t0, tod_end=t1)
            (wt.write_aws if variant == "aws" else wt.write_plain)(buffer, blocks)
            return [buffer]
        seed = _written(f"tape-{variant}", tape, names=[f"tape.{'aws' if variant == 'aws' else 'img'}"])
        seed.regions = [_generic(seed.files[0], 0x5000, 0x1000)]
        seeds.append(seed)

    registers = [{k: v for k, v in c.registers.items() if not k.startswith("v")} for c in cpus]
    for variant, kwargs in (("big", {}), ("classic", {"fir_format": 0x82})):
        seed = _written(f"vmdump-{variant}", one(lambda f, kw=kwargs: wv.write_vmdump(
            f, _pattern, MIB, registers, tod=0x7D91048BCA000000 + (1 << 50), **kw)))
        seed.regions = [_generic(seed.files[0], 8 * 4096, 0)]
        seeds.append(seed)
    for variant, kwargs in (("full", {}), ("zlib", {"compress": True})):
        seed = _written(f"lkcd-{variant}", one(lambda f, kw=kwargs: wl.write_lkcd(f, _pattern, MIB, cpus, **kw)))
        seed.regions = [_clip([(0, 0x1000), (0x10000, 0x10000 + 0x100)], len(seed.files[0]))]
        seeds.append(seed)

    def scsi():
        buffer = io.BytesIO()
        facts = wsc.write_scsi_disk(buffer, wsc.elf_bytes_writer(_pattern, MIB, notes), part_size=2 * MIB)
        scsi.facts = facts
        return [buffer]
    seed = _written("scsi", scsi)
    sb = scsi.facts["superblock"]
    seed.regions = [_clip([(0, 512), (MIB, MIB + 0x1000), (sb - 2 * 4096, sb + 3 * 4096)], len(seed.files[0]))]
    seeds.append(seed)
    return seeds


def save_seeds(seeds: list[Seed], path: Path) -> None:
    path.write_bytes(pickle.dumps(seeds))


def load_seeds(path: Path) -> list[Seed]:
    return pickle.loads(path.read_bytes())


# -- mutations -----------------------------------------------------------------------------------

def _offset(rng: random.Random, regions, size: int, width: int = 1) -> int:
    """An offset in one of `regions` (rarely anywhere), inside the `size` bytes left."""
    regions = _clip(regions, size)
    if regions and rng.random() < 0.95:
        start, end = rng.choice(regions)
    else:
        start, end = 0, size
    end = max(start + 1, end - width)
    offset = rng.randrange(start, end)
    return max(start, offset - offset % width) if rng.random() < 0.8 else offset


VMCOREINFO_VALUE = re.compile(rb"[A-Z_()a-z0-9]+=([0-9a-fA-F]+)\n")


def _retext(rng: random.Random, data: bytearray, regions) -> bool:
    """Replaces the digits of one `KEY=value` line in the regions by others of the same length."""
    matches = [m for start, end in _clip(regions, len(data))
               for m in VMCOREINFO_VALUE.finditer(data, start, end)]
    if not matches:
        return False
    match = rng.choice(matches)
    width = match.end(1) - match.start(1)
    value = rng.choice((0, 1, 3, 4095, 4096, 1 << 31, 1 << 47, (1 << 64) - 1, 10 ** width - 1))
    text = (f"{value:0{width}d}" if rng.random() < 0.5 else f"{value:0{width}x}")[-width:]
    data[match.start(1):match.end(1)] = text.encode()
    return True


def mutate(rng: random.Random, seed: Seed) -> list[bytes]:
    """One to four mutations of one file of `seed`; the others stay as they are."""
    files = list(seed.files)
    which = rng.randrange(len(files))
    data = bytearray(files[which])
    regions = seed.regions[which]
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        kind = rng.random()
        if not data:
            break
        if kind < 0.30:                                     # bit flips
            for _ in range(rng.randint(1, 4)):
                offset = _offset(rng, regions, len(data))
                data[offset] ^= 1 << rng.randrange(8)
        elif kind < 0.75:                                   # an interesting integer
            width = rng.choice((1, 2, 4, 4, 8, 8))
            offset = _offset(rng, regions, len(data), width)
            value = rng.choice(INTERESTING) & ((1 << 8 * width) - 1)
            if rng.random() < 0.15:                         # near the file's own size
                value = (len(data) + rng.choice((-4096, -16, -1, 0, 1, 4096))) % (1 << 8 * width)
            elif rng.random() < 0.2:
                value = (int.from_bytes(data[offset:offset + width], seed.byteorder) +
                         rng.choice((-1, 1, 4096, -4096))) % (1 << 8 * width)
            order = seed.byteorder if rng.random() < 0.85 else ("little" if seed.byteorder == "big" else "big")
            data[offset:offset + width] = value.to_bytes(width, order)[:len(data) - offset]
        elif kind < 0.80 and _retext(rng, data, regions):   # a VMCOREINFO value (same length)
            pass
        elif kind < 0.85:                                   # a field copied over another
            width = rng.choice((4, 8, 16, 56))
            src, dst = (_offset(rng, regions, len(data), 4) for _ in range(2))
            chunk = data[src:src + width]
            data[dst:dst + len(chunk)] = chunk[:len(data) - dst]
        elif kind < 0.95:                                   # cut short
            data = data[:_offset(rng, regions, len(data)) if rng.random() < 0.7 else rng.randrange(len(data))]
        else:                                               # extended
            grow = rng.randint(1, 64 << 10)
            data += bytes(grow) if rng.random() < 0.5 else rng.randbytes(grow)
    files[which] = bytes(data)
    return files


def mutant(seeds: list[Seed], seed_value: int, index: int) -> tuple[Seed, list[bytes]]:
    """Mutant `index` of campaign `seed_value`: always the same bytes."""
    rng = random.Random(f"{seed_value}/{index}")
    seed = seeds[rng.randrange(len(seeds))]
    return seed, mutate(rng, seed)


# -- regression records: a seed's name and the bytes that differ ------------------------------

def diff(seed: Seed, files: list[bytes]) -> dict:
    record = {"seed": seed.name, "files": []}
    for original, data in zip(seed.files, files):
        patches, i, common = [], 0, min(len(original), len(data))
        while i < common:
            if original[i] != data[i]:
                j = i
                while j < common and (original[j] != data[j] or original[j:j + 16] != data[j:j + 16]):
                    j += 1
                patches.append([i, data[i:j].hex()])
                i = j
            else:
                i += 1
        if len(data) > len(original):
            patches.append([len(original), data[len(original):].hex()])
        record["files"].append({"size": len(data), "patches": patches})
    return record


def apply(seeds: list[Seed], record: dict) -> tuple[Seed, list[bytes]]:
    """The input a regression record stands for: a seed with its patches, or a generator's."""
    if "generator" in record:
        return GENERATORS[record["generator"]](seeds)
    seed = next(s for s in seeds if s.name == record["seed"])
    files = []
    for original, change in zip(seed.files, record["files"]):
        data = bytearray(original[:change["size"]].ljust(change["size"], b"\0"))
        for offset, hexbytes in change["patches"]:
            raw = bytes.fromhex(hexbytes)
            data[offset:offset + len(raw)] = raw
        files.append(bytes(data))
    return seed, files


def _elf_with_big_notes(seeds: list[Seed]) -> tuple[Seed, list[bytes]]:
    """Issue 9: 70 PT_NOTE headers each claiming 64 MiB of a 64 MiB file (one note each),
    which made `info` hold them all at once."""
    count, size = 70, 64 * MIB
    table = 64 + 56 * count
    note = struct.pack("<III", 5, size - table - 20, 1) + b"CORE\0\0\0\0"
    header = bytearray(b"\x7fELF\x02\x01\x01".ljust(16, b"\0"))
    header += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, count, 64, 0, 0)
    for _ in range(count):
        header += struct.pack("<IIQQQQQQ", 4, 0, table, 0, 0, size - table, 0, 4)
    data = bytes(header) + note + bytes(size - table - len(note))
    return Seed("generated-elf-big-notes", [data], [[]], "little", ["big-notes.elf"]), [data]


def _kdump_with_random_bitmaps(seeds: list[Seed]) -> tuple[Seed, list[bytes]]:
    """Issue 9: the first 2 MiB of a kdump whose two bitmaps (512 KiB each, max_mapnr 4 Mi) are
    random bits: 1.8 million runs of pages, which took a Python object each (750 MB)."""
    data = bytearray(_head(fc.unpacked("x86_64-custom", "mkdf-lzo-d31.kdump.xz"), 2 * MIB))
    block, bitmap_bytes = 4096, 512 << 10
    sub_blocks = struct.unpack_from("<i", data, 0x1B0)[0]
    struct.pack_into("<II", data, 0x1B4, 2 * bitmap_bytes // block, 8 * bitmap_bytes)  # bitmap_blocks, max_mapnr
    struct.pack_into("<Q", data, block + 0x60, 8 * bitmap_bytes)                     # max_mapnr_64
    bitmap1 = (1 + sub_blocks) * block
    data[bitmap1:bitmap1 + 2 * bitmap_bytes] = random.Random(9).randbytes(2 * bitmap_bytes)
    return Seed("generated-kdump-random-bitmaps", [bytes(data)], [[]], "little",
                ["random-bitmaps.kdump"]), [bytes(data)]


GENERATORS = {"elf-big-notes": _elf_with_big_notes, "kdump-random-bitmaps": _kdump_with_random_bitmaps}


def write_mutant(folder: Path, seed: Seed, files: list[bytes], tag: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in zip(seed.names, files):
        path = folder / f"{tag}-{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


# -- judging one run -----------------------------------------------------------------------------

def verdict(code: int, stdout: str, stderr: str) -> str | None:
    """None when `dumpfs info` behaved: exit 0, or exit 1 with exactly one `dumpfs:` line."""
    if "Traceback" in stderr or "Traceback" in stdout:
        return f"traceback (exit {code}): {stderr[-2000:]}"
    if code == 0:
        return None
    lines = stderr.splitlines()
    if code != 1:
        return f"exit {code}: {stderr.strip()[-2000:]}"
    if len(lines) != 1 or not lines[0].startswith("dumpfs: "):
        return f"exit 1 but stderr is not one `dumpfs:` line: {lines[:5]}"
    return None


class _CurrentStderr:
    """A logging stream that writes to whatever sys.stderr is now (it is captured per run)."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def run_info(paths: list[Path]) -> tuple[int, str, str]:
    """`dumpfs info PATHS` in this process, its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["info", *map(str, paths)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def worker(seeds_path: Path, work: Path) -> None:
    """Runs the jobs read from stdin, one JSON line each ({"seed": value, "index": i} for a
    mutant, {"record": ...} for a regression record); answers one JSON line per job."""
    logging.basicConfig(stream=_CurrentStderr(), level=logging.WARNING, format="dumpfs: %(message)s")
    seeds = load_seeds(seeds_path)
    for number, line in enumerate(sys.stdin):
        job = json.loads(line)
        if "record" in job:
            seed, files = apply(seeds, job["record"])
        else:
            seed, files = mutant(seeds, job["seed"], job["index"])
        paths = write_mutant(work, seed, files, f"m{number}")
        began = time.monotonic()
        code, out, err = run_info(paths)
        for path in paths:
            path.unlink()
        print(json.dumps({"seed": seed.name, "code": code, "stdout": out[-4000:], "stderr": err[-4000:],
                          "seconds": round(time.monotonic() - began, 3)}), flush=True)


# -- the campaign ---------------------------------------------------------------------------------

@dataclass
class Outcome:
    job: dict                   # what ran: {"seed": value, "index": i} or {"record": ...}
    seed: str                   # the seed input's name
    code: int | None            # None: a hang or a dead worker
    problem: str | None         # None: it behaved
    stdout: str = ""
    seconds: float = 0.0


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Campaign:
    """Feeds jobs to a worker process one at a time; a hang or a death is that job's outcome,
    and a new worker takes the next job."""

    def __init__(self, seeds_path: Path, work: Path):
        self.seeds_path = seeds_path
        self.work = work
        self.outcomes: list[Outcome] = []
        self.process: subprocess.Popen | None = None

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, DUMPFS_CACHE_DIR=str(self.work / "cache"))
        return subprocess.Popen([sys.executable, str(Path(__file__)), "worker", str(self.seeds_path),
                                 str(self.work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, preexec_fn=_limit_memory, text=True)

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                stream.close()
            self.process = None

    def run_job(self, job: dict) -> Outcome:
        if self.process is None:
            self.process = self._spawn()
        process = self.process
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], MUTANT_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        record = job.get("record", {})
        name = record.get("seed") or record.get("generator") or "?"
        if not ready:
            outcome = Outcome(job, name, None, f"hang: no answer in {MUTANT_TIMEOUT:.0f} s")
            self.close()
        elif not line:
            process.wait()
            outcome = Outcome(job, name, None, f"worker died ({process.returncode}): "
                                               f"{process.stderr.read()[-2000:]}")
            self.close()
        else:
            event = json.loads(line)
            outcome = Outcome(job, event["seed"], event["code"],
                              verdict(event["code"], event["stdout"], event["stderr"]),
                              event["stdout"], event["seconds"])
        self.outcomes.append(outcome)
        return outcome

    def run(self, seed_value: int, seconds: float, first: int = 0) -> None:
        """Mutants first, first + 1, ... of campaign `seed_value` until `seconds` have passed."""
        deadline = time.monotonic() + seconds
        index = first
        try:
            while time.monotonic() < deadline:
                self.run_job({"seed": seed_value, "index": index})
                index += 1
        finally:
            self.close()

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem is not None]


# -- mounted mutants: every file read -------------------------------------------------------------

WHOLE_FILE = 4 * MIB            # files up to this size are read end to end
SAMPLES = 32                    # bigger ones: this many 64 KiB reads spread over them, and the end


def read_tree(root: Path) -> list[str]:
    """Reads every file under `root` (end to end, or sampled when big); returns the reads that
    failed with anything but EIO."""
    problems = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            try:
                with open(path, "rb", buffering=0) as f:
                    size = os.fstat(f.fileno()).st_size
                    offsets = [0] if size <= WHOLE_FILE else \
                        [size * k // SAMPLES for k in range(SAMPLES)] + [max(0, size - 65536)]
                    for offset in offsets:
                        limit = WHOLE_FILE if size <= WHOLE_FILE else 65536
                        f.seek(offset)
                        got = 0
                        while got < limit:
                            try:
                                chunk = f.read(min(MIB, limit - got))
                            except OSError as exc:
                                if exc.errno != errno.EIO:
                                    problems.append(f"{path}@{offset + got}: {exc}")
                                break
                            if not chunk:
                                break
                            got += len(chunk)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    problems.append(f"{path}: {exc}")
    return problems


if __name__ == "__main__":
    if sys.argv[1:2] == ["walk"]:
        print(json.dumps(read_tree(Path(sys.argv[2]))))
        sys.exit(0)
    if sys.argv[1:2] != ["worker"] or len(sys.argv) != 4:
        sys.exit("usage: fuzz.py worker SEEDS WORK  (tests/test_fuzz.py runs it)")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
