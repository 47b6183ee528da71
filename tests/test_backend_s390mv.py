"""Multi-volume DASD dumps (s390mv_ext): written here from the s390x-custom fixture's memory.

Three volumes as `zipl -M` prepares them and the XMULT64 dumper fills them
(tests/writers/s390mv.py), as image files and as loop devices; opened from
all volumes together, from one member partition (the others found through
/sys/block), mounted for real, and read by IBM's zgetdump 2.16 (the oracle)
with a stand-in sysfs ($SYSFS_ROOT: bus/ccw/devices/<bus id>/block/dasdX/dev
pointing at the loop disks) so that it finds the volumes like on IBM Z.
"""

from __future__ import annotations

import os
import re
import struct

import pytest

import fixturecache as fc
from conftest import run_dumpfs, unmount
from dumpfs.backends import open_dump, open_paths
from dumpfs.errors import DumpError, MemoryUnavailable
from dumpfs.model import PageState
from writers.elfcore import ElfCore
from writers.tools import assert_oracle_converts_to, differing_pages, oracle, oracle_info
from writers import loop
from writers import s390 as w
from writers import s390mv as mv
from writers import images as wi

MIB = 1 << 20
MEM = wi.MV_MEM             # the first 128 MiB of s390x-custom (16 non-zero megabytes)
TIMESTAMP = wi.MV_TIMESTAMP
SPECS = wi.MV_SPECS


@pytest.fixture(scope="module")
def reference(elf):
    return w.memory_with_status(elf.read_physical, w.cpu_states(elf))


def write_set(folder, elf, specs=SPECS, timestamp=TIMESTAMP, dumper_version=2, **kwargs):
    return wi.write_mv_set(folder, elf, specs, timestamp, dumper_version, **kwargs)


@pytest.fixture(scope="module")
def volumes(written):
    built = written("s390mv")
    paths, image = built.paths, built.facts
    assert all(image.segments), "the writer should use all three volumes"
    assert image.end_marker[0] == 2
    return paths, image


def check_dump(dump, elf, reference, image):
    assert dump.meta.format == "s390mv_ext"
    assert dump.meta.complete and dump.meta.problems == [], dump.meta.problems
    assert dump.meta.dump_time.timestamp() == 1_700_000_100
    assert dump.memory.end == MEM
    written = [(s, s + n) for segments in image.segments for s, n in segments]
    present = [(c.start, c.end) for c in dump.memory if c.state is PageState.PRESENT]
    assert present == written
    assert differing_pages(dump.read_physical, reference, MEM) == set()
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers
    assert [v.split()[2] for v in dump.meta.details["volumes"]] == ["(active)"] * 3
    assert [v.split()[1] for v in dump.meta.details["volumes"]] == ["0.0.5a10", "0.0.5a11", "0.0.5a12"]


def test_all_volume_images_together_are_one_dump(volumes, elf, reference):
    paths, image = volumes
    dumps = open_paths([str(p) for p in reversed(paths)])
    assert len(dumps) == 1
    check_dump(dumps[0], elf, reference, image)
    assert dumps[0].meta.details["dump tool"] == "XMULT64 v2"
    assert dumps[0].meta.details["dump size limit"] == "none"
    dumps[0].close()


def test_registers_equal_truth(volumes):
    dump = open_paths([str(p) for p in volumes[0]])[0]
    for cpu in fc.truth("s390x-custom")["cpus"]:
        ours = dump.cpus[cpu["cpu"]].registers
        assert {k: hex(ours[k]) for k, v in cpu["registers"].items() if ours.get(k) != v} == {}
    dump.close()


def test_one_image_alone_names_the_missing_volumes(volumes):
    paths, _ = volumes
    with pytest.raises(DumpError, match=r"volume 1 \(device 0\.0\.5a11\) is missing"):
        open_dump(str(paths[0]))
    with pytest.raises(DumpError, match=r"volume 0 \(device 0\.0\.5a10\) is missing; it holds the dump header"):
        open_dump(str(paths[2]))


def test_a_missing_middle_volume_partial(volumes, reference):
    paths, image = volumes
    with pytest.raises(DumpError, match=r"volume 1 \(device 0\.0\.5a11\) is missing.*--partial"):
        open_paths([str(paths[0]), str(paths[2])])
    dump = open_paths([str(paths[0]), str(paths[2])], partial=True)[0]
    assert not dump.meta.complete
    assert any("volume 1 (device 0.0.5a11) is missing" in p for p in map(str, dump.meta.problems))
    vol0_end = sum(image.segments[0][-1])
    vol2_start = image.segments[2][0][0]
    assert dump.memory.chunk_at(vol0_end).state is PageState.MISSING
    assert dump.memory.chunk_at(vol2_start - 1).state is PageState.MISSING
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(vol0_end, 4096)
    assert dump.read_physical(0, vol0_end) == reference(0, vol0_end)
    assert dump.read_physical(vol2_start, 2 * MIB) == reference(vol2_start, 2 * MIB)
    dump.close()


