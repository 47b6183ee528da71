"""Who may read a mount, and the mount's life: real mounts through `dumpfs`, read as another user.

A dump holds every secret of its machine: the tree takes its source's owner,
group and read bits, `-o uid=,gid=,umask=` change them, and `allow_other`
alone never widens them.  Lifecycle: a killed daemon's dead mount is
recovered by the next `dumpfs mount`, `dumpfs umount` touches only dumpfs
mounts, `findmnt` names the dump, `convert` never writes over its source.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import is_mounted, run_dumpfs, track_mount, unmount

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "x86_64-lzo-d31.kdump"
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def public_dir():
    """A directory every user may traverse (pytest's tmp_path is root-only), with a private dump
    (root, 0600) and a mountpoint."""
    base = Path(tempfile.mkdtemp(prefix="dumpfs-access-"))
    os.chmod(base, 0o755)
    dump = base / "secret.kdump"
    shutil.copyfile(SAMPLE, dump)
    os.chmod(dump, 0o600)
    mnt = track_mount(base / "mnt")
    mnt.mkdir()
    os.chmod(mnt, 0o755)
    yield base, dump, mnt
    unmount(mnt)
    shutil.rmtree(base, ignore_errors=True)


def read_as_nobody(path: Path) -> subprocess.CompletedProcess:
    """`head -c 64 PATH` run as nobody (uid and gid dropped in the child)."""
    def drop():
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)
    return subprocess.run(["head", "-c", "64", str(path)], capture_output=True, preexec_fn=drop,
                          timeout=60)


def mount(*args) -> None:
    done = run_dumpfs("mount", *args, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_root_only_dump_stays_root_only_with_allow_other(public_dir):
    base, dump, mnt = public_dir
    mount("-o", "allow_other", dump, mnt)
    st = os.stat(mnt / "vmcore")
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert stat.S_IMODE(os.stat(mnt / "proc").st_mode) == 0o500
    denied = read_as_nobody(mnt / "vmcore")
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    assert read_as_nobody(mnt / "info").returncode != 0
    # root still reads it
    assert (mnt / "vmcore").read_bytes()[:4] == b"\x7fELF"


def test_umask_opens_it_up(public_dir):
    base, dump, mnt = public_dir
    mount("-o", "allow_other,umask=022", dump, mnt)
    assert stat.S_IMODE(os.stat(mnt / "vmcore").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(mnt / "cpus").st_mode) == 0o555
    done = read_as_nobody(mnt / "vmcore")
    assert done.returncode == 0, done.stderr
    assert done.stdout[:4] == b"\x7fELF"


def test_uid_and_gid_give_the_dump_to_a_user(public_dir):
    base, dump, mnt = public_dir
    mount("-o", f"allow_other,uid={NOBODY.pw_uid},gid={NOBODY.pw_gid}", dump, mnt)
    st = os.stat(mnt / "vmcore")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o400)
    done = read_as_nobody(mnt / "vmcore")
    assert done.returncode == 0, done.stderr


def test_the_source_bits_carry_over(public_dir):
    base, dump, mnt = public_dir
    os.chmod(dump, 0o640)
    mount(dump, mnt)
    assert stat.S_IMODE(os.stat(mnt / "vmcore").st_mode) == 0o440
    assert stat.S_IMODE(os.stat(mnt / "kernel").st_mode) == 0o550


def test_bad_access_options_are_one_line(public_dir):
    base, dump, mnt = public_dir
    for option, words in (("umask=9x", "octal"), ("uid=no-such-user-here", "no such user"),
                          ("gid=", "needs a value")):
        done = run_dumpfs("mount", "-o", option, dump, mnt)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not is_mounted(mnt)


def test_findmnt_names_the_dump(public_dir):
    base, dump, mnt = public_dir
    mount(dump, mnt)
    done = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", str(mnt)],
                          capture_output=True, text=True, check=True)
    source, fstype = done.stdout.split()
    assert source == str(dump)
    assert fstype == "fuse.dumpfs"


def _daemon_pid(mnt: Path) -> int:
    """The dumpfs daemon serving `mnt` (pgrep on its command line)."""
    done = subprocess.run(["pgrep", "-f", f"dumpfs mount .*{mnt}$"], capture_output=True, text=True)
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 1, f"dumpfs daemons for {mnt}: {pids}"
    return pids[0]


def test_a_killed_daemon_is_recovered_by_the_next_mount(public_dir):
    base, dump, mnt = public_dir
    mount(dump, mnt)
    pid = _daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid):
        pass
    with pytest.raises(OSError):
        os.stat(mnt / "vmcore")                     # ENOTCONN: the mount is dead
    mount(dump, mnt)
    assert (mnt / "vmcore").read_bytes()[:4] == b"\x7fELF"


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except OSError:
        return b"Z"


def test_umount_touches_only_dumpfs_mounts(tmp_path):
    target = tmp_path / "tmpfs"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(target)], check=True)
    try:
        done = run_dumpfs("umount", target)
        assert done.returncode == 3
        assert "not a dumpfs mount" in done.stderr
        assert is_mounted(target)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_umount_lazy_with_a_file_open(public_dir):
    base, dump, mnt = public_dir
    mount(dump, mnt)
    with open(mnt / "vmcore", "rb") as busy:
        done = run_dumpfs("umount", mnt)
        assert done.returncode == 3 and is_mounted(mnt)     # busy
        done = run_dumpfs("umount", "--lazy", mnt)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        assert busy.read(4) == b"\x7fELF"                   # the open file still reads


def test_a_relative_symbol_file_survives_the_daemon(fixture_path, mountpoint, tmp_path):
    """The daemon changes directory to /: a relative --system-map must be resolved before."""
    vmcore = fixture_path("x86_64-custom", "qemu-elf.vmcore.xz")
    shutil.copyfile(fixture_path("x86_64-custom", "System.map-6.1.192-dumpfs"),
                    tmp_path / "System.map")
    done = run_dumpfs("mount", "--system-map", "System.map", vmcore, mountpoint, cwd=tmp_path,
                      timeout=120)
    assert done.returncode == 0, done.stderr
    sources = (mountpoint / "kernel" / "sources").read_text()
    read = re.search(r"System\.map System\.map .*: (\d+) symbols", sources)
    assert read and int(read.group(1)) > 10000, sources


def test_a_missing_symbol_file_is_refused_before_mounting(public_dir):
    base, dump, mnt = public_dir
    done = run_dumpfs("mount", "--vmlinux", "no-such-vmlinux", dump, mnt)
    assert done.returncode == 2 and "no-such-vmlinux: file not found" in done.stderr
    assert not is_mounted(mnt)


def test_convert_never_overwrites_its_source_or_another_file(public_dir, tmp_path):
    base, dump, mnt = public_dir
    before = dump.read_bytes()
    done = run_dumpfs("convert", "-q", dump, dump)
    assert done.returncode == 4 and "is the source" in done.stderr
    assert dump.read_bytes() == before
    out = tmp_path / "out.elf"
    out.write_bytes(b"keep me")
    done = run_dumpfs("convert", "-q", dump, out)
    assert done.returncode == 4 and "--force" in done.stderr
    assert out.read_bytes() == b"keep me"
    done = run_dumpfs("convert", "-q", "--force", dump, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"\x7fELF"


def test_the_systemd_unit_is_valid(tmp_path):
    """systemd-analyze verify accepts the unit (with dumpfs where this test's PATH has it)."""
    unit = (Path(__file__).resolve().parent.parent / "contrib" / "dumpfs@.service").read_text()
    assert "Type=notify" in unit
    dumpfs = shutil.which("dumpfs")
    assert dumpfs, "dumpfs is not on PATH (run the tests from the venv)"
    copy = tmp_path / "dumpfs@test.service"
    copy.write_text(unit.replace("ExecStart=dumpfs ", f"ExecStart={dumpfs} ")
                    .replace("ExecStop=dumpfs ", f"ExecStop={dumpfs} "))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in done.stderr.splitlines() if "dumpfs@test" in line]
    assert not problems, problems


def test_mount_tells_systemd_when_it_is_ready(public_dir, tmp_path):
    """Type=notify: READY=1 arrives on $NOTIFY_SOCKET only once the tree is mounted."""
    import socket
    base, dump, mnt = public_dir
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=address)
        from conftest import DUMPFS
        daemon = subprocess.Popen([*DUMPFS, "mount", "-f", str(dump), str(mnt)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            message = sock.recv(4096).decode()
            assert "READY=1" in message.splitlines()
            assert is_mounted(mnt)
            assert (mnt / "vmcore").read_bytes()[:4] == b"\x7fELF"
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    assert not is_mounted(mnt)


def test_a_compressed_dump_takes_the_compressed_files_bits(public_dir):
    """The tree of `x.gz` has x.gz's owner and bits (not owner-only for want of a stat)."""
    import gzip
    base, dump, mnt = public_dir
    packed = base / "secret.kdump.gz"
    packed.write_bytes(gzip.compress(dump.read_bytes(), compresslevel=1))
    os.chmod(packed, 0o640)
    os.chown(packed, 0, NOBODY.pw_gid)
    mount(packed, mnt)
    st = os.stat(mnt / "vmcore")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, NOBODY.pw_gid, 0o440)
