"""SCSI dump disks (zfcpdump) and NGDump partitions, written here from the s390x-custom memory.

The ELF inside is written by tests/writers/scsi.py (PT_NOTE with the
fixture's CPU notes, one PT_LOAD).  The oracle reads SCSI dumps only from
block devices: the partition and the whole disk go through loop devices.
NGDump needs zgetdump to mount ext4, which the oracle cannot under
qemu-user, so NGDump is checked against the fixture only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess

import pytest

import fixturecache as fc
from conftest import assert_info_refuses, run_dumpfs
from dumpfs.backends import open_dump
from dumpfs.errors import DumpError
from writers import images as wi
from writers import lkcd as wl
from writers import ngdump as wng
from writers import s390 as ws
from writers import scsi as wsc
from writers import loop
from writers.loop import loop_device
from writers.tools import assert_oracle_converts_to, differing_pages, oracle, oracle_info

SIZE = wi.SCSI_MEM
PART = wi.SCSI_PART


_notes = wi.cpu_notes


def _disk(path, elf, **kwargs):
    with open(path, "w+b") as f:
        return wsc.write_scsi_disk(f, wsc.elf_bytes_writer(elf.read_physical, SIZE, _notes(elf)),
                                   part_size=PART, **kwargs)


@pytest.fixture(scope="module")
def disk(written):
    return written("scsi").path, written("scsi").facts


def _same(dump, elf):
    assert dump.memory.end == SIZE
    assert differing_pages(dump.read_physical, elf.read_physical, SIZE) == set()
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers


def _assert_mounted_vmcore_is(mountpoint, writer: str, elf):
    """The mount's info names `writer` and its vmcore reopens as the ELF's memory and CPUs."""
    assert writer in (mountpoint / "info").read_text()
    mounted = open_dump(str(mountpoint / "vmcore"))
    _same(mounted, elf)
    mounted.close()


def test_scsi_disk_image(disk, elf):
    path, facts = disk
    dump = open_dump(str(path))
    assert (dump.meta.format, dump.meta.writer, dump.meta.complete) == ("elf", "zfcpdump", True)
    assert dump.meta.details["layout"] == f"SCSI dump disk, partition at {facts['part_start']:#x} (65 MiB)"
    assert dump.meta.kernel_release == fc.truth("s390x-custom")["kernel_release"]
    _same(dump, elf)
    dump.close()


def test_scsi_disk_and_partition_on_loop_devices_with_the_oracle(disk, elf, tmp_path):
    path, facts = disk
    with loop_device(path, block_size=512) as device:
        dump = open_dump(device)
        _same(dump, elf)
        dump.close()
        tool = oracle("-d", device).stderr.decode()
        assert "Single-volume SCSI dump tool" in tool and "Partition number..: 1" in tool, tool
    with loop_device(path, offset=facts["part_start"], size=facts["part_size"], block_size=512) as partition:
        info = oracle_info(partition)
        assert (info["Dump format"], info["Dump memory range"], info["CPU count (online)"]) == \
            ("elf", f"{SIZE >> 20} MB", str(len(elf.cpus)))
        ours = open_dump(partition)          # the partition alone, found through its disk
        assert_oracle_converts_to(partition, ours, SIZE, tmp_path / "oracle.elf")
        ours.close()


def test_mounted_scsi_disk(disk, elf, mount):
    _assert_mounted_vmcore_is(mount(disk[0]), "zfcpdump", elf)


def test_bad_superblock_checksum_is_served_and_said(disk, elf, tmp_path):
    path = tmp_path / "csum.img"
    facts = _disk(path, elf)
    with open(path, "r+b") as f:
        f.seek(facts["superblock"] + 0x40)
        f.write(struct.pack(">Q", 0x1234))
    dump = open_dump(str(path))
    assert not dump.meta.complete
    assert str(dump.meta.problems[0]).startswith("superblock checksum 0x00001234 does not match")
    assert dump.read_physical(0, 4096) == elf.read_physical(0, 4096)
    dump.close()


@pytest.mark.parametrize("case, message", [
    ("busy", "zfcpdump was interrupted"),
    ("empty", "no dump on .*the dump area holds zeros"),
    ("magic", "wrong magic .* \\(expected ZFCPDUMP\\)"),
    ("absurd", "absurd layout"),
    ("cut", "truncated: the SCSI dump superblock"),
])
def test_damaged_scsi_disks(elf, tmp_path, case, message):
    path = tmp_path / f"{case}.img"
    if case == "empty":
        with open(path, "w+b") as f:
            facts = wsc.write_scsi_disk(f, None, part_size=PART)
    else:
        facts = _disk(path, elf, busy=case == "busy")
    with open(path, "r+b") as f:
        f.seek(facts["superblock"])
        if case == "magic":
            f.write(b"ZFCPDUMQ")
        elif case == "absurd":
            f.seek(facts["superblock"] + 0x18)
            f.write(struct.pack(">Q", 1 << 60))
    if case == "cut":
        os.truncate(path, facts["superblock"] + 10)
    with pytest.raises(DumpError, match=message):
        open_dump(str(path))
    assert_info_refuses(path)


def test_busy_partition_alone(tmp_path):
    path = tmp_path / "busy.part"
    path.write_bytes(b"zfcpdump busy\0".ljust(1 << 20, b"\0"))
    with pytest.raises(DumpError, match="zfcpdump was interrupted"):
        open_dump(str(path))


@contextlib.contextmanager
def _partitioned(path, facts):
    """(/dev/loopN, /dev/loopNp1): the disk image on a loop device, its dump partition added
    with addpart (BLKPG: this kernel parses no partition tables); deleted and detached after."""
    with loop.loops() as attach:
        disk = attach(path, block_size=512, partscan=True)
        partition = f"{disk}p1"
        added = not os.path.exists(partition)       # a kernel that reads the MSDOS table made it
        if added:
            subprocess.run(["addpart", disk, "1", str(facts["part_start"] // 512),
                            str(facts["part_size"] // 512)], check=True, capture_output=True)
        try:
            assert os.path.exists(partition)
            yield disk, partition
        finally:
            if added:
                subprocess.run(["delpart", disk, "1"], capture_output=True)


def test_dump_partition_device_opens_through_its_disk(disk, elf):
    """/dev/loopNp1 alone: its disk (sysfs) has the superblock, so it opens as the disk does."""
    path, facts = disk
    with _partitioned(path, facts) as (whole, partition):
        from_disk, from_partition = open_dump(whole), open_dump(partition)
        try:
            assert (from_partition.meta.format, from_partition.meta.writer) == ("elf", "zfcpdump")
            assert from_partition.meta == from_disk.meta
            assert from_partition.meta.complete and from_partition.meta.details["layout"] == \
                f"SCSI dump disk, partition at {facts['part_start']:#x} (65 MiB)"
            _same(from_partition, elf)
        finally:
            from_disk.close()
            from_partition.close()
        done = run_dumpfs("info", partition)
        assert done.returncode == 0, done.stderr
        assert "zfcpdump" in done.stdout and "SCSI dump disk, partition at" in done.stdout, done.stdout


def test_dump_partition_device_with_a_bad_checksum_says_so(disk, tmp_path):
    path, facts = disk
    copy = tmp_path / "csum.img"
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as f:
        f.seek(facts["superblock"] + 0x40)
        f.write(struct.pack(">Q", 0x1234))
    with _partitioned(copy, facts) as (_, partition):
        dump = open_dump(partition)
        assert dump.meta.writer == "zfcpdump" and not dump.meta.complete
        assert str(dump.meta.problems[0]).startswith("superblock checksum 0x00001234 does not match")
        dump.close()


def test_partition_of_a_disk_without_zipl_record_stays_plain_elf(disk, elf, tmp_path):
    path, facts = disk
    copy = tmp_path / "nozipl.img"
    shutil.copyfile(path, copy)
    with open(copy, "r+b") as f:
        f.write(b"\0" * 4)                      # no zIPL MBR: not a SCSI dump disk any more
    with _partitioned(copy, facts) as (_, partition):
        dump = open_dump(partition)
        assert dump.meta.format == "elf" and dump.meta.writer != "zfcpdump", dump.meta
        assert "layout" not in dump.meta.details
        _same(dump, elf)
        dump.close()


def test_partition_start_must_match_the_superblock(disk, monkeypatch):
    """The parent lookup with a stand-in for sysfs: the image file as 'disk', a start."""
    import dumpfs.backends as backends
    from dumpfs.backends import scsi
    from dumpfs.source import FileSource
    path, facts = disk
    source = FileSource(str(path))
    try:
        assert scsi._partition_superblock(source, facts["part_start"]).part_start == facts["part_start"]
        assert scsi._partition_superblock(source, facts["part_start"] + 512) is None
        monkeypatch.setattr(backends, "parent_disk", lambda s: ("/nonexistent/disk", facts["part_start"]))
        monkeypatch.setattr(source, "is_block_device", True)
        assert not backends._Disk(source).open()
    finally:
        source.close()


# -- NGDump ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ngdump(written):
    return written("ngdump").path, written("ngdump").facts


def test_ngdump_partition(ngdump, elf):
    path, facts = ngdump
    dump = open_dump(str(path))
    assert (dump.meta.format, dump.meta.writer, dump.meta.complete) == ("elf", "NGDump dumper", True)
    assert dump.meta.details["dump file"] == facts["file"]
    assert dump.meta.details["sha256sum"] == facts["sha256"]
    _same(dump, elf)
    dump.close()


def test_mounted_ngdump_partition(ngdump, elf, mount):
    _assert_mounted_vmcore_is(mount(ngdump[0]), "NGDump", elf)


def test_ngdump_on_a_loop_device(ngdump, elf):
    with loop_device(ngdump[0], block_size=4096) as device:
        dump = open_dump(device)
        assert dump.meta.writer == "NGDump dumper"
        assert dump.read_physical(0, 1 << 20) == elf.read_physical(0, 1 << 20)
        dump.close()


def _tiny_elf(f):
    wsc.write_elf(f, lambda a, n: bytes(n), 1 << 20, [])


@pytest.mark.parametrize("case, message", [
    ("nofile", "no dump on .*names no dump file yet"),
    ("gone", "names 'dumps/nothere.elf', which is not in the file system"),
    ("version", "ngdump.meta version '2', only version 1 is known"),
    ("nometa", "without ngdump.meta .*not an NGDump partition"),
    ("notelf", "is not an ELF dump"),
])
def test_ngdump_problems(tmp_path, case, message):
    path = tmp_path / "p.img"
    meta = {"nofile": wng.meta_text(), "gone": wng.meta_text("dumps/nothere.elf", "00"),
            "version": "version=2\nfile=x\n", "notelf": wng.meta_text("junk", "00")}.get(case)
    extra = {"junk": b"not a dump" * 100} if case == "notelf" else {}
    wng.write_ngdump_partition(path, tmp_path, None, size=8 << 20, meta=meta, extra=extra)
    if case == "nometa":
        wng.write_lkcd_file_system(path, tmp_path, {"README": lambda f: f.write(b"x")}, size=8 << 20)
    with pytest.raises(DumpError, match=message):
        open_dump(str(path))
    assert_info_refuses(path)


def test_ngdump_without_sha256_and_damaged_file_system(tmp_path):
    path = tmp_path / "nosum.img"
    wng.write_ngdump_partition(path, tmp_path, _tiny_elf, size=8 << 20,
                               meta=wng.meta_text("dumps/dump.elf", ""))
    dump = open_dump(str(path))
    assert [str(p) for p in dump.meta.problems] == ["ngdump.meta records no sha256sum for 'dumps/dump.elf'"]
    dump.close()
    with open(path, "r+b") as f:            # wipe the group descriptors and inode tables
        f.seek(4096)
        f.write(bytes(1 << 20))
    assert_info_refuses(path)


def test_zfcpdump_v2_file_system_opens_the_newest_lkcd_file(tmp_path):
    cpu = [ws.CpuState({"prefix": 0x10000, "r15": 0xF00})]

    def pattern(byte):
        return lambda a, n: bytes([byte]) * n

    def writer(byte):
        return lambda f: wl.write_lkcd(f, pattern(byte), 1 << 20, cpu)
    path = tmp_path / "dumptofs.img"
    wng.write_lkcd_file_system(path, tmp_path, {"dump.0": writer(1), "dump.10": writer(3), "dump.9": writer(2)},
                               size=16 << 20)
    dump = open_dump(str(path))
    assert dump.meta.format == "lkcd"
    assert dump.meta.details["layout"] == "zfcpdump v1/v2 file system, newest of dump.0, dump.9, dump.10"
    assert dump.read_physical(0x5000, 4) == b"\x03" * 4
    assert dump.cpus[0].registers["r15"] == 0xF00
    dump.close()
