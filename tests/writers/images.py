"""Every IBM Z image the tests write from the s390x-custom fixture memory, built once per session.

One builder for all test modules (tests/conftest.py's `written` fixture):
`written("s390_ext-v2")` writes the image on first use and returns a `Built`
(paths, writer facts); later calls return the same files.  The writers stay
in their modules (s390.py, s390mv.py, tape.py, vmdump.py, lkcd.py, scsi.py,
ngdump.py); this module only fixes the sizes, times and variants the tests
share.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import lkcd as wl
from . import ngdump as wng
from . import s390 as w
from . import s390mv as mv
from . import scsi as wsc
from . import tape as t
from . import vmdump as wv

MIB = 1 << 20

# s390 / s390_ext single volume: the first 64 MiB
S390_MEM = 64 << 20
S390_T0, S390_T1 = w.tod(1_700_000_000), w.tod(1_700_000_005)

# multi-volume: the first 128 MiB (16 non-zero megabytes) on three volumes
MV_MEM = 128 << 20
MV_T0, MV_T1 = w.tod(1_700_000_100), w.tod(1_700_000_107)
MV_TIMESTAMP = (1_700_000_000 << 20) + 12345
MV_SPECS = [mv.VolumeSpec(0x5A10, 7 * 256), mv.VolumeSpec(0x5A11, 7 * 256), mv.VolumeSpec(0x5A12, 16 * 256)]

# tape: 64 MiB
TAPE_MEM = 64 << 20
TAPE_T0, TAPE_T1 = w.tod(1_700_000_200), w.tod(1_700_000_230)

# VMDUMP: 128 MiB
VMDUMP_MEM = 128 << 20
VMDUMP_TOD = 0x7D91048BCA000000 + (1_700_000_000_000_000 << 12)

# LKCD, SCSI, NGDump: 64 MiB
LKCD_MEM = 64 << 20
SCSI_MEM = 64 << 20
SCSI_PART = SCSI_MEM + MIB


@dataclass
class Built:
    paths: list[Path]                       # the image (or the volumes of a set)
    facts: object = None                    # what the writer returned
    mem_size: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.paths[0]


def vmdump_registers(elf) -> list[dict]:
    """What VMDUMP carries: everything but the vector registers."""
    return [{k: v for k, v in elf.cpus[n].registers.items() if not k.startswith("v")}
            for n in sorted(elf.cpus)]


def cpu_notes(elf) -> list[tuple[str, int, bytes]]:
    return [(n.name, n.type, n.desc) for c in sorted(elf.cpus) for n in elf.cpus[c].notes]


def write_mv_set(folder: Path, elf, specs=MV_SPECS, timestamp=MV_TIMESTAMP, dumper_version=2,
                 mem_size=MV_MEM, **kwargs):
    """The volumes of a multi-volume set as image files; returns (paths, MultiVolumeImage)."""
    paths = [folder / f"vol{i}.img" for i in range(len(specs))]
    table = mv.parm_table(timestamp, specs)
    files = [open(p, "w+b") for p in paths]
    try:
        for f, spec in zip(files, specs):
            mv.prepare_disk(f, table, spec, version=dumper_version)
        image = mv.write_dump(files, specs, elf.read_physical, mem_size, w.cpu_states(elf),
                              tod_start=MV_T0, tod_end=MV_T1, **kwargs)
    finally:
        for f in files:
            f.close()
    return paths, image


class WrittenImages:
    """Builds each kind on first request into `folder`; thread-safe, cached for the session."""

    KINDS = ("s390-plain", "s390_ext-v1", "s390_ext-v2", "s390mv", "tape-plain", "tape-file2",
             "tape-aws", "vmdump", "vmdump-classic", "vmdump-ranges", "lkcd-full", "lkcd-zlib",
             "lkcd-flex", "scsi", "ngdump")

    def __init__(self, elf, folder: Path):
        self.elf = elf
        self.folder = Path(folder)
        self._built: dict[str, Built] = {}
        self._lock = threading.Lock()

    def __call__(self, kind: str) -> Built:
        if kind not in self.KINDS:
            raise KeyError(f"unknown image kind {kind!r}; known: {', '.join(self.KINDS)}")
        with self._lock:
            if kind not in self._built:
                target = self.folder / kind
                target.mkdir(parents=True, exist_ok=True)
                self._built[kind] = self._build(kind, target)
            return self._built[kind]

    def _build(self, kind: str, folder: Path) -> Built:
        elf = self.elf
        cpus = w.cpu_states(elf)
        family, _, variant = kind.partition("-")
        if family in ("s390", "s390_ext"):
            path = folder / f"{variant}.img"
            with open(path, "wb") as f:
                if variant == "plain":
                    image = w.write_s390(f, elf.read_physical, S390_MEM, cpus, tod_start=S390_T0,
                                         tod_end=S390_T1)
                else:
                    image = w.write_s390_ext(f, elf.read_physical, S390_MEM, cpus, version=int(variant[1]),
                                             tod_start=S390_T0, tod_end=S390_T1)
            return Built([path], image, S390_MEM)
        if family == "s390mv":
            paths, image = write_mv_set(folder, elf)
            return Built(paths, image, MV_MEM)
        if family == "tape":
            path = folder / f"{variant}.{'aws' if variant == 'aws' else 'img'}"
            blocks = t.dump_blocks(elf.read_physical, TAPE_MEM, cpus, tod_start=TAPE_T0, tod_end=TAPE_T1,
                                   with_tool=variant != "file2")
            with open(path, "wb") as f:
                (t.write_aws if variant == "aws" else t.write_plain)(f, blocks)
            return Built([path], None, TAPE_MEM)
        if family == "vmdump":
            kwargs = {"": {}, "classic": {"fir_format": 0x82},
                      "ranges": {"requested_ranges": [(0, VMDUMP_MEM - 1)], "def_store": 2 * VMDUMP_MEM}}[variant]
            path = folder / f"{variant or 'big'}.vmdump"
            with open(path, "wb") as f:
                facts = wv.write_vmdump(f, elf.read_physical, VMDUMP_MEM, vmdump_registers(elf),
                                        tod=VMDUMP_TOD, **kwargs)
            return Built([path], facts, VMDUMP_MEM)
        if family == "lkcd":
            kwargs = {"full": {}, "zlib": {"compress": True},
                      "flex": {"compress": True, "skip_zero": True}}[variant]
            path = folder / f"{variant}.lkcd"
            with open(path, "wb") as f:
                wl.write_lkcd(f, elf.read_physical, LKCD_MEM, cpus, **kwargs)
            return Built([path], None, LKCD_MEM)
        if family == "scsi":
            path = folder / "disk.img"
            with open(path, "w+b") as f:
                facts = wsc.write_scsi_disk(f, wsc.elf_bytes_writer(elf.read_physical, SCSI_MEM, cpu_notes(elf)),
                                            part_size=SCSI_PART)
            return Built([path], facts, SCSI_MEM)
        if family == "ngdump":
            path = folder / "ngdump.part"
            facts = wng.write_ngdump_partition(
                path, folder, wsc.elf_bytes_writer(elf.read_physical, SCSI_MEM, cpu_notes(elf)),
                size=SCSI_MEM + (16 << 20))
            return Built([path], facts, SCSI_MEM)
        raise AssertionError(kind)
