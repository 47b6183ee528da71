"""`dumpfs check DEVICE` (like zgetdump -d) on disks written here, cross-checked with the oracle."""

from __future__ import annotations

from conftest import run_dumpfs
from test_backend_s390 import T0, T1, _raw_pattern, PATTERN_CPUS
from test_backend_s390mv import SPECS, TIMESTAMP, write_set
from writers import loop
from writers import s390 as w
from writers import s390mv as mv
from writers.tools import oracle

MIB = 1 << 20


def _cdl(path, with_dump: bool):
    with open(path, "wb") as f:
        w.eckd_cdl_disk(f, (lambda f: w.write_s390_ext(f, _raw_pattern, 8 * MIB, PATTERN_CPUS, version=1,
                                                       tod_start=T0, tod_end=T1)) if with_dump else (lambda f: None),
                        blocks=24 + 4096)


def test_eckd_disk_with_dump_and_empty(tmp_path):
    full, empty = tmp_path / "full.img", tmp_path / "empty.img"
    _cdl(full, True)
    _cdl(empty, False)
    with loop.loops() as attach:
        disk, _ = attach.disk_and_partition(full, 0, 0, partition=False)
        done = run_dumpfs("check", disk)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Single-volume DASD dump tool (extended)" in done.stdout and "ECKD" in done.stdout
        assert "valid, complete s390_ext dump: 8 MB" in done.stdout
        theirs = oracle("-d", disk).stderr.decode()
        assert "Single-volume DASD dump tool" in theirs and "ECKD" in theirs
        disk, _ = attach.disk_and_partition(empty, 0, 0, partition=False)
        done = run_dumpfs("check", disk)
        assert done.returncode == 1 and "dump tool installed, no dump" in done.stdout, done.stdout


def test_zero_partition_behind_a_dump_tool_says_no_dump(tmp_path):
    """A partition device alone: its disk is found through /sys/class/block/<dev>/..

    This kernel parses no partition tables, so the partition is added with BLKPG
    (addpart), as the VTOC would make Linux do on a DASD.
    """
    import os
    import subprocess
    image = tmp_path / "p.img"
    _cdl(image, False)
    with loop.loops() as attach:
        disk = attach(image, partscan=True)
        partition = f"{disk}p1"
        subprocess.run(["addpart", disk, "1", str(24 * 8), str(4096 * 8)], check=True)
        assert os.path.exists(partition)
        done = run_dumpfs("info", partition)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"no dump on {partition}: the dump partition of {disk}" in done.stderr, done.stderr
        assert "holds zeros" in done.stderr
        done = run_dumpfs("check", partition)
        assert done.returncode == 1
        assert "Single-volume DASD dump tool (extended)" in done.stdout
        assert "dump tool installed, no dump" in done.stdout, done.stdout


def test_multi_volume_set(elf, tmp_path):
    paths, _ = write_set(tmp_path, elf, dumper_version=1)
    with loop.loops() as attach:
        for path in paths:
            attach.disk_and_partition(path, 0, 0, partition=False)
        done = run_dumpfs("check", paths[0])        # the image: no search, volumes 1 and 2 missing
        assert done.returncode == 1
        assert "Multi-volume DASD dump tool (extended)" in done.stdout
        assert "volume 1 (device 0.0.5a11) is missing" in done.stdout
        disk = loop_of(paths[1])
        done = run_dumpfs("check", disk)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "valid, complete s390mv_ext dump: 128 MB" in done.stdout
        assert "Volume 2: 0.0.5a12 (active)" in done.stdout


def loop_of(path) -> str:
    import subprocess
    out = subprocess.run(["losetup", "-j", str(path)], capture_output=True, text=True).stdout
    return out.split(":")[0]


def test_empty_multi_volume_set(tmp_path):
    table = mv.parm_table(TIMESTAMP, SPECS)
    path = tmp_path / "e.img"
    with open(path, "w+b") as f:
        mv.prepare_disk(f, table, SPECS[0])
    done = run_dumpfs("check", path)
    assert done.returncode == 1 and "Multi-volume DASD dump tool (extended)" in done.stdout
    assert "dump tool installed, no dump" in done.stdout, done.stdout


def test_no_tool_and_usage(tmp_path):
    plain = tmp_path / "zeros.img"
    plain.write_bytes(bytes(1 << 20))
    done = run_dumpfs("check", plain)
    assert done.returncode == 1 and "none found" in done.stdout
    done = run_dumpfs("check", tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = run_dumpfs("check")
    assert done.returncode == 2
