"""A directory of dumps (/var/crash) mounted as one folder per dump, kept up to date.

What is a dump, looked for one level deep (names starting with "." are skipped:
copies in progress):

    <dir>/<file>            a file a backend recognises by its header bytes, also inside
                            gzip, xz, zstd or bzip2 compression; the folder is named after
                            the file.  ELF files other than cores (a vmlinux kept beside the
                            dumps) are not dumps.
    <dir>/<sub>/<file>      the same in a subdirectory: kdump's <host>-<date>/vmcore,
                            kdump-tools' <stamp>/dump.<stamp>; the folder is named after the
                            subdirectory (<sub>-<file> when it holds several dumps).  The
                            kernel log kdump saved there (vmcore-dmesg.txt, dmesg.<stamp>)
                            is shown in the folder as `vmcore-dmesg.txt`.
    <dir>/<name>.dumpfs     a manifest (MANIFEST_SUFFIX): its first line that is neither
                            blank nor a `#` comment says where the dump is: a URL
                            (http://, https://, s3://), a file:// URL or a path (relative
                            to the manifest's directory); the folder is named <name>.

Detection reads header bytes only and is remembered by each file's identity
(device, inode, size, mtime), so a rescan is a scandir and a stat per entry;
it happens when the folder is listed or looked up and the last scan is older
than RESCAN_SECONDS, and the kernel keeps the names ENTRY_SECONDS.  A dump is
opened when its folder is first listed; one that cannot be opened shows its
one-line error as the folder's `info`, its only file (with the saved kernel
log, if kdump left one).  A folder whose file changes or goes away is
replaced or dropped and its dump closed, so a deleted dump's space is freed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from dumpfs.backends import detect
from dumpfs.backends.probe import HEAD_SIZE
from dumpfs.compressed import compression_of, decompressed_head
from dumpfs.errors import DumpfsError
from dumpfs.model import Dump
from dumpfs.source import BytesSource, FileSource, Source
from dumpfs.tree import Access, Dir, File, Node, unique_names
from dumpfs.url import is_url, redact

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".dumpfs"
MAX_MANIFEST = 64 << 10         # bytes: a manifest is a line or two
MAX_ENTRIES = 4096              # entries looked at per directory level: a scan stays bounded
RESCAN_SECONDS = 0.5            # a listing or lookup rescans when the last scan is older
ENTRY_SECONDS = 1.0             # how long the kernel keeps the folders' names and attributes
DMESG_NAME = "vmcore-dmesg.txt"
ELF_CORE = 4                    # e_type of a core file


@dataclass(frozen=True)
class Found:
    """One dump in the directory, as a scan sees it (equal between scans if nothing changed)."""

    name: str                   # the folder's name, before siblings' names are made unique
    entry: str                  # the directory entry, relative: host-date/vmcore, a.gz, r.dumpfs
    location: str               # what is opened: a path or a URL
    paths: tuple[str, ...]      # what decides who may read it: its local files, or a URL
    identity: tuple             # (device, inode, size, mtime) of each local file involved
    mtime: float | None = None
    dmesg: str | None = None    # the kernel log kdump saved beside the dump
    error: str | None = None    # a manifest that names no dump: why


def _identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _is_dmesg(name: str) -> bool:
    return name.startswith("vmcore-dmesg") or name.startswith("dmesg.")


def _entries(path: str) -> list[os.DirEntry]:
    """The visible entries of `path` in name order, at most MAX_ENTRIES."""
    with os.scandir(path) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    if len(entries) > MAX_ENTRIES:
        log.warning("%s: %d entries, looking at the first %d", path, len(entries), MAX_ENTRIES)
    return entries[:MAX_ENTRIES]


def holds_dump(path: str) -> bool:
    """Whether a backend recognises the file, from its header bytes (through compression)."""
    try:
        source: Source = FileSource(path)
    except DumpfsError:
        return False
    try:
        if compression_of(source) is not None:
            head = decompressed_head(source, HEAD_SIZE)
            inner: Source = BytesSource(head, path)
        else:
            head, inner = source.read(0, 18), source
        backend = detect(inner) if head else None
    except (DumpfsError, OSError) as exc:
        log.debug("%s: not looked into: %s", path, exc)
        return False
    finally:
        source.close()
    if backend is None:
        return False
    if backend.name == "elf":
        order = "little" if head[5:6] == b"\x01" else "big"
        return int.from_bytes(head[16:18], order) == ELF_CORE
    return True


def read_manifest(path: str) -> str:
    """The one location a manifest names; DumpfsError saying why if it names none."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise DumpfsError(f"{path}: cannot read the manifest: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST:
        raise DumpfsError(f"{path}: more than {MAX_MANIFEST} bytes: not a manifest")
    lines = [line.strip() for line in raw.decode(errors="replace").splitlines()]
    locations = [line for line in lines if line and not line.startswith("#")]
    if len(locations) != 1:
        raise DumpfsError(f"{path}: a manifest names one dump (a URL or a path on a line of "
                          f"its own), this one names {len(locations)}")
    location = locations[0]
    if location.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(location).path)
    if "://" in location:
        return location
    return os.path.join(os.path.dirname(path), location)


