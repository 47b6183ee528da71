"""Real FUSE mounts through `python -m dumpfs mount`, checked against truth.json.

Also the FUSE glue on its own: a hand-made tree whose reads fail or stall,
served by `dumpfs.fuse.run_tree` in a subprocess.
"""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fixturecache as fc
from conftest import DUMPFS, is_mounted, run_dumpfs, unmount
from dumpfs.backends import open_dump
from dumpfs.views.vmcore import vmcore_file

# every ELF, kdump and flattened fixture (the s390 formats have their own modules)
DUMPS = [(folder, d["file"]) for folder, d in fc.all_dumps()
         if d["format"] in ("elf", "kdump", "flattened")]


def parse_registers(text: str) -> dict[str, int]:
    """`name value` lines -> {name: int}; values are hex (0x1f) or decimal."""
    registers = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                registers[parts[0]] = int(parts[1], 0)
            except ValueError:
                pass
    return registers


@pytest.fixture(scope="module", params=DUMPS, ids=lambda d: f"{d[0]}/{d[1]}")
def mounted(request, mount, fixture_path):
    folder, name = request.param
    return folder, fixture_path(folder, name), mount(fixture_path(folder, name))


def fixture_name(record: dict) -> str:
    return record["file"].removesuffix(".xz")


def test_tree_lists(mounted):
    folder, _, mp = mounted
    top = set(os.listdir(mp))
    assert {"vmcore", "info", "info.json", "cpus", "memory"} <= top
    cpus = sorted(int(n) for n in os.listdir(mp / "cpus"))
    assert cpus == list(range(fc.truth(folder)["cpu_count"]))
    assert os.listdir(mp / "cpus" / str(cpus[0]) / "notes")
    assert "map" in os.listdir(mp / "memory")
    files, unreadable = 0, []
    for dirpath, dirnames, filenames in os.walk(mp):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError as e:
                assert e.errno == errno.EIO, f"{path}: {e}"
                unreadable.append(os.path.relpath(path, mp))
                continue
            assert st.st_mode & 0o222 == 0, "everything is read-only"
            files += 1
    assert files >= 8
    # only process memory may be missing, and only where the writer excluded user pages
    record = next(d for d in fc.dumps(folder) if fixture_name(d) == mounted[1].name)
    if record["user_pages"]:
        assert not unreadable
    else:
        # (makedumpfile -E cannot mark excluded pages inside a kept segment: maybe none)
        assert all(p.startswith("proc/") for p in unreadable), unreadable
    assert os.stat(mp).st_ino == 1


def test_registers_match_truth(mounted):
    folder, _, mp = mounted
    truth = fc.truth(folder)
    if "cpus" not in truth:
        # a real kdump capture: no independent snapshot; the crash-time PC is in kernel text
        for n in range(truth["cpu_count"]):
            rip = parse_registers((mp / "cpus" / str(n) / "registers").read_text())["rip"]
            assert truth["symbols"]["_stext"] <= rip < truth["symbols"]["linux_banner"]
        return
    for cpu in truth["cpus"]:
        shown = parse_registers((mp / "cpus" / str(cpu["cpu"]) / "registers").read_text())
        expected = {k: v for k, v in cpu["registers"].items() if isinstance(v, int)}
        common = sorted(shown.keys() & expected.keys())
        assert len(common) >= 16, f"cpu {cpu['cpu']}: only {common} in common with truth"
        wrong = {k: (hex(shown[k]), hex(expected[k])) for k in common if shown[k] != expected[k]}
        assert not wrong, f"cpu {cpu['cpu']}: registers differ (shown, truth): {wrong}"


