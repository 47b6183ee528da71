"""proc/: the dumped machine's processes, shaped like /proc.

    proc/<pid>/comm, cmdline, environ, status, maps      as /proc shows them
    proc/<pid>/mem          the user address space at virtual offsets; size 0 like
                            /proc/PID/mem (reads at any offset work)
    proc/<pid>/core         an ELF core gdb loads: NT_PRSTATUS per thread (user registers
                            from pt_regs at the top of each kernel stack), NT_PRPSINFO,
                            NT_AUXV, NT_FILE, one PT_LOAD per run of pages the dump holds
                            (absent pages are in none, so gdb calls them unavailable)
    proc/<pid>/regions/<start>-<end>   one file per mapping
    proc/<pid>/regions/map  every run of the mappings' pages, as memory/map lists chunks:
                            `start-end state size`, state present, unmapped, excluded
                            or missing
    proc/<pid>/task/<tid>/  comm, status, stat of each thread
    proc/unavailable        instead of the processes, when they cannot be listed: why

Holes (pages of a mapping that are unmapped, excluded or missing) read EIO from
`regions/` (each read whole) and `mem`; with `zero_holes` (the zero_excluded
mount option) they read as zeros, and regions/map says where.  Outside every
mapping `mem` always reads EIO, as /proc/PID/mem does.

Kernel threads have no memory files.  Nothing is read before it is listed:
proc/ walks the task list on first listing, a process's folder reads its
mm_struct and VMAs on first use.
"""

from __future__ import annotations

import errno
import struct
import threading
from bisect import bisect_right
from functools import cached_property

from dumpfs.arch import NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS
from dumpfs.elf import PF_R, PF_W, PF_X, PHDR_FORMAT, PT_LOAD, PT_NOTE, core_headers, core_headers_size
from dumpfs.elfnote import build_note
from dumpfs.errors import KernelUnavailable, MemoryUnavailable, TranslationError, WalkError
from dumpfs.kernel.context import KernelContext
from dumpfs.kernel.mm import MAX_ARGS, MmWalker
from dumpfs.kernel.tasks import Task
from dumpfs.model import Note
from dumpfs.tree import Dir, File, NamedDir
from dumpfs.extents import Extent, ExtentFile
from dumpfs.views.memory import range_line

ERRORS = (KernelUnavailable, MemoryUnavailable)     # WalkError is a KernelUnavailable


def _eio(what: str, exc: Exception) -> OSError:
    return OSError(errno.EIO, f"{what}: {exc}")


def computed(name: str, compute, inline: bool = False) -> File:
    """A process file computed on first use; walking failures become EIO with the reason.
    `inline`: formatted from what the task walk read (comm, status, stat)."""
    return File.from_bytes(name, compute, failures=ERRORS, inline=inline)


