"""proc/: the dumped machine's processes, shaped like /proc.

    proc/<pid>/comm, cmdline, environ, status, maps      as /proc shows them
    proc/<pid>/mem          the user address space, sparse at virtual offsets (size: the
                            top of user space); unmapped or absent pages read EIO
    proc/<pid>/core         an ELF core gdb loads: NT_PRSTATUS per thread (user registers
                            from pt_regs at the top of each kernel stack), NT_PRPSINFO,
                            NT_AUXV, NT_FILE, one PT_LOAD per VMA (absent pages: zeros)
    proc/<pid>/regions/<start>-<end>   one file per mapping
    proc/<pid>/task/<tid>/  comm, status, stat of each thread
    proc/unavailable        instead of the processes, when they cannot be listed: why

Kernel threads have no memory files.  Nothing is read before it is listed:
proc/ walks the task list on first listing, a process's folder reads its
mm_struct and VMAs on first use.
"""

from __future__ import annotations

import errno
import struct
import threading
from functools import cached_property

from dumpfs.arch import NT_AUXV, NT_FILE, NT_PRPSINFO, NT_PRSTATUS
from dumpfs.elf import ET_CORE, PF_R, PF_W, PF_X, PHDR_FORMAT, PHDR_SIZE, PT_LOAD, PT_NOTE, EHDR_SIZE, \
    Elf64Header
from dumpfs.elfnote import build_note
from dumpfs.errors import KernelUnavailable, MemoryUnavailable, WalkError
from dumpfs.kernel.context import KernelContext
from dumpfs.kernel.mm import MmWalker
from dumpfs.kernel.tasks import Task
from dumpfs.model import Note
from dumpfs.tree import Dir, File
from dumpfs.extents import Extent, ExtentFile

ERRORS = (KernelUnavailable, MemoryUnavailable)     # WalkError is a KernelUnavailable


def _eio(what: str, exc: Exception) -> OSError:
    return OSError(errno.EIO, f"{what}: {exc}")


def computed(name: str, compute) -> File:
    """A process file computed on first use; walking failures become EIO with the reason."""
    return File.from_bytes(name, compute, failures=ERRORS)


class Process:
    """One thread group: its task, threads, mm and VMAs, each read on first use."""

    def __init__(self, procs: "Processes", task: Task):
        self.procs = procs
        self.task = task
        self._lock = threading.RLock()

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

    @property
    def task_size(self) -> int:
        return self.procs.mm_walker.task_size(self.mm)

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
        except MemoryUnavailable as exc:
            raise _eio(f"pid {self.task.pid} mem", exc) from None
        except WalkError as exc:
            raise _eio(f"pid {self.task.pid} mem", exc) from None

    def read_user_or_zeros(self, address: int, length: int) -> bytes:
        """core: absent pages read as zeros (a core cannot mark holes inside a PT_LOAD)."""
        parts = []
        end = address + length
        while address < end:
            step = min(end, (address | 0xFFF) + 1) - address
            try:
                parts.append(self.umem.read(address, step))
            except (MemoryUnavailable, WalkError):
                parts.append(bytes(step))
            address += step
        return b"".join(parts)


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
    def __init__(self, context: KernelContext):
        self.dump = context.dump
        self.context = context

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
        computed("comm", lambda: comm_text(task)),
        computed("status", lambda: status_text(task, None)),
        computed("stat", lambda: stat_text(task)),
    ])


def process_dir(process: Process) -> Dir:
    task = process.task

    def children():
        nodes = [
            computed("comm", lambda: comm_text(task)),
            computed("status", lambda: status_text(task, len(process.threads))),
            computed("stat", lambda: stat_text(task)),
            Dir("task", lambda: [task_dir(process, t) for t in process.threads]),
        ]
        if task.is_kernel_thread:
            nodes.append(File.from_bytes("cmdline", b""))
            return nodes
        nodes += [
            computed("cmdline", lambda: process.user_range("arg_start", "arg_end")),
            computed("environ", lambda: process.user_range("env_start", "env_end")),
            computed("maps", process.maps),
            mem_file(process),
            core_file(process),
            Dir("regions", lambda: region_files(process)),
        ]
        return nodes
    return Dir(str(task.pid), children)


def mem_file(process: Process) -> File:
    def size():
        try:
            return process.task_size
        except ERRORS as exc:
            raise _eio("mem", exc) from None
    return File("mem", size, process.read_user)


def region_files(process: Process) -> list:
    try:
        vmas = process.vma_walk[0]
    except ERRORS:
        return []
    return [File(f"{v.start:08x}-{v.end:08x}", v.end - v.start,
                 lambda offset, length, base=v.start: process.read_user(base + offset, length))
            for v in vmas]


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
    phnum = 1 + len(vmas)
    notes_offset = EHDR_SIZE + PHDR_SIZE * phnum
    position = (notes_offset + len(note_data) + 4095) // 4096 * 4096
    phdrs = [struct.pack(prefix + PHDR_FORMAT, PT_NOTE, 0, notes_offset, 0, 0,
                         len(note_data), 0, 4)]
    extents = []
    for v in vmas:
        size = v.end - v.start
        flags = (PF_R if v.flags & 1 else 0) | (PF_W if v.flags & 2 else 0) | (PF_X if v.flags & 4 else 0)
        phdrs.append(struct.pack(prefix + PHDR_FORMAT, PT_LOAD, flags, position, v.start, 0,
                                 size, size, 4096))
        extents.append(Extent(position, size,
                              lambda offset, length, base=v.start:
                              process.read_user_or_zeros(base + offset, length)))
        position += size
    ehdr = Elf64Header[order].build(dict(
        e_ident=b"\x7fELF" + bytes([2, 1 if order == "little" else 2, 1]) + bytes(9),
        e_type=ET_CORE, e_machine=dump.arch.elf_machine, e_version=1, e_entry=0,
        e_phoff=EHDR_SIZE, e_shoff=0, e_flags=0, e_ehsize=EHDR_SIZE, e_phentsize=PHDR_SIZE,
        e_phnum=phnum, e_shentsize=0, e_shnum=0, e_shstrndx=0))
    header = ehdr + b"".join(phdrs) + note_data
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

def proc_dir(context: KernelContext) -> Dir:
    return Dir("proc", Processes(context).listing)