def test_cli_says_which_volume_is_missing(volumes):
    paths, _ = volumes
    done = run_dumpfs("info", paths[0])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "volume 1 (device 0.0.5a11) is missing" in done.stderr
    done = run_dumpfs("info", "--partial", paths[0])
    assert done.returncode == 0, done.stderr
    assert "volume 1 (device 0.0.5a11) is missing" in done.stdout


def test_loop_devices_member_partition_finds_the_others(volumes, elf, reference):
    paths, image = volumes
    with loop.loops() as attach:
        pairs = [attach.disk_and_partition(p, s.part_off, s.part_size) for p, s in zip(paths, SPECS)]
        for disk, partition in [pairs[1], (pairs[2][0], None)]:
            dump = open_dump(partition or disk)
            check_dump(dump, elf, reference, image)
            assert sorted(dump.sources) == sorted([d for d, _ in pairs] + ([partition] if partition else []))
            dump.close()


def _fake_sysfs(root, pairs):
    """bus/ccw/devices/<bus id>/{online, block/dasdX/dev} for each loop 'DASD'."""
    for spec, (disk, _) in zip(SPECS, pairs):
        rdev = os.stat(disk).st_rdev
        device = root / "bus" / "ccw" / "devices" / spec.busid
        (device / "block" / f"dasd{spec.devno:x}").mkdir(parents=True)
        (device / "online").write_text("1\n")
        (device / "block" / f"dasd{spec.devno:x}" / "dev").write_text(f"{os.major(rdev)}:{os.minor(rdev)}\n")


def test_oracle_reads_the_set_from_a_member_partition(elf, tmp_path, monkeypatch):
    """zgetdump 2.16 knows the XMULT64 v1 dumper only (0x3000 bytes; v2 came later)."""
    paths, image = write_set(tmp_path, elf, dumper_version=1)
    with loop.loops() as attach:
        pairs = [attach.disk_and_partition(p, s.part_off, s.part_size) for p, s in zip(paths, SPECS)]
        _fake_sysfs(tmp_path / "sys", pairs)
        monkeypatch.setenv("SYSFS_ROOT", str(tmp_path / "sys"))
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        info = oracle_info(pairs[1][1])
        ours = open_dump(pairs[1][1])
        assert info["Dump format"] == "s390mv_ext"
        assert info["Version"] == "2"
        assert info["Dump memory range"] == f"{MEM >> 20} MB"
        assert info["CPU count (online)"] == str(len(ours.cpus))
        assert info["Dump file size"] == f"{ours.meta.details['dump file size'] >> 20} MB"
        done = oracle("-i", pairs[1][1])
        text = done.stderr.decode()
        assert re.findall(r"Volume (\d): (\S+) \(online/(\w+)\)", text) == \
            [("0", "0.0.5a10", "active"), ("1", "0.0.5a11", "active"), ("2", "0.0.5a12", "active")]
        zero = [(int(a, 16), int(b, 16) + 1) for a, b, _, z in info["map"] if z]
        assert zero == [(c.start, c.end) for c in ours.memory if c.state is PageState.ZERO]
        assert_oracle_converts_to(pairs[1][1], ours, MEM, tmp_path / "oracle.elf")
        tool = oracle("-d", pairs[0][0]).stderr.decode()
        assert "Multi-volume DASD dump tool (extended)" in tool, tool
        assert "Volume 2: 0.0.5a12 (online/active)" in tool
        ours.close()


def test_mounted_from_all_volumes_is_one_tree(volumes, elf, reference, mountpoint):
    paths, _ = volumes
    done = run_dumpfs("mount", *paths, mountpoint)
    try:
        assert done.returncode == 0, done.stderr
        names = set(os.listdir(mountpoint))
        assert {"vmcore", "dump.s390", "cpus", "info"} <= names, names
        assert "s390mv_ext" in (mountpoint / "info").read_text()
        dump = open_paths([str(p) for p in paths])[0]
        with open(mountpoint / "dump.s390", "rb") as mounted:
            for address in (0, 0xC72000, 0x1000000, MEM - 4096):
                assert os.pread(mounted.fileno(), 8192, 0x1000 + address)[:4096] == \
                    dump.read_physical(address, 4096)
        dump.close()
    finally:
        unmount(mountpoint)


def test_mounted_from_a_member_partition(volumes, mountpoint):
    paths, _ = volumes
    with loop.loops() as attach:
        pairs = [attach.disk_and_partition(p, s.part_off, s.part_size) for p, s in zip(paths, SPECS)]
        done = run_dumpfs("mount", pairs[2][1], mountpoint)
        try:
            assert done.returncode == 0, done.stderr
            assert sorted(os.listdir(mountpoint / "cpus")) == ["0", "1"]
            assert "s390mv_ext" in (mountpoint / "info").read_text()
        finally:
            unmount(mountpoint)


