"""The FUSE glue: pyfuse3 operations over a `dumpfs.tree` root, served with trio.

This is the only module that imports pyfuse3 or trio.  A dump's tree is
immutable once built, so the kernel may cache attributes, names and file
pages for as long as it likes; all we keep is inode -> node for the nodes the
kernel has been told about.  A directory whose entries come and go (a dump
directory: `Dir.expires`) is listed afresh on every opendir, and the kernel
keeps its entries' names and attributes only that many seconds.

Anything that may touch the dump (a file read, a lazily computed size, a
directory whose children are built on first listing) runs in a worker
thread, so one slow decompression never stalls `ls` in another shell; what
is quick (a folder's attributes, a built folder, nodes marked `inline`) is
first tried on the event loop without waiting (`dumpfs.model.without_waiting`).  Any
exception from the tree becomes an errno for the caller and a debug log line;
pyfuse3 would otherwise end the main loop on the first unexpected exception.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import signal
import stat
import time
from typing import Callable, Iterable

import pyfuse3
import trio

from dumpfs.errors import MemoryUnavailable
from dumpfs.waiting import WouldBlock, without_waiting
from dumpfs.tree import Access, Dir, Node

log = logging.getLogger(__name__)

FOREVER = 365 * 24 * 3600.0     # attr/entry timeout: nothing in a dump's tree ever changes
WORKER_THREADS = 8              # concurrent blocking reads per mount
BLOCK_SIZE = 1 << 20            # st_blksize: preferred I/O size, one readahead request
EXACT_BLOCK_SIZE = 4096         # st_blksize of files read whole-or-EIO: a buffered reader
                                # (Python's open()) then asks for the page it needs, not for
                                # a megabyte that may touch a hole

# Page cache, not direct_io.  Measured (README "Performance") on the mounted `vmcore`
# of x86_64-custom/qemu-elf.vmcore (272 MiB, ELF backend):
#   dd bs=1M, first read:   direct_io ~750 MB/s    page cache ~370-490 MB/s
#   dd bs=1M, second read:  direct_io ~750 MB/s    page cache ~5 GB/s (never reaches Python)
#   4 KiB preads, repeated: direct_io ~345 us      page cache ~2 us
# direct_io only wins a single cold streaming pass (no copy into the page cache);
# crash, drgn and gdb re-read the same pages constantly, and the page cache also
# keeps mmap working.  Readahead is raised to READAHEAD_KB so the kernel asks for
# 1 MiB per request (the default 128 KiB halves cold throughput).  keep_cache=True
# keeps pages across opens, which is safe because the tree never changes.
DIRECT_IO = False
READAHEAD_KB = 1024

# Allocations between two collections of the youngest generation (Python's default: 700).
# A mount holds long-lived objects by the hundred thousand (the kernel's symbols, tasks,
# tree nodes), and a listing builds thousands of nodes: at the default the collector
# traversed the old generation again and again - 60% of the daemon's time while reading
# every proc/PID/comm of 2,555 processes.  Cycles are still collected, just in fewer passes.
GC_THRESHOLD = 50_000


def mount_options(extra: Iterable[str] = ()) -> set[str]:
    """libfuse options for a dumpfs mount; `extra` come from `-o` (allow_other, ...)."""
    options = {"fsname=dumpfs", "subtype=dumpfs", "ro", "default_permissions"}
    for option in extra:
        option = option.strip()
        if not option or option in ("rw",):
            continue
        if option.startswith("subtype="):
            continue            # fuse.dumpfs is how `dumpfs umount` and recovery know our mounts
        if option.startswith("fsname="):
            options = {o for o in options if not o.startswith("fsname=")}
        options.add(option)
    return options


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO     # MemoryUnavailable, DumpError, a bug in a view: all the reader can know


def _guard(op: Callable) -> Callable:
    """Turn any exception of an operation into a FUSEError (pyfuse3 stops on anything else)."""

    @functools.wraps(op)
    async def wrapper(self: "Operations", *args):
        try:
            return await op(self, *args)
        except pyfuse3.FUSEError:
            raise
        except trio.Cancelled:
            raise
        except Exception as exc:    # noqa: BLE001 - the mount must outlive any bad read
            code = _errno_of(exc)
            self._log_failure(op.__name__, args, exc, code)
            raise pyfuse3.FUSEError(code) from None

    return wrapper


class Operations(pyfuse3.Operations):
    """Read-only pyfuse3 operations over one tree root."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: Dir, *, direct_io: bool = DIRECT_IO, threads: int = WORKER_THREADS):
        super().__init__()
        self.root = root
        self.direct_io = direct_io
        self.threads = threads
        self._limiter: trio.CapacityLimiter | None = None
        self._nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self._dirs: dict[int, list[tuple[bytes, Node]]] = {}     # open dir handle -> sorted entries
        self._next_fh = 1
        self._logged: set[tuple] = set()
        self._mount_time_ns = time.time_ns()
        self._default_access = Access(os.getuid(), os.getgid(), 0o444)
        self._access: dict[int, Access] = {pyfuse3.ROOT_INODE: root.access or self._default_access}
        self._timeouts: dict[int, float] = {}   # entries of a Dir with `expires`: its timeout
        self._direct: set[int] = set()      # files whose size failed: served with direct_io
        self.after_init: Callable[[], None] | None = None   # run once, on the first request

    # -- helpers ---------------------------------------------------------

    def inode_of(self, node: Node) -> int:
        return pyfuse3.ROOT_INODE if node is self.root else node.inode

    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)    # never handed out (or a stale handle)
        return node

    async def _blocking(self, fn: Callable, *args):
        """Run `fn(*args)` in a worker thread, at most `threads` at a time."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self.threads)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _quick(self, quick: bool, fn: Callable, *args):
        """`fn(*args)` on the event loop when `quick` and it needs no waiting (reads of cached
        pages, formatting what is already read: a thread hop would cost more), else in a
        worker thread."""
        if quick:
            try:
                with without_waiting():
                    return fn(*args)
            except WouldBlock:
                pass
        return await self._blocking(fn, *args)

    def _log_failure(self, op: str, args: tuple, exc: Exception, code: int) -> None:
        """One debug line per distinct failure: a tool retrying a bad page must not flood the log."""
        key = (op, args[:1], type(exc), str(exc))
        if key in self._logged:
            return
        if len(self._logged) > 10000:
            self._logged.clear()
        self._logged.add(key)
        kind = "" if isinstance(exc, (OSError, MemoryUnavailable)) else f"{type(exc).__name__}: "
        log.debug("%s%r -> %s: %s%s", op, args[:1], errno.errorcode.get(code, code), kind, exc)

    def _adopt(self, parent: Dir, child: Node) -> None:
        """A child has its parent's Access unless it is a folder with its own, and the
        parent's `expires` as its entry and attribute timeout."""
        own = child.access if isinstance(child, Dir) else None
        inode = self.inode_of(child)
        self._access.setdefault(inode,
                                own or self._access.get(self.inode_of(parent), self._default_access))
        if parent.expires is not None:
            self._timeouts.setdefault(inode, parent.expires)

    def _owner_and_mode(self, node: Node) -> tuple[int, int, int]:
        access = self._access.get(self.inode_of(node), self._default_access)
        if isinstance(node, Dir):
            return access.uid, access.gid, stat.S_IFDIR | access.dir_mode
        return access.uid, access.gid, stat.S_IFREG | access.file_mode

    def _make_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes of `node`; may compute a lazy File.size, so call it in a worker thread.

        A file whose size cannot be computed is still listed and stat-able: size 0, opened
        with direct_io so that its reads reach us and fail with the reason (lookups never
        fail for data reasons; the dump never changes, so neither will the answer)."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = self.inode_of(node)
        attr.generation = 0
        attr.entry_timeout = attr.attr_timeout = self._timeouts.get(attr.st_ino, FOREVER)
        attr.st_uid, attr.st_gid, attr.st_mode = self._owner_and_mode(node)
        attr.st_blksize = EXACT_BLOCK_SIZE if getattr(node, "exact_reads", False) else BLOCK_SIZE
        attr.st_blocks = 0
        if isinstance(node, Dir):
            attr.st_nlink = 2
            attr.st_size = 0
        else:
            attr.st_nlink = 1
            try:
                attr.st_size = node.size
                attr.st_blocks = (node.stored + 511) // 512
            except WouldBlock:
                raise                   # tried on the event loop: a worker thread computes it
            except Exception as exc:    # noqa: BLE001 - the read will say what is wrong
                self._log_failure("getattr", (attr.st_ino,), exc, _errno_of(exc))
                attr.st_size = 0
                self._direct.add(attr.st_ino)
        mtime = getattr(node, "mtime", None)
        ns = int(mtime * 1e9) if mtime is not None else self._mount_time_ns
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = ns
        return attr

    async def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        if self.after_init is not None:
            hook, self.after_init = self.after_init, None
            hook()
        inode = self.inode_of(node)
        attr = self._attrs.get(inode)
        if attr is None:
            if isinstance(node, Dir):       # a folder's attributes are fixed: nothing to wait for
                attr = self._make_attr(node)
            else:
                attr = await self._quick(node.inline, self._make_attr, node)
            self._attrs[inode] = attr
            self._nodes[inode] = node
        return attr

    # -- name space ------------------------------------------------------

    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        text = os.fsdecode(name)
        if text == ".":
            return await self._attr(parent)
        node = await self._quick(parent.built or parent.inline, parent.lookup, text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._adopt(parent, node)
        return await self._attr(node)

    @_guard
    async def getattr(self, inode, ctx=None):
        return await self._attr(self._node(inode))

    async def forget(self, inode_list):
        pass    # nodes live as long as the tree; nothing to free

    @_guard
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        children = await self._quick(node.built or node.inline,
                                     lambda: sorted(node.children.items()))
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = [(os.fsencode(name), child) for name, child in children]
        for _, child in children:
            self._adopt(node, child)
        return fh

    @_guard
    async def readdir(self, fh, start_id, token):
        """Entries from index `start_id`; next_id = index + 1, so a resumed listing never repeats."""
        entries = self._dirs.get(fh)
        if entries is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for index in range(start_id, len(entries)):
            name, child = entries[index]
            attr = await self._attr(child)
            if not pyfuse3.readdir_reply(token, name, attr, index + 1):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # -- files -----------------------------------------------------------

    @_guard
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        # fh is the inode: files carry no per-open state.  Files without a size (mem) and
        # files whose holes fail reads are direct_io: the kernel then passes each read as
        # asked (past size 0 too) and returns our whole answer or our error, never a prefix
        direct = self.direct_io or node.unsized or node.exact_reads or inode in self._direct
        return pyfuse3.FileInfo(fh=inode, keep_cache=not direct, direct_io=direct)

    @_guard
    async def read(self, fh, off, size):
        node = self._node(fh)
        if node.inline:
            # most reads are copies from the page cache: served here they spare the thread
            # hop (~40% of a 1 MiB read); anything that would wait goes to a worker
            try:
                with without_waiting():
                    return node.read(off, size)
            except WouldBlock:
                pass
        return await self._blocking(node.read, off, size)

    async def release(self, fh):
        pass

    @_guard
    async def access(self, inode, mode, ctx):
        self._node(inode)
        return not mode & os.W_OK

    # -- the rest --------------------------------------------------------

    @_guard
    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = BLOCK_SIZE
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = len(self._nodes)
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        return []


class MountError(Exception):
    """The kernel refused the mount; the message is the reason, for people."""


def mount(root: Dir, mountpoint: str, options: Iterable[str] = (), *,
          direct_io: bool = DIRECT_IO) -> Operations:
    """Mount `root` (pyfuse3.init); libfuse's own complaints end up in the MountError."""
    ops = Operations(root, direct_io=direct_io)
    import tempfile
    # libfuse prints its errors to fd 2 and returns only "failed": catch the text.
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            pyfuse3.init(ops, os.fspath(mountpoint), mount_options(options))
        except RuntimeError as exc:
            failure = exc
        else:
            failure = None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace").strip()
    if failure is not None:
        lines = [line.removeprefix("fuse: ").strip() for line in text.splitlines() if line.strip()]
        raise MountError("; ".join(lines) or str(failure))
    if text:
        log.debug("libfuse: %s", text)
    ops.after_init = lambda: _raise_readahead(mountpoint)
    return ops


def _raise_readahead(mountpoint: str) -> None:
    """Set the mount's readahead to READAHEAD_KB via sysfs (root only; best effort).

    Must run after the kernel has processed FUSE_INIT (it lowers the value to
    what INIT negotiated), so it runs on the first request.  The device number
    comes from /proc/self/mountinfo: stat() on the mountpoint from inside the
    serving process could wait on itself.
    """
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
        for line in reversed(lines):        # the newest mount on that path wins
            fields = line.split()
            path = fields[4].replace("\\040", " ")
            if path == target:
                with open(f"/sys/class/bdi/{fields[2]}/read_ahead_kb", "w") as f:
                    f.write(str(READAHEAD_KB))
                return
    except (OSError, IndexError) as exc:
        log.debug("cannot raise readahead on %s: %s", target, exc)


async def _serve() -> None:
    """The pyfuse3 main loop, ended cleanly by SIGINT, SIGTERM or SIGHUP (or an external umount)."""
    async with trio.open_nursery() as nursery:
        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    log.debug("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        # a few tasks wait on /dev/fuse so that a request arriving while others run in
        # worker threads is picked up at once; more are started on demand
        await pyfuse3.main(min_tasks=4, max_tasks=64)
        nursery.cancel_scope.cancel()


def serve(ops: Operations) -> None:
    """Serve a mounted filesystem until it is unmounted or signalled; always unmounts."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


def run_tree(root: Dir, mountpoint: str, options: Iterable[str] = (),
             ready: Callable[[], None] | None = None, *, direct_io: bool = DIRECT_IO) -> None:
    """Mount `root` on `mountpoint`, call `ready()`, serve until unmounted (tests, embedding)."""
    ops = mount(root, mountpoint, options, direct_io=direct_io)
    if ready is not None:
        try:
            ready()
        except BaseException:
            pyfuse3.close(unmount=True)
            raise
    serve(ops)