class Scanner:
    """The dumps in a directory now; detection remembered by file identity between scans."""

    def __init__(self, path: str):
        self.path = path
        self._known: dict[str, tuple[tuple, bool]] = {}     # path -> (identity, holds a dump)
        self._seen: dict[str, tuple[tuple, bool]] = {}

    def scan(self) -> list[Found]:
        """OSError if the directory itself cannot be read."""
        self._seen = {}
        found: list[Found] = []
        for entry in _entries(self.path):
            st = _stat(entry.path)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                found += self._subdirectory(entry.name, entry.path)
            elif not stat.S_ISREG(st.st_mode):
                continue
            elif entry.name.endswith(MANIFEST_SUFFIX) and entry.name != MANIFEST_SUFFIX:
                found.append(self._manifest(entry.name, entry.path, st))
            elif self._holds_dump(entry.path, st):
                found.append(Found(entry.name, entry.name, entry.path, (entry.path,),
                                   (_identity(st),), st.st_mtime))
        self._known = self._seen
        return found

    def _holds_dump(self, path: str, st: os.stat_result) -> bool:
        identity = _identity(st)
        known = self._known.get(path)
        verdict = known[1] if known is not None and known[0] == identity else holds_dump(path)
        self._seen[path] = (identity, verdict)
        return verdict

    def _subdirectory(self, name: str, path: str) -> list[Found]:
        """kdump's <host>-<date>/: its dumps, each with the kernel log saved beside them."""
        try:
            entries = _entries(path)
        except OSError as exc:
            log.debug("%s: not scanned: %s", path, exc)
            return []
        dumps, dmesg = [], None
        for entry in entries:
            st = _stat(entry.path)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            if _is_dmesg(entry.name):
                dmesg = dmesg or (entry.path, st)
            elif self._holds_dump(entry.path, st):
                dumps.append((entry.name, entry.path, st))
        log_paths = (dmesg[0],) if dmesg else ()
        log_identity = (_identity(dmesg[1]),) if dmesg else ()
        return [Found(name if len(dumps) == 1 else f"{name}-{file}", f"{name}/{file}", dump_path,
                      (dump_path, *log_paths), (_identity(st), *log_identity), st.st_mtime,
                      dmesg[0] if dmesg else None)
                for file, dump_path, st in dumps]

    def _manifest(self, name: str, path: str, st: os.stat_result) -> Found:
        folder = name[:-len(MANIFEST_SUFFIX)]
        try:
            location = read_manifest(path)
        except DumpfsError as exc:
            return Found(folder, name, path, (path,), (_identity(st),), st.st_mtime, error=str(exc))
        target = _stat(location) if "://" not in location else None
        identity = (_identity(st),) + ((_identity(target),) if target else ())
        return Found(folder, name, location, (path, location), identity, st.st_mtime)