# -- damaged sets ------------------------------------------------------------------------------

def test_interrupted_dump(elf, tmp_path):
    paths, image = write_set(tmp_path, elf, stop_after_segments=4)
    dump = open_paths([str(p) for p in paths])[0]
    assert not dump.meta.complete
    assert any("interrupted" in p for p in map(str, dump.meta.problems)), dump.meta.problems
    last = max(s + n for segments in image.segments for s, n in segments)
    assert dump.memory.chunk_at(last).state is PageState.MISSING
    dump.close()


def test_wrong_magic_and_foreign_table(volumes, elf, tmp_path):
    paths, _ = volumes
    bad = tmp_path / "vol0-bad.img"
    bad.write_bytes(paths[0].read_bytes())
    with open(bad, "r+b") as f:
        f.seek(mv.PARTITION_BLOCK * 4096)
        f.write(struct.pack(">Q", 0xA8190173618F23FC))
    done = run_dumpfs("info", bad, paths[1], paths[2])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "volume 0 (device 0.0.5a10)" in done.stderr and "no header of this dump" in done.stderr
    other = tmp_path / "other"
    other.mkdir()
    other_paths, _ = write_set(other, elf, timestamp=TIMESTAMP + 1)
    dumps = open_paths([str(paths[0]), str(paths[1]), str(paths[2]), str(other_paths[0]),
                        str(other_paths[1]), str(other_paths[2])])
    assert len(dumps) == 2          # two sets: grouped by table and dump time
    for dump in dumps:
        dump.close()


def test_empty_set_says_no_dump(tmp_path):
    paths = [tmp_path / f"e{i}.img" for i in range(3)]
    table = mv.parm_table(TIMESTAMP, SPECS)
    for p, spec in zip(paths, SPECS):
        with open(p, "w+b") as f:
            mv.prepare_disk(f, table, spec)
    with pytest.raises(DumpError, match=r"no dump on .*multi-volume dump tool XMULT64 v2 installed on 3 volume"):
        open_paths([str(p) for p in paths])


# -- dumpfs convert of a multi-volume set ----------------------------------------------------

def _covered(core) -> list[tuple[int, int]]:
    return [(paddr, paddr + filesz) for paddr, _, filesz, _ in core.loads if filesz]


def test_convert_the_volumes_to_one_elf(volumes, elf, reference, tmp_path):
    """All three volumes, in any order, make one ELF: the writer's memory, the fixture's registers."""
    paths, image = volumes
    out = tmp_path / "set.elf"
    done = run_dumpfs("convert", "-q", paths[2], paths[0], paths[1], out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    core = ElfCore(out)
    try:
        assert core.end == MEM
        for start in range(0, MEM, 16 * MIB):
            assert core.read(start, 16 * MIB) == reference(start, 16 * MIB), hex(start)
        truth = fc.truth("s390x-custom")["cpus"]
        assert len(core.cpus) == len(truth)
        for ours, cpu in zip(core.cpus, truth):
            expected = {k: v for k, v in cpu["registers"].items() if k in ours}
            assert len(expected) > 80
            assert {k: hex(ours[k]) for k, v in expected.items() if ours[k] != v} == {}
    finally:
        core.close()


def test_convert_with_a_volume_missing(volumes, reference, tmp_path):
    paths, image = volumes
    out = tmp_path / "partial.elf"
    done = run_dumpfs("convert", "-q", paths[0], paths[2], out)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "volume 1 (device 0.0.5a11) is missing" in done.stderr and "--partial" in done.stderr
    assert not out.exists() and not (tmp_path / "partial.elf.tmp").exists()
    done = run_dumpfs("convert", "-q", "--partial", paths[0], paths[2], out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    core = ElfCore(out)
    try:
        vol0_end = sum(image.segments[0][-1])
        vol2_start = image.segments[2][0][0]
        gap = (vol0_end, vol2_start)
        assert not any(s < gap[1] and gap[0] < e for s, e in _covered(core)), _covered(core)
        assert core.read(0, vol0_end) == reference(0, vol0_end)
        assert core.read(vol2_start, MEM - vol2_start) == reference(vol2_start, MEM - vol2_start)
    finally:
        core.close()


def test_convert_refuses_two_dumps(volumes, elf, tmp_path):
    paths, _ = volumes
    other = tmp_path / "other"
    other.mkdir()
    other_paths, _ = write_set(other, elf, timestamp=TIMESTAMP + 1)
    out = tmp_path / "two.elf"
    done = run_dumpfs("convert", "-q", *paths, *other_paths, out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "the sources are 2 dumps" in done.stderr, done.stderr
    assert not out.exists()