class Process:
    """One thread group: its task, threads, mm and VMAs, each read on first use."""

    def __init__(self, procs: "Processes", task: Task):
        self.procs = procs
        self.task = task
        self._lock = threading.RLock()
        self._runs: dict[int, list] = {}     # VMA start -> page_runs

    @cached_property
    def threads(self) -> list[Task]:
        return self.procs.walker.threads_of(self.task)

    @cached_property
    def mm(self) -> dict:
        return self.procs.mm_walker.read_mm(self.task.mm)

    @cached_property
    def umem(self):
        return self.procs.mm_walker.user_memory(self.mm)

    @cached_property
    def vma_walk(self):
        return self.procs.mm_walker.vmas(self.mm)

    @property
    def vmas(self):
        vmas, problem = self.vma_walk
        if problem:
            raise WalkError(f"pid {self.task.pid}: {problem}")
        return vmas

    # -- /proc-style texts ----------------------------------------------------
    def user_range(self, start_key: str, end_key: str) -> bytes:
        return self.procs.mm_walker.read_range(self.umem, self.mm[start_key], self.mm[end_key])

    def maps(self) -> bytes:
        with self._lock:
            vmas, problem = self.vma_walk
        text = "".join(v.maps_line() + "\n" for v in vmas)
        if problem and not vmas:
            raise WalkError(f"pid {self.task.pid}: {problem}")
        return text.encode()

    def read_user(self, address: int, length: int) -> bytes:
        """mem: every page of the request must be readable, else EIO (no short reads: FUSE
        would take one for the end of the file)."""
        try:
            return self.umem.read(address, length)
        except ERRORS as exc:
            raise _eio(f"pid {self.task.pid} mem", exc) from None

    def read_user_zero_filled(self, address: int, length: int) -> bytes:
        """mem and regions under zero_holes: holes inside a mapping read as zeros; outside
        every mapping, or where the data is there but cannot be decoded, EIO."""
        try:
            return self.umem.read(address, length)
        except ERRORS:
            pass
        try:
            vmas = self.vmas
            starts = [v.start for v in vmas]
            page = self.umem.page_size
            parts = []
            end = address + length
            while address < end:
                step = min(end, address - address % page + page) - address
                i = bisect_right(starts, address) - 1
                if i < 0 or address >= vmas[i].end:
                    raise WalkError(f"virtual address {address:#x}: in no mapping")
                if self.page_hole(address):
                    parts.append(bytes(step))
                else:
                    parts.append(self.umem.read(address, step))
                address += step
            return b"".join(parts)
        except ERRORS as exc:
            raise _eio(f"pid {self.task.pid} mem", exc) from None

    # -- holes ----------------------------------------------------------------
    def page_hole(self, address: int) -> str | None:
        """Why the dump cannot deliver the page at `address` (unmapped, excluded, missing),
        or None when it holds it."""
        return self._page_hole(address)[0]

    def _page_hole(self, address: int) -> tuple[str | None, int]:
        """(page_hole, the address up to which that answer holds): an invalid upper-level
        table entry answers "unmapped" for its whole span at once."""
        page = self.umem.page_size
        try:
            physical = self.umem.translate(address)
        except TranslationError as exc:
            return "unmapped", max(exc.unmapped_until or 0, address - address % page + page)
        except MemoryUnavailable:
            return "unmapped", address - address % page + page
        state = self.procs.dump.memory.hole_at(physical)
        return (None if state is None else state.value), address - address % page + page

    def page_runs(self, vma) -> list[tuple[int, int, str | None]]:
        """(start, end, hole) runs of one mapping's pages (hole None: the dump holds them),
        found once by translating every page (skipping what upper-level entries leave out)."""
        with self._lock:
            runs = self._runs.get(vma.start)
            if runs is not None:
                return runs
        runs = []
        address = vma.start
        while address < vma.end:
            hole, following = self._page_hole(address)
            following = min(following, vma.end)
            if runs and runs[-1][2] == hole:
                runs[-1][1] = following
            else:
                runs.append([address, following, hole])
            address = following
        runs = [tuple(run) for run in runs]
        with self._lock:
            self._runs[vma.start] = runs
        return runs


def status_text(task: Task, threads: int | None) -> bytes:
    lines = [f"Name:\t{task.comm}", f"State:\t{task.state_text}", f"Tgid:\t{task.tgid}",
             f"Pid:\t{task.pid}", f"PPid:\t{task.ppid}",
             "Uid:\t" + "\t".join(map(str, task.uids)), "Gid:\t" + "\t".join(map(str, task.gids))]
    if threads is not None:
        lines.append(f"Threads:\t{threads}")
    return ("\n".join(lines) + "\n").encode()


def stat_text(task: Task) -> bytes:
    """The first fields of /proc/PID/stat: pid (comm) state ppid."""
    return f"{task.pid} ({task.comm}) {task.state_text[0]} {task.ppid}\n".encode()


class Processes:
    def __init__(self, context: KernelContext, zero_holes: bool = False):
        self.dump = context.dump
        self.context = context
        self.zero_holes = zero_holes

    @cached_property
    def walker(self):
        return self.context.tasks

    @cached_property
    def mm_walker(self):
        return MmWalker(self.context.memory, self.context.symbols, self.context.types)

    def listing(self) -> list:
        """One folder per process the walk found; what it could not read is in kernel/sources."""
        try:
            tasks = self.context.task_list.processes
        except ERRORS as exc:
            return [File.from_bytes("unavailable", f"{exc}\n".encode())]
        return [process_dir(Process(self, task)) for task in tasks]


