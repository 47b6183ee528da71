"""Dumps at http:// and s3:// URLs, served by real servers on 127.0.0.1 that the tests start.

nginx (Debian's) serves the fixtures from a folder of links with a generated
config and an access log of every request's bytes; moto's standalone S3
server holds the same files in a bucket, reached through AWS_ENDPOINT_URL
and the AWS_* credential variables, as a user would configure them.  A URL
must mount and show what the plain file shows (vmcore bytes, registers,
proc/), crash and drgn must read the mounted vmcore, `info` and a proc/
listing must fetch a small fraction of the dump, and a server stopped
mid-read must give EIO for that read only, the mount serving again once the
server is back.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixturecache as fc
from conftest import run_dumpfs, track_mount, unmount
from dumpfs import remote
from dumpfs.waiting import WouldBlock, without_waiting
from test_vmcore_clients import DRGN_PROBE, LOG_LINE, need, need_drgn, vmlinux

FIXTURES = [
    ("x86_64-custom", "qemu-elf.vmcore.xz"),
    ("x86_64-custom", "mkdf-zlib-d1.kdump.xz"),
    ("s390x-custom", "zgetdump.s390.xz"),
]
IDS = [f"{folder}:{name.removesuffix('.xz')}" for folder, name in FIXTURES]
BUCKET = "dumps"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def object_name(folder: str, name: str) -> str:
    return f"{folder}-{name.removesuffix('.xz')}"


class Nginx:
    """nginx in the foreground, serving `root` on 127.0.0.1:`port`; every request in access.log."""

    def __init__(self, root: Path, workdir: Path, port: int | None = None):
        self.root = root
        self.workdir = workdir
        self.port = port or free_port()
        self.log = workdir / "access.log"
        self.process: subprocess.Popen | None = None
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            pytest.fail("nginx is not installed: apt-get install nginx-light")
        self.binary = nginx
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        user = "user root root;" if os.geteuid() == 0 else ""   # the fixtures sit in root's home
        temp = workdir / "tmp"
        self.config = workdir / "nginx.conf"
        self.config.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format bytes '$request_method $uri $status $bytes_sent "$http_range"';
    access_log {self.log} bytes;
    client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
    uwsgi_temp_path {temp}; scgi_temp_path {temp};
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
    }}
}}
""")

    def url(self, name: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}{query}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config), "-e",
                                         str(self.workdir / "error.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)     # fast shutdown: connections closed
            self.process.wait(timeout=30)
        self.process = None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def bytes_sent(self, name: str, since: int = 0) -> int:
        """Bytes nginx sent for /`name` in the requests logged after offset `since` of the log."""
        with open(self.log) as f:
            f.seek(since)
            return sum(int(fields[3]) for fields in (line.split() for line in f)
                       if len(fields) > 3 and fields[1] == f"/{name}")


@pytest.fixture(scope="session")
def remote_env(tmp_path_factory):
    """A fresh block cache for the session and the S3 settings, for this process and dumpfs'."""
    cache = tmp_path_factory.mktemp("remote-cache")
    saved = dict(os.environ)
    os.environ.update(DUMPFS_CACHE_DIR=str(cache), AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing-secret", AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    yield cache
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A folder of links to the unpacked fixtures (and what tests add), as nginx's root."""
    root = tmp_path_factory.mktemp("www")
    for folder, name in FIXTURES:
        (root / object_name(folder, name)).symlink_to(fc.unpacked(folder, name))
    return root


@pytest.fixture(scope="session")
def http(served, tmp_path_factory, remote_env):
    server = Nginx(served, tmp_path_factory.mktemp("nginx"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory, remote_env):
    """moto's S3 server on a free port, a bucket with the fixtures; s3(name) -> URL."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        import boto3
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        for folder, name in FIXTURES:
            client.upload_file(str(fc.unpacked(folder, name)), BUCKET, object_name(folder, name))
        yield lambda name: f"s3://{BUCKET}/{name}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def url_of(request, kind: str, name: str) -> str:
    return request.getfixturevalue(kind).url(name) if kind == "http" else \
        request.getfixturevalue(kind)(name)


def listing(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*")) if top.exists() else []


# -- the same tree as the plain file ------------------------------------------------

@pytest.mark.parametrize("kind", ["http", "s3"])
@pytest.mark.parametrize("folder,name", FIXTURES, ids=IDS)
def test_url_mounts_the_same_tree_as_the_plain_file(request, mount, kind, folder, name):
    plain_mp = mount(fc.unpacked(folder, name))
    url = url_of(request, kind, object_name(folder, name))
    started = time.monotonic()
    mp = mount(url)
    assert time.monotonic() - started < 30
    size = (plain_mp / "vmcore").stat().st_size
    assert (mp / "vmcore").stat().st_size == size
    rng = random.Random(size)
    with open(plain_mp / "vmcore", "rb") as a, open(mp / "vmcore", "rb") as b:
        assert b.read(MiB) == a.read(MiB)
        for offset in [size - 4096] + [rng.randrange(size) for _ in range(24)]:
            a.seek(offset)
            b.seek(offset)
            assert b.read(64 << 10) == a.read(64 << 10), offset
    cpus = sorted(p.name for p in (plain_mp / "cpus").iterdir())
    assert cpus and sorted(p.name for p in (mp / "cpus").iterdir()) == cpus
    for cpu in cpus:
        registers = plain_mp / "cpus" / cpu / "registers"
        if registers.exists():
            assert (mp / "cpus" / cpu / "registers").read_text() == registers.read_text()
    assert listing(mp / "proc") == listing(plain_mp / "proc")
    info = (mp / "info").read_text()
    assert re.search(rf"container\.*: remote object {re.escape(url)} ", info), info
    st = (mp / "vmcore").stat()     # no file to take an owner from: the mounting user only
    assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o400)


def test_info_names_the_remote_container(http, served):
    name = object_name("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    done = run_dumpfs("info", http.url(name, "?token=secret-value"))
    assert done.returncode == 0, done.stderr
    assert "secret-value" not in done.stdout + done.stderr
    assert f"container..........: remote object {http.url(name)}?<redacted> (" in done.stdout
    assert "Dump format........: kdump" in done.stdout


def test_credentials_in_the_url_are_refused_and_never_shown(http):
    url = http.url("x").replace("http://", "http://user:hunter2@")
    done = run_dumpfs("info", url)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "hunter2" not in done.stderr and "credentials in the URL are refused" in done.stderr


def test_missing_object_is_one_line(http, s3):
    for url in (http.url("no-such-dump"), s3("no-such-dump")):
        done = run_dumpfs("info", url)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
        assert "no such object" in done.stderr and "Traceback" not in done.stderr


def test_fsname_shows_the_redacted_url(http, mountpoint):
    name = object_name("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    done = run_dumpfs("mount", http.url(name, "?X-Amz-Signature=abcdef"), mountpoint)
    assert done.returncode == 0, done.stderr
    mounts = Path("/proc/self/mounts").read_text()
    assert "abcdef" not in mounts
    line = next(line for line in mounts.splitlines() if line.split()[1] == str(mountpoint))
    assert line.split()[0] == http.url(name) + "?<redacted>"


PRESIGNED = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20261203&"
             "X-Amz-Signature=5ec7e75ec7e75ec7e7")
SIGNATURE = "5ec7e75ec7e75ec7e7"


def command_lines_naming(text: str) -> list[bytes]:
    """The command lines (/proc/PID/cmdline, what ps shows every user) that contain `text`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(cmdline)
    return found


def test_presigned_query_is_never_shown(http, served, mountpoint, tmp_path):
    """Not in info (of the URL, of a directory whose manifest names it), debug logs, findmnt,
    the mount daemon's command line, nor the mounted tree's info."""
    name = object_name("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    url = http.url(name, "?" + PRESIGNED)
    shown = http.url(name) + "?<redacted>"
    done = run_dumpfs("info", "--debug", url)
    assert done.returncode == 0, done.stderr
    assert SIGNATURE not in done.stdout + done.stderr and shown in done.stdout
    done = run_dumpfs("info", "--debug", http.url("no-such-dump", "?" + PRESIGNED))
    assert done.returncode == 1 and done.stderr and SIGNATURE not in done.stderr, done.stderr

    directory = tmp_path / "crash"
    directory.mkdir()
    (directory / "remote.dumpfs").write_text(url + "\n")
    done = run_dumpfs("info", directory)
    assert done.returncode == 0, done.stderr
    assert SIGNATURE not in done.stdout + done.stderr
    assert f"naming {shown}" in done.stdout

    done = run_dumpfs("mount", url, mountpoint)
    assert done.returncode == 0, done.stderr
    assert SIGNATURE not in Path("/proc/self/mounts").read_text()
    daemons = command_lines_naming(str(mountpoint))
    assert daemons, "no process with the mountpoint on its command line"
    for cmdline in daemons:
        assert SIGNATURE.encode() not in cmdline and shown.encode() in cmdline.split(b"\0"), cmdline
    assert SIGNATURE not in (mountpoint / "info").read_text()
    assert (mountpoint / "vmcore").read_bytes()[:4] == b"\x7fELF"


# -- bytes fetched ------------------------------------------------------------------

@pytest.mark.parametrize("folder,name", FIXTURES, ids=IDS)
def test_info_and_proc_fetch_a_small_fraction(http, tmp_path, folder, name):
    obj = object_name(folder, name)
    size = fc.unpacked(folder, name).stat().st_size
    env = {**os.environ, "DUMPFS_CACHE_DIR": str(tmp_path / "cache")}    # nothing cached yet
    since = http.log_size()
    mp = track_mount(tmp_path / "mnt")
    mp.mkdir()
    done = run_dumpfs("mount", http.url(obj), mp, env=env)
    assert done.returncode == 0, done.stderr
    try:
        (mp / "info").read_text()
        listing(mp / "proc")
    finally:
        unmount(mp)
    fetched = http.bytes_sent(obj, since)
    assert 0 < fetched < size // 5, f"{fetched:,} of {size:,} bytes fetched"
    assert all(entry.stat().st_mode & 0o777 == 0o600
               for entry in (tmp_path / "cache" / "remote").rglob("*") if entry.is_file())
    assert all(entry.stat().st_mode & 0o777 == 0o700
               for entry in (tmp_path / "cache" / "remote").rglob("*") if entry.is_dir())


# -- clients ------------------------------------------------------------------------

def test_crash_and_drgn_read_the_vmcore_of_an_http_source(http, mount):
    truth = fc.truth("x86_64-custom")
    kernel = vmlinux("x86_64-custom")
    for name in ("qemu-elf.vmcore.xz", "mkdf-zlib-d1.kdump.xz"):
        vmcore = mount(http.url(object_name("x86_64-custom", name))) / "vmcore"
        done = subprocess.run([need("crash"), "-s", str(kernel), str(vmcore)], input="sys\nlog\nq\n",
                              capture_output=True, text=True, errors="replace", timeout=300)
        assert done.returncode == 0 and "DUMPFILE:" in done.stdout, done.stderr[-2000:]
        release = re.search(r"^\s*RELEASE:\s*(\S+)", done.stdout, re.M)
        assert release and release.group(1) == truth["kernel_release"]
        log = [line for line in done.stdout.splitlines() if LOG_LINE.match(line)]
        tail = truth["log_tail_raw"][-8:]
        assert log[-len(tail):] == tail

    need_drgn()
    info = truth["vmcoreinfo"]
    uts_name = int(info["SYMBOL(init_uts_ns)"], 16) + int(info.get("OFFSET(uts_namespace.name)", "0"))
    vmcore = mount(http.url(object_name("x86_64-custom", "mkdf-zlib-d1.kdump.xz"))) / "vmcore"
    done = subprocess.run([sys.executable, "-c", DRGN_PROBE, str(vmcore), str(kernel),
                           f"{uts_name:x}", "0", "0"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'"init_uts_ns": "{truth["kernel_release"]}"' in done.stdout
    assert f'"release_in_memory": "{truth["kernel_release"]}"' in done.stdout


# -- a server that goes away --------------------------------------------------------

def test_server_stopped_gives_eio_and_the_mount_serves_again(served, mount, tmp_path, remote_env):
    server = Nginx(served, tmp_path / "nginx")
    server.start()
    plain = fc.unpacked("x86_64-custom", "qemu-elf.vmcore.xz")
    plain_vmcore = mount(plain) / "vmcore"
    mp = track_mount(tmp_path / "mnt")
    mp.mkdir()
    env = {**os.environ, "DUMPFS_CACHE_DIR": str(tmp_path / "cache"),
           "DUMPFS_REMOTE_RETRIES": "2", "DUMPFS_REMOTE_TIMEOUT": "3"}
    try:
        done = run_dumpfs("mount", server.url(object_name("x86_64-custom", "qemu-elf.vmcore.xz")),
                          mp, env=env)
        assert done.returncode == 0, done.stderr
        info = (mp / "info").read_text()
        registers = (mp / "cpus" / "0" / "registers").read_text()
        size = (mp / "vmcore").stat().st_size
        unread = [size - 64 * MiB, size - 32 * MiB]       # never read: not cached anywhere
        fd = os.open(mp / "vmcore", os.O_RDONLY)
        try:
            head = os.pread(fd, MiB, 0)
            server.stop()
            for at in unread:
                started = time.monotonic()
                with pytest.raises(OSError) as failure:
                    os.pread(fd, 4096, at)
                assert failure.value.errno == errno.EIO
                assert time.monotonic() - started < 15, "a dead server must fail fast, not hang"
            # the daemon lives on and serves what it has
            assert os.pread(fd, MiB, 0) == head
            assert (mp / "info").read_text() == info
            assert (mp / "cpus" / "0" / "registers").read_text() == registers
            server.start()          # the same port: the mount serves again
            got = [os.pread(fd, 4096, at) for at in unread]
        finally:
            os.close(fd)
        with open(plain_vmcore, "rb") as f:
            assert got == [os.pread(f.fileno(), 4096, at) for at in unread]
    finally:
        unmount(mp)
        server.stop()


# -- in process: the block cache, a changed object, the event loop -------------------

def test_remote_xz_opens_like_the_dump_inside(http, served):
    plain = fc.unpacked("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    packed = served / "small.kdump.xz"
    if not packed.exists():
        with open(packed, "wb") as out:
            subprocess.run(["xz", "-0", "-T2", "--block-size=1MiB", "-c", str(plain)], stdout=out,
                           check=True)
    done = run_dumpfs("info", http.url("small.kdump.xz"))
    assert done.returncode == 0, done.stderr
    container = next(line for line in done.stdout.splitlines() if "container" in line)
    assert f"remote object {http.url('small.kdump.xz')}" in container and "; xz" in container
    assert "Dump format........: kdump" in done.stdout


def test_block_cache_is_private_bounded_and_keyed_by_version(http, served, monkeypatch, tmp_path):
    monkeypatch.setenv("DUMPFS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DUMPFS_REMOTE_CACHE_SIZE", "1M")
    monkeypatch.setattr(remote, "_budgets", {})
    plain = fc.unpacked("x86_64-custom", "mkdf-zlib-d1.kdump.xz")
    data = plain.read_bytes()
    copy = served / "changing.kdump"
    copy.write_bytes(data)
    source = remote.open_url(http.url("changing.kdump"))
    try:
        with without_waiting(), pytest.raises(WouldBlock):     # the event loop never waits
            source.read(len(data) - 10, 10)
        rng = random.Random(1)
        for _ in range(80):
            offset = rng.randrange(len(data))
            assert source.read(offset, 8192) == data[offset:offset + 8192]
        files = [p for p in (tmp_path / "remote").rglob("*") if p.is_file()]
        assert files and sum(p.stat().st_size for p in files) <= 1 << 20
        assert {p.stat().st_mode & 0o777 for p in files} == {0o600}
        with without_waiting():     # what was just read serves without waiting
            assert source.read(offset, 4096) == data[offset:offset + 4096]
        # replaced while open: an error, never a mix of two versions
        changed = bytearray(data)
        changed[:4] = b"XXXX"
        copy.write_bytes(changed)
        os.utime(copy, (time.time() + 5, time.time() + 5))
        source.blocks.memory.clear()
        for path in (tmp_path / "remote").rglob("*"):
            if path.is_file():
                path.unlink()
        with pytest.raises(OSError, match="changed since it was opened"):
            source.read(0, 4)
    finally:
        source.close()
    reopened = remote.open_url(http.url("changing.kdump"))
    try:
        assert reopened.identity != source.identity
        assert reopened.read(0, 4) == b"XXXX"
    finally:
        reopened.close()
        copy.unlink()