def test_vmcore_reads_at_odd_offsets(mounted):
    """pread through the kernel equals the view read in-process, at awkward offsets."""
    _, path, mp = mounted
    dump = open_dump(str(path))
    try:
        expected = vmcore_file(dump)
        size = expected.size
        assert os.stat(mp / "vmcore").st_size == size
        rng = random.Random(7)
        spots = [(0, 64), (1, 4095), (4095, 2), (4097, 8191), ((1 << 20) - 3, 7),
                 (size - 1, 1), (size - 5000, 10000), (size, 10)]
        spots += [(rng.randrange(size) | 1, rng.choice([1, 3, 4097, 65537, 300001]))
                  for _ in range(40)]
        fd = os.open(mp / "vmcore", os.O_RDONLY)
        try:
            for offset, length in spots:
                got = os.pread(fd, length, offset)
                want = expected.read(offset, length)
                assert got == want, f"pread({length}, {offset:#x}) differs"
            assert os.pread(fd, 4, 0) == b"\x7fELF"
        finally:
            os.close(fd)
    finally:
        dump.close()


def test_info_names_arch_and_release(mounted):
    folder, _, mp = mounted
    truth = fc.truth(folder)
    info = (mp / "info").read_text()
    assert truth["arch"] in info
    assert truth["kernel_release"] in info
    assert '"arch"' in (mp / "info.json").read_text()


def test_writes_fail(mounted):
    _, _, mp = mounted
    denied = {errno.EROFS, errno.EACCES, errno.EPERM}
    for attempt in (lambda: open(mp / "info", "w"),
                    lambda: os.open(mp / "vmcore", os.O_RDWR),
                    lambda: open(mp / "new-file", "w"),
                    lambda: os.mkdir(mp / "new-dir"),
                    lambda: os.unlink(mp / "info"),
                    lambda: os.truncate(mp / "info", 0)):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno in denied, exc.value


def test_multi_source_mount_has_one_folder_each(mount, fixture_path):
    x86 = fixture_path("x86_64-custom", "qemu-elf.vmcore.xz")
    s390 = fixture_path("s390x-custom", "qemu-dgm.elf.xz")
    mp = mount(x86, s390, x86)
    assert sorted(os.listdir(mp)) == sorted([x86.name, s390.name, x86.name + "-2"])
    assert "x86_64" in (mp / x86.name / "info").read_text()
    assert "s390x" in (mp / s390.name / "info").read_text()
    assert (mp / x86.name / "vmcore").read_bytes()[:4] == b"\x7fELF"
    # the same dump twice: same bytes, distinct inodes
    assert os.stat(mp / x86.name / "info").st_ino != os.stat(mp / (x86.name + "-2") / "info").st_ino


def test_convert_equals_mounted_vmcore(mount, fixture_path, tmp_path):
    source = fixture_path("x86_64-custom", "mkdf-lzo-d31.kdump.xz")
    out = tmp_path / "vmcore.elf"
    done = run_dumpfs("convert", source, out)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "vmcore.elf.tmp").exists()
    mp = mount(source)
    with open(out, "rb") as a, open(mp / "vmcore", "rb") as b:
        while True:
            x, y = a.read(1 << 22), b.read(1 << 22)
            assert x == y
            if not x:
                break


def test_umount(fixture_path, mountpoint):
    source = fixture_path("s390x-custom", "qemu-dgm.elf.xz")
    done = run_dumpfs("mount", source, mountpoint)
    assert done.returncode == 0, done.stderr
    assert is_mounted(mountpoint) and (mountpoint / "vmcore").exists()
    done = run_dumpfs("umount", mountpoint)
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mountpoint)
    assert os.listdir(mountpoint) == []
    again = run_dumpfs("umount", mountpoint)
    assert again.returncode == 3 and again.stderr.startswith("dumpfs: ")


