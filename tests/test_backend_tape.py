"""Tape dumps (s390tape): plain images and AWSTAPE files written from s390x-custom's memory.

The oracle (zgetdump 2.16) reads tape dumps only from a tape character
device (MTIOCTOP/MTTELL), which this machine does not have, so it cannot
read these images; instead the tape dump is compared with our own reading
of the same memory, and our dump.s390 of it is read back by the oracle.
"""

from __future__ import annotations

import os

import pytest

import fixturecache as fc
from conftest import run_dumpfs, unmount
from dumpfs.backends import open_dump
from dumpfs.errors import DumpError, MemoryUnavailable
from dumpfs.model import PageState
from dumpfs.views.dump_s390 import build_dump_s390
from writers.tools import assert_oracle_converts_to, differing_pages, oracle_info
from writers import s390 as w
from writers import images as wi

MEM = wi.TAPE_MEM


@pytest.fixture(scope="module")
def reference(elf):
    return w.memory_with_status(elf.read_physical, w.cpu_states(elf))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "tape-cache"
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def images(written):
    return {name: written(f"tape-{name}").path for name in ("plain", "file2", "aws")}


def check(dump, elf, reference):
    assert dump.meta.format == "s390tape"
    assert dump.meta.complete and dump.meta.problems == [], dump.meta.problems
    assert dump.meta.dump_time.timestamp() == 1_700_000_200
    assert dump.meta.details["dump ended"].startswith("2023-11-14T22:")
    assert dump.memory.end == MEM
    assert [c.state for c in dump.memory] == [PageState.PRESENT]
    assert differing_pages(dump.read_physical, reference, MEM) == set()
    for number, cpu in elf.cpus.items():
        assert dump.cpus[number].registers == cpu.registers


@pytest.mark.parametrize("name", ["plain", "file2", "aws"])
def test_tape_image_opens(images, elf, reference, name, cache_dir):
    dump = open_dump(str(images[name]))
    check(dump, elf, reference)
    if name == "aws":
        cached = dump.meta.details["cache"]
        assert cached.startswith(str(cache_dir))
        stamp = os.stat(cached).st_mtime_ns
        dump.close()
        again = open_dump(str(images[name]))          # the second open uses the cache
        assert again.meta.details["cache"] == cached and os.stat(cached).st_mtime_ns == stamp
        again.close()
    else:
        assert "cache" not in dump.meta.details
        dump.close()


def test_registers_equal_truth(images):
    dump = open_dump(str(images["aws"]))
    for cpu in fc.truth("s390x-custom")["cpus"]:
        ours = dump.cpus[cpu["cpu"]].registers
        assert {k: hex(ours[k]) for k, v in cpu["registers"].items() if ours.get(k) != v} == {}
    dump.close()


def test_oracle_reads_our_dump_s390_of_the_tape(images, tmp_path):
    """No tape drive here: zgetdump gets our dump.s390 of the tape dump instead."""
    dump = open_dump(str(images["aws"]))
    view = build_dump_s390(dump)
    path = tmp_path / "tape.s390"
    with open(path, "wb") as f:
        for offset in range(0, view.size, 16 << 20):
            f.write(view.read(offset, 16 << 20))
    info = oracle_info(path)
    assert info["Dump memory range"] == f"{MEM >> 20} MB"
    assert info["CPU count (online)"] == str(len(dump.cpus))
    # zgetdump -f s390 (and so dump.s390) never writes todpreg
    assert_oracle_converts_to(path, dump, MEM, tmp_path / "oracle.elf", ignore=("todpreg",))
    dump.close()


def test_mounted_aws_tape(images, mountpoint, reference, cache_dir):
    done = run_dumpfs("mount", images["aws"], mountpoint, env=dict(os.environ, DUMPFS_CACHE_DIR=str(cache_dir)))
    try:
        assert done.returncode == 0, done.stderr
        assert "s390tape" in (mountpoint / "info").read_text()
        assert sorted(os.listdir(mountpoint / "cpus")) == ["0", "1"]
        with open(mountpoint / "dump.s390", "rb") as f:
            for address in (0, 0xC72000, MEM - 4096):
                assert os.pread(f.fileno(), 4096, 0x1000 + address) == reference(address, 4096)
    finally:
        unmount(mountpoint)


# -- damaged tapes -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["aws", "plain"])
def test_truncated_tape(images, reference, tmp_path, kind):
    source = images["aws" if kind == "aws" else "plain"]
    cut = tmp_path / f"cut.{kind}"
    keep = 0x3000 + 6 * 3 + 0x1000 + 20 * 32768 + 1000
    cut.write_bytes(source.read_bytes()[:keep])
    dump = open_dump(str(cut))
    assert dump.meta.format == "s390tape" and not dump.meta.complete
    assert any("truncated" in p or "missing" in p for p in map(str, dump.meta.problems)), dump.meta.problems
    assert dump.read_physical(0, 19 * 32768) == reference(0, 19 * 32768)
    with pytest.raises(MemoryUnavailable):
        dump.read_physical(30 * 32768, 4096)
    assert dump.memory.chunk_at(MEM - 1).state is PageState.MISSING
    dump.close()
    done = run_dumpfs("info", cut)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "truncated" in done.stdout or "missing" in done.stdout


def test_wrong_magic(images, tmp_path):
    data = bytearray(images["aws"].read_bytes())
    header = 6 + 0x3000 + 6 + 6          # tool block, tapemark, header block's own header
    data[header:header + 8] = bytes.fromhex("a8190173618f23fc")
    bad = tmp_path / "bad.aws"
    bad.write_bytes(bytes(data))
    with pytest.raises(DumpError, match="no dump on the tape: file 2 does not start with"):
        open_dump(str(bad))
    done = run_dumpfs("info", bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "no dump on the tape" in done.stderr