def comm_text(task: Task) -> bytes:
    return (task.comm + "\n").encode()


def task_dir(process: Process, task: Task) -> Dir:
    return Dir(str(task.pid), [
        computed("comm", lambda: comm_text(task), inline=True),
        computed("status", lambda: status_text(task, None), inline=True),
        computed("stat", lambda: stat_text(task), inline=True),
    ])


# the entries of a process's folder: name -> its node, built on first lookup or listing
PROCESS_ENTRIES = {
    "comm": lambda process: computed("comm", lambda: comm_text(process.task), inline=True),
    "status": lambda process: computed(
        "status", lambda: status_text(process.task, len(process.threads)), inline=True),
    "stat": lambda process: computed("stat", lambda: stat_text(process.task), inline=True),
    "task": lambda process: Dir("task", lambda: [task_dir(process, t) for t in process.threads],
                                inline=True),
    "cmdline": lambda process: (File.from_bytes("cmdline", b"") if process.task.is_kernel_thread
                                else user_text_file(process, "cmdline", "arg_start", "arg_end")),
    "environ": lambda process: user_text_file(process, "environ", "env_start", "env_end"),
    "maps": lambda process: computed("maps", process.maps),
    "mem": lambda process: mem_file(process),
    "core": lambda process: core_file(process),
    "regions": lambda process: Dir("regions", lambda: region_files(process)),
}
KERNEL_THREAD_ENTRIES = ("comm", "status", "stat", "task", "cmdline")     # no memory files


def process_dir(process: Process) -> Dir:
    def names():
        return KERNEL_THREAD_ENTRIES if process.task.is_kernel_thread else PROCESS_ENTRIES
    return NamedDir(str(process.task.pid), names, lambda name: PROCESS_ENTRIES[name](process),
                    inline=True)     # closures only: nothing read


def user_text_file(process: Process, name: str, start_key: str, end_key: str) -> File:
    """cmdline, environ: sized from the mm_struct's bounds, so that listing never reads the
    pages (a -d 31 dump excludes them: then only the read fails, or under zero_holes reads
    zeros: they lie in the stack mapping, whose holes regions/map lists)."""
    def bounds() -> tuple[int, int]:
        try:
            start, end = process.mm[start_key], process.mm[end_key]
        except ERRORS as exc:
            raise _eio(name, exc) from None
        return start, (0 if not start or end <= start else min(end - start, MAX_ARGS))

    def read(offset: int, length: int) -> bytes:
        return user_reader(process, bounds()[0])(offset, length)
    return File(name, lambda: bounds()[1], read, exact_reads=True)


def user_reader(process: Process, base: int = 0):
    """Reads of the address space from `base` on: holes EIO, or zeros under zero_holes."""
    read = process.read_user_zero_filled if process.procs.zero_holes else process.read_user
    return lambda offset, length: read(base + offset, length)


def mem_file(process: Process) -> File:
    """Size 0 like /proc/PID/mem: a copy of proc/PID/ must not walk 128 TiB of address space.
    Reads answer as /proc/PID/mem does: up to the first page that cannot be read, EIO when
    that is the first one (buffered readers read past what they were asked for)."""
    read = user_reader(process)
    page = process.procs.dump.page_size

    def read_prefix(offset: int, length: int) -> bytes:
        try:
            return read(offset, length)
        except OSError:
            first = min(length, page - offset % page)
            parts = [read(offset, first)]           # the first page: its error is the answer
            position, end = offset + first, offset + length
            try:
                while position < end:
                    step = min(page, end - position)
                    parts.append(read(position, step))
                    position += step
            except OSError:
                pass
            return b"".join(parts)
    return File("mem", 0, read_prefix, unsized=True)


def region_files(process: Process) -> list:
    try:
        vmas = process.vma_walk[0]
    except ERRORS:
        return []
    exact = not process.procs.zero_holes
    files = [File(f"{v.start:08x}-{v.end:08x}", v.end - v.start, user_reader(process, v.start),
                  exact_reads=exact)
             for v in vmas]
    return files + [computed("map", lambda: "".join(
        range_line(start, end, hole or "present")
        for v in process.vma_walk[0] for start, end, hole in process.page_runs(v)).encode())]