def test_foreground_mount_ends_on_sigterm(fixture_path, mountpoint):
    source = fixture_path("s390x-custom", "qemu-dgm.elf.xz")
    proc = subprocess.Popen([*DUMPFS, "mount", "-f", str(source), str(mountpoint)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mountpoint):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "mount -f never mounted"
            time.sleep(0.05)
        assert "s390x" in (mountpoint / "info").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("problem", ["missing", "file", "mounted"])
def test_bad_mountpoint(problem, fixture_path, mount, tmp_path):
    source = fixture_path("s390x-custom", "qemu-dgm.elf.xz")
    target = {"missing": tmp_path / "nowhere",
              "file": tmp_path / "a-file",
              "mounted": None}[problem]
    if problem == "file":
        target.write_text("")
    if problem == "mounted":
        target = mount(source)
    done = run_dumpfs("mount", source, target)
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dumpfs: ") and str(target) in lines[0], lines


# -- the FUSE glue with a hand-made tree ----------------------------------------

TREE_SERVER = textwrap.dedent("""
    import errno, select, sys
    from dumpfs import fuse
    from dumpfs.errors import MemoryUnavailable
    from dumpfs.tree import Dir, File

    def excluded(offset, length):
        raise MemoryUnavailable(0x2000, "excluded by the dump writer")
    def bug(offset, length):
        raise ValueError("a bug in a view")
    def no_data(offset, length):
        raise OSError(errno.ENODATA, "no data")
    def slow(offset, length):
        # says it has started, then lasts until the test closes our stdin (at most 30 s)
        print("slow read started", flush=True)
        select.select([sys.stdin], [], [], 30)
        return b"s" * length

    root = Dir("", [
        File.from_bytes("good", b"good bytes\\n"),
        File("excluded", 8192, excluded),
        File("bug", 10, bug),
        File("nodata", 10, no_data),
        File("slow", 10, slow),
        File("unsized", lambda: excluded(0, 0), excluded),
        Dir("lazy", lambda: [File.from_bytes(f"f{i}", b"%d" % i) for i in range(500)]),
    ])
    fuse.run_tree(root, sys.argv[1], ready=lambda: print("ready", flush=True))
""")


def line_from(server: subprocess.Popen, timeout: float = 30) -> str:
    """The server's next stdout line; fails instead of hanging when none comes in time."""
    assert select.select([server.stdout], [], [], timeout)[0], f"server silent for {timeout} s"
    return server.stdout.readline().strip()


@pytest.fixture
def tree_server(mountpoint):
    """(mountpoint, server process) of TREE_SERVER; the slow read ends when its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", TREE_SERVER, str(mountpoint)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert line_from(proc) == "ready", proc.stderr.read()
        yield mountpoint, proc
    finally:
        unmount(mountpoint)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def tree_mount(tree_server):
    return tree_server[0]


def test_read_errors_become_errno_and_mount_keeps_serving(tree_mount):
    mp = tree_mount
    for name, code in (("excluded", errno.EIO), ("bug", errno.EIO), ("nodata", errno.ENODATA)):
        with pytest.raises(OSError) as exc:
            (mp / name).read_bytes()
        assert exc.value.errno == code, name
        assert (mp / "good").read_bytes() == b"good bytes\n"
    assert sorted(os.listdir(mp / "lazy"), key=lambda n: int(n[1:])) == [f"f{i}" for i in range(500)]
    assert (mp / "lazy" / "f499").read_bytes() == b"499"


def test_file_whose_size_fails_is_listed_stat_able_and_its_read_says_eio(tree_mount):
    """Lookups never fail for data reasons (issue 9): size 0, and the read reports the error."""
    assert "unsized" in os.listdir(tree_mount)
    assert os.stat(tree_mount / "unsized").st_size == 0
    for _ in range(2):
        with pytest.raises(OSError) as exc:
            (tree_mount / "unsized").read_bytes()
        assert exc.value.errno == errno.EIO
    assert (tree_mount / "good").read_bytes() == b"good bytes\n"


def test_slow_read_does_not_stall_others(tree_server):
    mp, server = tree_server
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("slow", (mp / "slow").read_bytes()))
    reader.start()
    assert line_from(server) == "slow read started"
    started = time.monotonic()
    assert (mp / "good").read_bytes() == b"good bytes\n"
    assert [n for n in os.listdir(mp)]
    assert time.monotonic() - started < 1.5, "a fast read waited for the slow one"
    server.stdin.close()            # the slow read may end now
    reader.join(timeout=10)
    assert result["slow"] == b"s" * 10


def test_readdir_resumes_at_offset(tree_mount):
    """A listing read in small getdents batches neither repeats nor skips names."""
    fd = os.open(tree_mount / "lazy", os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = []
        with os.scandir(fd) as entries:
            names = [e.name for e in entries]
    finally:
        os.close(fd)
    assert sorted(names) == sorted(f"f{i}" for i in range(500))
    assert len(names) == len(set(names))
