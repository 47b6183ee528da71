"""One dump's kernel, read on demand: its address space, symbols, log, release and tasks.

The caller builds one `KernelContext` per dump, from the dump and the files the
user gave (`files`), and hands it to the views that read the kernel.  Each part
is computed at most once, on first use; a part that cannot be computed raises
`KernelUnavailable` whose message says why, and the reason is kept in
`problems` (and in the dump's `meta.problems` as a warning, so `info` shows it).
"""

from __future__ import annotations

import threading

from dumpfs.errors import KernelUnavailable, MemoryUnavailable, Severity, WalkError
from dumpfs.kernel.address_space import KernelMemory, kernel_memory
from dumpfs.kernel.btf import btf_from_memory
from dumpfs.kernel.printk import KernelLog, read_kernel_log
from dumpfs.kernel.symbols import SymbolTable, kernel_symbols
from dumpfs.kernel.tasks import TaskList, TaskWalker
from dumpfs.kernel.types import Types
from dumpfs.kernel.types_source import kernel_types
from dumpfs.kernel.utsname import Utsname, read_utsname
from dumpfs.model import Dump


class KernelContext:
    """The kernel of `dump`, with the user's --system-map, --vmlinux and --btf files."""

    def __init__(self, dump: Dump, system_map=None, vmlinux=None, btf=None):
        self.dump = dump
        self.system_map = system_map
        self.vmlinux = vmlinux
        self.btf = btf
        self.notes: list[str] = []          # how things were found
        self.problems: list[str] = []       # what could not be read, and why
        self._cells: dict[str, object] = {}
        self._lock = threading.RLock()

    @property
    def files(self) -> dict[str, str]:
        """What the context was built from besides the dump: option -> path, given ones only."""
        given = {"system_map": self.system_map, "vmlinux": self.vmlinux, "btf": self.btf}
        return {option: str(path) for option, path in given.items() if path is not None}

    def __repr__(self) -> str:
        files = "".join(f", {option}={path!r}" for option, path in self.files.items())
        return f"KernelContext({', '.join(self.dump.sources) or 'dump'}{files})"

    def _once(self, key: str, compute, problem: bool = True):
        with self._lock:
            if key not in self._cells:
                try:
                    self._cells[key] = (True, compute())
                except KernelUnavailable as exc:
                    self._cells[key] = (False, str(exc))
                    if problem:
                        self._problem(f"{key}: {exc}")
            ok, value = self._cells[key]
        if not ok:
            raise KernelUnavailable(value)
        return value

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self.dump.meta.add_problem(text, Severity.WARNING)     # the dump's bytes are all served

    def _memory_or_none(self) -> KernelMemory | None:
        try:
            return self.memory
        except KernelUnavailable:
            return None

    # -- parts ----------------------------------------------------------------
    @property
    def memory(self) -> KernelMemory:
        """The kernel's virtual memory."""
        def compute():
            try:
                kmem, notes = kernel_memory(self.dump)
            except MemoryUnavailable as exc:
                raise KernelUnavailable(f"no kernel address space: {exc}") from None
            self.notes.extend(notes)
            return kmem
        return self._once("kernel memory", compute)

    @property
    def symbols(self) -> SymbolTable:
        """Symbols from every available source (never fails: VMCOREINFO at least)."""
        def compute():
            table = kernel_symbols(self.dump, self._memory_or_none(), self.system_map, self.vmlinux)
            if not len(table):
                raise KernelUnavailable("no symbols: " + "; ".join(table.problems))
            self.notes.extend(f"symbols: {s}" for s in table.sources)
            self.notes.extend(f"symbols: {p}" for p in table.problems)
            return table
        return self._once("symbols", compute)

    @property
    def log(self) -> KernelLog:
        """The kernel log (raises LogUnavailable's reason as KernelUnavailable)."""
        def compute():
            log = read_kernel_log(self.dump, self.memory)
            for problem in log.problems:
                self._problem(f"kernel log: {problem}")
            return log
        return self._once("kernel log", compute)

    @property
    def utsname(self) -> Utsname:
        """init_uts_ns's names, through the page tables or the kernel image map."""
        def compute():
            uts = read_utsname(self.dump, self._memory_or_none())
            if uts is None:
                raise KernelUnavailable("init_uts_ns cannot be read")
            return uts
        return self._once("utsname", compute, problem=False)

    @property
    def release(self) -> str:
        """The kernel release: init_uts_ns in memory, else VMCOREINFO's OSRELEASE, else the
        dump header's."""
        def compute():
            try:
                if self.utsname.release:
                    return self.utsname.release
            except KernelUnavailable:
                pass
            info = self.dump.vmcoreinfo
            if info is not None and info.get("OSRELEASE"):
                return info.get("OSRELEASE")
            if self.dump.meta.kernel_release:
                return self.dump.meta.kernel_release
            raise KernelUnavailable("no init_uts_ns, no VMCOREINFO OSRELEASE, no release in the header")
        return self._once("kernel release", compute)

    @property
    def types(self) -> Types:
        """Type layouts, BTF before DWARF: --btf file, the --vmlinux's .BTF, the kernel's own
        BTF, the --vmlinux's DWARF.  Failing, the message says what processes need."""
        def compute():
            release = None
            if self.vmlinux is not None:
                try:
                    release = self.release          # keys the vmlinux's layout cache
                except KernelUnavailable:
                    pass
            types, notes, reason = kernel_types(
                self.dump, self.btf, self.vmlinux, release,
                dump_btf=lambda: btf_from_memory(self.memory, self.symbols, self.dump.vmcoreinfo))
            self.notes.extend(f"types: {n}" for n in notes)
            if types is None:
                self.notes.append(f"processes: {reason}")
                raise KernelUnavailable(reason)
            return types
        return self._once("types", compute, problem=False)

    @property
    def tasks(self) -> TaskWalker:
        """A walker over the kernel's task list."""
        def compute():
            try:
                return TaskWalker(self.memory, self.symbols, self.types)
            except WalkError as exc:
                self.notes.append(f"processes: {exc}")
                raise KernelUnavailable(f"processes cannot be listed: {exc}") from None
        return self._once("tasks", compute, problem=False)

    @property
    def task_list(self) -> TaskList:
        """One walk of the tasks (the task list both ways, the pid IDR): how it went is noted,
        each task that could not be read is a problem, named with the reason."""
        def compute():
            found = self.tasks.walk()
            self.notes.extend(f"processes: {note}" for note in found.notes)
            for text in found.unreadable:
                self._problem(f"processes: a task cannot be read: {text}")
            return found
        return self._once("task list", compute, problem=False)

    def processes_status(self) -> str:
        """For `info`: where the task list's types come from, or why there are no processes."""
        try:
            types = self.types
            self.tasks
        except KernelUnavailable as exc:
            return f"unavailable: {exc}"
        return f"from the task list; types: {types.source}"