# ---------------------------------------------------------------------------
# core
# ---------------------------------------------------------------------------

def prstatus(process: Process, task: Task) -> bytes:
    """NT_PRSTATUS of one thread: user registers from pt_regs at the top of its kernel stack."""
    procs = process.procs
    try:
        regs = procs.walker.user_registers(task)
    except (ERRORS + (Exception,)):             # noqa: BLE001 - a thread without registers
        regs = None
    return procs.dump.arch.kernel.prstatus(task.pid, task.ppid, process.task.tgid,
                                           process.task.tgid, regs)


def prpsinfo(process: Process) -> bytes:
    task = process.task
    prefix = process.procs.context.memory.prefix
    try:
        args = process.user_range("arg_start", "arg_end")
    except ERRORS:
        args = b""
    psargs = args.replace(b"\0", b" ").strip()[:79]
    state = task.state_text
    return struct.pack(prefix + "bcbb4xQIIiiii16s80s", "RSDTtXZPI".index(state[0]), state[0].encode(),
                       1 if state[0] == "Z" else 0, 0, task.flags, task.uids[0], task.gids[0],
                       task.pid, task.ppid, task.tgid, task.tgid, task.comm.encode()[:15], psargs)


def nt_file(process: Process, vmas) -> bytes:
    prefix = process.procs.context.memory.prefix
    files = [v for v in vmas if v.file and v.name.startswith("/")]
    body = struct.pack(prefix + "QQ", len(files), 4096)
    body += b"".join(struct.pack(prefix + "QQQ", v.start, v.end, v.pgoff) for v in files)
    return body + b"".join(v.name.encode() + b"\0" for v in files)


def build_core(process: Process) -> ExtentFile:
    dump = process.procs.dump
    order = dump.arch.byteorder
    prefix = "<" if order == "little" else ">"
    vmas = process.vmas
    notes = []
    threads = process.threads
    for task in threads:
        notes.append(Note("CORE", NT_PRSTATUS, prstatus(process, task)))
    notes.append(Note("CORE", NT_PRPSINFO, prpsinfo(process)))
    auxv = process.mm.get("raw_auxv") or b""
    if auxv:
        notes.append(Note("CORE", NT_AUXV, auxv))
    notes.append(Note("CORE", NT_FILE, nt_file(process, vmas)))
    note_data = b"".join(build_note(n, order) for n in notes)
    # one PT_LOAD per run of pages the dump holds: holes are in none, so gdb says
    # "Cannot access memory" there instead of showing invented zeros
    loads = [(v, start, end) for v in vmas
             for start, end, hole in process.page_runs(v) if hole is None]
    notes_offset = core_headers_size(1 + len(loads))
    position = (notes_offset + len(note_data) + 4095) // 4096 * 4096
    phdrs = [struct.pack(prefix + PHDR_FORMAT, PT_NOTE, 0, notes_offset, 0, 0,
                         len(note_data), 0, 4)]
    extents = []
    for v, start, end in loads:
        size = end - start
        flags = (PF_R if v.flags & 1 else 0) | (PF_W if v.flags & 2 else 0) | (PF_X if v.flags & 4 else 0)
        phdrs.append(struct.pack(prefix + PHDR_FORMAT, PT_LOAD, flags, position, start, 0,
                                 size, size, 4096))
        extents.append(Extent(position, size,
                              lambda offset, length, base=start: process.read_user(base + offset, length)))
        position += size
    header = core_headers(order, dump.arch.elf_machine, phdrs) + note_data
    extents.append(Extent(0, len(header), header))
    return ExtentFile(extents, size=position)


def core_file(process: Process) -> File:
    layout: list = []
    lock = threading.Lock()

    def get() -> ExtentFile:
        with lock:
            if not layout:
                try:
                    layout.append(build_core(process))
                except ERRORS as exc:
                    raise _eio("core", exc) from None
            return layout[0]
    return File("core", lambda: get().size, lambda offset, length: get().read(offset, length))


# ---------------------------------------------------------------------------

def proc_dir(context: KernelContext, zero_holes: bool = False) -> Dir:
    return Dir("proc", Processes(context, zero_holes).listing)