Show = Callable[[Found], tuple[Dump, Dir]]
"""Opens a found dump and builds its tree (the caller's files and policies); raises if it cannot."""


class DumpFolder(Dir):
    """One dump of the directory, opened when the folder is first listed."""

    def __init__(self, name: str, found: Found, directory: str, show: Show, access: Access):
        super().__init__(name, self._contents, mtime=found.mtime, access=access)
        self.found = found
        self.directory = directory
        self._show = show
        self._dump: Dump | None = None
        self.error: str | None = None
        """Why the dump cannot be shown (its `info` says the same), once the folder is listed."""
        self._closed = False
        self._state = threading.Lock()

    def _contents(self) -> list[Node]:
        found = self.found
        nodes: list[Node] = []
        try:
            if found.error:
                raise DumpfsError(found.error)
            dump, tree = self._show(found)
        except (DumpfsError, OSError) as exc:
            self.error = _one_line(exc)
            nodes.append(File.from_bytes("info", f"{self.error}\n".encode()))
        except Exception as exc:     # noqa: BLE001 - one dump's bug must not hide the folder
            log.debug("%s: cannot be shown", _shown(found.location), exc_info=True)
            self.error = f"internal error: {type(exc).__name__}: {exc}"
            nodes.append(File.from_bytes("info", f"{self.error}\n".encode()))
        else:
            with self._state:
                if self._closed:
                    dump.close()
                    return []
                self._dump = dump
            details = dump.meta.details
            here = f"{found.entry} in the dump directory {self.directory}"
            if found.location not in found.paths[:1]:
                here += f", naming {_shown(found.location)}"
            details["container"] = "; ".join(filter(None, (here, details.get("container"))))
            nodes += tree.children.values()
        if found.dmesg:
            nodes.append(File.from_bytes(DMESG_NAME, lambda: _read_file(found.dmesg),
                                         failures=(OSError,)))
        return nodes

    def close(self) -> None:
        with self._state:
            self._closed = True
            dump, self._dump = self._dump, None
        if dump is not None:
            dump.close()


def _shown(location: str) -> str:
    """A manifest's location as it may be shown: a URL without its query (a signature)."""
    return redact(location) if is_url(location) else location


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class DumpDir(Dir):
    """The folders of the dumps in a directory, rescanned when listed (at most every
    RESCAN_SECONDS); folders of unchanged dumps are kept, with their opened dumps."""

    expires = ENTRY_SECONDS

    def __init__(self, path: str, show: Show, access_of: Callable[[Found], Access],
                 name: str = "", access: Access | None = None):
        super().__init__(name, (), access=access)
        self.path = os.path.abspath(path)
        self._scanner = Scanner(self.path)
        self._show = show
        self._access_of = access_of
        self._folders: dict[tuple[str, Found], DumpFolder] = {}
        self._scanned_at: float | None = None
        self._scan_lock = threading.Lock()

    @property
    def children(self) -> dict[str, Node]:
        with self._scan_lock:
            if self._scanned_at is None or time.monotonic() - self._scanned_at >= RESCAN_SECONDS:
                self._rescan()
                self._scanned_at = time.monotonic()
            return self._children

    def _rescan(self) -> None:
        try:
            found = self._scanner.scan()
        except OSError as exc:
            log.debug("%s: cannot be scanned: %s", self.path, exc)
            found = []
        folders: dict[tuple[str, Found], DumpFolder] = {}
        for name, one in zip(unique_names(f.name for f in found), found):
            folders[(name, one)] = self._folders.get((name, one)) or \
                DumpFolder(name, one, self.path, self._show, self._access_of(one))
        for key, gone in self._folders.items():
            if key not in folders:
                gone.close()
        self._folders = folders
        self._children = {folder.name: folder for folder in folders.values()}
