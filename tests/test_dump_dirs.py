"""A directory of dumps mounted as one folder per dump: real mounts through `dumpfs mount DIR`.

The directory looks like /var/crash: kdump's <host>-<date>/vmcore with its
vmcore-dmesg.txt, a loose ELF dump, a damaged dump, files that are no dumps
(a README, a vmlinux), manifests naming dumps elsewhere.  Each folder must
show what mounting its dump directly shows; dumps copied in or removed while
mounted come and go without remounting.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

import fixturecache as fc
from conftest import is_mounted, run_dumpfs, track_mount, unmount
from test_access_lifecycle import read_as_nobody
from test_mount import parse_registers

HOST = "host-2026-12-01-10:00"
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "x86_64-lzo-d31.kdump"
APPEAR_SECONDS = 10         # rescans every 0.5 s, the kernel keeps names 1 s: generous


def mount_dir(directory: Path, mountpoint: Path, *options) -> None:
    done = run_dumpfs("mount", *options, directory, mountpoint, timeout=120)
    if is_mounted(mountpoint):
        track_mount(mountpoint)
    assert done.returncode == 0, done.stderr
    assert is_mounted(mountpoint)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + APPEAR_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"after {APPEAR_SECONDS} s: {what}")
        time.sleep(0.2)


def digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return os.path.getsize(path), h.hexdigest()


def registers(root: Path) -> dict:
    return {cpu: parse_registers((root / "cpus" / cpu / "registers").read_text())
            for cpu in sorted(os.listdir(root / "cpus"))}


@pytest.fixture(scope="module")
def sources(fixture_path):
    return {"kdump": fixture_path("x86_64-custom", "mkdf-zlib-d1.kdump.xz"),
            "elf": fixture_path("x86_64-custom", "qemu-elf.vmcore.xz"),
            "late": fixture_path("x86_64-custom", "mkdf-lzo-d31.kdump.xz"),
            "vmlinux": fixture_path("x86_64-custom", "vmlinux-6.1.192-dumpfs.xz"),
            "dmesg": fc.FIXTURES / "x86_64-custom" / "validation-mkdf-dmesg.txt"}


def make_crash_dir(base: Path, sources: dict) -> Path:
    """Three dumps (kdump's directory, a loose ELF, a damaged kdump) and two files that are
    no dumps (a README, a vmlinux)."""
    crash = base / "crash"
    (crash / HOST).mkdir(parents=True)
    os.link(sources["kdump"], crash / HOST / "vmcore")
    shutil.copyfile(sources["dmesg"], crash / HOST / "vmcore-dmesg.txt")
    os.symlink(sources["elf"], crash / "qemu-elf.vmcore")
    with open(sources["kdump"], "rb") as f:
        (crash / "broken.kdump").write_bytes(f.read(20000))     # cut inside the bitmaps
    (crash / "README.txt").write_text("not a dump\n")
    os.symlink(sources["vmlinux"], crash / "vmlinux")
    return crash


@pytest.fixture(scope="module")
def crash(sources, mount, tmp_path_factory):
    """(directory, its mount): shared by the tests that do not change the directory."""
    directory = make_crash_dir(tmp_path_factory.mktemp("dumpdir"), sources)
    return directory, mount(directory)


def test_three_dumps_mount_as_three_folders(crash):
    _, mp = crash
    assert sorted(os.listdir(mp)) == sorted([HOST, "qemu-elf.vmcore", "broken.kdump"])
    for name in os.listdir(mp):
        assert stat.S_ISDIR(os.stat(mp / name).st_mode)


def test_damaged_dump_shows_its_one_line_error(crash):
    directory, mp = crash
    assert os.listdir(mp / "broken.kdump") == ["info"]
    text = (mp / "broken.kdump" / "info").read_text()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert str(directory / "broken.kdump") in text and "truncated" in text, text
    with pytest.raises(OSError) as exc:
        (mp / "broken.kdump" / "vmcore").read_bytes()
    assert exc.value.errno == errno.ENOENT
    # the damaged one hides nothing: the others still open
    assert (mp / "qemu-elf.vmcore" / "vmcore").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("folder, source", [(HOST, "kdump"), ("qemu-elf.vmcore", "elf")])
def test_folder_shows_what_the_dump_mounted_directly_shows(crash, mount, sources, folder, source):
    _, mp = crash
    direct = mount(sources[source])
    assert digest(mp / folder / "vmcore") == digest(direct / "vmcore")
    assert registers(mp / folder) == registers(direct)
    assert (mp / folder / "memory" / "map").read_bytes() == (direct / "memory" / "map").read_bytes()
    assert sorted(os.listdir(mp / folder / "proc")) == sorted(os.listdir(direct / "proc"))


def test_kdump_folder_has_its_dmesg(crash, sources):
    _, mp = crash
    assert (mp / HOST / "vmcore-dmesg.txt").read_bytes() == sources["dmesg"].read_bytes()
    assert "vmcore-dmesg.txt" not in os.listdir(mp / "qemu-elf.vmcore")


def test_info_names_the_directory_entry(crash):
    directory, mp = crash
    details = json.loads((mp / HOST / "info.json").read_text())["details"]
    assert details["container"] == f"{HOST}/vmcore in the dump directory {directory}"
    text = (mp / "qemu-elf.vmcore" / "info").read_text()
    assert f"container..........: qemu-elf.vmcore in the dump directory {directory}" in text


def info_blocks(text: str) -> dict[str, str]:
    """`dumpfs info DIR` output: folder name -> its block (the lines after `== name ==`)."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines(keepends=True):
        if line.startswith("== ") and line.rstrip().endswith(" =="):
            name = line.strip()[3:-3]
            blocks[name] = ""
        elif name is not None:
            blocks[name] += line
    return {name: block.rstrip("\n") + "\n" for name, block in blocks.items()}


def test_info_of_a_directory_shows_each_dump_as_the_mount_does(crash):
    directory, mp = crash
    done = run_dumpfs("info", directory)
    assert "Traceback" not in done.stderr
    assert done.returncode == 1                 # one of the three cannot be shown
    assert done.stderr == f"dumpfs: {directory}: 1 of 3 dumps cannot be shown: broken.kdump\n"
    blocks = info_blocks(done.stdout)
    assert list(blocks) == sorted(os.listdir(mp))
    for name in (HOST, "qemu-elf.vmcore"):
        assert blocks[name] == (mp / name / "info").read_text(), name
        assert f"{name if name != HOST else HOST + '/vmcore'} in the dump directory" in blocks[name]
    error = (mp / "broken.kdump" / "info").read_text()
    assert blocks["broken.kdump"] == f"error..............: {error}"
    assert blocks["broken.kdump"].count("\n") == 1

    done = run_dumpfs("info", "--json", directory)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    listed = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert listed[HOST]["entry"] == f"{HOST}/vmcore"
    assert listed[HOST]["info"] == json.loads((mp / HOST / "info.json").read_text())
    assert listed["broken.kdump"]["error"] == error.strip() and "info" not in listed["broken.kdump"]


def test_info_of_a_directory_of_good_dumps_or_none(sources, tmp_path):
    directory = tmp_path / "crash"
    directory.mkdir()
    done = run_dumpfs("info", directory)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"dumpfs: {directory}: no dump found in this directory\n"
    os.symlink(sources["kdump"], directory / "vmcore")
    done = run_dumpfs("info", directory)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert list(info_blocks(done.stdout)) == ["vmcore"]
    assert "Dump format........: kdump" in done.stdout


def test_dumps_copied_in_appear_and_removed_ones_disappear(sources, mount, tmp_path, mountpoint):
    directory = make_crash_dir(tmp_path, sources)
    mount_dir(directory, mountpoint)
    assert "late.kdump" not in os.listdir(mountpoint)
    shutil.copyfile(sources["late"], directory / ".late.kdump.part")     # dot files are skipped
    assert sorted(os.listdir(mountpoint)) == sorted([HOST, "qemu-elf.vmcore", "broken.kdump"])
    os.rename(directory / ".late.kdump.part", directory / "late.kdump")
    wait_for(lambda: "late.kdump" in os.listdir(mountpoint), "late.kdump is not listed")
    late = mountpoint / "late.kdump"
    assert registers(late) == registers(mount(sources["late"]))
    assert (late / "vmcore").read_bytes()[:4] == b"\x7fELF"
    assert "kdump" in (late / "info").read_text()
    (directory / "qemu-elf.vmcore").unlink()
    wait_for(lambda: "qemu-elf.vmcore" not in os.listdir(mountpoint),
             "removed qemu-elf.vmcore is still listed")
    wait_for(lambda: not os.path.exists(mountpoint / "qemu-elf.vmcore"),
             "removed qemu-elf.vmcore can still be looked up")
    assert sorted(os.listdir(mountpoint)) == sorted([HOST, "broken.kdump", "late.kdump"])
    # the dumps already opened keep serving
    assert (mountpoint / HOST / "vmcore").read_bytes()[:4] == b"\x7fELF"


def test_manifests_name_dumps_elsewhere(sources, tmp_path, mountpoint):
    directory = tmp_path / "crash"
    directory.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.link(sources["late"], tmp_path / "elsewhere" / "dump.kdump")
    (directory / "by-url.dumpfs").write_text(
        f"# the lab's dump\nfile://{sources['kdump']}\n")
    (directory / "relative.dumpfs").write_text("../elsewhere/dump.kdump\n")
    (directory / "empty.dumpfs").write_text("# nothing here yet\n")
    mount_dir(directory, mountpoint)
    assert sorted(os.listdir(mountpoint)) == ["by-url", "empty", "relative"]
    assert (mountpoint / "by-url" / "vmcore").read_bytes()[:4] == b"\x7fELF"
    details = json.loads((mountpoint / "by-url" / "info.json").read_text())["details"]
    assert details["container"] == (f"by-url.dumpfs in the dump directory {directory}, "
                                    f"naming {sources['kdump']}")
    assert "kdump" in (mountpoint / "relative" / "info").read_text()
    assert os.listdir(mountpoint / "empty") == ["info"]
    assert "names one dump" in (mountpoint / "empty" / "info").read_text()


def test_each_folder_has_the_access_of_its_dump():
    base = Path(tempfile.mkdtemp(prefix="dumpfs-dumpdir-"))
    try:
        os.chmod(base, 0o755)
        directory = base / "crash"
        directory.mkdir(mode=0o755)
        shutil.copyfile(SAMPLE, directory / "secret.kdump")
        os.chmod(directory / "secret.kdump", 0o600)
        shutil.copyfile(SAMPLE, directory / "public.kdump")
        os.chmod(directory / "public.kdump", 0o644)
        mnt = track_mount(base / "mnt")
        mnt.mkdir(mode=0o755)
        mount_dir(directory, mnt, "-o", "allow_other")
        assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o555
        assert stat.S_IMODE(os.stat(mnt / "secret.kdump").st_mode) == 0o500
        assert stat.S_IMODE(os.stat(mnt / "public.kdump").st_mode) == 0o555
        assert stat.S_IMODE(os.stat(mnt / "secret.kdump" / "vmcore").st_mode) == 0o400
        denied = read_as_nobody(mnt / "secret.kdump" / "info")
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        allowed = read_as_nobody(mnt / "public.kdump" / "info")
        assert allowed.returncode == 0 and allowed.stdout.startswith(b"General dump info")
        assert (mnt / "secret.kdump" / "vmcore").read_bytes()[:4] == b"\x7fELF"   # root reads
        unmount(mnt)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_vmlinux_applies_where_its_build_id_matches(sources, fixture_path, tmp_path, mountpoint):
    directory = tmp_path / "crash"
    directory.mkdir()
    os.symlink(sources["kdump"], directory / "custom.kdump")
    os.symlink(fixture_path("x86_64-debian-kdump", "kdump-mkdf-zlib-d31.kdump.xz"),
               directory / "debian.kdump")
    mount_dir(directory, mountpoint, "--vmlinux", sources["vmlinux"])
    custom = json.loads((mountpoint / "custom.kdump" / "info.json").read_text())["details"]
    debian = json.loads((mountpoint / "debian.kdump" / "info.json").read_text())["details"]
    assert "--vmlinux" not in custom
    assert debian["--vmlinux"].startswith("--vmlinux vmlinux-6.1.192-dumpfs: "), debian
    assert debian["--vmlinux"].endswith("not used"), debian
    assert (mountpoint / "debian.kdump" / "kernel" / "release").read_text().strip()


@pytest.mark.parametrize("extra, message", [
    (["--btf", "BTF"], "--btf cannot be checked"),
    (["OTHER"], "a dump directory is mounted on its own"),
])
def test_refused_with_a_directory(sources, tmp_path, mountpoint, extra, message):
    directory = make_crash_dir(tmp_path, sources)
    btf = tmp_path / "btf"
    btf.write_bytes(b"\x9f\xeb")
    args = [str(btf) if a == "BTF" else str(sources["elf"]) if a == "OTHER" else a for a in extra]
    if args[0].startswith("--"):
        done = run_dumpfs("mount", *args, directory, mountpoint)
    else:
        done = run_dumpfs("mount", directory, *args, mountpoint)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
    assert not is_mounted(mountpoint)


def test_compressed_dumps_are_found_through_the_compression(sources, mount, tmp_path, mountpoint):
    directory = tmp_path / "crash"
    directory.mkdir()
    os.symlink(fc.FIXTURES / "x86_64-custom" / "mkdf-lzo-d31.kdump.xz", directory / "lzo.kdump.xz")
    (directory / "notes.txt.gz").write_bytes(gzip.compress(b"no dump in here\n" * 100))
    mount_dir(directory, mountpoint)
    assert os.listdir(mountpoint) == ["lzo.kdump.xz"]
    folder = mountpoint / "lzo.kdump.xz"
    assert registers(folder) == registers(mount(sources["late"]))
    container = json.loads((folder / "info.json").read_text())["details"]["container"]
    assert container.startswith(f"lzo.kdump.xz in the dump directory {directory}; xz, "), container


def test_an_empty_directory_mounts_empty_and_fills_up(sources, tmp_path, mountpoint):
    """/var/crash before the first crash: mounted at boot, the dump shows up when written."""
    directory = tmp_path / "crash"
    directory.mkdir()
    mount_dir(directory, mountpoint)
    assert os.listdir(mountpoint) == []
    os.symlink(sources["elf"], directory / "vmcore")
    wait_for(lambda: os.listdir(mountpoint) == ["vmcore"], "the new dump is not listed")
    assert (mountpoint / "vmcore" / "vmcore").read_bytes()[:4] == b"\x7fELF"

